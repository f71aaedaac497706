"""A converted folder is a sentence-transformers model: encode() is the masked mean of last_hidden_state."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

sentence_transformers = pytest.importorskip("sentence_transformers")

from hf_elmo import ElmoModel, ElmoTokenizer  # noqa: E402
from hf_elmo.sentence_transformers_files import sentence_transformers_files  # noqa: E402

TEXTS = [
    "The cat sat on the mat.",
    "",
    "Hello world",
    "ELMo vectors depend on the whole sentence, left and right.",
    "A much longer sentence with quite a few more words than the others have in it, so batches get padding.",
    "Short.",
    "naïve café — ünïcödé",
]


@pytest.fixture(scope="module")
def mean_vectors(converted_fixture) -> np.ndarray:
    """`(len(TEXTS), D)`: the masked mean of `last_hidden_state` over each text's words (zeros for no words)."""
    model = ElmoModel.from_pretrained(converted_fixture).eval()
    tokenizer = ElmoTokenizer(max_characters_per_token=model.config.max_characters_per_token)
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"][..., None].to(hidden.dtype)
    return ((hidden * mask).sum(1) / mask.sum(1).clamp_min(1)).numpy()


def test_folder_has_the_sentence_transformers_files(converted_fixture):
    config = ElmoModel.config_class.from_pretrained(converted_fixture)
    for name, contents in sentence_transformers_files(config).items():
        assert json.loads((converted_fixture / name).read_text()) == contents
    assert json.loads((converted_fixture / "1_Pooling" / "config.json").read_text())["word_embedding_dimension"] == 32


def test_encode_is_the_masked_mean_of_last_hidden_state(converted_fixture, mean_vectors):
    model = sentence_transformers.SentenceTransformer(str(converted_fixture), device="cpu")
    embeddings = model.encode(TEXTS, batch_size=3, show_progress_bar=True)  # other paddings than the reference
    assert embeddings.shape == mean_vectors.shape and embeddings.dtype == np.float32
    assert np.abs(embeddings - mean_vectors).max() < 1e-5
    assert not embeddings[1].any()  # "" has no words
    normalized = model.encode(TEXTS, batch_size=4, normalize_embeddings=True, convert_to_tensor=True)
    norms = np.linalg.norm(mean_vectors, axis=1, keepdims=True)
    expected = np.divide(mean_vectors, norms, out=np.zeros_like(mean_vectors), where=norms > 0)
    assert np.abs(normalized.numpy() - expected).max() < 1e-5
    single = model.encode(TEXTS[3])  # one string in, one vector out
    assert np.abs(single - mean_vectors[3]).max() < 1e-5


LOAD_WITHOUT_HF_ELMO = """
import json, sys
from sentence_transformers import SentenceTransformer
folder, texts = sys.argv[1], json.loads(sys.argv[2])
results = {}
for mode, kwargs in [  # "plain" first: after a trusted load the remote classes would be known
    ("plain", {}),
    ("trust", {"trust_remote_code": True}),
    ("model_kwargs", {"model_kwargs": {"trust_remote_code": True}, "config_kwargs": {"trust_remote_code": True},
                      "tokenizer_kwargs": {"trust_remote_code": True}}),
]:
    try:
        results[mode] = SentenceTransformer(folder, device="cpu", **kwargs).encode(texts).tolist()
    except ValueError as error:
        results[mode] = str(error)
results["hf_elmo imported"] = "hf_elmo" in sys.modules
print(json.dumps(results))
"""


def test_loads_without_hf_elmo_through_remote_code(converted_fixture, mean_vectors):
    result = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_HF_ELMO, str(converted_fixture), json.dumps(TEXTS)],
                            capture_output=True, text=True, check=True)
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert results["hf_elmo imported"] is False
    assert "trust_remote_code=True" in results["plain"]
    for mode in ("trust", "model_kwargs"):
        assert np.abs(np.array(results[mode]) - mean_vectors).max() < 1e-5, mode
