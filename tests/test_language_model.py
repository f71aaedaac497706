"""
ELMo as a language model: `ElmoForPreTraining`, `hf_elmo.jobs.lm_job.ElmoLanguageModel` and the LM commands.

References:
- bilm-tf's own numbers for its trained test model (tests/fixtures/bilm-tf-lm: `lm_ref.npz`, one sentence at a time
  from a zero state, full softmax; `test_ppl.json`: `bilm.training.test()` at batch size 1, 18.69580078125);
- `ReferenceLM` (tests/reference_bilm.py): an independent float64 NumPy biLM + softmax, one token at a time, for
  settings that fixture does not have (skip connections, relu, 2 highway layers, 50 characters, clips), checked
  against bilm-tf first;
- a literal replay of bilm-tf's `_get_batch` streaming (`bilm_tf_test_batches` below) for batch sizes > 1.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoModelForPreTraining

from helpers import TRAIN, options_json, tiny_config, write_random_checkpoint
from hf_elmo.checkpoints.softmax import write_softmax
from hf_elmo.cli import main as cli_main
from hf_elmo.conversion import convert_original_checkpoint
from hf_elmo.jobs.lm_job import ElmoLanguageModel, stream_layout
from hf_elmo.lm_softmax import top_k_log_probs
from hf_elmo.modeling_elmo import ElmoForPreTraining, ElmoModel, ElmoNoLMHeadError
from reference_bilm import ReferenceLM

LM_FIXTURE = Path(__file__).parent / "fixtures" / "bilm-tf-lm"
TEST_PERPLEXITY = json.loads((LM_FIXTURE / "test_ppl.json").read_text())["perplexity"]  # 18.69580078125


@pytest.fixture(scope="module")
def lm(lm_folder) -> ElmoLanguageModel:
    return ElmoLanguageModel.from_pretrained(lm_folder)


def sentences_of(lm_ref) -> list[list[str]]:
    return [str(s).split() for s in lm_ref["sentences"]]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli_main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def labels_for(lm: ElmoLanguageModel, sentences: list[list[str]]) -> torch.Tensor:
    width = max(map(len, sentences))
    labels = torch.full((len(sentences), width), -100)
    for row, words in enumerate(sentences):
        labels[row, : len(words)] = torch.tensor(lm.vocabulary.ids(words))
    return labels


# ------------------------------------------------------------------------------------------ bilm-tf's own numbers
def test_converted_folder_loads_as_language_model_and_as_bilm(lm_folder, lm_ref):
    model = AutoModelForPreTraining.from_pretrained(lm_folder)
    assert isinstance(model, ElmoForPreTraining)
    assert torch.equal(model.softmax.weight, torch.from_numpy(lm_ref["softmax_W"]))
    assert torch.equal(model.softmax.bias, torch.from_numpy(lm_ref["softmax_b"]))
    bilm = AutoModel.from_pretrained(lm_folder)
    assert type(bilm) is ElmoModel
    lm_weights = {k.removeprefix("elmo."): v for k, v in model.state_dict().items() if k.startswith("elmo.")}
    assert all(torch.equal(v, lm_weights[k]) for k, v in bilm.state_dict().items())
    assert (lm_folder / "lm_vocab.txt").read_text().split("\n")[:-1] == [str(w) for w in lm_ref["vocab"]]
    config = model.config
    assert (config.lm_vocab_size, config.lm_bos_id, config.lm_eos_id, config.lm_unk_id) == (32, 0, 1, 2)


@torch.inference_mode()
def test_every_number_of_each_sentence_matches_bilm_tf(lm, lm_ref):
    """One padded batch of the 4 sentences (sentence 3 has OOV targets and a word cut to 8 characters)."""
    sentences = sentences_of(lm_ref)
    enc = lm.tokenizer(sentences, is_split_into_words=True, padding=True, return_tensors="pt")
    out = lm.model(**enc, labels=labels_for(lm, sentences), use_cache=True)
    weight, bias = lm.model.softmax_parameters()
    vocabulary_size = weight.shape[0]
    worst = 0.0
    for k, words in enumerate(sentences):
        n = len(words)
        forward_nll, backward_nll = out.forward_nll[k, : n + 1].numpy(), out.backward_nll[k, : n + 1].flip(0).numpy()
        for ours, theirs in ((forward_nll, lm_ref[f"s{k}_nll_fwd"]), (backward_nll, lm_ref[f"s{k}_nll_bwd"])):
            np.testing.assert_allclose(ours, theirs, rtol=1e-5)
            worst = max(worst, float(np.max(np.abs(ours - theirs) / np.abs(theirs))))
        np.testing.assert_allclose(0.5 * (forward_nll + backward_nll), lm_ref[f"s{k}_loss"], rtol=1e-5)
        hidden = {"fwd": out.forward_hidden[k, : n + 1], "bwd": out.backward_hidden[k, : n + 1].flip(0)}
        for direction in ("fwd", "bwd"):
            np.testing.assert_allclose(hidden[direction].numpy(), lm_ref[f"s{k}_h_top_{direction}"], atol=1e-6)
            # Full log-softmax rows: the top V of V, put back in vocabulary order.
            values, ids = top_k_log_probs(hidden[direction], weight, bias, vocabulary_size)
            rows = torch.empty_like(values).scatter_(1, ids, values)
            np.testing.assert_allclose(rows.numpy(), lm_ref[f"s{k}_logp_{direction}"], rtol=1e-5, atol=1e-6)
        # Streaming state: forward after wn, backward after w1 (TensorFlow's state after its last step).
        for part, name in ((0, "h"), (1, "c")):
            for d, direction in enumerate(("fwd", "bwd")):
                np.testing.assert_allclose(out.state[part][:, d, k].numpy(), lm_ref[f"s{k}_state_{name}_{direction}"][-1],
                                           atol=1e-6)
        np.testing.assert_allclose(lm.model.elmo.boundary_token_vectors(enc["input_ids"][k : k + 1])[0][0, : n + 1]
                                   .numpy(), lm_ref[f"s{k}_tokemb_fwd"], atol=1e-6)
    assert worst < 1e-5
    # The batch loss is bilm-tf's total_loss over all these predictions (equal counts in both directions).
    np.testing.assert_allclose(float(out.loss), np.concatenate([lm_ref[f"s{k}_loss"] for k in range(4)]).mean(),
                               rtol=1e-6)


def test_stateful_perplexity_is_bilm_tf_test(lm, lm_folder, lm_ref, capsys):
    code, out, _ = run_cli(["perplexity", lm_folder, TRAIN / "data.txt", "--stateful", "--batch-size", "1"], capsys)
    assert code == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["tokens"] == len(lm_ref["stream_losses"]) == 139
    assert summary["perplexity"] == pytest.approx(TEST_PERPLEXITY, rel=1e-5)
    assert summary["perplexity"] == pytest.approx(float(lm_ref["stream_ppl"]), rel=1e-5)
    # Per step: test()'s own losses, in stream order.
    scores = lm.stream_scores([line.split() for line in (TRAIN / "data.txt").read_text().splitlines()], 1)
    losses = np.concatenate([0.5 * (s.forward_nll + s.backward_nll) for s in scores])
    np.testing.assert_allclose(losses, lm_ref["stream_losses"], rtol=1e-5, atol=1e-6)


def test_per_sentence_perplexities(lm_folder, lm_ref, tmp_path, capsys):
    source = tmp_path / "sentences.txt"
    source.write_text("".join(f"{s}\n" for s in lm_ref["sentences"]))
    code, out, _ = run_cli(["perplexity", lm_folder, source, "--per-sentence"], capsys)
    assert code == 0
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert [line["line"] for line in lines[:-1]] == [1, 2, 3, 4]
    for k, line in enumerate(lines[:-1]):
        assert line["perplexity"] == pytest.approx(float(lm_ref[f"s{k}_ppl"]), rel=1e-5)
        assert line["forward_perplexity"] == pytest.approx(math.exp(lm_ref[f"s{k}_nll_fwd"].mean()), rel=1e-5)
        assert line["backward_perplexity"] == pytest.approx(math.exp(lm_ref[f"s{k}_nll_bwd"].mean()), rel=1e-5)
    losses = np.concatenate([lm_ref[f"s{k}_loss"] for k in range(4)])
    assert lines[-1]["perplexity"] == pytest.approx(math.exp(losses.mean()), rel=1e-5)  # 20.49528
    assert lines[-1]["tokens"] == len(losses)
    # Raw text is split by the tokenizer: "networks." is two words, as in the whitespace-split sentence.
    raw = tmp_path / "raw.txt"
    raw.write_text("these models make use of neural networks.\n")
    code, out, _ = run_cli(["perplexity", lm_folder, raw, "--raw-text"], capsys)
    assert json.loads(out)["perplexity"] == pytest.approx(float(lm_ref["s0_ppl"]), rel=1e-5)


def test_next_and_previous_words(lm, lm_folder, lm_ref, capsys):
    expected = np.exp(lm_ref["s0_logp_fwd"][6])  # after "<S> these models make use of neural"
    top = np.argsort(-expected)[:5]
    code, out, _ = run_cli(["next-word", lm_folder, "these models make use of neural", "--top-k", "5"], capsys)
    assert code == 0
    predicted = json.loads(out.strip().splitlines()[-1])
    assert [p["word"] for p in predicted] == [str(lm_ref["vocab"][i]) for i in top]
    assert [p["word"] for p in predicted] == ["<UNK>", "of", "to", "-", "use"]
    np.testing.assert_allclose([p["probability"] for p in predicted], expected[top], rtol=1e-5)
    # An empty prefix: the distribution of a sentence's first word (after <S> alone).
    first = np.exp(lm_ref["s1_logp_fwd"][0])
    got = lm.next_words("", top_k=3)
    np.testing.assert_allclose([p["probability"] for p in got], np.sort(first)[::-1][:3], rtol=1e-5)
    # The backward twin: the words before "make use of neural networks ." (backward step 6 of sentence 0).
    before = np.exp(lm_ref["s0_logp_bwd"][6])
    got = lm.previous_words(["make", "use", "of", "neural", "networks", "."], top_k=32)
    assert [p["word"] for p in got][:3] == [str(lm_ref["vocab"][i]) for i in np.argsort(-before)[:3]]
    np.testing.assert_allclose(sorted(p["probability"] for p in got), np.sort(before), rtol=1e-5)
    code, out, _ = run_cli(["next-word", lm_folder, "make use of neural networks .", "--previous", "--top-k", "2"],
                           capsys)
    assert [p["word"] for p in json.loads(out)] == [p["word"] for p in got[:2]]


def test_sampling(lm, lm_folder, capsys):
    # --top-k 1 is greedy: each word is the argmax after the prefix so far.
    chain = lm.sample("the meaning of life is", num_words=8, top_k=1, seed=0)
    prefix = "the meaning of life is".split()
    for word in chain:
        assert lm.next_words(prefix, top_k=1)[0]["word"] == word
        prefix.append(word)
    if len(chain) < 8:
        assert lm.next_words(prefix, top_k=1)[0]["word"] == "</S>"
    code, out, _ = run_cli(["sample", lm_folder, "the meaning of life is", "--num-words", "8", "--top-k", "1"], capsys)
    assert out.strip() == " ".join(["the", "meaning", "of", "life", "is", *chain])
    # Seeded draws from the full softmax: reproducible, never <S>, different for different seeds.
    draws = {seed: lm.sample("neural", num_words=20, seed=seed) for seed in range(3)}
    assert draws[0] == lm.sample("neural", num_words=20, seed=0)
    assert len({tuple(d) for d in draws.values()}) > 1
    assert all("<S>" not in d and "</S>" not in d for d in draws.values())
    code, _, err = run_cli(["sample", lm_folder, "the", "--temperature", "0"], capsys)
    assert code == 2 and err.strip() == "hf-elmo sample: error: temperature must be positive, got 0.0"


def test_dump_softmax_embeddings_round_trips(lm_folder, lm_ref, tmp_path, capsys):
    out = tmp_path / "dump.hdf5"
    code, _, _ = run_cli(["dump-softmax-embeddings", lm_folder, out], capsys)
    assert code == 0
    vocabulary = [str(w) for w in lm_ref["vocab"]]
    with h5py.File(out, "r") as hdf5:
        assert np.array_equal(hdf5["softmax/W"][...], lm_ref["softmax_W"])
        assert np.array_equal(hdf5["softmax/b"][...], lm_ref["softmax_b"])
        assert [w.decode() for w in hdf5["vocabulary"][...]] == vocabulary
        vectors = hdf5["char_cnn_embeddings"][...]
    tokens = [str(t) for t in lm_ref["s0_tokens_fwd"]]
    for j, token in enumerate(tokens):
        if token in vocabulary:
            np.testing.assert_allclose(vectors[vocabulary.index(token)], lm_ref["s0_tokemb_fwd"][j], atol=1e-6)
    again = convert_original_checkpoint(LM_FIXTURE / "options.json", LM_FIXTURE / "weights.hdf5", tmp_path / "again",
                                        vocab_file=TRAIN / "vocab.txt", softmax_weight_file=out)
    assert torch.equal(AutoModelForPreTraining.from_pretrained(again).softmax.weight,
                       torch.from_numpy(lm_ref["softmax_W"]))


# --------------------------------------------------------------------------------- streaming at larger batch sizes
def bilm_tf_test_batches(lengths: list[int], batch_size: int) -> list[list[tuple[int, int]]]:
    """
    bilm-tf `_get_batch` at unroll_steps 1, replayed literally: per batch, per row, (sentence, position) of the one
    input it reads. A row whose stream has at most one id left takes the next sentence; none left ends the run
    and drops that batch.
    """
    streams: list[list[int] | None] = [None] * batch_size
    upcoming = iter(range(len(lengths)))
    batches = []
    while True:
        batch = []
        for row in range(batch_size):
            stream = streams[row]
            if stream is None or lengths[stream[0]] + 2 - stream[1] <= 1:  # ids left: n + 2 minus those read
                sentence = next(upcoming, None)
                if sentence is None:
                    return batches
                streams[row] = stream = [sentence, 0]
            batch.append((stream[0], stream[1]))
            stream[1] += 1
        batches.append(batch)


def reference_test_perplexity(reference: ReferenceLM, sentences: list[list[str]], batch_size: int) -> float:
    """bilm-tf's test() perplexity through the reference LM, one token per row per batch, state carried per row."""
    states = [reference.zero_state() for _ in range(batch_size)]
    batch_losses = []
    for batch in bilm_tf_test_batches([len(s) for s in sentences], batch_size):
        losses = []
        for row, (sentence, position) in enumerate(batch):
            words = sentences[sentence]
            streams = [(["<S>", *words], [*words, "</S>"]), (["</S>", *words[::-1]], [*words[::-1], "<S>"])]
            nll = []
            for direction, (inputs, targets) in enumerate(streams):
                logp, states[row][direction] = reference.step(direction, inputs[position], states[row][direction])
                nll.append(-logp[reference.word_ids.get(targets[position], reference.word_ids["<UNK>"])])
            losses.append(0.5 * (nll[0] + nll[1]))
        batch_losses.append(np.mean(losses))
    return math.exp(np.mean(batch_losses))


@pytest.fixture(scope="module")
def fixture_reference(lm_ref) -> ReferenceLM:
    options = json.loads((LM_FIXTURE / "options.json").read_text())
    return ReferenceLM(options, LM_FIXTURE / "weights.hdf5", lm_ref["softmax_W"], lm_ref["softmax_b"],
                       [str(w) for w in lm_ref["vocab"]])


def test_reference_lm_reproduces_bilm_tf(fixture_reference, lm_ref):
    """The reference (and the replay of `_get_batch`) is trusted because it gives TensorFlow's numbers."""
    data = [line.split() for line in (TRAIN / "data.txt").read_text().splitlines()]
    assert reference_test_perplexity(fixture_reference, data, 1) == pytest.approx(TEST_PERPLEXITY, rel=1e-6)
    nlls, rows, _ = fixture_reference.sentence(sentences_of(lm_ref)[3])
    np.testing.assert_allclose(nlls[0], lm_ref["s3_nll_fwd"], rtol=1e-5)
    np.testing.assert_allclose(rows[1], lm_ref["s3_logp_bwd"], atol=1e-5)


@pytest.mark.parametrize("batch_size", [2, 3])
def test_stateful_batches_follow_bilm_tf(lm, lm_folder, fixture_reference, batch_size, capsys):
    data = [line.split() for line in (TRAIN / "data.txt").read_text().splitlines()]
    expected = reference_test_perplexity(fixture_reference, data, batch_size)
    code, out, _ = run_cli(["perplexity", lm_folder, TRAIN / "data.txt", "--stateful", "--batch-size", batch_size],
                           capsys)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["perplexity"] == pytest.approx(expected, rel=1e-5)
    assert summary["perplexity"] != pytest.approx(TEST_PERPLEXITY, rel=1e-3)  # other streams, other numbers
    # The scored steps: every row runs as long as the replay's batches.
    rows, steps = stream_layout([len(s) for s in data], batch_size)
    assert steps == len(bilm_tf_test_batches([len(s) for s in data], batch_size))
    assert summary["tokens"] == steps * batch_size


# ------------------------------------------------------------------------------------- other architectures
@pytest.fixture(scope="module")
def other_settings_lm(tmp_path_factory):
    """Random LM with skip connections, relu, 2 highway layers, 50 characters and clips that bite."""
    config = tiny_config(use_skip_connections=True, char_activation="relu", num_highway_layers=2,
                         max_characters_per_token=50, cell_clip=0.8, proj_clip=0.5)
    source = tmp_path_factory.mktemp("other-lm")
    options_path, weights_path = write_random_checkpoint(options_json(config), source, seed=3, scale=0.3)
    words = ["<S>", "</S>", "<UNK>", "the", "cat", "sat", "on", "mat", ".", "a", "dog", "ran"]
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((len(words), config.projection_dim)).astype(np.float32)
    bias = rng.standard_normal(len(words)).astype(np.float32)
    (source / "vocab.txt").write_text("".join(f"{w}\n" for w in words))
    write_softmax(source / "softmax.hdf5", weight, bias)
    folder = convert_original_checkpoint(options_path, weights_path, source / "out", vocab_file=source / "vocab.txt",
                                         softmax_weight_file=source / "softmax.hdf5")
    reference = ReferenceLM(options_json(config), weights_path, weight, bias, words)
    return ElmoLanguageModel.from_pretrained(folder), reference


def test_other_settings_match_the_reference(other_settings_lm):
    lm, reference = other_settings_lm
    sentences = [["the", "cat", "sat", "on", "the", "mat", "."], ["a", "dog", "ran", "unseen-word"], [], ["cat"]]
    scores = lm.score_sentences(sentences, batch_size=4)
    clipped = False
    for words, score in zip(sentences, scores):
        nlls, rows, state = reference.sentence(words)
        np.testing.assert_allclose(score.forward_nll, nlls[0], rtol=1e-5)
        np.testing.assert_allclose(score.backward_nll, nlls[1], rtol=1e-5)
        clipped |= any(np.abs(r).max() >= 0.5 - 1e-9 for direction in state for r, _ in direction)
    assert clipped  # the projection clip was reached, so it is tested
    # Streams of sentences at batch size 2, through the replay of bilm-tf's batches.
    stream = sentences * 2
    expected = reference_test_perplexity(reference, stream, 2)
    assert lm.perplexity(stream, batch_size=2, stateful=True).perplexity == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------------- training API
def test_loss_gradient_and_ignored_labels(lm, lm_ref):
    # Train mode without dropout: deterministic, so the gradient can be checked against a difference.
    model = ElmoForPreTraining.from_pretrained(lm.model.name_or_path, dtype=torch.float64, dropout=0.0).train()
    sentences = sentences_of(lm_ref)[:2]
    enc = lm.tokenizer(sentences, is_split_into_words=True, padding=True, return_tensors="pt")
    labels = labels_for(lm, sentences)
    loss = model(**enc, labels=labels).loss
    loss.backward()
    # The softmax bias gradient against a central difference.
    k, eps = 5, 1e-6
    with torch.no_grad():
        model.softmax.bias[k] += eps
        up = model(**enc, labels=labels).loss
        model.softmax.bias[k] -= 2 * eps
        down = model(**enc, labels=labels).loss
        model.softmax.bias[k] += eps
    assert float(model.softmax.bias.grad[k]) == pytest.approx(float(up - down) / (2 * eps), rel=1e-6)
    assert model.elmo.encoder.layers[0].input_weight.grad.abs().sum() > 0
    # -100 leaves a word out as a target: each direction's mean skips it; return_dict=False gives a tuple.
    labels[0, 2] = -100
    with torch.no_grad():
        out = model(**enc, labels=labels)
        loss_tuple = model(**enc, labels=labels, return_dict=False)[0]
    n = len(sentences[0])
    forward, backward = lm_ref["s0_nll_fwd"].tolist(), lm_ref["s0_nll_bwd"].tolist()
    del forward[2], backward[n - 3]  # word 3 (0-based 2) is forward step 2's target and backward step n - 3's
    forward += lm_ref["s1_nll_fwd"].tolist()
    backward += lm_ref["s1_nll_bwd"].tolist()
    assert float(out.loss) == pytest.approx(0.5 * (np.mean(forward) + np.mean(backward)), rel=1e-5)
    assert float(loss_tuple) == float(out.loss)


# ----------------------------------------------------------------------------------------------- bad input
def test_checkpoint_without_lm_head(converted_fixture, tmp_path, capsys):
    source = tmp_path / "s.txt"
    source.write_text("a b\n")
    code, out, err = run_cli(["perplexity", converted_fixture, source], capsys)
    assert code == 2 and out == ""
    assert err.startswith("hf-elmo perplexity: error: ") and "has no language-model head" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["next-word", converted_fixture, "a"], capsys)
    assert code == 2 and "has no language-model head" in err
    model = AutoModelForPreTraining.from_pretrained(converted_fixture)  # loads: the biLM still embeds
    assert model.softmax is None
    enc = {"input_ids": torch.ones(1, 2, 50, dtype=torch.long)}
    with pytest.raises(ElmoNoLMHeadError, match="no language-model head"):
        model(**enc, labels=torch.zeros(1, 2, dtype=torch.long))
    assert model(**enc).forward_hidden.shape == (1, 3, model.config.projection_dim)


def test_bad_conversions_are_one_line_errors(softmax_file, tmp_path, capsys):
    base = ["convert", "--options-file", LM_FIXTURE / "options.json", "--weight-file", LM_FIXTURE / "weights.hdf5",
            "--output-dir", tmp_path / "out"]
    longer = tmp_path / "longer.txt"
    longer.write_text((TRAIN / "vocab.txt").read_text() + "extra\n")
    unordered = tmp_path / "unordered.txt"
    unordered.write_text("the\n" + (TRAIN / "vocab.txt").read_text())
    cases = [
        ([*base, "--softmax-weight-file", softmax_file, "--vocab-file", longer],
         f"{longer}: 33 words, but the softmax has 32 rows"),
        ([*base, "--softmax-weight-file", softmax_file, "--vocab-file", unordered],
         f"{unordered}: line 1 is 'the'; a bilm-tf vocabulary starts with the three lines <S>, </S>, <UNK>"),
        ([*base, "--softmax-weight-file", softmax_file], "needs --vocab-file"),
        ([*base, "--tf-checkpoint", LM_FIXTURE / "ckpt", "--vocab-file", TRAIN / "vocab.txt"],
         "--tf-checkpoint holds the weights and the softmax"),
        (["convert", "--output-dir", tmp_path / "out"], "--options-file and --weight-file (or --tf-checkpoint, or --elmoformanylangs)"),
    ]
    for args, message in cases:
        code, _, err = run_cli(args, capsys)
        assert code == 2 and err.startswith("hf-elmo convert: error: ") and message in err, err
        assert len(err.strip().splitlines()) == 1
        assert not (tmp_path / "out").exists()


def test_tf_checkpoint_without_tensorflow_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now raises ImportError
    code, _, err = run_cli(["convert", "--tf-checkpoint", LM_FIXTURE / "ckpt", "--vocab-file", TRAIN / "vocab.txt",
                            "--output-dir", tmp_path / "out"], capsys)
    assert code == 2 and 'pip install "hf-elmo[tf]"' in err and not (tmp_path / "out").exists()


def assert_tf_checkpoint_converts_to(lm_folder, tmp_path, capsys) -> None:
    """`hf-elmo convert --tf-checkpoint` of the fixture gives exactly the weights of `lm_folder` (converted from
    bilm-tf's dump_weights output and softmax)."""
    code, _, err = run_cli(["convert", "--tf-checkpoint", LM_FIXTURE / "ckpt", "--vocab-file", TRAIN / "vocab.txt",
                            "--output-dir", tmp_path / "out"], capsys)
    assert code == 0, err
    ours = AutoModelForPreTraining.from_pretrained(tmp_path / "out").state_dict()
    expected = AutoModelForPreTraining.from_pretrained(lm_folder).state_dict()
    assert ours.keys() == expected.keys() and all(torch.equal(ours[k], expected[k]) for k in ours)


def test_tf_checkpoint_converts_to_the_same_language_model(lm_folder, tmp_path, capsys):
    pytest.importorskip("tensorflow", reason='reading TF training checkpoints needs pip install "hf-elmo[tf]"')
    assert_tf_checkpoint_converts_to(lm_folder, tmp_path, capsys)


@pytest.fixture
def tensorflow_reader_replaced_by_lm_ref(monkeypatch, lm_ref):
    """TensorFlow's checkpoint reader standing in with the values it returned for this checkpoint (lm_ref's
    `ckpt/<name>`), so the conversion around it is tested where TensorFlow is not installed."""
    from hf_elmo.checkpoints import bilm_tf_training

    def read(prefix, wanted):
        assert prefix == LM_FIXTURE / "ckpt" / "model.ckpt-12"
        return {name[len("ckpt/"):]: value for name, value in lm_ref.items()
                if name.startswith("ckpt/") and wanted(name[len("ckpt/"):])}

    monkeypatch.setattr(bilm_tf_training, "_read_tensorflow_variables", read)


def test_training_checkpoint_conversion_around_the_reader(tensorflow_reader_replaced_by_lm_ref, lm_folder, tmp_path,
                                                          capsys):
    assert_tf_checkpoint_converts_to(lm_folder, tmp_path, capsys)
    capsys.readouterr()
    # Training options whose n_tokens_vocab disagrees with the softmax: named, nothing written.
    options = json.loads((LM_FIXTURE / "ckpt" / "options.json").read_text())
    options["n_tokens_vocab"] = 33
    (tmp_path / "options.json").write_text(json.dumps(options))
    code, _, err = run_cli(["convert", "--tf-checkpoint", LM_FIXTURE / "ckpt", "--options-file",
                            tmp_path / "options.json", "--vocab-file", TRAIN / "vocab.txt", "--output-dir",
                            tmp_path / "other"], capsys)
    assert code == 2 and not (tmp_path / "other").exists()
    assert err.strip() == (f"hf-elmo convert: error: {tmp_path / 'options.json'}: n_tokens_vocab is 33, but the "
                           f"checkpoint's softmax has 32 rows: the options belong to another model")


def test_empty_and_missing_inputs(lm, lm_folder, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, out, err = run_cli(["perplexity", lm_folder, empty], capsys)
    assert code == 2 and out == "" and f"{empty}: the file is empty" in err
    # Fewer sentences than streams: bilm-tf scores nothing.
    one = tmp_path / "one.txt"
    one.write_text("the neural net\n")
    code, out, err = run_cli(["perplexity", lm_folder, one, "--stateful", "--batch-size", "2"], capsys)
    assert code == 2 and out == "" and "no predictions to score" in err
    # An empty line is bilm-tf's `<S> </S>`: one prediction each way.
    blank = tmp_path / "blank.txt"
    blank.write_text("\n")
    code, out, _ = run_cli(["perplexity", lm_folder, blank], capsys)
    assert json.loads(out)["tokens"] == 1
    assert json.loads(out)["forward_perplexity"] == pytest.approx(1 / lm.next_words("", 32)[
        [p["word"] for p in lm.next_words("", 32)].index("</S>")]["probability"], rel=1e-5)
    code, _, err = run_cli(["next-word", lm_folder, "the", "--top-k", "0"], capsys)
    assert code == 2 and "top_k must be between 1 and the vocabulary size 32" in err


# ------------------------------------------------------------------------------------------------- remote code
REMOTE_SCRIPT = r"""
import sys
sys.modules["hf_elmo"] = None  # the package must not be needed
import torch
from transformers import AutoModel, AutoModelForPreTraining, AutoTokenizer

folder = sys.argv[1]
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__name__ == "ElmoForPreTraining" and type(model).__module__.startswith("transformers_modules")
assert type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__ == "ElmoModel"
enc = tokenizer([["these", "models", "make", "use", "of", "neural", "networks", "."]], is_split_into_words=True,
                return_tensors="pt")
labels = torch.tensor([[2, 11, 20, 16, 3, 5, 28, 6]])  # <UNK> models make use of neural networks .
with torch.inference_mode():
    print(float(model(**enc, labels=labels).loss))
"""


def test_remote_code_without_hf_elmo(lm_folder, lm_ref, tmp_path):
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", REMOTE_SCRIPT, str(lm_folder)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # bilm-tf's total_loss over that sentence's predictions.
    assert float(result.stdout.strip().splitlines()[-1]) == pytest.approx(float(lm_ref["s0_loss"].mean()), rel=1e-5)
