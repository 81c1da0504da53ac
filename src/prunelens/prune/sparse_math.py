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


def kth_smallest(x: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th smallest (1-based) entry of the 1-D tensor ``x`` of scores, which are never negative.

    For float32 a radix step comes first: the bit patterns of non-negative floats sort like the floats, so
    a histogram of their top 16 bits finds the bucket that holds the ``k``-th value, and ``kthvalue`` runs
    on that bucket alone: faster than ``kthvalue`` on a whole block's scores (benchmarks/README.md,
    § Measurements behind choices in the code; SparseGPT chooses a mask this way for every 128-column
    block). Other dtypes and devices use ``kthvalue``.
    """
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.numel() < 4096:
        return torch.kthvalue(x, k).values
    top = (x.view(torch.int32) >> 16).clamp_min_(0)  # -0.0 has the sign bit: bucket 0, with +0.0
    cum = torch.cumsum(torch.bincount(top, minlength=1 << 15), 0)
    bucket = torch.searchsorted(cum, torch.tensor([k], device=x.device, dtype=cum.dtype))
    before = int(cum[bucket - 1]) if int(bucket) > 0 else 0
    return torch.kthvalue(x[top == bucket], k - before).values


def lowest_k(scores: torch.Tensor, k: int, per_row: bool) -> torch.Tensor:
    """Mask of exactly ``k`` lowest scores, in each row (``per_row``) or over the whole tensor.

    The threshold comes from a selection (``kthvalue``, or :func:`kth_smallest` over the whole tensor),
    faster than ``topk`` with ``k`` near half the entries (benchmarks/README.md, § Measurements behind
    choices in the code); entries tied with the threshold are taken in index order until ``k`` are marked,
    so the count is exact even with ties.
    """
    if per_row:
        thresh = torch.kthvalue(scores, k, dim=1, keepdim=True).values
        mask = scores <= thresh
        over = mask.sum(1, keepdim=True) - k  # > 0 only where ties straddle the threshold
        if bool((over > 0).any()):
            tied = scores == thresh
            mask &= ~(tied & (torch.cumsum(tied, dim=1) > tied.sum(1, keepdim=True) - over))
        return mask
    flat = scores.reshape(-1)
    thresh = kth_smallest(flat, k)
    mask = flat <= thresh
    n_over = int(mask.sum()) - k
    if n_over > 0:
        mask[torch.nonzero(flat == thresh).squeeze(1)[-n_over:]] = False
    return mask.view(scores.shape)


def unstructured_mask(scores: torch.Tensor, sparsity: float, per_row: bool) -> torch.Tensor:
    """Prune the ``sparsity`` fraction of lowest scores, over each row or over the whole matrix."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1); got {sparsity}")
    k = int((scores.shape[1] if per_row else scores.numel()) * sparsity)
    if not k:
        return torch.zeros_like(scores, dtype=torch.bool)
    return lowest_k(scores, k, per_row)


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().abs().float()


def wanda_scores(weight: torch.Tensor, input_sq_sum: torch.Tensor) -> torch.Tensor:
    """``|W_ij| · ‖X_j‖₂`` with ``input_sq_sum[j] = Σ_t x_tj²`` (the constant 1/n does not change ranks)."""
    return weight.detach().abs().float() * input_sq_sum.float().clamp_min(0).sqrt().unsqueeze(0)


def score_mask(
    scores: torch.Tensor,
    *,
    sparsity: float | None = None,
    nm: tuple[int, int] | None = None,
    per_row: bool = True,
) -> torch.Tensor:
    if nm is not None:
        return nm_mask(scores, *nm)
    return unstructured_mask(scores, float(sparsity or 0.0), per_row)


def accumulate_gram(G: torch.Tensor, x: torch.Tensor) -> None:
    """``G += xᵀx`` for ``x`` of shape ``(tokens, cols)``, computing only the lower triangle of ``G`` (its
    upper triangle is left stale; read the result with :func:`symmetric_from_lower`).

    ``XᵀX`` is symmetric, so the product is split into up to 6 bands of rows, each multiplied only up to
    the diagonal: about 58 % of the arithmetic of the full product in a handful of large ``addmm`` calls,
    faster than one ``addmm`` (benchmarks/README.md, § Measurements behind choices in the code).
    (A BLAS ``syrk`` through SciPy computes exactly one triangle, but its OpenBLAS threads spin after each
    call and slowed the surrounding PyTorch work by more than they saved; these bands stay in PyTorch.)
    """
    cols = G.shape[0]
    parts = min(6, max(1, cols // 96))
    bounds = [round(cols * k / parts) for k in range(parts + 1)]
    x = x.to(G.dtype)
    for a0, a1 in zip(bounds, bounds[1:]):
        G[a0:a1, :a1].addmm_(x[:, a0:a1].T, x[:, :a1])


def symmetric_from_lower(G: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose lower triangle is that of ``G``."""
    lower = G.tril()
    return lower + lower.tril(-1).T


def lower_triangular_inverse(L: torch.Tensor, leaf: int = 128) -> torch.Tensor:
    """``L⁻¹`` for a lower-triangular ``L``, by halves: ``[[A, 0], [C, D]]⁻¹ = [[A⁻¹, 0], [−D⁻¹CA⁻¹, D⁻¹]]``.

    About ``d³/3`` multiply-adds, mostly in matrix products, where a triangular solve against the identity
    does ``d³`` (it cannot skip the identity's zeros); the time saved: benchmarks/README.md,
    § Measurements behind choices in the code.
    """
    d = L.shape[0]
    if d <= leaf:
        return torch.linalg.solve_triangular(L, torch.eye(d, dtype=L.dtype, device=L.device), upper=False)
    h = d // 2
    out = torch.zeros_like(L)
    a_inv = lower_triangular_inverse(L[:h, :h], leaf)
    d_inv = lower_triangular_inverse(L[h:, h:], leaf)
    out[:h, :h] = a_inv
    out[h:, h:] = d_inv
    out[h:, :h] = -(d_inv @ (L[h:, :h] @ a_inv))
    return out


def inverse_upper_cholesky(H: torch.Tensor) -> torch.Tensor:
    """The upper-triangular ``U`` with ``UᵀU = H⁻¹`` (what SparseGPT reads its updates from), from one
    Cholesky factorisation and one triangular inverse.

    With ``J`` the reversal permutation, ``JHJ = LLᵀ`` gives ``H = RRᵀ`` with ``R = JLJ`` upper
    triangular, so ``H⁻¹ = (R⁻¹)ᵀR⁻¹`` and ``U = R⁻¹ = J L⁻¹ J`` (positive diagonal, hence the unique
    factor). The textbook route (factor ``H``, invert, factor ``H⁻¹`` again) does twice the work and
    rounds more.
    """
    return lower_triangular_inverse(torch.linalg.cholesky(H.flip(0, 1))).flip(0, 1)


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    sparsity: float | None = None,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    segments: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT: return ``(new_weight, pruned_mask)``; computed in float32
    (float64 for float64 input), returned in ``weight``'s dtype.

    ``hessian`` is ``2XᵀX/n`` over the calibration inputs (cols × cols). Dead inputs (zero diagonal) are
    pruned outright. ``percdamp`` adds ``percdamp · mean(diag H)`` to the diagonal before inversion.
    Unstructured masks are chosen per column block by ``w²/U_jj²`` (adaptive mask selection); N:M masks
    per group of ``M`` columns on the weights as updated so far. Within a block the optimal-brain-surgeon
    updates run column by column as rank-1 updates of the block (``O(rows · blocksize²)``), and the rest
    of the matrix is updated once per block by a matrix product (the paper's lazy batch updates).

    ``segments`` (row counts summing to ``rows``) says that ``weight`` stacks several matrices that read
    the same input, so share ``hessian`` (q/k/v, gate/up): the updates act on each row alone, so one call
    on the stack equals one call per matrix, while masks are still chosen per matrix (each segment's rows
    × column block). One factorisation and one column loop then serve the whole stack.

    The work runs on ``Wᵀ``, so that a column of ``W`` — what each step reads and updates — is a
    contiguous row: faster than on ``W`` itself (strided columns), and faster than solving each block's
    updates as one batched triangular system (``O(rows · blocksize³)``, tried and dropped); measured in
    benchmarks/README.md, § Measurements behind choices in the code.
    """
    if nm is None and not 0.0 <= float(sparsity or 0.0) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1); got {sparsity}")
    work = torch.float64 if weight.dtype == torch.float64 else torch.float32
    rows, cols = weight.shape
    segs = [rows] if segments is None else [int(r) for r in segments]
    if sum(segs) != rows or min(segs) <= 0:
        raise ValueError(f"segments {segs} must be positive row counts summing to the {rows} rows of weight")
    if nm is not None and (cols % nm[1] or blocksize % nm[1]):
        raise ValueError(
            f"N:M needs the input dimension ({cols}) and blocksize ({blocksize}) to be multiples of M={nm[1]}"
        )
    WT = weight.detach().to(work).T.contiguous()  # (cols, rows): row j is column j of W
    H = hessian.detach().to(work).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    WT[dead] = 0.0
    damp = percdamp * torch.mean(torch.diag(H))
    H.diagonal().add_(damp)
    Hinv = inverse_upper_cholesky(H)
    bounds = [(sum(segs[:k]), sum(segs[: k + 1])) for k in range(len(segs))]
    maskT = torch.zeros_like(WT, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        B = WT[i1:i2]  # a view: updated in place
        U = Hinv[i1:i2, i1:i2]
        d = torch.diag(U).unsqueeze(1)
        M1 = maskT[i1:i2]
        if nm is None:
            score = B**2 / d**2
            for r0, r1 in bounds:
                M1[:, r0:r1] = unstructured_mask(score[:, r0:r1], float(sparsity or 0.0), per_row=False)
            scale = M1.to(work) / d  # err = w · [pruned] / U_jj
        else:
            scale = torch.zeros_like(B)
        E = torch.empty_like(B)
        for i in range(i2 - i1):
            if (
                nm is not None and i % nm[1] == 0
            ):  # N:M: choose the group's mask on the weights updated so far
                n_keep, m = nm
                M1[i : i + m] = nm_mask((B[i : i + m] ** 2 / d[i : i + m] ** 2).T, n_keep, m).T
                scale[i : i + m] = M1[i : i + m].to(work) / d[i : i + m]
            err = torch.mul(B[i], scale[i], out=E[i])
            B[i + 1 :].addr_(U[i, i + 1 :], err, alpha=-1.0)
        B.masked_fill_(M1, 0.0)
        WT[i2:].addmm_(Hinv[i1:i2, i2:].T, E, alpha=-1.0)
    maskT |= dead.unsqueeze(1)
    WT[dead] = 0.0  # pruned weights were zeroed block by block; dead inputs are pruned whatever the mask
    return WT.T.contiguous().to(weight.dtype), maskT.T.contiguous()
