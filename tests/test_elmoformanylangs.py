"""ELMoForManyLangs checkpoints: conversion, tokenizer rules, and the numbers of the original `Embedder`.

References (tests/fixtures/elmoformanylangs, see its README): `model/` + `reference_outputs.npz` (word and char
embeddings, Chinese and English) and `no_words/` + `no_words_reference.npz` (word_dim 0, tanh, no cell clip,
max_characters_per_token 8), all outputs of the original `Embedder.sents2elmo` on fresh Embedders.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import AutoModel, AutoTokenizer, pipeline

from hf_elmo import ElmoManyLangsTokenizer, ElmoModel, embed_dataset
from hf_elmo.checkpoints import CheckpointError
from hf_elmo.checkpoints.elmoformanylangs import LANGUAGES, detect_language, find_language, read_table
from hf_elmo.cli import main
from hf_elmo.conversion import convert_elmoformanylangs

FIXTURES = Path(__file__).parent / "fixtures" / "elmoformanylangs"
MODEL_DIR = FIXTURES / "model"
NO_WORDS_DIR = FIXTURES / "no_words"
ATOL = 1e-5


def reference(name: str) -> tuple[list[list[str]], np.lib.npyio.NpzFile]:
    arrays = np.load(FIXTURES / name)
    return json.loads(str(arrays["sents_json"])), arrays


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    return convert_elmoformanylangs(MODEL_DIR, tmp_path_factory.mktemp("efml") / "zh-tiny", language="zh")


@pytest.fixture(scope="module")
def converted_no_words(tmp_path_factory) -> Path:
    return convert_elmoformanylangs(NO_WORDS_DIR, tmp_path_factory.mktemp("efml") / "no-words", language="en")


def run(folder: Path, sentences: list[list[str]], **kwargs):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    batch = tokenizer(sentences, is_split_into_words=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        return batch, model(**batch, output_hidden_states=True, **kwargs)


def assert_matches_embedder(folder: Path, reference_name: str) -> None:
    """hidden_states[k] == output_layer k and last_hidden_state == output_layer -1, for every sentence."""
    sentences, expected = reference(reference_name)
    _, out = run(folder, sentences)
    for i, words in enumerate(sentences):
        n = len(words)
        for k in range(3):
            np.testing.assert_allclose(out.hidden_states[k][i, :n].numpy(), expected[f"L{k}_s{i}"], atol=ATOL,
                                       err_msg=f"layer {k}, sentence {i}")
        np.testing.assert_allclose(out.last_hidden_state[i, :n].numpy(), expected[f"Lm1_s{i}"], atol=ATOL,
                                   err_msg=f"mean, sentence {i}")
        assert not out.last_hidden_state[i, n:].any()  # padding positions are zero


def test_converted_model_equals_the_original_embedder(converted):
    assert_matches_embedder(converted, "reference_outputs.npz")
    assert type(AutoTokenizer.from_pretrained(converted)) is ElmoManyLangsTokenizer
    assert type(AutoModel.from_pretrained(converted)) is ElmoModel


def test_word_dim_0_model_equals_the_original_embedder(converted_no_words):
    assert not (converted_no_words / "word_vocab.json").exists()
    config = json.loads((converted_no_words / "config.json").read_text())
    assert (config["word_embedding_dim"], config["cell_clip"], config["char_activation"]) == (0, None, "tanh")
    assert_matches_embedder(converted_no_words, "no_words_reference.npz")


def test_input_ids_are_the_ids_the_original_feeds(converted):
    sentences, expected = reference("reference_outputs.npz")
    batch, _ = run(converted, sentences[:1])
    model = AutoModel.from_pretrained(converted)
    tokenizer = AutoTokenizer.from_pretrained(converted)
    for i, words in enumerate(sentences):
        ids = np.asarray(tokenizer.encode_words(words))
        chars, word_ids = expected[f"chars_s{i}"] + 1, expected[f"words_s{i}"] + 1  # hf-elmo keeps 0 for padding
        np.testing.assert_array_equal(ids[:, :-1], chars[1:-1])
        np.testing.assert_array_equal(ids[:, -1], word_ids[1:-1])
        for row, position in ((0, 0), (1, -1)):  # <bos> and <eos>, which the model adds itself
            np.testing.assert_array_equal(model._boundary_char_ids[row], [*chars[position], word_ids[position]])
    assert batch["input_ids"].shape == (1, 9, 20 + 1)  # the word id is the last column
    with pytest.raises(ValueError, match=r"input_ids must be a \(batch, words, 21\) tensor"):
        model(input_ids=batch["input_ids"][..., :20])  # the character ids alone are not enough
    with pytest.raises(ValueError, match="own character table"):
        model.cache_words(["neural"])  # bilm-tf's byte table would give wrong vectors


def test_stateful_mode_reproduces_the_originals_second_call(converted):
    """The original carries LSTM state across calls; `use_cache` + `state` reproduce its second call exactly."""
    sentences, expected = reference("reference_outputs.npz")
    batch, first = run(converted, sentences, use_cache=True)
    model = AutoModel.from_pretrained(converted).eval()
    with torch.no_grad():
        second = model(**batch, state=first.state, output_hidden_states=True)
        again = model(**batch, output_hidden_states=True)
    for i, words in enumerate(sentences):
        n = len(words)
        layers = torch.stack([h[i, :n] for h in second.hidden_states]).numpy()
        np.testing.assert_allclose(layers, expected[f"second_call_Lm2_s{i}"], atol=ATOL)
        assert np.abs(layers - expected[f"Lm2_s{i}"]).max() > 0.05  # the state does change the numbers
    torch.testing.assert_close(again.last_hidden_state, first.last_hidden_state, rtol=0, atol=0)  # deterministic


def test_tokenizer_rules(converted):
    tokenizer = AutoTokenizer.from_pretrained(converted)
    chars = json.loads((converted / "char_vocab.json").read_text(encoding="utf-8"))
    words = json.loads((converted / "word_vocab.json").read_text(encoding="utf-8"))
    assert chars == {token: i + 1 for token, i in read_table(MODEL_DIR / "char.dic").items()}
    c = tokenizer.max_characters_per_token
    long_word = "supercalifragilisticexpialidocious"
    neural, unseen, long_ids, boundary = tokenizer.encode_words(["neural", "龘a", long_word, "<bos>"])
    # The original's swap: a word starts with the id of "<eow>" and ends with the id of "<bow>".
    assert neural[:8] == [chars["<eow>"], *(chars[ch] for ch in "neural"), chars["<bow>"]]
    assert neural[8:c] == [chars["<pad>"]] * (c - 8) and neural[c] == words["neural"]
    assert unseen[1:3] == [chars["<oov>"], chars["a"]] and unseen[c] == words["<oov>"]
    # Cut to max_characters_per_token - 2 characters; the word id is that of the cut form.
    assert long_ids[1 : c - 1] == [chars.get(ch, chars["<oov>"]) for ch in long_word[: c - 2]]
    assert long_ids[c - 1] == chars["<bow>"]
    assert boundary[:3] == [chars["<eow>"], chars["<bos>"], chars["<bow>"]] and boundary[c] == words["<bos>"]
    batch = tokenizer([["neural"], []], is_split_into_words=True, padding=True, return_tensors="pt")
    assert not batch["input_ids"][1].any() and batch["attention_mask"].tolist() == [[1], [0]]
    assert tokenizer.decode(batch["input_ids"][0]) == "neural"
    assert tokenizer.decode(tokenizer.encode_words([long_word])) == long_word[: c - 2]


def test_char_table_reading_follows_the_original(tmp_path):
    path = tmp_path / "char.dic"
    path.write_text("a\t0\n\u3000\t1\nb\t2\na\t3\n", encoding="utf-8")
    # A whitespace character's line is stripped to its id: the original files it under U+3000; later lines win.
    assert read_table(path) == {"a": 3, "\u3000": 1, "b": 2}
    path.write_text("a\t0\nb\tx\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"char.dic, line 2: expected 'token<TAB>id'"):
        read_table(path)


def test_language_comes_from_the_release_config_or_the_argument(tmp_path):
    released = {"train_path": "/users4/conll18st/raw_text/English/en-20m.raw",
                "model": "/users4/conll18st/elmo/src/final_models/en.model"}
    assert detect_language(released).key == "en"
    assert detect_language({"model": "/x/no_bokmaal.model"}).iso == "nb"
    assert detect_language({"model": ".", "train_path": "corpus.txt"}) is None
    with pytest.raises(CheckpointError, match="several languages"):
        detect_language({"model": "/x/de.model", "train_path": "/r/French/fr-20m.raw"})
    assert len([lang for lang in LANGUAGES if lang.nlpl_id is not None]) == 44
    assert find_language("Norwegian-Bokmål").key == "nb" and find_language("zh-Hans").key == "zhs"

    folder = tmp_path / "en.model"
    shutil.copytree(MODEL_DIR, folder)
    with pytest.raises(CheckpointError, match="does not say which language.*pass --language"):
        convert_elmoformanylangs(folder, tmp_path / "out")
    (folder / "config.json").write_text(json.dumps({**released, "config_path": "cnn_tiny.json"}))
    with pytest.raises(CheckpointError, match="says the model is English"):
        convert_elmoformanylangs(folder, tmp_path / "out", language="zh")
    out = convert_elmoformanylangs(folder, tmp_path / "out")
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "language: en\n" in card and "license: mit" in card and "che-EtAl:2018:K18-2" in card
    assert "CoNLL 2018 shared task" in card and "20 million words" in card
    assert json.loads((out / "tokenizer_config.json").read_text())["word_segmenter"] == "moses"


def test_released_network_config_is_used_when_config_path_points_elsewhere(tmp_path):
    folder = tmp_path / "release"
    shutil.copytree(MODEL_DIR, folder)
    (folder / "cnn_tiny.json").unlink()
    (folder / "config.json").write_text(json.dumps(
        {"config_path": "/Users/someone/word_elmo/cnn_50_100_512_4096_sample.json", "model": "zh.model"}))
    # The released shapes (4096 / 512) do not fit the tiny weights: the error names the file and the key.
    with pytest.raises(CheckpointError, match=r"char_emb_layer.embedding.weight' has shape \(76, 5\)"):
        convert_elmoformanylangs(folder, tmp_path / "out")
    (folder / "config.json").write_text(json.dumps({"config_path": "/elsewhere/other.json"}))
    with pytest.raises(CheckpointError, match="config_path '/elsewhere/other.json' is not in the folder"):
        convert_elmoformanylangs(folder, tmp_path / "out", language="zh")


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "char.dic").unlink(), r"char.dic: not found"),
    (lambda d: (d / "char.dic").write_text("a\t0\n<bow>\t1\n"), r"char.dic: lacks the special token"),
    (lambda d: (d / "encoder.pkl").write_bytes(b"not a pickle"), r"encoder.pkl: not a PyTorch state dict"),
    (lambda d: torch.save({**torch.load(d / "encoder.pkl"), "extra": torch.zeros(1)}, d / "encoder.pkl"),
     r"encoder.pkl: unexpected weights \['extra'\]"),
])
def test_bad_release_folders_are_refused_naming_the_file(tmp_path, damage, message):
    folder = tmp_path / "release"
    shutil.copytree(MODEL_DIR, folder)
    damage(folder)
    with pytest.raises(CheckpointError, match=message):
        convert_elmoformanylangs(folder, tmp_path / "out", language="zh")
    assert not (tmp_path / "out").exists()


def test_cli_convert(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["convert", "--elmoformanylangs", str(NO_WORDS_DIR), "--output-dir", str(out), "--language", "en"]) == 0
    assert_matches_embedder(out, "no_words_reference.npz")
    assert main(["convert", "--elmoformanylangs", str(NO_WORDS_DIR), "--output-dir", str(out)]) == 2
    assert "pass --language" in capsys.readouterr().err
    assert main(["convert", "--elmoformanylangs", str(NO_WORDS_DIR), "--output-dir", str(out), "--language", "en",
                 "--weight-file", "w.hdf5"]) == 2
    assert capsys.readouterr().err.strip() == "hf-elmo convert: error: not used with --elmoformanylangs: --weight-file"
    assert main(["convert", "--elmoformanylangs", str(NO_WORDS_DIR), "--options-file", "o.json",
                 "--output-dir", str(out)]) == 2  # two sources
    assert "not used with --elmoformanylangs: --options-file" in capsys.readouterr().err


REMOTE_SCRIPT = r"""
import json, sys
sys.modules["hf_elmo"] = None  # hf_elmo is not importable in this process
import numpy as np, torch
from transformers import AutoModel, AutoTokenizer
folder, sentences = sys.argv[1], json.loads(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
assert type(tokenizer).__name__ == "ElmoManyLangsTokenizer", type(tokenizer)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
enc = tokenizer(sentences, is_split_into_words=True, padding=True, return_tensors="pt")
with torch.inference_mode():
    np.save(sys.argv[3], torch.stack(model(**enc, output_hidden_states=True).hidden_states).numpy())
"""


def test_remote_code_without_hf_elmo(tmp_path, converted):
    sentences, _ = reference("reference_outputs.npz")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", REMOTE_SCRIPT, str(converted), json.dumps(sentences),
                             str(tmp_path / "r.npy")], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    _, out = run(converted, sentences)
    assert np.array_equal(np.load(tmp_path / "r.npy"), torch.stack(out.hidden_states).numpy())


def test_jobs_and_pipeline_give_the_models_vectors(converted, tmp_path):
    sentences, expected = reference("reference_outputs.npz")
    dataset = embed_dataset(Dataset.from_dict({"words": sentences}), str(converted), "words", batch_size=4)
    pipe = pipeline("elmo-feature-extraction", model=str(converted))
    piped = pipe([tuple(s) for s in sentences], batch_size=3, return_tensors=True)
    text = tmp_path / "sentences.txt"
    text.write_text("".join(" ".join(s) + "\n" for s in sentences), encoding="utf-8")
    assert main(["embed", str(converted), str(text), str(tmp_path / "out.hdf5"), "--average"]) == 0
    with h5py.File(tmp_path / "out.hdf5") as hdf5:
        for i, words in enumerate(sentences):
            mean = expected[f"Lm1_s{i}"]
            np.testing.assert_allclose(np.asarray(dataset[i]["elmo"]), mean, atol=ATOL)
            np.testing.assert_allclose(piped[i].numpy(), mean, atol=ATOL)
            np.testing.assert_allclose(hdf5[str(i)][()], mean, atol=ATOL)


def test_chinese_raw_text_is_segmented_with_jieba(converted):
    pytest.importorskip("jieba")
    tokenizer = AutoTokenizer.from_pretrained(converted)
    text = "我们使用神经网络。"
    batch = tokenizer(text, return_offsets_mapping=True)
    words = tokenizer.split_words(text)
    assert "".join(words) == text and len(words) > 1
    assert [text[a:b] for a, b in batch["offset_mapping"]] == words
    assert batch["input_ids"] == tokenizer.encode_words(words)


def test_pre_split_only_languages_refuse_raw_text(tmp_path):
    out = convert_elmoformanylangs(NO_WORDS_DIR, tmp_path / "ja", language="ja")
    tokenizer = AutoTokenizer.from_pretrained(out)
    with pytest.raises(ValueError, match="no word segmenter for raw text.*is_split_into_words=True"):
        tokenizer("日本語の文")
    assert "language: ja" in (out / "README.md").read_text(encoding="utf-8")


HUB_LOAD_SCRIPT = r"""
import json, sys
import numpy as np, torch
import hf_elmo
from transformers import AutoModel, AutoTokenizer
repo, sentences, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
tokenizer = AutoTokenizer.from_pretrained(repo)
model = AutoModel.from_pretrained(repo).eval()
assert type(tokenizer).__name__ == "ElmoManyLangsTokenizer", type(tokenizer)
enc = tokenizer(sentences, is_split_into_words=True, padding=True, return_tensors="pt")
with torch.inference_mode():
    np.save(out, torch.stack(model(**enc, output_hidden_states=True).hidden_states).numpy())
"""


def test_convert_push_to_hub_and_load_back(tmp_path):
    """`hf-elmo convert --elmoformanylangs ... --push-to-hub` against a local Hub, then the repo by id."""
    from hub_server import FakeHub

    sentences, expected = reference("reference_outputs.npz")
    with FakeHub() as hub:
        env = {**os.environ, **hub.env(token="hf_token_zh"), "HF_HOME": str(tmp_path / "hf-home"),
               "HF_HUB_DISABLE_XET": "1", "OMP_NUM_THREADS": "1"}
        env.pop("HF_HUB_OFFLINE", None)
        out = tmp_path / "elmo-zh"
        push = subprocess.run([sys.executable, "-m", "hf_elmo.cli", "convert", "--elmoformanylangs", str(MODEL_DIR),
                               "--language", "zh", "--output-dir", str(out), "--push-to-hub", "efml/elmo-zh-tiny"],
                              capture_output=True, text=True, env=env, timeout=300)
        assert push.returncode == 0, push.stderr[-3000:]
        remote = hub.repos["efml/elmo-zh-tiny"].files("main")
        assert {"char_vocab.json", "word_vocab.json", "tokenization_elmo.py"} <= remote.keys()
        load = subprocess.run([sys.executable, "-c", HUB_LOAD_SCRIPT, "efml/elmo-zh-tiny", json.dumps(sentences),
                               str(tmp_path / "hub.npy")], capture_output=True, text=True, env=env, timeout=300)
        assert load.returncode == 0, load.stderr[-3000:]
    layers = np.load(tmp_path / "hub.npy")
    for i, words in enumerate(sentences):
        np.testing.assert_allclose(layers[:, i, : len(words)], expected[f"Lm2_s{i}"], atol=ATOL)


def test_dump_token_embeddings_uses_the_models_own_tables(converted, tmp_path):
    sentences, expected = reference("reference_outputs.npz")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("neural\n<bos>\n", encoding="utf-8")
    assert main(["dump-token-embeddings", str(converted), str(vocab), str(tmp_path / "tokens.hdf5")]) == 0
    model = AutoModel.from_pretrained(converted).eval()
    with torch.no_grad():
        bilm = model.forward_bilm(**AutoTokenizer.from_pretrained(converted)([["neural"]], is_split_into_words=True,
                                                                            return_tensors="pt"))
    with h5py.File(tmp_path / "tokens.hdf5") as hdf5:
        embedding = hdf5["embedding"][()]
    assert sentences[5] == ["neural"]
    np.testing.assert_allclose(embedding[0], expected["L0_s5"][0, :8], atol=ATOL)  # layer 0 = [token, token]
    np.testing.assert_allclose(embedding[1], bilm.token_vectors[0, 0].numpy(), atol=ATOL)  # the model's <bos>
