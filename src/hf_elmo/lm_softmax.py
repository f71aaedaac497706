"""
The biLM's output softmax over a large word vocabulary, computed in vocabulary chunks.

The Original model's softmax has 793,471 words: the logits of a batch of tokens over all of them (tokens x
vocabulary) would not fit in memory, so every function here walks the vocabulary in chunks of at most `max_logits`
logits at a time and keeps only per-token running results (a log-sum-exp, the target's logit, a top-k, a sampled
id). The results equal a full `log_softmax` (the chunks only reorder a sum of exponentials).

Travels as remote code with modeling_elmo.py: it imports only torch.
"""

from __future__ import annotations

import torch

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


__all__ = ["CPU_MAX_LOGITS", "DEFAULT_MAX_LOGITS", "log_normalizer", "sample_ids", "target_log_probs", "top_k_log_probs"]
