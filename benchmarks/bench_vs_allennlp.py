#!/usr/bin/env python
"""
hf-elmo against allennlp 2.10.1's ELMo on the same checkpoints, sentences and threads, in alternating runs.

    python benchmarks/bench_vs_allennlp.py                      # everything (~20 minutes on 2 cores, 5 of them
                                                                # for the 20,000-word Original sentence)
    python benchmarks/bench_vs_allennlp.py --models small --batch-sizes 64 --reps 1

Run it with the project's interpreter (hf-elmo installed). On first use it:
  * creates benchmarks/.allennlp-venv: `torch==2.13.0` (the same build as the project's), `allennlp==2.10.1`
    with `--no-deps` (it pins torch<1.13, but its ELMo runs on torch 2.x), and the few small packages its ELMo
    imports really need. The heavy packages that allennlp's `__init__` files import but ELMo never uses get
    empty stand-in modules in that worker (see `_install_stubs`);
  * writes random-weight checkpoints at the official shapes (bilm-tf's hdf5 layout) and their converted
    hf-elmo folders under benchmarks/.cache.

Each measurement runs in a fresh subprocess (one per implementation, alternating, `--reps` times), which
loads the model (timed), runs one warm-up batch, then times batches of the workload until `--min-time`
seconds and `--min-batches` batches have passed. Reported: words/s counting real words only (no padding,
no sentence boundaries), the best of the reps; peak RSS (VmHWM) of the whole worker and during the timed
batches only (VmHWM reset after the warm-up); the model's load time. Tokenization (character ids) is done
before timing in both. Both run under `torch.inference_mode()` with zero initial LSTM state for every batch
(allennlp's stateful biLM is reset after each batch). The outputs of both on the first batch are compared
layer by layer (all real positions).

The workload: sentences with news-like lengths (gamma distributed, mean about 25 words, 1 to 60) of
Zipf-distributed (s = 1.0) pseudo-words over a 50,000-word vocabulary, so words repeat within a batch about
as often as in running text. The batch's unique-word fraction is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
TESTS = HERE.parent / "tests"  # tests/helpers.py writes random checkpoints in bilm-tf's layout (as the tests do)
ALLENNLP_VENV = HERE / ".allennlp-venv"
ALLENNLP_PYTHON = ALLENNLP_VENV / "bin" / "python"
# What allennlp.modules.elmo needs at import and run time besides torch (found by importing it with stubs).
ALLENNLP_SMALL_DEPS = ["numpy", "h5py", "tqdm", "more-itertools", "dill", "base58", "overrides==3.1.0",
                       "termcolor", "requests", "filelock"]
# Imported by allennlp's __init__ files, never used by its ELMo: replaced by empty stand-in modules.
STUBBED_PACKAGES = ("transformers", "spacy", "_jsonnet", "cached_path", "lmdb", "huggingface_hub",
                    "torchvision", "fairscale")
MODELS = ("small", "medium", "original")
# Standard deviation of the random weights: 0.05 for Small, scaled by 1/sqrt(lstm_dim) for the larger models.
# Larger random weights make the LSTMs chaotic (float rounding differences grow to ~1e-3 over a sentence, so the
# cross-check would compare noise); the speed does not depend on the values.
WEIGHT_SCALE = {"small": 0.05, "medium": 0.05 / 2**0.5, "original": 0.025}


# ----------------------------------------------------------------------------------------------------------
# workload


def make_sentences(n_sentences: int, seed: int = 0, length: int | None = None) -> list[list[str]]:
    """Deterministic tokenized sentences: gamma(4, 6.25) lengths clipped to [1, 60] (mean ~25), Zipf words."""
    rng = random.Random(seed)
    vocab_size = 50_000
    letters = "etaoinshrdlcumwfgypbvkjxqz"

    def word(rank: int) -> str:
        r = random.Random(rank * 7919 + 13)
        n = min(14, 1 + int(r.expovariate(1 / 5)))
        w = "".join(r.choice(letters) for _ in range(n))
        return w.capitalize() if r.random() < 0.12 else w

    vocab = [word(i) for i in range(vocab_size)]
    weights = [1.0 / (i + 1) for i in range(vocab_size)]
    cumulative, total = [], 0.0
    for w in weights:
        total += w
        cumulative.append(total)
    sentences = []
    for _ in range(n_sentences):
        n = length if length is not None else max(1, min(60, round(rng.gammavariate(4.0, 6.25))))
        sentences.append(rng.choices(vocab, cum_weights=cumulative, k=n))
    return sentences


# ----------------------------------------------------------------------------------------------------------
# workers (run in subprocesses; only the standard library is imported at module level)


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _install_stubs() -> None:
    """Empty stand-ins for packages allennlp imports at package level but its ELMo never calls."""
    import importlib.abc
    import importlib.machinery
    import types

    class AnythingType(type):
        def __getattr__(cls, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return Anything

        def __call__(cls, *args, **kwargs):
            return Anything

        def __getitem__(cls, item):
            return Anything

    class Anything(metaclass=AnythingType):
        pass

    class StubModule(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return Anything

    class StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in STUBBED_PACKAGES:
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
            return None

        def create_module(self, spec):
            module = StubModule(spec.name)
            module.__path__ = []
            return module

        def exec_module(self, module):
            pass

    sys.meta_path.insert(0, StubFinder())


class _AllennlpRunner:
    def __init__(self, args):
        import warnings

        warnings.filterwarnings("ignore")
        _install_stubs()
        import allennlp.modules.elmo as elmo
        import allennlp.modules.elmo_lstm as elmo_lstm

        # allennlp resolves paths through the (stubbed) cached_path package; these are local files.
        elmo.cached_path = elmo_lstm.cached_path = lambda path, *a, **k: str(path)
        self.elmo = elmo
        start = time.perf_counter()
        self.bilm = elmo._ElmoBiLm(str(args.options), str(args.weights), requires_grad=False).eval()
        self.load_s = time.perf_counter() - start

        self.bilm.to(args.device)
        self.device = args.device

    def prepare(self, sentences):
        return self.elmo.batch_to_ids(sentences).to(self.device)

    def run(self, char_ids):
        out = self.bilm(char_ids)
        self.bilm._elmo_lstm.reset_states()  # zero initial state for every batch, as hf-elmo's default
        return out

    def layers(self, char_ids):
        from allennlp.nn.util import remove_sentence_boundaries

        out = self.run(char_ids)
        return [remove_sentence_boundaries(a, out["mask"])[0] for a in out["activations"]]


class _HfRunner:
    def __init__(self, args):
        import hf_elmo  # noqa: F401
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
        start = time.perf_counter()
        self.model = AutoModel.from_pretrained(args.model_dir, prepack_cpu_weights=not args.no_prepack).eval()
        self.load_s = time.perf_counter() - start
        import torch

        self.model.to(args.device, dtype=torch.bfloat16 if args.precision == "bf16" else torch.float32)
        self.device = args.device

    def prepare(self, sentences):
        enc = self.tokenizer(sentences, is_split_into_words=True, padding=True, return_tensors="pt")
        return {key: value.to(self.device) for key, value in enc.items()}

    def run(self, enc):
        return self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])

    def layers(self, enc):
        out = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True)
        return list(out.hidden_states)


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    if cuda:  # fp32 means fp32: TF32 only when asked for, and only for hf-elmo
        torch.backends.cuda.matmul.allow_tf32 = args.worker == "hf" and args.precision == "tf32"
        torch.backends.cudnn.allow_tf32 = args.worker == "hf" and args.precision == "tf32"
    sentences = json.loads(Path(args.sentences).read_text())
    with torch.inference_mode():
        runner = _AllennlpRunner(args) if args.worker == "allennlp" else _HfRunner(args)
        batches = [sentences[i : i + args.batch_size] for i in range(0, len(sentences), args.batch_size)]
        batches = [b for b in batches if len(b) == args.batch_size] or batches
        prepared = [runner.prepare(b) for b in batches]
        result = {"impl": args.worker, "load_s": runner.load_s}
        if args.dump:
            lengths = [len(s) for s in batches[0]]
            arrays = {f"layer{i}": layer.float().cpu().numpy()
                      for i, layer in enumerate(runner.layers(prepared[0]))}
            import numpy as np

            np.savez(args.dump, lengths=np.array(lengths), **arrays)
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        start = time.perf_counter()
        for batch in prepared if cuda else prepared[:1]:  # warm-up (on a GPU: every batch shape's graphs captured)
            runner.run(batch)
        sync()
        result["warmup_s"] = time.perf_counter() - start
        result["peak_rss_total_mb"] = _peak_rss_mb()
        _reset_peak_rss()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        n_batches = n_words = 0
        cpu_start = time.process_time()
        start = time.perf_counter()
        while n_batches < args.min_batches or time.perf_counter() - start < args.min_time:
            i = n_batches % len(batches)
            runner.run(prepared[i])
            sync()
            n_words += sum(len(s) for s in batches[i])
            n_batches += 1
        elapsed = time.perf_counter() - start
        if cuda:
            result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
            if args.worker == "hf":
                result["gemm_peak_flops"] = _gemm_peak_flops(torch, args.device, args.precision)
        cpu_seconds = time.process_time() - cpu_start
        result.update(
            batches=n_batches, words=n_words, seconds=elapsed, words_per_s=n_words / elapsed,
            cpu_seconds=cpu_seconds, words_per_cpu_s=n_words / cpu_seconds,
            peak_rss_run_mb=_peak_rss_mb(),
        )
        result["peak_rss_total_mb"] = max(result["peak_rss_total_mb"], result["peak_rss_run_mb"])
    print("RESULT " + json.dumps(result), flush=True)


def _gemm_peak_flops(torch, device: str, precision: str) -> float:
    """FLOP/s of a large square matmul at `precision` on `device`: the GEMM roofline the model is held against."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(8192, 8192, device=device, dtype=dtype)
    b = torch.randn(8192, 8192, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, repeats = time.perf_counter(), 20
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return repeats * 2 * 8192**3 / (time.perf_counter() - start)


def nominal_flops_per_word(options_path: Path) -> float:
    """Multiply-adds x 2 per word at all character positions (no deduplication): char CNN, highway, projection
    and every LSTM layer-direction, from the model's options.json."""
    from hf_elmo.checkpoints.bilm_tf import config_from_options, read_options

    config = config_from_options(read_options(options_path))
    chars, filters = config.max_characters_per_token, config.num_char_filters
    flops = sum(2 * config.char_embedding_dim * width * n * (chars - width + 1) for width, n in config.char_filters)
    flops += config.num_highway_layers * 2 * 2 * filters * filters
    projection, cell = config.projection_dim, config.lstm_dim
    if filters != projection:
        flops += 2 * filters * projection
    flops += config.num_hidden_layers * 2 * (2 * projection * 4 * cell * 2 + 2 * cell * projection)
    return float(flops)


def long_sentence_worker(args) -> None:
    """One sentence of `--long-sentence` words through hf-elmo: time and peak RSS."""
    import torch

    torch.set_num_threads(args.threads)
    import hf_elmo  # noqa: F401
    from transformers import AutoModel, AutoTokenizer

    sentence = make_sentences(1, seed=1, length=args.long_sentence)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModel.from_pretrained(args.model_dir, prepack_cpu_weights=not args.no_prepack).eval()
    enc = tokenizer(sentence, is_split_into_words=True, return_tensors="pt")
    base = _peak_rss_mb()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model(**enc)
    elapsed = time.perf_counter() - start
    assert out.last_hidden_state.shape[1] == args.long_sentence
    result = {"words": args.long_sentence, "seconds": elapsed, "words_per_s": args.long_sentence / elapsed,
              "peak_rss_mb": _peak_rss_mb(), "rss_before_mb": base}
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------------------
# setup and driver


def ensure_allennlp_venv() -> None:
    if ALLENNLP_PYTHON.exists():
        probe = subprocess.run([str(ALLENNLP_PYTHON), "-c", "import importlib.util as u, torch, h5py; assert u.find_spec('allennlp')"], capture_output=True)
        if probe.returncode == 0:
            return
    print(f"setting up allennlp 2.10.1 in {ALLENNLP_VENV} ...", flush=True)
    if not ALLENNLP_PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(ALLENNLP_VENV)], check=True)
    pip = [str(ALLENNLP_PYTHON), "-m", "pip", "install", "-q"]
    # The exact pin matches the locally available CPU build; do not loosen it.
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["--no-deps", "allennlp==2.10.1"], check=True)
    subprocess.run(pip + ALLENNLP_SMALL_DEPS, check=True)


def ensure_checkpoint(name: str) -> tuple[Path, Path, Path]:
    """(options.json, weights.hdf5, converted hf folder) of a random-weight model at `name`'s official shapes."""
    from hf_elmo.checkpoints.bilm_tf import official_options
    from hf_elmo.conversion import convert_original_checkpoint

    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from helpers import write_random_checkpoint

    import hashlib

    from hf_elmo import modeling_elmo
    from hf_elmo.checkpoints import bilm_tf as original_checkpoint

    scale = f"scale{WEIGHT_SCALE[name]:.4g}"
    source = CACHE / name / f"original-{scale}"
    # Reconverted whenever the weight mapping or the model code changes.
    code = "".join(Path(module.__file__).read_text() for module in (original_checkpoint, modeling_elmo))
    converted = CACHE / name / f"hf-{scale}-{hashlib.sha256(code.encode()).hexdigest()[:10]}"
    options, weights = source / "options.json", source / "weights.hdf5"
    if not weights.exists():
        print(f"writing a random {name} checkpoint ...", flush=True)
        write_random_checkpoint(official_options(name), source, seed=0, scale=WEIGHT_SCALE[name])
    if not (converted / "config.json").exists():
        for stale in (CACHE / name).glob(f"hf-{scale}*"):
            shutil.rmtree(stale)
        convert_original_checkpoint(options, weights, converted)
    return options, weights, converted


def run_worker(impl: str, name: str, batch_size: int, args, dump: Path | None = None) -> dict:
    options, weights, converted = ensure_checkpoint(name)
    python = str(ALLENNLP_PYTHON) if impl == "allennlp" else sys.executable
    command = [python, str(Path(__file__).resolve()), "--worker", impl, "--options", str(options),
               "--weights", str(weights), "--model-dir", str(converted), "--sentences", str(args.sentences),
               "--batch-size", str(batch_size), "--threads", str(args.threads), "--min-time", str(args.min_time),
               "--min-batches", str(args.min_batches), "--device", args.device, "--precision", args.precision]
    if dump is not None:
        command += ["--dump", str(dump)]
    if args.no_prepack:
        command.append("--no-prepack")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=str(HERE))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{impl} worker failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def compare_dumps(hf_path: Path, allennlp_path: Path) -> float:
    import numpy as np

    hf, al = np.load(hf_path), np.load(allennlp_path)
    worst = 0.0
    for key in sorted(k for k in hf.files if k.startswith("layer")):
        for row, n in enumerate(hf["lengths"]):
            worst = max(worst, float(np.abs(hf[key][row, :n] - al[key][row, :n]).max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 64])
    parser.add_argument("--reps", type=int, default=2, help="alternating runs of each implementation")
    parser.add_argument("--min-time", type=float, default=12.0, help="seconds of timed batches per run")
    parser.add_argument("--min-batches", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--long-sentence", type=int, default=20_000,
                        help="also embed one sentence this long with hf-elmo (0: skip)")
    parser.add_argument("--long-sentence-model", default="original", choices=MODELS,
                        help="model for the long sentence (Original takes about 5 minutes on 2 cores)")
    parser.add_argument("--skip-allennlp", action="store_true", help="hf-elmo only (no ratio)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]: both implementations run there")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"],
                        help="hf-elmo's precision on the device (allennlp always runs fp32)")
    parser.add_argument("--no-prepack", action="store_true",
                        help="hf-elmo with prepack_cpu_weights=False (less memory, slower)")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "latest.json")
    # worker-only arguments
    parser.add_argument("--worker", choices=["hf", "allennlp", "long"], help=argparse.SUPPRESS)
    parser.add_argument("--options", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sentences", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dump", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "long":
        return long_sentence_worker(args)
    if args.worker:
        return worker(args)

    import platform

    import torch

    CACHE.mkdir(parents=True, exist_ok=True)
    args.sentences = CACHE / "sentences.json"
    sentences = make_sentences(1024, seed=0)
    args.sentences.write_text(json.dumps(sentences))
    n_words = [len(s) for s in sentences]
    first = [w for s in sentences[:64] for w in s]
    print(f"workload: {len(sentences)} sentences, mean {sum(n_words) / len(n_words):.1f} words (max "
          f"{max(n_words)}); unique words in a batch of 64: {len(set(first)) / len(first):.0%}", flush=True)
    if not args.skip_allennlp:
        ensure_allennlp_venv()
    cpu = platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    machine = f"{cpu}, {os.cpu_count()} cores, {args.threads} threads, torch {torch.__version__}"
    print(f"machine: {machine}", flush=True)
    device = args.device
    if device.startswith("cuda"):
        device = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    results = {"machine": machine, "device": device, "date": time.strftime("%Y-%m-%d"),
               "command": " ".join(sys.argv), "runs": []}
    table = []
    for name in args.models:
        ensure_checkpoint(name)
        agreement = None
        for batch_size in args.batch_sizes:
            best: dict[str, dict] = {}
            for rep in range(args.reps):
                order = ["allennlp", "hf"] if rep % 2 == 0 else ["hf", "allennlp"]
                if args.skip_allennlp:
                    order = ["hf"]
                for impl in order:
                    dump = None
                    if agreement is None and rep == 0 and not args.skip_allennlp:
                        dump = CACHE / f"{name}-{impl}-first-batch.npz"
                    r = run_worker(impl, name, batch_size, args, dump)
                    r.update(model=name, batch_size=batch_size, rep=rep)
                    results["runs"].append(r)
                    print(f"  {name:8s} b{batch_size:<3d} {impl:8s} rep {rep}: {r['words_per_s']:8.1f} words/s "
                          f"({r['words_per_cpu_s']:.1f} per CPU-second), "
                          f"peak RSS {r['peak_rss_run_mb']:.0f} MB (run) / {r['peak_rss_total_mb']:.0f} MB "
                          f"(total), load {r['load_s']:.2f} s", flush=True)
                    if impl not in best or r["words_per_s"] > best[impl]["words_per_s"]:
                        best[impl] = r
                if agreement is None and rep == 0 and not args.skip_allennlp:
                    agreement = compare_dumps(CACHE / f"{name}-hf-first-batch.npz",
                                              CACHE / f"{name}-allennlp-first-batch.npz")
                    print(f"  {name}: max |hf-elmo - allennlp| over all layers of the first batch: {agreement:.3g}",
                          flush=True)
            row = {"model": name, "batch_size": batch_size, "hf": best["hf"], "allennlp": best.get("allennlp"),
                   "max_abs_diff": agreement, "flops_per_word": nominal_flops_per_word(ensure_checkpoint(name)[0])}
            table.append(row)
    if args.long_sentence:
        _, _, converted = ensure_checkpoint(args.long_sentence_model)
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", "long", "--model-dir", str(converted),
                   "--long-sentence", str(args.long_sentence), "--threads", str(args.threads)]
        if args.no_prepack:
            command.append("--no-prepack")
        proc = subprocess.run(command, capture_output=True, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"long-sentence worker failed:\n{proc.stderr[-5000:]}")
        results["long_sentence"] = dict(json.loads(lines[-1][len("RESULT ") :]), model=args.long_sentence_model)
    results["table"] = table
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))

    print()
    if args.device.startswith("cuda"):
        print_gpu_table(results, table, args)
    else:
        print_cpu_table(results, table, args)


def print_gpu_table(results: dict, table: list, args) -> None:
    print(f"machine: {results['machine']}; device {results['device']}; date {results['date']}; best of {args.reps} "
          f"alternating runs; hf-elmo {args.precision}, allennlp fp32")
    print("| model | batch | hf-elmo words/s | allennlp words/s | ratio | hf-elmo peak GPU memory | allennlp peak GPU "
          "memory | share of GEMM peak | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in table:
        hf, al = row["hf"], row["allennlp"]
        share = hf["words_per_s"] * row["flops_per_word"] / hf["gemm_peak_flops"]
        ratio = f"{hf['words_per_s'] / al['words_per_s']:.1f}x" if al else "-"
        al_words = f"{al['words_per_s']:.0f}" if al else "-"
        al_memory = f"{al['peak_gpu_mb']:.0f} MB" if al else "-"
        diff = f"{row['max_abs_diff']:.1g}" if row["max_abs_diff"] is not None else "-"
        print(f"| {row['model']} | {row['batch_size']} | {hf['words_per_s']:.0f} | {al_words} | {ratio} | "
              f"{hf['peak_gpu_mb']:.0f} MB | {al_memory} | {share:.1%} of {hf['gemm_peak_flops'] / 1e12:.0f} "
              f"TFLOP/s | {diff} |")


def print_cpu_table(results: dict, table: list, args) -> None:
    machine = results["machine"]
    print(f"machine: {machine}; date {results['date']}; best of {args.reps} alternating runs; fp32; "
          f"prepack_cpu_weights={not args.no_prepack}")
    print("| model | batch | hf-elmo words/s | allennlp words/s | ratio | ratio per CPU-second | hf-elmo peak RSS "
          "(run / total) | allennlp peak RSS (run / total) | load hf-elmo / allennlp | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in table:
        hf, al = row["hf"], row["allennlp"]
        if al:
            print(f"| {row['model']} | {row['batch_size']} | {hf['words_per_s']:.0f} | {al['words_per_s']:.0f} | "
                  f"{hf['words_per_s'] / al['words_per_s']:.1f}x | "
                  f"{hf['words_per_cpu_s'] / al['words_per_cpu_s']:.1f}x | {hf['peak_rss_run_mb']:.0f} / "
                  f"{hf['peak_rss_total_mb']:.0f} MB | {al['peak_rss_run_mb']:.0f} / {al['peak_rss_total_mb']:.0f} MB "
                  f"| {hf['load_s']:.2f} s / {al['load_s']:.2f} s | {row['max_abs_diff']:.1g} |")
        else:
            print(f"| {row['model']} | {row['batch_size']} | {hf['words_per_s']:.0f} | - | - | - | "
                  f"{hf['peak_rss_run_mb']:.0f} / {hf['peak_rss_total_mb']:.0f} MB | - | {hf['load_s']:.2f} s | - |")
    if "long_sentence" in results:
        ls = results["long_sentence"]
        print(f"\none {ls['words']}-word sentence, {ls['model']}: {ls['seconds']:.1f} s ({ls['words_per_s']:.0f} words/s), "
              f"peak RSS {ls['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
