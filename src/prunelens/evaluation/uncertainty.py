"""Uncertainty of scores and of paired comparisons: pure functions, float64, seeded.

Every score prunelens reports is a mean over examples (questions, windows, queries, prompts), so it
carries sampling error; and a pruned model is evaluated on the *same* examples as its dense parent, so
comparisons are paired, which is far more sensitive than comparing two intervals.

* Accuracies (a count of ``k`` successes in ``n``): the Wilson score interval (:func:`wilson_interval`),
  which unlike the normal approximation stays inside [0, 1] and keeps its coverage near 0 and 1.
* Other means (nDCG per query, ROUGE-L per prompt, log-likelihood per window): percentile bootstrap
  over examples (:func:`bootstrap_interval`).
* Paired accuracies: the exact McNemar test on the discordant pairs (:func:`mcnemar_exact`): under
  "no difference", each example the two models disagree on is equally likely to favour either, so the
  count favouring one side is Binomial(b + c, 1/2). The difference's interval is a paired bootstrap.
* Paired means: :func:`paired_bootstrap` resamples examples, keeping each pair together, for the mean
  difference's interval and the ratio of means (a retained fraction); its p-value is a sign-flip
  randomisation test (exact for up to 12 pairs).
* Several tasks at once: :func:`holm` adjusts their p-values; :func:`pooled_retained` is the retained
  fraction pooled over tasks with its interval.
* Planning: :func:`minimum_detectable_difference` is the smallest true accuracy difference a paired
  test at this ``n`` would detect with the given power.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike

DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(k: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n``."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    z = _z(confidence)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: ``b`` pairs favour one model, ``c`` the other (ties excluded)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be non-negative, got {b}, {c}")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def _as_array(values: ArrayLike, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence")
    return a


def _resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    lo, hi = np.quantile(samples, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def bootstrap_interval(
    values: ArrayLike,
    *,
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` (default: the mean) over examples."""
    a = _as_array(values, "values")
    _z(confidence)
    idx = _resample_indices(a.size, resamples, seed)
    stat = statistic or (lambda x: x.mean(axis=-1))
    return _percentiles(stat(a[idx]), confidence)


@dataclass(frozen=True)
class PairedComparison:
    """A pruned-against-dense comparison on shared examples (pruned minus dense)."""

    n: int
    dense: float
    pruned: float
    difference: float
    interval: tuple[float, float]
    p_value: float
    test: str
    ratio: float | None = None  # pruned / dense (the retained fraction), when dense is not 0
    ratio_interval: tuple[float, float] | None = None
    discordant: tuple[int, int] | None = None  # McNemar: (dense right only, pruned right only)

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("interval", "ratio_interval", "discordant"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d


def _ratio(pruned: np.ndarray, dense: np.ndarray, idx: np.ndarray, confidence: float):
    dm = dense.mean()
    if dm == 0:
        return None, None
    d, p = dense[idx].mean(axis=1), pruned[idx].mean(axis=1)
    ok = d != 0
    return float(pruned.mean() / dm), _percentiles(p[ok] / d[ok], confidence) if ok.any() else None


def paired_bootstrap(
    dense: ArrayLike,
    pruned: ArrayLike,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> PairedComparison:
    """Mean difference of paired per-example scores, its percentile interval and a two-sided p-value.

    The interval is the percentile bootstrap of the mean difference (pairs resampled together). The
    p-value is a sign-flip randomisation test: under "no difference" each pair's difference is as
    likely to have either sign, so the observed ``|mean|`` is compared with the ``|mean|`` of the
    differences with random signs — every one of the ``2ⁿ`` sign patterns when ``n ≤ 12`` (exact), else
    ``resamples`` random ones with the add-one correction. Unlike a bootstrap p-value it stays honest at
    a handful of examples: two prompts can never give p below 0.5.
    """
    d, p = _as_array(dense, "dense"), _as_array(pruned, "pruned")
    if d.shape != p.shape:
        raise ValueError(f"paired scores need the same length, got {d.size} and {p.size}")
    _z(confidence)
    diff = p - d
    observed = float(diff.mean())
    idx = _resample_indices(d.size, resamples, seed)
    boots = diff[idx].mean(axis=1)
    pval = sign_flip_p_value(diff, resamples=resamples, seed=seed)
    ratio, ratio_iv = _ratio(p, d, idx, confidence)
    return PairedComparison(
        int(d.size),
        float(d.mean()),
        float(p.mean()),
        observed,
        _percentiles(boots, confidence),
        pval,
        "paired sign-flip test",
        ratio,
        ratio_iv,
    )


def sign_flip_p_value(differences: ArrayLike, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> float:
    """Two-sided p-value of "the paired differences are symmetric about 0" (see :func:`paired_bootstrap`)."""
    x = _as_array(differences, "differences")
    observed = abs(float(x.mean()))
    tol = 1e-12 * max(1.0, observed)
    if observed <= tol:
        return 1.0
    n = x.size
    if n <= 12:
        signs = ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1) * 2 - 1
        means = np.abs(signs @ x) / n
        return float(np.mean(means >= observed - tol))
    signs = np.random.default_rng(seed).integers(0, 2, size=(resamples, n)) * 2 - 1
    means = np.abs(signs @ x) / n
    return float(min(1.0, (np.sum(means >= observed - tol) + 1) / (resamples + 1)))


def paired_accuracy(
    dense_correct: ArrayLike,
    pruned_correct: ArrayLike,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> PairedComparison:
    """Paired accuracy comparison: exact McNemar p-value, paired-bootstrap interval of the difference."""
    d = (_as_array(dense_correct, "dense_correct") != 0).astype(np.float64)
    p = (_as_array(pruned_correct, "pruned_correct") != 0).astype(np.float64)
    boot = paired_bootstrap(d, p, confidence=confidence, resamples=resamples, seed=seed)
    b = int(np.sum((d == 1) & (p == 0)))
    c = int(np.sum((d == 0) & (p == 1)))
    return PairedComparison(
        boot.n,
        boot.dense,
        boot.pruned,
        boot.difference,
        boot.interval,
        mcnemar_exact(b, c),
        "exact McNemar",
        boot.ratio,
        boot.ratio_interval,
        (b, c),
    )


def minimum_detectable_difference(
    n: int, accuracy: float, *, discordance: float | None = None, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Smallest true accuracy difference a paired test on ``n`` examples detects with ``power``.

    Normal approximation to McNemar: the difference ``δ`` is detectable when
    ``δ ≥ (z_{1−α/2} + z_power) · sqrt(ψ / n)``, with ``ψ`` the share of discordant pairs. Without a
    measured ``discordance`` the worst case for an accuracy ``a`` is assumed, ``ψ = 2a(1 − a)``
    (the two models' errors independent). Since a difference ``δ`` needs at least a share ``δ`` of
    discordant pairs, the result is never below ``z²/n`` (which matters near 0 or 100 % accuracy).
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= accuracy <= 1:
        raise ValueError(f"accuracy must be in [0, 1], got {accuracy}")
    psi = 2 * accuracy * (1 - accuracy) if discordance is None else discordance
    if not 0 <= psi <= 1:
        raise ValueError(f"discordance must be in [0, 1], got {psi}")
    z = _z(1 - alpha) + NormalDist().inv_cdf(power)
    # a difference δ needs at least a share δ of discordant pairs, so ψ ≥ δ: δ ≥ z·sqrt(δ/n) ⇒ δ ≥ z²/n
    return min(1.0, max(z * math.sqrt(psi / n), z * z / n))


def score_interval(scores: ArrayLike, *, confidence: float = DEFAULT_CONFIDENCE, seed: int = 0) -> dict:
    """The interval of a mean of per-example scores: Wilson when every score is 0 or 1, else bootstrap."""
    a = _as_array(scores, "scores")
    if np.all((a == 0) | (a == 1)):
        lo, hi = wilson_interval(int(a.sum()), int(a.size), confidence)
        method = "wilson"
    else:
        lo, hi = bootstrap_interval(a, confidence=confidence, seed=seed)
        method = "bootstrap over examples"
    return {"low": lo, "high": hi, "confidence": confidence, "method": method, "n": int(a.size)}


def perplexity_interval(
    window_nll: ArrayLike,
    window_tokens: ArrayLike,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict:
    """Bootstrap interval of ``exp(Σ nll / Σ tokens)`` resampling windows (each window's summed NLL)."""
    nll, tok = _as_array(window_nll, "window_nll"), _as_array(window_tokens, "window_tokens")
    if nll.shape != tok.shape:
        raise ValueError("one token count per window is needed")
    idx = _resample_indices(nll.size, resamples, seed)
    lo, hi = _percentiles(np.exp(nll[idx].sum(axis=1) / tok[idx].sum(axis=1)), confidence)
    return {
        "low": lo,
        "high": hi,
        "confidence": confidence,
        "method": "bootstrap over windows",
        "n": int(nll.size),
    }


def compare_paired(dense_scores: ArrayLike, pruned_scores: ArrayLike, **kw) -> PairedComparison:
    """The paired test that fits the scores: exact McNemar for 0/1 scores, else the paired bootstrap."""
    d, p = _as_array(dense_scores, "dense"), _as_array(pruned_scores, "pruned")
    binary = bool(np.all((d == 0) | (d == 1)) and np.all((p == 0) | (p == 1)))
    return paired_accuracy(d, p, **kw) if binary else paired_bootstrap(d, p, **kw)


def holm(p_values: ArrayLike) -> list[float]:
    """Holm–Bonferroni adjusted p-values (same order as given).

    A use (say, non-generative) is judged on several tasks at once; testing each at 0.05 would call
    some variant "lower" by chance far more often than 5 % of the time. Holm's step-down adjustment keeps
    the family-wise error at the nominal level without assuming the tests independent: sort the ``m``
    p-values, multiply the ``k``-th smallest by ``m − k + 1``, and make the sequence non-decreasing.
    """
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    if p.size == 0:
        return []
    if np.any((p < 0) | (p > 1) | ~np.isfinite(p)):
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    order = np.argsort(p, kind="stable")
    m = p.size
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def pooled_retained(
    pairs: list[tuple[ArrayLike, ArrayLike]],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float, tuple[float, float]] | None:
    """The retained fraction pooled over tasks, ``mean_t(pruned_t) / mean_t(dense_t)``, with its interval.

    ``pairs``: per task, the dense and the pruned per-example scores on the same examples (in the same
    order). Each task's examples are resampled with their pairs kept together, independently of the
    other tasks' (they are different examples), and the ratio of the averaged task means is recomputed
    per resample: the percentile interval of that ratio. ``None`` when the dense average is 0.
    """
    if not pairs:
        raise ValueError("no tasks to pool")
    _z(confidence)
    rng = np.random.default_rng(seed)
    dense_means, pruned_means = np.zeros(resamples), np.zeros(resamples)
    d_obs, p_obs = 0.0, 0.0
    for dense, pruned in pairs:
        d, p = _as_array(dense, "dense"), _as_array(pruned, "pruned")
        if d.shape != p.shape:
            raise ValueError(f"paired scores need the same length, got {d.size} and {p.size}")
        idx = rng.integers(0, d.size, size=(resamples, d.size))
        dense_means += d[idx].mean(axis=1)
        pruned_means += p[idx].mean(axis=1)
        d_obs += float(d.mean())
        p_obs += float(p.mean())
    if d_obs == 0:
        return None
    ok = dense_means != 0
    return p_obs / d_obs, _percentiles(pruned_means[ok] / dense_means[ok], confidence)


def pooled_mean_interval(
    groups: list[ArrayLike],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float, tuple[float, float]]:
    """The mean of per-group means (tasks averaged with equal weight) and its percentile interval, each
    group's examples resampled independently (e.g. ROUGE-L per prompt, per generative task)."""
    if not groups:
        raise ValueError("no groups to pool")
    _z(confidence)
    rng = np.random.default_rng(seed)
    boots = np.zeros(resamples)
    observed = 0.0
    for g in groups:
        a = _as_array(g, "group")
        boots += a[rng.integers(0, a.size, size=(resamples, a.size))].mean(axis=1)
        observed += float(a.mean())
    k = len(groups)
    return observed / k, _percentiles(boots / k, confidence)
