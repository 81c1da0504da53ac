"""Per-block sparsity allocation: the pure maths (no model code).

At a target overall sparsity ``S`` the blocks need not all be pruned alike. Every non-uniform rule here is
the same map from a per-block score ``x_l`` (higher = keep more weights) to a per-block sparsity ``s_l``:

    s_l = S − c · (x_l − x̄),   x̄ = Σ_l w_l x_l / Σ_l w_l,

with ``w_l`` the number of weights block ``l`` holds (the ones being sparsified), so the
parameter-weighted mean of the ``s_l`` is exactly ``S`` whatever ``c``. The scale is the largest that keeps

* the deviation bound: ``|s_l − S| ≤ λ`` (the block furthest from the weighted mean score gets exactly
  ``±λ``; OWL's stated constraint ``s_l ∈ [S − λ, S + λ]``), and
* every block valid: ``0 ≤ s_l ≤ (1 + S) / 2`` (no block keeps less than half the target's density, so
  ``s_l < 1``); near ``S = 0`` or ``S = 1`` this shrinks ``c`` below ``λ / max|x − x̄|``.

The map is linear and monotone (a higher score never gets a higher sparsity), equal scores give the
uniform allocation, and ``λ = 0`` gives it too.

The scores (measured by :mod:`prunelens.prune.sparsify`):

* ``owl`` — OWL (Yin et al., 2024), the layer's *outlier ratio*: the share of its Wanda scores
  ``|W_ij| · ‖X_j‖₂`` (all linears of the block together) above ``M`` times their mean
  (:func:`outlier_ratio`); more outliers → denser. OWL's published setting for LLaMA-7B at 70 %:
  ``λ = 0.08``, ``M = 5`` (:data:`OWL_LAMBDA`, :data:`OWL_OUTLIER_M`). (OWL's released code min-max
  scales the ratios to a width of ``2λ`` and centres them, which can leave one side beyond ``λ`` when the
  ratios are skewed; here the bound is the paper's ``λ`` on both sides.)
* ``kl`` — the block's measured sensitivity ``D_l``: the exact counterfactual KL of the dense model's
  next-token distribution when only block ``l`` is sparsified at ``S``; more sensitive → denser. The
  score is ``x_l = log D_l`` (:func:`kl_scores`): sensitivities span orders of magnitude, and if each
  block's KL grows with its sparsity as ``D_l(s) = a_l · e^{k s}`` (a common shape, a per-block
  scale), minimising ``Σ_l D_l(s_l)`` under ``Σ_l w_l s_l = S Σ_l w_l`` gives ``s_l`` linear in
  ``−log a_l`` (blocks of equal size). Same ``λ``, so the comparison with OWL is at equal freedom.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from prunelens.plan import ALLOCATIONS

__all__ = [
    "ALLOCATIONS",
    "OWL_LAMBDA",
    "OWL_OUTLIER_M",
    "allocate",
    "kl_scores",
    "outlier_ratio",
    "sparsity_ceiling",
    "weighted_mean",
]

#: OWL's published deviation bound and outlier threshold (LLaMA-7B, 70 % sparsity)
OWL_LAMBDA = 0.08
OWL_OUTLIER_M = 5.0


def sparsity_ceiling(target: float) -> float:
    """The highest sparsity a block may be given at overall ``target``: ``(1 + target) / 2``."""
    return (1.0 + target) / 2.0


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    """``Σ w v / Σ w``, summed exactly (:func:`math.fsum`)."""
    return math.fsum(w * v for v, w in zip(values, weights)) / math.fsum(weights)


def _check(scores: Sequence[float], weights: Sequence[float], target: float, lam: float) -> None:
    if not len(scores):
        raise ValueError("allocation needs at least one block")
    if len(scores) != len(weights):
        raise ValueError(f"{len(scores)} scores but {len(weights)} weights: one of each per block")
    if not all(math.isfinite(float(x)) for x in scores):
        raise ValueError(f"allocation scores must be finite; got {list(scores)}")
    if not all(math.isfinite(float(w)) and w > 0 for w in weights):
        raise ValueError(f"block weights must be positive; got {list(weights)}")
    if not 0.0 <= target < 1.0:
        raise ValueError(f"sparsity must be in [0, 1); got {target}")
    if not (math.isfinite(lam) and 0.0 <= lam < 1.0):
        raise ValueError(f"allocation lambda must be in [0, 1); got {lam}")


def allocate(
    scores: Sequence[float], weights: Sequence[float], target: float, lam: float = OWL_LAMBDA
) -> list[float]:
    """Per-block sparsities from per-block ``scores`` (higher = keep denser), see the module docstring:
    weighted mean exactly ``target`` (to rounding), ``|s_l − target| ≤ lam``, ``0 ≤ s_l ≤ (1+target)/2``."""
    _check(scores, weights, target, lam)
    x = [float(v) for v in scores]
    w = [float(v) for v in weights]
    xbar = weighted_mean(x, w)
    dev = [v - xbar for v in x]
    spread = max(abs(d) for d in dev)
    # equal scores (one block, say) are uniform: what rounding leaves in dev is no signal
    if spread == 0.0 or lam == 0.0 or max(x) == min(x):
        return [float(target)] * len(x)
    c = lam / spread
    ceiling = sparsity_ceiling(target)
    for d in dev:  # s = target − c·d must stay in [0, ceiling]
        if d > 0:
            c = min(c, target / d)
        elif d < 0:
            c = min(c, (ceiling - target) / -d)
    out = [target - c * d for d in dev]
    # Σ w·dev is zero in exact arithmetic; remove what rounding left, where it keeps every bound
    resid = weighted_mean(out, w) - target
    fixed = [s - resid for s in out]
    if all(0.0 <= s <= ceiling and abs(s - target) <= lam for s in fixed):
        out = fixed
    return [min(max(s, 0.0), ceiling) for s in out]


def kl_scores(kls: Sequence[float]) -> list[float]:
    """``log D_l`` per block (the ``kl`` rule's score), with a KL of zero (or below: rounding) floored at
    the smallest positive one; all zero → all equal (uniform)."""
    positive = [float(k) for k in kls if k > 0]
    if not positive:
        return [0.0] * len(kls)
    floor = min(positive)
    return [math.log(max(float(k), floor)) for k in kls]


def outlier_ratio(scores: Iterable[torch.Tensor], m: float = OWL_OUTLIER_M) -> float:
    """OWL's layer outlier ratio: the share of the entries of all ``scores`` tensors (one block's Wanda
    scores, every linear) greater than ``m`` times the mean over all of them (sums in float64)."""
    tensors = list(scores)
    total = sum(float(t.double().sum()) for t in tensors)
    count = sum(t.numel() for t in tensors)
    if not count:
        raise ValueError("outlier_ratio needs at least one score")
    threshold = m * total / count
    return sum(int((t > threshold).sum()) for t in tensors) / count
