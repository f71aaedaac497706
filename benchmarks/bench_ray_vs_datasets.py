#!/usr/bin/env python
"""
Throughput of `embed_ray_dataset` (Ray Data, one local Ray node) against `embed_dataset` (datasets, this process)
on the same sentences, model and CPU cores.

    pip install -e ".[ray]"
    python benchmarks/bench_ray_vs_datasets.py                          # Small shapes, 2,000 sentences, 2 cores
    python benchmarks/bench_ray_vs_datasets.py --model original --sentences 500 --cpus 2

The model is a random-weight checkpoint at an official shape (bilm-tf layout, converted; cached under
benchmarks/.cache); the sentences are bench_vs_allennlp's workload (gamma lengths, mean ~25 words, Zipf words)
joined into text. Both jobs compute `representation="mix"`, `pooling=None` (one vector per word) with the same
`batch_size` and `sort_window`, and both times include loading the model: `embed_dataset` in this process with
1 and `--cpus` torch threads; Ray with `--cpus` actors of one CPU each and with one actor of `--cpus` CPUs
(actor start-up included, `ray.init` not; the result is materialized in Ray's object store). Reported, the
fastest of `--reps` runs: seconds, words/s (real words only) and the largest difference between the two
results' vectors (first 50 rows).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_vs_allennlp import make_sentences  # noqa: E402  (the shared workload)


def checkpoint(model: str) -> Path:
    """A converted random-weight checkpoint at the official `model` shape, made once."""
    from hf_elmo.checkpoints.bilm_tf import official_options, write_random_checkpoint
    from hf_elmo.conversion import convert_original_checkpoint

    folder = HERE / ".cache" / f"ray-bench-{model}"
    if not (folder / "config.json").exists():
        options, weights = write_random_checkpoint(official_options(model), HERE / ".cache" / f"ray-bench-{model}-hdf5",
                                                   scale=0.03)
        convert_original_checkpoint(options, weights, folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="small", choices=["small", "medium", "original"])
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sort-window", type=int, default=256)
    parser.add_argument("--reps", type=int, default=2, help="runs of each configuration; the fastest is reported")
    args = parser.parse_args()

    import datasets
    import numpy as np
    import ray
    import torch

    import hf_elmo

    folder = checkpoint(args.model)
    texts = [" ".join(words) for words in make_sentences(args.sentences, seed=0)]
    n_words = sum(len(t.split()) for t in texts)
    options = dict(batch_size=args.batch_size, sort_window=args.sort_window)
    datasets.disable_progress_bars()
    print(f"{args.model}: {len(texts)} sentences, {n_words} words, {args.cpus} CPUs, torch {torch.__version__}, "
          f"ray {ray.__version__}, datasets {datasets.__version__}")

    def best_of_reps(job) -> tuple[float, Any]:
        timings = []
        for _ in range(args.reps):
            start = time.perf_counter()
            result = job()
            timings.append(time.perf_counter() - start)
        return min(timings), result

    def report(name: str, seconds: float, extra: str = "") -> None:
        print(f"  {name:<44} {seconds:7.1f} s  {n_words / seconds:8.0f} words/s  {extra}", flush=True)

    hf_elmo.embed_dataset(datasets.Dataset.from_dict({"text": texts[:8]}), folder)  # one-time imports and set-up
    for threads in sorted({1, args.cpus}):
        torch.set_num_threads(threads)
        seconds, reference = best_of_reps(
            lambda: hf_elmo.embed_dataset(datasets.Dataset.from_dict({"text": texts}), folder, **options))
        report(f"embed_dataset (this process, {threads} threads)", seconds)
    expected = dict(enumerate(reference.with_format("numpy")["elmo"][:50]))

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)],
                               override_num_blocks=max(args.cpus * 4, 8))
    for concurrency, cpus_per_actor in sorted({(args.cpus, 1), (1, args.cpus)}):
        seconds, result = best_of_reps(lambda: hf_elmo.embed_ray_dataset(
            rows, folder, concurrency=concurrency, num_cpus=cpus_per_actor, **options).materialize())
        assert result.count() == len(texts)
        first = {r["id"]: r["elmo"] for r in result.take_all() if r["id"] < 50}
        diff = max(float(np.abs(first[i] - expected[i]).max(initial=0)) for i in expected)
        report(f"embed_ray_dataset ({concurrency} actor(s) x {cpus_per_actor} CPU)", seconds,
               f"max |diff| vs embed_dataset {diff:.1e}")
    ray.shutdown()


if __name__ == "__main__":
    main()
