"""`hf_elmo.embed_dataset`: ELMo vectors as a datasets column, checked against the model run on each text alone."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from datasets import Array2D, Array3D, Dataset, DatasetDict, List, Value, load_from_disk

import hf_elmo
from helpers import run_alone
from hf_elmo import ElmoTokenizer, embed_dataset
from hf_elmo.jobs.core import embed_word_lists, load_model

# Lengths deliberately out of order (and one empty text), so length-sorting inside a window must be undone.
TEXTS = [
    "The cat sat on the mat .",
    "Hi",
    "",
    "Colorless green ideas sleep furiously , said someone once in a linguistics class .",
    "A b c",
    "It wasn't the U.S. team .",
    "one two",
    "Short one .",
    "The quick brown fox jumps over the lazy dog again and again .",
    "z",
]
D = 32  # 2 * projection_dim of the fixture
N_LAYERS = 3


def disk_dataset(tmp_path, data: dict, name: str = "data") -> Dataset:
    """A dataset backed by an arrow file (datasets only caches map results for those)."""
    Dataset.from_dict(data).save_to_disk(tmp_path / name)
    return load_from_disk(tmp_path / name)


class ForwardCounter:
    """`with ForwardCounter(model) as counter:` counts the model's forward calls inside the block."""

    def __init__(self, model):
        self.calls = 0
        self.model = model

    def __enter__(self) -> ForwardCounter:
        self.handle = self.model.register_forward_hook(self)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def __call__(self, *args):
        self.calls += 1


def test_word_vectors_equal_the_model_alone_in_the_input_order(tmp_path, fixture_model, elmo_tokenizer):
    ds = disk_dataset(tmp_path, {"id": list(range(len(TEXTS))), "text": TEXTS})
    out = embed_dataset(ds, fixture_model, batch_size=3, sort_window=6)  # windows of 6 rows, sorted inside

    assert out.column_names == ["id", "text", "elmo"]
    assert out.features["elmo"] == Array2D(shape=(None, D), dtype="float32")
    assert out["id"] == list(range(len(TEXTS))) and out["text"] == TEXTS
    rows = out.with_format("numpy")["elmo"]
    for text, vectors in zip(TEXTS, rows):
        words = elmo_tokenizer.split_words(text)
        assert vectors.dtype == np.float32 and vectors.shape == (len(words), D)
        if words:
            alone = run_alone(fixture_model, elmo_tokenizer, words)
            np.testing.assert_allclose(vectors, alone["mix"], atol=1e-5, rtol=0)


def test_stored_as_float32_arrow_not_python_lists(fixture_model):
    out = embed_dataset(Dataset.from_dict({"text": TEXTS[:3]}), fixture_model)
    storage = out.data.schema.field("elmo").type.storage_type  # Array2D's extension storage
    assert pa.types.is_float32(storage.value_type.value_type)


@pytest.mark.parametrize("representation", ["mix", "top", "all"])
@pytest.mark.parametrize("pooling", [None, "mean"])
def test_representations_and_mean_pooling(fixture_model, elmo_tokenizer, representation, pooling):
    texts = TEXTS[:4]
    out = embed_dataset(Dataset.from_dict({"text": texts}), fixture_model, representation=representation,
                        pooling=pooling, batch_size=2, output_column="vec")
    expected_feature = {
        ("mix", None): Array2D(shape=(None, D), dtype="float32"),
        ("top", None): Array2D(shape=(None, D), dtype="float32"),
        ("all", None): Array3D(shape=(None, N_LAYERS, D), dtype="float32"),
        ("mix", "mean"): List(Value("float32"), length=D),
        ("top", "mean"): List(Value("float32"), length=D),
        ("all", "mean"): Array2D(shape=(N_LAYERS, D), dtype="float32"),
    }[representation, pooling]
    assert out.features["vec"] == expected_feature
    for text, got in zip(texts, out.with_format("numpy")["vec"]):
        words = elmo_tokenizer.split_words(text)
        if not words:
            assert got.shape == ((N_LAYERS, D) if representation == "all" else (D,)) if pooling else got.shape[0] == 0
            if pooling:
                assert not got.any()  # an empty text's mean is zeros
            continue
        ref = run_alone(fixture_model, elmo_tokenizer, words)[representation]
        if representation == "all":
            ref = ref.transpose(1, 0, 2)  # datasets only lets the first axis vary: (words, L+1, D)
        if pooling == "mean":
            ref = ref.mean(axis=0)  # TF-Hub's "default": the mean over the words
        assert got.dtype == np.float32 and got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_pre_split_column_equals_raw_text(fixture_model, elmo_tokenizer):
    words = [elmo_tokenizer.split_words(t) for t in TEXTS]
    split = embed_dataset(Dataset.from_dict({"tokens": words}), fixture_model, "tokens", batch_size=4)
    raw = embed_dataset(Dataset.from_dict({"text": TEXTS}), fixture_model, batch_size=4)
    assert split.features["tokens"] == List(Value("string"))
    for a, b in zip(split.with_format("numpy")["elmo"], raw.with_format("numpy")["elmo"]):
        np.testing.assert_array_equal(a, b)


def test_rerun_loads_from_the_cache(tmp_path, fixture_model):
    ds = disk_dataset(tmp_path, {"text": TEXTS})
    with ForwardCounter(fixture_model) as counter:
        first = embed_dataset(ds, fixture_model, batch_size=4)
        calls = counter.calls
        assert calls == 3  # 10 rows in batches of 4
        again = embed_dataset(ds, fixture_model, batch_size=2)  # batch size does not change the numbers: same cache
        assert counter.calls == calls
        assert again.cache_files == first.cache_files and str(tmp_path) in again.cache_files[0]["filename"]
        for a, b in zip(first.with_format("numpy")["elmo"], again.with_format("numpy")["elmo"]):
            np.testing.assert_array_equal(a, b)
        top = embed_dataset(ds, fixture_model, representation="top")  # other numbers: computed, another file
        assert counter.calls > calls and top.cache_files != first.cache_files
        calls = counter.calls
        embed_dataset(ds, fixture_model, load_from_cache_file=False)
        assert counter.calls > calls


def test_two_worker_processes_match_one_and_are_cached(tmp_path, converted_fixture, fixture_model):
    """num_proc=2 with the model given as a path: workers load it themselves (fork server, not a fork of us)."""
    import multiprocess

    ds = disk_dataset(tmp_path, {"text": TEXTS[:6]})
    with torch.inference_mode():  # this process has used torch's thread pool before the workers start
        fixture_model(**ElmoTokenizer()(["warm", "up"], return_tensors="pt"))
    start_method = multiprocess.get_start_method(allow_none=True)
    parallel = embed_dataset(ds, str(converted_fixture), num_proc=2, batch_size=2, sort_window=2)
    assert multiprocess.get_start_method(allow_none=True) == start_method  # restored
    names = [f["filename"] for f in parallel.cache_files]
    assert len(names) == 2 and names[0].endswith("_00000_of_00002.arrow") and names[1].endswith("_00001_of_00002.arrow")
    # The in-memory model has the same weights, hence the same fingerprint: served from the workers' files.
    with ForwardCounter(fixture_model) as counter:
        again = embed_dataset(ds, fixture_model, num_proc=2)
    assert counter.calls == 0 and again.cache_files == parallel.cache_files
    single = embed_dataset(Dataset.from_dict({"text": TEXTS[:6]}), fixture_model, batch_size=2)
    assert parallel["text"] == TEXTS[:6]
    for a, b in zip(single.with_format("numpy")["elmo"], parallel.with_format("numpy")["elmo"]):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_dataset_dict_embeds_every_split(fixture_model):
    dd = DatasetDict({"train": Dataset.from_dict({"text": TEXTS[:3]}), "test": Dataset.from_dict({"text": TEXTS[3:5]})})
    out = embed_dataset(dd, fixture_model, pooling="mean")
    assert set(out) == {"train", "test"} and out["test"].num_rows == 2
    assert out["train"].features["elmo"] == List(Value("float32"), length=D)


def test_empty_dataset_gets_the_column(fixture_model):
    from datasets import Features

    empty = Dataset.from_dict({"text": []}, features=Features({"text": Value("string")}))
    out = embed_dataset(empty, fixture_model, representation="all")
    assert out.num_rows == 0 and out.features["elmo"] == Array3D(shape=(None, N_LAYERS, D), dtype="float32")


def test_embed_word_lists_keeps_the_order(fixture_model, elmo_tokenizer):
    sentences = [elmo_tokenizer.split_words(t) for t in TEXTS]
    vectors = embed_word_lists(fixture_model, elmo_tokenizer, sentences, batch_size=3)
    for words, got in zip(sentences, vectors):
        assert got.shape == (len(words), D)
        if words:
            np.testing.assert_allclose(got, run_alone(fixture_model, elmo_tokenizer, words)["mix"], atol=1e-5, rtol=0)


def test_clear_errors(fixture_model):
    ds = Dataset.from_dict({"text": ["a b", None], "n": [1, 2], "elmo": ["x", "y"]})
    with pytest.raises(ValueError, match="'txt' is not a column.*'text'"):
        embed_dataset(ds, fixture_model, "txt")
    with pytest.raises(ValueError, match="raw text .* or pre-split words"):
        embed_dataset(ds, fixture_model, "n")
    with pytest.raises(ValueError, match="'elmo' already exists"):
        embed_dataset(ds, fixture_model)
    with pytest.raises(ValueError, match="row 1: the text column is None"):
        embed_dataset(ds, fixture_model, output_column="vec")
    good = Dataset.from_dict({"text": ["a b"]})
    with pytest.raises(ValueError, match="representation must be one of"):
        embed_dataset(good, fixture_model, representation="bottom")
    with pytest.raises(ValueError, match="pooling must be None or 'mean'"):
        embed_dataset(good, fixture_model, pooling="max")
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        embed_dataset(good, fixture_model, batch_size=0)
    with pytest.raises(ValueError, match="sort_window"):
        embed_dataset(good, fixture_model, batch_size=8, sort_window=4)
    with pytest.raises(ValueError, match="datasets.Dataset"):
        embed_dataset({"text": ["a"]}, fixture_model)
    with pytest.raises(ValueError, match="ELMo checkpoint"):
        embed_dataset(good, torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="max_characters_per_token"):
        embed_dataset(good, fixture_model, tokenizer=ElmoTokenizer(max_characters_per_token=20))
    assert hf_elmo.embed_dataset is embed_dataset


def test_a_missing_model_folder_is_named(tmp_path):
    good = Dataset.from_dict({"text": ["a b"]})
    for model in (tmp_path / "no-such-model", str(tmp_path / "no-such-model")):
        with pytest.raises(FileNotFoundError, match="no-such-model: checkpoint folder not found"):
            embed_dataset(good, model)


def test_runtime_settings_keep_the_cache(tmp_path, converted_fixture, fixture_model):
    """The fingerprint covers the weights and the architecture: a model loaded without prepacking (a speed and
    memory setting) is served the result computed with it."""
    ds = disk_dataset(tmp_path, {"text": TEXTS})
    first = embed_dataset(ds, fixture_model, batch_size=4)
    unpacked = load_model(converted_fixture, prepack_cpu_weights=False)
    with ForwardCounter(unpacked) as counter:
        again = embed_dataset(ds, unpacked, batch_size=4)
    assert counter.calls == 0 and again.cache_files == first.cache_files
