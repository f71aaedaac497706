"""bilm-tf training checkpoints (TensorFlow `model.ckpt-N.{index,data-*,meta}`): the biLM and its softmax.

A training checkpoint holds everything bilm-tf's `bilm/training.py` trains, under the variable scope `lm/`: the
biLM (the same tensors `dump_weights` writes to the weights hdf5, under TensorFlow's names), the softmax shared by
both directions (`lm/softmax/W` (n_vocab, projection_dim), `lm/softmax/b` (n_vocab,)), Adagrad's accumulator of
every variable (`<name>/Adagrad`) and the counters `global_step` / `train_perplexity`. The biLM variables are renamed
exactly as `dump_weights` renames them, so `checkpoints.bilm_tf` maps both sources onto `ElmoModel` with one table.

Variables are read with TensorFlow's own checkpoint reader (the optional extra `hf-elmo[tf]`).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from . import CheckpointError
from ..configuration_elmo import ElmoConfig
from .bilm_tf import _state_dict_from_arrays, expected_datasets
from .softmax import check_softmax

SCOPE = "lm/"
SOFTMAX_WEIGHT_VARIABLE = "lm/softmax/W"
SOFTMAX_BIAS_VARIABLE = "lm/softmax/b"
# Optimizer state saved next to each trained variable; bilm-tf trains with Adagrad.
OPTIMIZER_SLOT_SUFFIX = "/Adagrad"
# TensorFlow's checkpoint files next to a prefix `model.ckpt-N`.
CHECKPOINT_FILE_SUFFIX = re.compile(r"\.(index|meta|data-\d{5}-of-\d{5})$")
INSTALL_HINT = 'reading a TensorFlow training checkpoint needs TensorFlow: pip install "hf-elmo[tf]"'

# `dump_weights`' renaming of the LSTM scopes, in its order (bilm-tf bilm/training.py `_get_outname`).
_LSTM_SCOPE_RENAMES = (("/rnn/", "/RNN/"), ("/multi_rnn_cell/", "/MultiRNNCell/"), ("/cell_", "/Cell"),
                       ("/lstm_cell/", "/LSTMCell/"))
_LSTM_VARIABLE_RENAMES = (("projection/kernel", "W_P_0"), ("/kernel", "/W_0"), ("/bias", "/B"))


@dataclass(frozen=True)
class TrainingCheckpoint:
    """
    The trained tensors of a bilm-tf training checkpoint.

    bilm: weights-hdf5 dataset name (`CNN/W_cnn_0`, `RNN_0/RNN/MultiRNNCell/Cell0/LSTMCell/W_0`, ...) -> float32
        array, exactly what bilm-tf's `dump_weights` writes.
    softmax_weight: float32 (n_vocab, projection_dim); softmax_bias: float32 (n_vocab,).
    """

    prefix: Path
    bilm: dict[str, np.ndarray]
    softmax_weight: np.ndarray
    softmax_bias: np.ndarray


def hdf5_dataset_name(variable: str) -> str | None:
    """
    The weights-hdf5 dataset name `dump_weights` gives a biLM variable (`lm/RNN_0/rnn/multi_rnn_cell/cell_0/
    lstm_cell/kernel` -> `RNN_0/RNN/MultiRNNCell/Cell0/LSTMCell/W_0`); None for everything else in a training
    checkpoint (the softmax, optimizer slots, counters). Names already in that older TensorFlow form (what the
    renaming recreates) pass unchanged, as they do through `dump_weights`.
    """
    if not variable.startswith(SCOPE) or variable.endswith(OPTIMIZER_SLOT_SUFFIX):
        return None
    if variable in (SOFTMAX_WEIGHT_VARIABLE, SOFTMAX_BIAS_VARIABLE):
        return None
    # dump_weights strips the scope with `lstrip('lm/')` (characters, not a prefix); no biLM name after the scope
    # starts with 'l', 'm' or '/', so removing the prefix gives the same names.
    name = variable[len(SCOPE):]
    for old, new in _LSTM_SCOPE_RENAMES:
        name = name.replace(old, new)
    if "/RNN/" in name:
        for old, new in _LSTM_VARIABLE_RENAMES:
            if old in name:
                name = name.replace(old, new)
                break
    return name


def find_checkpoint_prefix(path: str | os.PathLike) -> Path:
    """
    The checkpoint prefix (`.../model.ckpt-N`) of `path`: a folder with TensorFlow's `checkpoint` file (its latest
    checkpoint), a prefix, or one of the prefix's files (`.index`, `.meta`, `.data-*`).

    A `checkpoint` file written on another machine names an absolute path there; a folder that was moved still
    holds the files, so the name is looked up next to the `checkpoint` file too.
    """
    path = Path(path)
    if path.is_dir():
        state_file = path / "checkpoint"
        if not state_file.is_file():
            raise CheckpointError(
                f"{path}: no TensorFlow `checkpoint` file in this folder; pass the checkpoint prefix "
                f"(e.g. {path / 'model.ckpt-N'}) instead"
            )
        recorded = _latest_checkpoint_name(state_file)
        candidates = [Path(recorded) if os.path.isabs(recorded) else path / recorded, path / Path(recorded).name]
        for candidate in candidates:
            if _index_file(candidate).is_file():
                return candidate
        raise CheckpointError(
            f"{state_file}: names checkpoint {recorded!r}, but {_index_file(candidates[-1])} does not exist"
        )
    prefix = path.with_name(CHECKPOINT_FILE_SUFFIX.sub("", path.name))
    if not _index_file(prefix).is_file():
        raise CheckpointError(
            f"{path}: not a TensorFlow checkpoint (no folder with a `checkpoint` file, and no {_index_file(prefix)})"
        )
    return prefix


def _index_file(prefix: Path) -> Path:
    return prefix.with_name(prefix.name + ".index")


def _latest_checkpoint_name(state_file: Path) -> str:
    """`model_checkpoint_path` of TensorFlow's `checkpoint` file (a text protobuf: `key: "value"` lines)."""
    try:
        text = state_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{state_file}: not a TensorFlow `checkpoint` file ({error})") from None
    for line_number, line in enumerate(text.splitlines(), start=1):
        match = re.fullmatch(r'\s*model_checkpoint_path:\s*"(.*)"\s*', line)
        if match:
            if not match.group(1):
                raise CheckpointError(f"{state_file}: line {line_number} names no checkpoint")
            return match.group(1)
    raise CheckpointError(f"{state_file}: no `model_checkpoint_path` line; not a TensorFlow `checkpoint` file")


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """
    Send file descriptor 2 to the null device for the block. TensorFlow's C++ runtime logs INFO lines (oneDNN,
    CPU features) straight to it on import, before `TF_CPP_MIN_LOG_LEVEL` is read; reading a checkpoint is quiet
    work. Python exceptions still propagate.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _read_tensorflow_variables(prefix: Path, wanted: Callable[[str], bool]) -> dict[str, np.ndarray]:
    """The float32 values of the checkpoint's variables whose names `wanted` accepts, by TensorFlow name."""
    try:
        with _native_stderr_silenced():
            import tensorflow as tf
    except ImportError:
        raise CheckpointError(f"{prefix}: {INSTALL_HINT}") from None
    try:
        with _native_stderr_silenced():
            reader = tf.train.load_checkpoint(str(prefix))
            names = sorted(name for name in reader.get_variable_to_shape_map() if wanted(name))
            return {name: np.asarray(reader.get_tensor(name), dtype=np.float32) for name in names}
    # What the reader raises for damaged files varies: DataLossError (an OpError), or IndexError for a short
    # data file.
    except (tf.errors.OpError, ValueError, IndexError, RuntimeError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{prefix}: TensorFlow cannot read this checkpoint ({message})") from None


def read_training_checkpoint(path: str | os.PathLike) -> TrainingCheckpoint:
    """Read the biLM (in the weights-hdf5 naming) and the softmax of a bilm-tf training checkpoint."""
    prefix = find_checkpoint_prefix(path)
    softmax = (SOFTMAX_WEIGHT_VARIABLE, SOFTMAX_BIAS_VARIABLE)
    variables = _read_tensorflow_variables(prefix, lambda name: name in softmax or hdf5_dataset_name(name) is not None)
    for name in softmax:
        if name not in variables:
            raise CheckpointError(
                f"{prefix}: no variable {name!r}; not a bilm-tf training checkpoint (its softmax is "
                f"{SOFTMAX_WEIGHT_VARIABLE!r} and {SOFTMAX_BIAS_VARIABLE!r})"
            )
    softmax_weight, softmax_bias = variables.pop(SOFTMAX_WEIGHT_VARIABLE), variables.pop(SOFTMAX_BIAS_VARIABLE)
    check_softmax(softmax_weight, softmax_bias, str(prefix))
    bilm = {hdf5_dataset_name(name): value for name, value in variables.items()}
    return TrainingCheckpoint(prefix, bilm, softmax_weight, softmax_bias)


def bilm_state_dict(checkpoint: TrainingCheckpoint, config: ElmoConfig) -> dict[str, torch.Tensor]:
    """
    The `ElmoModel` state dict of a training checkpoint's biLM (float32), through the weights-hdf5 mapping.
    Every dataset the options call for must be there with its shape, and nothing else.
    """
    expected = expected_datasets(config)
    for name, shape in expected.items():
        if name not in checkpoint.bilm:
            raise CheckpointError(f"{checkpoint.prefix}: missing variable for {name!r} (expected shape {shape})")
        if checkpoint.bilm[name].shape != shape:
            raise CheckpointError(
                f"{checkpoint.prefix}: variable for {name!r} has shape {checkpoint.bilm[name].shape}, expected "
                f"{shape} from the options"
            )
    unexpected = sorted(set(checkpoint.bilm) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"{checkpoint.prefix}: variables the options do not describe: {', '.join(unexpected)} "
            f"(weights-hdf5 names)"
        )
    check_softmax(checkpoint.softmax_weight, checkpoint.softmax_bias, str(checkpoint.prefix), config.projection_dim)
    return _state_dict_from_arrays(checkpoint.bilm, config)


__all__ = [
    "TrainingCheckpoint",
    "bilm_state_dict",
    "find_checkpoint_prefix",
    "hdf5_dataset_name",
    "read_training_checkpoint",
]
