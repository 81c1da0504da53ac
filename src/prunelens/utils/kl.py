"""The one softmax KL divergence of the project, ``KL(p ‖ q) = Σ_i p_i (log p_i − log q_i)``.

Drop scoring and sparsity allocation (:mod:`prunelens.prune`), the analysis metrics
(:mod:`prunelens.analysis.metrics`) and the repair losses (:mod:`prunelens.distill.losses`) all compare
next-token distributions at a temperature ``T``; the formula is written here once. It lives in
:mod:`prunelens.utils`, the lowest layer, because it is pure tensor maths (no model, no data) and every
one of those packages may import downwards to it.

Pure functions: nothing is upcast here, the caller chooses the precision (the scoring loops compute in
float32, the analysis in float32 or float64, see each caller); the temperature is checked by the
callers, which each word their own refusal.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["log_probs", "kl_divergence"]


def log_probs(z: Tensor, T: float = 1.0) -> Tensor:
    """``log softmax(z / T)`` over the last axis, in ``z``'s dtype (``T > 0``).

    At ``T == 1`` the logits are not divided: dividing by one changes no bit and costs a pass over
    ``positions × vocabulary`` floats."""
    return torch.log_softmax(z / T if T != 1 else z, dim=-1)


def kl_divergence(
    log_p: Tensor,
    log_q: Tensor,
    p: Tensor | None = None,
    q: Tensor | None = None,
    *,
    nonnegative_terms: bool = False,
    overwrite_log_q: bool = False,
) -> Tensor:
    """``KL(p ‖ q)`` per position (summed over the last axis) from log-probabilities.

    ``p`` / ``q``: ``exp(log_p)`` / ``exp(log_q)`` when the caller has them already (a reference
    exponentiated once for many candidates); computed when ``None``.

    Two evaluations of the same sum:

    * default: ``Σ_i p_i (log p_i − log q_i)``, one product per term — what the scoring loops and the
      repair losses use over full vocabularies, many times per model. ``overwrite_log_q``: the terms are
      computed in ``log_q``'s own storage (the same values, bit for bit), so a chunk of a large vocabulary
      makes no further temporary; ``log_q`` is destroyed.
    * ``nonnegative_terms``: ``Σ_i [p_i δ_i + q_i − p_i]`` with ``δ = log p − log q``, each term
      ``p_i φ(δ_i)``, ``φ(δ) = δ + e^{−δ} − 1 ≥ 0``; equal in exact arithmetic because ``Σ q = Σ p = 1``.
      It damps the rounding of a shared shift in ``δ`` (first-order error terms cancel) and no term is
      negative, so a tiny KL stays accurate and never comes out below zero — what the analysis reports.
      ``p·(e^{−δ} − 1)`` is evaluated as ``p·expm1(−δ)`` for ``δ ≥ −1`` and as ``q − p`` below (no
      overflow). A token with ``p_i = 0`` contributes ``q_i`` (the ``p·δ`` part is 0), which keeps the
      identity exact when ``p`` has zeros (``−inf`` logits). About four more passes over the vocabulary.
    """
    if p is None:
        p = log_p.exp()
    if not nonnegative_terms:
        if overwrite_log_q:
            return log_q.neg_().add_(log_p).mul_(p).sum(-1)  # p (log p − log q), in place
        return (p * (log_p - log_q)).sum(-1)
    if q is None:
        q = log_q.exp()
    d = log_p - log_q
    pe = torch.where(d >= -1.0, p * torch.expm1(-d.clamp_min(-1.0)), q - p)
    term = (p * d + pe).clamp_min(0.0)
    out = term.sum(-1)
    bad = torch.isnan(out)
    if bad.any():  # only with −inf logits in p: 0·(−inf) in p·δ
        safe = torch.where(p > 0, term, q).sum(-1)
        out = torch.where(bad, safe, out)
    return out
