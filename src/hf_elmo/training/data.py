"""bilm-tf's language-model training batches, streamed from text files, and the collator for `Trainer`.

The corpus is bilm-tf's training format: UTF-8 text files, one whitespace-tokenized sentence a line. Facts from
bilm-tf (`bilm/data.py`: `_get_batch`, `LMDataset`, `BidirectionalLMDataset`; `bin/train_elmo.py`):

- Each of the `batch_size` rows of a batch is an endless stream of sentences `<S> w1 .. wn </S>` back to back,
  cut into windows of `unroll_steps` tokens; the LSTM state of a row carries over from one batch to the next.
- A row's inputs are its stream's tokens and its targets the tokens one step later: a sentence of n words gives
  n + 1 (input, target) pairs, inputs `<S> w1 .. wn`, targets `w1 .. wn </S>`. The last token of a sentence is
  only ever a target: the forward stream never reads `</S>`; the next sentence's `<S>` follows `wn` directly.
  Rows take new sentences in row order, whenever the sentence they are in is used up.
- The backward direction is a stream of its own over the same data, every sentence reversed: inputs
  `</S> wn .. w1`, targets `wn .. w1 <S>`; it never reads `<S>`.
- Targets are word ids of the LM vocabulary (`<UNK>`'s id for other words); inputs are character ids.
- When a row needs a sentence and there is none left, the whole batch is dropped and the data ends (bilm-tf's
  test mode; in training the data never ends).
- Training (`BidirectionalLMDataset(..., test=False, shuffle_on_load=True)`) reads the files in a random order,
  again and again, and shuffles the sentences of each file; the forward and backward datasets shuffle separately
  (Python's `random`, one shared state), so the two directions see the sentences in different orders.

Decisions here (documented differences):

- Shuffling is seeded and reproducible: pass p of direction d visits the files in the order
  `numpy.random.default_rng([seed, d, p]).permutation(n_files)` and the lines of file f in the order
  `default_rng([seed, d, p, f]).permutation(n_lines)`. The directions use different orders, as in bilm-tf.
  Without shuffling both directions read the files in the order given, line by line (bilm-tf's test mode).
- Streaming: sentences are read one at a time, never a whole file. Without shuffling memory is constant; with
  shuffling, the file being read is memory-mapped (the OS pages it) and its line offsets and line order are held:
  16 bytes a line of the current file (bilm-tf holds the whole file's sentences). Split a large corpus into
  files (the 1B Word Benchmark comes as 100) to keep that small.
- Blank lines are skipped (bilm-tf would train `<S>` -> `</S>` on them). Lines end at `\\n` (a `\\r` before it
  is whitespace); bilm-tf's text mode also ends lines at a lone `\\r`.
- Character ids are the tokenizer's (`word_to_char_ids`: bilm-tf's training ids + 1, 0 is a padding word).

Contract of a batch (`LMStreamDataset.iter_batches`, `ElmoLMDataCollator`), what the LM head's forward takes:

- `input_ids`: `(B, T, C)` int64 character ids of what the forward LSTM reads at step t (`<S>` and `</S>` are in
  the data: nothing is added around them).
- `backward_input_ids`: `(B, T, C)` what the backward LSTM reads at its step t, in its reading order (give it to
  `ElmoBiLstm.forward(..., backward_inputs=...)` as is: it is already reversed).
- `labels`: `(B, T)` int64 LM vocabulary id the forward LSTM's output at step t must predict; -100 at padding.
- `backward_labels`: `(B, T)` likewise for the backward LSTM's output at its step t.
- `attention_mask`: `(B, T)` int64, 1 at real steps; both directions have the same length per row.

Stream batches have no padding (T = unroll_steps) and row b continues row b of the previous batch: the final
(h, c) of both directions must be the initial state of the next batch (zero at the first). Sentence batches
(`LMSentenceDataset`) are one sentence a row from zero state: T = n + 1 per row, padded.
"""

from __future__ import annotations

import copy
import mmap
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoints.softmax import BOS, EOS, LMVocabulary
from ..tokenization_elmo import word_to_char_ids
from .vocabulary import check_corpus_files, decode_line

LABEL_PAD_ID = -100  # transformers' ignore index: no prediction at this step
STATE_FORMAT = "hf-elmo LMStreamDataset state 1"
# Line offsets of a shuffled file are found in blocks of this many bytes (the scan's temporary memory).
SCAN_BLOCK_BYTES = 64 * 2**20
# How many recent batch boundaries `state_dict(batches=k)` can return (loaders read a few batches ahead).
STATE_HISTORY = 16


def _line_starts(data: mmap.mmap | bytes) -> np.ndarray:
    """`(n_lines,)` int64 byte offsets where the lines of `data` start (a final newline starts no line)."""
    size = len(data)
    pieces = [np.zeros(1, dtype=np.int64)]
    for start in range(0, size, SCAN_BLOCK_BYTES):
        block = np.frombuffer(data, dtype=np.uint8, count=min(SCAN_BLOCK_BYTES, size - start), offset=start)
        pieces.append(np.flatnonzero(block == ord("\n")).astype(np.int64) + (start + 1))
        del block  # the mapping cannot close while an array still views it
    starts = np.concatenate(pieces)
    return starts[:-1] if starts[-1] == size else starts


class SentenceReader:
    """
    The sentences (word lists) of one direction's passes over the corpus, one at a time, with a position that can
    be saved (`state_dict`) and restored. See the module docstring for the orders.

    Args:
        files: the corpus files, in their given order.
        shuffle: random file and line orders per pass (seeded); otherwise the given order, line by line.
        seed: the shuffling seed.
        stream: which stream this is (0 forward, 1 backward): the directions shuffle differently.
        passes: how many passes over the corpus, `None` for no end (bilm-tf's training).
    """

    def __init__(self, files: Sequence[Path], shuffle: bool, seed: int, stream: int, passes: int | None):
        self.files = list(files)
        self.shuffle, self.seed, self.stream, self.passes = shuffle, seed, stream, passes
        self.pass_index = 0
        self.file_rank = 0  # position in this pass's file order
        self.line_index = 0  # sentences (lines) of the current file taken so far
        self.byte_offset = 0  # where the next line starts (reading in the given order)
        self._handle: Any = None  # the open file (given order) or its memory map (shuffled)
        self._line_starts: np.ndarray | None = None
        self._line_order: np.ndarray | None = None

    def _file_order(self) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.files)))
        return np.random.default_rng([self.seed, self.stream, self.pass_index]).permutation(len(self.files)).tolist()

    def _open(self, file_index: int) -> None:
        path = self.files[file_index]
        if not self.shuffle:
            self._handle = path.open("rb")
            self._handle.seek(self.byte_offset)
            return
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            self._handle = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self._line_starts = _line_starts(self._handle)
        rng = np.random.default_rng([self.seed, self.stream, self.pass_index, file_index])
        self._line_order = rng.permutation(len(self._line_starts))

    def close(self) -> None:
        if hasattr(self._handle, "close"):  # an open file or a memory map (an empty file is just b"")
            self._handle.close()
        self._handle = self._line_starts = self._line_order = None

    def _next_line(self) -> tuple[bytes, int] | None:
        """The next raw line of the current file and its line number (from 1), or None at the file's end."""
        if not self.shuffle:
            raw = self._handle.readline()
            if not raw:
                return None
            self.byte_offset += len(raw)
            self.line_index += 1
            return raw, self.line_index
        if self.line_index == len(self._line_order):
            return None
        line = int(self._line_order[self.line_index])
        end = int(self._line_starts[line + 1]) if line + 1 < len(self._line_starts) else len(self._handle)
        self.line_index += 1
        return self._handle[int(self._line_starts[line]):end], line + 1

    def next_words(self) -> list[str] | None:
        """The next sentence's words (blank lines skipped), or None when the passes are done."""
        passes_without_sentence = 0
        while self.passes is None or self.pass_index < self.passes:
            # The first pass looked at may have been entered part way (a restored position); a second one without
            # a sentence was whole: without it, endless passes over blank files would never return.
            if passes_without_sentence == 2:
                raise ValueError(f"{', '.join(map(str, self.files))}: no sentences (every line is blank)")
            order = self._file_order()
            while self.file_rank < len(order):
                file_index = order[self.file_rank]
                if self._handle is None:
                    self._open(file_index)
                while (line := self._next_line()) is not None:
                    words = decode_line(line[0], self.files[file_index], line[1]).split()
                    if words:
                        return words
                self.close()
                self.file_rank += 1
                self.line_index = self.byte_offset = 0
            self.pass_index += 1
            self.file_rank = 0
            passes_without_sentence += 1
        return None

    def state_dict(self) -> dict[str, int]:
        return {"pass": self.pass_index, "file_rank": self.file_rank, "line": self.line_index,
                "byte_offset": self.byte_offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.close()
        self.pass_index, self.file_rank = state["pass"], state["file_rank"]
        self.line_index, self.byte_offset = state["line"], state["byte_offset"]
        # The file reopens on the next read: at `byte_offset`, or with its line order rebuilt from the seed.


class TokenEncoder:
    """
    Tokens -> character ids and LM vocabulary ids. The vocabulary's words are encoded once into a table
    (V x C int16: 80 MB for the Original's 793,471 words at C = 50); other words are encoded as they come.
    """

    def __init__(self, vocabulary: LMVocabulary, max_characters_per_token: int):
        self.vocabulary = vocabulary
        self.max_characters_per_token = max_characters_per_token
        self._vocabulary_char_ids = np.array(
            [word_to_char_ids(word, max_characters_per_token) for word in vocabulary.words], dtype=np.int16
        ).reshape(len(vocabulary), max_characters_per_token)

    def word_ids(self, words: Sequence[str]) -> np.ndarray:
        """`(n,)` int64 vocabulary ids, `<UNK>`'s for other words (bilm-tf's `word_to_id`)."""
        return np.array(self.vocabulary.ids(list(words)), dtype=np.int64).reshape(len(words))

    def char_ids(self, words: Sequence[str]) -> np.ndarray:
        """`(n, C)` int64 character ids (the tokenizer's: bilm-tf's training ids + 1)."""
        lookup = self.vocabulary.word_to_id
        ids = np.array([lookup.get(word, -1) for word in words], dtype=np.int64).reshape(len(words))
        chars = self._vocabulary_char_ids[np.maximum(ids, 0)].astype(np.int64)
        for position in np.flatnonzero(ids < 0):  # words outside the vocabulary keep their own characters
            chars[position] = word_to_char_ids(words[position], self.max_characters_per_token)
        return chars


def sentence_tokens(words: list[str], backward: bool) -> list[str]:
    """A sentence as its direction's LM reads it: `<S> w1 .. wn </S>`, or backward `</S> wn .. w1 <S>`."""
    return [EOS, *reversed(words), BOS] if backward else [BOS, *words, EOS]


class _RowStreams:
    """One direction's `batch_size` row streams: bilm-tf's `_get_batch` for that direction."""

    def __init__(self, reader: SentenceReader, batch_size: int, backward: bool):
        self.reader = reader
        self.backward = backward
        self.rows: list[list[str] | None] = [None] * batch_size  # the rest of the sentence each row is in

    def next_window(self, steps: int) -> tuple[list[list[str]], list[list[str]]] | None:
        """Each row's next `steps` (input, target) tokens, or None when a row needs a sentence and none is left."""
        inputs: list[list[str]] = []
        targets: list[list[str]] = []
        for i, row in enumerate(self.rows):
            row_inputs: list[str] = []
            row_targets: list[str] = []
            while len(row_inputs) < steps:
                if row is None or len(row) <= 1:  # only the last token left: it is never an input
                    words = self.reader.next_words()
                    if words is None:
                        return None
                    row = sentence_tokens(words, self.backward)
                take = min(len(row) - 1, steps - len(row_inputs))
                row_inputs += row[:take]
                row_targets += row[1:take + 1]
                row = row[take:]
            self.rows[i] = row
            inputs.append(row_inputs)
            targets.append(row_targets)
        return inputs, targets


def _check_stream_worker() -> None:
    """A stream is one sequence: DataLoader worker processes would each replay a copy of it."""
    if torch.utils.data.get_worker_info() is not None:
        raise ValueError("an LM dataset is one stream: load it with num_workers=0 (each worker would repeat it)")


class LMStreamDataset(torch.utils.data.IterableDataset):
    """
    bilm-tf's training batches (see the module docstring), streamed from text files, reproducible for a seed and
    resumable: `state_dict()` after k batches, `load_state_dict` into a new dataset, and the batches that follow
    are those an uninterrupted run gives after batch k.

    Iterate whole batches with `iter_batches()` (the contract in the module docstring), or the rows with
    `iter(dataset)`, one example (`input_ids` (T, C), `backward_input_ids` (T, C), `labels` (T,),
    `backward_labels` (T,)) per row, batch after batch, for a `DataLoader(dataset, batch_size=batch_size,
    collate_fn=ElmoLMDataCollator(), num_workers=0)`. Either way the dataset is one stream: a new iteration
    continues where the last one stopped.

    Args:
        paths: UTF-8 text files, one whitespace-tokenized sentence a line.
        vocabulary: the LM vocabulary (`read_lm_vocabulary`), the softmax's rows.
        batch_size: rows per batch.
        unroll_steps: tokens per row per batch (bilm-tf's `unroll_steps`, 20 for the released models).
        max_characters_per_token: character ids per token (the model's; 50 for the released models).
        shuffle: bilm-tf's training order (shuffled files and sentences per pass); without, the files in the
            order given, line by line (bilm-tf's test mode).
        seed: the shuffling seed.
        passes: passes over the corpus before the data ends (the incomplete last batch is dropped), `None` for
            no end (bilm-tf's training: its length is `n_epochs * n_train_tokens / (batch_size * unroll_steps)`
            batches).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        vocabulary: LMVocabulary,
        batch_size: int,
        unroll_steps: int,
        max_characters_per_token: int = 50,
        shuffle: bool = True,
        seed: int = 0,
        passes: int | None = None,
    ):
        super().__init__()
        if batch_size < 1 or unroll_steps < 1:
            raise ValueError(f"batch_size and unroll_steps must be at least 1, got {batch_size} and {unroll_steps}")
        if passes is not None and passes < 1:
            raise ValueError(f"passes must be at least 1 (or None for no end), got {passes}")
        self.files = check_corpus_files(paths)
        self.batch_size, self.unroll_steps = batch_size, unroll_steps
        self.encoder = TokenEncoder(vocabulary, max_characters_per_token)
        self.settings = {
            "files": [[path.name, path.stat().st_size] for path in self.files],
            "vocabulary_size": len(vocabulary), "batch_size": batch_size, "unroll_steps": unroll_steps,
            "max_characters_per_token": max_characters_per_token, "shuffle": shuffle, "seed": seed,
            "passes": passes,
        }
        self.directions = [
            _RowStreams(SentenceReader(self.files, shuffle, seed, stream, passes), batch_size, backward=bool(stream))
            for stream in (0, 1)
        ]
        self.batches = 0
        self._finished = False
        self._history: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._remember_state()

    def _current_state(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "batches": self.batches,
            "finished": self._finished,
            "settings": self.settings,
            # The row lists are replaced, never changed in place (`_RowStreams.next_window`): a shallow copy keeps.
            "directions": [{"reader": d.reader.state_dict(), "rows": list(d.rows)} for d in self.directions],
        }

    def _remember_state(self) -> None:
        self._history[self.batches] = self._current_state()
        while len(self._history) > STATE_HISTORY:
            self._history.popitem(last=False)

    def state_dict(self, batches: int | None = None) -> dict[str, Any]:
        """
        The position after `batches` batches (default: all handed out so far), JSON-serializable. A loader that
        reads ahead (accelerate fetches one batch early) has handed out batches not trained on yet: pass the
        number the training consumed; the last 16 batch boundaries are kept.
        """
        batches = self.batches if batches is None else batches
        if batches not in self._history:
            raise ValueError(f"the dataset's position after {batches} batches is not kept (it has handed out "
                             f"{self.batches}; positions after {', '.join(map(str, self._history))} are kept)")
        return copy.deepcopy(self._history[batches])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict()` of a dataset made with the same arguments over the same files."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError("not an LMStreamDataset state (saved by LMStreamDataset.state_dict())")
        for key, value in self.settings.items():
            saved = state["settings"].get(key)
            if saved != value:
                raise ValueError(f"the saved data position is for {key} {saved}, this dataset has {value}: resume "
                                 f"with the same corpus files, vocabulary and batching settings")
        for direction, saved in zip(self.directions, state["directions"]):
            direction.reader.load_state_dict(saved["reader"])
            direction.rows = copy.deepcopy(saved["rows"])
        self.batches, self._finished = state["batches"], state["finished"]
        self._history.clear()
        self._remember_state()

    def _batch(self, windows: list[tuple[list[list[str]], list[list[str]]]]) -> dict[str, torch.Tensor]:
        shape = (self.batch_size, self.unroll_steps)
        encoded = []
        for inputs, targets in windows:
            flat_inputs = [token for row in inputs for token in row]
            flat_targets = [token for row in targets for token in row]
            chars = torch.from_numpy(self.encoder.char_ids(flat_inputs)).view(*shape, -1)
            encoded.append((chars, torch.from_numpy(self.encoder.word_ids(flat_targets)).view(shape)))
        (forward_chars, forward_labels), (backward_chars, backward_labels) = encoded
        return {
            "input_ids": forward_chars,
            "backward_input_ids": backward_chars,
            "labels": forward_labels,
            "backward_labels": backward_labels,
            "attention_mask": torch.ones(shape, dtype=torch.int64),
        }

    def iter_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """The next batches, as the module docstring's contract (no padding: T = unroll_steps)."""
        while not self._finished:
            windows = []
            for direction in self.directions:
                window = direction.next_window(self.unroll_steps)
                if window is None:  # bilm-tf: the incomplete batch is dropped and the data ends
                    self._finished = True
                    return
                windows.append(window)
            self.batches += 1
            self._remember_state()
            yield self._batch(windows)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        _check_stream_worker()
        for batch in self.iter_batches():
            for row in range(self.batch_size):
                yield {key: value[row] for key, value in batch.items() if key != "attention_mask"}


class LMSentenceDataset(torch.utils.data.IterableDataset):
    """
    One example per sentence (non-blank line), in file order, each to be run from a zero LSTM state: inputs
    `<S> w1 .. wn` / backward `</S> wn .. w1`, targets `w1 .. wn </S>` / `wn .. w1 <S>` (T = n + 1), the
    contract of the module docstring once collated (`ElmoLMDataCollator` pads). What bilm-tf's per-sentence
    numbers (lm_ref.npz `s{k}_*`) are made of, and the sentence-level training mode (`shuffle=True`,
    `passes=None`: the forward stream's order of `LMStreamDataset`, endless).
    """

    def __init__(self, paths: Sequence[str | os.PathLike], vocabulary: LMVocabulary,
                 max_characters_per_token: int = 50, shuffle: bool = False, seed: int = 0, passes: int | None = 1):
        super().__init__()
        self.files = check_corpus_files(paths)
        self.encoder = TokenEncoder(vocabulary, max_characters_per_token)
        self.shuffle, self.seed, self.passes = shuffle, seed, passes

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        _check_stream_worker()
        reader = SentenceReader(self.files, shuffle=self.shuffle, seed=self.seed, stream=0, passes=self.passes)
        chars, ids = self.encoder.char_ids, self.encoder.word_ids
        while (words := reader.next_words()) is not None:
            forward, backward = sentence_tokens(words, backward=False), sentence_tokens(words, backward=True)
            yield {
                "input_ids": torch.from_numpy(chars(forward[:-1])),
                "backward_input_ids": torch.from_numpy(chars(backward[:-1])),
                "labels": torch.from_numpy(ids(forward[1:])),
                "backward_labels": torch.from_numpy(ids(backward[1:])),
            }

    def iter_batches(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of `batch_size` sentences in file order, padded (`ElmoLMDataCollator`)."""
        collate = ElmoLMDataCollator()
        examples: list[dict[str, torch.Tensor]] = []
        for example in self:
            examples.append(example)
            if len(examples) == batch_size:
                yield collate(examples)
                examples = []
        if examples:
            yield collate(examples)


class ElmoLMDataCollator:
    """
    Stacks LM examples (`input_ids` (T, C), `backward_input_ids` (T, C), `labels` (T,), `backward_labels` (T,),
    T per example) into the batch contract of the module docstring: padded to the longest T (rounded up to
    `pad_to_multiple_of`), character ids with 0 (padding words), labels with -100, and `attention_mask`.
    """

    def __init__(self, pad_to_multiple_of: int | None = None):
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("no examples to collate")
        lengths = [len(example["labels"]) for example in examples]
        steps = max(lengths)
        if self.pad_to_multiple_of and steps % self.pad_to_multiple_of:
            steps += self.pad_to_multiple_of - steps % self.pad_to_multiple_of
        batch: dict[str, torch.Tensor] = {}
        for key, pad in (("input_ids", 0), ("backward_input_ids", 0), ("labels", LABEL_PAD_ID),
                         ("backward_labels", LABEL_PAD_ID)):
            values = [torch.as_tensor(example[key], dtype=torch.int64) for example in examples]
            padded = values[0].new_full((len(values), steps, *values[0].shape[1:]), pad)
            for row, value in enumerate(values):
                if len(value) != lengths[row]:
                    raise ValueError(f"example {row}: {key} has {len(value)} steps but labels has {lengths[row]}")
                padded[row, :len(value)] = value
            batch[key] = padded
        batch["attention_mask"] = (torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]).long()
        return batch


__all__ = [
    "LABEL_PAD_ID",
    "ElmoLMDataCollator",
    "LMSentenceDataset",
    "LMStreamDataset",
    "SentenceReader",
    "TokenEncoder",
    "sentence_tokens",
]
