#!/usr/bin/env python
"""
A deterministic synthetic training corpus in bilm-tf's format, for `bench_training_vs_bilm_tf.py`.

    python benchmarks/make_training_corpus.py OUT_DIR                    # 100,000 words, 4 shards x 10,000 sentences
    python benchmarks/make_training_corpus.py OUT_DIR --shards 2 --sentences-per-shard 5000 --seed 1

Writes `OUT_DIR/vocab.txt` (bilm-tf's vocabulary file: `<S>`, `</S>`, `<UNK>`, then the words by descending
frequency, one a line; exactly `--vocab-size` lines) and `OUT_DIR/train-0000N-of-0000M.txt` (one whitespace-tokenized
sentence a line). The words are distinct random lowercase strings of 2 to 12 letters whose typical length grows
with rank (frequent words are short, as in English: about 3 letters at the top, 8 at rank 100,000); sentences are
10 to 30 words (uniform), each word drawn with probability proportional to 1 / rank (Zipf, s = 1), so that the
sampled softmax sees the skewed targets it sees on real text. Runs in the project's virtualenv; the same arguments give
byte-identical files.
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

import numpy as np

from hf_elmo.atomic_files import atomic_output

SPECIAL_WORDS = ("<S>", "</S>", "<UNK>")
MIN_WORD_LETTERS, MAX_WORD_LETTERS = 2, 12
MIN_SENTENCE_WORDS, MAX_SENTENCE_WORDS = 10, 30


def make_words(n_words: int, rng: np.random.Generator) -> list[str]:
    """`n_words` distinct lowercase words, most frequent first; the mean length grows with log(rank)."""
    letters = np.array(list(string.ascii_lowercase))
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n_words:
        rank = len(words) + 1
        typical = 3.0 + 0.45 * np.log(rank)
        length = int(np.clip(round(rng.normal(typical, 1.5)), MIN_WORD_LETTERS, MAX_WORD_LETTERS))
        word = "".join(rng.choice(letters, size=length))
        if word not in seen:  # short strings collide now and then; draw again
            seen.add(word)
            words.append(word)
    return words


def write_text_atomically(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_output(path) as temporary:
        Path(temporary).write_text(text, encoding="utf-8")


def make_corpus(out_dir: Path, vocab_size: int = 100_000, shards: int = 4, sentences_per_shard: int = 10_000,
                seed: int = 0) -> tuple[Path, list[Path]]:
    """Write the vocabulary and the shards into `out_dir`; returns (vocabulary file, shard files)."""
    if vocab_size <= len(SPECIAL_WORDS):
        raise ValueError(f"--vocab-size must be more than {len(SPECIAL_WORDS)}, got {vocab_size}")
    rng = np.random.default_rng(seed)
    words = make_words(vocab_size - len(SPECIAL_WORDS), rng)
    probabilities = 1.0 / np.arange(1, len(words) + 1)
    probabilities /= probabilities.sum()

    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_file = out_dir / "vocab.txt"
    write_text_atomically(vocab_file, "\n".join([*SPECIAL_WORDS, *words]) + "\n")
    shard_files = []
    word_array = np.array(words)
    for shard in range(shards):
        lengths = rng.integers(MIN_SENTENCE_WORDS, MAX_SENTENCE_WORDS + 1, size=sentences_per_shard)
        drawn = word_array[rng.choice(len(words), size=int(lengths.sum()), p=probabilities)]
        ends = np.cumsum(lengths)
        lines = [" ".join(drawn[end - length:end]) for end, length in zip(ends, lengths)]
        path = out_dir / f"train-{shard + 1:05d}-of-{shards:05d}.txt"
        write_text_atomically(path, "\n".join(lines) + "\n")
        shard_files.append(path)
    return vocab_file, shard_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--vocab-size", type=int, default=100_000, help="vocabulary lines, the 3 specials included")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--sentences-per-shard", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    vocab_file, shard_files = make_corpus(args.out_dir, args.vocab_size, args.shards, args.sentences_per_shard,
                                          args.seed)
    print(f"{vocab_file} ({args.vocab_size} words), {len(shard_files)} shards of {args.sentences_per_shard} sentences")


if __name__ == "__main__":
    main()
