#!/usr/bin/env python
"""
Perplexity with an Original-size ELMo language model on CPU: the full 793,471-word softmax (793,471 x 512).

    python benchmarks/bench_lm_perplexity.py                     # ~5 minutes on 2 cores (first run: +2 minutes
                                                                 # to write the 2 GB checkpoint)
    python benchmarks/bench_lm_perplexity.py --sentences 64 --batch-size 32

On first use it writes a random-weight Original LM (bilm-tf's hdf5 layouts: options.json, weights, softmax, and a
vocabulary of `<S>`, `</S>`, `<UNK>` + pseudo-words) and converts it under benchmarks/.cache/lm-original.
The measurement runs in a fresh subprocess: it loads `ElmoLanguageModel`, times `score_sentences` on sentences of
news-like lengths (gamma distributed, mean about 25 words) of Zipf-distributed vocabulary words after one warm-up
batch, and reports:

- words/s (real words; each sentence also predicts `</S>`, counted in `predictions`);
- peak RSS (VmHWM) of the process, and how far it is above the model's own weights (target: at most 1 GB);
- the softmax's share of the machine's GEMM peak: its FLOPs (2 x predictions x 2 directions x V x P) over the
  time the softmax takes (the same batches run with and without targets; the difference is the softmax), against
  the best float32 `torch.mm` rate of a large square product measured in the same process (target >= 70 %).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache" / "lm-original"
TESTS = HERE.parent / "tests"
VOCABULARY_SIZE = 793_471  # vocab-2016-09-10.txt, the Original model's softmax


def build_checkpoint() -> Path:
    """Random Original LM, written once in the released layouts and converted."""
    import numpy as np

    sys.path.insert(0, str(TESTS))
    from helpers import write_random_checkpoint

    from hf_elmo.checkpoints.bilm_tf import official_options
    from hf_elmo.checkpoints.softmax import write_softmax
    from hf_elmo.conversion import convert_original_checkpoint

    folder = CACHE / "converted"
    if (folder / "model.safetensors").is_file():
        return folder
    source = CACHE / "source"
    options = official_options("original")
    options_path, weights_path = write_random_checkpoint(options, source, seed=0, scale=0.025)
    rng = np.random.default_rng(1)
    projection = options["lstm"]["projection_dim"]
    weight = (rng.standard_normal((VOCABULARY_SIZE, projection), dtype=np.float32) * 0.05)
    bias = rng.standard_normal(VOCABULARY_SIZE, dtype=np.float32) * 0.1
    write_softmax(source / "softmax.hdf5", weight, bias)
    del weight, bias
    words = ["<S>", "</S>", "<UNK>"] + [f"w{i}" for i in range(VOCABULARY_SIZE - 3)]
    (source / "vocab.txt").write_text("".join(f"{w}\n" for w in words))
    convert_original_checkpoint(options_path, weights_path, folder, vocab_file=source / "vocab.txt",
                                softmax_weight_file=source / "softmax.hdf5")
    return folder


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def gemm_peak_flops(size: int = 4096, reps: int = 5) -> float:
    """Best float32 `torch.mm` FLOP/s of a (size x size) @ (size x size) product."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = 0.0
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def worker(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from hf_elmo.jobs.lm_job import ElmoLanguageModel

    torch.set_num_threads(args.threads)
    lm = ElmoLanguageModel.from_pretrained(args.folder)
    weight_bytes = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    rng = np.random.default_rng(0)
    ranks = np.arange(1, VOCABULARY_SIZE - 2)
    zipf = 1.0 / ranks
    zipf /= zipf.sum()
    lengths = np.clip(rng.gamma(4.0, 25 / 4.0, size=args.sentences + args.batch_size).round().astype(int), 1, 60)
    sentences = [[lm.vocabulary.words[3 + i] for i in rng.choice(len(ranks), size=n, p=zipf)] for n in lengths]
    warmup, timed = sentences[: args.batch_size], sentences[args.batch_size:]
    lm.score_sentences(warmup, args.batch_size)

    start = time.perf_counter()
    scores = lm.score_sentences(timed, args.batch_size)
    total = time.perf_counter() - start
    words = sum(map(len, timed))
    predictions = sum(s.predictions for s in scores)

    # The same batches without targets: the biLM alone (the difference is the softmax).
    start = time.perf_counter()
    for first in range(0, len(timed), args.batch_size):
        batch = sorted(timed, key=len)[first: first + args.batch_size]
        enc = lm.tokenizer(batch, is_split_into_words=True, padding=True, return_tensors="pt")
        with torch.inference_mode():
            lm.model(**enc)
    bilm_only = time.perf_counter() - start
    softmax_time = total - bilm_only
    vocabulary, projection = lm.model.softmax.weight.shape
    softmax_flops = 2 * predictions * 2 * vocabulary * projection
    peak = gemm_peak_flops()
    print(json.dumps({
        "threads": args.threads, "sentences": len(timed), "words": words, "predictions": predictions,
        "words_per_s": words / total, "seconds": total, "bilm_seconds": bilm_only, "softmax_seconds": softmax_time,
        "softmax_gflops": softmax_flops / softmax_time / 1e9, "gemm_peak_gflops": peak / 1e9,
        "softmax_share_of_gemm_peak": softmax_flops / softmax_time / peak,
        "weights_gb": weight_bytes / 1e9, "peak_rss_gb": peak_rss_bytes() / 1e9,
        "peak_rss_above_weights_gb": (peak_rss_bytes() - weight_bytes) / 1e9,
    }, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sentences", type=int, default=128, help="timed sentences")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    folder = build_checkpoint()
    subprocess.run([sys.executable, __file__, "--worker", "--folder", str(folder), "--sentences", str(args.sentences),
                    "--batch-size", str(args.batch_size), "--threads", str(args.threads)], check=True)


if __name__ == "__main__":
    main()
