"""Pure maths of intra-layer pruning: importance scores, masks and the SparseGPT update.

Conventions. A linear layer computes ``y = x Wᵀ`` with ``W`` of shape ``(rows=out, cols=in)``.
Masks are boolean with ``True`` = *pruned* (set to zero). ``N:M`` follows the hardware convention:
at most ``N`` non-zeros are kept in every group of ``M`` consecutive input weights of a row
(so 2:4 and 4:8 are 50 % sparse, 1:4 is 75 %).

* magnitude (Han et al.): score ``|W_ij|``, compared over the whole matrix (unstructured) or in groups.
* Wanda (Sun et al., 2023): score ``|W_ij| · ‖X_j‖₂`` where ``‖X_j‖₂`` is the norm of input feature
  ``j`` over the calibration tokens; compared within each output row (unstructured) or group.
* SparseGPT (Frantar & Alistarh, 2023): with ``H = 2XᵀX/n`` (dampened), columns are processed left to
  right in blocks; in each block the mask is chosen by ``w²/[H⁻¹]_jj²`` and the error of every pruned
  weight is compensated on the columns to its right through the Cholesky factor of ``H⁻¹``.
"""

from __future__ import annotations

import torch


def parse_pattern(pattern: str) -> tuple[int, int]:
    """``"2:4"`` → ``(2, 4)``; requires ``0 < N < M``."""
    try:
        n_str, m_str = pattern.split(":")
        n, m = int(n_str), int(m_str)
    except ValueError as exc:
        raise ValueError(f"pattern must look like N:M (e.g. 2:4), got {pattern!r}") from exc
    if not 0 < n < m:
        raise ValueError(f"pattern N:M needs 0 < N < M (N weights kept in every M); got {pattern!r}")
    return n, m


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Prune the ``M − N`` lowest-scoring weights in every group of ``M`` consecutive columns (vectorised)."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"N:M needs the input dimension ({cols}) to be a multiple of M={m}")
    groups = scores.reshape(rows, cols // m, m)
    idx = torch.topk(groups, m - n, dim=-1, largest=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, idx, True)
    return mask.reshape(rows, cols)


def unstructured_mask(scores: torch.Tensor, sparsity: float, per_row: bool) -> torch.Tensor:
    """Prune the ``sparsity`` fraction of lowest scores, over each row or over the whole matrix."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1); got {sparsity}")
    if per_row:
        k = int(scores.shape[1] * sparsity)
        mask = torch.zeros_like(scores, dtype=torch.bool)
        if k:
            mask.scatter_(1, torch.topk(scores, k, dim=1, largest=False).indices, True)
        return mask
    k = int(scores.numel() * sparsity)
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k:
        mask[torch.topk(scores.reshape(-1), k, largest=False).indices] = True
    return mask.view_as(scores)


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().abs().float()


def wanda_scores(weight: torch.Tensor, input_sq_sum: torch.Tensor) -> torch.Tensor:
    """``|W_ij| · ‖X_j‖₂`` with ``input_sq_sum[j] = Σ_t x_tj²`` (the constant 1/n does not change ranks)."""
    return weight.detach().abs().float() * input_sq_sum.float().clamp_min(0).sqrt().unsqueeze(0)


def score_mask(scores: torch.Tensor, *, sparsity: float | None = None, nm: tuple[int, int] | None = None,
               per_row: bool = True) -> torch.Tensor:
    if nm is not None:
        return nm_mask(scores, *nm)
    return unstructured_mask(scores, float(sparsity or 0.0), per_row)


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    sparsity: float | None = None,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT: return ``(new_weight, pruned_mask)``; computed in float32 (float64 for float64 input), returned in ``weight``'s dtype.

    ``hessian`` is ``2XᵀX/n`` over the calibration inputs (cols × cols). Dead inputs (zero diagonal) are
    pruned outright. ``percdamp`` adds ``percdamp · mean(diag H)`` to the diagonal before inversion.
    Unstructured masks are chosen per column block by ``w²/U_jj²`` (adaptive mask selection); N:M masks
    per group of ``M`` columns on the weights as updated so far. Within a block the optimal-brain-surgeon
    updates run column by column as rank-1 updates of the block (``O(rows · blocksize²)``), and the rest
    of the matrix is updated once per block by a matrix product (the paper's lazy batch updates).
    Measured on a 2-core CPU, this loop is 1.5–3× faster than solving each block's updates as one
    batched triangular system (``O(rows · blocksize³)``, tried and dropped).
    """
    if nm is None and not 0.0 <= float(sparsity or 0.0) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1); got {sparsity}")
    work = torch.float64 if weight.dtype == torch.float64 else torch.float32
    W = weight.detach().to(work).clone()
    rows, cols = W.shape
    if nm is not None and (cols % nm[1] or blocksize % nm[1]):
        raise ValueError(f"N:M needs the input dimension ({cols}) and blocksize ({blocksize}) to be multiples of M={nm[1]}")
    H = hessian.detach().to(work).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    damp = percdamp * torch.mean(torch.diag(H))
    H.diagonal().add_(damp)
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    Hinv = torch.linalg.cholesky(Hinv, upper=True)
    mask = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        U = Hinv[i1:i2, i1:i2]
        d = torch.diag(U)
        E = torch.zeros_like(W1)
        mask1 = torch.zeros_like(W1, dtype=torch.bool)
        if nm is None:
            tmp = W1**2 / d.unsqueeze(0) ** 2
            k = int(tmp.numel() * float(sparsity or 0.0))
            if k:
                mask1.view(-1)[torch.topk(tmp.reshape(-1), k, largest=False).indices] = True
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:  # N:M: choose the group's mask on the weights updated so far
                n_keep, m = nm
                tmp = W1[:, i : i + m] ** 2 / d[i : i + m].unsqueeze(0) ** 2
                mask1[:, i : i + m].scatter_(1, torch.topk(tmp, m - n_keep, dim=1, largest=False).indices, True)
            err = W1[:, i].masked_fill(~mask1[:, i], 0.0) / d[i]
            W1[:, i:].addr_(err, U[i, i:], alpha=-1.0)
            E[:, i] = err
        W[:, i1:i2] = W1.masked_fill(mask1, 0.0)
        mask[:, i1:i2] = mask1
        W[:, i2:].addmm_(E, Hinv[i1:i2, i2:], alpha=-1.0)
    mask |= dead.unsqueeze(0)
    W[mask] = 0.0
    return W.to(weight.dtype), mask
