"""Pure statistics for the report: finite-number checks, the near-chance bound, average-tie ranks and
Spearman's ρ."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "is_finite",
    "finite_or_none",
    "chance_bound",
    "rankdata",
    "spearman",
    "pooled_paired_difference",
]


def is_finite(v: Any) -> bool:
    """A real, finite number (``bool`` is not one)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def finite_or_none(v: Any) -> float | None:
    """``v`` as a float when it is a finite number, else ``None``."""
    return float(v) if is_finite(v) else None


def chance_bound(chance: float, n: float) -> float:
    """``chance + 2·sqrt(chance·(1 − chance)/n)``: two binomial standard errors above a uniform guess.

    Why: an accuracy below this on ``n`` questions is not clearly better than guessing, so what is measured on
    those questions (retained fractions, choice flips) is mostly noise. ``chance`` must lie in (0, 1) and
    ``n`` be positive.
    """
    if not 0 < chance < 1 or not n > 0:
        raise ValueError(f"chance must lie in (0, 1) and n be positive, got chance={chance}, n={n}")
    return chance + 2 * math.sqrt(chance * (1 - chance) / n)


def rankdata(values: Sequence[float]) -> list[float]:
    """Ranks 1…n, ties given the average of the ranks they span (``[10, 20, 20, 30] → [1, 2.5, 2.5, 4]``)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        avg = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = avg
        i = j + 1
    return ranks


def spearman(x: Sequence[float | None], y: Sequence[float | None]) -> float | None:
    """Spearman's rank correlation: the Pearson correlation of the average-tie ranks of ``x`` and ``y``.

    ``ρ = Σ (r_i − r̄)(s_i − s̄) / sqrt(Σ (r_i − r̄)² · Σ (s_i − s̄)²)`` over the pairs where both values are
    finite. ``None`` when fewer than two pairs remain or either side is constant.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length ({len(x)} vs {len(y)})")
    pairs = [(a, b) for a, b in zip(x, y) if is_finite(a) and is_finite(b)]
    if len(pairs) < 2:
        return None
    r = rankdata([a for a, _ in pairs])
    s = rankdata([b for _, b in pairs])
    mr, ms = sum(r) / len(r), sum(s) / len(s)
    cov = sum((a - mr) * (b - ms) for a, b in zip(r, s))
    vr = sum((a - mr) ** 2 for a in r)
    vs = sum((b - ms) ** 2 for b in s)
    if vr == 0 or vs == 0:
        return None
    return max(-1.0, min(1.0, cov / math.sqrt(vr * vs)))


def pooled_paired_difference(
    groups: Sequence[tuple[Sequence[float], Sequence[float]]], *, seed: int = 0
) -> dict[str, Any]:
    """Two models compared on the same examples of several tasks, pooled with the tasks weighing equally.

    ``groups``: per task, the reference's and the other model's per-example values in the same order. With
    ``k`` tasks, ``n_t`` examples in task ``t`` and ``N = Σ n_t``, the pooled value of a model is the mean of
    its task means and the difference is ``Δ = (1/k) Σ_t mean_t(other − reference)``. Its 95 % interval
    resamples each task's pairs (pairs kept together, tasks independently:
    :func:`~prunelens.evaluation.uncertainty.pooled_mean_interval`). The p-value is the sign-flip test of
    :func:`~prunelens.evaluation.uncertainty.sign_flip_p_value` on the weighted differences
    ``w_i = (other_i − reference_i) · N / (k · n_t)``, whose mean is ``Δ``: under "no difference" every
    pair's difference is as likely to have either sign (exact for ``N ≤ 12``). Returns the keys of a
    :class:`~prunelens.evaluation.uncertainty.PairedComparison` (``dense`` = the reference's pooled value,
    ``pruned`` = the other's), so a :class:`~prunelens.studies.facts.TaskTest` reads it.
    """
    import numpy as np
    from numpy.typing import ArrayLike

    from prunelens.evaluation.uncertainty import pooled_mean_interval, sign_flip_p_value

    if not groups:
        raise ValueError("no tasks to pool")
    refs, others = [], []
    for ref, other in groups:
        a, b = np.asarray(ref, dtype=np.float64), np.asarray(other, dtype=np.float64)
        if a.ndim != 1 or a.shape != b.shape or a.size == 0:
            raise ValueError("each task needs the same positive number of values on both sides")
        refs.append(a)
        others.append(b)
    k, total = len(refs), sum(a.size for a in refs)
    diffs = [b - a for a, b in zip(refs, others)]
    diff, interval = pooled_mean_interval(list[ArrayLike](diffs), seed=seed)
    weighted = np.concatenate([d * (total / (k * d.size)) for d in diffs])
    return {
        "n": int(total),
        "dense": float(np.mean([a.mean() for a in refs])),
        "pruned": float(np.mean([b.mean() for b in others])),
        "difference": float(diff),
        "interval": [float(interval[0]), float(interval[1])],
        "p_value": sign_flip_p_value(weighted, seed=seed),
        "test": "paired sign-flip test",
        "tasks": k,
    }
