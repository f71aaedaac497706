"""What every job shares: loading a checkpoint, choosing and pooling representations, the model fingerprint.

Used by `embed_dataset` (datasets_job), `hf-elmo embed` / `dump-token-embeddings` (hdf5_job, cli) and
`ElmoFeatureExtractionPipeline` (pipelines). Nothing here imports `datasets`.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np
import torch

from ..checkpoints import CheckpointError

if TYPE_CHECKING:
    from ..modeling_elmo import ElmoModel
    from ..tokenization_elmo import ElmoTokenizer

DEFAULT_OUTPUT_COLUMN = "elmo"  # the column the jobs add
Representation = Literal["mix", "top", "all"]
Pooling = Union[Literal["mean"], None]
REPRESENTATIONS: tuple[str, ...] = ("mix", "top", "all")
POOLINGS: tuple[str | None, ...] = (None, "mean")
# `from_pretrained` keywords that change speed or memory but never the numbers: left out of the fingerprint, so a
# run with them changed reuses a cached or unfinished result of the same weights.


# ------------------------------------------------------------------------------------------------------ loading
@contextlib.contextmanager
def quiet_weight_progress() -> Iterator[None]:
    """
    Inside the block, transformers shows no "Loading weights" / "Writing model shards" bars: reading or writing
    even the largest ELMo (374 MB) takes about a second. huggingface_hub's download bars (long work) stay as
    they were.
    """
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    if not transformers_logging.is_progress_bar_enabled():
        yield
        return
    downloads_shown = not are_progress_bars_disabled()
    transformers_logging.disable_progress_bar()  # transformers' one switch turns huggingface_hub's bars off too ...
    if downloads_shown:
        enable_progress_bars()  # ... so turn those back on
    try:
        yield
    finally:
        transformers_logging.enable_progress_bar()
        if not downloads_shown:
            disable_progress_bars()


def _is_repo_id(source: str) -> bool:
    """Whether `source` has the form of a Hub repo id (`name` or `namespace/name`)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError:
        return False
    return True


def load_model(
    source: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    model_class: type[ElmoModel] | None = None,
    **runtime_kwargs: Any,
) -> ElmoModel:
    """
    Load a checkpoint folder or Hub repo id in eval mode, on `device` (default: where `from_pretrained` puts it)
    and in `dtype` (default: the checkpoint's). `runtime_kwargs` go to `from_pretrained` (e.g.
    `prepack_cpu_weights=False`). transformers' weight-loading bar is hidden (short work); downloads show theirs.

    Raises:
        FileNotFoundError: `source` is a path that does not exist (and cannot be a repo id), is a file, or is a
            folder without `config.json`.
        OSError: `source` is neither a folder nor a loadable Hub repo id (the message says both).
    """
    if model_class is None:
        from ..modeling_elmo import ElmoModel as model_class
    path = Path(source)
    kwargs = {**runtime_kwargs, **({"dtype": dtype} if dtype is not None else {})}
    if path.is_dir():
        if not (path / "config.json").is_file():  # say what it is, not which weight file transformers missed
            raise FileNotFoundError(f"{source}: checkpoint folder not found (no config.json in this folder)")
        with quiet_weight_progress():
            model = model_class.from_pretrained(path, **kwargs)
    elif path.exists():
        raise FileNotFoundError(f"{source}: is a file, not a checkpoint folder")
    elif isinstance(source, os.PathLike) or not _is_repo_id(source):
        raise FileNotFoundError(f"{source}: checkpoint folder not found")
    else:
        try:
            with quiet_weight_progress():
                model = model_class.from_pretrained(source, **kwargs)
        except OSError as error:
            reason = " ".join(str(error).split())  # one line: command-line errors are one line
            raise OSError(f"{source}: no such checkpoint folder, and loading it as a Hub repo id failed: {reason}"
                          ) from error
    if device is not None:
        model.to(device)
    return model.eval()


def read_vocab_file(path: str | os.PathLike, unique: bool = True) -> list[str]:
    """
    Words of a vocabulary file, one per line, in order (`<S>` / `</S>` are the sentence-boundary tokens).
    With `unique`, blank lines and repeats are dropped; without, every line is a word, as bilm-tf reads it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: vocabulary file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{path}: not UTF-8 text ({error})") from None
    words = [line.strip() for line in lines]
    return list(dict.fromkeys(w for w in words if w)) if unique else words


# ----------------------------------------------------------------------------------- representations and pooling
def check_representation(representation: str, pooling: str | None) -> None:
    """Raise a `ValueError` for an unknown `representation` or `pooling`."""
    if representation not in REPRESENTATIONS:
        raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {representation!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be None or 'mean', got {pooling!r}")


def check_job_options(representation: str, pooling: str | None, batch_size: int, sort_window: int) -> None:
    """The options every embedding job takes: `check_representation`, and `1 <= batch_size <= sort_window`."""
    check_representation(representation, pooling)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if sort_window < batch_size:
        raise ValueError(f"sort_window ({sort_window}) must be at least batch_size ({batch_size})")


def check_loaded_model(model: Any, dtype: torch.dtype | None) -> None:
    """A model given to a job as an object (not a path or id) must be an ELMo model, and takes no `dtype`."""
    if getattr(getattr(model, "config", None), "model_type", None) != "elmo":
        raise ValueError(f"model must be an ELMo checkpoint (path, Hub id or ElmoModel), got {type(model).__name__}")
    if dtype is not None:
        raise ValueError("dtype applies to a model given as a path or Hub id; convert a loaded model yourself")


def select_representation(outputs: Any, representation: str) -> torch.Tensor:
    """
    The requested vectors from an `ElmoModelOutput`:
    `"mix"` -> `last_hidden_state` `(B, W, D)`; `"top"` -> the top biLSTM layer `(B, W, D)`;
    `"all"` -> every layer stacked as `(B, L+1, W, D)` (layer 0 is the character-CNN token vector).
    """
    if representation == "mix":
        return outputs.last_hidden_state
    if outputs.hidden_states is None:
        raise ValueError(f"representation={representation!r} needs the model run with output_hidden_states=True")
    if representation == "top":
        return outputs.hidden_states[-1]
    return torch.stack(outputs.hidden_states, dim=1)


def masked_mean(vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """
    Mean over the words of each sentence: `vectors` `(B, W, D)` or `(B, L+1, W, D)`, `mask` `(B, W)` ->
    `(B, D)` or `(B, L+1, D)`. A sentence without words gets zeros.
    """
    weights = mask.to(vectors.dtype)
    if vectors.dim() == 4:
        weights = weights[:, None]
    total = (vectors * weights[..., None]).sum(dim=-2)
    count = weights.sum(dim=-1, keepdim=True).clamp_min(1)
    return total / count


@torch.inference_mode()
def embed_word_lists(
    model: ElmoModel,
    tokenizer: ElmoTokenizer,
    sentences: Sequence[Sequence[str]],
    representation: Representation = "mix",
    pooling: Pooling = None,
    batch_size: int = 64,
) -> list[np.ndarray]:
    """
    ELMo vectors of pre-split sentences, as float32 numpy arrays in the input order.

    Sentences are sorted by length and run `batch_size` at a time. Each array has shape `(n_words, D)`
    (`"mix"`/`"top"`) or `(n_words, L+1, D)` (`"all"`); with `pooling="mean"`, `(D,)` or `(L+1, D)`.
    """
    check_representation(representation, pooling)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    lengths = np.array([len(s) for s in sentences], dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    results: list[np.ndarray | None] = [None] * len(sentences)
    device = model.device
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        enc = tokenizer([list(sentences[i]) for i in rows], is_split_into_words=True, padding=True,
                        return_tensors="pt")
        mask = enc["attention_mask"].to(device)
        outputs = model(input_ids=enc["input_ids"].to(device), attention_mask=mask,
                        output_hidden_states=representation != "mix")
        vectors = select_representation(outputs, representation)
        if pooling == "mean":
            array = masked_mean(vectors, mask).float().cpu().numpy()
            for j, i in enumerate(rows):
                results[i] = array[j]
        else:
            if representation == "all":
                vectors = vectors.transpose(1, 2)  # (B, W, L+1, D): words first, as datasets needs
            array = vectors.float().cpu().numpy()
            for j, i in enumerate(rows):
                results[i] = array[j, : lengths[i]]
    return results  # type: ignore[return-value]


def default_tokenizer(model: "ElmoModel") -> "ElmoTokenizer":
    """
    bilm-tf's fixed byte table for models without their own character table; for ELMoForManyLangs models
    (`config.boundary_char_ids` set), the tokenizer saved with the checkpoint the model was loaded from, since
    their character table and word vocabulary live there.
    """
    from ..tokenization_elmo import ElmoManyLangsTokenizer, ElmoTokenizer

    config = model.config
    if getattr(config, "boundary_char_ids", None) is None:
        return ElmoTokenizer(max_characters_per_token=config.max_characters_per_token)
    source = getattr(model, "name_or_path", "")
    if not source:
        raise ValueError("this model has its own character table (ELMoForManyLangs) and was not loaded from a "
                         "checkpoint folder: pass its tokenizer (AutoTokenizer.from_pretrained(folder))")
    return ElmoManyLangsTokenizer.from_pretrained(source)


# --------------------------------------------------------------------------------------------------- fingerprint
def architecture(config: Any) -> dict[str, Any]:
    """
    The config's values that define the model: its `__init__` parameters, not transformers' bookkeeping (name,
    version, dtype, `auto_map`, ...). Runtime settings (`ElmoRuntimeOptions`) are not configuration at all.
    """
    parameters = inspect.signature(type(config).__init__).parameters.values()
    return {p.name: getattr(config, p.name) for p in parameters
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of the model's architecture (`architecture(model.config)`) and every tensor of its state dict
    (names, dtypes, shapes and values): what the numbers depend on, not how fast they are computed."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps(architecture(model.config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


__all__ = [
    "DEFAULT_OUTPUT_COLUMN", "POOLINGS", "REPRESENTATIONS", "Pooling", "Representation", "architecture",
    "check_job_options", "check_loaded_model", "check_representation", "embed_word_lists", "load_model", "masked_mean", "model_fingerprint",
    "default_tokenizer", "quiet_weight_progress", "read_vocab_file", "select_representation",
]
