"""Agreement of the top tokens of a dense and a perturbed logit vector: top-1 match, top-k overlap, the
ranks of the dense top-k tokens and how far they move (docs/method.md §3). Temperature does not change a
ranking, so none is taken. Re-exported by :mod:`~prunelens.analysis.metrics`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prunelens.analysis.geometry import _check_k, _pair

__all__ = ["rank_shift", "top1_match", "topk_overlap", "topk_ranks"]


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
