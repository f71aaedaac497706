"""Exactness against the original: bilm-tf's TensorFlow outputs, and an independent NumPy biLM."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from helpers import FIXTURE_MODEL_DIR, FIXTURE_WEIGHTS, fixture_options, options_json, tiny_config, write_random_checkpoint
from reference_bilm import ReferenceBiLM

SENTENCES = json.loads((FIXTURE_MODEL_DIR / "lm_embeddings_sentences.json").read_text())


def tensorflow_top_layer(list_index: int, batch_index: int) -> np.ndarray:
    """bilm-tf's top layer for sentence `batch_index` of list `list_index`: (n_words, 2P) = [forward, backward]."""
    with h5py.File(FIXTURE_MODEL_DIR / f"lm_embeddings_{list_index}.hdf5", "r") as f:
        halves = f[str(batch_index)][...]
    return np.concatenate([halves[0], halves[1]], axis=-1)


def test_stateful_replay_matches_tensorflow(converted_fixture):
    """Upstream's own test: 10 stateful batches of 3 sentences, top layer, allclose(atol=1e-6)."""
    tokenizer = AutoTokenizer.from_pretrained(converted_fixture)
    model = AutoModel.from_pretrained(converted_fixture).eval()
    state, worst = None, 0.0
    with torch.inference_mode():
        for i in range(10):
            batch = [SENTENCES[k][i].split() for k in range(3)]
            enc = tokenizer(batch, is_split_into_words=True, padding=True, return_tensors="pt")
            out = model(**enc, state=state, use_cache=True, output_hidden_states=True)
            state = out.state
            for k, words in enumerate(batch):
                actual = out.hidden_states[-1][k, : len(words)].numpy()
                expected = tensorflow_top_layer(k, i)
                assert actual.shape == expected.shape
                assert np.allclose(actual, expected, atol=1e-6), (i, k, np.abs(actual - expected).max())
                worst = max(worst, float(np.abs(actual - expected).max()))
    print(f"max |diff| against TensorFlow over 30 sentences: {worst:.3g}")


def test_without_state_only_the_first_batch_matches_tensorflow(converted_fixture):
    """The fixture really is stateful: zero-state (default) outputs match batch 0 but not later batches."""
    tokenizer = AutoTokenizer.from_pretrained(converted_fixture)
    model = AutoModel.from_pretrained(converted_fixture).eval()
    with torch.inference_mode():
        for i, should_match in ((0, True), (1, False)):
            words = SENTENCES[0][i].split()
            out = model(**tokenizer([words], is_split_into_words=True, return_tensors="pt"), output_hidden_states=True)
            close = np.allclose(out.hidden_states[-1][0].numpy(), tensorflow_top_layer(0, i), atol=1e-6)
            assert close == should_match


def test_reference_bilm_reproduces_tensorflow():
    """The NumPy reference is trusted because it matches bilm-tf on the fixture (zero state = batch 0)."""
    reference = ReferenceBiLM(fixture_options(), str(FIXTURE_WEIGHTS))
    for k in range(3):
        layers = reference.layers(SENTENCES[k][0].split())
        assert np.allclose(layers[-1], tensorflow_top_layer(k, 0), atol=1e-6)


@pytest.mark.parametrize("skip", [True, False])
def test_all_layers_match_reference(tmp_path, skip):
    """Every layer, with and without skip connections, on random weights in the official layout."""
    from hf_elmo.conversion import convert_original_checkpoint

    options = options_json(tiny_config(use_skip_connections=skip))
    options_path, weights_path = write_random_checkpoint(options, tmp_path / "src", seed=3)
    folder = convert_original_checkpoint(options_path, weights_path, tmp_path / "hf")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    reference = ReferenceBiLM(options, str(weights_path))
    sentences = [["Hello", "world", "!"], SENTENCES[1][2].split()[:12], ["é", "😀"]]
    enc = tokenizer(sentences, is_split_into_words=True, padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = model(**enc, output_hidden_states=True)
    assert len(out.hidden_states) == 3
    for row, words in enumerate(sentences):
        expected = reference.layers(words)
        actual = np.stack([h[row, : len(words)].numpy() for h in out.hidden_states])
        assert np.allclose(actual, expected, atol=1e-5), np.abs(actual - expected).max()
        # A fresh checkpoint's ELMo vector is the plain average of the layers.
        assert np.allclose(out.last_hidden_state[row, : len(words)].numpy(), expected.mean(0), atol=1e-5)
