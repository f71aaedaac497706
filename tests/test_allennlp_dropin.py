"""hf_elmo.allennlp against allennlp 2.10.1's own outputs (tests/fixtures/allennlp-dropin), call after call."""

from __future__ import annotations

import functools
import io
import json
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hub_server import LoopbackServer

from hf_elmo import allennlp as dropin
from hf_elmo.allennlp import Elmo, ElmoEmbedder, _ElmoBiLm, batch_to_ids
from hf_elmo.modeling_elmo import ElmoModel

FIXTURE = Path(__file__).parent / "fixtures" / "allennlp-dropin"
OPTIONS = FIXTURE / "options.json"
WEIGHTS = Path(__file__).parent / "fixtures" / "bilm-tf" / "model" / "lm_weights.hdf5"
PLAN = json.loads((FIXTURE / "plan.json").read_text())
# allennlp's loop and hf-elmo's packed LSTM differ in float rounding only (measured: at most 7.2e-7).
ATOL = 2e-6


@pytest.fixture(scope="module")
def references():
    return np.load(FIXTURE / "references.npz")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("converted")


def max_diff(a, b) -> float:
    a = a.detach().cpu().numpy() if torch.is_tensor(a) else a
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max()) if a.size else 0.0


def replay_embedder(embedder: ElmoEmbedder, references) -> list[float]:
    """Run the recorded calls in order; check shapes, dtypes and masks; return each call's max |diff|."""
    diffs = []
    for i, (method, argument) in enumerate(PLAN["embedder"]):
        key = f"embedder_{i}"
        if method == "reset_states":
            embedder.elmo_bilm._elmo_lstm.reset_states()  # allennlp's spelling
            continue
        if method == "batch_to_embeddings":
            activations, mask = embedder.batch_to_embeddings(argument)
            assert activations.dtype == torch.float32 and mask.dtype == torch.int64
            assert torch.equal(mask, torch.from_numpy(references[f"{key}_mask"]))
            diffs.append(max_diff(activations, references[f"{key}_activations"]))
            continue
        if method == "embed_sentence":
            results = [embedder.embed_sentence(argument)]
        elif method == "embed_batch":
            results = embedder.embed_batch(argument)
        else:
            results = embedder.embed_sentences(argument, batch_size=PLAN["embed_sentences_batch_size"])
            assert not isinstance(results, list)  # a generator, as allennlp's
            results = list(results)
        assert len(results) == int(references[f"{key}_count"])
        call = 0.0
        for j, result in enumerate(results):
            assert isinstance(result, np.ndarray) and result.dtype == np.float32
            if f"{key}_{j}" in references:
                call = max(call, max_diff(result, references[f"{key}_{j}"]))
            else:  # an empty sentence: no vectors
                assert result.shape == (3, 0, 32)
        diffs.append(call)
    return diffs


def test_embedder_matches_allennlp_call_after_call(references, cache_dir):
    embedder = ElmoEmbedder(OPTIONS, WEIGHTS, cache_dir=cache_dir)
    diffs = replay_embedder(embedder, references)
    assert len(diffs) == 10 and max(diffs) < ATOL, diffs


def test_stateless_embedder_is_hf_elmo_and_differs_from_allennlp(references, cache_dir):
    """`stateful=False`: each sentence alone from zero state; allennlp's later calls differ (the state matters)."""
    embedder = ElmoEmbedder(OPTIONS, WEIGHTS, stateful=False, cache_dir=cache_dir)
    model = ElmoModel.from_pretrained(dropin.converted_checkpoint(OPTIONS, WEIGHTS, cache_dir)).eval()
    second = PLAN["embedder"][1][1]
    activations, mask = embedder.batch_to_embeddings(second)
    for row, sentence in enumerate(second):
        ids = batch_to_ids([sentence])
        with torch.no_grad():
            alone = torch.stack(model(ids, output_hidden_states=True).hidden_states)[:, 0]
        assert max_diff(activations[row, :, : len(sentence)], alone.numpy()) < 1e-6
    assert max_diff(activations, references["embedder_1_activations"]) > 1e-2
    # The first call of a fresh allennlp biLM starts from zero state too.
    assert max_diff(embedder.batch_to_embeddings(PLAN["embedder"][0][1])[0],
                    references["embedder_0_activations"]) < ATOL


def test_row_rules_carry_state(references, cache_dir):
    """Each rule matters: the rows a smaller batch left alone continue later, new rows start from zero."""
    embedder = ElmoEmbedder(OPTIONS, WEIGHTS, cache_dir=cache_dir)
    bilm = embedder.elmo_bilm
    calls = [argument for _, argument in PLAN["embedder"][:4]]
    embedder.batch_to_embeddings(calls[0])
    h_after_first = bilm._elmo_lstm._states[0].clone()
    embedder.batch_to_embeddings(calls[1])  # 3 rows -> 5 rows
    h, c = bilm._elmo_lstm._states
    assert h.shape == (2, 2, 5, 16) and c.shape == (2, 2, 5, 64)
    kept = h[:, :, 2:].clone()
    embedder.batch_to_embeddings(calls[2])  # 2 rows: rows 2..4 untouched
    assert torch.equal(bilm._elmo_lstm._states[0][:, :, 2:], kept)
    assert not torch.equal(h_after_first[:, :, :2], bilm._elmo_lstm._states[0][:, :, :2])
    activations, _ = embedder.batch_to_embeddings(calls[3])
    assert max_diff(activations, references["embedder_3_activations"]) < ATOL

    # reset_states(mask): the masked rows go back to zero, the others keep theirs.
    before = bilm._elmo_lstm._states[1].clone()
    bilm.reset_states(torch.tensor([True, False, True, False, False]))
    after = bilm._elmo_lstm._states[1]
    assert after[:, :, [0, 2]].abs().sum() == 0 and torch.equal(after[:, :, [1, 3, 4]], before[:, :, [1, 3, 4]])
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        bilm.reset_states(torch.tensor([True]))


def test_empty_sentence_batch_runs_nothing(cache_dir):
    embedder = ElmoEmbedder(OPTIONS, WEIGHTS, cache_dir=cache_dir)
    embedder.batch_to_embeddings([["a", "b"]])
    state = embedder.elmo_bilm._elmo_lstm._states
    assert embedder.embed_sentence([]).shape == (3, 0, 32)
    assert embedder.elmo_bilm._elmo_lstm._states is state
    activations, mask = embedder.batch_to_embeddings([[], []])  # allennlp fails here; hf-elmo runs "<S> </S>"
    assert activations.shape == (2, 3, 0, 32) and mask.shape == (2, 0)
    assert embedder.elmo_bilm._elmo_lstm._states[0].shape[2] == 2


def test_elmo_module_matches_allennlp(references, cache_dir):
    elmo = Elmo(OPTIONS, WEIGHTS, 2, dropout=0, cache_dir=cache_dir)
    assert elmo.get_output_dim() == 32
    for i, batch in enumerate(PLAN["elmo"]):
        out = elmo(batch_to_ids(batch))
        assert out["mask"].dtype == torch.bool
        assert torch.equal(out["mask"], torch.from_numpy(references[f"elmo_{i}_mask"]))
        assert len(out["elmo_representations"]) == 2
        for k, representation in enumerate(out["elmo_representations"]):
            assert max_diff(representation, references[f"elmo_{i}_representation{k}"]) < ATOL
    # trained mixes and the biLM frozen, as allennlp's default requires_grad=False
    trainable = sorted(name for name, p in elmo.named_parameters() if p.requires_grad)
    assert trainable == [f"scalar_mix_{k}.{p}" for k in (0, 1) for p in ("gamma", "scalar_parameters")]


def test_elmo_layer_norm_fixed_mix_and_boundaries(references, cache_dir):
    elmo = Elmo(OPTIONS, WEIGHTS, 1, dropout=0, do_layer_norm=True, keep_sentence_boundaries=True,
                scalar_mix_parameters=[1.0, -1.0, 0.5], cache_dir=cache_dir)
    out = elmo(batch_to_ids(PLAN["elmo_layer_norm"]))
    mask = references["elmo_layer_norm_mask"]
    assert np.array_equal(out["mask"].numpy(), mask)
    representation = out["elmo_representations"][0].detach().numpy()
    # compared where allennlp has values (it leaves -mean/std at padding, hf-elmo zeros)
    assert np.abs(representation - references["elmo_layer_norm_representation"])[mask].max() < ATOL
    assert not any(p.requires_grad for p in elmo.scalar_mix_0.parameters())


def test_elmo_higher_rank_inputs_and_dropout(cache_dir):
    elmo = Elmo(OPTIONS, WEIGHTS, 1, dropout=0, stateful=False, cache_dir=cache_dir)
    sentences = [["a", "b"], ["c"], ["d", "e"], ["f"]]
    flat = elmo(batch_to_ids(sentences))
    nested = elmo(batch_to_ids(sentences).view(2, 2, 2, 50))
    assert nested["mask"].shape == (2, 2, 2)
    assert torch.equal(nested["elmo_representations"][0].view(4, 2, 32), flat["elmo_representations"][0])
    dropped = Elmo(OPTIONS, WEIGHTS, 1, stateful=False, cache_dir=cache_dir)(batch_to_ids(sentences))
    zeros = (dropped["elmo_representations"][0] == 0) & flat["mask"][..., None]
    assert 0.3 < zeros.float().sum() / (flat["mask"].sum() * 32) < 0.7  # allennlp's default dropout 0.5


def test_vocab_to_cache_and_fine_tuning(cache_dir):
    """Cached words give the same vectors; `requires_grad=True` trains the biLM (not the base model's own mix)."""
    sentences = PLAN["elmo"][1]
    plain = Elmo(OPTIONS, WEIGHTS, 1, dropout=0, stateful=False, cache_dir=cache_dir)
    words = sorted({w for s in sentences for w in s})[:5]
    cached = Elmo(OPTIONS, WEIGHTS, 1, dropout=0, vocab_to_cache=words, stateful=False, cache_dir=cache_dir)
    assert cached._elmo_lstm.model.config.num_cached_words == 5
    word_ids = torch.zeros(len(sentences), max(map(len, sentences)), dtype=torch.long)
    ids = batch_to_ids(sentences)
    assert torch.allclose(cached(ids, word_ids)["elmo_representations"][0], plain(ids)["elmo_representations"][0],
                          atol=1e-6)
    tuned = Elmo(OPTIONS, WEIGHTS, 1, requires_grad=True, stateful=False, cache_dir=cache_dir)
    frozen = {n for n, p in tuned.named_parameters() if not p.requires_grad}
    assert frozen == {"_elmo_lstm.model.scalar_mix.scalar_parameters", "_elmo_lstm.model.scalar_mix.gamma"}
    tuned(ids)["elmo_representations"][0].sum().backward()
    assert tuned._elmo_lstm.model.encoder.layers[0].input_weight.grad.abs().sum() > 0


def test_batch_to_ids_matches_allennlp(references):
    assert torch.equal(batch_to_ids(PLAN["char_ids"]), torch.from_numpy(references["char_ids"]))


def test_embed_file_matches_allennlp(references, cache_dir, tmp_path):
    lines = PLAN["file_lines"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    embedder = ElmoEmbedder(OPTIONS, WEIGHTS, cache_dir=cache_dir)
    handle = open(tmp_path / "in.txt", encoding="utf-8")
    embedder.embed_file(handle, tmp_path / "out.hdf5", batch_size=PLAN["file_batch_size"])
    assert handle.closed  # as allennlp
    with h5py.File(tmp_path / "out.hdf5") as f:
        assert sorted(f) == sorted([str(i) for i in range(len(lines))] + ["sentence_to_index"])
        for i in range(len(lines)):
            assert f[str(i)].dtype == np.float32
            assert max_diff(f[str(i)][...], references[f"file_{i}"]) < ATOL
        assert json.loads(f["sentence_to_index"][0]) == {line: str(i) for i, line in enumerate(lines)}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    fresh = ElmoEmbedder(OPTIONS, WEIGHTS, cache_dir=cache_dir)
    fresh.embed_file(str(tmp_path / "in.txt"), tmp_path / "top.hdf5", output_format="top",
                     batch_size=PLAN["file_batch_size"], use_sentence_keys=True)
    with h5py.File(tmp_path / "top.hdf5") as f:
        assert "sentence_to_index" not in f
        assert max_diff(f[lines[1]][...], references["file_1"][-1]) < ATOL


def test_embed_file_bad_input(cache_dir, tmp_path):
    embedder = ElmoEmbedder(OPTIONS, WEIGHTS, cache_dir=cache_dir)
    with pytest.raises(ValueError, match=r"blank line\(s\) 2 \(counted from 1\)"):
        embedder.embed_file(io.StringIO("a b\n\nc\n"), tmp_path / "out.hdf5")
    with pytest.raises(ValueError, match="line 3 repeats line 1"):
        embedder.embed_file(io.StringIO("a b\nc\na b\n"), tmp_path / "out.hdf5", use_sentence_keys=True)
    with pytest.raises(ValueError, match="output_format must be one of"):
        embedder.embed_file(io.StringIO("a\n"), tmp_path / "out.hdf5", output_format="mean")
    assert list(tmp_path.iterdir()) == []


def test_conversion_is_cached_by_content(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    folder = dropin.converted_checkpoint(OPTIONS, WEIGHTS, cache)
    import hf_elmo.conversion

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(hf_elmo.conversion, "convert_original_checkpoint", no_conversion)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "options.json").write_bytes(OPTIONS.read_bytes())
    (copy / "weights.hdf5").write_bytes(WEIGHTS.read_bytes())
    assert dropin.converted_checkpoint(copy / "options.json", copy / "weights.hdf5", cache) == folder
    options = json.loads(OPTIONS.read_text())
    options["lstm"]["proj_clip"] = 2
    (copy / "options.json").write_text(json.dumps(options))
    with pytest.raises(AssertionError, match="converted again"):
        dropin.converted_checkpoint(copy / "options.json", copy / "weights.hdf5", cache)
    with pytest.raises(FileNotFoundError, match="missing.hdf5: ELMo file not found"):
        dropin.converted_checkpoint(OPTIONS, tmp_path / "missing.hdf5", cache)


def test_urls_are_downloaded_once(tmp_path, monkeypatch, references):
    serve = tmp_path / "serve"
    serve.mkdir()
    (serve / "options.json").write_bytes(OPTIONS.read_bytes())
    (serve / "weights.hdf5").write_bytes(WEIGHTS.read_bytes())
    monkeypatch.setenv("HF_ELMO_CACHE", str(tmp_path / "home"))
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(serve))
    with LoopbackServer(handler) as server:
        bilm = _ElmoBiLm(f"{server.url}/options.json", f"{server.url}/weights.hdf5")
    assert len(list((tmp_path / "home" / "downloads").iterdir())) == 2
    assert len(list((tmp_path / "home" / "converted").iterdir())) == 1
    out = bilm(batch_to_ids(PLAN["embedder"][0][1]))
    assert len(out["activations"]) == bilm.num_layers == 3 and out["mask"].dtype == torch.bool
