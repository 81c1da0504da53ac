"""Geometry of a perturbation ``x' = x + Δx`` in any space (hidden or logit): cosines, 1 − cos, the part
of ``Δx`` along ``x`` and orthogonal to it, and the second-order estimate of ``1 − cos`` (Theorem 1 of
docs/method.md §2.1).

Also the input conventions every metric module shares (:mod:`prunelens.analysis.metrics` states them):
upcasting to float32 / float64, dense-and-perturbed pairs of one shape, the temperature and ``k`` checks,
and reductions over the last dimension. The functions are re-exported by :mod:`~prunelens.analysis.metrics`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "Decomposition",
    "centered_cosine",
    "centered_one_minus_cos",
    "check_temperature",
    "cosine",
    "decompose",
    "one_minus_cos",
    "one_minus_cos_estimate",
    "perturbation_stats",
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


def one_minus_cos_estimate(x: Tensor, x_pert: Tensor) -> Tensor:
    """Estimate of ``1 − cos(x, x + Δx)`` from the orthogonal part of ``Δx`` alone (Theorem 1, any space):

        1 − cos(x, x + Δx) ≈ ‖Δx_⊥‖² / (2 ‖x‖²)

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
