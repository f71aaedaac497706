"""
The chunked vocabulary softmax (hf_elmo.lm_softmax) against a full log_softmax and against bilm-tf's own numbers.

lm_ref.npz (tests/fixtures/bilm-tf-lm/) holds, per sentence and direction, the top LSTM output bilm-tf fed to its
softmax (`h_top_*`), the full-softmax log-probabilities TensorFlow computed from it (`logp_*`) and the per-token
negative log-likelihood of the targets (`nll_*`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hf_elmo.lm_softmax import log_normalizer, sample_ids, target_log_probs, top_k_log_probs

LM_REF = Path(__file__).parent / "fixtures" / "bilm-tf-lm" / "lm_ref.npz"
# Vocabulary chunk sizes for 5 tokens: 1 word, 3 words (not dividing 97), 20 words, all at once.
MAX_LOGITS = [5, 15, 100, 10**9]


def random_softmax(seed: int, n: int = 5, vocabulary: int = 97, width: int = 8):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, width, generator=generator, dtype=torch.float64) * 2
    weight = torch.randn(vocabulary, width, generator=generator, dtype=torch.float64)
    bias = torch.randn(vocabulary, generator=generator, dtype=torch.float64)
    return hidden, weight, bias


@pytest.mark.parametrize("max_logits", MAX_LOGITS)
def test_chunked_log_probs_equal_full_log_softmax(max_logits):
    hidden, weight, bias = random_softmax(0)
    full = torch.log_softmax(hidden @ weight.T + bias, dim=-1)
    targets = torch.tensor([0, 96, 3, 50, 3])
    chunked = target_log_probs(hidden, weight, bias, targets, max_logits=max_logits)
    assert chunked.dtype == torch.float64
    torch.testing.assert_close(chunked, full[torch.arange(5), targets], rtol=0, atol=1e-12)
    torch.testing.assert_close(log_normalizer(hidden, weight, bias, max_logits=max_logits),
                               torch.logsumexp(hidden @ weight.T + bias, dim=-1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("max_logits", MAX_LOGITS)
@pytest.mark.parametrize("k", [1, 5, 97])
def test_chunked_top_k_equals_full_top_k(max_logits, k):
    hidden, weight, bias = random_softmax(1)
    full_values, full_ids = torch.log_softmax(hidden @ weight.T + bias, dim=-1).topk(k, dim=-1)
    values, ids = top_k_log_probs(hidden, weight, bias, k, max_logits=max_logits)
    assert torch.equal(ids, full_ids)
    torch.testing.assert_close(values, full_values, rtol=0, atol=1e-12)


def test_bilm_tf_log_probs_and_nll_replayed(lm_ref):
    """bilm-tf's full-softmax log-probabilities and per-token NLL, from its own top-layer outputs (float32)."""
    weight, bias = torch.from_numpy(lm_ref["softmax_W"]), torch.from_numpy(lm_ref["softmax_b"])
    vocabulary = weight.shape[0]
    worst_nll = worst_logp = 0.0
    for k in range(len(lm_ref["sentences"])):
        for direction in ("fwd", "bwd"):
            hidden = torch.from_numpy(lm_ref[f"s{k}_h_top_{direction}"])
            targets = torch.from_numpy(lm_ref[f"s{k}_targets_{direction}"]).long()
            nll = -target_log_probs(hidden, weight, bias, targets, max_logits=3 * hidden.shape[0]).numpy()
            expected = lm_ref[f"s{k}_nll_{direction}"]
            np.testing.assert_allclose(nll, expected, rtol=1e-5, atol=0)
            worst_nll = max(worst_nll, float(np.max(np.abs(nll - expected) / np.abs(expected))))
            # Every row of TF's log-softmax, through the top-k over the whole vocabulary.
            values, ids = top_k_log_probs(hidden, weight, bias, vocabulary, max_logits=7 * hidden.shape[0])
            logp = np.take_along_axis(lm_ref[f"s{k}_logp_{direction}"], ids.numpy(), axis=1)
            np.testing.assert_allclose(values.numpy(), logp, rtol=1e-5, atol=1e-6)
            worst_logp = max(worst_logp, float(np.max(np.abs(values.numpy() - logp))))
        # bilm-tf's total_loss per step: the mean of the two directions.
        np.testing.assert_allclose(0.5 * (lm_ref[f"s{k}_nll_fwd"] + lm_ref[f"s{k}_nll_bwd"]), lm_ref[f"s{k}_loss"],
                                   rtol=1e-6)
    assert worst_nll < 1e-5 and worst_logp < 1e-5


def test_low_precision_inputs_normalise_in_float32(lm_ref):
    hidden = torch.from_numpy(lm_ref["s0_h_top_fwd"])
    weight, bias = torch.from_numpy(lm_ref["softmax_W"]), torch.from_numpy(lm_ref["softmax_b"])
    targets = torch.from_numpy(lm_ref["s0_targets_fwd"]).long()
    low = target_log_probs(hidden.bfloat16(), weight.bfloat16(), bias.bfloat16(), targets, max_logits=9)
    assert low.dtype == torch.float32
    # Only the bfloat16 rounding of the inputs remains (about 3 significant digits).
    np.testing.assert_allclose(-low.numpy(), lm_ref["s0_nll_fwd"], rtol=0.05, atol=0.05)


def test_sampling_follows_the_softmax():
    """Gumbel-max draws in chunks: frequencies match the softmax; a tiny temperature is the argmax."""
    hidden, weight, bias = random_softmax(2, n=1, vocabulary=11)
    probabilities = torch.softmax(hidden @ weight.T + bias, dim=-1)[0]
    generator = torch.Generator().manual_seed(0)
    draws = 20000
    counts = torch.zeros(11, dtype=torch.float64)
    repeated = hidden.expand(draws, -1)
    ids = sample_ids(repeated, weight, bias, generator=generator, max_logits=draws * 4)
    counts.index_add_(0, ids, torch.ones(draws, dtype=torch.float64))
    # Binomial standard error is at most sqrt(0.25 / 20000) = 0.0035; 5 of them.
    torch.testing.assert_close(counts / draws, probabilities, rtol=0, atol=0.018)
    argmax = (hidden @ weight.T + bias).argmax(dim=-1)
    assert torch.equal(sample_ids(hidden, weight, bias, temperature=1e-6, generator=generator, max_logits=3), argmax)
    # A high temperature flattens the distribution towards uniform.
    hot = sample_ids(repeated, weight, bias, temperature=1e6, generator=generator, max_logits=draws * 5)
    hot_counts = torch.bincount(hot, minlength=11).double() / draws
    torch.testing.assert_close(hot_counts, torch.full((11,), 1 / 11, dtype=torch.float64), rtol=0, atol=0.02)


def test_bad_arguments_are_named():
    hidden, weight, bias = random_softmax(3)
    with pytest.raises(ValueError, match=r"targets must be vocabulary ids in \[0, 97\)"):
        target_log_probs(hidden, weight, bias, torch.tensor([0, 1, 2, 3, 97]))
    with pytest.raises(ValueError, match=r"targets has shape \(4,\), expected \(5,\)"):
        target_log_probs(hidden, weight, bias, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"do not fit together"):
        log_normalizer(hidden, weight[:, :4], bias)
    with pytest.raises(ValueError, match=r"k must be in \[1, 97\]"):
        top_k_log_probs(hidden, weight, bias, 98)
    with pytest.raises(ValueError, match=r"temperature must be positive"):
        sample_ids(hidden, weight, bias, temperature=0.0)
