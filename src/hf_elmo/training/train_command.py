"""
`hf-elmo train`: the command (arguments, model, data, Trainer settings) around `training.trainer.ElmoLMTrainer`.
transformers' Trainer is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoints import CheckpointError
from ..checkpoints.bilm_tf import config_from_options, read_options
from ..checkpoints.softmax import LMVocabulary, read_lm_vocabulary
from ..modeling_elmo import ElmoForPreTraining
from .vocabulary import check_corpus_files, count_words

# bilm-tf's values where its options are silent: `train()` (learning rate) and `bin/train_elmo.py` (the rest, the
# settings of the released models).
BILM_TF_TRAINING_DEFAULTS = {
    "batch_size": 128,
    "unroll_steps": 20,
    "n_negative_samples_batch": 8192,
    "learning_rate": 0.2,
    "all_clip_norm_val": 10.0,
    "dropout": 0.1,
    "n_epochs": 10,
}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `hf-elmo train` (any other `--name value` goes to transformers' `TrainingArguments`)."""
    parser.add_argument("--train-file", nargs="+", required=True, metavar="CORPUS.txt",
                        help="training text: one whitespace-tokenized sentence a line (UTF-8); several files or "
                             "shards of a large corpus")
    parser.add_argument("--vocab-file", metavar="VOCAB.txt",
                        help="the softmax's vocabulary (hf-elmo build-vocab); with --init-from, by default the "
                             "model's own lm_vocab.txt")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--options-file", metavar="OPTIONS.json",
                        help="train from scratch with bilm-tf options (its options.json format)")
    source.add_argument("--init-from", metavar="MODEL",
                        help="continue training a checkpoint folder (domain adaptation, bilm-tf's restart)")
    parser.add_argument("--output-dir", required=True, metavar="OUT",
                        help="where the trained model goes; checkpoints are kept in OUT/checkpoint-N")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="training steps (default: --num-train-epochs passes over the corpus)")
    parser.add_argument("--num-train-epochs", type=float, default=None,
                        help="passes over the corpus when --max-steps is not given (default: options.n_epochs, "
                             "else 10)")
    parser.add_argument("--seed", type=int, default=42, help="seeds the weights, the data order, dropout, sampling")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="rows per batch per process (default: options.batch_size, else 128)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="Adagrad's learning rate (default: options.learning_rate, else 0.2)")
    parser.add_argument("--unroll-steps", type=int, default=None,
                        help="tokens per row per batch (default: options.unroll_steps, else 20)")
    parser.add_argument("--negative-samples", type=int, default=None,
                        help="sampled softmax candidates per direction (default: options.n_negative_samples_batch, "
                             "else 8192; 0, or at least the vocabulary's size: the full softmax)")
    parser.add_argument("--dropout", type=float, default=None,
                        help="dropout (default: options.dropout, or the model's, else 0.1)")
    parser.add_argument("--sentence-level", action="store_true",
                        help="each sentence its own row from a zero state, instead of bilm-tf's streams")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last complete checkpoint in OUT (after a crash or a kill)")
    parser.epilog = ("Any other transformers TrainingArguments option is passed to the Trainer, e.g. --save_steps "
                     "500, --save_total_limit 2, --logging_steps 50, --gradient_accumulation_steps 2, --bf16 true, "
                     "--use_cpu true, --report_to tensorboard. Several processes: torchrun --nproc-per-node N "
                     "$(which hf-elmo) train ...")


def _training_options(args: argparse.Namespace, options: dict[str, Any]) -> dict[str, Any]:
    """Each training setting from the command line, else the options file, else bilm-tf's default."""
    chosen = {key: options.get(key, default) for key, default in BILM_TF_TRAINING_DEFAULTS.items()}
    for key, value in (("batch_size", args.batch_size), ("unroll_steps", args.unroll_steps),
                       ("n_negative_samples_batch", args.negative_samples), ("learning_rate", args.learning_rate),
                       ("dropout", args.dropout), ("n_epochs", args.num_train_epochs)):
        if value is not None:
            chosen[key] = value
    for key in ("batch_size", "unroll_steps"):
        if int(chosen[key]) < 1:
            raise ValueError(f"{key.replace('_', '-')} must be at least 1, got {chosen[key]}")
    if int(chosen["n_negative_samples_batch"]) < 0:
        raise ValueError(f"negative-samples must not be negative, got {chosen['n_negative_samples_batch']}")
    return chosen


def _build_model(args: argparse.Namespace) -> tuple[ElmoForPreTraining, LMVocabulary, dict[str, Any], str]:
    """The model to train, its vocabulary, the options it was made from and a line saying where it came from."""
    if args.options_file is not None:
        if args.vocab_file is None:
            raise ValueError("training from --options-file needs --vocab-file (hf-elmo build-vocab writes one)")
        options = read_options(args.options_file)
        vocabulary = read_lm_vocabulary(args.vocab_file)
        declared = options.get("n_tokens_vocab")
        if declared is not None and int(declared) != len(vocabulary):
            raise CheckpointError(f"{args.options_file}: n_tokens_vocab is {declared}, but {args.vocab_file} has "
                                  f"{len(vocabulary)} words")
        dropout = {} if args.dropout is None else {"dropout": args.dropout}
        config = config_from_options(options, str(args.options_file), **vocabulary.config_fields(), **dropout)
        return ElmoForPreTraining(config), vocabulary, options, f"trained from scratch with {args.options_file}"

    from ..conversion import LM_VOCABULARY_FILE
    from ..jobs.core import load_model

    model = load_model(args.init_from, model_class=ElmoForPreTraining, prepack_cpu_weights=False)
    own_vocabulary = Path(args.init_from) / LM_VOCABULARY_FILE
    if model.config.lm_vocab_size:
        vocabulary = read_lm_vocabulary(own_vocabulary, size=model.config.lm_vocab_size)
        if args.vocab_file is not None and read_lm_vocabulary(args.vocab_file).words != vocabulary.words:
            raise CheckpointError(f"{args.vocab_file}: differs from {own_vocabulary}, the vocabulary of the "
                                  f"model's softmax; continue with the model's own (leave out --vocab-file)")
    else:  # a biLM without its softmax (e.g. a release converted without one): the softmax starts new
        if args.vocab_file is None:
            raise ValueError(f"{args.init_from} has no softmax: give --vocab-file for a new one")
        vocabulary = read_lm_vocabulary(args.vocab_file)
        model.config.update(vocabulary.config_fields())
        model.softmax = nn.Linear(model.config.projection_dim, len(vocabulary)).to(model.device, model.dtype)
        model._init_weights(model)
    if args.dropout is not None:
        model.config.dropout = args.dropout
    return model, vocabulary, {}, f"continued from {args.init_from}"


def _negative_samples(settings: dict[str, Any], vocabulary_size: int) -> int | None:
    """The sampled softmax's candidates, or None for the full softmax: asked for (0), or as many candidates as
    words (sampling would only cost more)."""
    negatives = int(settings["n_negative_samples_batch"])
    return negatives if 0 < negatives < vocabulary_size else None


def keep_freed_memory() -> None:
    """
    Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the OS: a training step
    allocates and frees the same large activations every time, and returning them made every step pay for fresh
    page faults again (a quarter of the step time of ELMo Small at batch 128 on CPU; about 0.3 GB more resident).
    Blocks up to 32 MiB (glibc's largest threshold) then come from the heap. Nothing happens without glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    mallopt(m_mmap_threshold, 32 * 2**20)
    mallopt(m_trim_threshold, 2**30)
    mallopt(m_top_pad, 2**30)


def _trainer_arguments(args: argparse.Namespace, extra: list[str], settings: dict[str, Any], max_steps: int):
    """TrainingArguments: bilm-tf's choices first, then the user's extra options, then what this command owns."""
    from transformers import HfArgumentParser, TrainingArguments

    # Every trained parameter gets a gradient at every step, so DDP need not search for unused ones.
    defaults = ["--lr_scheduler_type", "constant", "--max_grad_norm", str(settings["all_clip_norm_val"]),
                "--logging_steps", "50", "--save_steps", "500", "--report_to", "none", "--dataloader_num_workers", "0",
                "--ddp_find_unused_parameters", "false"]
    owned = ["--output_dir", str(args.output_dir), "--per_device_train_batch_size", str(settings["batch_size"]),
             "--learning_rate", str(settings["learning_rate"]), "--max_steps", str(max_steps), "--seed",
             str(args.seed)]
    parser = HfArgumentParser(TrainingArguments, prog="hf-elmo train")
    (training_args,) = parser.parse_args_into_dataclasses(args=defaults + extra + owned)
    return training_args


def run_train(args: argparse.Namespace, extra: list[str] | None = None) -> None:
    """`hf-elmo train --train-file CORPUS.txt [...] --vocab-file VOCAB.txt (--options-file OPTIONS.json |
    --init-from MODEL) --output-dir OUT [--max-steps N] [--seed S] [--batch-size B] [--learning-rate LR] [--resume]`."""
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:
        raise ValueError("training needs accelerate (transformers' Trainer runs on it): pip install 'hf-elmo[train]'")
    from transformers import set_seed

    from .data import ElmoLMDataCollator, LMSentenceDataset, LMStreamDataset
    from .trainer import ElmoLMTrainer, last_complete_checkpoint

    output_dir = Path(args.output_dir)
    files = check_corpus_files(args.train_file)
    world = int(os.environ.get("WORLD_SIZE", "1"))  # processes (torchrun / accelerate launch set it)
    resume_from = None
    if not args.resume and any(output_dir.glob("checkpoint-*")):
        raise ValueError(f"{output_dir} already holds checkpoints of a training run: continue it with --resume, "
                         f"or train into another --output-dir")
    if args.resume:
        resume_from = last_complete_checkpoint(output_dir, world)
        if resume_from is None and int(os.environ.get("RANK", "0")) == 0:
            print(f"hf-elmo train: no complete checkpoint in {output_dir} yet: starting from the beginning")
    set_seed(args.seed)  # the new weights
    model, vocabulary, options, origin = _build_model(args)
    settings = _training_options(args, {"dropout": model.config.dropout, **options})
    model.config.dropout = float(settings["dropout"])
    # The language model never reads the scalar mix (it is for the ELMo vectors): it is not trained here.
    model.elmo.scalar_mix.requires_grad_(False)
    # Cached word vectors serve inference only (training recomputes every word); DDP must not broadcast them
    # (gloo has no int16 broadcast for the cache's character ids).
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, [name for name, _ in model.named_buffers() if ".cached_" in name])
    if args.max_steps is not None:
        if args.max_steps < 1:
            raise ValueError(f"max-steps must be at least 1, got {args.max_steps}")
        max_steps = args.max_steps
    else:
        # bilm-tf's n_train_tokens: the corpus' words, as `build-vocab` counts and reports them.
        tokens = int(options.get("n_train_tokens") or sum(count_words(files)[0].values()))
        per_step = settings["batch_size"] * settings["unroll_steps"] * world
        max_steps = max(1, int(float(settings["n_epochs"]) * tokens / per_step))
    training_args = _trainer_arguments(args, extra or [], settings, max_steps)
    chars = model.config.max_characters_per_token
    if args.sentence_level:
        dataset: torch.utils.data.IterableDataset = LMSentenceDataset(files, vocabulary, chars, shuffle=True,
                                                                      seed=args.seed, passes=None)
        collator = ElmoLMDataCollator()
    else:
        dataset = LMStreamDataset(files, vocabulary, batch_size=settings["batch_size"] * world,
                                  unroll_steps=settings["unroll_steps"], max_characters_per_token=chars,
                                  shuffle=True, seed=args.seed)
        collator = None
    if training_args.device.type == "cpu":
        keep_freed_memory()
    trainer = ElmoLMTrainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator,
                            bilm_tf_optimizer=not any(option.startswith("--optim") for option in extra or []),
                            negative_samples=_negative_samples(settings, len(vocabulary)))
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
    if trainer.is_world_process_zero():
        write_trained_model(output_dir, trainer.model, vocabulary, origin, options)
        print(f"hf-elmo train: wrote the model to {output_dir} ({trainer.state.global_step} steps)")


def write_trained_model(output_dir: Path, model: ElmoForPreTraining, vocabulary: LMVocabulary, origin: str,
                        options: dict[str, Any]) -> None:
    """
    Put a complete checkpoint folder's files (as `hf-elmo convert` writes them) into `output_dir`, next to its
    `checkpoint-N` folders. They are written beside it first; `config.json`, what makes the folder a model, is
    removed first and moved in last, so a crash never leaves a folder that loads as a mix of two models.
    """
    from ..conversion import set_auto_map, write_checkpoint_folder, model_card_text
    from ..tokenization_elmo import ElmoTokenizer

    model = model.to("cpu").eval()
    set_auto_map(model.config)
    tokenizer = ElmoTokenizer(max_characters_per_token=model.config.max_characters_per_token)
    card = model_card_text(model.config, origin, options, None)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".model-", dir=output_dir))
    try:
        write_checkpoint_folder(staging / "model", model, tokenizer, card, lm_vocabulary=vocabulary)
        (output_dir / "config.json").unlink(missing_ok=True)
        files = sorted((staging / "model").iterdir(), key=lambda p: p.name == "config.json")
        for path in files:
            os.replace(path, output_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = [
    "BILM_TF_TRAINING_DEFAULTS",
    "add_train_arguments",
    "run_train",
    "write_trained_model",
]
