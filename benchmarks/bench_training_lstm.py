#!/usr/bin/env python
"""
Training speed of one ELMo biLSTM layer (both directions) on CPU: forward + backward through the hand-written
backpropagation through time (`lstm_backend` `"bptt"`, what training uses) against the autograd step loop
(`"autograd"`, the reference).

    python benchmarks/bench_training_lstm.py                  # ELMo Small: H 1024, P 128, 64 rows x 20 steps
    python benchmarks/bench_training_lstm.py --rows 128 --threads 2 --reps 20
    python benchmarks/bench_training_lstm.py --profile        # torch.profiler table of the fast path's ops

The layer reads `--rows` windows of `--steps` tokens (bilm-tf's training batches: every row one window that
continues from the previous batch's state, so each row starts from a given initial state), in float32 with
bilm-tf's clips (3.0). One iteration is the layer's forward, a loss using every output and the final state, and
the backward into the inputs, all four weights and the initial state. The two paths alternate `--reps` times
after a warm-up of each, so that other load on a shared machine hurts both alike; reported are the median wall
time and CPU time (process time, all threads) per iteration and their ratios.

Much of the autograd loop's time on CPU is page faults on freshly allocated activations: PyTorch's
`THP_MEM_ALLOC_ENABLE=1` (transparent huge pages for large CPU allocations) narrows the gap, so the header line
says whether it is set.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from hf_elmo.lstm_elmo import LSTM_DRIVERS, ElmoRuntimeOptions, LayerWeights, SentencePacking

PATHS = ("bptt", "autograd")


def make_layer(rows: int, steps: int, lstm_dim: int, proj_dim: int, seed: int = 0):
    """Random inputs, weights (requiring gradients), initial state and loss weights for one layer."""
    generator = torch.Generator().manual_seed(seed)
    randn = lambda *shape, scale=1.0: torch.randn(shape, generator=generator) * scale  # noqa: E731
    packing = SentencePacking(torch.full((rows,), steps), steps)
    x = packing.pack(randn(rows, steps, proj_dim)).requires_grad_()
    weights = LayerWeights(randn(2, 4 * lstm_dim, proj_dim, scale=0.1).requires_grad_(),
                           randn(2, 4 * lstm_dim, proj_dim, scale=0.1).requires_grad_(),
                           randn(2, 4 * lstm_dim, scale=0.1).requires_grad_(),
                           randn(2, proj_dim, lstm_dim, scale=0.05).requires_grad_())
    initial = (randn(2, rows, proj_dim).requires_grad_(), randn(2, rows, lstm_dim).requires_grad_())
    loss_weights = (randn(2, steps, rows, proj_dim), randn(2, rows, proj_dim), randn(2, rows, lstm_dim))
    return packing, x, weights, initial, loss_weights


def iteration(path: str, layer, clips: tuple[float, float]) -> None:
    """One forward + backward of the layer through `path`."""
    packing, x, weights, initial, (output_weight, h_weight, c_weight) = layer
    driver = LSTM_DRIVERS[path](ElmoRuntimeOptions(lstm_backend=path), clips)
    output, (final_h, final_c) = driver.run_layer(x, packing, weights, initial, True, {})
    loss = (output * output_weight).sum() + (final_h * h_weight).sum() + (final_c * c_weight).sum()
    torch.autograd.grad(loss, [x, weights.input, weights.recurrent, weights.bias, weights.projection, *initial])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lstm-dim", type=int, default=1024)
    parser.add_argument("--projection-dim", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="profile the fast path instead of timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    layer = make_layer(args.rows, args.steps, args.lstm_dim, args.projection_dim)
    clips = (3.0, 3.0)
    for path in PATHS:  # warm-up: allocator, oneDNN/MKL kernels
        iteration(path, layer, clips)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            iteration("bptt", layer, clips)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        return
    wall: dict[str, list[float]] = {path: [] for path in PATHS}
    cpu: dict[str, list[float]] = {path: [] for path in PATHS}
    for _ in range(args.reps):
        for path in PATHS:
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            iteration(path, layer, clips)
            wall[path].append(time.perf_counter() - wall_start)
            cpu[path].append(time.process_time() - cpu_start)
    print(f"one layer pair, H {args.lstm_dim}, P {args.projection_dim}, {args.rows} rows x {args.steps} steps, "
          f"float32, {args.threads} threads, THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}, "
          f"median of {args.reps}:")
    for path in PATHS:
        print(f"  {path:9s} {statistics.median(wall[path]) * 1e3:8.1f} ms wall {statistics.median(cpu[path]) * 1e3:8.1f}"
              f" ms CPU")
    print(f"  autograd / bptt: {statistics.median(wall['autograd']) / statistics.median(wall['bptt']):.2f}x wall, "
          f"{statistics.median(cpu['autograd']) / statistics.median(cpu['bptt']):.2f}x CPU time")


if __name__ == "__main__":
    main()
