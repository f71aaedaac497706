"""`pipeline("feature-extraction")` with ELMo: the stock pipeline (with and without hf_elmo installed) and
`ElmoFeatureExtractionPipeline`, every text's vectors checked against the model run on that text alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from hub_server import FakeHub
from transformers import AutoModel, pipeline
from transformers.pipelines import FeatureExtractionPipeline

import hf_elmo
from helpers import run_alone
from hf_elmo import ElmoFeatureExtractionPipeline

TEXTS = ["The cat sat on the mat .", "Hi", "", "Colorless green ideas sleep furiously , they say .", "A b c"]
D = 32
N_LAYERS = 3
REPO_ID = "elmo-tests/elmo-pipeline"

REMOTE_SCRIPT = r"""
import json, sys
sys.modules["hf_elmo"] = None  # `import hf_elmo` fails: only the checkpoint's own code can run
from transformers import pipeline
repo, out = sys.argv[1:3]
texts = json.loads(sys.argv[3])
pipe = pipeline("feature-extraction", model=repo, trust_remote_code=True)
assert type(pipe.model).__module__.startswith("transformers_modules."), type(pipe.model).__module__
assert type(pipe.tokenizer).__module__.startswith("transformers_modules."), type(pipe.tokenizer).__module__
results = {"remote_batched": pipe(texts, batch_size=3), "remote_single": pipe(texts)}

del sys.modules["hf_elmo"]
import hf_elmo  # now installed: the same repo id with no trust_remote_code
pipe = pipeline("feature-extraction", model=repo)
assert type(pipe.model).__module__ == "hf_elmo.modeling_elmo", type(pipe.model).__module__
results["installed_batched"] = pipe(texts, batch_size=3)
pipe = pipeline("feature-extraction", model=repo, pipeline_class=hf_elmo.ElmoFeatureExtractionPipeline)
results["elmo_batched"] = pipe(texts, batch_size=3)
json.dump(results, open(out, "w"))
"""


LAZY_IMPORT_SCRIPT = r"""
import json, sys
if sys.argv[2] == "transformers.pipelines first":
    import transformers.pipelines
import hf_elmo
if sys.argv[2] == "hf_elmo first":
    eager = [m for m in ("datasets", "hf_elmo.jobs", "hf_elmo.pipelines", "transformers.pipelines") if m in sys.modules]
    assert not eager, f"imported by `import hf_elmo`: {eager}"
from transformers import pipeline
pipe = pipeline("elmo-feature-extraction", model=sys.argv[1])
assert type(pipe) is hf_elmo.ElmoFeatureExtractionPipeline, type(pipe)
assert "datasets" not in sys.modules
print(json.dumps(pipe("The cat sat .")))
"""


@pytest.mark.parametrize("order", ["hf_elmo first", "transformers.pipelines first"])
def test_import_is_lazy_and_the_task_is_registered_in_any_import_order(converted_fixture, fixture_model,
                                                                        elmo_tokenizer, order):
    """`import hf_elmo` imports neither datasets, the jobs nor transformers' pipelines (0.16 s), yet
    `pipeline("elmo-feature-extraction")` works, whichever of hf_elmo and transformers' pipelines comes first."""
    run = subprocess.run([sys.executable, "-c", LAZY_IMPORT_SCRIPT, str(converted_fixture), order],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    got = np.asarray(json.loads(run.stdout), dtype=np.float32)
    np.testing.assert_allclose(got, run_alone(fixture_model, elmo_tokenizer, "The cat sat .")["mix"], atol=1e-5,
                               rtol=0)


def check_stock_results(results, model, tokenizer, batch_size: int) -> None:
    """Stock layout `(1, W_padded, D)`: the text's rows equal the model alone, padding rows are exact zeros."""
    for start in range(0, len(TEXTS), batch_size):
        texts = TEXTS[start:start + batch_size]
        width = max(len(tokenizer.split_words(t)) for t in texts)  # each text is padded to its batch's longest
        for text, result in zip(texts, results[start:start + batch_size]):
            result = np.asarray(result, dtype=np.float32).reshape(1, -1, D)  # [[]] for a text without words
            ref = run_alone(model, tokenizer, text)["mix"]
            assert result.shape == (1, width, D)
            np.testing.assert_allclose(result[0, : len(ref)], ref, atol=1e-5, rtol=0)
            assert not result[0, len(ref):].any(), "padding rows must be exact zeros"


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_stock_pipeline_matches_the_model_and_pads_with_zeros(converted_fixture, fixture_model, elmo_tokenizer,
                                                              batch_size):
    pipe = pipeline("feature-extraction", model=str(converted_fixture))  # hf_elmo installed, no trust_remote_code
    assert type(pipe) is FeatureExtractionPipeline and type(pipe.model) is hf_elmo.ElmoModel
    check_stock_results(pipe(TEXTS, batch_size=batch_size), fixture_model, elmo_tokenizer, batch_size)


def test_stock_pipeline_padding_is_zero_with_layer_norm_mix(converted_fixture, elmo_tokenizer):
    """With `do_layer_norm` the mix of zeros is -mean/std; the model zeroes padding positions again."""
    layer_norm = AutoModel.from_pretrained(converted_fixture, do_layer_norm=True).eval()
    pipe = pipeline("feature-extraction", model=layer_norm, tokenizer=elmo_tokenizer)
    results = pipe(["one two three four", "one"], batch_size=2)
    short = np.asarray(results[1])
    assert short.shape == (1, 4, D) and short[0, 0].any() and not short[0, 1:].any()


def test_stock_pipeline_from_a_hub_repo_with_and_without_hf_elmo(tmp_path, monkeypatch, converted_fixture,
                                                               fixture_model, elmo_tokenizer):
    """A repo id on a local Hub server: `trust_remote_code=True` in a process where `import hf_elmo` fails,
    then hf_elmo installed with no `trust_remote_code`, then `ElmoFeatureExtractionPipeline`."""
    from huggingface_hub import constants

    from hf_elmo.hub import push_checkpoint_folder

    with FakeHub() as hub:
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        push_checkpoint_folder(converted_fixture, REPO_ID, token="hf_test_token", endpoint=hub.url)
        env = {**os.environ, **hub.env(), "HF_HOME": str(tmp_path / "hf-home"), "OMP_NUM_THREADS": "1"}
        env.pop("HF_HUB_OFFLINE", None)
        out = tmp_path / "results.json"
        run = subprocess.run([sys.executable, "-c", REMOTE_SCRIPT, REPO_ID, str(out), json.dumps(TEXTS)],
                             capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    check_stock_results(results["remote_batched"], fixture_model, elmo_tokenizer, 3)
    check_stock_results(results["remote_single"], fixture_model, elmo_tokenizer, 1)
    check_stock_results(results["installed_batched"], fixture_model, elmo_tokenizer, 3)
    for text, result in zip(TEXTS, results["elmo_batched"]):
        ref = run_alone(fixture_model, elmo_tokenizer, text)["mix"]
        got = np.asarray(result, dtype=np.float32).reshape(-1, D)  # [] for a text without words
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("how", ["pipeline_class", "task"])
@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_elmo_pipeline_one_vector_per_word(converted_fixture, fixture_model, elmo_tokenizer, how, batch_size):
    if how == "pipeline_class":
        pipe = pipeline("feature-extraction", model=str(converted_fixture), pipeline_class=ElmoFeatureExtractionPipeline)
    else:
        pipe = pipeline("elmo-feature-extraction", model=str(converted_fixture))
    assert type(pipe) is ElmoFeatureExtractionPipeline
    results = pipe(TEXTS, batch_size=batch_size)
    assert isinstance(results[0], list) and isinstance(results[0][0][0], float)
    for text, result in zip(TEXTS, results):
        ref = run_alone(fixture_model, elmo_tokenizer, text)["mix"]
        got = np.asarray(result, dtype=np.float32).reshape(-1, D)
        assert got.shape == ref.shape  # no padding rows, no leading batch axis
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("representation", ["mix", "top", "all"])
def test_elmo_pipeline_representations_pooling_and_tensors(converted_fixture, fixture_model, elmo_tokenizer,
                                                           representation):
    pipe = pipeline("elmo-feature-extraction", model=str(converted_fixture), representation=representation)
    words = pipe(TEXTS, batch_size=3, return_tensors=True)
    pooled = pipe(TEXTS, batch_size=3, return_tensors=True, pooling="mean")
    for text, got, mean in zip(TEXTS, words, pooled):
        ref = run_alone(fixture_model, elmo_tokenizer, text)[representation]
        assert isinstance(got, torch.Tensor) and got.device.type == "cpu" and tuple(got.shape) == ref.shape
        np.testing.assert_allclose(got.numpy(), ref, atol=1e-5, rtol=0)
        expected_mean = ref.mean(axis=-2) if ref.shape[-2] else np.zeros(ref.shape[:-2] + (D,), np.float32)
        assert tuple(mean.shape) == expected_mean.shape == ((N_LAYERS, D) if representation == "all" else (D,))
        np.testing.assert_allclose(mean.numpy(), expected_mean, atol=1e-5, rtol=0)
    # A call-time option overrides the construction-time default.
    top = pipe(TEXTS[0], representation="top", return_tensors=True)
    alone = run_alone(fixture_model, elmo_tokenizer, TEXTS[0])
    np.testing.assert_allclose(top.numpy(), alone["top"], atol=1e-5, rtol=0)


def test_a_call_option_overrides_the_pipeline_default_even_with_none(converted_fixture, fixture_model,
                                                                     elmo_tokenizer):
    """`pooling=None` in a call means word vectors, whatever the pipeline was built with (and so for every option)."""
    pooled = pipeline("elmo-feature-extraction", model=str(converted_fixture), pooling="mean", representation="top")
    alone = run_alone(fixture_model, elmo_tokenizer, TEXTS[0])
    np.testing.assert_allclose(pooled(TEXTS[0], return_tensors=True).numpy(), alone["top"].mean(axis=0),
                               atol=1e-5, rtol=0)
    words = pooled(TEXTS[0], pooling=None, return_tensors=True)
    assert tuple(words.shape) == alone["top"].shape
    np.testing.assert_allclose(words.numpy(), alone["top"], atol=1e-5, rtol=0)
    mix = pooled(TEXTS[0], representation="mix", pooling=None, return_tensors=True)
    np.testing.assert_allclose(mix.numpy(), alone["mix"], atol=1e-5, rtol=0)
    # A call without the option still gets the pipeline's default.
    assert tuple(pooled(TEXTS[0], return_tensors=True).shape) == (D,)


def test_elmo_pipeline_pre_split_words(converted_fixture, fixture_model, elmo_tokenizer):
    pipe = pipeline("elmo-feature-extraction", model=str(converted_fixture))
    words = [elmo_tokenizer.split_words(t) for t in TEXTS]
    from_lists = pipe(words, is_split_into_words=True, batch_size=2, return_tensors=True)
    from_tuple = pipe(tuple(words[0]), return_tensors=True)  # a tuple is one pre-split sentence
    for text, got in zip(TEXTS, from_lists):
        alone = run_alone(fixture_model, elmo_tokenizer, text)
        np.testing.assert_allclose(got.numpy(), alone["mix"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(from_tuple.numpy(), from_lists[0].numpy(), atol=1e-6, rtol=0)


def test_elmo_pipeline_device(converted_fixture):
    pipe = pipeline("elmo-feature-extraction", model=str(converted_fixture), device="cpu")
    assert pipe.device == torch.device("cpu") and pipe.model.device == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_elmo_pipeline_on_gpu(converted_fixture, fixture_model, elmo_tokenizer):
    gpu = pipeline("elmo-feature-extraction", model=str(converted_fixture), device=0)
    assert gpu.model.device == torch.device("cuda", 0)
    got = gpu(TEXTS, batch_size=2, return_tensors=True)
    for text, vectors in zip(TEXTS, got):
        assert vectors.device.type == "cpu"  # results come back to the CPU, as in every pipeline
        alone = run_alone(fixture_model, elmo_tokenizer, text)
        np.testing.assert_allclose(vectors.numpy(), alone["mix"], atol=1e-4, rtol=0)


def test_elmo_pipeline_bad_options(converted_fixture):
    pipe = pipeline("elmo-feature-extraction", model=str(converted_fixture))
    with pytest.raises(ValueError, match="representation must be one of"):
        pipe("a b", representation="bottom")
    with pytest.raises(ValueError, match="pooling must be None or 'mean'"):
        pipe("a b", pooling="max")
    with pytest.raises(ValueError, match="pooling must be None or 'mean'"):
        pipeline("elmo-feature-extraction", model=str(converted_fixture), pooling="sum")


def test_saved_pipeline_needs_no_trust_remote_code(tmp_path, converted_fixture, fixture_model, elmo_tokenizer):
    """No `custom_pipelines` entry is written, so the saved folder loads like any checkpoint."""
    pipe = pipeline("elmo-feature-extraction", model=str(converted_fixture))
    pipe.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert "custom_pipelines" not in config and not (tmp_path / "saved" / "pipelines.py").exists()
    for task in ("elmo-feature-extraction", "feature-extraction"):
        loaded = pipeline(task, model=str(tmp_path / "saved"))
        got = np.asarray(loaded(TEXTS[0]), dtype=np.float32).reshape(-1, D)
        alone = run_alone(fixture_model, elmo_tokenizer, TEXTS[0])
        np.testing.assert_allclose(got, alone["mix"], atol=1e-5, rtol=0)
    shutil.rmtree(tmp_path / "saved")
