"""Shared fixtures: bilm-tf's tiny model converted, a random tiny model with skip connections, and the fixture
model loaded, bilm-tf's LM numbers. Plain helpers (paths, `tiny_config`, `write_random_checkpoint`, `run_alone`) are in helpers.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transformers import AutoModel

import hf_elmo  # noqa: F401  (registers the Auto classes)
from helpers import (FIXTURE_OPTIONS, FIXTURE_WEIGHTS, LM_FIXTURE, TRAIN, options_json, tiny_config,
                     write_random_checkpoint)
from hf_elmo.checkpoints.softmax import write_softmax
from hf_elmo.conversion import convert_original_checkpoint
from hf_elmo.tokenization_elmo import ElmoTokenizer


@pytest.fixture(scope="session")
def converted_fixture(tmp_path_factory) -> Path:
    """bilm-tf's fixture model converted to a checkpoint folder (read-only for tests: copy before modifying)."""
    out = tmp_path_factory.mktemp("converted") / "bilm-tf-fixture"
    return convert_original_checkpoint(FIXTURE_OPTIONS, FIXTURE_WEIGHTS, out)


@pytest.fixture(scope="session")
def converted_skip_model(tmp_path_factory) -> Path:
    """A random-weight `tiny_config()` model (skip connections on), in the official hdf5 layout, converted."""
    source = tmp_path_factory.mktemp("skip-source")
    options_path, weights_path = write_random_checkpoint(options_json(tiny_config()), source, seed=1)
    return convert_original_checkpoint(options_path, weights_path, tmp_path_factory.mktemp("converted") / "skip")


@pytest.fixture(scope="module")
def fixture_model(converted_fixture):
    """`converted_fixture` loaded (`AutoModel`, eval mode), one per test module. Tests that change it undo it."""
    return AutoModel.from_pretrained(converted_fixture).eval()


@pytest.fixture(scope="module")
def elmo_tokenizer() -> ElmoTokenizer:
    """The default `ElmoTokenizer` (50 characters per word, Moses rules for raw text): every test model's."""
    return ElmoTokenizer()


@pytest.fixture(scope="session")
def lm_ref() -> dict[str, np.ndarray]:
    """bilm-tf's own LM numbers on its training checkpoint (`tests/fixtures/bilm-tf-lm/lm_ref.npz`, keys in its README)."""
    with np.load(LM_FIXTURE / "lm_ref.npz") as npz:
        return dict(npz)


@pytest.fixture(scope="session")
def softmax_file(lm_ref, tmp_path_factory) -> Path:
    """bilm-tf-lm's softmax in the released hdf5 layout (TensorFlow's values, from lm_ref)."""
    return write_softmax(tmp_path_factory.mktemp("softmax") / "softmax.hdf5", lm_ref["softmax_W"], lm_ref["softmax_b"])


@pytest.fixture(scope="session")
def lm_folder(softmax_file, tmp_path_factory) -> Path:
    """bilm-tf's trained test LM converted from dump_weights' hdf5 + the softmax + its vocabulary (read-only)."""
    return convert_original_checkpoint(LM_FIXTURE / "options.json", LM_FIXTURE / "weights.hdf5",
                                       tmp_path_factory.mktemp("lm") / "lm", vocab_file=TRAIN / "vocab.txt",
                                       softmax_weight_file=softmax_file)
