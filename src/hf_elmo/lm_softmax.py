"""
The biLM's output softmax over a large word vocabulary, computed in vocabulary chunks.

The Original model's softmax has 793,471 words: the logits of a batch of tokens over all of them (tokens x
vocabulary) would not fit in memory, so every function here walks the vocabulary in chunks of at most `max_logits`
logits at a time and keeps only per-token running results (a log-sum-exp, the target's logit, a top-k, a sampled
id). The results equal a full `log_softmax` (the chunks only reorder a sum of exponentials).

Training uses a sampled softmax instead (`sampled_softmax_loss`, the second part of this file): bilm-tf's
objective, which reads only the rows of the targets and of a few thousand sampled candidates.

Travels as remote code with modeling_elmo.py: it imports only torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Logits held at once (tokens x vocabulary chunk) when `max_logits` is not given: 2**24 float32 logits are 64 MiB.
DEFAULT_MAX_LOGITS = 2**24
# On CPU, 8 MiB chunks stay in cache between the GEMM that writes them and the log-sum-exp that reads them: the
# whole softmax then runs at about 92 % of the machine's GEMM peak, against about 60 % with 64 MiB chunks
# (benchmarks/bench_lm_perplexity.py, 2 cores).
CPU_MAX_LOGITS = 2**21


def _vocabulary_chunks(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, max_logits: int | None
) -> tuple[torch.dtype, int]:
    """
    Check the shapes; return the accumulation dtype (float32 at least) and the vocabulary chunk size, from
    `max_logits` or, if None, the device's default (`CPU_MAX_LOGITS` on CPU, else `DEFAULT_MAX_LOGITS`).
    """
    if max_logits is None:
        max_logits = CPU_MAX_LOGITS if hidden.device.type == "cpu" else DEFAULT_MAX_LOGITS
    if hidden.dim() != 2 or weight.dim() != 2 or bias.dim() != 1:
        raise ValueError(
            f"expected hidden (N, P), weight (V, P), bias (V,); got {tuple(hidden.shape)}, {tuple(weight.shape)}, "
            f"{tuple(bias.shape)}"
        )
    if hidden.shape[1] != weight.shape[1] or bias.shape[0] != weight.shape[0]:
        raise ValueError(
            f"hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)} and bias {tuple(bias.shape)} do not fit "
            f"together: expected (N, P), (V, P), (V,)"
        )
    if max_logits < 1:
        raise ValueError(f"max_logits must be positive, got {max_logits}")
    # Low-precision models still normalise in float32: a bfloat16 sum over 800k exponentials loses the target.
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    return dtype, max(1, max_logits // max(1, hidden.shape[0]))


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, start: int, end: int,
                  dtype: torch.dtype) -> torch.Tensor:
    """Logits of vocabulary rows [start, end): (N, end - start), `hidden @ weight[start:end].T + bias[start:end]`."""
    return torch.addmm(bias[start:end].to(dtype), hidden.to(dtype), weight[start:end].to(dtype).T)


def log_normalizer(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, max_logits: int | None = None
) -> torch.Tensor:
    """
    `logsumexp(hidden @ weight.T + bias)` over the vocabulary, per token.

    Args:
        hidden: (N, P) top-layer outputs of one direction.
        weight: (V, P) softmax weight; bias: (V,).
    Returns:
        (N,) in float32 (float64 for float64 inputs).
    """
    dtype, chunk = _vocabulary_chunks(hidden, weight, bias, max_logits)
    total = torch.full((hidden.shape[0],), float("-inf"), dtype=dtype, device=hidden.device)
    for start in range(0, weight.shape[0], chunk):
        logits = _chunk_logits(hidden, weight, bias, start, start + chunk, dtype)
        total = torch.logaddexp(total, torch.logsumexp(logits, dim=1))
    return total


def target_log_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    targets: torch.Tensor,
    max_logits: int | None = None,
) -> torch.Tensor:
    """
    `log_softmax(hidden @ weight.T + bias)[n, targets[n]]` per token: the negative of bilm-tf's per-token loss.

    Args:
        hidden: (N, P); weight: (V, P); bias: (V,); targets: (N,) vocabulary ids in [0, V).
    Returns:
        (N,) log-probabilities, float32 (float64 for float64 inputs).
    """
    dtype, chunk = _vocabulary_chunks(hidden, weight, bias, max_logits)
    if targets.shape != (hidden.shape[0],):
        raise ValueError(f"targets has shape {tuple(targets.shape)}, expected ({hidden.shape[0]},) like hidden's rows")
    vocabulary_size = weight.shape[0]
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocabulary_size):
        raise ValueError(f"targets must be vocabulary ids in [0, {vocabulary_size}), got {targets.tolist()}")
    targets = targets.to(device=hidden.device, dtype=torch.long)
    total = torch.full((hidden.shape[0],), float("-inf"), dtype=dtype, device=hidden.device)
    target_logit = torch.zeros((hidden.shape[0],), dtype=dtype, device=hidden.device)
    for start in range(0, vocabulary_size, chunk):
        logits = _chunk_logits(hidden, weight, bias, start, start + chunk, dtype)
        total = torch.logaddexp(total, torch.logsumexp(logits, dim=1))
        # The target's logit is taken from the same logits the normaliser sums, so both round alike.
        in_chunk = (targets >= start) & (targets < start + logits.shape[1])
        local = (targets - start).clamp(0, logits.shape[1] - 1)
        target_logit = torch.where(in_chunk, logits.gather(1, local[:, None]).squeeze(1), target_logit)
    return target_logit - total


def top_k_log_probs(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, k: int, max_logits: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The k most probable vocabulary ids per token and their log-probabilities, most probable first.

    Args:
        hidden: (N, P); weight: (V, P); bias: (V,); k: 1 <= k <= V.
    Returns:
        (values, ids): (N, k) log-probabilities (float32, or float64 for float64 inputs) and (N, k) int64 ids.
    """
    dtype, chunk = _vocabulary_chunks(hidden, weight, bias, max_logits)
    vocabulary_size = weight.shape[0]
    if not 1 <= k <= vocabulary_size:
        raise ValueError(f"k must be in [1, {vocabulary_size}] (the vocabulary size), got {k}")
    # At least k logits per chunk, so the merge below always has k candidates.
    chunk = max(chunk, k)
    n = hidden.shape[0]
    total = torch.full((n,), float("-inf"), dtype=dtype, device=hidden.device)
    best = torch.empty((n, 0), dtype=dtype, device=hidden.device)
    best_ids = torch.empty((n, 0), dtype=torch.long, device=hidden.device)
    for start in range(0, vocabulary_size, chunk):
        logits = _chunk_logits(hidden, weight, bias, start, start + chunk, dtype)
        total = torch.logaddexp(total, torch.logsumexp(logits, dim=1))
        ids = torch.arange(start, start + logits.shape[1], device=hidden.device).expand(n, -1)
        candidates, candidate_ids = torch.cat([best, logits], dim=1), torch.cat([best_ids, ids], dim=1)
        best, positions = candidates.topk(min(k, candidates.shape[1]), dim=1)
        best_ids = candidate_ids.gather(1, positions)
    return best - total[:, None], best_ids


def sample_ids(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    max_logits: int | None = None,
) -> torch.Tensor:
    """
    One vocabulary id per token drawn from `softmax((hidden @ weight.T + bias) / temperature)`.

    Uses the Gumbel-max trick (argmax of logits / temperature + Gumbel noise is an exact draw), which needs no
    normaliser and so works chunk by chunk. The draw depends on `generator`'s state and on the chunk size.

    Args:
        hidden: (N, P); weight: (V, P); bias: (V,); temperature > 0.
    Returns:
        (N,) int64 ids.
    """
    dtype, chunk = _vocabulary_chunks(hidden, weight, bias, max_logits)
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    n = hidden.shape[0]
    best = torch.full((n,), float("-inf"), dtype=dtype, device=hidden.device)
    best_ids = torch.zeros((n,), dtype=torch.long, device=hidden.device)
    for start in range(0, weight.shape[0], chunk):
        logits = _chunk_logits(hidden, weight, bias, start, start + chunk, dtype) / temperature
        # Gumbel(0, 1) noise is -log(E) with E ~ Exponential(1).
        noise = torch.empty_like(logits).exponential_(generator=generator).log_().neg_()
        values, positions = (logits + noise).max(dim=1)
        better = values > best
        best = torch.where(better, values, best)
        best_ids = torch.where(better, positions + start, best_ids)
    return best_ids

# ---------------------------------------------------------------------------------------------------- sampled softmax
# Sampled softmax exactly as bilm-tf trains with it: TensorFlow's `tf.nn.sampled_softmax_loss` with its default
# candidate sampler, in PyTorch.
#
# bilm-tf (`bilm/training.py`, `LanguageModel._build_loss`) calls, once per direction,
# `tf.nn.sampled_softmax_loss(softmax_W, softmax_b, next_token_id_flat, lstm_output_flat, n_negative_samples_batch,
# n_tokens_vocab, num_true=1)`, so TensorFlow's defaults apply: `log_uniform_candidate_sampler(unique=True,
# range_max=n_tokens_vocab)` draws `n_negative_samples_batch` distinct candidates shared by every row of the batch
# (batch_size * unroll_steps rows), `remove_accidental_hits=True`, and the logits have the log of each class's
# expected count subtracted. Each direction draws its own candidates (two calls). The vocabulary being sorted by
# descending frequency is what makes the log-uniform (Zipfian) proposal a good one.
#
# Facts from TensorFlow's source (`core/kernels/range_sampler.cc`, `python/ops/nn_impl.py::_compute_sampled_logits`):
#
# - one draw: `floor(exp(u * log(V + 1))) - 1` with `u` uniform in [0, 1) (double precision), modulo V; class k
#   has probability `P(k) = log((k + 2) / (k + 1)) / log(V + 1)` (computed in double, returned as float32);
# - unique sampling draws until `num_sampled` distinct values came up, counting the draws (`num_tries`), and keeps
#   the distinct values in the order they first came up;
# - expected count of class k (for the sampled ids and the true labels alike): `P(k) * num_sampled` when
#   `num_tries == num_sampled`, otherwise `1 - (1 - P(k)) ** num_tries`, computed as
#   `-expm1(num_tries * log1p(-P(k)))` in float32;
# - logits: true `h . W[y] + b[y] - log(expected(y))`, sampled `h . W[s] + b[s] - log(expected(s))`, a sampled
#   candidate equal to the row's label gets `-FLT_MAX` added (an "accidental hit"); the loss of a row is the
#   softmax cross entropy with the true logit as the one label: `logsumexp([true, sampled...]) - true`.


@dataclass(frozen=True)
class SampledCandidates:
    """
    One draw of the log-uniform candidate sampler (TensorFlow's `sampled_values` triple, plus `num_tries`).

    ids: `(S,)` int64, distinct, in the order they were first drawn.
    true_expected_counts: `(N,)` float32, the expected count of each row's label.
    sampled_expected_counts: `(S,)` float32, the expected count of each sampled id.
    num_tries: how many draws it took to get S distinct ids.
    """

    ids: torch.Tensor
    true_expected_counts: torch.Tensor
    sampled_expected_counts: torch.Tensor
    num_tries: int


def log_uniform_probabilities(ids: torch.Tensor, range_max: int) -> torch.Tensor:
    """TensorFlow's `LogUniformSampler::Probability`: `log((k + 2) / (k + 1)) / log(range_max + 1)`, float32,
    same shape as `ids`."""
    k = ids.to(torch.float64)
    return (torch.log((k + 2.0) / (k + 1.0)) / math.log1p(range_max)).to(torch.float32)


def expected_counts(probabilities: torch.Tensor, num_sampled: int, num_tries: int) -> torch.Tensor:
    """
    TensorFlow's `ExpectedCountHelper`: how often a class of per-draw probability p is expected among the sampled
    candidates, `1 - (1 - p) ** num_tries` (float32, computed stably), or `p * num_sampled` when no draw was
    rejected (`num_tries == num_sampled`, always the case without unique sampling).
    """
    p = probabilities.to(torch.float32)
    if num_tries == num_sampled:
        return p * num_sampled
    return -torch.expm1(num_tries * torch.log1p(-p))


def log_uniform_draws(count: int, range_max: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`(count,)` int64 independent draws from the log-uniform distribution over `[0, range_max)`, as TensorFlow's
    `LogUniformSampler::Sample` makes them (uniforms in double precision; the modulo only guards round-off)."""
    uniforms = torch.rand(count, generator=generator, dtype=torch.float64)
    return (torch.exp(uniforms * math.log1p(range_max)).to(torch.int64) - 1) % range_max


def sample_log_uniform_candidates(
    targets: torch.Tensor, num_sampled: int, range_max: int, generator: torch.Generator | None = None
) -> SampledCandidates:
    """
    TensorFlow's `log_uniform_candidate_sampler(true_classes, num_true=1, num_sampled, unique=True, range_max)`:
    draw until `num_sampled` distinct ids came up, and the expected counts of the targets and the sampled ids.

    The draws are made on the CPU from `generator` (seed it for reproducible training: the same generator state
    gives the same candidates), in blocks, so the generator advances past the last draw needed; the result is on
    `targets`' device.

    Args:
        targets: `(N,)` int64 class ids of the rows (the words to predict).
        num_sampled: distinct candidates to draw (bilm-tf's `n_negative_samples_batch`), at most `range_max`.
        range_max: the number of classes (the vocabulary size, bilm-tf's `n_tokens_vocab`).
    """
    if not 0 < num_sampled <= range_max:
        raise ValueError(f"num_sampled must be in 1..{range_max} (range_max), got {num_sampled}")
    draws = torch.empty(0, dtype=torch.int64)
    block = 2 * num_sampled + 64
    while True:
        draws = torch.cat([draws, log_uniform_draws(block, range_max, generator)])
        # The position of each distinct value's first draw; the num_sampled earliest are TensorFlow's picks.
        values, inverse = torch.unique(draws, return_inverse=True)
        positions = torch.arange(len(draws))
        first = torch.full((len(values),), len(draws), dtype=torch.int64).scatter_reduce_(
            0, inverse, positions, reduce="amin")
        if len(values) >= num_sampled:
            picked = torch.sort(first).values[:num_sampled]
            break
        block *= 2
    num_tries = int(picked[-1]) + 1
    ids = draws[picked]
    device = targets.device
    return SampledCandidates(
        ids=ids.to(device),
        true_expected_counts=expected_counts(
            log_uniform_probabilities(targets.detach().cpu(), range_max), num_sampled, num_tries).to(device),
        sampled_expected_counts=expected_counts(
            log_uniform_probabilities(ids, range_max), num_sampled, num_tries).to(device),
        num_tries=num_tries,
    )


def sampled_softmax_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    targets: torch.Tensor,
    candidates: SampledCandidates,
    remove_accidental_hits: bool = True,
    sparse_weight_gradient: bool = False,
) -> torch.Tensor:
    """
    Per-row sampled softmax loss, `tf.nn.sampled_softmax_loss(weight, bias, targets[:, None], hidden, S, V,
    num_true=1, sampled_values=(ids, true_expected, sampled_expected), remove_accidental_hits)`.

    Only the rows of `weight` / `bias` for the targets and the S candidates are read: the cost is
    O(N * S * P), never O(N * V * P). Logits are computed in `hidden`'s dtype, the loss in float32 (float64 for
    float64 inputs).

    Args:
        hidden: `(N, P)` LSTM outputs (bilm-tf's `lstm_output_flat`).
        weight: `(V, P)` the softmax weight (`nn.Linear(P, V).weight`).
        bias: `(V,)` the softmax bias.
        targets: `(N,)` int64 class ids to predict.
        candidates: `sample_log_uniform_candidates(targets, S, V)`; the true expected counts are the targets'.
        remove_accidental_hits: a candidate equal to a row's target does not compete with it in that row.
        sparse_weight_gradient: `weight`'s gradient as a sparse tensor with only the N + S rows read (for an
            optimizer that takes sparse gradients, such as `torch.optim.Adagrad`, bilm-tf's optimizer), instead
            of a dense (V, P) one.
    Returns:
        `(N,)` losses (bilm-tf averages them over the batch).
    """
    n_rows = targets.shape[0]
    all_ids = torch.cat([targets, candidates.ids])
    rows = F.embedding(all_ids, weight, sparse=sparse_weight_gradient).to(hidden.dtype)  # (N + S, P)
    row_bias = bias[all_ids].to(hidden.dtype)
    loss_dtype = torch.promote_types(hidden.dtype, torch.float32)
    true_logits = ((hidden * rows[:n_rows]).sum(dim=1) + row_bias[:n_rows]).to(loss_dtype) - torch.log(
        candidates.true_expected_counts).to(loss_dtype)  # (N,)
    # The log expected counts are per column: folded into the GEMM's bias, the (N, S) logits take one pass.
    column_bias = row_bias[n_rows:] - torch.log(candidates.sampled_expected_counts).to(hidden.dtype)
    sampled_logits = torch.addmm(column_bias, hidden, rows[n_rows:].T).to(loss_dtype)  # (N, S)
    if remove_accidental_hits:
        # A row's label is at most one of the S distinct candidates: find it by a search, not an (N, S) compare.
        order = torch.argsort(candidates.ids)
        sorted_ids = candidates.ids[order]
        position = torch.searchsorted(sorted_ids, targets).clamp(max=len(sorted_ids) - 1)
        hit_rows = torch.nonzero(sorted_ids[position] == targets).squeeze(1)
        # In place: the GEMM's backward does not read its output.
        sampled_logits.index_put_((hit_rows, order[position[hit_rows]]),
                                  torch.tensor(torch.finfo(loss_dtype).min, dtype=loss_dtype, device=hidden.device))
    return _TrueClassCrossEntropy.apply(true_logits, sampled_logits)


class _TrueClassCrossEntropy(torch.autograd.Function):
    """
    `logsumexp([true, sampled...]) - true` per row, `true` `(N,)` and `sampled` `(N, S)`, with the softmax kept
    from the forward for the backward: over the (N, S) logits, which dominate the sampled softmax's memory
    traffic, it reads them twice and writes one buffer, and the backward scales that buffer in place (autograd's
    logsumexp goes over them several times more).
    """

    @staticmethod
    def forward(ctx, true_logits: torch.Tensor, sampled_logits: torch.Tensor) -> torch.Tensor:
        shift = torch.maximum(sampled_logits.amax(dim=1), true_logits)  # (N,)
        exp_sampled = torch.sub(sampled_logits, shift[:, None]).exp_()  # (N, S)
        exp_true = torch.exp(true_logits - shift)
        normalizer = exp_sampled.sum(dim=1) + exp_true
        ctx.save_for_backward(exp_sampled, exp_true, normalizer)
        return torch.log(normalizer) + shift - true_logits

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        exp_sampled, exp_true, normalizer = ctx.saved_tensors
        scale = grad / normalizer
        # d/dtrue = p(true) - 1, d/dsampled = p(sampled): the softmax times the incoming gradient.
        return exp_true * scale - grad, exp_sampled.mul_(scale[:, None])


__all__ = [
    "CPU_MAX_LOGITS",
    "DEFAULT_MAX_LOGITS",
    "SampledCandidates",
    "expected_counts",
    "log_normalizer",
    "log_uniform_draws",
    "log_uniform_probabilities",
    "sample_ids",
    "sample_log_uniform_candidates",
    "sampled_softmax_loss",
    "target_log_probs",
    "top_k_log_probs",
]
