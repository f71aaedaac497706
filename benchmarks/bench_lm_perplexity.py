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
- the softmax's share of the machine's GEMM peak: `target_log_probs` on one batch's predictions (both directions,
  the full vocabulary; FLOPs 2 x rows x V x P) against a 4096^3 float32 `torch.mm`, alternated `--reps` times in
  the same process, best rate of each (so that other load on a shared machine hurts both alike; target >= 70 %).
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
    from hf_elmo.lm_softmax import target_log_probs

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

    # The softmax's share of the GEMM peak, robust to a shared machine: the softmax of one batch's predictions
    # (both directions, the full vocabulary) and a square float32 GEMM, alternated; the best rate of each.
    batch = sorted(timed, key=len)[-args.batch_size:]
    enc = lm.tokenizer(batch, is_split_into_words=True, padding=True, return_tensors="pt")
    labels = torch.full(enc["attention_mask"].shape, -100, dtype=torch.long)
    for row, sentence in enumerate(batch):
        labels[row, : len(sentence)] = torch.tensor(lm.vocabulary.ids(sentence))
    with torch.inference_mode():
        out = lm.model(**enc, labels=labels)
        hidden = torch.cat([out.forward_hidden[out.prediction_mask], out.backward_hidden[out.prediction_mask]])
        targets = torch.randint(0, VOCABULARY_SIZE, (hidden.shape[0],))
        weight, bias = lm.model.softmax_parameters()
        softmax_flops = 2 * hidden.shape[0] * weight.shape[0] * weight.shape[1]
        softmax_rate, peak = 0.0, 0.0
        for _ in range(args.reps):
            start = time.perf_counter()
            target_log_probs(hidden, weight, bias, targets)
            softmax_rate = max(softmax_rate, softmax_flops / (time.perf_counter() - start))
            peak = max(peak, gemm_peak_flops(reps=8))
    print(json.dumps({
        "threads": args.threads, "sentences": len(timed), "words": words, "predictions": predictions,
        "words_per_s": words / total, "seconds": total,
        "softmax_rows": hidden.shape[0], "softmax_gflops": softmax_rate / 1e9, "gemm_peak_gflops": peak / 1e9,
        "softmax_share_of_gemm_peak": softmax_rate / peak,
        "weights_gb": weight_bytes / 1e9, "peak_rss_gb": peak_rss_bytes() / 1e9,
        "peak_rss_above_weights_gb": (peak_rss_bytes() - weight_bytes) / 1e9,
    }, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sentences", type=int, default=128, help="timed sentences")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--reps", type=int, default=3, help="alternating softmax / GEMM-peak measurements")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    folder = build_checkpoint()
    subprocess.run([sys.executable, __file__, "--worker", "--folder", str(folder), "--sentences", str(args.sentences),
                    "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                    "--reps", str(args.reps)], check=True)


if __name__ == "__main__":
    main()
