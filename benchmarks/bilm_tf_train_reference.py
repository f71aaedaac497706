#!/usr/bin/env python
"""
Training speed of bilm-tf's own `bilm.training.train()` at the ELMo Small size, on CPU: the reference side of
`bench_training_vs_bilm_tf.py`. Runs inside a TensorFlow virtualenv (tensorflow-cpu 2.15.1, h5py, numpy<2) and
imports only the standard library, numpy, tensorflow and bilm:

    /work/bench-ref/venv-tf/bin/python benchmarks/bilm_tf_train_reference.py \\
        --bilm-tf /work/bench-ref/bilm-tf --corpus-dir CORPUS --batch-size 128 --warmup 3 --steps 30 \\
        --cpus 0,1 --out benchmarks/results/bilm_tf_train_small_b128.json

`--bilm-tf` is an unmodified checkout of allenai/bilm-tf. Its `bilm` package is copied to a temporary folder and
changed there the way the project's TF fixtures were made (/work/shared/fixtures/README.md, "bilm-tf-lm"):
`import tensorflow as tf` becomes `import tensorflow.compat.v1 as tf` + `tf.disable_v2_behavior()`, and
`LMDataset.get_sentence` returns where bilm-tf's `raise StopIteration` inside a generator would be a
`RuntimeError` under PEP 479 (only reachable in test mode; training data never ends). Nothing else changes.

What runs: `train(options, data, n_gpus=1, ...)` with `data = BidirectionalLMDataset(prefix, vocab, test=False,
shuffle_on_load=True)` (bilm-tf's `bin/train_elmo.py`), options for ELMo Small (`small_training_options`). bilm-tf
places the model on '/gpu:0' with `allow_soft_placement=True`, so without a GPU it runs on the CPU. TensorFlow's
thread pools keep their defaults (intra/inter op 0 = TensorFlow decides from the CPUs the process may use); the
process is pinned to `--cpus` before TensorFlow is imported, and what TensorFlow then uses is reported.

Timing: `data` is wrapped so that each of train()'s requests for the next batch is timestamped (wall clock and
process CPU time, all threads); the time from one request to the next is one training step including making the
batch (`_get_batch`), the feed dict, `sess.run` of the train op, the summaries and the carried LSTM states. The
wrapper ends the data after `--warmup + --steps` batches, which ends train()'s loop (options put
`n_batches_total` beyond that, so train() saves no checkpoint). Warm-up steps (the first includes TensorFlow's
graph optimization) are reported but not counted.

Tokens: bilm-tf's own count, `batch_size * unroll_steps` per step (its `n_tokens_per_batch`): the (input, target)
pairs of the forward stream; the backward stream trains on as many again in the same step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

SMALL_CHAR_FILTERS = [[1, 32], [2, 32], [3, 64], [4, 128], [5, 256], [6, 512], [7, 1024]]
TOKEN_DEFINITION = ("batch_size * unroll_steps per step (bilm-tf's n_tokens_per_batch: forward-stream input/target "
                    "pairs; the backward stream trains on as many in the same step)")


def small_training_options(batch_size: int, n_tokens_vocab: int, n_train_tokens: int, n_epochs: int = 1,
                           n_negative_samples_batch: int = 8192, unroll_steps: int = 20) -> dict[str, Any]:
    """bilm-tf training options for ELMo Small (2 x 1024 LSTM, 128 projection; the released Small's char CNN),
    in `bin/train_elmo.py`'s layout; this dict is also the `options.json` the project's side trains with."""
    return {
        "bidirectional": True,
        "char_cnn": {"activation": "relu", "embedding": {"dim": 16}, "filters": SMALL_CHAR_FILTERS,
                     "max_characters_per_token": 50, "n_characters": 261, "n_highway": 1},
        "dropout": 0.1,
        "lstm": {"cell_clip": 3, "dim": 1024, "n_layers": 2, "proj_clip": 3, "projection_dim": 128,
                 "use_skip_connections": True},
        "all_clip_norm_val": 10.0,
        "n_epochs": n_epochs,
        "n_train_tokens": n_train_tokens,
        "batch_size": batch_size,
        "n_tokens_vocab": n_tokens_vocab,
        "unroll_steps": unroll_steps,
        "n_negative_samples_batch": n_negative_samples_batch,
    }


def corpus_files(corpus_dir: Path) -> tuple[Path, list[Path]]:
    """The vocabulary and the shard files that `make_training_corpus.py` wrote into `corpus_dir`."""
    vocab_file = corpus_dir / "vocab.txt"
    shards = sorted(corpus_dir.glob("train-*.txt"))
    if not vocab_file.is_file() or not shards:
        raise SystemExit(f"{corpus_dir}: expected vocab.txt and train-*.txt (run make_training_corpus.py)")
    return vocab_file, shards


def count_tokens(files: list[Path]) -> int:
    """Words in the training files (bilm-tf's `n_train_tokens`: whitespace-separated words, no boundaries)."""
    total = 0
    for path in files:
        with open(path, encoding="utf-8") as file:
            total += sum(len(line.split()) for line in file)
    return total


def patched_bilm_copy(bilm_tf_dir: Path, into: Path) -> Path:
    """Copy bilm-tf's `bilm` package into `into` with TensorFlow 1 imports through `tensorflow.compat.v1`."""
    source = bilm_tf_dir / "bilm"
    if not (source / "training.py").is_file():
        raise SystemExit(f"--bilm-tf {bilm_tf_dir}: no bilm/training.py (expected a checkout of allenai/bilm-tf)")
    target = into / "bilm"
    shutil.copytree(source, target)
    for path in target.glob("*.py"):
        text = path.read_text()
        if "import tensorflow as tf\n" in text:
            text = text.replace("import tensorflow as tf\n",
                                "import tensorflow.compat.v1 as tf\ntf.disable_v2_behavior()\n", 1)
            path.write_text(text)
    return into


def allow_generator_end(lm_dataset_class: Any) -> None:
    """PEP 479: bilm-tf's `raise StopIteration` in `LMDataset._load_random_shard`, reached from the generator
    `get_sentence` when test data runs out, is a RuntimeError on Python >= 3.7; end the generator there instead."""
    original = lm_dataset_class.get_sentence

    def get_sentence(self: Any) -> Iterator[Any]:
        try:
            yield from original(self)
        except RuntimeError as error:
            if not isinstance(error.__cause__, StopIteration):
                raise

    lm_dataset_class.get_sentence = get_sentence


class TimedBatches:
    """Stands in for bilm-tf's dataset in `train()`: timestamps each request for a batch and ends after `n` batches.

    `marks[k]` is (wall seconds, process CPU seconds) when train() asked for batch k + 1; the last mark is the
    request after batch n, i.e. when batch n's step is done. `data_seconds[k]` is the time making batch k + 1 took.
    """

    def __init__(self, data: Any, n_batches: int):
        self.data = data
        self.n_batches = n_batches
        self.marks: list[tuple[float, float]] = []
        self.data_seconds: list[float] = []

    def _mark(self) -> None:
        self.marks.append((time.perf_counter(), time.process_time()))

    def iter_batches(self, batch_size: int, num_steps: int) -> Iterator[dict[str, Any]]:
        batches = self.data.iter_batches(batch_size, num_steps)
        for _ in range(self.n_batches):
            self._mark()
            batch = next(batches)
            self.data_seconds.append(time.perf_counter() - self.marks[-1][0])
            yield batch
        self._mark()


def proc_status(key: str) -> str:
    """One field of /proc/self/status (e.g. 'VmHWM', 'Threads')."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return line.split(":", 1)[1].strip()
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bilm-tf", type=Path, required=True, help="a checkout of allenai/bilm-tf (not modified)")
    parser.add_argument("--corpus-dir", type=Path, required=True, help="make_training_corpus.py's output folder")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3, help="steps run but not counted")
    parser.add_argument("--steps", type=int, default=30, help="steps timed after the warm-up")
    parser.add_argument("--cpus", default=None, help="pin to these CPUs, e.g. '0,1' (default: as started)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON result here (printed anyway)")
    args = parser.parse_args()

    if args.cpus:
        os.sched_setaffinity(0, {int(cpu) for cpu in args.cpus.split(",")})
    vocab_file, shards = corpus_files(args.corpus_dir)
    n_train_tokens = count_tokens(shards)
    scratch = Path(tempfile.mkdtemp(prefix="bilm-tf-train-bench-"))
    try:
        sys.path.insert(0, str(patched_bilm_copy(args.bilm_tf, scratch)))
        import numpy as np
        import tensorflow.compat.v1 as tf
        from bilm.data import BidirectionalLMDataset, LMDataset
        from bilm.training import load_vocab, train

        allow_generator_end(LMDataset)
        random.seed(args.seed)  # bilm-tf shuffles shards and sentences with Python's random
        np.random.seed(args.seed)
        tf.set_random_seed(args.seed)

        vocab = load_vocab(str(vocab_file), 50)
        options = small_training_options(args.batch_size, vocab.size, n_train_tokens)
        n_batches = args.warmup + args.steps
        batches_in_options = options["n_epochs"] * int(n_train_tokens / (args.batch_size * options["unroll_steps"]))
        if batches_in_options <= n_batches:
            raise SystemExit(f"corpus too small: {n_train_tokens} tokens give {batches_in_options} batches at "
                             f"batch size {args.batch_size}, need more than {n_batches}")
        data = TimedBatches(BidirectionalLMDataset(str(args.corpus_dir / "train-*.txt"), vocab, test=False,
                                                   shuffle_on_load=True), n_batches)
        save_dir = scratch / "save"
        save_dir.mkdir()
        started = time.perf_counter()
        train(options, data, 1, str(save_dir), str(save_dir))
        wall = time.perf_counter() - started
        threads_at_end = int(proc_status("Threads") or 0)
        if len(data.marks) != n_batches + 1:
            raise SystemExit(f"train() took {len(data.marks) - 1} batches, expected {n_batches}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    step_seconds = [b[0] - a[0] for a, b in zip(data.marks, data.marks[1:])]
    step_cpu_seconds = [b[1] - a[1] for a, b in zip(data.marks, data.marks[1:])]
    timed = step_seconds[args.warmup:]
    timed_cpu = step_cpu_seconds[args.warmup:]
    tokens_per_step = args.batch_size * options["unroll_steps"]
    result = {
        "implementation": "bilm-tf train()",
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
        "batch_size": args.batch_size,
        "unroll_steps": options["unroll_steps"],
        "tokens_per_step": tokens_per_step,
        "token_definition": TOKEN_DEFINITION,
        "options": options,
        "corpus": {"dir": str(args.corpus_dir), "shards": len(shards), "n_train_tokens": n_train_tokens,
                   "vocab_size": vocab.size},
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "tokens_per_s": tokens_per_step * len(timed) / sum(timed),
        "tokens_per_cpu_s": tokens_per_step * len(timed) / sum(timed_cpu),
        "step_s_mean": statistics.mean(timed),
        "step_s_median": statistics.median(timed),
        "step_s_min": min(timed),
        "step_cpu_s_mean": statistics.mean(timed_cpu),
        "data_s_mean": statistics.mean(data.data_seconds[args.warmup:]),
        "step_s": step_seconds,
        "step_cpu_s": step_cpu_seconds,
        "train_wall_s": wall,
        "process_cpu_s": time.process_time(),
        "peak_rss_mb": int(proc_status("VmHWM").split()[0]) / 1024,
        "threads": {
            "cpus_allowed": sorted(os.sched_getaffinity(0)),
            "tf_intra_op_parallelism_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "tf_inter_op_parallelism_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "tf_settings_note": "0 = TensorFlow's default (its pools sized from the usable CPUs)",
            "env": {key: os.environ.get(key) for key in
                    ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "MKL_NUM_THREADS",
                     "TF_ENABLE_ONEDNN_OPTS")},
            "os_threads_at_end": threads_at_end,
        },
        "load_average_at_end": os.getloadavg(),
    }
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        partial = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")  # atomic: no hf_elmo in this venv
        partial.write_text(text + "\n")
        os.replace(partial, args.out)
    print(text)


if __name__ == "__main__":
    main()
