#!/usr/bin/env python
"""
Reference outputs of allennlp 2.10.1's ELMo for `hf_elmo.allennlp` (tests/test_allennlp_dropin.py).

    python benchmarks/make_allennlp_dropin_fixtures.py      # writes tests/fixtures/allennlp-dropin/

Run with the project's interpreter. allennlp runs in its own virtualenv (benchmarks/.allennlp-venv, built by
`bench_vs_allennlp.ensure_allennlp_venv`), in a subprocess, on bilm-tf's fixture weights with skip connections
switched on (allennlp refuses biLMs without them). What it records, in `references.npz`:

* `embedder_*`: a sequence of calls on one `ElmoEmbedder` (allennlp 0.9's, whose methods are restated here over
  2.10.1's `_ElmoBiLm`, the module it wrapped), with changing batch sizes, an empty sentence, a batch of only an
  empty sentence, `embed_sentences` and a `reset_states()`: every call continues the biLM's state;
* `elmo_*`: calls on one `Elmo(options, weights, 2, dropout=0)` and one call on an `Elmo` with layer norm, fixed
  mix weights and sentence boundaries kept;
* `file_*`: `embed_file` of a small text file (batch size 2) with a fresh `ElmoEmbedder`;
* `char_ids`: `batch_to_ids` of a batch with an empty sentence, a long word and non-ASCII words.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIXTURE = ROOT / "tests" / "fixtures" / "allennlp-dropin"
WEIGHTS = ROOT / "tests" / "fixtures" / "bilm-tf" / "model" / "lm_weights.hdf5"
SOURCE_OPTIONS = ROOT / "tests" / "fixtures" / "bilm-tf" / "model" / "options.json"
SENTENCES = ROOT / "tests" / "fixtures" / "bilm-tf" / "model" / "lm_embeddings_sentences.json"


def call_plan() -> dict:
    """The calls, as (method, sentences or argument) pairs; sentences are cut from bilm-tf's fixture text."""
    text = [s.split() for group in json.loads(SENTENCES.read_text()) for s in group]

    def batch(*lengths: int, start: int = 0) -> list[list[str]]:
        return [text[(start + i) % len(text)][:n] for i, n in enumerate(lengths)]

    embedder = [
        ("batch_to_embeddings", batch(5, 8, 3)),
        ("batch_to_embeddings", batch(4, 2, 7, 6, 3, start=3)),  # larger: rows 3 and 4 start from zero
        ("batch_to_embeddings", batch(6, 5, start=8)),  # smaller: rows 2..4 keep their state
        ("batch_to_embeddings", batch(3, 1, 4, 9, start=10)),  # rows 2 and 3 continue from the second call
        ("embed_sentence", batch(7, start=14)[0]),
        ("batch_to_embeddings", batch(4, 0, 5, start=15)),  # an empty sentence runs as "<S> </S>"
        ("embed_batch", [[]]),  # answered without running the biLM
        ("batch_to_embeddings", batch(2, 3, 4, 5, 6, 7, start=18)),
        ("embed_sentences", batch(3, 6, 2, 5, 4, 8, 1, start=24)),  # batch size 3: batches of 3, 3, 1
        ("reset_states", None),
        ("batch_to_embeddings", batch(5, 3, start=2)),
    ]
    elmo = [batch(4, 2, start=5), batch(3, 6, 1, 5, start=7), batch(8, start=11)]
    elmo_layer_norm = batch(5, 2, 7, start=20)
    lines = [" ".join(words) for words in batch(4, 7, 2, 5, 3, start=12)]
    char_ids = [["Héllo", "wörld", "—", "x" * 60], [], ["<S>", "a", "</S>"]]
    return {"embedder": embedder, "elmo": elmo, "elmo_layer_norm": elmo_layer_norm, "file_lines": lines,
            "char_ids": char_ids, "embed_sentences_batch_size": 3, "file_batch_size": 2}


# ----------------------------------------------------------------------------------------------------------
# worker: runs in the allennlp virtualenv


def worker(options: str, plan_path: str, output: str) -> None:
    import tempfile

    import h5py
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    from bench_vs_allennlp import _install_stubs

    _install_stubs()
    import allennlp.modules.elmo as elmo_module
    import allennlp.modules.elmo_lstm as elmo_lstm
    from allennlp.nn.util import remove_sentence_boundaries

    elmo_module.cached_path = elmo_lstm.cached_path = lambda path, *a, **k: str(path)
    plan = json.loads(Path(plan_path).read_text())
    torch.manual_seed(0)
    arrays: dict[str, np.ndarray] = {}

    class Embedder:
        """allennlp 0.9's `ElmoEmbedder` (commands/elmo.py), restated over 2.10.1's `_ElmoBiLm`."""

        def __init__(self):
            self.bilm = elmo_module._ElmoBiLm(options, str(WEIGHTS))

        def batch_to_embeddings(self, batch):
            out = self.bilm(elmo_module.batch_to_ids(batch))
            pairs = [remove_sentence_boundaries(layer, out["mask"]) for layer in out["activations"]]
            return torch.stack([p[0] for p in pairs], dim=1), pairs[0][1].long()  # 0.9's masks were long

        def embed_batch(self, batch):
            if batch == [[]]:
                return [None]
            activations, mask = self.batch_to_embeddings(batch)
            return [activations[i, :, : int(mask[i].sum())].detach().numpy() for i in range(len(batch))]

    with torch.no_grad():
        embedder = Embedder()
        for i, (method, argument) in enumerate(plan["embedder"]):
            key = f"embedder_{i}"
            if method == "reset_states":
                embedder.bilm._elmo_lstm.reset_states()
                continue
            if method == "batch_to_embeddings":
                activations, mask = embedder.batch_to_embeddings(argument)
                arrays[f"{key}_activations"] = activations.numpy()
                arrays[f"{key}_mask"] = mask.numpy()
                continue
            if method == "embed_sentence":
                results = embedder.embed_batch([argument])
            elif method == "embed_batch":
                results = embedder.embed_batch(argument)
            else:
                size = plan["embed_sentences_batch_size"]
                results = [r for start in range(0, len(argument), size)
                           for r in embedder.embed_batch(argument[start : start + size])]
            for j, result in enumerate(results):
                if result is not None:
                    arrays[f"{key}_{j}"] = result
            arrays[f"{key}_count"] = np.array(len(results))

        elmo = elmo_module.Elmo(options, str(WEIGHTS), 2, dropout=0)
        for i, batch in enumerate(plan["elmo"]):
            out = elmo(elmo_module.batch_to_ids(batch))
            for k, representation in enumerate(out["elmo_representations"]):
                arrays[f"elmo_{i}_representation{k}"] = representation.numpy()
            arrays[f"elmo_{i}_mask"] = out["mask"].numpy()
        layer_norm = elmo_module.Elmo(options, str(WEIGHTS), 1, dropout=0, do_layer_norm=True,
                                      keep_sentence_boundaries=True, scalar_mix_parameters=[1.0, -1.0, 0.5])
        out = layer_norm(elmo_module.batch_to_ids(plan["elmo_layer_norm"]))
        arrays["elmo_layer_norm_representation"] = out["elmo_representations"][0].numpy()
        arrays["elmo_layer_norm_mask"] = out["mask"].numpy()

        # embed_file: line-number keys, sentence_to_index, float32 datasets of (3, n, D).
        file_embedder = Embedder()
        size = plan["file_batch_size"]
        sentences = [line.split() for line in plan["file_lines"]]
        results = [r for start in range(0, len(sentences), size)
                   for r in file_embedder.embed_batch(sentences[start : start + size])]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "out.hdf5"
            with h5py.File(path, "w") as f:
                for index, result in enumerate(results):
                    f.create_dataset(str(index), result.shape, dtype="float32", data=result)
            with h5py.File(path, "r") as f:
                for key in f:
                    arrays[f"file_{key}"] = f[key][...]

        arrays["char_ids"] = elmo_module.batch_to_ids(plan["char_ids"]).numpy()
    np.savez_compressed(output, **arrays)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(*sys.argv[2:5])
    sys.path.insert(0, str(HERE))
    from bench_vs_allennlp import ALLENNLP_PYTHON, ensure_allennlp_venv

    ensure_allennlp_venv()
    FIXTURE.mkdir(parents=True, exist_ok=True)
    options = json.loads(SOURCE_OPTIONS.read_text())
    options["lstm"]["use_skip_connections"] = True
    (FIXTURE / "options.json").write_text(json.dumps(options) + "\n")
    plan_path = FIXTURE / "plan.json"
    plan_path.write_text(json.dumps(call_plan(), indent=1, ensure_ascii=False) + "\n")
    subprocess.run([str(ALLENNLP_PYTHON), str(Path(__file__).resolve()), "--worker", str(FIXTURE / "options.json"),
                    str(plan_path), str(FIXTURE / "references.npz")], check=True)
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    main()
