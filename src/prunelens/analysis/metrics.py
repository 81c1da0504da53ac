"""Pure metrics of a pruning perturbation in hidden, logit and probability space (docs/method.md §2–3).

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
from typing import Any, NamedTuple

import torch
from torch import Tensor

from prunelens.utils.kl import kl_divergence

__all__ = [
    "Decomposition",
    "centered_cosine",
    "centered_one_minus_cos",
    "cosine",
    "decompose",
    "dz_variances",
    "kl",
    "log_probs",
    "logit_space_stats",
    "one_minus_cos",
    "perturbation_stats",
    "prob_cosine",
    "prob_one_minus_cos",
    "probs",
    "rank_shift",
    "reverse_kl",
    "summarize",
    "theorem1_estimate",
    "theorem2_estimate",
    "theorem2_split",
    "theorem2_weights",
    "theorem3_estimate",
    "top1_match",
    "topk_overlap",
    "topk_ranks",
    "topk_weights",
    "weighted_cov",
    "weighted_mean",
    "weighted_var",
]


# --------------------------------------------------------------------------------------------------
# helpers: dtype, shapes, temperature
# --------------------------------------------------------------------------------------------------


def _compute_dtype(*ts: Tensor) -> torch.dtype:
    for t in ts:
        if t.is_complex():
            raise TypeError("metrics are defined for real tensors, got a complex tensor")
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _up(*ts) -> tuple[Tensor, ...]:
    """Convert to tensors and upcast to the common compute dtype (float32, or float64 if any is)."""
    tt = tuple(torch.as_tensor(t) for t in ts)
    dt = _compute_dtype(*tt)
    return tuple(t.to(dt) for t in tt)


def _pair(x, y) -> tuple[Tensor, Tensor]:
    x, y = _up(x, y)
    if x.shape != y.shape:
        raise ValueError(
            f"dense and perturbed tensors must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.dim() == 0:
        raise ValueError("expected at least one dimension (the vector dimension, last)")
    return x, y


def check_temperature(T) -> float:
    try:
        t = float(T)
    except (TypeError, ValueError):
        raise ValueError(f"temperature T must be a positive finite number, got {T!r}") from None
    if not (t > 0.0) or not math.isfinite(t):
        raise ValueError(f"temperature T must be a positive finite number (T > 0), got {T!r}")
    return t


def _check_k(k: int, n: int) -> int:
    k = int(k)
    if not 1 <= k <= n:
        raise ValueError(f"k must satisfy 1 <= k <= vocabulary size {n}, got {k}")
    return k


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return torch.linalg.vecdot(a, b)  # fused multiply-sum over the last dim, no temporary


def _sq(x: Tensor) -> Tensor:
    return _dot(x, x)


def _nonzero(d: Tensor) -> Tensor:
    """Replace exact zeros in a denominator by 1 (the numerator is then 0 by construction)."""
    return torch.where(d == 0, torch.ones_like(d), d)


# --------------------------------------------------------------------------------------------------
# geometry: cosine, 1 − cos, parallel / orthogonal decomposition, Theorem 1
# --------------------------------------------------------------------------------------------------


class Decomposition(NamedTuple):
    """``Δx = par + perp`` against the reference ``x``: ``par = α·x``, ``perp ⟂ x``."""

    par: Tensor  # (..., d)
    perp: Tensor  # (..., d)
    alpha: Tensor  # (...)


def _decompose(x: Tensor, dx: Tensor, nx2: Tensor | None = None) -> Decomposition:
    if nx2 is None:
        nx2 = _sq(x)
    alpha = _dot(dx, x) / _nonzero(nx2)
    par = alpha.unsqueeze(-1) * x
    return Decomposition(par, dx - par, alpha)


def _geometry(x: Tensor, y: Tensor) -> dict[str, Any]:
    """Shared core of cosine / 1 − cos / decomposition for upcast, same-shape ``x`` (dense), ``y``."""
    nx2, ny2 = _sq(x), _sq(y)
    nx, ny = nx2.sqrt(), ny2.sqrt()
    zero = (nx2 == 0) | (ny2 == 0)
    cos = (_dot(x, y) / _nonzero(nx * ny)).clamp(-1.0, 1.0)
    dx = y - x
    dec = _decompose(x, dx, nx2)
    perp2 = _sq(dec.perp)
    # sin²θ = ‖Δx_⊥‖²/‖y‖² and 1 − cos = sin²/(1 + cos): no cancellation for nearly equal vectors.
    omc_small = (perp2 / _nonzero(ny2)) / (1.0 + cos)
    omc = torch.where(cos > 0, omc_small, 1.0 - cos)
    omc = torch.where(zero, torch.ones_like(omc), omc).clamp(0.0, 2.0)
    cos = torch.where(zero, torch.zeros_like(cos), cos)
    return dict(nx2=nx2, cos=cos, omc=omc, dx=dx, dec=dec, perp2=perp2)


def cosine(x: Tensor, y: Tensor) -> Tensor:
    """Cosine similarity over the last dimension.

    ``cos(x, y) = ⟨x, y⟩ / (‖x‖ ‖y‖)``, clamped to ``[−1, 1]``; 0 if either vector is zero.
    """
    x, y = _pair(x, y)
    return _geometry(x, y)["cos"]


def one_minus_cos(x: Tensor, y: Tensor) -> Tensor:
    """``1 − cos(x, y)`` computed without cancellation for nearly identical vectors.

    With ``Δ = y − x`` and ``Δ_⊥`` its part orthogonal to ``x``, ``sin²θ = ‖Δ_⊥‖² / ‖y‖²`` and

        1 − cos θ = sin²θ / (1 + cos θ)          (used when cos θ > 0; otherwise 1 − cos θ directly)

    so the relative accuracy stays at machine precision even when ``1 − cos`` is far below it,
    where ``1 − ⟨x,y⟩/(‖x‖‖y‖)`` would return rounding noise. ``x`` is the reference (dense) vector.
    """
    x, y = _pair(x, y)
    return _geometry(x, y)["omc"]


def decompose(x: Tensor, dx: Tensor) -> Decomposition:
    """Split a perturbation ``dx`` of ``x`` into its part along ``x`` and its part orthogonal to it.

        α = ⟨Δx, x⟩ / ‖x‖²,      Δx_∥ = α·x,      Δx_⊥ = Δx − Δx_∥   (so ⟨Δx_⊥, x⟩ = 0)

    Returns ``Decomposition(par, perp, alpha)``; ``α = 0`` (and ``perp = dx``) when ``x = 0``.
    """
    x, dx = _pair(x, dx)
    return _decompose(x, dx)


def theorem1_estimate(x: Tensor, x_pert: Tensor) -> Tensor:
    """Theorem 1 (any space): ``1 − cos(x, x + Δx) ≈ ‖Δx_⊥‖² / (2 ‖x‖²)``.

    Exactly, ``1 − cos = ‖Δx_⊥‖² / (‖x + Δx‖² (1 + cos))``; the estimate replaces
    ``‖x + Δx‖²(1 + cos)`` by ``2‖x‖²``, so its relative error is ``≈ 2α`` (third order overall).
    Only the orthogonal part of the perturbation moves the angle to second order.
    """
    x, y = _pair(x, x_pert)
    nx2 = _sq(x)
    perp = _decompose(x, y - x, nx2).perp
    return _sq(perp) / (2.0 * _nonzero(nx2))


def perturbation_stats(x: Tensor, x_pert: Tensor) -> dict[str, Tensor]:
    """Per-position geometry of ``x' = x + Δx`` against the dense ``x`` (docs/method.md §2.1).

    Returns a dict of tensors of the leading shape:

    - ``cos`` = cos(x, x'); ``one_minus_cos`` = 1 − cos (cancellation-free, see :func:`one_minus_cos`)
    - ``rel_norm`` = ‖Δx‖/‖x‖
    - ``rel_par`` = ‖Δx_∥‖/‖x‖ = |α|; ``rel_perp`` = ‖Δx_⊥‖/‖x‖
    - ``par_perp_ratio`` = ‖Δx_∥‖/‖Δx_⊥‖ (inf if Δx is parallel to x, NaN if Δx = 0)
    - ``alpha`` = ⟨Δx, x⟩/‖x‖²
    - ``theorem1`` = ‖Δx_⊥‖²/(2‖x‖²) and ``theorem1_ratio`` = theorem1 / (1 − cos)
    """
    x, y = _pair(x, x_pert)
    return _perturbation_stats(_geometry(x, y))


def _perturbation_stats(g: dict[str, Any]) -> dict[str, Tensor]:
    nx = g["nx2"].sqrt()
    perp_n = g["perp2"].sqrt()
    par_n = g["dec"].alpha.abs() * nx
    nx_safe = _nonzero(nx)
    theorem1 = g["perp2"] / (2.0 * _nonzero(g["nx2"]))
    return {
        "cos": g["cos"],
        "one_minus_cos": g["omc"],
        "rel_norm": _sq(g["dx"]).sqrt() / nx_safe,
        "rel_par": par_n / nx_safe,
        "rel_perp": perp_n / nx_safe,
        "par_perp_ratio": par_n / perp_n,
        "alpha": g["dec"].alpha,
        "theorem1": theorem1,
        "theorem1_ratio": theorem1 / g["omc"],
    }


def _center(z: Tensor) -> Tensor:
    return z - z.mean(-1, keepdim=True)


def centered_cosine(z: Tensor, z_pert: Tensor) -> Tensor:
    """Cosine of mean-centred vectors: ``cos(z − mean(z)·1, z' − mean(z')·1)``.

    Softmax ignores a shared offset of all logits; the centred cosine removes each vector's own
    offset, so it is invariant to adding a constant to either logit vector.
    """
    z, y = _pair(z, z_pert)
    return _geometry(_center(z), _center(y))["cos"]


def centered_one_minus_cos(z: Tensor, z_pert: Tensor) -> Tensor:
    """``1 − centered_cosine(z, z')``, computed without cancellation like :func:`one_minus_cos`."""
    z, y = _pair(z, z_pert)
    return _geometry(_center(z), _center(y))["omc"]


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
# top tokens
# --------------------------------------------------------------------------------------------------


def topk_overlap(z: Tensor, z_pert: Tensor, k: int) -> Tensor:
    """Fraction of the dense top-k tokens that are also in the perturbed top-k: ``|S_k(z) ∩ S_k(z')| / k``.

    Ties are broken as :func:`torch.topk` breaks them. Temperature does not change the ranking.
    """
    z, y = _pair(z, z_pert)
    k = _check_k(k, z.shape[-1])
    a = z.topk(k, dim=-1).indices
    b = y.topk(k, dim=-1).indices
    hit = (a.unsqueeze(-1) == b.unsqueeze(-2)).any(-1)
    return hit.to(z.dtype).mean(-1)


def top1_match(z: Tensor, z_pert: Tensor) -> Tensor:
    """1.0 where the dense and perturbed argmax token agree, else 0.0 (float, leading shape)."""
    z, y = _pair(z, z_pert)
    return (z.argmax(-1) == y.argmax(-1)).to(z.dtype)


def _ranks_of(v: Tensor, vals: Tensor) -> Tensor:
    """0-based rank in ``v`` (last dim) of each value in ``vals`` = number of strictly larger entries."""
    out = torch.empty(vals.shape, dtype=torch.long, device=vals.device)
    for j in range(vals.shape[-1]):  # loop over k only; memory stays O(positions × vocab)
        out[..., j] = (v > vals[..., j : j + 1]).sum(-1)
    return out


def _topk_ranks(z: Tensor, y: Tensor, k: int) -> tuple[Tensor, Tensor]:
    vals, idx = z.topk(k, dim=-1)
    # anything strictly above a top-k value is itself in the top-k: dense ranks need only k×k work
    r0 = (vals.unsqueeze(-2) > vals.unsqueeze(-1)).sum(-1)
    return r0, _ranks_of(y, y.gather(-1, idx))


def topk_ranks(z: Tensor, z_pert: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Ranks of the dense top-k tokens in the dense and in the perturbed distribution.

    ``rank_z(i) = #{j : z_j > z_i}`` (0-based; tied tokens share the best rank). Returns
    ``(dense_rank, pert_rank)``, int64 of shape ``(..., k)``, tokens ordered by dense rank.
    """
    z, y = _pair(z, z_pert)
    return _topk_ranks(z, y, _check_k(k, z.shape[-1]))


def rank_shift(z: Tensor, z_pert: Tensor, k: int) -> Tensor:
    """Mean absolute rank change of the dense top-k tokens.

    rank_shift = (1/k) Σ_{i ∈ S_k(z)} |rank_z'(i) − rank_z(i)|      (ranks as in :func:`topk_ranks`)
    """
    z, y = _pair(z, z_pert)
    r0, r1 = _topk_ranks(z, y, _check_k(k, z.shape[-1]))
    return (r1 - r0).abs().to(z.dtype).mean(-1)


# --------------------------------------------------------------------------------------------------
# weighted moments (Theorems 2 and 3)
# --------------------------------------------------------------------------------------------------


def _wnorm(w: Tensor) -> Tensor:
    return w / w.sum(-1, keepdim=True)


def _wmean(x: Tensor, w: Tensor) -> Tensor:
    """Weighted mean with normalised ``w``; entries of zero weight never enter (even if inf/NaN)."""
    out = _dot(w, x)
    bad = ~torch.isfinite(out)
    if bad.any():
        safe = torch.where(w > 0, w * x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(-1)
        out = torch.where(bad, safe, out)
    return out


def _wcov(x: Tensor, y: Tensor, w: Tensor) -> Tensor:
    cx = x - _wmean(x, w).unsqueeze(-1)
    cy = y - _wmean(y, w).unsqueeze(-1)
    return _wmean(cx * cy, w)


def weighted_mean(x: Tensor, w: Tensor) -> Tensor:
    """``E_w[x] = Σ_i w_i x_i / Σ_i w_i`` over the last dimension (``w ≥ 0``, broadcast against ``x``)."""
    x, w = _up(x, w)
    return _wmean(x, _wnorm(torch.broadcast_to(w, torch.broadcast_shapes(x.shape, w.shape))))


def weighted_var(x: Tensor, w: Tensor) -> Tensor:
    """``Var_w(x) = Σ_i w̄_i (x_i − E_w[x])²`` with ``w̄ = w / Σ w`` (two-pass, weights normalised here).

    ``w`` is broadcast against ``x`` and must have a positive sum; use ``torch.ones(V)`` for the
    uniform variance.
    Tokens of zero weight never enter (even if their ``x`` is inf).
    """
    return weighted_cov(x, x, w)


def weighted_cov(x: Tensor, y: Tensor, w: Tensor) -> Tensor:
    """``Cov_w(x, y) = Σ_i w̄_i (x_i − E_w[x]) (y_i − E_w[y])``, ``w̄ = w / Σ w``."""
    x, y, w = _up(x, y, w)
    shape = torch.broadcast_shapes(x.shape, y.shape, w.shape)
    x, y, w = (torch.broadcast_to(t, shape) for t in (x, y, w))
    return _wcov(x, y, _wnorm(w))


def theorem2_weights(z: Tensor, T: float = 1.0) -> Tensor:
    """Theorem 2 weights ``r_i = p_i² / Σ_j p_j²`` (the order-2 escort of ``p = softmax(z/T)``).

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


def theorem2_estimate(z: Tensor, z_pert: Tensor, T: float = 1.0) -> Tensor:
    """Theorem 2: ``1 − cos(p, p') ≈ Var_r(Δz) / (2T²)``, ``r_i = p_i² / Σ_j p_j²``, ``Δz = z' − z``.

    Exactly, ``cos(p, p') = E_r[e^δ] / sqrt(E_r[e^{2δ}])`` with ``δ = Δz/T``; expanding in the
    cumulants of δ under r gives ``1 − cos = κ₂/2 + κ₃/2 + O(δ⁴)``. Invariant to adding a constant
    to all logits of ``z`` or of ``z'``.
    """
    z, y, lp, _, T = _pair_logp(z, z_pert, T)
    r = torch.softmax(2.0 * lp, -1)
    return _wcov(y - z, y - z, r) / (2.0 * T * T)


def theorem2_split(z: Tensor, z_pert: Tensor, T: float = 1.0) -> dict[str, Tensor]:
    """Split ``Var_r(Δz)`` along the logit decomposition ``Δz = Δz_∥ + Δz_⊥``, ``Δz_∥ = α·z``:

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


def theorem3_estimate(z: Tensor, z_pert: Tensor, T: float = 1.0) -> Tensor:
    """Theorem 3: ``KL(p ‖ p') ≈ Var_{i∼p}(Δz_i) / (2T²)``, p the dense distribution.

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
      ``var_r_perp``, ``var_r_cross`` (:func:`theorem2_split`)
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
