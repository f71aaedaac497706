"""The original ELMo checkpoint format (bilm-tf's `options.json` + weights `.hdf5`) and its mapping to `ElmoModel`.

Every dataset name, shape and transformation between the TensorFlow layout and this package's parameters
lives here, so reading a release, validating it and writing one in the same layout all share one table. Each
mapping has its inverse next to it (`config_from_options` / `options_from_config`, `read_weights` /
`datasets_from_state_dict` + `write_weights`), for `hf-elmo export-original`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import CheckpointError, read_json_file
from ..atomic_files import atomic_output
from ..configuration_elmo import OFFICIAL_CHAR_FILTERS, ElmoConfig

# The keys bilm-tf reads with `options[...]` (bilm/model.py, bilm/training.py); a file without one fails there too.
REQUIRED_OPTIONS = {
    "lstm": ("dim", "projection_dim"),
    "char_cnn": ("filters", "embedding", "n_characters", "max_characters_per_token", "activation"),
}
# The keys bilm-tf reads with `.get`, and what it does without them: its own training writes options without
# the clips and skip connections (tests/test_training.py). A null counts as absent, except for `n_layers`.
OPTIONAL_LSTM_OPTIONS = {"n_layers": 1, "cell_clip": None, "proj_clip": None, "use_skip_connections": False}
TF_FORGET_BIAS = 1.0

# The official English releases (ELMO_FORMAT.md): name -> (lstm dim, projection dim, highway layers).
OFFICIAL_MODELS = {
    "small": (1024, 128, 1),
    "medium": (2048, 256, 1),
    "original": (4096, 512, 2),
}


def official_options(name: str) -> dict[str, Any]:
    """`options.json` contents of an official English model (`small`, `medium` or `original`)."""
    lstm_dim, projection_dim, n_highway = OFFICIAL_MODELS[name]
    return {
        "lstm": {"dim": lstm_dim, "projection_dim": projection_dim, "n_layers": 2, "cell_clip": 3,
                 "proj_clip": 3, "use_skip_connections": True},
        "char_cnn": {"activation": "relu", "filters": OFFICIAL_CHAR_FILTERS, "n_highway": n_highway,
                     "embedding": {"dim": 16}, "n_characters": 262, "max_characters_per_token": 50},
    }


def read_options(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check an `options.json`; extra training keys are ignored."""
    path = Path(path)
    options = read_json_file(path, "options file not found")
    check_options(options, str(path))
    return options


def check_options(options: Any, source: str = "options") -> None:
    if not isinstance(options, dict):
        raise CheckpointError(f"{source}: expected a JSON object, got {type(options).__name__}")
    for section, keys in REQUIRED_OPTIONS.items():
        if not isinstance(options.get(section), dict):
            raise CheckpointError(f"{source}: missing section {section!r}")
        for key in keys:
            if key not in options[section]:
                raise CheckpointError(f"{source}: missing key {section}.{key}")
    if not isinstance(options["char_cnn"]["embedding"], dict) or "dim" not in options["char_cnn"]["embedding"]:
        raise CheckpointError(f"{source}: missing key char_cnn.embedding.dim")


def config_from_options(options: dict[str, Any], source: str = "options", **overrides: Any) -> ElmoConfig:
    """
    The `ElmoConfig` of an `options.json`. Training options (`n_characters` 261) become inference ones (262);
    keys bilm-tf treats as optional get its defaults (`OPTIONAL_LSTM_OPTIONS`; no `n_highway`: no highway layers).
    """
    check_options(options, source)
    cnn = options["char_cnn"]
    lstm = {**OPTIONAL_LSTM_OPTIONS, **options["lstm"]}
    try:
        return ElmoConfig(
            char_embedding_dim=int(cnn["embedding"]["dim"]),
            char_filters=[[int(w), int(n)] for w, n in cnn["filters"]],
            num_highway_layers=int(cnn.get("n_highway") or 0),
            # The extra id is padding, added in front of the 261 stored rows.
            num_characters=262 if int(cnn["n_characters"]) == 261 else int(cnn["n_characters"]),
            max_characters_per_token=int(cnn["max_characters_per_token"]),
            char_activation=cnn["activation"],
            lstm_dim=int(lstm["dim"]),
            projection_dim=int(lstm["projection_dim"]),
            num_hidden_layers=int(lstm["n_layers"]),
            cell_clip=None if lstm["cell_clip"] is None else float(lstm["cell_clip"]),
            proj_clip=None if lstm["proj_clip"] is None else float(lstm["proj_clip"]),
            use_skip_connections=bool(lstm["use_skip_connections"]),
            **{**({"dropout": float(options["dropout"])} if options.get("dropout") is not None else {}), **overrides},
        )
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: invalid options ({error})") from None


# The `ElmoConfig` fields an `options.json` describes (everything else is hf-elmo's own: the scalar mix, cached
# words, the task heads' settings, the language model's vocabulary ids).
OPTIONS_CONFIG_FIELDS = (
    "char_embedding_dim", "char_filters", "num_highway_layers", "num_characters", "max_characters_per_token",
    "char_activation", "lstm_dim", "projection_dim", "num_hidden_layers", "cell_clip", "proj_clip",
    "use_skip_connections",
)
# bilm-tf training keys (bilm/training.py) kept when a config carries them as attributes of the same name.
TRAINING_OPTION_KEYS = ("dropout", "n_negative_samples_batch", "all_clip_norm_val", "unroll_steps", "batch_size",
                        "n_epochs", "n_train_tokens")


def options_from_config(config: ElmoConfig, source: str = "the checkpoint") -> dict[str, Any]:
    """
    The inverse of `config_from_options`: the inference `options.json` of `config` (bilm-tf's sections and key
    names, `bidirectional: true`, `n_characters` as the config has it: 262 for every bilm-tf model);
    `n_tokens_vocab` (the softmax's rows) when `config.lm_vocab_size` is set. A clip that is None is written as
    `null`, not left out as bilm-tf's own training does: bilm-tf reads the clips with `.get` (null is no clip),
    but allennlp's `_ElmoBiLm` indexes `options["lstm"]["cell_clip"]` and fails on a missing key.
    Raises `CheckpointError` for a config bilm-tf cannot describe (ELMoForManyLangs' word embedding or own
    character table): those models would load there but compute garbage.
    """
    if config.word_embedding_dim or config.boundary_char_ids is not None:
        raise CheckpointError(
            f"{source}: cannot be written in bilm-tf's layout: it has "
            f"{'a word embedding and ' if config.word_embedding_dim else ''}its own character table (an "
            f"ELMoForManyLangs model), which bilm-tf's options.json and weights hdf5 cannot hold; bilm-tf and "
            f"allennlp would read its characters as UTF-8 bytes"
        )
    lstm: dict[str, Any] = {"dim": config.lstm_dim, "projection_dim": config.projection_dim,
                            "n_layers": config.num_hidden_layers}
    for key, clip in (("cell_clip", config.cell_clip), ("proj_clip", config.proj_clip)):
        # The releases write `3`, not `3.0`.
        lstm[key] = int(clip) if clip is not None and float(clip).is_integer() else clip
    lstm["use_skip_connections"] = config.use_skip_connections
    options: dict[str, Any] = {
        "bidirectional": True,
        "char_cnn": {"activation": config.char_activation, "embedding": {"dim": config.char_embedding_dim},
                     "filters": [list(f) for f in config.char_filters], "n_highway": config.num_highway_layers,
                     "max_characters_per_token": config.max_characters_per_token,
                     "n_characters": config.num_characters},
        "lstm": lstm,
    }
    if config.lm_vocab_size:
        options["n_tokens_vocab"] = config.lm_vocab_size
    options.update({key: getattr(config, key) for key in TRAINING_OPTION_KEYS
                    if getattr(config, key, None) is not None})
    read_back = config_from_options(options, source)
    differing = [name for name in OPTIONS_CONFIG_FIELDS if getattr(read_back, name) != getattr(config, name)]
    if differing:  # e.g. 261 characters, which bilm-tf reads as training options (one row fewer)
        raise CheckpointError(
            f"{source}: cannot be written in bilm-tf's layout: options.json would read back with different "
            + ", ".join(f"{name} ({getattr(read_back, name)!r}, not {getattr(config, name)!r})" for name in differing)
        )
    return options


def _lstm_prefix(direction: int, layer: int) -> str:
    return f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"


def expected_datasets(config: ElmoConfig) -> dict[str, tuple[int, ...]]:
    """Every dataset of the weights hdf5 with its shape, in the official layout."""
    d, f = config.char_embedding_dim, config.num_char_filters
    shapes: dict[str, tuple[int, ...]] = {"char_embed": (config.num_characters - 1, d)}
    for i, (width, n) in enumerate(config.char_filters):
        shapes[f"CNN/W_cnn_{i}"] = (1, width, d, n)
        shapes[f"CNN/b_cnn_{i}"] = (n,)
    for k in range(config.num_highway_layers):
        for kind in ("carry", "transform"):
            shapes[f"CNN_high_{k}/W_{kind}"] = (f, f)
            shapes[f"CNN_high_{k}/b_{kind}"] = (f,)
    if f != config.projection_dim:
        shapes["CNN_proj/W_proj"] = (f, config.projection_dim)
        shapes["CNN_proj/b_proj"] = (config.projection_dim,)
    h, p = config.lstm_dim, config.projection_dim
    for direction in (0, 1):
        for layer in range(config.num_hidden_layers):
            prefix = _lstm_prefix(direction, layer)
            shapes[f"{prefix}/W_0"] = (p + p, 4 * h)
            shapes[f"{prefix}/B"] = (4 * h,)
            shapes[f"{prefix}/W_P_0"] = (h, p)
    return shapes


def _swap_tf_torch_gates(matrix: np.ndarray) -> np.ndarray:
    """
    Reorder the last (4H) axis from TensorFlow's (i, j, f, o) to PyTorch's (i, f, j, o), or back: swapping the
    middle two blocks is its own inverse.
    """
    i, j, f, o = np.split(matrix, 4, axis=-1)
    return np.concatenate([i, f, j, o], axis=-1)


def read_weights(weight_file: str | os.PathLike, config: ElmoConfig) -> dict[str, torch.Tensor]:
    """Read an official weights hdf5 into an `ElmoModel` state dict (float32), every dataset checked (`read_datasets`)."""
    return _state_dict_from_arrays(read_datasets(weight_file, config), config)


# What h5py raises on a damaged file: OSError (open, read, checksum), RuntimeError and KeyError (damaged metadata
# met while looking a name up), ValueError (an invalid object).
_H5PY_READ_ERRORS = (OSError, RuntimeError, KeyError, ValueError)


def _h5py_reason(error: Exception) -> str:
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


def read_datasets(weight_file: str | os.PathLike, config: ElmoConfig) -> dict[str, np.ndarray]:
    """
    Every dataset of `expected_datasets(config)`, as float32 arrays in the file's layout. Any problem (unreadable
    or damaged file, missing dataset, wrong shape or type, NaN or infinity) is a `CheckpointError` naming the file
    and the dataset.
    """
    import h5py

    path = Path(weight_file)
    if not path.is_file():
        raise CheckpointError(f"{path}: weight file not found")
    if not h5py.is_hdf5(path):
        raise CheckpointError(f"{path}: not an HDF5 file")
    try:
        hdf5 = h5py.File(path, "r")
    except _H5PY_READ_ERRORS as error:
        raise CheckpointError(f"{path}: cannot open the HDF5 file ({_h5py_reason(error)})") from None
    with hdf5:
        arrays = {name: _read_dataset(hdf5, name, shape, path) for name, shape in expected_datasets(config).items()}
    non_finite = [(name, array) for name, array in arrays.items() if not np.isfinite(array).all()]
    if non_finite:
        described = []
        for name, array in non_finite:
            bad = ~np.isfinite(array)
            first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), array.shape))
            described.append(f"dataset {name!r} ({int(bad.sum())} of {array.size} values, the first at index {first})")
        raise CheckpointError(f"{path}: NaN or infinite values in {', '.join(described)}")
    return arrays


def _read_dataset(hdf5: Any, name: str, shape: tuple[int, ...], path: Path) -> np.ndarray:
    """One dataset of an open weights file as float32, checked against its expected shape."""
    import h5py

    try:
        dataset = hdf5.get(name)
        if not isinstance(dataset, h5py.Dataset):
            problem = f"missing dataset {name!r} (expected shape {shape})"
        elif tuple(dataset.shape) != shape:
            problem = f"dataset {name!r} has shape {tuple(dataset.shape)}, expected {shape} from the options"
        elif dataset.dtype.kind not in "fiu":
            problem = f"dataset {name!r} is not numeric (dtype {dataset.dtype.str})"
        else:
            return np.asarray(dataset[...], dtype=np.float32)
    except _H5PY_READ_ERRORS as error:
        problem = f"cannot read dataset {name!r} ({_h5py_reason(error)})"
    raise CheckpointError(f"{path}: {problem}")


def largest_weight(weight_file: str | os.PathLike, config: ElmoConfig) -> tuple[str, float]:
    """The dataset holding the largest absolute value, and that value (to explain weights that overflow)."""
    arrays = read_datasets(weight_file, config)
    magnitudes = {name: float(np.abs(array).max(initial=0.0)) for name, array in arrays.items()}
    name = max(magnitudes, key=magnitudes.__getitem__)
    return name, magnitudes[name]


def _state_dict_from_arrays(arrays: dict[str, np.ndarray], config: ElmoConfig) -> dict[str, torch.Tensor]:
    state: dict[str, np.ndarray] = {}
    char_embed = arrays["char_embed"]
    state["char_encoder.char_embedding.weight"] = np.concatenate(
        [np.zeros((1, char_embed.shape[1]), np.float32), char_embed]
    )
    for i in range(len(config.char_filters)):
        # TF (1, width, in, out) -> torch Conv1d (out, in, width)
        state[f"char_encoder.convolutions.{i}.weight"] = arrays[f"CNN/W_cnn_{i}"][0].transpose(2, 1, 0)
        state[f"char_encoder.convolutions.{i}.bias"] = arrays[f"CNN/b_cnn_{i}"]
    for k in range(config.num_highway_layers):
        for kind in ("carry", "transform"):
            state[f"char_encoder.highways.{k}.{kind}.weight"] = arrays[f"CNN_high_{k}/W_{kind}"].T
            state[f"char_encoder.highways.{k}.{kind}.bias"] = arrays[f"CNN_high_{k}/b_{kind}"]
    if "CNN_proj/W_proj" in arrays:
        state["char_encoder.projection.weight"] = arrays["CNN_proj/W_proj"].T
        state["char_encoder.projection.bias"] = arrays["CNN_proj/b_proj"]
    p = config.projection_dim
    for layer in range(config.num_hidden_layers):
        per_direction: dict[str, list[np.ndarray]] = {"input": [], "recurrent": [], "bias": [], "proj": []}
        for direction in (0, 1):
            prefix = _lstm_prefix(direction, layer)
            kernel = _swap_tf_torch_gates(arrays[f"{prefix}/W_0"])  # rows: [input (P), previous output (P)]
            bias = _swap_tf_torch_gates(arrays[f"{prefix}/B"]).copy()
            h = bias.shape[0] // 4
            bias[h : 2 * h] += TF_FORGET_BIAS  # TensorFlow adds it at run time
            # TF right-multiplies its (in, out) kernels; ours are laid out as nn.Linear's (out, in).
            per_direction["input"].append(kernel[:p].T)
            per_direction["recurrent"].append(kernel[p:].T)
            per_direction["bias"].append(bias)
            per_direction["proj"].append(arrays[f"{prefix}/W_P_0"].T)
        prefix = f"encoder.layers.{layer}"
        state[f"{prefix}.input_weight"] = np.stack(per_direction["input"])
        state[f"{prefix}.recurrent_weight"] = np.stack(per_direction["recurrent"])
        state[f"{prefix}.bias"] = np.stack(per_direction["bias"])
        state[f"{prefix}.projection_weight"] = np.stack(per_direction["proj"])
    n_layers = config.num_hidden_layers + 1
    fixed = config.scalar_mix_parameters
    state["scalar_mix.scalar_parameters"] = np.asarray(fixed if fixed is not None else [0.0] * n_layers, np.float32)
    state["scalar_mix.gamma"] = np.ones(1, np.float32)
    return {name: torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)) for name, value in state.items()}


def datasets_from_state_dict(state: dict[str, torch.Tensor], config: ElmoConfig,
                             source: str = "the checkpoint") -> dict[str, np.ndarray]:
    """
    The inverse of `read_weights`: every dataset of `expected_datasets(config)` as a float32 array in bilm-tf's
    layout, from an `ElmoModel` state dict (the scalar mix and cached word vectors are not part of that layout).

    Exact except for the forget-gate quarter of each LSTM's `B`: TensorFlow adds its forget bias (1.0) at run
    time, so bilm-tf's layout holds `b - 1` for our forget bias `b`, rounded to float32. For a converted release
    (`b` = fl(B_f + 1)) that subtraction is exact, so export and conversion give the checkpoint back bit for bit,
    and only the release's own `B_f` comes back rounded, by at most half a float32 step at `B_f + 1` (2**-24 for
    |B_f| < 1). A trained forget bias `b` below 0.5 keeps only float32's step near 1 of its bits (off by at most
    2**-24 after converting back).
    """
    def array(name: str) -> np.ndarray:
        return state[name].detach().to("cpu", torch.float32).numpy()

    char_embedding = array("char_encoder.char_embedding.weight")
    if np.any(char_embedding[0] != 0):
        raise CheckpointError(f"{source}: row 0 of the character embedding (padding) is not zero; bilm-tf's "
                              f"char_embed has no row for it (it always uses zeros)")
    arrays: dict[str, np.ndarray] = {"char_embed": char_embedding[1:]}
    for i in range(len(config.char_filters)):
        # torch Conv1d (out, in, width) -> TF (1, width, in, out)
        arrays[f"CNN/W_cnn_{i}"] = array(f"char_encoder.convolutions.{i}.weight").transpose(2, 1, 0)[np.newaxis]
        arrays[f"CNN/b_cnn_{i}"] = array(f"char_encoder.convolutions.{i}.bias")
    for k in range(config.num_highway_layers):
        for kind in ("carry", "transform"):
            arrays[f"CNN_high_{k}/W_{kind}"] = array(f"char_encoder.highways.{k}.{kind}.weight").T
            arrays[f"CNN_high_{k}/b_{kind}"] = array(f"char_encoder.highways.{k}.{kind}.bias")
    if "char_encoder.projection.weight" in state:
        arrays["CNN_proj/W_proj"] = array("char_encoder.projection.weight").T
        arrays["CNN_proj/b_proj"] = array("char_encoder.projection.bias")
    for layer in range(config.num_hidden_layers):
        prefix = f"encoder.layers.{layer}"
        input_weight, recurrent_weight, bias, projection = (
            array(f"{prefix}.{name}") for name in ("input_weight", "recurrent_weight", "bias", "projection_weight"))
        for direction in (0, 1):
            tf_bias = bias[direction].copy()
            h = tf_bias.shape[0] // 4
            tf_bias[h : 2 * h] -= TF_FORGET_BIAS  # TensorFlow adds it back at run time
            tf_prefix = _lstm_prefix(direction, layer)
            # nn.Linear's (out, in) back to TF's right-multiplied (in, out), rows [input (P), previous output (P)].
            kernel = np.concatenate([input_weight[direction].T, recurrent_weight[direction].T])
            arrays[f"{tf_prefix}/W_0"] = _swap_tf_torch_gates(kernel)
            arrays[f"{tf_prefix}/B"] = _swap_tf_torch_gates(tf_bias)
            arrays[f"{tf_prefix}/W_P_0"] = projection[direction].T
    expected = expected_datasets(config)
    if set(arrays) != set(expected) or any(arrays[name].shape != shape for name, shape in expected.items()):
        raise RuntimeError(f"weight mapping mismatch: {sorted(set(arrays) ^ set(expected))}")  # a bug, not bad input
    return {name: np.ascontiguousarray(arrays[name], dtype=np.float32) for name in expected}


def write_weights(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write `datasets_from_state_dict`'s arrays as a weights hdf5, float32 as bilm-tf's `dump_weights`, atomically."""
    import h5py

    path = Path(path)
    with atomic_output(path) as tmp_name, h5py.File(tmp_name, "w") as hdf5:
        for name, values in arrays.items():
            hdf5.create_dataset(name, data=values, dtype="float32")
    return path


__all__ = [
    "CheckpointError",
    "OFFICIAL_MODELS",
    "config_from_options",
    "datasets_from_state_dict",
    "expected_datasets",
    "official_options",
    "largest_weight",
    "options_from_config",
    "read_datasets",
    "read_options",
    "read_weights",
    "write_weights",
]
