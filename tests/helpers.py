"""Test support shared by the test files and by benchmarks/ (so no pytest here):

- bilm-tf's tiny test model (tests/fixtures/bilm-tf): `FIXTURE_*` paths and `fixture_options()`;
- `tiny_config(**overrides)`: the one small `ElmoConfig` of the tests (the fixture's shapes, skip connections on);
- `options_json(config)` and `write_random_checkpoint(options, directory)`: an original release (options.json +
  weights .hdf5 in bilm-tf's layout) with random weights, since no real release can be downloaded here;
- `run_alone(model, tokenizer, sentence)`: the model run on one sentence by itself, the reference that every
  batched, sorted or parallel result is compared with.

Benchmarks import it with `sys.path.insert(0, "<repo>/tests")`.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_elmo.checkpoints.bilm_tf import config_from_options, expected_datasets
from hf_elmo.configuration_elmo import ElmoConfig

FIXTURE_MODEL_DIR = Path(__file__).parent / "fixtures" / "bilm-tf" / "model"
FIXTURE_OPTIONS = FIXTURE_MODEL_DIR / "options.json"
FIXTURE_WEIGHTS = FIXTURE_MODEL_DIR / "lm_weights.hdf5"
FIXTURE_VOCAB = FIXTURE_MODEL_DIR / "vocab_test.txt"
# bilm-tf's tiny training corpus and its vocabulary.
TRAIN = Path(__file__).parent / "fixtures" / "bilm-tf" / "train"
# bilm-tf's training checkpoint with its softmax, and the LM numbers bilm-tf's own graph gives (README there).
LM_FIXTURE = Path(__file__).parent / "fixtures" / "bilm-tf-lm"


def fixture_options() -> dict:
    """The `options.json` of bilm-tf's test model (a fresh copy)."""
    return json.loads(FIXTURE_OPTIONS.read_text())


def tiny_config(**overrides: Any) -> ElmoConfig:
    """
    bilm-tf's test model's shapes (4-dim characters, 124 filters, 2 x 64/16 biLSTM) with skip connections on
    (the fixture has them off), then `overrides` (any `ElmoConfig` argument).
    """
    fixture = config_from_options(fixture_options())
    parameters = inspect.signature(ElmoConfig.__init__).parameters.values()
    values = {p.name: getattr(fixture, p.name) for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD
              and p.name != "self"}
    return ElmoConfig(**{**values, "use_skip_connections": True, **overrides})


def options_json(config: ElmoConfig) -> dict[str, Any]:
    """The inference `options.json` contents describing `config` (bilm-tf's sections and key names)."""
    return {
        "lstm": {"dim": config.lstm_dim, "projection_dim": config.projection_dim,
                 "n_layers": config.num_hidden_layers, "cell_clip": config.cell_clip,
                 "proj_clip": config.proj_clip, "use_skip_connections": config.use_skip_connections},
        "char_cnn": {"activation": config.char_activation, "filters": config.char_filters,
                     "n_highway": config.num_highway_layers, "embedding": {"dim": config.char_embedding_dim},
                     "n_characters": config.num_characters,
                     "max_characters_per_token": config.max_characters_per_token},
    }


def write_random_checkpoint(
    options: dict[str, Any], directory: str | os.PathLike, seed: int = 0, scale: float = 0.1
) -> tuple[Path, Path]:
    """
    Write `options.json` and `weights.hdf5` with random weights (normal, standard deviation `scale`) in the
    official dataset layout and shapes. Returns both paths.
    """
    import h5py

    config = config_from_options(options)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    options_path, weights_path = directory / "options.json", directory / "weights.hdf5"
    options_path.write_text(json.dumps(options), encoding="utf-8")
    with h5py.File(weights_path, "w") as hdf5:
        for name, shape in expected_datasets(config).items():
            hdf5.create_dataset(name, data=(rng.standard_normal(shape, dtype=np.float32) * scale))
    return options_path, weights_path


def run_alone(model: torch.nn.Module, tokenizer: Any, sentence: str | Sequence[str]) -> dict[str, Any]:
    """
    One sentence run through `model` by itself (a batch of one, zero initial state), as float32 numpy arrays:
    `"mix"` (the scalar mix, `last_hidden_state`) and `"top"` (the top biLSTM layer) `(W, D)`, `"all"` (every
    layer, 0 = the character CNN) `(L+1, W, D)`, and `"state"`: the final LSTM state `(h (L, 2, P), c (L, 2, H))`.

    `sentence` is raw text (split by the tokenizer) or a sequence of words (used as they are).
    """
    split = not isinstance(sentence, str)
    enc = tokenizer([list(sentence) if split else sentence], is_split_into_words=split, return_tensors="pt")
    enc = enc.to(model.device)
    with torch.inference_mode():
        out = model(**enc, output_hidden_states=True, use_cache=True)
    layers = torch.stack(out.hidden_states)[:, 0].float().cpu().numpy()
    return {"mix": out.last_hidden_state[0].float().cpu().numpy(), "top": layers[-1], "all": layers,
            "state": tuple(part[:, :, 0].float().cpu().numpy() for part in out.state)}


TWO_SENTENCES = [["The", "cat", "sat", "on", "the", "mat", "."], ["Colorless", "green", "ideas", "sleep", "furiously"]]


def checkpoint_layers(folder: str | os.PathLike, **from_pretrained_kwargs: Any) -> torch.Tensor:
    """
    Every layer of `TWO_SENTENCES` run as one padded batch, `(L+1, 2, 7, D)`, by the checkpoint in `folder`
    loaded with `AutoTokenizer` / `AutoModel` (`from_pretrained_kwargs` go to both).
    """
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, **from_pretrained_kwargs)
    model = AutoModel.from_pretrained(folder, **from_pretrained_kwargs).eval()
    enc = tokenizer(TWO_SENTENCES, is_split_into_words=True, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return torch.stack(model(**enc, output_hidden_states=True).hidden_states)
