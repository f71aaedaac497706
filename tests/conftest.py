"""Shared test fixtures: bilm-tf's tiny model (tests/fixtures/bilm-tf) and random checkpoints in the official layout."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

import hf_elmo  # noqa: F401  (registers the Auto classes)
from hf_elmo.conversion import convert_original_checkpoint
from hf_elmo.checkpoints.bilm_tf import write_random_checkpoint

FIXTURE_MODEL_DIR = Path(__file__).parent / "fixtures" / "bilm-tf" / "model"
FIXTURE_OPTIONS = FIXTURE_MODEL_DIR / "options.json"
FIXTURE_WEIGHTS = FIXTURE_MODEL_DIR / "lm_weights.hdf5"
FIXTURE_VOCAB = FIXTURE_MODEL_DIR / "vocab_test.txt"


def fixture_options() -> dict:
    return json.loads(FIXTURE_OPTIONS.read_text())


def tiny_options(use_skip_connections: bool = True, **lstm) -> dict:
    """The fixture's shapes, with skip connections switchable (the fixture itself has them off)."""
    options = copy.deepcopy(fixture_options())
    options["lstm"]["use_skip_connections"] = use_skip_connections
    options["lstm"].update(lstm)
    return options


@pytest.fixture(scope="session")
def converted_fixture(tmp_path_factory) -> Path:
    """bilm-tf's fixture model converted to a checkpoint folder (read-only for tests: copy before modifying)."""
    out = tmp_path_factory.mktemp("converted") / "bilm-tf-fixture"
    return convert_original_checkpoint(FIXTURE_OPTIONS, FIXTURE_WEIGHTS, out)


@pytest.fixture(scope="session")
def converted_skip_model(tmp_path_factory) -> Path:
    """A random-weight tiny model with skip connections, in the official hdf5 layout, converted."""
    source = tmp_path_factory.mktemp("skip-source")
    options_path, weights_path = write_random_checkpoint(tiny_options(True), source, seed=1)
    return convert_original_checkpoint(options_path, weights_path, tmp_path_factory.mktemp("converted") / "skip")
