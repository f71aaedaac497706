"""`hf-elmo build-vocab`: bilm-tf's word vocabulary (the softmax's rows) counted from a training corpus.

bilm-tf's training README asks for a vocabulary file with `<S>`, `</S>` and `<UNK>` first, then the words of the
training data "sorted by descending count" (the 1B Word Benchmark's `vocab-2016-09-10.txt` is such a file). The
corpus is bilm-tf's training format: one sentence a line, words separated by whitespace (Python's `str.split()`,
what bilm-tf's `Vocabulary.encode` splits with).
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..checkpoints.softmax import SPECIAL_WORDS, LMVocabulary, write_lm_vocabulary

# Inputs at least this large show a progress bar; smaller ones are counted in about a second and stay quiet.
PROGRESS_MIN_BYTES = 64 * 2**20


@dataclass(frozen=True)
class VocabularySummary:
    """What `build_vocabulary` wrote and counted: `words` vocabulary lines (the three specials included),
    `distinct_words` seen in the corpus, `tokens` (bilm-tf's `n_train_tokens`) and non-blank `sentences`."""

    path: Path
    words: int
    distinct_words: int
    tokens: int
    sentences: int


def decode_line(raw: bytes, path: Path, line_number: int) -> str:
    """One line of a UTF-8 text file; a `ValueError` naming the file and the line (counted from 1) otherwise."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: line {line_number} is not UTF-8 ({error.reason} at byte {error.start})") from None


def check_corpus_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The corpus files as paths; a `ValueError` for none given and an `OSError` naming a missing one."""
    files = [Path(path) for path in paths]
    if not files:
        raise ValueError("no corpus files given")
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: corpus file not found")
    return files


def count_words(paths: Sequence[str | os.PathLike], progress: bool | None = None) -> tuple[Counter, int]:
    """
    Count the whitespace-separated words of text files, streaming them line by line.

    Memory grows with the distinct words (one dict entry each: about 100 bytes plus the word), never with the
    corpus: the 1B Word Benchmark's 800M tokens have 2.4M distinct words. The counter's order is first occurrence.

    Args:
        paths: UTF-8 text files, one sentence a line.
        progress: show a progress bar over the bytes read; by default only for inputs of at least 64 MiB.
    Returns:
        `(counts, sentences)`: word -> count, and the number of non-blank lines.
    """
    from tqdm.auto import tqdm

    files = check_corpus_files(paths)
    total_bytes = sum(path.stat().st_size for path in files)
    if progress is None:
        progress = total_bytes >= PROGRESS_MIN_BYTES
    counts: Counter = Counter()
    sentences = 0
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="counting words", disable=not progress) as bar:
        for path in files:
            with path.open("rb") as handle:
                for line_number, raw in enumerate(handle, start=1):
                    words = decode_line(raw, path, line_number).split()
                    if words:
                        counts.update(words)  # Counter.update of a list counts in C
                        sentences += 1
                    bar.update(len(raw))
    return counts, sentences


def build_vocabulary(
    paths: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    min_count: int = 1,
    max_size: int | None = None,
    progress: bool | None = None,
) -> VocabularySummary:
    """
    Write bilm-tf's vocabulary of a corpus: `<S>`, `</S>`, `<UNK>`, then every word by descending count, words of
    equal count in the order they first occur in the corpus (files in the order given), one word a line.

    The corpus is streamed (files larger than memory are fine); memory grows with the distinct words only (see
    `count_words`). The three special words are never counted as corpus words, so they appear once, first. The
    file is written atomically.

    Args:
        paths: UTF-8 text files, one whitespace-tokenized sentence a line.
        output: the vocabulary file to write.
        min_count: leave out words seen fewer times than this.
        max_size: at most this many lines, the three special words included (the softmax's rows); the most
            frequent words are kept.
        progress: as `count_words`.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be at least 1, got {min_count}")
    if max_size is not None and max_size < len(SPECIAL_WORDS):
        raise ValueError(f"max_size must be at least {len(SPECIAL_WORDS)} (the lines {', '.join(SPECIAL_WORDS)}), "
                         f"got {max_size}")
    counts, sentences = count_words(paths, progress)
    tokens = sum(counts.values())
    for special in SPECIAL_WORDS:
        counts.pop(special, None)
    # sorted() is stable: equal counts keep the counter's first-occurrence order.
    ranked = sorted((item for item in counts.items() if item[1] >= min_count), key=lambda item: -item[1])
    words = [*SPECIAL_WORDS, *(word for word, _ in ranked)]
    if max_size is not None:
        words = words[:max_size]
    path = write_lm_vocabulary(output, LMVocabulary.from_words(words))
    return VocabularySummary(path, len(words), len(counts), tokens, sentences)


def add_build_vocab_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `hf-elmo build-vocab`."""
    parser.add_argument("corpus", nargs="+", help="training text: one whitespace-tokenized sentence a line (UTF-8)")
    parser.add_argument("--output", required=True, help="vocabulary file to write (one word a line)")
    parser.add_argument("--min-count", type=int, default=1, help="leave out words seen fewer times (default 1)")
    parser.add_argument("--max-size", type=int, default=None,
                        help="at most this many words, <S> </S> <UNK> included (the softmax's rows)")


def run_build_vocab(args: argparse.Namespace) -> None:
    """`hf-elmo build-vocab CORPUS.txt [MORE.txt ...] --output VOCAB.txt [--min-count N] [--max-size N]`."""
    summary = build_vocabulary(args.corpus, args.output, min_count=args.min_count, max_size=args.max_size)
    print(f"wrote {summary.words} words to {summary.path} ({summary.distinct_words} distinct words, "
          f"{summary.tokens} tokens in {summary.sentences} sentences: bilm-tf's n_train_tokens is {summary.tokens})")


__all__ = [
    "VocabularySummary",
    "add_build_vocab_arguments",
    "build_vocabulary",
    "count_words",
    "run_build_vocab",
]
