"""The fast streaming statistics agree with the reference metrics (prunelens.analysis.metrics)."""

from __future__ import annotations

import math

import pytest
import torch

from prunelens.analysis import metrics as M
from prunelens.analysis.pairstats import LogitState, logit_stats, p_keys, pair_stats, z_keys

pytestmark = pytest.mark.usefixtures("one_thread")

V = 600


def _case(kind: str, scale: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(16, V, generator=g) * 3 - 2
    noise = torch.randn(16, V, generator=g)
    if kind == "noise":
        dz = scale * noise
    elif kind == "offset":  # mostly a shared shift of all logits (softmax ignores it)
        dz = 0.1 * scale * noise + 5 * scale
    elif kind == "scale":  # mostly parallel to z (a temperature-like change)
        dz = 0.1 * scale * noise + 0.1 * scale * z
    else:  # concentrated on the top tokens
        dz = 0.01 * scale * noise
        dz.scatter_(-1, z.topk(3, -1).indices, scale)
    return z, z + dz


CASES = [(kind, scale, 1.0) for kind in ("noise", "offset", "scale", "top") for scale in (0.03, 1.0)]
CASES += [("noise", 0.3, 0.5), ("top", 0.3, 0.5), ("offset", 0.3, 2.0), ("scale", 3.0, 2.0)]


@pytest.mark.parametrize("kind,scale,T", CASES)
def test_fast_matches_reference(kind, scale, T):
    z, y = _case(kind, scale)
    ref = M.logit_space_stats(z, y, T)
    fast = logit_stats(z, y, T)
    assert set(fast) == set(ref)
    for key in ref:
        a, b = ref[key].double(), fast[key].double()
        fin = torch.isfinite(a) & (a.abs() > 1e-9)
        denom = {
            "theorem1_ratio": "one_minus_cos",
            "theorem2_ratio": "prob_one_minus_cos",
            "theorem3_ratio": "kl",
        }
        if key in denom:  # a ratio is only as precise as its (small) denominator
            fin &= ref[denom[key]].double().abs() > 1e-6
        rtol = 2e-3 * torch.ones_like(a)
        if key in ("kl", "kl_reverse"):
            atol = 3e-8  # documented absolute precision of the KL difference form
        elif key == "theorem3_ratio":  # inherits the KL's absolute error, relative to the KL
            atol, rtol = 0.0, rtol + 3e-8 / ref["kl"].double().abs()
        else:
            atol = 1e-7 * max(1.0, float(a.abs().max()))
        ok = (a - b).abs() <= atol + rtol * a.abs()
        assert bool(ok[fin].all()), (key, float(((a - b).abs() / a.abs().clamp_min(1e-30))[fin].max()))


def test_identical_logits_give_zero_perturbation_and_nan_ratios():
    z = torch.randn(5, V)
    st = logit_stats(z, z.clone(), 1.0)
    ref = M.logit_space_stats(z, z.clone(), 1.0)
    for key in ("one_minus_cos", "prob_one_minus_cos", "kl", "kl_reverse", "theorem2", "theorem3", "var_r"):
        assert torch.all(st[key] == 0), key
    assert torch.all(st["top1_match"] == 1) and torch.all(st["top5_overlap"] == 1)
    for key in ("theorem1_ratio", "theorem2_ratio", "theorem3_ratio"):
        assert torch.isnan(st[key]).all() and torch.isnan(ref[key]).all()


def test_var_r_split_sums_to_var_r():
    z, y = _case("scale", 0.3)
    st = logit_stats(z, y, 1.0)
    total = st["var_r_par"] + st["var_r_perp"] + st["var_r_cross"]
    torch.testing.assert_close(total, st["var_r"], rtol=1e-3, atol=1e-7)


def test_shared_states_and_multiple_temperatures():
    z0, z1 = _case("noise", 0.3)
    z2 = z1 + 0.1
    a, b, c = LogitState(z0), LogitState(z1), LogitState(z2)
    for T in (1.0, 0.7):
        for x, y, zx, zy in ((a, b, z0, z1), (b, c, z1, z2)):
            got = pair_stats(x, y, T)
            ref = M.logit_space_stats(zx, zy, T)
            for key in ("prob_one_minus_cos", "kl", "theorem2", "centered_cos", "top10_rank_shift"):
                torch.testing.assert_close(got[key], ref[key], rtol=2e-3, atol=1e-7)
    multi = logit_stats(z0, z1, (1.0, 2.0))
    assert set(multi) == {1.0, 2.0}
    assert set(multi[2.0]) == set(z_keys()) | set(p_keys())


def test_rank_shift_when_top_tokens_leave_the_cached_top_k():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, V, generator=g)
    y = torch.randn(4, V, generator=g)  # unrelated: the dense top tokens fall far down
    ref = M.logit_space_stats(z, y, 1.0)
    got = logit_stats(z, y, 1.0)
    for k in (5, 10):
        torch.testing.assert_close(got[f"top{k}_rank_shift"], ref[f"top{k}_rank_shift"])
        torch.testing.assert_close(got[f"top{k}_overlap"], ref[f"top{k}_overlap"])


def test_bad_temperature_and_k():
    z = torch.randn(2, V)
    with pytest.raises(ValueError, match="T > 0"):
        logit_stats(z, z, 0.0)
    with pytest.raises(ValueError):
        pair_stats(LogitState(z, 4), LogitState(z, 4), 1.0, ks=(10,))
    assert math.isfinite(float(logit_stats(z, z + 1e-3, 1.0)["kl"].sum()))
