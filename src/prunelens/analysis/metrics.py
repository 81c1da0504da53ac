"""Pure metrics of a pruning perturbation in hidden, logit and probability space (docs/method.md §2–3).

This module is the one to import: it holds the probability-space metrics (softmax, cosine of
probabilities, KL), the estimates of Theorems 2 and 3, :func:`logit_space_stats` (all of them for a pair
of logit tensors) and :func:`summarize`, and re-exports the geometry (:mod:`~prunelens.analysis.geometry`:
cosines, decomposition, Theorem 1), the top-token agreement (:mod:`~prunelens.analysis.top_tokens`) and
the weighted moments (:mod:`~prunelens.analysis.moments`).

Every function here is a pure tensor function:

* batched over any leading shape, with the vector / vocabulary dimension **last**; per-position
  results have the leading shape (a single vector gives a 0-dim tensor);
* computed in float32 or better whatever the input: bf16 / fp16 / integer inputs are upcast to
  float32, float64 stays float64 (two inputs are promoted together);
* paired functions take the **dense** tensor first and the perturbed (pruned) one second, and
  require both to have the same shape.

Notation: ``x' = x + Δx``; ``Δx_∥ = α·x`` with ``α = ⟨Δx, x⟩ / ‖x‖²`` and ``Δx_⊥ = Δx − Δx_∥``;
logits ``z``, probabilities ``p = softmax(z / T)`` with temperature ``T > 0``.

Conventions for degenerate inputs: a zero vector has cosine 0 (``1 − cos = 1``) with anything, and
``α = 0`` against a zero reference; ratios of two zeros (e.g. ``‖Δ∥‖/‖Δ⊥‖`` for ``Δx = 0``) are NaN
and ``a / 0`` with ``a > 0`` is ``inf`` — :func:`summarize` reports them rather than hiding them.

Usage::

    from prunelens.analysis import metrics as M
    stats = M.logit_space_stats(z_dense, z_pruned, T=1.0)      # dict of per-position tensors
    M.summarize(stats["prob_one_minus_cos"], mask=attention_mask.bool())
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from prunelens.analysis.geometry import (
    Decomposition,
    _center,
    _check_k,
    _decompose,
    _geometry,
    _pair,
    _perturbation_stats,
    _up,
    centered_cosine,
    centered_one_minus_cos,
    check_temperature,
    cosine,
    decompose,
    one_minus_cos,
    one_minus_cos_estimate,
    perturbation_stats,
)
from prunelens.analysis.moments import _wcov, weighted_cov, weighted_mean, weighted_var
from prunelens.analysis.top_tokens import _topk_ranks, rank_shift, top1_match, topk_overlap, topk_ranks
from prunelens.utils.kl import kl_divergence

__all__ = [
    "Decomposition",
    "centered_cosine",
    "centered_one_minus_cos",
    "check_temperature",
    "cosine",
    "decompose",
    "dz_variances",
    "kl",
    "kl_estimate",
    "log_probs",
    "logit_space_stats",
    "one_minus_cos",
    "one_minus_cos_estimate",
    "perturbation_stats",
    "prob_cosine",
    "prob_one_minus_cos",
    "prob_one_minus_cos_estimate",
    "probs",
    "rank_shift",
    "reverse_kl",
    "squared_prob_weights",
    "summarize",
    "top1_match",
    "topk_overlap",
    "topk_ranks",
    "topk_weights",
    "var_r_split",
    "weighted_cov",
    "weighted_mean",
    "weighted_var",
]


# --------------------------------------------------------------------------------------------------
# probability space
# --------------------------------------------------------------------------------------------------


def log_probs(z: Tensor, T: float = 1.0) -> Tensor:
    """``log p = log_softmax(z / T)`` over the last dimension (T > 0, else ValueError)."""
    T = check_temperature(T)
    (z,) = _up(z)
    return torch.log_softmax(z / T, dim=-1)


def probs(z: Tensor, T: float = 1.0) -> Tensor:
    """``p = softmax(z / T)``, ``p_i = exp(z_i/T) / Σ_j exp(z_j/T)`` (T > 0, else ValueError)."""
    return log_probs(z, T).exp()


def _pair_logp(z, z_pert, T) -> tuple[Tensor, Tensor, Tensor, Tensor, float]:
    T = check_temperature(T)
    z, y = _pair(z, z_pert)
    return z, y, torch.log_softmax(z / T, -1), torch.log_softmax(y / T, -1), T


def prob_cosine(z: Tensor, z_pert: Tensor, T: float = 1.0) -> Tensor:
    """``cos(p, p')`` with ``p = softmax(z/T)``, ``p' = softmax(z'/T)``."""
    _, _, lp, lq, _ = _pair_logp(z, z_pert, T)
    return _geometry(lp.exp(), lq.exp())["cos"]


def prob_one_minus_cos(z: Tensor, z_pert: Tensor, T: float = 1.0) -> Tensor:
    """``1 − cos(p, p')`` (cancellation-free, see :func:`one_minus_cos`)."""
    _, _, lp, lq, _ = _pair_logp(z, z_pert, T)
    return _geometry(lp.exp(), lq.exp())["omc"]


def _kl_logp(lp: Tensor, lq: Tensor, p: Tensor | None = None, q: Tensor | None = None) -> Tensor:
    """KL(p‖q) from log-probabilities with every term ``p_i φ(δ_i) ≥ 0`` (the project's one KL,
    :func:`prunelens.utils.kl.kl_divergence`, in its cancellation-damped form: see there)."""
    return kl_divergence(lp, lq, p, q, nonnegative_terms=True)


def kl(z: Tensor, z_pert: Tensor, T: float = 1.0) -> Tensor:
    """``KL(p ‖ p') = Σ_i p_i (log p_i − log p'_i)``, p dense, from ``log_softmax`` (never ``log(p+ε)``).

    Computed as ``Σ_i p_i (δ_i + e^{−δ_i} − 1)``, ``δ = log p − log p'`` (same value, every term ≥ 0).
    Zero-probability tokens of ``p`` contribute 0; ``inf`` if ``p'`` is 0 where ``p`` is not.
    """
    _, _, lp, lq, _ = _pair_logp(z, z_pert, T)
    return _kl_logp(lp, lq)


def reverse_kl(z: Tensor, z_pert: Tensor, T: float = 1.0) -> Tensor:
    """``KL(p' ‖ p) = Σ_i p'_i (log p'_i − log p_i)``; agrees with :func:`kl` to second order."""
    _, _, lp, lq, _ = _pair_logp(z, z_pert, T)
    return _kl_logp(lq, lp)


# --------------------------------------------------------------------------------------------------
# token weightings and the estimates of Theorems 2 and 3
# --------------------------------------------------------------------------------------------------


def squared_prob_weights(z: Tensor, T: float = 1.0) -> Tensor:
    """The weights ``r_i = p_i² / Σ_j p_j²`` of Theorem 2 (the order-2 escort of ``p = softmax(z/T)``).

    Computed as ``r = softmax(2z/T)``, the same distribution without squaring probabilities (a
    sharp ``p`` would underflow ``p²`` and make ``Σ p²`` lose the tail).
    """
    return probs(z, check_temperature(T) / 2.0)


def topk_weights(z: Tensor, k: int, T: float = 1.0) -> Tensor:
    """``p = softmax(z/T)`` restricted to the dense top-k tokens and renormalised (zeros elsewhere).

    ``w_i = exp(z_i/T) / Σ_{j∈S_k} exp(z_j/T)`` for ``i ∈ S_k(z)``, else 0; shape of ``z``.
    """
    T = check_temperature(T)
    (z,) = _up(z)
    k = _check_k(k, z.shape[-1])
    vals, idx = z.topk(k, dim=-1)
    return torch.zeros_like(z).scatter(-1, idx, torch.softmax(vals / T, -1))


def prob_one_minus_cos_estimate(z: Tensor, z_pert: Tensor, T: float = 1.0) -> Tensor:
    """Estimate of ``1 − cos(p, p')`` from the ``p²``-weighted variance of the logit change (Theorem 2):

        1 − cos(p, p') ≈ Var_r(Δz) / (2T²),      r_i = p_i² / Σ_j p_j²,  Δz = z' − z

    Exactly, ``cos(p, p') = E_r[e^δ] / sqrt(E_r[e^{2δ}])`` with ``δ = Δz/T``; expanding in the
    cumulants of δ under r gives ``1 − cos = κ₂/2 + κ₃/2 + O(δ⁴)``. Invariant to adding a constant
    to all logits of ``z`` or of ``z'``.
    """
    z, y, lp, _, T = _pair_logp(z, z_pert, T)
    r = torch.softmax(2.0 * lp, -1)
    return _wcov(y - z, y - z, r) / (2.0 * T * T)


def var_r_split(z: Tensor, z_pert: Tensor, T: float = 1.0) -> dict[str, Tensor]:
    """Split ``Var_r(Δz)`` (Theorem 2's variance, ``r ∝ p²``) along ``Δz = Δz_∥ + Δz_⊥``, ``Δz_∥ = α·z``:

        Var_r(Δz) = Var_r(Δz_∥) + Var_r(Δz_⊥) + 2·Cov_r(Δz_∥, Δz_⊥)
                  =  α² Var_r(z)  + Var_r(Δz_⊥) + 2α Cov_r(z, Δz_⊥)

    Keys: ``var_r`` (computed directly), ``var_r_par``, ``var_r_perp``, ``var_r_cross`` (the
    2·covariance term); the last three sum to ``var_r`` up to rounding. The parallel part acts
    like a temperature change and does not vanish; unlike ``var_r`` the split depends on the
    logits' offset (α is taken against the raw ``z``).
    """
    z, y, lp, _, _ = _pair_logp(z, z_pert, T)
    r = torch.softmax(2.0 * lp, -1)
    dz = y - z
    dec = _decompose(z, dz)
    a = dec.alpha
    return {
        "var_r": _wcov(dz, dz, r),
        "var_r_par": a * a * _wcov(z, z, r),
        "var_r_perp": _wcov(dec.perp, dec.perp, r),
        "var_r_cross": 2.0 * a * _wcov(z, dec.perp, r),
    }


def kl_estimate(z: Tensor, z_pert: Tensor, T: float = 1.0) -> Tensor:
    """Estimate of ``KL(p ‖ p')`` from the ``p``-weighted variance of the logit change (Theorem 3):

        KL(p ‖ p') ≈ Var_{i∼p}(Δz_i) / (2T²),      p the dense distribution

    Exactly, ``KL(p‖p') = log E_p[e^δ] − E_p[δ]`` with ``δ = Δz/T`` (the cumulant generating
    function minus its linear term) ``= κ₂/2 + κ₃/6 + O(δ⁴)``.
    """
    z, y, lp, _, T = _pair_logp(z, z_pert, T)
    return _wcov(y - z, y - z, lp.exp()) / (2.0 * T * T)


def dz_variances(z: Tensor, z_pert: Tensor, T: float = 1.0, ks: Sequence[int] = (5, 10)) -> dict[str, Tensor]:
    """Variance of ``Δz = z' − z`` under several token weightings — where the divergence lives.

    - ``var_p``: weights ``p = softmax(z/T)`` (Theorem 3; ``KL ≈ var_p / 2T²``)
    - ``var_r``: weights ``r ∝ p²`` (Theorem 2; ``1 − cos(p,p') ≈ var_r / 2T²``)
    - ``var_uniform``: every token of the vocabulary equally
    - ``var_top{k}``: ``p`` restricted to the dense top-k tokens and renormalised, for each k in ``ks``
    """
    z, y, lp, _, T = _pair_logp(z, z_pert, T)
    return _dz_variances(z, y - z, lp.exp(), torch.softmax(2.0 * lp, -1), T, ks)


def _dz_variances(
    z: Tensor, dz: Tensor, p: Tensor, r: Tensor, T: float, ks: Sequence[int]
) -> dict[str, Tensor]:
    out = {
        "var_p": _wcov(dz, dz, p),
        "var_r": _wcov(dz, dz, r),
        "var_uniform": dz.var(-1, unbiased=False),
    }
    for k in ks:
        k = _check_k(k, z.shape[-1])
        vals, idx = z.topk(k, dim=-1)
        d = dz.gather(-1, idx)
        out[f"var_top{k}"] = _wcov(d, d, torch.softmax(vals / T, -1))
    return out


# --------------------------------------------------------------------------------------------------
# everything for a pair of logit tensors
# --------------------------------------------------------------------------------------------------


def logit_space_stats(
    z: Tensor, z_pert: Tensor, T: float = 1.0, ks: Sequence[int] = (5, 10)
) -> dict[str, Tensor]:
    """All logit- and probability-space metrics of ``z' = z + Δz`` (dense ``z`` first), per position.

    Returns a dict of tensors of the leading shape:

    - logit geometry (:func:`perturbation_stats` on z): ``cos``, ``one_minus_cos``, ``rel_norm``,
      ``rel_par``, ``rel_perp``, ``par_perp_ratio``, ``alpha``, ``theorem1``, ``theorem1_ratio``
    - ``centered_cos``, ``centered_one_minus_cos``
    - ``prob_cos``, ``prob_one_minus_cos`` = 1 − cos(p, p'); ``theorem2`` = Var_r(Δz)/(2T²),
      ``theorem2_ratio`` = theorem2 / (1 − cos(p,p')); the split ``var_r``, ``var_r_par``,
      ``var_r_perp``, ``var_r_cross`` (:func:`var_r_split`)
    - ``kl`` = KL(p‖p'), ``kl_reverse`` = KL(p'‖p); ``theorem3`` = Var_p(Δz)/(2T²),
      ``theorem3_ratio`` = theorem3 / KL; ``var_p``, ``var_uniform``, ``var_top{k}``
    - ``top1_match``, ``top{k}_overlap`` and ``top{k}_rank_shift`` for each k in ``ks``
    """
    z, y, lp, lq, T = _pair_logp(z, z_pert, T)
    g = _geometry(z, y)
    out = _perturbation_stats(g)
    gc = _geometry(_center(z), _center(y))
    out["centered_cos"], out["centered_one_minus_cos"] = gc["cos"], gc["omc"]
    del gc

    p, q = lp.exp(), lq.exp()
    gp = _geometry(p, q)
    out["prob_cos"], out["prob_one_minus_cos"] = gp["cos"], gp["omc"]
    del gp
    out["kl"] = _kl_logp(lp, lq, p, q)
    out["kl_reverse"] = _kl_logp(lq, lp, q, p)

    dz, dec = g["dx"], g["dec"]
    r = torch.softmax(2.0 * lp, -1)
    var = _dz_variances(z, dz, p, r, T, ks)
    a = dec.alpha
    out["var_r"] = var.pop("var_r")
    out["var_r_par"] = a * a * _wcov(z, z, r)
    out["var_r_perp"] = _wcov(dec.perp, dec.perp, r)
    out["var_r_cross"] = 2.0 * a * _wcov(z, dec.perp, r)
    out["theorem2"] = out["var_r"] / (2.0 * T * T)
    out["theorem2_ratio"] = out["theorem2"] / out["prob_one_minus_cos"]
    out["theorem3"] = var["var_p"] / (2.0 * T * T)
    out["theorem3_ratio"] = out["theorem3"] / out["kl"]
    out.update(var)

    out["top1_match"] = (z.argmax(-1) == y.argmax(-1)).to(z.dtype)
    if ks:
        # one pass for the largest k; the smaller top-k sets are prefixes of it
        kmax = max(_check_k(k, z.shape[-1]) for k in ks)
        idx = z.topk(kmax, dim=-1).indices
        r0, r1 = _topk_ranks(z, y, kmax)
        shift = (r1 - r0).abs().to(z.dtype)
        for k in ks:
            b = y.topk(k, dim=-1).indices
            hit = (idx[..., :k].unsqueeze(-1) == b.unsqueeze(-2)).any(-1)
            out[f"top{k}_overlap"] = hit.to(z.dtype).mean(-1)
            out[f"top{k}_rank_shift"] = shift[..., :k].mean(-1)
    return out


# --------------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------------


def _qkey(q: float) -> str:
    pct = 100.0 * q
    if abs(pct - round(pct)) < 1e-9:
        return f"q{int(round(pct)):02d}"
    return f"q{pct:g}"


def summarize(
    values: Tensor,
    mask: Tensor | None = None,
    quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95),
) -> dict[str, float]:
    """Mean, median and quantiles of per-position values over the valid positions only.

    ``mask`` (bool, broadcastable to ``values``) marks valid positions; masked-out positions never
    enter any statistic. Quantiles use linear interpolation between order statistics (as
    ``numpy.quantile``), computed in float64 by sorting (no size limit). Keys: ``n``, ``mean``,
    ``std`` (population), ``min``, ``median``, ``max`` and ``q05``-style keys (``q{100·q}``) for each
    quantile. NaN among valid values propagates (NaN marks an undefined ratio; mask it if intended).
    Raises ValueError if no position is valid.
    """
    v = torch.as_tensor(values)
    if v.is_complex():
        raise TypeError("summarize expects real values")
    v = v.detach().to(torch.float64)
    if mask is not None:
        m = torch.as_tensor(mask, device=v.device)
        if m.dtype != torch.bool:
            raise TypeError(f"mask must be a boolean tensor, got dtype {m.dtype}")
        v = v[torch.broadcast_to(m, v.shape)]
    v = v.reshape(-1)
    n = v.numel()
    if n == 0:
        raise ValueError("summarize: no valid position (empty values or all positions masked)")
    for q in quantiles:
        if not 0.0 <= float(q) <= 1.0:
            raise ValueError(f"quantiles must lie in [0, 1], got {q}")
    if torch.isnan(v).any():
        srt = torch.full_like(v, float("nan"))
    else:
        srt = torch.sort(v).values

    def quant(q: float) -> float:
        h = float(q) * (n - 1)
        lo = math.floor(h)
        hi = min(lo + 1, n - 1)
        a, b = srt[lo].item(), srt[hi].item()
        return a if hi == lo or a == b else a + (h - lo) * (b - a)

    out: dict[str, float] = {
        "n": n,
        "mean": v.mean().item(),
        "std": v.std(unbiased=False).item(),
        "min": srt[0].item(),
        "median": quant(0.5),
        "max": srt[-1].item(),
    }
    for q in quantiles:
        out[_qkey(q)] = quant(q)
    return out
