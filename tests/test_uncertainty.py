"""Intervals and paired tests: against scipy's reference implementations and analytic properties."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prunelens.evaluation.uncertainty import (
    bootstrap_interval,
    mcnemar_exact,
    minimum_detectable_difference,
    paired_accuracy,
    paired_bootstrap,
    wilson_interval,
)

from conftest import need_package

need_package("scipy", module=True)

from scipy import stats  # noqa: E402


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (37, 40), (120, 200), (1, 1)])
def test_wilson_matches_scipy(k, n):
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((ref.low, ref.high), abs=1e-12)
    lo, hi = wilson_interval(k, n, confidence=0.5)
    assert lo <= k / n <= hi and wilson_interval(k, n, 0.99)[1] >= hi


@pytest.mark.parametrize("b, c", [(0, 0), (0, 5), (3, 9), (10, 10), (1, 30), (40, 25)])
def test_mcnemar_exact_matches_the_binomial_test(b, c):
    ref = 1.0 if b + c == 0 else stats.binomtest(min(b, c), b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(ref, rel=1e-12)
    assert mcnemar_exact(b, c) == mcnemar_exact(c, b)


def test_bootstrap_interval_is_seeded_and_covers_the_mean():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=400)
    a = bootstrap_interval(x, seed=3)
    assert a == bootstrap_interval(x, seed=3) and a != bootstrap_interval(x, seed=4)
    se = x.std(ddof=1) / math.sqrt(x.size)
    assert a[0] < x.mean() < a[1]
    assert (a[1] - a[0]) == pytest.approx(2 * 1.96 * se, rel=0.1)  # the normal-theory width
    assert bootstrap_interval([2.0] * 5) == (2.0, 2.0)


def test_paired_bootstrap_identity_and_shift():
    x = np.random.default_rng(1).normal(size=200)
    same = paired_bootstrap(x, x)
    assert same.difference == 0 and same.interval == (0.0, 0.0) and same.p_value == 1.0 and same.ratio == 1.0
    shifted = paired_bootstrap(x, x + 0.5)
    assert shifted.difference == pytest.approx(0.5) and shifted.p_value < 1e-3  # 1 / (resamples + 1)
    noisy = paired_bootstrap(x, x + np.random.default_rng(2).normal(0.3, 1.0, size=200), seed=0)
    assert noisy.interval[0] < noisy.difference < noisy.interval[1] and noisy.p_value < 0.01
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap(x, x[:-1])


def test_paired_bootstrap_p_value_is_calibrated_under_the_null():
    """Under no difference, p < 0.05 in about 5 % of repeated experiments."""
    rng = np.random.default_rng(7)
    hits = sum(
        paired_bootstrap(a, a + rng.normal(0, 1, 60), resamples=500, seed=s).p_value < 0.05
        for s, a in enumerate(rng.normal(size=(200, 60)))
    )
    assert 2 <= hits <= 20  # 10 expected; binomial(200, 0.05) is in [2, 20] with probability > 0.998


def test_paired_accuracy_counts_discordant_pairs():
    dense = [1, 1, 1, 1, 0, 0, 1, 1, 1, 0] * 4
    pruned = [1, 0, 1, 0, 0, 1, 1, 0, 1, 0] * 4
    res = paired_accuracy(dense, pruned)
    assert res.discordant == (12, 4) and res.n == 40
    assert res.difference == pytest.approx(-0.2) and res.test == "exact McNemar"
    assert res.p_value == pytest.approx(stats.binomtest(4, 16, 0.5).pvalue)
    assert res.ratio == pytest.approx(0.5 / 0.7)
    assert res.to_dict()["discordant"] == [12, 4]


def test_minimum_detectable_difference():
    # 200 questions at 60 % accuracy, independent errors: (1.96 + 0.84) * sqrt(0.48 / 200) = 0.137
    assert minimum_detectable_difference(200, 0.6) == pytest.approx(0.1372, abs=2e-4)
    assert minimum_detectable_difference(800, 0.6) == pytest.approx(
        minimum_detectable_difference(200, 0.6) / 2
    )
    assert minimum_detectable_difference(200, 0.6, discordance=0.1) < minimum_detectable_difference(200, 0.6)
    # near 0 % accuracy the worst-case discordance vanishes, but a difference δ needs δ·n discordant pairs
    z = 1.959964 + 0.841621
    assert minimum_detectable_difference(40, 0.0) == pytest.approx(z * z / 40, rel=1e-5)
    assert minimum_detectable_difference(4, 0.0) == 1.0


def test_score_and_perplexity_intervals_and_the_fitting_paired_test():
    from prunelens.evaluation.uncertainty import compare_paired, perplexity_interval, score_interval

    acc = score_interval([1, 0, 1, 1])
    assert acc["method"] == "wilson" and (acc["low"], acc["high"]) == pytest.approx(wilson_interval(3, 4))
    soft = score_interval([0.2, 0.9, 0.4, 0.7, 0.5])
    assert soft["method"].startswith("bootstrap") and soft["low"] < 0.54 < soft["high"]
    nll, tok = [30.0, 50.0, 40.0, 45.0], [10, 10, 10, 10]
    ppl = perplexity_interval(nll, tok)
    assert ppl["low"] <= math.exp(sum(nll) / sum(tok)) <= ppl["high"]
    assert perplexity_interval([30.0] * 4, tok)["low"] == pytest.approx(math.exp(3.0))
    assert compare_paired([1, 0, 1], [1, 1, 0]).test == "exact McNemar"
    assert compare_paired([0.5, 0.2, 0.9], [0.4, 0.2, 0.8]).test == "paired sign-flip test"


def test_sign_flip_p_value_is_exact_for_few_pairs_and_honest_at_two():
    from prunelens.evaluation.uncertainty import sign_flip_p_value

    # two prompts that both got worse by the same amount: 2 of the 4 sign patterns are as extreme
    assert sign_flip_p_value([-0.75, -0.75]) == 0.5
    assert paired_bootstrap([1.0, 1.0], [0.25, 0.25]).p_value == 0.5
    # n = 8, all negative: only the all-negative and all-positive patterns reach |mean| = 1
    assert sign_flip_p_value([-1.0] * 8) == pytest.approx(2 / 256)
    # exact enumeration against a brute-force count
    x = np.array([0.3, -0.1, 0.5, 0.2, -0.4, 0.6])
    import itertools

    obs = abs(x.mean())
    count = sum(abs((np.array(s) * x).mean()) >= obs - 1e-12 for s in itertools.product([-1, 1], repeat=6))
    assert sign_flip_p_value(x) == pytest.approx(count / 64)
    assert sign_flip_p_value([0.0, 0.0, 0.0]) == 1.0


def test_holm_adjustment():
    from prunelens.evaluation.uncertainty import holm

    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5] and holm([]) == []
    assert holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])
    with pytest.raises(ValueError):
        holm([1.5])


def test_pooled_retained_interval_covers_the_ratio_and_shrinks_with_n():
    from prunelens.evaluation.uncertainty import pooled_retained

    rng = np.random.default_rng(0)
    small = [(rng.integers(0, 2, 40).astype(float), rng.integers(0, 2, 40).astype(float)) for _ in range(2)]
    big = [(rng.integers(0, 2, 400).astype(float), rng.integers(0, 2, 400).astype(float)) for _ in range(2)]
    for pairs in (small, big):
        r, (lo, hi) = pooled_retained(pairs)
        ref = sum(p.mean() for _, p in pairs) / sum(d.mean() for d, _ in pairs)
        assert r == pytest.approx(ref) and lo <= r <= hi
    assert np.diff(pooled_retained(big)[1]) < np.diff(pooled_retained(small)[1])
    same = [(np.array([1.0, 0.0, 1.0]), np.array([1.0, 0.0, 1.0]))]
    assert pooled_retained(same) == (1.0, (1.0, 1.0))
    assert pooled_retained([(np.zeros(3), np.ones(3))]) is None
