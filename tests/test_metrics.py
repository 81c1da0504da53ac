"""Tests for prunelens.analysis.metrics: brute-force float64 references, identities, Taylor claims."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from prunelens.analysis import metrics as M

torch.set_num_threads(1)

LEAD = (2, 3)
V = 23
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def out_dtype(dt):
    return torch.float64 if dt == torch.float64 else torch.float32


def tol(dt):
    return dict(rtol=1e-10, atol=1e-12) if dt == torch.float64 else dict(rtol=2e-4, atol=2e-6)


def pair(dt, lead=LEAD, n=V, scale=1.0, eps=0.3, seed=0):
    """Dense x and perturbed y, both already in dtype ``dt`` (rounded), plus float64 numpy copies."""
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(*lead, n, generator=g, dtype=torch.float64)
    y = x + eps * scale * torch.randn(*lead, n, generator=g, dtype=torch.float64)
    x, y = x.to(dt), y.to(dt)
    return x, y, x.double().numpy(), y.double().numpy()


def distinct_pair(dt, lead=LEAD, n=V, seed=0):
    """Logits with distinct values (exact in bf16/fp16) and a perturbed copy with some tokens swapped."""
    rng = np.random.default_rng(seed)
    x = np.empty((*lead, n))
    y = np.empty((*lead, n))
    for i in np.ndindex(*lead):
        x[i] = rng.permutation(n) * 0.25 - 2.0
        yi = x[i].copy()
        for _ in range(4):
            a, b = rng.integers(0, n, 2)
            yi[a], yi[b] = yi[b], yi[a]
        y[i] = yi
    xt, yt = torch.tensor(x).to(dt), torch.tensor(y).to(dt)
    return xt, yt, xt.double().numpy(), yt.double().numpy()


def per_vector(fn, *arrays):
    """Apply ``fn`` (plain float64 numpy on 1-D vectors) at every leading index."""
    lead = arrays[0].shape[:-1]
    first = fn(*(a[(0,) * len(lead)] for a in arrays))
    out = np.empty(lead + np.shape(first))
    for i in np.ndindex(*lead):
        out[i] = fn(*(a[i] for a in arrays))
    return out


def check(t, ref, dt):
    assert t.dtype == out_dtype(dt), t.dtype
    np.testing.assert_allclose(t.double().numpy(), ref, **tol(dt))


# ---------------------------------------------------------------- brute-force references (float64)


def r_cos(a, b):
    return sum(a[i] * b[i] for i in range(len(a))) / math.sqrt(sum(v * v for v in a) * sum(v * v for v in b))


def r_decomp(a, da):
    alpha = float(np.dot(da, a) / np.dot(a, a))
    return alpha * a, da - alpha * a, alpha


def r_logsoftmax(z, T):
    s = z / T
    m = max(s)
    lse = m + math.log(sum(math.exp(v - m) for v in s))
    return np.array([v - lse for v in s])


def r_softmax(z, T):
    return np.exp(r_logsoftmax(z, T))


def r_kl(z, y, T):
    p, q = r_softmax(z, T), r_softmax(y, T)
    return sum(p[i] * math.log(p[i] / q[i]) for i in range(len(p)))


def r_wvar(x, w):
    w = w / w.sum()
    m = sum(w[i] * x[i] for i in range(len(x)))
    return sum(w[i] * (x[i] - m) ** 2 for i in range(len(x)))


def r_wcov(x, y, w):
    w = w / w.sum()
    mx, my = np.dot(w, x), np.dot(w, y)
    return sum(w[i] * (x[i] - mx) * (y[i] - my) for i in range(len(x)))


def r_topk(z, k):
    return list(np.argsort(-z, kind="stable")[:k])


def r_rank(v, i):
    return int(sum(1 for u in v if u > v[i]))


def r_r(z, T):
    p = r_softmax(z, T)
    return p * p / np.sum(p * p)


def r_topk_w(z, k, T):
    w = np.zeros_like(z)
    idx = r_topk(z, k)
    w[idx] = r_softmax(z[idx], T)
    return w


# ---------------------------------------------------------------- every function vs its reference


@pytest.mark.parametrize("dt", DTYPES)
def test_geometry_vs_reference(dt):
    x, y, xn, yn = pair(dt)
    check(M.cosine(x, y), per_vector(r_cos, xn, yn), dt)
    check(M.one_minus_cos(x, y), per_vector(lambda a, b: 1 - r_cos(a, b), xn, yn), dt)
    dx = (y.double() - x.double()).to(dt)
    dxn = dx.double().numpy()
    dec = M.decompose(x, dx)
    check(dec.par, per_vector(lambda a, d: r_decomp(a, d)[0], xn, dxn), dt)
    check(dec.perp, per_vector(lambda a, d: r_decomp(a, d)[1], xn, dxn), dt)
    check(dec.alpha, per_vector(lambda a, d: r_decomp(a, d)[2], xn, dxn), dt)
    check(
        M.one_minus_cos_estimate(x, y),
        per_vector(
            lambda a, b: np.dot(r_decomp(a, b - a)[1], r_decomp(a, b - a)[1]) / (2 * np.dot(a, a)), xn, yn
        ),
        dt,
    )

    def ref_stats(a, b):
        par, perp, alpha = r_decomp(a, b - a)
        na = math.sqrt(np.dot(a, a))
        c = r_cos(a, b)
        t1 = np.dot(perp, perp) / (2 * na * na)
        return [
            c,
            1 - c,
            np.linalg.norm(b - a) / na,
            np.linalg.norm(par) / na,
            np.linalg.norm(perp) / na,
            np.linalg.norm(par) / np.linalg.norm(perp),
            alpha,
            t1,
            t1 / (1 - c),
        ]

    keys = [
        "cos",
        "one_minus_cos",
        "rel_norm",
        "rel_par",
        "rel_perp",
        "par_perp_ratio",
        "alpha",
        "theorem1",
        "theorem1_ratio",
    ]
    stats = M.perturbation_stats(x, y)
    assert list(stats) == keys
    ref = per_vector(ref_stats, xn, yn)
    for j, key in enumerate(keys):
        check(stats[key], ref[..., j], dt)

    cen = lambda a: a - a.mean()  # noqa: E731
    check(M.centered_cosine(x, y), per_vector(lambda a, b: r_cos(cen(a), cen(b)), xn, yn), dt)
    check(M.centered_one_minus_cos(x, y), per_vector(lambda a, b: 1 - r_cos(cen(a), cen(b)), xn, yn), dt)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("T", [0.7, 1.0, 2.5])
def test_probability_space_vs_reference(dt, T):
    z, y, zn, yn = pair(dt, scale=2.0)
    check(M.log_probs(z, T), per_vector(lambda a: r_logsoftmax(a, T), zn), dt)
    check(M.probs(z, T), per_vector(lambda a: r_softmax(a, T), zn), dt)
    check(
        M.prob_cosine(z, y, T), per_vector(lambda a, b: r_cos(r_softmax(a, T), r_softmax(b, T)), zn, yn), dt
    )
    check(
        M.prob_one_minus_cos(z, y, T),
        per_vector(lambda a, b: 1 - r_cos(r_softmax(a, T), r_softmax(b, T)), zn, yn),
        dt,
    )
    check(M.kl(z, y, T), per_vector(lambda a, b: r_kl(a, b, T), zn, yn), dt)
    check(M.reverse_kl(z, y, T), per_vector(lambda a, b: r_kl(b, a, T), zn, yn), dt)
    check(M.squared_prob_weights(z, T), per_vector(lambda a: r_r(a, T), zn), dt)
    check(M.topk_weights(z, 5, T), per_vector(lambda a: r_topk_w(a, 5, T), zn), dt)
    check(
        M.prob_one_minus_cos_estimate(z, y, T),
        per_vector(lambda a, b: r_wvar(b - a, r_r(a, T)) / (2 * T * T), zn, yn),
        dt,
    )
    check(
        M.kl_estimate(z, y, T),
        per_vector(lambda a, b: r_wvar(b - a, r_softmax(a, T)) / (2 * T * T), zn, yn),
        dt,
    )

    def ref_split(a, b):
        r = r_r(a, T)
        par, perp, _ = r_decomp(a, b - a)
        return [r_wvar(b - a, r), r_wvar(par, r), r_wvar(perp, r), 2 * r_wcov(par, perp, r)]

    split = M.var_r_split(z, y, T)
    ref = per_vector(ref_split, zn, yn)
    for j, key in enumerate(["var_r", "var_r_par", "var_r_perp", "var_r_cross"]):
        check(split[key], ref[..., j], dt)

    def ref_vars(a, b):
        d = b - a
        return [
            r_wvar(d, r_softmax(a, T)),
            r_wvar(d, r_r(a, T)),
            r_wvar(d, np.ones_like(d)),
            r_wvar(d, r_topk_w(a, 5, T)),
            r_wvar(d, r_topk_w(a, 10, T)),
        ]

    var = M.dz_variances(z, y, T)
    ref = per_vector(ref_vars, zn, yn)
    for j, key in enumerate(["var_p", "var_r", "var_uniform", "var_top5", "var_top10"]):
        check(var[key], ref[..., j], dt)


@pytest.mark.parametrize("dt", DTYPES)
def test_weighted_moments_vs_reference(dt):
    x, y, xn, yn = pair(dt)
    g = torch.Generator().manual_seed(3)
    w = torch.rand(*LEAD, V, generator=g, dtype=torch.float64).to(dt)
    wn = w.double().numpy()
    check(M.weighted_mean(x, w), per_vector(lambda a, c: np.dot(c, a) / c.sum(), xn, wn), dt)
    check(M.weighted_var(x, w), per_vector(r_wvar, xn, wn), dt)
    check(M.weighted_cov(x, y, w), per_vector(r_wcov, xn, yn, wn), dt)
    # zero-weight entries never enter, even when infinite or NaN
    xi = x.clone().double()
    xi[..., 0], xi[..., 1] = math.inf, math.nan
    wz = w.clone().double()
    wz[..., :2] = 0
    check(M.weighted_var(xi, wz).to(out_dtype(dt)), per_vector(lambda a, c: r_wvar(a[2:], c[2:]), xn, wn), dt)
    # broadcast weights: uniform
    check(
        M.weighted_var(x, torch.ones(V, dtype=dt)), per_vector(lambda a: r_wvar(a, np.ones_like(a)), xn), dt
    )


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("k", [1, 3, 10])
def test_top_tokens_vs_reference(dt, k):
    z, y, zn, yn = distinct_pair(dt, seed=k)
    check(
        M.topk_overlap(z, y, k),
        per_vector(lambda a, b: len(set(r_topk(a, k)) & set(r_topk(b, k))) / k, zn, yn),
        dt,
    )
    check(M.top1_match(z, y), per_vector(lambda a, b: float(np.argmax(a) == np.argmax(b)), zn, yn), dt)
    r0, r1 = M.topk_ranks(z, y, k)
    assert r0.dtype == r1.dtype == torch.long and r0.shape == (*LEAD, k)
    np.testing.assert_array_equal(r0.numpy(), per_vector(lambda a: [r_rank(a, i) for i in r_topk(a, k)], zn))
    np.testing.assert_array_equal(
        r1.numpy(), per_vector(lambda a, b: [r_rank(b, i) for i in r_topk(a, k)], zn, yn)
    )
    check(
        M.rank_shift(z, y, k),
        per_vector(lambda a, b: np.mean([abs(r_rank(b, i) - r_rank(a, i)) for i in r_topk(a, k)]), zn, yn),
        dt,
    )


def test_topk_ranks_with_ties():
    z = torch.tensor([3.0, 1.0, 3.0, 0.0])
    y = torch.tensor([1.0, 1.0, 1.0, 2.0])
    r0, r1 = M.topk_ranks(z, y, 2)
    assert r0.tolist() == [0, 0]  # tied tokens share the best rank
    assert r1.tolist() == [1, 1]


@pytest.mark.parametrize("dt", [torch.float64, torch.float32, torch.bfloat16])
def test_logit_space_stats_consistent(dt):
    z, y, _, _ = pair(dt, scale=2.0)
    T = 0.8
    s = M.logit_space_stats(z, y, T)
    expected = {
        **M.perturbation_stats(z, y),
        "centered_cos": M.centered_cosine(z, y),
        "centered_one_minus_cos": M.centered_one_minus_cos(z, y),
        "prob_cos": M.prob_cosine(z, y, T),
        "prob_one_minus_cos": M.prob_one_minus_cos(z, y, T),
        "kl": M.kl(z, y, T),
        "kl_reverse": M.reverse_kl(z, y, T),
        **M.var_r_split(z, y, T),
        "theorem2": M.prob_one_minus_cos_estimate(z, y, T),
        "theorem2_ratio": M.prob_one_minus_cos_estimate(z, y, T) / M.prob_one_minus_cos(z, y, T),
        "theorem3": M.kl_estimate(z, y, T),
        "theorem3_ratio": M.kl_estimate(z, y, T) / M.kl(z, y, T),
        **M.dz_variances(z, y, T),
        "top1_match": M.top1_match(z, y),
        "top5_overlap": M.topk_overlap(z, y, 5),
        "top5_rank_shift": M.rank_shift(z, y, 5),
        "top10_overlap": M.topk_overlap(z, y, 10),
        "top10_rank_shift": M.rank_shift(z, y, 10),
    }
    assert set(s) == set(expected)
    for key, v in s.items():
        assert v.shape == LEAD and v.dtype == out_dtype(dt), key
        torch.testing.assert_close(v, expected[key], rtol=1e-6, atol=1e-9, msg=key)


def test_single_vector_gives_scalars():
    z, y, _, _ = pair(torch.float32, lead=())
    assert M.cosine(z, y).shape == ()
    assert all(v.shape == () for v in M.logit_space_stats(z, y).values())


def test_numpy_input_and_integer_input():
    a = np.arange(1, 6)
    b = np.arange(1, 6)[::-1].copy()
    assert M.cosine(a, b).dtype == torch.float32
    assert math.isclose(M.cosine(a, b).item(), 35 / 55, rel_tol=1e-6)


# ---------------------------------------------------------------- identities


def test_decomposition_identities():
    x, y, _, _ = pair(torch.float64, lead=(4, 5), n=40)
    dx = y - x
    par, perp, alpha = M.decompose(x, dx)
    torch.testing.assert_close(par + perp, dx, rtol=0, atol=1e-13)
    dot = (perp * x).sum(-1)
    assert (dot.abs() <= 1e-12 * perp.norm(dim=-1) * x.norm(dim=-1)).all()
    torch.testing.assert_close(par, alpha[..., None] * x)
    # decompose of zero reference: alpha = 0, perp = dx
    d0 = M.decompose(torch.zeros(3), torch.ones(3))
    assert d0.alpha.item() == 0 and d0.perp.tolist() == [1, 1, 1]


def test_cosine_bounds_and_self():
    x, y, _, _ = pair(torch.float32, lead=(50,), n=64)
    for a, b in [(x, y), (x, x), (x, 3.7 * x), (x, -x), (x, x + 1e-30)]:
        c = M.cosine(a, b)
        assert (c <= 1).all() and (c >= -1).all()
        omc = M.one_minus_cos(a, b)
        assert (omc >= 0).all() and (omc <= 2).all()
    assert (M.one_minus_cos(x, x) == 0).all() and (M.cosine(x, x) <= 1).all()
    torch.testing.assert_close(M.one_minus_cos(x, -x), torch.full((50,), 2.0))
    # zero vector convention: cos 0, 1 − cos 1
    assert M.cosine(torch.zeros(4), torch.ones(4)).item() == 0.0
    assert M.one_minus_cos(torch.zeros(4), torch.ones(4)).item() == 1.0
    assert M.one_minus_cos(torch.zeros(4), torch.zeros(4)).item() == 1.0


def test_one_minus_cos_no_cancellation_float32():
    """float32 1 − cos of nearly identical vectors keeps relative accuracy (naive formula: pure noise)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 64, generator=g)
    y = x + 1e-4 * torch.randn(200, 64, generator=g)
    ref = per_vector(lambda a, b: 1 - r_cos(a, b), x.double().numpy(), y.double().numpy())
    got = M.one_minus_cos(x, y).double().numpy()
    assert np.all(ref < 1e-7)  # far below float32 resolution near 1
    np.testing.assert_allclose(got, ref, rtol=1e-4)  # 1 − F.cosine_similarity here: relative error ~90
    got_t1 = M.perturbation_stats(x, y)["theorem1_ratio"]
    assert ((got_t1 - 1).abs() < 1e-3).all()


def test_kl_small_perturbation_float32():
    g = torch.Generator().manual_seed(2)
    z = 3 * torch.randn(100, 500, generator=g)
    y = z + 1e-3 * torch.randn(100, 500, generator=g)
    ref = M.kl(z.double(), y.double(), 1.0).numpy()
    np.testing.assert_allclose(M.kl(z, y, 1.0).double().numpy(), ref, rtol=5e-3)  # naive Σp·Δlogp: ~1
    np.testing.assert_allclose(
        M.prob_one_minus_cos(z, y).double().numpy(),
        M.prob_one_minus_cos(z.double(), y.double()).numpy(),
        rtol=5e-3,
    )


def test_kl_nonnegative_and_zero():
    g = torch.Generator().manual_seed(4)
    z = 10 * torch.randn(64, 100, generator=g)
    y = z + 5 * torch.randn(64, 100, generator=g)
    for T in (0.1, 1.0, 7.0):
        assert (M.kl(z, y, T) >= 0).all() and (M.reverse_kl(z, y, T) >= 0).all()
        assert (M.kl(z, z, T) == 0).all()
        assert (M.kl(z, z + 3.0, T).abs() < 1e-6).all()


def test_kl_extreme_logits():
    # a token with probability e^-100 under p but 1/2 under p': no overflow, no NaN
    z = torch.tensor([0.0, -100.0])
    y = torch.tensor([0.0, 0.0])
    assert math.isclose(M.kl(z, y).item(), math.log(2), rel_tol=1e-6)
    assert math.isclose(
        M.reverse_kl(z, y).item(), 0.5 * math.log(0.5 / 1.0) + 0.5 * (100 + math.log(0.5)), rel_tol=1e-5
    )
    # masked vocabulary (−inf) in both: contributes nothing
    zm = torch.tensor([1.0, 2.0, -math.inf])
    ym = torch.tensor([1.5, 2.0, -math.inf])
    ref = r_kl(np.array([1.0, 2.0]), np.array([1.5, 2.0]), 1.0)
    assert math.isclose(M.kl(zm, ym).item(), ref, rel_tol=1e-5)
    # token impossible under p (−inf) but not under p': KL(p‖p') still sums over p's support only
    zd = torch.tensor([1.0, 2.0, -math.inf])
    yd = torch.tensor([1.5, 2.0, 0.5])
    p, q = r_softmax(np.array([1.0, 2.0]), 1.0), r_softmax(np.array([1.5, 2.0, 0.5]), 1.0)[:2]
    assert math.isclose(M.kl(zd, yd).item(), float(np.sum(p * np.log(p / q))), rel_tol=1e-5)
    assert M.reverse_kl(zd, yd).item() == math.inf
    # batched: only the affected row takes the slow path, the others are unchanged
    zb = torch.stack([zd, torch.tensor([0.3, 0.1, 0.2])])
    yb = torch.stack([yd, torch.tensor([0.1, 0.1, 0.9])])
    torch.testing.assert_close(M.kl(zb, yb), torch.stack([M.kl(zd, yd), M.kl(zb[1], yb[1])]))
    # p' = 0 where p > 0: infinite divergence
    assert M.kl(torch.tensor([0.0, 0.0]), torch.tensor([0.0, -math.inf])).item() == math.inf


@pytest.mark.parametrize("dt", [torch.float64, torch.float32])
def test_shift_invariance(dt):
    z, y, _, _ = pair(dt, lead=(3, 4), n=30, scale=2.0)
    g = torch.Generator().manual_seed(5)
    c1 = (10 * torch.randn(3, 4, 1, generator=g, dtype=torch.float64)).to(dt)
    c2 = (10 * torch.randn(3, 4, 1, generator=g, dtype=torch.float64)).to(dt)
    T = 1.3
    kw = dict(rtol=1e-9, atol=1e-12) if dt == torch.float64 else dict(rtol=2e-3, atol=2e-5)
    fns = [
        lambda a, b: M.probs(a, T),
        lambda a, b: M.log_probs(a, T) - M.log_probs(a, T).mean(-1, keepdim=True),
        lambda a, b: M.prob_cosine(a, b, T),
        lambda a, b: M.prob_one_minus_cos(a, b, T),
        lambda a, b: M.kl(a, b, T),
        lambda a, b: M.reverse_kl(a, b, T),
        M.centered_cosine,
        M.centered_one_minus_cos,
        lambda a, b: M.prob_one_minus_cos_estimate(a, b, T),
        lambda a, b: M.kl_estimate(a, b, T),
        lambda a, b: M.squared_prob_weights(a, T),
        lambda a, b: M.topk_weights(a, 5, T),
        *[
            (lambda key: lambda a, b: M.dz_variances(a, b, T)[key])(k)
            for k in ("var_p", "var_r", "var_uniform", "var_top5", "var_top10")
        ],
        lambda a, b: M.var_r_split(a, b, T)["var_r"],
    ]
    for fn in fns:
        base = fn(z, y)
        torch.testing.assert_close(fn(z + c1, y + c1), base, **kw)  # shared offset
        torch.testing.assert_close(fn(z + c1, y + c2), base, **kw)  # separate offsets
    s0, s1 = M.logit_space_stats(z, y, T), M.logit_space_stats(z + c1, y + c2, T)
    for key in ("prob_cos", "kl", "kl_reverse", "theorem2", "theorem3", "centered_cos", "top5_overlap"):
        torch.testing.assert_close(s1[key], s0[key], **kw)


def test_var_r_split_sums():
    for seed in range(3):
        z, y, _, _ = pair(torch.float64, lead=(5, 7), n=50, scale=3.0, seed=seed)
        for zz, yy in [(z, y), (z + 4.0, y - 2.0), (z, 1.3 * z), (z, z + 0.7)]:
            s = M.var_r_split(zz, yy, 0.9)
            total = s["var_r_par"] + s["var_r_perp"] + s["var_r_cross"]
            scale = s["var_r_par"] + s["var_r_perp"] + s["var_r_cross"].abs() + 1e-300
            assert ((total - s["var_r"]).abs() <= 1e-12 * scale).all()
    # pure scaling z' = (1+a) z: everything is parallel
    z, _, _, _ = pair(torch.float64, lead=(4,), n=20)
    s = M.var_r_split(z, 1.2 * z, 1.0)
    torch.testing.assert_close(s["var_r_par"], s["var_r"])
    assert (s["var_r_perp"].abs() < 1e-20).all()


@pytest.mark.parametrize("T", [0, 0.0, -1.0, float("nan"), float("inf"), "hot"])
def test_bad_temperature(T):
    z, y, _, _ = pair(torch.float32)
    calls = [
        lambda: M.probs(z, T),
        lambda: M.log_probs(z, T),
        lambda: M.prob_cosine(z, y, T),
        lambda: M.prob_one_minus_cos(z, y, T),
        lambda: M.kl(z, y, T),
        lambda: M.reverse_kl(z, y, T),
        lambda: M.squared_prob_weights(z, T),
        lambda: M.topk_weights(z, 3, T),
        lambda: M.prob_one_minus_cos_estimate(z, y, T),
        lambda: M.var_r_split(z, y, T),
        lambda: M.kl_estimate(z, y, T),
        lambda: M.dz_variances(z, y, T),
        lambda: M.logit_space_stats(z, y, T),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="T must be"):
            call()


def test_argument_errors():
    z, y, _, _ = pair(torch.float32)
    with pytest.raises(ValueError, match="same shape"):
        M.cosine(z, y[..., :-1])
    with pytest.raises(ValueError, match="k must"):
        M.topk_overlap(z, y, 0)
    with pytest.raises(ValueError, match="k must"):
        M.rank_shift(z, y, V + 1)


# ---------------------------------------------------------------- summarize


def test_summarize_mask():
    g = torch.Generator().manual_seed(6)
    v = torch.randn(4, 9, generator=g)
    mask = torch.rand(4, 9, generator=g) > 0.4
    poisoned = torch.where(mask, v, torch.tensor(float("nan")))
    poisoned[~mask] = 1e30  # masked positions must never enter
    poisoned[0, ~mask[0]] = float("nan")
    s = M.summarize(poisoned, mask=mask)
    valid = v[mask].double().numpy()
    assert s["n"] == valid.size
    assert math.isclose(s["mean"], valid.mean(), rel_tol=1e-12)
    assert math.isclose(s["std"], valid.std(), rel_tol=1e-12)
    assert math.isclose(s["median"], np.median(valid), rel_tol=1e-12)
    assert s["min"] == valid.min() and s["max"] == valid.max()
    for q in (0.05, 0.25, 0.5, 0.75, 0.95):
        assert math.isclose(s[f"q{round(100 * q):02d}"], np.quantile(valid, q), rel_tol=1e-12, abs_tol=1e-15)
    s2 = M.summarize(v, quantiles=(0.0, 0.999, 1.0))
    assert s2["q00"] == v.min().item() and s2["q100"] == v.max().item()
    assert math.isclose(s2["q99.9"], np.quantile(v.double().numpy(), 0.999), rel_tol=1e-12)
    # mask broadcast over trailing dims, bf16 values
    s3 = M.summarize(v.to(torch.bfloat16), mask=mask[:, :1])
    assert s3["n"] == int(mask[:, 0].sum()) * 9


def test_summarize_errors():
    v = torch.ones(3, 2)
    with pytest.raises(ValueError, match="no valid position"):
        M.summarize(v, mask=torch.zeros(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="no valid position"):
        M.summarize(torch.ones(0))
    with pytest.raises(TypeError, match="boolean"):
        M.summarize(v, mask=torch.ones(3, 2))
    with pytest.raises(ValueError, match="quantiles"):
        M.summarize(v, quantiles=(1.5,))
    assert math.isnan(M.summarize(torch.tensor([1.0, float("nan")]))["mean"])


# ---------------------------------------------------------------- Taylor claims (property-based, float64)

TAYLOR = settings(deadline=None, max_examples=40)
EPS = (1e-2, 5e-3, 2.5e-3)


def _rand(seed, *shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _check_order(est, real, eps, lead=None):
    """ratio → 1 linearly in ε, absolute error shrinks like ε³ (≥ 4× per halving of ε) and, if
    given, matches the predicted leading error term ``lead(ε)`` of ``est − real``."""
    ratios = [e / r for e, r in zip(est, real)]
    errs = [abs(e - r) for e, r in zip(est, real)]
    for ratio, e in zip(ratios, eps):
        assert abs(ratio - 1) <= 4 * e, (ratios, eps)
    assert abs(ratios[-1] - 1) < abs(ratios[0] - 1)
    for a, b in zip(errs, errs[1:]):
        assert a >= 4 * b, (errs, ratios)
    if lead is not None:
        pred = lead(eps[-1])
        assert abs((est[-1] - real[-1]) - pred) <= 0.25 * abs(pred), (est[-1] - real[-1], pred)


@TAYLOR
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(3, 64), scale=st.floats(0.1, 100.0))
def test_theorem1_taylor(seed, n, scale):
    x = scale * _rand(seed, n)
    u = _rand(seed + 1, n)
    u = u * x.norm() / u.norm()
    c = (u @ x / (u.norm() * x.norm())).item()
    assume(0.1 <= abs(c) <= 0.95)  # generic: both a parallel part (3rd-order term) and an orthogonal one
    est, real = [], []
    for e in EPS:
        y = x + e * u
        est.append(M.one_minus_cos_estimate(x, y).item())
        real.append(M.one_minus_cos(x, y).item())
    # est/real = ‖x+εu‖²(1+cos)/(2‖x‖²) = 1 + 2α + O(ε²): est − real ≈ α ‖εu_⊥‖²/‖x‖²
    dec = M.decompose(x, u)
    a1, rho2 = dec.alpha.item(), (dec.perp.norm() ** 2 / x.norm() ** 2).item()
    _check_order(est, real, EPS, lead=lambda e: (e * a1) * e * e * rho2)
    # and the fields of perturbation_stats agree
    st_ = M.perturbation_stats(x, x + EPS[0] * u)
    assert math.isclose(st_["theorem1_ratio"].item(), est[0] / real[0], rel_tol=1e-9)


def _logit_case(seed, n, zscale):
    z = zscale * _rand(seed, n)
    u = _rand(seed + 1, n)
    return z, u


def _std_direction(u, w):
    """Centre u under w and scale so that max |u − E_w u| = 1; return it with its κ₂, κ₃ under w."""
    m = (w * u).sum()
    u = u - m
    u = u / u.abs().max()
    k2 = (w * u * u).sum().item()
    k3 = (w * u**3).sum().item()
    return u, k2, k3


@TAYLOR
@given(
    seed=st.integers(0, 2**31 - 1), n=st.integers(3, 64), zscale=st.floats(0.1, 2.0), T=st.floats(0.5, 2.0)
)
def test_theorem2_taylor(seed, n, zscale, T):
    z, u = _logit_case(seed, n, zscale)
    r = M.squared_prob_weights(z, T)
    u, k2, k3 = _std_direction(u, r)
    assume(k2 >= 1e-3 and abs(k3) >= 0.1 * k2)  # non-degenerate variance and third-order term
    est, real = [], []
    for e in EPS:
        y = z + e * T * u  # δ = Δz/T = e·u
        est.append(M.prob_one_minus_cos_estimate(z, y, T).item())
        real.append(M.prob_one_minus_cos(z, y, T).item())
    # 1 − cos(p,p') = (κ₂ + κ₃)/2 + O(ε⁴) with the cumulants of δ = εu under r
    _check_order(est, real, EPS, lead=lambda e: -k3 * e**3 / 2)


@TAYLOR
@given(
    seed=st.integers(0, 2**31 - 1), n=st.integers(3, 64), zscale=st.floats(0.1, 2.0), T=st.floats(0.5, 2.0)
)
def test_theorem3_taylor(seed, n, zscale, T):
    z, u = _logit_case(seed, n, zscale)
    p = M.probs(z, T)
    u, k2, k3 = _std_direction(u, p)
    assume(k2 >= 1e-3 and abs(k3) >= 0.1 * k2)
    est, real, rev = [], [], []
    for e in EPS:
        y = z + e * T * u
        est.append(M.kl_estimate(z, y, T).item())
        real.append(M.kl(z, y, T).item())
        rev.append(M.reverse_kl(z, y, T).item())
    # KL(p‖p') = κ₂/2 + κ₃/6 + O(ε⁴) with the cumulants of δ = εu under p
    _check_order(est, real, EPS, lead=lambda e: -k3 * e**3 / 6)
    # the two KL directions agree to second order
    for a, b, e in zip(real, rev, EPS):
        assert abs(a - b) <= 4 * e * a
