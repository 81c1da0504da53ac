"""Pure statistics for the report: finite-number checks, the near-chance bound, average-tie ranks and
Spearman's ρ."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["is_finite", "finite_or_none", "chance_bound", "rankdata", "spearman"]


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
