"""
`hf-elmo train`: train ELMo's biLM language model as bilm-tf does, or continue training a checkpoint, with
transformers' `Trainer`.

bilm-tf's recipe (`bilm/training.py` `train()`, `bin/train_elmo.py`), which `ElmoLMTrainer` and the command follow:

- Batches are `batch_size` rows of `unroll_steps` tokens cut from endless streams of sentences
  (`LMStreamDataset`); each row's LSTM state carries over to the next batch, and backpropagation stops at batch
  boundaries (the carried state is detached).
- The loss is `0.5 * (forward + backward)` mean cross entropy, with the sampled softmax during training
  (`n_negative_samples_batch` log-uniform candidates per direction); the gradient is that of
  `loss * unroll_steps`.
- Dropout (`options.dropout`) on every LSTM layer's input and on the top layer's output.
- Adagrad, learning rate 0.2, initial accumulator 1.0, constant; gradients clipped to global norm
  `all_clip_norm_val` (10). Several processes (bilm-tf: GPUs) each take `batch_size` rows of a batch of
  `batch_size * processes` rows, and their gradients are averaged.
- New weights are initialised as bilm-tf initialises them (`ElmoPreTrainedModel._init_weights`).

The command around it, `hf-elmo train`, is in `train_command.py`; where options.json is silent it takes bilm-tf's
own defaults (`BILM_TF_TRAINING_DEFAULTS`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from transformers import Trainer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..atomic_files import atomic_output
from ..checkpoints import CheckpointError
from .data import LMStreamDataset

# Written into each checkpoint-N folder by every process, before the Trainer's own files (see `_save_checkpoint`).
STREAM_STATE_FILE = "lm_stream_state-{rank}.pt"


class _ProcessRows(IterableDataset):
    """This process's rows of every stream batch: rows `[rank * rows, (rank + 1) * rows)`, always the same ones,
    so that each process carries the LSTM state of its own rows."""

    def __init__(self, dataset: LMStreamDataset, rank: int, rows: int):
        self.dataset, self.rank, self.rows = dataset, rank, rows

    def __iter__(self):
        start = self.rank * self.rows
        for batch in self.dataset.iter_batches():
            yield {key: value[start:start + self.rows] for key, value in batch.items()}


class ElmoLMTrainer(Trainer):
    """
    `Trainer` for `ElmoForPreTraining` the way bilm-tf trains it (see the module docstring).

    With an `LMStreamDataset` as `train_dataset` (its `batch_size` = `per_device_train_batch_size` x processes),
    each process trains on its own rows of every batch, carrying their LSTM state from batch to batch, and every
    checkpoint also holds each process's stream position and state: `train(resume_from_checkpoint=...)` goes on
    exactly where the saved step left off. Logged `loss` is bilm-tf's `total_loss`, with its `perplexity`.

    Any other dataset (e.g. `LMSentenceDataset` with `ElmoLMDataCollator`) trains sentence by sentence, each
    from a zero state, as a plain `Trainer` does; evaluation always uses the full softmax.

    Args:
        negative_samples: candidates of the sampled softmax per direction (bilm-tf's `n_negative_samples_batch`);
            None for the full softmax.
        bilm_tf_optimizer: bilm-tf's Adagrad (`args.learning_rate`, initial accumulator 1.0) unless `optimizers`
            gives one; False for the optimizer `args.optim` names.
    """

    def __init__(self, *args: Any, negative_samples: int | None = 8192, bilm_tf_optimizer: bool = True,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.negative_samples = negative_samples
        self.bilm_tf_optimizer = bilm_tf_optimizer
        self._stream_state: tuple[torch.Tensor, torch.Tensor] | None = None

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None and self.bilm_tf_optimizer:
            parameters = [p for p in (model or self.model).parameters() if p.requires_grad]
            self.optimizer = torch.optim.Adagrad(parameters, lr=self.args.learning_rate, initial_accumulator_value=1.0)
        return super().create_optimizer(model) if self.optimizer is None else self.optimizer

    @property
    def _streams(self) -> LMStreamDataset | None:
        return self.train_dataset if isinstance(self.train_dataset, LMStreamDataset) else None

    def get_train_dataloader(self) -> DataLoader:
        streams = self._streams
        if streams is None:
            return super().get_train_dataloader()
        rows = self.args.per_device_train_batch_size
        if streams.batch_size != rows * self.args.world_size:
            raise ValueError(f"the LMStreamDataset's batch_size is {streams.batch_size}; with "
                             f"per_device_train_batch_size {rows} and {self.args.world_size} process(es) it must be "
                             f"{rows * self.args.world_size}")
        # Batches are made by the dataset (batch_size=None); its own generator keeps the loader from drawing on
        # the global RNG, which resuming restores (dropout and the sampled softmax draw from it).
        return DataLoader(_ProcessRows(streams, self.args.process_index, rows), batch_size=None, num_workers=0,
                          generator=torch.Generator(),
                          pin_memory=self.args.dataloader_pin_memory and torch.cuda.is_available())

    def compute_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: Any = None):
        streaming = model.training and self._streams is not None
        extra: dict[str, Any] = {}
        if model.training:
            extra["negative_samples"] = self.negative_samples
        if streaming:
            extra.update(state=self._stream_state, use_cache=True)
        outputs = model(**inputs, **extra)
        loss = outputs.loss
        if streaming:
            self._stream_state = (outputs.state[0].detach(), outputs.state[1].detach())
            loss = loss * self._streams.unroll_steps  # bilm-tf's gradient: of total_loss * unroll_steps
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for key, perplexity in (("loss", "perplexity"), ("train_loss", "train_perplexity")):
            if key in logs:
                if self._streams is not None:  # undo the gradient's scale: report bilm-tf's total_loss
                    logs[key] = logs[key] / self._streams.unroll_steps
                logs[perplexity] = math.exp(min(logs[key], 700.0))
        if "eval_loss" in logs:
            logs["eval_perplexity"] = math.exp(min(logs["eval_loss"], 700.0))
        super().log(logs, start_time)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        streams = self._streams
        if streams is not None:
            # Written before the Trainer's files: a checkpoint whose trainer_state.json exists is complete.
            folder = Path(self._get_output_dir(trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            batches = self.state.global_step * self.args.gradient_accumulation_steps
            state = {"data": streams.state_dict(batches=batches),
                     "lstm_state": None if self._stream_state is None else [t.cpu() for t in self._stream_state]}
            with atomic_output(folder / STREAM_STATE_FILE.format(rank=self.args.process_index)) as tmp:
                torch.save(state, tmp)
            self.accelerator.wait_for_everyone()
        super()._save_checkpoint(model, trial)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        """`Trainer.train`; `resume_from_checkpoint=True` takes the newest complete checkpoint of `output_dir`."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir, self.args.world_size)
            if resume_from_checkpoint is None:
                raise ValueError(f"{self.args.output_dir}: no complete checkpoint to resume from")
        streams = self._streams
        if resume_from_checkpoint and streams is not None:
            path = Path(resume_from_checkpoint) / STREAM_STATE_FILE.format(rank=self.args.process_index)
            if not path.is_file():
                raise CheckpointError(f"{resume_from_checkpoint}: no {path.name}: not a checkpoint of stream "
                                      f"training by {self.args.world_size} process(es)")
            saved = torch.load(path, weights_only=True)
            streams.load_state_dict(saved["data"])
            self._stream_state = None if saved["lstm_state"] is None else tuple(saved["lstm_state"])
            # The stream is restored here; the Trainer must not skip batches itself.
            self.args.ignore_data_skip = True
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)


def last_complete_checkpoint(output_dir: str | os.PathLike, processes: int = 1) -> Path | None:
    """
    The newest `checkpoint-N` of `output_dir` that was completely written: its `trainer_state.json` (the
    Trainer writes it last) reads, and, for stream training, every process's stream state is there. A run
    killed while saving leaves an incomplete newest checkpoint, which is passed over.
    """
    folder = Path(output_dir)
    candidates = []
    for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if folder.is_dir() else []:
        suffix = path.name[len(PREFIX_CHECKPOINT_DIR) + 1:]
        if suffix.isdigit() and path.is_dir():
            candidates.append((int(suffix), path))
    for _, path in sorted(candidates, reverse=True):
        try:
            json.loads((path / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        streams = [path / STREAM_STATE_FILE.format(rank=rank) for rank in range(processes)]
        if any(p.exists() for p in streams) and not all(p.is_file() for p in streams):
            continue
        return path
    return None


__all__ = ["ElmoLMTrainer", "STREAM_STATE_FILE", "last_complete_checkpoint"]
