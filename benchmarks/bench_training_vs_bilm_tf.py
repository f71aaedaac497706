#!/usr/bin/env python
"""
Training speed on CPU at the ELMo Small size: `hf-elmo train` against bilm-tf's own `train()` (issue 11), on the
same options, corpus and CPU cores, alternating the two (A/B) for `--rounds` rounds.

    python benchmarks/bench_training_vs_bilm_tf.py --tf-python /work/bench-ref/venv-tf/bin/python \\
        --bilm-tf /work/bench-ref/bilm-tf                       # batch 128, 3 warm-up + 20 timed steps, 2 rounds
    python benchmarks/bench_training_vs_bilm_tf.py --tf-python ... --bilm-tf ... --batch-size 64 --rounds 3
    python benchmarks/bench_training_vs_bilm_tf.py --only ours  # the project's side alone (no TensorFlow needed)

Workload: `make_training_corpus.py`'s corpus (100,000-word Zipf vocabulary, 4 shards x 10,000 sentences of 10-30
words; made once under benchmarks/.cache/training-corpus) and bilm-tf's options for ELMo Small
(`bilm_tf_train_reference.small_training_options`: char CNN as released Small, 2 x 1024 LSTM with 128 projection,
clips 3, skip connections, dropout 0.1, 8,192 sampled negatives, unroll 20), written to one options.json that both
sides read. Both run in subprocesses pinned to `--cpus` (inherited from this process), with their libraries'
default thread pools.

- Reference: `bilm_tf_train_reference.py` under `--tf-python` (tensorflow-cpu 2.15.1 through compat.v1): per-step
  timestamps around bilm-tf's own train() loop; `--warmup` steps are dropped, the next `--steps` are timed.
- Ours: `hf-elmo train --train-file SHARDS.. --vocab-file --options-file --output-dir --max-steps N --seed
  --batch-size`, run twice, with N = `--warmup` and N = `--warmup + --steps`; the difference of the two runs' wall
  (and CPU) times over `--steps` is the time per step, which cancels start-up, model building, data loading and
  the final save without relying on the trainer's logs. Peak RSS is the longer run's (`wait4`).

Tokens are bilm-tf's count: batch_size * unroll_steps per step (the forward stream's input/target pairs; the
backward stream trains on as many in the same step). Reported per round and as the median over rounds: tokens/s,
tokens per CPU-second (all threads; less sensitive to other load on a shared machine), ours/reference ratios, and
peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bilm_tf_train_reference import corpus_files, count_tokens, small_training_options  # noqa: E402
from make_training_corpus import make_corpus  # noqa: E402

from hf_elmo.atomic_files import atomic_output  # noqa: E402

REFERENCE_SCRIPT = HERE / "bilm_tf_train_reference.py"


def run_measured(command: list[str], log_path: Path) -> tuple[float, float, float]:
    """Run `command` (output to `log_path`); (wall seconds, CPU seconds of the child, its peak RSS in MB).
    Exits with the log's tail if the command fails.

    The peak RSS is the child's own `VmHWM`, polled: `wait4`'s `ru_maxrss` would also count this process's memory,
    which a forked child carries until it execs."""
    peak_kb = 0
    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        while True:
            try:
                with open(f"/proc/{process.pid}/status") as status:
                    hwm = [line for line in status if line.startswith("VmHWM:")]
                peak_kb = max(peak_kb, int(hwm[0].split()[1])) if hwm else peak_kb
            except (FileNotFoundError, ProcessLookupError):
                pass
            if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break  # exited; reaped by wait4 below, which gives its CPU times
            time.sleep(0.1)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise SystemExit(f"{shlex.join(command)}\nfailed with exit status {process.returncode}; log {log_path}:\n"
                         f"{tail}")
    return wall, usage.ru_utime + usage.ru_stime, peak_kb / 1024


def run_reference(args: argparse.Namespace, work: Path, round_no: int, options: dict[str, Any]) -> dict[str, Any]:
    """bilm-tf's train() in the TF virtualenv, checked to have trained with `options`; its figures."""
    out = work / f"reference-{round_no}.json"
    command = [args.tf_python, str(REFERENCE_SCRIPT), "--bilm-tf", str(args.bilm_tf), "--corpus-dir",
               str(args.corpus_dir), "--batch-size", str(args.batch_size), "--warmup", str(args.warmup),
               "--steps", str(args.steps), "--seed", str(args.seed), "--out", str(out)]
    run_measured(command, work / f"reference-{round_no}.log")
    result = json.loads(out.read_text())
    if result["options"] != options:
        raise SystemExit(f"the reference trained with other options than ours: {result['options']} != {options}")
    return {"tokens_per_s": result["tokens_per_s"], "tokens_per_cpu_s": result["tokens_per_cpu_s"],
            "step_s": result["step_s_mean"], "peak_rss_mb": result["peak_rss_mb"], "threads": result["threads"]}


def run_ours(args: argparse.Namespace, work: Path, round_no: int, options_file: Path) -> dict[str, Any]:
    """`hf-elmo train` for `--warmup` and for `--warmup + --steps` steps; per-step figures from the difference."""
    vocab_file, shards = corpus_files(args.corpus_dir)
    measured = []
    for max_steps in (args.warmup, args.warmup + args.steps):
        output_dir = work / f"ours-{round_no}-{max_steps}"
        command = [args.hf_elmo, "train", "--train-file", *map(str, shards), "--vocab-file", str(vocab_file),
                   "--options-file", str(options_file), "--output-dir", str(output_dir), "--max-steps",
                   str(max_steps), "--seed", str(args.seed), "--batch-size", str(args.batch_size),
                   *shlex.split(args.our_extra_args)]
        measured.append(run_measured(command, work / f"ours-{round_no}-{max_steps}.log"))
        shutil.rmtree(output_dir, ignore_errors=True)  # checkpoints are large; only the timing matters
    (wall_short, cpu_short, _), (wall_long, cpu_long, rss_long) = measured
    step_s = (wall_long - wall_short) / args.steps
    step_cpu_s = (cpu_long - cpu_short) / args.steps
    tokens_per_step = args.batch_size * args.unroll_steps
    return {"tokens_per_s": tokens_per_step / step_s, "tokens_per_cpu_s": tokens_per_step / step_cpu_s,
            "step_s": step_s, "peak_rss_mb": rss_long, "wall_s": [wall_short, wall_long]}


def print_row(name: str, row: dict[str, Any]) -> None:
    print(f"  {name:<10} {row['tokens_per_s']:>9.0f} tokens/s  {row['step_s']:>7.2f} s/step  "
          f"{row['tokens_per_cpu_s']:>8.0f} tokens/CPU-s  peak RSS {row['peak_rss_mb']:>7.0f} MB", flush=True)


def median_of(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tf-python", help="python of the TensorFlow virtualenv (tensorflow-cpu 2.15.1, h5py)")
    parser.add_argument("--bilm-tf", type=Path, help="a checkout of allenai/bilm-tf (not modified)")
    parser.add_argument("--hf-elmo", default=str(Path(sys.executable).parent / "hf-elmo"),
                        help="the hf-elmo command (default: next to this python)")
    parser.add_argument("--corpus-dir", type=Path, default=HERE / ".cache" / "training-corpus")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpus", default="0,1", help="CPUs both sides are pinned to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=("ours", "reference"), default=None)
    parser.add_argument("--our-extra-args", default="", help="more arguments for hf-elmo train, one string")
    parser.add_argument("--output", type=Path, default=None, help="write all figures as JSON here")
    args = parser.parse_args()
    if args.only != "ours" and not (args.tf_python and args.bilm_tf):
        parser.error("--tf-python and --bilm-tf are needed for the reference side (or --only ours)")

    os.sched_setaffinity(0, {int(cpu) for cpu in args.cpus.split(",")})  # children inherit the pinning
    if not (args.corpus_dir / "vocab.txt").is_file():
        print(f"making the corpus in {args.corpus_dir}", flush=True)
        make_corpus(args.corpus_dir)
    vocab_file, shards = corpus_files(args.corpus_dir)
    n_vocab = len(vocab_file.read_text(encoding="utf-8").splitlines())
    options = small_training_options(args.batch_size, n_vocab, count_tokens(shards))
    args.unroll_steps = options["unroll_steps"]

    sides = [side for side in ("reference", "ours") if args.only in (None, side)]
    rows: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="bench-training-") as scratch:
        work = Path(scratch)
        options_file = work / "options.json"
        options_file.write_text(json.dumps(options))
        for round_no in range(1, args.rounds + 1):
            print(f"round {round_no}/{args.rounds} (batch {args.batch_size}, {args.warmup} warm-up + "
                  f"{args.steps} timed steps, CPUs {args.cpus}, load {os.getloadavg()[0]:.2f})", flush=True)
            order = sides if round_no % 2 else sides[::-1]  # alternate who goes first
            for side in order:
                if side == "reference":
                    row = run_reference(args, work, round_no, options)
                else:
                    row = run_ours(args, work, round_no, options_file)
                rows[side].append(row)
                print_row(side, row)

    print(f"median over {args.rounds} rounds:")
    summary: dict[str, Any] = {}
    for side in sides:
        summary[side] = {key: median_of(rows[side], key)
                         for key in ("tokens_per_s", "tokens_per_cpu_s", "step_s", "peak_rss_mb")}
        print_row(side, summary[side])
    if len(sides) == 2:
        summary["ratio_tokens_per_s"] = summary["ours"]["tokens_per_s"] / summary["reference"]["tokens_per_s"]
        summary["ratio_tokens_per_cpu_s"] = (summary["ours"]["tokens_per_cpu_s"]
                                             / summary["reference"]["tokens_per_cpu_s"])
        print(f"  ours / bilm-tf: {summary['ratio_tokens_per_s']:.2f}x tokens/s, "
              f"{summary['ratio_tokens_per_cpu_s']:.2f}x tokens per CPU-second")
    if args.output:
        with atomic_output(args.output) as partial:
            Path(partial).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "batch_size": args.batch_size,
                                                 "warmup": args.warmup, "steps": args.steps, "cpus": args.cpus,
                                                 "options": options, "rounds": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
