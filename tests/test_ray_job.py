"""embed_ray_dataset on a real local Ray cluster: every row's vectors against the model run on that text alone."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")
from ray import cloudpickle  # noqa: E402  (Ray pickles with its own copy)

import hf_elmo  # noqa: E402
from hf_elmo import ElmoModel, ElmoTokenizer  # noqa: E402
from hf_elmo.jobs import ray_job  # noqa: E402

TEXTS = [
    "The cat sat on the mat .",
    "",
    "Hello world",
    "ELMo vectors depend on the whole sentence , left and right .",
    "one two",
    "three four",
    "five six",
    "seven eight",
    "A much longer sentence with quite a few more words than the others have in it .",
    "Short .",
]
# Rows 4-7 all have two words: with sort_window=4 one Ray batch holds only equal-shaped word vectors, and its block
# must still join the variable-shaped column of the others.


@pytest.fixture(scope="module")
def ray_cluster():
    # The crashing embedder below is defined in this test module, which Ray's workers cannot import by name.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def model_and_tokenizer(converted_fixture):
    model = ElmoModel.from_pretrained(converted_fixture).eval()
    return model, ElmoTokenizer(max_characters_per_token=model.config.max_characters_per_token)


@torch.inference_mode()
def alone(model, tokenizer, text, representation: str = "mix") -> np.ndarray:
    """The vectors of `text` run through the model by itself: `(words, D)` or `(words, L+1, D)` for "all"."""
    words = text if isinstance(text, list) else tokenizer.split_words(text)
    enc = tokenizer([words], is_split_into_words=True, return_tensors="pt", padding=True)
    out = model(**enc, output_hidden_states=True)
    if representation == "mix":
        return out.last_hidden_state[0].numpy()
    if representation == "top":
        return out.hidden_states[-1][0].numpy()
    return torch.stack(out.hidden_states, dim=1)[0].transpose(0, 1).numpy()


def rows_of(texts: list) -> list[dict]:
    return [{"id": i, "text": t, "tag": f"row-{i}"} for i, t in enumerate(texts)]


def by_id(rows: list[dict]) -> dict[int, dict]:
    ids = [int(r["id"]) for r in rows]
    assert sorted(ids) == list(range(len(ids))), "every row exactly once"
    return {int(r["id"]): r for r in rows}


def test_word_vectors_match_each_text_alone_and_round_trip_parquet(ray_cluster, converted_fixture,
                                                                   model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    ds = ray.data.from_items(rows_of(TEXTS), override_num_blocks=3)
    out = hf_elmo.embed_ray_dataset(ds, converted_fixture, text_column="text", batch_size=2, sort_window=4)
    out.write_parquet(str(tmp_path / "parquet"))
    rows = by_id(ray.data.read_parquet(str(tmp_path / "parquet")).take_all())
    assert len(rows) == len(TEXTS)
    for i, text in enumerate(TEXTS):
        row = rows[i]
        assert row["text"] == text and row["tag"] == f"row-{i}"  # every input column kept
        vectors = np.asarray(row["elmo"])
        assert vectors.dtype == np.float32
        expected = alone(model, tokenizer, text)
        assert vectors.shape == expected.shape == (len(tokenizer.split_words(text)), model.config.output_dim)
        np.testing.assert_allclose(vectors, expected, atol=1e-5, rtol=0)


def test_all_layers_pooled_and_top_layer_of_word_lists(ray_cluster, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    word_lists = [tokenizer.split_words(t) for t in TEXTS]
    ds = ray.data.from_items([{"id": i, "words": w} for i, w in enumerate(word_lists)], override_num_blocks=2)
    pooled = hf_elmo.embed_ray_dataset(ds, model, text_column="words", representation="all", pooling="mean",
                                       output_column="vec", batch_size=3, sort_window=5)
    top = hf_elmo.embed_ray_dataset(ds, model, text_column="words", representation="top", batch_size=3,
                                    sort_window=5)
    pooled_rows, top_rows = by_id(pooled.take_all()), by_id(top.take_all())
    n_layers = model.config.num_hidden_layers + 1
    for i, words in enumerate(word_lists):
        every_layer = alone(model, tokenizer, words, "all")  # (words, L+1, D)
        expected_mean = every_layer.mean(axis=0) if words else np.zeros((n_layers, model.config.output_dim))
        assert pooled_rows[i]["vec"].shape == (n_layers, model.config.output_dim)
        np.testing.assert_allclose(pooled_rows[i]["vec"], expected_mean, atol=1e-5, rtol=0)
        np.testing.assert_allclose(top_rows[i]["elmo"], alone(model, tokenizer, words, "top"), atol=1e-5, rtol=0)


class CrashingEmbedder(ray_job.ElmoRayEmbedder):
    """Kills its own worker process at its third batch while `crash_flag` exists (removed first: one crash)."""

    crash_flag: str = ""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def __call__(self, batch):
        self.calls += 1
        if self.calls == 3 and os.path.exists(self.crash_flag):
            os.remove(self.crash_flag)
            Path(self.crash_flag + ".crashed").touch()
            os._exit(1)
        return super().__call__(batch)


def test_killed_actor_every_row_arrives_exactly_once(ray_cluster, converted_fixture, model_and_tokenizer,
                                                     tmp_path, monkeypatch):
    model, tokenizer = model_and_tokenizer
    flag = tmp_path / "crash"
    flag.touch()
    monkeypatch.setattr(CrashingEmbedder, "crash_flag", str(flag))
    monkeypatch.setattr(ray_job, "ElmoRayEmbedder", CrashingEmbedder)
    texts = [f"{TEXTS[i % len(TEXTS)]} row {i}" for i in range(30)]
    ds = ray.data.from_items(rows_of(texts), override_num_blocks=6)
    rows = by_id(hf_elmo.embed_ray_dataset(ds, converted_fixture, pooling="mean", batch_size=4,
                                           sort_window=5).take_all())
    assert not flag.exists() and Path(str(flag) + ".crashed").exists(), "the actor did crash mid-job"
    assert len(rows) == len(texts)
    for i, text in enumerate(texts):
        np.testing.assert_allclose(rows[i]["elmo"], alone(model, tokenizer, text).mean(axis=0), atol=1e-5, rtol=0)


def test_bad_arguments_are_named(ray_cluster, converted_fixture):
    ds = ray.data.from_items(rows_of(TEXTS[:2]))
    with pytest.raises(ValueError, match="text_column 'sentence' is not a column"):
        hf_elmo.embed_ray_dataset(ds, converted_fixture, text_column="sentence")
    with pytest.raises(ValueError, match="output_column 'tag' already exists"):
        hf_elmo.embed_ray_dataset(ds, converted_fixture, output_column="tag")
    with pytest.raises(ValueError, match="representation must be one of"):
        hf_elmo.embed_ray_dataset(ds, converted_fixture, representation="last")
    with pytest.raises(ValueError, match="concurrency"):
        hf_elmo.embed_ray_dataset(ds, converted_fixture, concurrency=(3, 2))
    with pytest.raises(Exception, match="column 'id' must hold text or lists of words, got "):
        hf_elmo.embed_ray_dataset(ds, converted_fixture, text_column="id").take_all()
