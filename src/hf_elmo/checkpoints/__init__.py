"""Readers (and writers) of the original checkpoint formats, each mapped onto hf-elmo's parameters.

- `bilm_tf`: bilm-tf / allennlp releases, `options.json` + weights `.hdf5`.
"""

from __future__ import annotations


class CheckpointError(ValueError):
    """An original checkpoint that cannot be converted; the message names the file and what is wrong."""


__all__ = ["CheckpointError"]
