"""Weighted moments over the last dimension — the token weightings of the Theorem 2 and 3 estimates
(docs/method.md §3): ``E_w``, ``Var_w`` and ``Cov_w`` with weights normalised here, two-pass, and tokens of
zero weight kept out even where their value is inf or NaN. Re-exported by :mod:`~prunelens.analysis.metrics`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prunelens.analysis.geometry import _dot, _up

__all__ = ["weighted_cov", "weighted_mean", "weighted_var"]


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
