"""Readers (and writers) of the original checkpoint formats, each mapped onto hf-elmo's parameters.

- `bilm_tf`: bilm-tf / allennlp releases, `options.json` + weights `.hdf5`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class CheckpointError(ValueError):
    """An original checkpoint that cannot be converted; the message names the file and what is wrong."""


def read_json_file(path: Path, not_found: str) -> Any:
    """The JSON value in `path`; a `CheckpointError` naming the file (`not_found` says what was expected) if it is
    missing, not UTF-8 or not JSON."""
    if not path.is_file():
        raise CheckpointError(f"{path}: {not_found}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not a JSON file ({error})") from None


__all__ = ["CheckpointError", "read_json_file"]
