"""The biLM's output softmax as released for the Original model, and bilm-tf's word vocabulary that indexes it.

Softmax hdf5 layout (`elmo_2x4096_512_2048cnn_2xhighway_softmax_weights.hdf5`, released next to the Original model
with `vocab-2016-09-10.txt`): one group `softmax` holding

- `softmax/W`: float32 (n_vocab, projection_dim), row i is the output embedding of vocabulary word i;
- `softmax/b`: float32 (n_vocab,).

Sources: allenai/allennlp PR #1725 ("Add softmax to elmo", which revived #1111, "Add ability to compute Elmo LM
perplexities") reads `fin['softmax']['W']` and `fin['softmax']['b']` into a `Linear(512, vocab size)`;
facebookresearch/LAMA's ELMo connector reads the same two datasets and checks their rows against the vocabulary.
The names are what bilm-tf's `dump_weights` writes for the checkpoint variables `lm/softmax/W` and `lm/softmax/b`
once its "don't dump softmax" filter is removed (allenai/bilm-tf issue #126), so the layout is the training
checkpoint's, renamed exactly as the biLM's variables are. Both directions share this one softmax.

Vocabulary (bilm-tf `bilm/data.py` `Vocabulary`): one word a line, stripped; line i (skipping the lm_1b marker
line `!!!MAXTERMID`) is softmax row i. bilm-tf's training README requires `<S>`, `</S>`, `<UNK>` as the first three
lines; words outside the vocabulary are `<UNK>` as targets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic_files import atomic_output
from . import CheckpointError

SOFTMAX_WEIGHT = "softmax/W"
SOFTMAX_BIAS = "softmax/b"
BOS, EOS, UNK = "<S>", "</S>", "<UNK>"
SPECIAL_WORDS = (BOS, EOS, UNK)
# lm_1b's vocabulary files may carry this bookkeeping line; bilm-tf (after lm_1b) skips it without giving it an id.
MAX_TERM_ID_MARKER = "!!!MAXTERMID"


def read_softmax(path: str | os.PathLike, projection_dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """
    Read a softmax hdf5 in the released layout.

    Returns `(weight, bias)`: float32 arrays (n_vocab, projection_dim) and (n_vocab,). With `projection_dim`, the
    weight's second axis must equal it (the biLM's top-layer width).
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: softmax weight file not found")
    if not h5py.is_hdf5(path):
        raise CheckpointError(f"{path}: not an HDF5 file")
    with h5py.File(path, "r") as hdf5:
        for name in (SOFTMAX_WEIGHT, SOFTMAX_BIAS):
            if name not in hdf5 or not isinstance(hdf5[name], h5py.Dataset):
                raise CheckpointError(
                    f"{path}: missing dataset {name!r} (a softmax file holds {SOFTMAX_WEIGHT!r} (n_vocab, "
                    f"projection_dim) and {SOFTMAX_BIAS!r} (n_vocab,))"
                )
        weight = np.asarray(hdf5[SOFTMAX_WEIGHT][...], dtype=np.float32)
        bias = np.asarray(hdf5[SOFTMAX_BIAS][...], dtype=np.float32)
    check_softmax(weight, bias, str(path), projection_dim)
    return weight, bias


def check_softmax(weight: np.ndarray, bias: np.ndarray, source: str, projection_dim: int | None = None) -> None:
    """Check a softmax's shapes: weight (n_vocab, projection_dim), bias (n_vocab,)."""
    if weight.ndim != 2:
        raise CheckpointError(f"{source}: softmax weight has shape {weight.shape}, expected (n_vocab, projection_dim)")
    if bias.shape != (weight.shape[0],):
        raise CheckpointError(
            f"{source}: softmax bias has shape {bias.shape}, expected ({weight.shape[0]},) like the weight's rows"
        )
    if projection_dim is not None and weight.shape[1] != projection_dim:
        raise CheckpointError(
            f"{source}: softmax weight has shape {weight.shape}, expected (n_vocab, {projection_dim}): its width "
            f"must be the biLM's projection_dim"
        )


def write_softmax(path: str | os.PathLike, weight: np.ndarray, bias: np.ndarray) -> Path:
    """Write `weight` (n_vocab, projection_dim) and `bias` (n_vocab,) in the released layout, atomically."""
    import h5py

    path = Path(path)
    check_softmax(np.asarray(weight), np.asarray(bias), str(path))
    with atomic_output(path) as tmp_name, h5py.File(tmp_name, "w") as hdf5:
        hdf5.create_dataset(SOFTMAX_WEIGHT, data=np.asarray(weight, dtype=np.float32))
        hdf5.create_dataset(SOFTMAX_BIAS, data=np.asarray(bias, dtype=np.float32))
    return path


@dataclass(frozen=True)
class LMVocabulary:
    """A bilm-tf word vocabulary: `words[i]` is softmax row i; `<S>`, `</S>`, `<UNK>` are among the first three."""

    words: tuple[str, ...]
    word_to_id: dict[str, int] = field(repr=False, compare=False)

    @classmethod
    def from_words(cls, words: list[str] | tuple[str, ...]) -> LMVocabulary:
        # A repeated word maps to its last line, as bilm-tf's dict assignment does; rows stay aligned either way.
        return cls(tuple(words), {word: i for i, word in enumerate(words)})

    @property
    def bos_id(self) -> int:
        return self.word_to_id[BOS]

    @property
    def eos_id(self) -> int:
        return self.word_to_id[EOS]

    @property
    def unk_id(self) -> int:
        return self.word_to_id[UNK]

    def __len__(self) -> int:
        return len(self.words)

    def config_fields(self) -> dict[str, int]:
        """The `ElmoConfig` fields of a softmax over this vocabulary: its size and the special words' rows."""
        return {"lm_vocab_size": len(self), "lm_bos_id": self.bos_id, "lm_eos_id": self.eos_id,
                "lm_unk_id": self.unk_id}

    def ids(self, words: list[str]) -> list[int]:
        """Vocabulary ids of `words`, `<UNK>`'s for words outside it (bilm-tf's `word_to_id`)."""
        unk = self.unk_id
        return [self.word_to_id.get(word, unk) for word in words]


def read_lm_vocabulary(path: str | os.PathLike, size: int | None = None) -> LMVocabulary:
    """
    Read a bilm-tf vocabulary file. With `size` (the softmax's rows), the word count must equal it.

    Errors name the file and the line, counted from 1.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: vocabulary file not found")
    words: list[str] = []
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                word = raw.decode("utf-8").strip()
            except UnicodeDecodeError as error:
                raise CheckpointError(f"{path}: line {line_number} is not UTF-8 ({error.reason})") from None
            if word == MAX_TERM_ID_MARKER:
                continue
            if len(words) < len(SPECIAL_WORDS) and (word not in SPECIAL_WORDS or word in words):
                raise CheckpointError(
                    f"{path}: line {line_number} is {word!r}; a bilm-tf vocabulary starts with the three lines "
                    f"{', '.join(SPECIAL_WORDS)}"
                )
            words.append(word)
    if len(words) < len(SPECIAL_WORDS):
        raise CheckpointError(
            f"{path}: only {len(words)} words; a bilm-tf vocabulary starts with the three lines "
            f"{', '.join(SPECIAL_WORDS)}"
        )
    if size is not None and len(words) != size:
        raise CheckpointError(
            f"{path}: {len(words)} words, but the softmax has {size} rows (one per vocabulary word): "
            f"the vocabulary and the softmax come from different models"
        )
    return LMVocabulary.from_words(words)


def write_lm_vocabulary(path: str | os.PathLike, vocabulary: LMVocabulary) -> Path:
    """Write the vocabulary one word a line (bilm-tf's format), atomically."""
    path = Path(path)
    with atomic_output(path) as tmp_name, open(tmp_name, "w", encoding="utf-8", newline="\n") as handle:
        handle.writelines(f"{word}\n" for word in vocabulary.words)
    return path


__all__ = [
    "LMVocabulary",
    "SOFTMAX_BIAS",
    "SOFTMAX_WEIGHT",
    "check_softmax",
    "read_lm_vocabulary",
    "read_softmax",
    "write_lm_vocabulary",
    "write_softmax",
]
