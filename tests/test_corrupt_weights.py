"""Damaged weight files: every read error names the file (and the dataset); NaN never reaches a checkpoint."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoModel, AutoTokenizer

from conftest import FIXTURE_OPTIONS, FIXTURE_WEIGHTS
from hf_elmo.checkpoints import CheckpointError
from hf_elmo.conversion import convert_original_checkpoint

FIXTURE_BYTES = FIXTURE_WEIGHTS.read_bytes()


def damaged_copy(folder: Path, offset: int, data: bytes) -> Path:
    """A copy of the fixture weights (same file name) with `data` written over the bytes at `offset`."""
    damaged = bytearray(FIXTURE_BYTES)
    damaged[offset : offset + len(data)] = data
    path = folder / FIXTURE_WEIGHTS.name
    path.write_bytes(bytes(damaged[: len(FIXTURE_BYTES)]))
    return path


def edited_copy(folder: Path, edit) -> Path:
    """A copy of the fixture weights with `edit(h5py.File)` applied."""
    path = folder / FIXTURE_WEIGHTS.name
    path.write_bytes(FIXTURE_BYTES)
    with h5py.File(path, "a") as f:
        edit(f)
    return path


def assert_refused(tmp_path: Path, weights: Path, message: str) -> None:
    """Converting over an existing folder fails with `message` (a regex) and leaves that folder as it was."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old checkpoint")
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(weights))}: {message}"):
        convert_original_checkpoint(FIXTURE_OPTIONS, weights, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([weights.name, "out"])  # no staging left


def test_corrupt_bytes_inside_datasets_are_an_error_not_nan_weights(tmp_path):
    # 50 kB of 0xff (a NaN as float32) over the second highway layer's weights.
    weights = damaged_copy(tmp_path, 200_000, b"\xff" * 50_000)
    assert_refused(
        tmp_path, weights,
        r"NaN or infinite values in dataset 'CNN_high_1/W_carry' \(4804 of 15376 values, the first at index "
        r"\(85, 32\)\), dataset 'CNN_high_1/b_carry' \(124 of 124 values, the first at index \(0,\)\), "
        r"dataset 'CNN_high_1/W_transform' \(7572 of 15376 values, the first at index \(0, 0\)\)$",
    )


def test_one_infinite_value_is_an_error(tmp_path):
    def edit(f):
        f["CNN/b_cnn_2"][3] = -np.inf

    weights = edited_copy(tmp_path, edit)
    assert_refused(tmp_path, weights, r"NaN or infinite values in dataset 'CNN/b_cnn_2' \(1 of 16 values, "
                                      r"the first at index \(3,\)\)$")


def test_weights_that_overflow_to_nan_outputs_are_an_error(tmp_path):
    """Finite but huge weights (0x7f bytes are 3.4e38) turn every output into inf/NaN."""
    weights = damaged_copy(tmp_path, 21_680, b"\x7f" * 7_936)  # the whole of CNN_proj/W_proj
    assert_refused(tmp_path, weights, r"the weights overflow: a probe sentence of every character gives NaN or "
                                      r"infinite outputs \(the largest weight, 3\.4e\+38, is in dataset "
                                      r"'CNN_proj/W_proj'\)$")


def test_truncated_file_names_the_file(tmp_path):
    weights = tmp_path / FIXTURE_WEIGHTS.name
    weights.write_bytes(FIXTURE_BYTES[:100_000])
    assert_refused(tmp_path, weights, r"cannot open the HDF5 file \(.*truncated file: eof = 100000")


def test_checksum_error_names_the_file_and_the_dataset(tmp_path):
    weights = tmp_path / FIXTURE_WEIGHTS.name

    def copy_with_checksum(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            copy.create_dataset(name, data=obj[...], chunks=obj.shape, fletcher32=True)

    with h5py.File(FIXTURE_WEIGHTS, "r") as source, h5py.File(weights, "w") as copy:
        source.visititems(copy_with_checksum)
    with h5py.File(weights, "r") as f:
        where = f["CNN/b_cnn_2"].id.get_chunk_info(0).byte_offset
    with open(weights, "r+b") as f:
        f.seek(where + 4)
        f.write(b"\x01\x02")
    assert_refused(tmp_path, weights, r"cannot read dataset 'CNN/b_cnn_2' \(.*filter returned failure during read")


def test_unreadable_external_storage_names_the_file_and_the_dataset(tmp_path):
    def edit(f):
        del f["CNN/b_cnn_0"]
        f.create_dataset("CNN/b_cnn_0", shape=(4,), dtype="f4", external=[(str(tmp_path / "gone.bin"), 0, 16)])

    weights = edited_copy(tmp_path, edit)
    assert_refused(tmp_path, weights, r"cannot read dataset 'CNN/b_cnn_0' \(.*external raw data file")


def test_text_instead_of_numbers_names_the_dataset(tmp_path):
    def edit(f):
        del f["CNN/b_cnn_0"]
        f["CNN/b_cnn_0"] = np.array([b"w", b"x", b"y", b"z"])

    weights = edited_copy(tmp_path, edit)
    assert_refused(tmp_path, weights, r"dataset 'CNN/b_cnn_0' is not numeric \(dtype \|S1\)")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    offset=st.one_of(st.integers(0, 4096), st.integers(0, len(FIXTURE_BYTES) - 1)),  # metadata first, then anywhere
    length=st.integers(1, 60_000),
    byte=st.integers(0, 255),
)
def test_random_damage_is_a_named_error_or_a_finite_checkpoint(offset, length, byte):
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        weights = damaged_copy(folder, offset, bytes([byte]) * length)
        try:
            out = convert_original_checkpoint(FIXTURE_OPTIONS, weights, folder / "out")
        except CheckpointError as error:
            assert str(error).startswith(f"{weights}: ")
            assert not (folder / "out").exists()
            return
        model = AutoModel.from_pretrained(out).eval()
        tokenizer = AutoTokenizer.from_pretrained(out)
        enc = tokenizer(["The cat sat on the mat.", "Überraschung! 😀 ok"], padding=True, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**enc, output_hidden_states=True).hidden_states
        assert all(bool(torch.isfinite(layer).all()) for layer in hidden)
