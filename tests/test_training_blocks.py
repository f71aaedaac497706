"""The building blocks of training (issue 11): `build-vocab`, the sampled softmax, bilm-tf's batches, the collator.

References: bilm-tf's training corpus and vocabulary (tests/fixtures/bilm-tf/train/), the LM numbers bilm-tf's own
`test()` gave on that corpus (tests/fixtures/bilm-tf-lm/lm_ref.npz: `stream_losses`, `s{k}_*`, see its README), and
TensorFlow itself (`tf.nn.sampled_softmax_loss`, `tf.random.log_uniform_candidate_sampler`) for the sampled softmax.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_elmo.checkpoints.softmax import read_lm_vocabulary
from hf_elmo.modeling_elmo import ElmoForPreTraining
from hf_elmo.tokenization_elmo import char_ids_to_word, word_to_char_ids
from hf_elmo.training.data import (
    LABEL_PAD_ID,
    ElmoLMDataCollator,
    LMSentenceDataset,
    LMStreamDataset,
)
from hf_elmo.lm_softmax import (
    expected_counts,
    log_uniform_draws,
    log_uniform_probabilities,
    sample_log_uniform_candidates,
    sampled_softmax_loss,
)
from hf_elmo.training.vocabulary import add_build_vocab_arguments, run_build_vocab

FIXTURES = Path(__file__).parent / "fixtures"
TRAIN_DATA = FIXTURES / "bilm-tf" / "train" / "data.txt"
TRAIN_VOCAB = FIXTURES / "bilm-tf" / "train" / "vocab.txt"
LM_FIXTURE = FIXTURES / "bilm-tf-lm"
# The test sentences of bilm-tf's inference fixtures: 30 more sentences for multi-file corpora.
MORE_SENTENCES = FIXTURES / "bilm-tf" / "model" / "lm_embeddings_sentences.json"
MAX_CHARACTERS = 10  # the bilm-tf-lm model's max_characters_per_token


@pytest.fixture(scope="module")
def vocabulary():
    return read_lm_vocabulary(TRAIN_VOCAB)


def data_lines() -> list[str]:
    return TRAIN_DATA.read_text(encoding="utf-8").split("\n")


# --- build-vocab ----------------------------------------------------------------------------------------------


def build_vocab(*argv: str) -> list[str]:
    """Run `build-vocab` through its argparse arguments; the written vocabulary's lines."""
    parser = argparse.ArgumentParser(prog="hf-elmo build-vocab")
    add_build_vocab_arguments(parser)
    args = parser.parse_args(list(argv))
    run_build_vocab(args)
    return Path(args.output).read_text(encoding="utf-8").split("\n")[:-1]


def test_build_vocab_reproduces_bilm_tf_training_vocabulary(tmp_path, capsys):
    """bilm-tf's vocab.txt for data.txt is its words seen at least twice, by descending count: the same words here,
    with the same count at every line (bilm-tf's order among equal counts is not first occurrence, so only the
    count groups are compared as sets)."""
    words = build_vocab(str(TRAIN_DATA), "--output", str(tmp_path / "vocab.txt"), "--min-count", "2")
    reference = TRAIN_VOCAB.read_text(encoding="utf-8").split("\n")[:-1]
    assert words[:3] == reference[:3] == ["<S>", "</S>", "<UNK>"]
    assert len(words) == len(reference) == 32
    counts = {word: sum(line.split().count(word) for line in data_lines()) for word in words[3:]}
    assert [counts[w] for w in words[3:]] == [counts.get(w) for w in reference[3:]]
    assert [counts[w] for w in words[3:]] == sorted(counts.values(), reverse=True)
    assert "(77 distinct words, 134 tokens in 5 sentences" in capsys.readouterr().out


def test_build_vocab_order_ties_size_and_summary(tmp_path, capsys):
    corpus = tmp_path / "a.txt"
    corpus.write_text("b a c\n\n  a b  <S> d\n", encoding="utf-8")
    more = tmp_path / "b.txt"
    more.write_text("e a\r\nd e\n", encoding="utf-8")  # a Windows line end: "\r" is whitespace
    out = tmp_path / "out" / "vocab.txt"
    words = build_vocab(str(corpus), str(more), "--output", str(out))
    # a 3, b 2, d 2, e 2 (ties in first-occurrence order: b, d, e), c 1; the corpus' "<S>" is not a second entry
    assert words == ["<S>", "</S>", "<UNK>", "a", "b", "d", "e", "c"]
    assert capsys.readouterr().out.strip() == (
        f"wrote 8 words to {out} (5 distinct words, 11 tokens in 4 sentences: bilm-tf's n_train_tokens is 11)")
    assert build_vocab(str(corpus), str(more), "--output", str(out), "--min-count", "2") == words[:7]
    assert build_vocab(str(corpus), str(more), "--output", str(out), "--max-size", "5") == words[:5]
    assert build_vocab(str(corpus), str(more), "--output", str(out), "--max-size", "3") == words[:3]
    assert read_lm_vocabulary(out).words == tuple(words[:3])  # a vocabulary bilm-tf's reader accepts
    assert [p.name for p in out.parent.iterdir()] == ["vocab.txt"]  # no temporary file left behind


@pytest.mark.parametrize(
    "content, argv, message",
    [
        (b"good line\nbad \xff byte\n", (), r"corpus\.txt: line 2 is not UTF-8 \(invalid start byte at byte 4\)"),
        (b"a\n", ("--min-count", "0"), "min_count must be at least 1, got 0"),
        (b"a\n", ("--max-size", "2"), r"max_size must be at least 3 \(the lines <S>, </S>, <UNK>\), got 2"),
    ],
)
def test_build_vocab_errors(tmp_path, content, argv, message):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    out = tmp_path / "vocab.txt"
    with pytest.raises(ValueError, match=message):
        build_vocab(str(corpus), "--output", str(out), *argv)
    assert not out.exists()  # nothing written, not even a partial file
    assert [p.name for p in tmp_path.iterdir()] == ["corpus.txt"]


def test_build_vocab_missing_corpus(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.txt: corpus file not found"):
        build_vocab(str(tmp_path / "missing.txt"), "--output", str(tmp_path / "v.txt"))


# --- sampled softmax ------------------------------------------------------------------------------------------


def test_log_uniform_probabilities_sum_to_one_and_follow_tensorflow_formula():
    for vocabulary_size in (1, 32, 793471):
        ids = torch.arange(vocabulary_size)
        probabilities = log_uniform_probabilities(ids, vocabulary_size)
        assert probabilities.dtype == torch.float32
        assert math.isclose(float(probabilities.double().sum()), 1.0, rel_tol=1e-5)
    assert float(log_uniform_probabilities(torch.tensor([0]), 32)) == np.float32(math.log(2) / math.log(33))
    # 1 - (1 - p)^n, and p * S when no draw was rejected
    p = torch.tensor([0.5, 0.01], dtype=torch.float32)
    torch.testing.assert_close(expected_counts(p, 4, 10), 1 - (1 - p) ** 10, rtol=1e-6, atol=0)
    torch.testing.assert_close(expected_counts(p, 4, 4), p * 4, rtol=0, atol=0)


def test_log_uniform_draws_follow_the_distribution():
    """Frequencies of 400,000 draws over 40 classes are within 5 standard errors of P(k)."""
    generator = torch.Generator().manual_seed(1234)
    n, vocabulary_size = 400_000, 40
    draws = log_uniform_draws(n, vocabulary_size, generator)
    assert int(draws.min()) >= 0 and int(draws.max()) < vocabulary_size
    frequencies = torch.bincount(draws, minlength=vocabulary_size).double() / n
    p = log_uniform_probabilities(torch.arange(vocabulary_size), vocabulary_size).double()
    standard_error = torch.sqrt(p * (1 - p) / n)
    assert bool(((frequencies - p).abs() < 5 * standard_error).all()), (frequencies - p) / standard_error


def test_unique_candidates_are_distinct_seeded_and_counted():
    targets = torch.tensor([0, 5, 31, 31])
    first = sample_log_uniform_candidates(targets, 16, 32, torch.Generator().manual_seed(7))
    again = sample_log_uniform_candidates(targets, 16, 32, torch.Generator().manual_seed(7))
    other = sample_log_uniform_candidates(targets, 16, 32, torch.Generator().manual_seed(8))
    assert first.ids.dtype == torch.int64 and len(set(first.ids.tolist())) == 16
    assert torch.equal(first.ids, again.ids) and first.num_tries == again.num_tries
    assert not torch.equal(first.ids, other.ids)
    assert first.num_tries >= 16
    torch.testing.assert_close(first.sampled_expected_counts,
                               expected_counts(log_uniform_probabilities(first.ids, 32), 16, first.num_tries))
    torch.testing.assert_close(first.true_expected_counts,
                               expected_counts(log_uniform_probabilities(targets, 32), 16, first.num_tries))
    everything = sample_log_uniform_candidates(targets, 32, 32, torch.Generator().manual_seed(7))
    assert sorted(everything.ids.tolist()) == list(range(32))  # num_sampled == range_max: every class
    with pytest.raises(ValueError, match=r"num_sampled must be in 1\.\.32 \(range_max\), got 33"):
        sample_log_uniform_candidates(targets, 33, 32)


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow", reason='comparing with TensorFlow needs pip install "hf-elmo[tf]"')


@pytest.mark.parametrize("vocabulary_size, num_sampled, seed", [(32, 16, 1), (1000, 64, 2), (50000, 512, 3)])
def test_expected_counts_match_tensorflow_sampler(tf, vocabulary_size, num_sampled, seed):
    """For the ids TensorFlow's unique log-uniform sampler drew, one num_tries makes our formulas give every
    expected count TensorFlow returned (sampled ids and true labels), within float32 rounding."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, vocabulary_size, size=(40, 1))
    ids, true_expected, sampled_expected = tf.random.log_uniform_candidate_sampler(
        labels, num_true=1, num_sampled=num_sampled, unique=True, range_max=vocabulary_size, seed=seed)
    ids = torch.from_numpy(ids.numpy())
    assert len(set(ids.tolist())) == num_sampled
    probabilities = log_uniform_probabilities(ids, vocabulary_size)
    tf_counts = torch.from_numpy(sampled_expected.numpy())
    # TensorFlow does not return num_tries: find the one that explains its counts.
    errors = [float(((expected_counts(probabilities, num_sampled, n) - tf_counts) / tf_counts).abs().max())
              for n in range(num_sampled, 40 * num_sampled)]
    num_tries = num_sampled + int(np.argmin(errors))
    assert min(errors) < 1e-6
    assert sorted(errors)[1] > 1e-4  # the fit is one num_tries, not a flat valley
    ours = expected_counts(log_uniform_probabilities(torch.from_numpy(labels[:, 0]), vocabulary_size),
                           num_sampled, num_tries)
    torch.testing.assert_close(ours, torch.from_numpy(true_expected.numpy()[:, 0]), rtol=1e-6, atol=0)


def test_sampling_frequencies_match_tensorflow_sampler(tf):
    """TensorFlow's own log-uniform draws (unique=False) have the frequencies P(k) our sampler draws with."""
    n, vocabulary_size = 200_000, 40
    draws, _, counts = tf.random.log_uniform_candidate_sampler(
        np.zeros((1, 1), dtype=np.int64), num_true=1, num_sampled=n, unique=False, range_max=vocabulary_size, seed=5)
    frequencies = np.bincount(draws.numpy(), minlength=vocabulary_size) / n
    ours = torch.bincount(log_uniform_draws(n, vocabulary_size, torch.Generator().manual_seed(5)),
                          minlength=vocabulary_size).double().numpy() / n
    p = log_uniform_probabilities(torch.arange(vocabulary_size), vocabulary_size).double().numpy()
    standard_error = np.sqrt(p * (1 - p) / n)
    assert (np.abs(frequencies - p) < 5 * standard_error).all()
    assert (np.abs(ours - frequencies) < 5 * np.sqrt(2) * standard_error).all()
    # without unique sampling TensorFlow's expected count is p * num_sampled, our formula's shortcut
    ids = torch.from_numpy(draws.numpy())
    np.testing.assert_allclose(counts.numpy(), expected_counts(log_uniform_probabilities(ids, vocabulary_size), n, n),
                               rtol=1e-6)


@pytest.mark.parametrize("vocabulary_size, num_sampled, rows, dim, dtype", [
    (64, 24, 48, 8, torch.float32), (64, 24, 48, 8, torch.float64), (50000, 1024, 2560, 64, torch.float32)])
def test_sampled_softmax_loss_and_gradients_match_tensorflow(tf, vocabulary_size, num_sampled, rows, dim, dtype):
    """`tf.nn.sampled_softmax_loss` with the same sampled values: losses within 1e-5 relative (seen 6.5e-7 in
    float32), and the gradients of hidden, W and b; the batch has accidental hits (labels among the candidates)."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, dim, generator=generator, dtype=dtype)
    weight = torch.randn(vocabulary_size, dim, generator=generator, dtype=dtype)
    bias = torch.randn(vocabulary_size, generator=generator, dtype=dtype)
    targets = log_uniform_draws(rows, vocabulary_size, generator)  # frequent words: many accidental hits
    candidates = sample_log_uniform_candidates(targets, num_sampled, vocabulary_size, generator)
    assert int((targets[:, None] == candidates.ids[None]).sum()) > 10

    tf_args = [tf.Variable(x.numpy()) for x in (weight, bias, hidden)]
    # TensorFlow subtracts the log expected counts in the logits' dtype
    sampled_values = (candidates.ids.numpy(), candidates.true_expected_counts.double().numpy()[:, None].astype(
        hidden.numpy().dtype), candidates.sampled_expected_counts.double().numpy().astype(hidden.numpy().dtype))
    with tf.GradientTape() as tape:
        tf_loss = tf.nn.sampled_softmax_loss(
            tf_args[0], tf_args[1], targets.numpy()[:, None], tf_args[2], num_sampled, vocabulary_size, num_true=1,
            sampled_values=sampled_values, remove_accidental_hits=True)
        tf_total = tf.reduce_mean(tf_loss)
    tf_gradients = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(tf_total, tf_args)]

    weight.requires_grad_(), bias.requires_grad_(), hidden.requires_grad_()
    loss = sampled_softmax_loss(hidden, weight, bias, targets, candidates)
    assert loss.shape == (rows,) and loss.dtype == dtype
    loss.mean().backward()
    np.testing.assert_allclose(loss.detach().numpy(), tf_loss.numpy(), rtol=1e-5, atol=0)
    for ours, theirs in zip((weight.grad, bias.grad, hidden.grad), tf_gradients):
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-4, atol=1e-6)

    # without removing accidental hits the numbers change (TensorFlow agrees)
    kept = sampled_softmax_loss(hidden, weight, bias, targets, candidates, remove_accidental_hits=False)
    tf_kept = tf.nn.sampled_softmax_loss(
        weight.detach().numpy(), bias.detach().numpy(), targets.numpy()[:, None], hidden.detach().numpy(),
        num_sampled, vocabulary_size, sampled_values=sampled_values, remove_accidental_hits=False)
    np.testing.assert_allclose(kept.detach().numpy(), tf_kept.numpy(), rtol=1e-5, atol=0)
    assert not np.allclose(kept.detach().numpy(), loss.detach().numpy())


def test_sampled_softmax_loss_is_the_full_softmax_when_every_class_is_a_candidate():
    """With all V classes sampled and expected count 1 each (log q = 0), the sampled loss is the full softmax
    cross entropy: an independent reference from the definition."""
    generator = torch.Generator().manual_seed(3)
    hidden, weight, bias = torch.randn(10, 4, generator=generator), torch.randn(12, 4, generator=generator), \
        torch.randn(12, generator=generator)
    targets = torch.randint(0, 12, (10,), generator=generator)
    every = sample_log_uniform_candidates(targets, 12, 12, generator)
    ones = type(every)(every.ids, torch.ones(10), torch.ones(12), every.num_tries)
    full = torch.nn.functional.cross_entropy(hidden @ weight.T + bias, targets, reduction="none")
    torch.testing.assert_close(sampled_softmax_loss(hidden, weight, bias, targets, ones), full, rtol=1e-6, atol=1e-6)


def test_sparse_weight_gradient_equals_dense():
    generator = torch.Generator().manual_seed(4)
    hidden = torch.randn(20, 6, generator=generator)
    targets = torch.randint(0, 100, (20,), generator=generator)
    candidates = sample_log_uniform_candidates(targets, 30, 100, generator)
    gradients = []
    for sparse in (False, True):
        weight = torch.randn(100, 6, generator=torch.Generator().manual_seed(9)).requires_grad_()
        bias = torch.zeros(100, requires_grad=True)
        sampled_softmax_loss(hidden, weight, bias, targets, candidates, sparse_weight_gradient=sparse).sum().backward()
        assert weight.grad.is_sparse == sparse
        gradients.append(weight.grad.to_dense())
    torch.testing.assert_close(gradients[0], gradients[1])
    touched = set(targets.tolist()) | set(candidates.ids.tolist())
    untouched = [i for i in range(100) if i not in touched]
    assert bool((gradients[0][untouched] == 0).all()) and bool(gradients[0][sorted(touched)].abs().sum(1).gt(0).all())


# --- bilm-tf's batches ----------------------------------------------------------------------------------------


def words_of(char_ids: torch.Tensor) -> list[str]:
    return [char_ids_to_word(row) for row in char_ids]


def expected_stream(vocabulary, backward: bool) -> tuple[list[str], list[int]]:
    """bilm-tf's stream of data.txt at batch size 1 from its documentation: (inputs, targets) over all sentences."""
    inputs: list[str] = []
    targets: list[int] = []
    for line in data_lines():
        words = line.split()
        tokens = ["</S>", *words[::-1], "<S>"] if backward else ["<S>", *words, "</S>"]
        inputs += [w[:MAX_CHARACTERS - 2] if w not in ("<S>", "</S>") else w for w in tokens[:-1]]
        targets += vocabulary.ids(tokens[1:])
    return inputs, targets


def test_stream_at_batch_size_1_is_bilm_tf_test_stream(vocabulary, lm_ref):
    """bilm-tf's `test()` at batch_size 1 (unroll_steps 1) scored 139 predictions on data.txt (`stream_losses`):
    the same count here, with the inputs and targets its documentation gives, and the character ids bilm-tf fed
    for a sentence (lm_ref `s0_chars_fwd`/`s0_chars_bwd` are training ids: ours are + 1)."""
    dataset = LMStreamDataset([TRAIN_DATA], vocabulary, batch_size=1, unroll_steps=1,
                              max_characters_per_token=MAX_CHARACTERS, shuffle=False, passes=1)
    batches = list(dataset.iter_batches())
    assert len(batches) == len(lm_ref["stream_losses"]) == 139
    for key, backward in (("", False), ("backward_", True)):
        inputs, targets = expected_stream(vocabulary, backward)
        ours = torch.cat([b[f"{key}input_ids"][0] for b in batches])
        assert words_of(ours) == inputs
        assert torch.cat([b[f"{key}labels"][0] for b in batches]).tolist() == targets
    # data.txt's second line is lm_ref's sentence 0; it starts after the first line's 16 predictions
    assert str(lm_ref["sentences"][0]) == data_lines()[1]
    start, n = 16, len(lm_ref["s0_targets_fwd"])
    forward = torch.cat([b["input_ids"][0] for b in batches[start:start + n]])
    backward = torch.cat([b["backward_input_ids"][0] for b in batches[start:start + n]])
    np.testing.assert_array_equal(forward.numpy(), lm_ref["s0_chars_fwd"][:-1] + 1)
    np.testing.assert_array_equal(backward.numpy(), lm_ref["s0_chars_bwd"][:-1] + 1)
    assert torch.cat([b["labels"][0] for b in batches[start:start + n]]).tolist() == \
        lm_ref["s0_targets_fwd"].tolist() == lm_ref["s0_ids_fwd"][1:].tolist()
    assert torch.cat([b["backward_labels"][0] for b in batches[start:start + n]]).tolist() == \
        lm_ref["s0_targets_bwd"].tolist()


@pytest.fixture(scope="module")
def fixture_lm(lm_folder):
    """bilm-tf's trained fixture LM (dumped weights + the softmax from its checkpoint) in TRAIN mode with dropout
    off: its loss is the training objective with the full softmax (gradients recorded: the training LSTM path)."""
    return ElmoForPreTraining.from_pretrained(lm_folder, dropout=0.0).train()


def stream_losses(fixture_lm, batches) -> torch.Tensor:
    """Per-prediction 0.5 * (forward + backward) NLL of stream batches, each row's LSTM state carried over, from
    the model's stream form (`backward_input_ids`), as `ElmoLMTrainer` runs it."""
    state, losses = None, []
    for batch in batches:
        output = fixture_lm(**batch, state=state, use_cache=True)
        state = tuple(s.detach() for s in output.state)
        per_step = 0.5 * (output.forward_nll + output.backward_nll)
        assert torch.allclose(output.loss, per_step.mean())  # the loss is their mean (no padding in streams)
        losses.append(per_step.detach())
    return torch.stack(losses)  # (batches, rows, steps)


@pytest.mark.parametrize("unroll_steps", [1, 7])
def test_stream_batches_give_bilm_tf_stream_losses(fixture_lm, vocabulary, lm_ref, unroll_steps):
    """bilm-tf's trained LM over our batches, state carried from batch to batch, gives the per-step losses of
    bilm-tf's own `test()` stream (atol 1e-5) and its perplexity 18.69580078125 (rtol 1e-5). With windows of 7
    steps the stream is the same; the incomplete last window (139 = 19 * 7 + 6) is dropped, as bilm-tf drops it."""
    dataset = LMStreamDataset([TRAIN_DATA], vocabulary, batch_size=1, unroll_steps=unroll_steps,
                              max_characters_per_token=MAX_CHARACTERS, shuffle=False, passes=1)
    losses = stream_losses(fixture_lm, dataset.iter_batches()).flatten()
    assert len(losses) == 139 // unroll_steps * unroll_steps
    np.testing.assert_allclose(losses.numpy(), lm_ref["stream_losses"][:len(losses)], rtol=0, atol=1e-5)
    if unroll_steps == 1:
        assert math.isclose(math.exp(float(losses.double().mean())), float(lm_ref["stream_ppl"]), rel_tol=1e-5)
        assert math.isclose(float(lm_ref["stream_ppl"]), 18.69580078125)


def test_stream_rows_follow_bilm_tf_get_batch(vocabulary):
    """At batch size 3 the rows take sentences in row order whenever theirs is used up (bilm-tf's `_get_batch`),
    the forward stream never reads `</S>` and the backward never `<S>`, and the data ends with the first batch a
    row cannot fill."""
    dataset = LMStreamDataset([TRAIN_DATA], vocabulary, batch_size=3, unroll_steps=5,
                              max_characters_per_token=MAX_CHARACTERS, shuffle=False, passes=1)
    batches = list(dataset.iter_batches())
    # By hand from _get_batch: the sentences give 16, 9, 75, 26, 13 predictions. Batch 1: rows take sentences 0,
    # 1, 2; batch 2: row 1 finishes sentence 1 after 4 steps and takes 3; batch 4: row 0 finishes sentence 0 after
    # 1 step and takes 4; batch 6: row 0 finishes sentence 4 after 4 steps, needs a sentence, none is left: the
    # batch is dropped. So 5 batches, row 0 reads sentences 0, 4; row 1 sentences 1, 3; row 2 sentence 2.
    assert len(batches) == 5
    assert all(b["input_ids"].shape == (3, 5, MAX_CHARACTERS) for b in batches)
    assert all(bool((b["attention_mask"] == 1).all()) for b in batches)
    lines = [line.split() for line in data_lines()]
    for row, sentences in enumerate([[0, 4], [1, 3], [2]]):
        for key, backward in (("input_ids", False), ("backward_input_ids", True)):
            read = [w for b in batches for w in words_of(b[key][row])]
            stream = [w for i in sentences
                      for w in (["</S>", *lines[i][::-1]] if backward else ["<S>", *lines[i]])]
            assert read == [w if w in ("<S>", "</S>") else w[:MAX_CHARACTERS - 2] for w in stream][:25]
        targets = [t for b in batches for t in b["labels"][row].tolist()]
        assert targets == [t for i in sentences for t in vocabulary.ids([*lines[i], "</S>"])][:25]


def corpus_files(tmp_path: Path) -> list[Path]:
    """Three files: data.txt, 30 more sentences split over two files (one with a blank line and CRLF ends)."""
    sentences = [s for group in json.loads(MORE_SENTENCES.read_text()) for s in group]
    first, second = tmp_path / "more_a.txt", tmp_path / "more_b.txt"
    first.write_text("\n".join(sentences[:17]) + "\n", encoding="utf-8")
    second.write_bytes(("\r\n".join(sentences[17:25]) + "\r\n\r\n" + "\n".join(sentences[25:])).encode())
    return [TRAIN_DATA, first, second]


def sentence_multiset(tmp_path) -> list[str]:
    return sorted(" ".join(line.split()) for path in corpus_files(tmp_path)
                  for line in path.read_text(encoding="utf-8").split("\n") if line.split())


def forward_sentences(batches, row: int) -> list[str]:
    words = [w for b in batches for w in words_of(b["input_ids"][row])]
    text = " ".join(words).split("<S>")
    return [s.strip() for s in text if s.strip()]


def test_shuffled_stream_is_seeded_and_each_pass_covers_the_corpus(tmp_path, vocabulary):
    files = corpus_files(tmp_path)
    make = lambda seed: LMStreamDataset(files, vocabulary, batch_size=1, unroll_steps=1,  # noqa: E731
                                        max_characters_per_token=50, seed=seed, passes=1)
    first, again, other = (list(make(seed).iter_batches()) for seed in (11, 11, 12))
    assert len(first) == len(again) and all(torch.equal(a[k], b[k]) for a, b in zip(first, again) for k in a)
    assert not all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, other))
    # one pass at batch size 1, one step a batch: every sentence exactly once (the blank line skipped)
    seen = forward_sentences(first, 0)
    assert sorted(seen) == sentence_multiset(tmp_path) and len(seen) == 35
    in_file_order = [" ".join(line.split()) for path in files for line in path.read_text().split("\n")
                     if line.split()]
    assert seen != in_file_order  # shuffled
    # the two directions read the sentences in different orders (bilm-tf's two datasets shuffle separately)
    backward_first = [w for b in first[:30] for w in words_of(b["backward_input_ids"][0])]
    forward_first = [w for b in first[:30] for w in words_of(b["input_ids"][0])]
    assert sorted(backward_first) != sorted(forward_first)


def test_stream_resumes_after_7_batches_exactly(tmp_path, vocabulary):
    """Iterate 7 batches, save the position (through JSON), restore it into a new dataset: the batches that
    follow are those of an uninterrupted run, across file and pass boundaries, with shuffling."""
    files = corpus_files(tmp_path)
    make = lambda: LMStreamDataset(files, vocabulary, batch_size=3, unroll_steps=4,  # noqa: E731
                                   max_characters_per_token=MAX_CHARACTERS, seed=5, passes=3)
    uninterrupted = list(make().iter_batches())
    assert len(uninterrupted) > 40  # three passes: the resumed part crosses files and passes

    interrupted = make()
    head = [batch for _, batch in zip(range(7), interrupted.iter_batches())]
    state = json.loads(json.dumps(interrupted.state_dict()))
    del interrupted
    resumed = make()
    resumed.load_state_dict(state)
    tail = list(resumed.iter_batches())
    assert len(head) + len(tail) == len(uninterrupted)
    for ours, reference in zip(head + tail, uninterrupted):
        assert ours.keys() == reference.keys()
        assert all(torch.equal(ours[key], reference[key]) for key in ours)

    # a loader that read ahead: the position after batch 7 is still available after 9 were handed out
    ahead = make()
    batches = ahead.iter_batches()
    for _ in range(9):
        next(batches)
    again = make()
    again.load_state_dict(ahead.state_dict(batches=7))
    assert all(torch.equal(a[k], b[k]) for a, b in zip(again.iter_batches(), uninterrupted[7:]) for k in a)
    with pytest.raises(ValueError, match="position after 30 batches is not kept"):
        ahead.state_dict(batches=30)


def test_stream_resume_refuses_other_settings(tmp_path, vocabulary):
    files = corpus_files(tmp_path)
    dataset = LMStreamDataset(files, vocabulary, batch_size=3, unroll_steps=4, seed=5)
    state = dataset.state_dict()
    other = LMStreamDataset(files, vocabulary, batch_size=2, unroll_steps=4, seed=5)
    with pytest.raises(ValueError, match="the saved data position is for batch_size 3, this dataset has 2"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="not an LMStreamDataset state"):
        other.load_state_dict({"batches": 3})


def test_endless_stream_keeps_going(vocabulary):
    """`passes=None` (bilm-tf's training): the data never ends; pass after pass."""
    dataset = LMStreamDataset([TRAIN_DATA], vocabulary, batch_size=2, unroll_steps=20,
                              max_characters_per_token=MAX_CHARACTERS, seed=0)
    batches = [batch for _, batch in zip(range(40), dataset.iter_batches())]
    assert len(batches) == 40  # 40 * 2 * 20 = 1600 predictions: more than 11 passes over 139
    assert dataset.state_dict()["directions"][0]["reader"]["pass"] >= 10


def test_endless_stream_over_blank_files_is_an_error(tmp_path, vocabulary):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\t\n", encoding="utf-8")
    (tmp_path / "empty.txt").write_bytes(b"")
    for shuffle in (False, True):
        dataset = LMStreamDataset([blank, tmp_path / "empty.txt"], vocabulary, batch_size=2, unroll_steps=3,
                                  shuffle=shuffle)
        with pytest.raises(ValueError, match=r"blank\.txt, .*empty\.txt: no sentences \(every line is blank\)"):
            next(dataset.iter_batches())
    assert list(LMStreamDataset([blank], vocabulary, batch_size=2, unroll_steps=3, passes=1).iter_batches()) == []


def test_non_utf8_corpus_line_is_named(tmp_path, vocabulary):
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(b"fine words\nmore fine words\n\xc3( broken\n")
    for shuffle in (False, True):
        dataset = LMStreamDataset([corpus], vocabulary, batch_size=1, unroll_steps=3, shuffle=shuffle, passes=1)
        with pytest.raises(ValueError, match=r"bad\.txt: line 3 is not UTF-8"):
            list(dataset.iter_batches())


def test_dataloader_with_collator_gives_the_batches(tmp_path, vocabulary):
    """`DataLoader(dataset, batch_size, collate_fn=ElmoLMDataCollator())` over the rows gives iter_batches()."""
    files = corpus_files(tmp_path)
    make = lambda: LMStreamDataset(files, vocabulary, batch_size=3, unroll_steps=4, seed=2, passes=1)  # noqa: E731
    loader = torch.utils.data.DataLoader(make(), batch_size=3, collate_fn=ElmoLMDataCollator())
    reference = list(make().iter_batches())
    loaded = list(loader)
    assert len(loaded) == len(reference)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(loaded, reference) for k in b)
    worker_loader = torch.utils.data.DataLoader(make(), batch_size=3, num_workers=1, collate_fn=ElmoLMDataCollator())
    with pytest.raises(ValueError, match="num_workers=0"):
        next(iter(worker_loader))


# --- sentence batches and the collator ------------------------------------------------------------------------


def test_sentence_batches_are_lm_ref_sentences(tmp_path, vocabulary, lm_ref):
    """Each sentence its own row: the ids of lm_ref's 4 sentences (bilm-tf's per-sentence graph inputs, zero
    state), padded with zero words and -100 labels."""
    corpus = tmp_path / "sentences.txt"
    corpus.write_text("\n".join(str(s) for s in lm_ref["sentences"]) + "\n", encoding="utf-8")
    batch = next(LMSentenceDataset([corpus], vocabulary, MAX_CHARACTERS).iter_batches(batch_size=4))
    lengths = [len(lm_ref[f"s{k}_targets_fwd"]) for k in range(4)]
    assert batch["input_ids"].shape == (4, max(lengths), MAX_CHARACTERS)
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for k, n in enumerate(lengths):
        np.testing.assert_array_equal(batch["input_ids"][k, :n].numpy(), lm_ref[f"s{k}_chars_fwd"][:-1] + 1)
        np.testing.assert_array_equal(batch["backward_input_ids"][k, :n].numpy(), lm_ref[f"s{k}_chars_bwd"][:-1] + 1)
        assert batch["labels"][k, :n].tolist() == lm_ref[f"s{k}_targets_fwd"].tolist()
        assert batch["backward_labels"][k, :n].tolist() == lm_ref[f"s{k}_targets_bwd"].tolist()
        assert bool((batch["input_ids"][k, n:] == 0).all()) and bool((batch["labels"][k, n:] == LABEL_PAD_ID).all())


def test_sentence_batches_give_lm_ref_per_sentence_losses(tmp_path, fixture_lm, vocabulary, lm_ref):
    """The training objective over padded sentence batches from zero state gives bilm-tf's per-token losses."""
    corpus = tmp_path / "sentences.txt"
    corpus.write_text("\n".join(str(s) for s in lm_ref["sentences"]), encoding="utf-8")
    batch = next(LMSentenceDataset([corpus], vocabulary, MAX_CHARACTERS).iter_batches(batch_size=4))
    output = fixture_lm(**batch)
    for k in range(4):
        n = int(batch["attention_mask"][k].sum())
        np.testing.assert_allclose(output.forward_nll[k, :n].detach().numpy(), lm_ref[f"s{k}_nll_fwd"], rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(output.backward_nll[k, :n].detach().numpy(), lm_ref[f"s{k}_nll_bwd"],
                                   rtol=1e-5, atol=1e-6)
        assert not output.forward_nll[k, n:].any()  # padding is not scored
    expected = np.mean([np.concatenate([lm_ref[f"s{k}_nll_fwd"] for k in range(4)]).mean(),
                        np.concatenate([lm_ref[f"s{k}_nll_bwd"] for k in range(4)]).mean()])
    assert float(output.loss.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_collator_pads_and_checks(vocabulary):
    collate = ElmoLMDataCollator(pad_to_multiple_of=4)
    chars = torch.tensor([word_to_char_ids(w, 6) for w in ["<S>", "a", "b"]])
    short = {"input_ids": chars[:2], "backward_input_ids": chars[:2], "labels": torch.tensor([3, 4]),
             "backward_labels": torch.tensor([5, 0])}
    longer = {"input_ids": chars, "backward_input_ids": chars.flip(0), "labels": torch.tensor([3, 4, 1]),
              "backward_labels": torch.tensor([4, 3, 0])}
    batch = collate([short, longer])
    assert batch["input_ids"].shape == (2, 4, 6) and batch["input_ids"].dtype == torch.int64
    assert batch["labels"].tolist() == [[3, 4, -100, -100], [3, 4, 1, -100]]
    assert batch["backward_labels"].tolist() == [[5, 0, -100, -100], [4, 3, 0, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 0]]
    assert torch.equal(batch["backward_input_ids"][1, :3], chars.flip(0))
    assert bool((batch["input_ids"][0, 2:] == 0).all())
    with pytest.raises(ValueError, match="example 0: input_ids has 3 steps but labels has 2"):
        collate([{**short, "input_ids": chars}])
