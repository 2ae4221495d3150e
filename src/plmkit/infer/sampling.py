"""From next-token logits to tokens: penalties, filters (top-k, top-p, min-p) and sampling.

Shapes: B rows, V vocabulary, N history length, K candidates, S draws.

Everything is batched and stays on the logits' device without host syncs, except one check
per call of top-p / min-p without top-k (whether a row needs the sorting fallback below). Random numbers come only from the `torch.Generator`
passed in, never from the global RNG. The filters keep the same token sets as `transformers`'
`TopKLogitsWarper`, `TopPLogitsWarper` and `MinPLogitsWarper` (applied in that order), but
get there without sorting the whole vocabulary:

- top-k takes the k best logits (`torch.topk`) and works on those K candidates only;
- top-p / min-p without top-k decide membership of a token by a sum instead of a sort: token t
  is in the nucleus when the probability of all tokens more likely than t is below top_p.
  A few draws from the full distribution are tested and the first member is kept (rejection
  sampling, exact); in the rare case that all draws miss, the vocabulary is sorted.
"""

from __future__ import annotations

import torch
from torch import Tensor

REJECTION_DRAWS = 8
"""Draws tested per row before sorting the vocabulary: all miss with probability <= (1 - top_p)^8."""


# --------------------------------------------------------------------------- penalties


def repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL's penalty: logits (B, V) of tokens already seen (B, V) bool are divided by `penalty`
    when positive and multiplied by it when negative (penalty > 1 discourages repeats)."""
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)


def banned_ngram_tokens(history: Tensor, valid: Tensor, n: int, vocab_size: int) -> Tensor:
    """Tokens that would complete an n-gram already present in each row: (B, V) bool.

    history (B, N) token ids, valid (B, N) True for real tokens (padding never forms n-grams).
    The next token t is banned when (last n-1 tokens, t) occurred before in the row.
    """
    b, length = history.shape
    banned = torch.zeros(b, vocab_size + 1, dtype=torch.bool, device=history.device)
    if length < n:
        return banned[:, :vocab_size]
    prefix = history[:, length - n + 1 :]  # (B, n-1) the tokens the next one would extend
    windows = history.unfold(1, n, 1)  # (B, N-n+1, n) every n-gram of the row
    real = valid.unfold(1, n, 1).all(dim=-1)  # (B, N-n+1)
    match = (windows[..., :-1] == prefix[:, None, :]).all(dim=-1) & real
    # Non-matching windows scatter into a spare column V, dropped below.
    banned.scatter_(1, torch.where(match, windows[..., -1], vocab_size), True)
    return banned[:, :vocab_size]


# --------------------------------------------------------------------------- sampling


def draw(weights: Tensor, generator: torch.Generator, n: int = 1) -> Tensor:
    """n independent indices per row (B, n), with probability proportional to weights (B, K) >= 0.

    Inverse CDF: the first index whose cumulative weight exceeds u * total, u ~ U[0, 1). An index
    of zero weight adds nothing to the cumulative sum, so it is never the first to exceed it.
    """
    cdf = weights.cumsum(dim=-1)  # (B, K)
    total = cdf[:, -1:]
    u = torch.rand(weights.size(0), n, generator=generator, device=weights.device) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # strictly below the total
    return torch.searchsorted(cdf, u, right=True)


def filtered_candidates(probs: Tensor, top_p: float | None, min_p: float | None) -> Tensor:
    """Which of the candidates (B, K), sorted by decreasing probability, top-p and min-p keep: (B, K) bool.

    top-p keeps a candidate while the probability above it is below top_p (the smallest prefix
    whose mass reaches top_p); min-p keeps those at least min_p times as likely as the best.
    The best candidate is always kept.
    """
    keep = torch.ones_like(probs, dtype=torch.bool)
    if top_p is not None and top_p < 1.0:
        keep &= probs.cumsum(dim=-1) - probs < top_p
    if min_p is not None and min_p > 0.0:
        keep &= probs >= min_p * probs[:, :1]
    keep[:, 0] = True
    return keep


def sample(logits: Tensor, generator: torch.Generator, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, min_p: float | None = None) -> Tensor:
    """Sample one token per row from logits (B, V) after temperature, top-k, top-p, min-p: (B,) long."""
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature
    vocab = logits.size(-1)
    if top_k is not None and 0 < top_k < vocab:
        values, index = logits.topk(top_k, dim=-1)  # (B, K), sorted
        probs = values.softmax(dim=-1)  # renormalized over the k kept tokens, as top-p then sees them
        choice = draw(probs * filtered_candidates(probs, top_p, min_p), generator)  # (B, 1)
        return index.gather(1, choice)[:, 0]
    probs = logits.softmax(dim=-1)
    if (top_p is None or top_p >= 1.0) and not min_p:
        return draw(probs, generator)[:, 0]
    tokens, ok = _nucleus_by_rejection(probs, generator, top_p, min_p)
    if not bool(ok.all()):  # every draw of some row fell outside: sort that batch's vocabulary
        tokens = torch.where(ok, tokens, _nucleus_by_sorting(probs, generator, top_p, min_p))
    return tokens


def _nucleus_by_rejection(probs: Tensor, generator: torch.Generator, top_p: float | None,
                          min_p: float | None) -> tuple[Tensor, Tensor]:
    """Exact top-p / min-p sampling without a sort; returns (tokens (B,), ok (B,) bool).

    Draws S tokens from the full distribution (inverse CDF) and keeps the first that top-p and
    min-p would keep: conditioned on membership a draw follows the filtered, renormalized
    distribution. ok is False for rows where no draw was a member.
    """
    drawn = draw(probs, generator, REJECTION_DRAWS)  # (B, S)
    p = probs.gather(1, drawn)  # (B, S)
    member = torch.ones_like(p, dtype=torch.bool)
    if top_p is not None and top_p < 1.0:
        member &= _mass_above(probs, p) < top_p
    if min_p:
        member &= p >= min_p * probs.amax(dim=-1, keepdim=True)
    first = member.to(torch.int8).argmax(dim=-1)  # (B,) index of the first member draw
    return drawn.gather(1, first[:, None])[:, 0], member.any(dim=-1)


def _mass_above(probs: Tensor, p: Tensor) -> Tensor:
    """For each of S probability values p (B, S): the total probability of tokens more likely than it.

    Each token is bucketed by how many of the (sorted) values it exceeds, bucket masses are
    summed, and suffix sums give the mass above each value.
    """
    ps, order = p.sort(dim=-1)  # (B, S) ascending
    beats = torch.zeros(probs.shape, dtype=torch.uint8, device=probs.device)  # (B, V), S < 256
    for j in range(p.size(1)):
        beats += probs > ps[:, j : j + 1]
    mass = torch.zeros(p.size(0), p.size(1) + 1, dtype=probs.dtype, device=probs.device)
    mass.scatter_add_(1, beats.long(), probs)  # mass[:, b]: tokens above exactly the b smallest values
    above_sorted = mass.flip(-1).cumsum(dim=-1).flip(-1)[:, 1:]  # (B, S): tokens above value j
    return above_sorted.gather(1, order.argsort(dim=-1))


def _nucleus_by_sorting(probs: Tensor, generator: torch.Generator, top_p: float | None,
                        min_p: float | None) -> Tensor:
    """Top-p / min-p sampling over the whole sorted vocabulary (the slow, always-exact path)."""
    sorted_probs, index = probs.sort(dim=-1, descending=True)
    choice = draw(sorted_probs * filtered_candidates(sorted_probs, top_p, min_p), generator)
    return index.gather(1, choice)[:, 0]
