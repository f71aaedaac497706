"""Embed a `datasets.Dataset` with ELMo: `embed_dataset(dataset, model, text_column="text")`.

The result is the input dataset plus one float32 column (`output_column`, default `"elmo"`):

=====================  ==================  ===========================================================
`representation`       `pooling=None`      `pooling="mean"`
=====================  ==================  ===========================================================
`"mix"` (scalar mix)   `(words, D)`        `(D,)`  (TF-Hub's `default` output for the mix)
`"top"` (top layer)    `(words, D)`        `(D,)`
`"all"` (every layer)  `(words, L+1, D)`   `(L+1, D)`
=====================  ==================  ===========================================================

with `D = 2 * projection_dim` and `L = num_hidden_layers` (layer 0 is the character-CNN token vector repeated
for both directions). Word vectors are an `Array2D(shape=(None, D))` (`Array3D(shape=(None, L+1, D))` for
`"all"`: datasets only allows the first dimension to vary, so words come first); pooled vectors are a
fixed-length `List(Value("float32"), length=D)` (`Array2D((L+1, D))` for `"all"`). The mean is over the
sentence's words; a sentence without words gets zeros (and `(0, D)` word vectors).

How the job runs:

* Rows are processed in chunks of `sort_window` rows (datasets' map batches). Inside a chunk the sentences
  are sorted by number of words and fed to the model `batch_size` at a time, so a batch holds sentences of
  similar length and its padded tensors stay small (the biLSTM itself packs sentences back to back, so on the
  CPU sorting changed the time little: 2.4-2.6 against 2.3-2.7 CPU-s for 512 mixed-length sentences); the
  vectors are put back in the chunk's order, so the result has the input's row order. Every sentence starts from a zero LSTM state, so its vectors do not depend on the
  rest of its batch.
* Vectors are handed to datasets as float32 numpy arrays with the column's `Features` declared up front
  (measured on 4,000 rows of `(~20, 1024)`: 2 s and 323 MB, against 19 s and 645 MB for Python lists,
  which datasets also widens to float64).
* Caching: the map gets a fingerprint made of the input dataset's fingerprint, a hash of the model's weights
  and architecture (`core.model_fingerprint`), and the options that change the numbers (column, representation,
  pooling, tokenizer settings), not `batch_size`, `sort_window`, the devices or runtime settings such as
  `prepack_cpu_weights`. When the dataset is backed by cache files (loaded with
  `load_dataset` / `load_from_disk`), a rerun with the same arguments loads the earlier result from the cache
  file instead of running the model. In-memory datasets (`Dataset.from_dict`) are not cached by datasets
  unless `cache_file_name` is given.
* `num_proc > 1`: datasets shards the rows and runs one worker process per shard. datasets' pool forks
  by default, and a fork of a process that has run torch (thread pools, CUDA) can hang or fail
  (huggingface/datasets#5094; CUDA cannot be used in a forked child at all). So for the duration of the call
  the pool is switched to multiprocess's **forkserver** start method (spawn where there is none): workers are
  forks of a fresh interpreter that has imported torch, datasets and hf_elmo but never run a torch op, so
  the imports are paid once, not once per worker (num_proc=2 on the test model: 6 s with forkserver against
  25 s with spawn, on 2 cores). Each worker loads the model itself
  when `model` was given as a path or Hub id (an in-memory model is pickled to it) and uses device
  `devices[rank % len(devices)]`; by default GPU `rank % torch.cuda.device_count()` when CUDA is available,
  else the CPU, with torch's threads split between the workers. As with spawn, the workers import the
  calling script, so a script that calls `embed_dataset(..., num_proc=N)` must guard its entry point with
  `if __name__ == "__main__":`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..tokenization_elmo import ElmoTokenizer
from .core import (
    DEFAULT_OUTPUT_COLUMN, Pooling, Representation, check_job_options, check_loaded_model, check_representation,
    default_tokenizer, embed_word_lists, load_model, model_fingerprint,
)

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

    from ..modeling_elmo import ElmoModel

# Bump when the stored numbers or layout change, so that old cache files are not reused.
JOB_FORMAT_VERSION = 1
_STRING_DTYPES = ("string", "large_string")


def output_feature(config: Any, representation: Representation = "mix", pooling: Pooling = None) -> Any:
    """The datasets feature of the embedding column (see the module docstring for the shapes)."""
    from datasets import Array2D, Array3D, List, Value

    check_representation(representation, pooling)
    dim = config.output_dim
    n_layers = config.num_hidden_layers + 1
    if pooling is None:
        if representation == "all":
            return Array3D(shape=(None, n_layers, dim), dtype="float32")
        return Array2D(shape=(None, dim), dtype="float32")
    if representation == "all":
        return Array2D(shape=(n_layers, dim), dtype="float32")
    return List(Value("float32"), length=dim)


def text_column_kind(dataset: Dataset, text_column: str) -> bool:
    """
    Whether `text_column` holds pre-split words (`List(Value("string"))`) rather than raw text
    (`Value("string")`); a `ValueError` for a missing column or any other type.
    """
    from datasets import LargeList, List, Sequence as SequenceFeature, Value

    if text_column not in dataset.column_names:
        raise ValueError(f"text_column {text_column!r} is not a column of the dataset; columns: "
                         f"{dataset.column_names}")
    feature = dataset.features[text_column]
    if isinstance(feature, Value) and feature.dtype in _STRING_DTYPES:
        return False
    if (isinstance(feature, (List, LargeList, SequenceFeature)) and isinstance(feature.feature, Value)
            and feature.feature.dtype in _STRING_DTYPES):
        return True
    raise ValueError(f"text_column {text_column!r} must hold raw text (Value('string')) or pre-split words "
                     f"(List(Value('string'))), got {feature}")


# ------------------------------------------------------------------------------------------ the map function
_WORKER_STATE: dict[str, Any] = {"threads_set": False}


class ElmoEmbedFunction:
    """
    The batched function `embed_dataset` gives `Dataset.map` (`input_columns=[text_column]`, `with_indices`,
    `with_rank`): a list of texts (or word lists) -> `{output_column: [float32 arrays]}`.

    It is picklable for datasets' worker processes: a model given as a path or Hub id travels as that string and
    is loaded once per worker; an in-memory model is pickled with the function.
    """

    def __init__(
        self,
        model: ElmoModel,
        source: str | None,
        *,
        output_column: str,
        is_split_into_words: bool,
        representation: Representation,
        pooling: Pooling,
        batch_size: int,
        devices: list[str] | None,
        num_proc: int | None,
        dtype: torch.dtype | None,
        tokenizer: ElmoTokenizer,
    ):
        self.model = model
        self.source = source
        self.output_column = output_column
        self.is_split_into_words = is_split_into_words
        self.representation = representation
        self.pooling = pooling
        self.batch_size = batch_size
        self.devices = devices
        self.num_proc = num_proc
        self.dtype = dtype
        self.tokenizer = tokenizer

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self.source is not None:
            state["model"] = None  # reloaded from `source` in the worker
        return state

    def device_for(self, rank: int | None) -> torch.device:
        """The device of worker `rank` (None: the calling process)."""
        if self.devices:
            return torch.device(self.devices[(rank or 0) % len(self.devices)])
        if rank is None and self.model is not None:
            return self.model.device
        if torch.cuda.is_available():
            return torch.device("cuda", (rank or 0) % torch.cuda.device_count())
        return torch.device("cpu")

    def model_for(self, rank: int | None) -> ElmoModel:
        device = self.device_for(rank)
        if rank is not None and device.type == "cpu" and self.num_proc and not _WORKER_STATE["threads_set"]:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.num_proc))
            _WORKER_STATE["threads_set"] = True
        if self.model is None:
            key = (self.source, str(self.dtype))
            cached = _WORKER_STATE.get("model")
            if cached is None or _WORKER_STATE.get("model_key") != key:
                cached = load_model(self.source, dtype=self.dtype)  # type: ignore[arg-type]
                _WORKER_STATE["model"], _WORKER_STATE["model_key"] = cached, key
            self.model = cached
        if self.model.device != device:
            self.model.to(device)
        return self.model

    def __call__(self, texts: list[Any], indices: list[int], rank: int | None = None) -> dict[str, list[np.ndarray]]:
        sentences: list[list[str]] = []
        for text, index in zip(texts, indices):
            if text is None:
                raise ValueError(f"row {index}: the text column is None")
            if self.is_split_into_words:
                if any(not isinstance(w, str) for w in text):
                    raise ValueError(f"row {index}: every word must be a str, got {text!r:.80}")
                sentences.append(list(text))
            else:
                sentences.append(self.tokenizer.split_words(text))
        model = self.model_for(rank)
        vectors = embed_word_lists(model, self.tokenizer, sentences, self.representation, self.pooling,
                                   self.batch_size)
        return {self.output_column: vectors}


@contextlib.contextmanager
def clean_worker_processes() -> Iterator[None]:
    """
    Inside the block, datasets' worker pool (`multiprocess.Pool`) starts its workers without forking this
    process: from a fork server (a fresh interpreter that has imported torch, transformers, datasets and hf_elmo
    but never run a torch op, so its forks start with no thread pool or CUDA state), or by spawn where there is
    no fork server (Windows).
    """
    import multiprocess

    previous = multiprocess.get_start_method(allow_none=True)
    if "forkserver" in multiprocess.get_all_start_methods():
        # Only read when the fork server starts (once per process); "__main__" is multiprocessing's default.
        multiprocess.set_forkserver_preload(["__main__", "datasets", "hf_elmo.jobs.datasets_job"])
        multiprocess.set_start_method("forkserver", force=True)
    else:
        multiprocess.set_start_method("spawn", force=True)
    try:
        yield
    finally:
        multiprocess.set_start_method(previous, force=True)


# ------------------------------------------------------------------------------------------------- the job
def embed_dataset(
    dataset: Dataset | DatasetDict,
    model: str | os.PathLike | ElmoModel,
    text_column: str = "text",
    *,
    output_column: str = DEFAULT_OUTPUT_COLUMN,
    representation: Representation = "mix",
    pooling: Pooling = None,
    batch_size: int = 64,
    sort_window: int = 1024,
    num_proc: int | None = None,
    devices: Sequence[str | int | torch.device] | None = None,
    dtype: torch.dtype | None = None,
    tokenizer: ElmoTokenizer | None = None,
    load_from_cache_file: bool | None = None,
    cache_file_name: str | None = None,
    desc: str | None = None,
) -> Dataset | DatasetDict:
    """
    Add ELMo vectors of `text_column` to every row of `dataset`, as float32 column `output_column`.

    Args:
        dataset: A `datasets.Dataset` (or a `DatasetDict`, embedded split by split).
        model: A checkpoint folder, a Hub repo id, or a loaded `ElmoModel`.
        text_column: Raw text (`Value("string")`, split into words with the tokenizer's Moses rules) or
            pre-split words (`List(Value("string"))`, kept as they are).
        output_column: Name of the new column; must not exist yet.
        representation: `"mix"` (the model's scalar mix, `last_hidden_state`), `"top"` (top biLSTM layer) or
            `"all"` (every layer).
        pooling: `None` for one vector per word, `"mean"` for one masked-mean vector per sentence.
        batch_size: Sentences per model call.
        sort_window: Rows sorted by length together (datasets' map batch size); at least `batch_size`.
        num_proc: Worker processes (spawned; see the module docstring). `None` or 1: run in this process.
        devices: Devices for the workers, worker `rank` using `devices[rank % len(devices)]`; with `num_proc`
            unset, `devices[0]` for this process. Default: each worker a GPU if CUDA is available, else the CPU;
            in this process, the model's own device (a path or id is loaded on GPU 0 if available).
        dtype: Load a model given as a path / id in this dtype (e.g. `torch.bfloat16` on GPUs); vectors are
            stored as float32 whatever the dtype.
        tokenizer: An `ElmoTokenizer` (default: one matching the model's `max_characters_per_token`; for
            ELMoForManyLangs models, the tokenizer saved with the checkpoint).
        load_from_cache_file, cache_file_name, desc: Passed to `Dataset.map`.

    Returns:
        The dataset with `output_column` added, rows in the input order: `Array2D(shape=(None, D))` float32 word
        vectors (`Array3D((None, L+1, D))` for `"all"`), or with `pooling="mean"` a `List(float32, length=D)`
        (`Array2D((L+1, D))` for `"all"`), `D = 2 * projection_dim`.
    """
    from datasets import Dataset, DatasetDict

    if isinstance(dataset, DatasetDict):
        if cache_file_name is not None:
            raise ValueError("cache_file_name names one file; embed the splits of a DatasetDict one by one to "
                             "give each its own")
        return DatasetDict({
            split: embed_dataset(
                ds, model, text_column, output_column=output_column, representation=representation,
                pooling=pooling, batch_size=batch_size, sort_window=sort_window, num_proc=num_proc,
                devices=devices, dtype=dtype, tokenizer=tokenizer, load_from_cache_file=load_from_cache_file,
                desc=desc)
            for split, ds in dataset.items()
        })
    if not isinstance(dataset, Dataset):
        raise ValueError(f"dataset must be a datasets.Dataset or DatasetDict, got {type(dataset).__name__}")
    check_job_options(representation, pooling, batch_size, sort_window)
    if num_proc is not None and num_proc < 1:
        raise ValueError(f"num_proc must be None or at least 1, got {num_proc}")
    num_proc = num_proc if num_proc and num_proc > 1 else None
    is_split = text_column_kind(dataset, text_column)
    if output_column in dataset.column_names:
        raise ValueError(f"output_column {output_column!r} already exists; choose another name or remove it "
                         "first (dataset.remove_columns)")
    device_list = None
    if devices is not None:
        device_list = [f"cuda:{d}" if isinstance(d, int) else str(d) for d in devices]
        if not device_list:
            raise ValueError("devices must name at least one device")

    source: str | None = None
    if isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        on_gpu = num_proc is None and device_list is None and torch.cuda.is_available()
        loaded = load_model(model, dtype=dtype, device="cuda:0" if on_gpu else None)
    else:
        loaded = model
        check_loaded_model(loaded, dtype)
    loaded.eval()
    if tokenizer is None:
        tokenizer = default_tokenizer(loaded)
    elif tokenizer.max_characters_per_token != loaded.config.max_characters_per_token:
        raise ValueError(f"tokenizer.max_characters_per_token ({tokenizer.max_characters_per_token}) differs from "
                         f"the model's ({loaded.config.max_characters_per_token})")

    from datasets.fingerprint import Hasher

    fingerprint = Hasher.hash({
        "version": JOB_FORMAT_VERSION,
        "dataset": dataset._fingerprint,
        "model": model_fingerprint(loaded),
        "text_column": text_column,
        "is_split_into_words": is_split,
        "output_column": output_column,
        "representation": representation,
        "pooling": pooling,
        "tokenizer": [tokenizer.max_characters_per_token, tokenizer.moses_language],
    })
    features = dataset.features.copy()
    features[output_column] = output_feature(loaded.config, representation, pooling)
    function = ElmoEmbedFunction(
        loaded, source, output_column=output_column, is_split_into_words=is_split, representation=representation,
        pooling=pooling, batch_size=batch_size, devices=device_list, num_proc=num_proc,
        dtype=dtype, tokenizer=tokenizer,
    )
    if dataset.num_rows == 0:  # datasets skips the function (and the new column) for an empty dataset
        return dataset.add_column(output_column, [], new_fingerprint=fingerprint, feature=features[output_column])
    map_kwargs: dict[str, Any] = dict(
        input_columns=[text_column], batched=True, batch_size=sort_window, with_indices=True, with_rank=True,
        features=features, num_proc=num_proc, new_fingerprint=fingerprint, load_from_cache_file=load_from_cache_file,
        cache_file_name=cache_file_name, desc=desc or f"ELMo ({representation}{', mean' if pooling else ''})",
    )
    if num_proc is None:
        return dataset.map(function, **map_kwargs)
    with clean_worker_processes():
        return dataset.map(function, **map_kwargs)


__all__ = ["ElmoEmbedFunction", "embed_dataset", "output_feature"]
