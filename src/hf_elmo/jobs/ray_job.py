"""Embed a Ray Dataset with ELMo: `embed_ray_dataset(ds, model, text_column="text")`, for clusters past one machine.

`embed_dataset` (datasets) uses the GPUs of one machine; a Ray Dataset spreads the rows over every node of a Ray
cluster. The result is the input dataset plus one column (`output_column`, default `"elmo"`), one row out per row
in, with the same vectors and shapes as `embed_dataset` (`D = 2 * projection_dim`, `L = num_hidden_layers`):

=====================  ==================  ==================
`representation`       `pooling=None`      `pooling="mean"`
=====================  ==================  ==================
`"mix"` / `"top"`      `(words, D)`        `(D,)`
`"all"`                `(words, L+1, D)`   `(L+1, D)`
=====================  ==================  ==================

all float32. Word vectors differ in length from row to row, so Ray stores them as its variable-shaped tensor column
(`ArrowVariableShapedTensorType`); pooled vectors are a fixed-shape tensor column. Both survive `write_parquet` /
`read_parquet`.

How the job runs: `Dataset.map_batches` with a callable class, `ElmoRayEmbedder`, so each Ray actor loads the model
once and then embeds batches of `sort_window` rows, sorted by length inside the batch and run `batch_size` sentences
at a time (as `embed_dataset` does). With `num_gpus > 0` every actor holds that share of a GPU and runs there;
otherwise on the CPU. Ray Data restarts an actor that dies (a lost node, an out-of-memory kill) and reruns its
unfinished batches on the pool, so every row still comes out exactly once.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .core import (
    DEFAULT_OUTPUT_COLUMN, Pooling, Representation, check_job_options, check_loaded_model, default_tokenizer,
    embed_word_lists, load_model,
)

if TYPE_CHECKING:
    import ray.data

    from ..modeling_elmo import ElmoModel


class ElmoRayEmbedder:
    """
    The callable class `embed_ray_dataset` gives `map_batches` (one instance per Ray actor): a numpy batch
    `{column: array of B values}` -> the same batch with `output_column` added: B float32 arrays `(words, D)` /
    `(words, L+1, D)`, or with `pooling="mean"` one `(B, D)` / `(B, L+1, D)` array.
    """

    def __init__(
        self,
        model: str | ElmoModel,
        *,
        text_column: str,
        output_column: str,
        representation: Representation,
        pooling: Pooling,
        batch_size: int,
        dtype: torch.dtype | None,
        use_gpu: bool,
    ):
        # Ray makes the actor's share of the GPUs the only visible ones, so "cuda" is this actor's GPU.
        device = torch.device("cuda" if use_gpu else "cpu")
        self.model = (load_model(model, dtype=dtype) if isinstance(model, str) else model).to(device).eval()
        self.tokenizer = default_tokenizer(self.model)
        self.text_column = text_column
        self.output_column = output_column
        self.representation = representation
        self.pooling = pooling
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        sentences = [self.words_of(value) for value in batch[self.text_column]]
        vectors = embed_word_lists(self.model, self.tokenizer, sentences, self.representation, self.pooling,
                                   self.batch_size)
        # Pooled vectors share one shape: one (B, ...) array. Word vectors stay a list of per-row arrays, which
        # Ray turns into its variable-shaped tensor column.
        return {**batch, self.output_column: np.stack(vectors) if self.pooling and vectors else vectors}

    def words_of(self, value: Any) -> list[str]:
        """A row's words: raw text split with the tokenizer's Moses rules, or a list / array of words as it is."""
        if isinstance(value, str):
            return self.tokenizer.split_words(value)
        if isinstance(value, (list, tuple, np.ndarray)) and all(isinstance(w, str) for w in value):
            return list(value)
        raise ValueError(f"column {self.text_column!r} must hold text or lists of words, got {value!r:.80}")


def embed_ray_dataset(
    dataset: ray.data.Dataset,
    model: str | os.PathLike | ElmoModel,
    text_column: str = "text",
    *,
    output_column: str = DEFAULT_OUTPUT_COLUMN,
    representation: Representation = "mix",
    pooling: Pooling = None,
    batch_size: int = 64,
    sort_window: int = 1024,
    num_gpus: float = 0,
    num_cpus: float | None = None,
    concurrency: int | tuple[int, int] = 1,
    dtype: torch.dtype | None = None,
) -> ray.data.Dataset:
    """
    Add ELMo vectors of `text_column` to every row of a Ray Dataset (lazily, as Ray datasets are: the work runs
    when the result is consumed, e.g. by `write_parquet` or `take_all`).

    Args:
        dataset: A `ray.data.Dataset` with a column of raw text or of word lists.
        model: A checkpoint folder every node can read (a shared file system), a Hub repo id, or a loaded
            `ElmoModel` on the CPU (pickled to every actor).
        text_column: Raw text (split into words with the tokenizer's Moses rules) or lists of words (kept as
            they are).
        output_column: Name of the new column; must not exist yet.
        representation: `"mix"` (`last_hidden_state`), `"top"` (top biLSTM layer) or `"all"` (every layer).
        pooling: `None` for one vector per word, `"mean"` for one masked-mean vector per sentence.
        batch_size: Sentences per model call.
        sort_window: Rows per Ray batch (one actor call); sorted by length inside it; at least `batch_size`.
        num_gpus: GPUs per actor (0: CPU actors).
        num_cpus: CPUs per actor (Ray's default, 1, when None); torch uses that many threads.
        concurrency: Number of actors, or `(min, max)` for a pool Ray grows and shrinks with the load.
        dtype: Load a model given as a path / id in this dtype (e.g. `torch.bfloat16` on GPUs); vectors are
            stored as float32 whatever the dtype.

    Returns:
        The dataset with `output_column` added, every input column and row kept.
    """
    import ray.data

    check_job_options(representation, pooling, batch_size, sort_window)
    if num_gpus < 0:
        raise ValueError(f"num_gpus must be 0 or more, got {num_gpus}")
    if isinstance(concurrency, int):
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        compute = ray.data.ActorPoolStrategy(size=concurrency)
    else:
        low, high = concurrency
        if not 1 <= low <= high:
            raise ValueError(f"concurrency (min, max) needs 1 <= min <= max, got {concurrency}")
        compute = ray.data.ActorPoolStrategy(min_size=low, max_size=high)
    columns = dataset.schema().names
    if text_column not in columns:
        raise ValueError(f"text_column {text_column!r} is not a column of the dataset; columns: {columns}")
    if output_column in columns:
        raise ValueError(f"output_column {output_column!r} already exists; choose another name or drop it first "
                         "(dataset.drop_columns)")
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if not isinstance(model, str):
        check_loaded_model(model, dtype)
    # Ray Data's actor pools restart dead actors and retry their tasks without limit by default (max_restarts=-1,
    # max_task_retries=-1; passing them is deprecated in Ray 2.60), which is what makes a lost actor harmless.
    return dataset.map_batches(
        ElmoRayEmbedder,
        fn_constructor_kwargs=dict(
            model=model, text_column=text_column, output_column=output_column, representation=representation,
            pooling=pooling, batch_size=batch_size, dtype=dtype, use_gpu=num_gpus > 0,
        ),
        batch_size=sort_window,
        batch_format="numpy",
        compute=compute,
        num_gpus=num_gpus or None,
        num_cpus=num_cpus,
    )


__all__ = ["ElmoRayEmbedder", "embed_ray_dataset"]
