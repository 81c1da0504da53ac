"""Pure pruning maths: masks, scores and the SparseGPT update, against brute-force references."""

from __future__ import annotations

import itertools

import pytest
import torch

from prunelens.prune.sparse_math import (
    accumulate_gram,
    inverse_upper_cholesky,
    kth_smallest,
    lower_triangular_inverse,
    lowest_k,
    magnitude_scores,
    nm_mask,
    parse_pattern,
    sparsegpt_prune,
    symmetric_from_lower,
    unstructured_mask,
    wanda_scores,
)


def test_parse_pattern():
    assert parse_pattern("2:4") == (2, 4)
    assert parse_pattern("1:8") == (1, 8)
    for bad in ("4:4", "5:4", "0:4", "2-4", "a:b"):
        with pytest.raises(ValueError):
            parse_pattern(bad)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 8)])
def test_nm_mask_matches_loop_reference(n, m):
    g = torch.Generator().manual_seed(n * 10 + m)
    scores = torch.rand(6, 4 * m, generator=g)
    mask = nm_mask(scores, n, m)
    ref = torch.zeros_like(mask)
    for r, c0 in itertools.product(range(scores.shape[0]), range(0, scores.shape[1], m)):
        group = scores[r, c0 : c0 + m].tolist()
        for j in sorted(range(m), key=lambda j: group[j])[: m - n]:
            ref[r, c0 + j] = True
    assert torch.equal(mask, ref)
    assert (mask.view(6, -1, m).sum(-1) == m - n).all()


def test_nm_mask_needs_divisible_columns():
    with pytest.raises(ValueError, match="multiple of M"):
        nm_mask(torch.rand(2, 6), 2, 4)


def test_unstructured_mask_counts_and_order():
    scores = torch.rand(8, 20, generator=torch.Generator().manual_seed(1))
    per_row = unstructured_mask(scores, 0.3, per_row=True)
    assert (per_row.sum(1) == 6).all()
    assert (scores[per_row].view(8, 6).max(1).values <= scores.masked_fill(per_row, 2).min(1).values).all()
    whole = unstructured_mask(scores, 0.5, per_row=False)
    assert int(whole.sum()) == 80
    assert scores[whole].max() <= scores[~whole].min()
    assert not unstructured_mask(scores, 0.0, per_row=True).any()
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError):
            unstructured_mask(scores, bad, per_row=True)


def test_wanda_scores_formula():
    w = torch.randn(3, 4, dtype=torch.float64)
    sq = torch.rand(4, dtype=torch.float64) * 5
    ref = w.abs() * sq.sqrt()[None, :]
    torch.testing.assert_close(wanda_scores(w, sq).double(), ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(magnitude_scores(w).double(), w.abs(), rtol=1e-6, atol=1e-7)


def _layer_data(rows=16, cols=64, tokens=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    # correlated inputs with uneven scales, like real activations
    x = torch.randn(tokens, cols, generator=g) @ torch.randn(cols, cols, generator=g) * 0.3
    x = x * torch.exp(torch.randn(cols, generator=g))  # uneven per-feature scales
    h = 2 * x.T @ x / tokens
    return w, x, h


def test_sparsegpt_with_identity_hessian_is_magnitude_per_block():
    """With H ∝ I there is nothing to compensate: SparseGPT keeps the largest |w| in each column block."""
    w, _, _ = _layer_data()
    new_w, mask = sparsegpt_prune(w, torch.eye(64) * 3.0, sparsity=0.5, blocksize=32, percdamp=0.0)
    for c0 in (0, 32):
        block = w[:, c0 : c0 + 32]
        ref = unstructured_mask(block.abs(), 0.5, per_row=False)
        assert torch.equal(mask[:, c0 : c0 + 32], ref)
    torch.testing.assert_close(new_w, w.masked_fill(mask, 0.0))


@pytest.mark.parametrize("kind", ["unstructured", "2:4", "4:8"])
def test_sparsegpt_beats_masking_alone_on_reconstruction(kind):
    """The OBS update lowers ‖(W − Ŵ)Xᵀ‖ below magnitude and Wanda masks of the same sparsity
    (one column block)."""
    w, x, h = _layer_data(cols=128, seed=3)
    nm = None if kind == "unstructured" else parse_pattern(kind)
    new_w, mask = sparsegpt_prune(w, h, sparsity=0.5 if nm is None else None, nm=nm, blocksize=128)
    if nm is None:
        assert int(mask.sum()) == w.numel() // 2
        mag = unstructured_mask(magnitude_scores(w), 0.5, per_row=False)
        wan = unstructured_mask(wanda_scores(w, (x * x).sum(0)), 0.5, per_row=True)
    else:
        n, m = nm
        assert ((new_w != 0).view(w.shape[0], -1, m).sum(-1) <= n).all()
        mag = nm_mask(magnitude_scores(w), n, m)
        wan = nm_mask(wanda_scores(w, (x * x).sum(0)), n, m)

    def err(v):
        return float(((w - v) @ x.T).pow(2).sum())

    e_gpt = err(new_w)
    assert e_gpt < err(w.masked_fill(wan, 0.0)) < err(w.masked_fill(mag, 0.0))
    assert (new_w[mask] == 0).all()


@pytest.mark.parametrize("blocksize", [32, 128])
def test_sparsegpt_update_improves_on_its_own_mask(blocksize):
    """Whatever mask it picks, compensating the pruned weights beats zeroing them alone."""
    w, x, h = _layer_data(cols=256, seed=5)
    new_w, mask = sparsegpt_prune(w, h, sparsity=0.5, blocksize=blocksize)
    assert int(mask.sum()) == w.numel() // 2

    def err(v):
        return float(((w - v) @ x.T).pow(2).sum())

    assert err(new_w) < 0.9 * err(w.masked_fill(mask, 0.0))


def test_sparsegpt_dead_inputs_and_dtype():
    w, _, h = _layer_data(cols=32)
    h[5, :] = 0
    h[:, 5] = 0
    new_w, mask = sparsegpt_prune(w.to(torch.bfloat16), h, sparsity=0.25, blocksize=8)
    assert new_w.dtype == torch.bfloat16
    assert (new_w[:, 5] == 0).all() and mask[:, 5].all()


def _sparsegpt_column_loop(weight, hessian, sparsity=None, nm=None, blocksize=128, percdamp=0.01):
    """Reference: SparseGPT as published, one column at a time (float64)."""
    W = weight.double().clone()
    H = hessian.double().clone()
    cols = W.shape[1]
    H.diagonal().add_(percdamp * torch.mean(torch.diag(H)))
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    mask = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, Q1, Err1 = W[:, i1:i2].clone(), torch.zeros_like(W[:, i1:i2]), torch.zeros_like(W[:, i1:i2])
        Hinv1 = Hinv[i1:i2, i1:i2]
        mask1 = torch.zeros_like(W1, dtype=torch.bool)
        if nm is None:
            tmp = (W1**2 / torch.diag(Hinv1)[None] ** 2).flatten()
            mask1.view(-1)[torch.argsort(tmp)[: int(tmp.numel() * sparsity)]] = True
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                tmp = W1[:, i : i + nm[1]] ** 2 / torch.diag(Hinv1)[i : i + nm[1]][None] ** 2
                mask1[:, i : i + nm[1]].scatter_(1, torch.argsort(tmp, dim=1)[:, : nm[1] - nm[0]], True)
            w, dd = W1[:, i], Hinv1[i, i]
            q = w.masked_fill(mask1[:, i], 0.0)
            Q1[:, i] = q
            err = (w - q) / dd
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None]
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        mask[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W, mask


@pytest.mark.parametrize(
    "sparsity,nm,blocksize", [(0.5, None, 32), (0.7, None, 64), (None, (2, 4), 32), (None, (1, 4), 64)]
)
def test_vectorised_sparsegpt_equals_the_column_loop(sparsity, nm, blocksize):
    w, _, h = _layer_data(rows=24, cols=128, seed=11)
    ref_w, ref_mask = _sparsegpt_column_loop(w.double(), h.double(), sparsity, nm, blocksize)
    got_w, got_mask = sparsegpt_prune(w.double(), h.double(), sparsity=sparsity, nm=nm, blocksize=blocksize)
    assert torch.equal(got_mask, ref_mask)
    torch.testing.assert_close(got_w, ref_w, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("d", [1, 7, 64])
def test_inverse_upper_cholesky_is_the_factor_of_the_inverse(d):
    """U is upper triangular with a positive diagonal and UᵀU = H⁻¹,
    so it equals chol(H⁻¹) (unique factor)."""
    g = torch.Generator().manual_seed(d)
    x = torch.randn(3 * d + 5, d, generator=g, dtype=torch.float64)
    h = x.T @ x + 0.1 * torch.eye(d, dtype=torch.float64)
    u = inverse_upper_cholesky(h)
    assert torch.equal(u, u.triu()) and (torch.diag(u) > 0).all()
    torch.testing.assert_close(u.T @ u, torch.linalg.inv(h), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        u, torch.linalg.cholesky(torch.linalg.inv(h), upper=True), rtol=1e-9, atol=1e-9
    )


@pytest.mark.parametrize("per_row", [True, False])
def test_lowest_k_is_exact_with_ties(per_row):
    """Exactly k marked per row (or overall), every marked score ≤ every unmarked one, ties included."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (6, 10), generator=g).float()  # heavy ties
    for k in range(1, 10):
        mask = lowest_k(scores, k, per_row)
        if per_row:
            assert (mask.sum(1) == k).all()
            for r in range(6):
                assert scores[r][mask[r]].max() <= scores[r][~mask[r]].min()
        else:
            assert int(mask.sum()) == k
            assert scores[mask].max() <= scores[~mask].min()


@pytest.mark.parametrize("sparsity,nm", [(0.5, None), (0.6, None), (None, (2, 4))])
def test_sparsegpt_on_a_stack_equals_one_call_per_matrix(sparsity, nm):
    """q/k/v share a Hessian: pruning them stacked (masks chosen per segment) equals pruning each alone."""
    w, _, h = _layer_data(rows=40, cols=64, seed=13)
    parts = [w[:16], w[16:24], w[24:]]
    got_w, got_mask = sparsegpt_prune(
        w.double(), h.double(), sparsity=sparsity, nm=nm, blocksize=32, segments=[p.shape[0] for p in parts]
    )
    alone = [sparsegpt_prune(p.double(), h.double(), sparsity=sparsity, nm=nm, blocksize=32) for p in parts]
    assert torch.equal(got_mask, torch.cat([m for _, m in alone]))
    torch.testing.assert_close(got_w, torch.cat([x for x, _ in alone]), rtol=1e-9, atol=1e-9)
    if nm is None:  # each matrix keeps its own sparsity, block by block
        for (a, b), p in zip([(0, 16), (16, 24), (24, 40)], parts):
            for c0 in (0, 32):
                assert int(got_mask[a:b, c0 : c0 + 32].sum()) == int(p.shape[0] * 32 * sparsity)
    with pytest.raises(ValueError, match="segments"):
        sparsegpt_prune(w, h, sparsity=0.5, segments=[16, 8])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_accumulated_gram_equals_xtx(dtype):
    """Batches of XᵀX summed in lower-triangle bands equal the float64 product, for either dtype."""
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(n, 500, generator=g) * 3 for n in (100, 37, 64)]
    G = torch.zeros(500, 500, dtype=dtype)
    for x in batches:
        accumulate_gram(G, x)
    x = torch.cat(batches).double()
    torch.testing.assert_close(symmetric_from_lower(G).double(), x.T @ x, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("d,leaf", [(5, 128), (300, 64), (257, 16)])
def test_lower_triangular_inverse_by_halves(d, leaf):
    g = torch.Generator().manual_seed(d)
    L = torch.randn(d, d, generator=g, dtype=torch.float64).tril()
    L.diagonal().copy_(torch.rand(d, generator=g, dtype=torch.float64) + 1.0)
    inv = lower_triangular_inverse(L, leaf)
    assert torch.equal(inv, inv.tril())
    torch.testing.assert_close(
        inv,
        torch.linalg.solve_triangular(L, torch.eye(d, dtype=torch.float64), upper=False),
        rtol=1e-9,
        atol=1e-9,
    )


@pytest.mark.parametrize("n", [10, 5000, 70000])
def test_kth_smallest_matches_kthvalue(n):
    """The radix shortcut returns exactly kthvalue's value, with ties, zeros (both signs) and wide ranges."""
    g = torch.Generator().manual_seed(n)
    x = (torch.randn(n, generator=g) * 10).exp() * (torch.rand(n, generator=g) < 0.9)
    x[: n // 7] = x[n // 7 : 2 * (n // 7)]  # ties
    x[:3] = -0.0
    for k in sorted({1, 2, n // 3, n // 2, n - 1, n}):
        assert kth_smallest(x, k).item() == torch.kthvalue(x, k).values.item()
    assert kth_smallest(x.double(), n // 2).item() == torch.kthvalue(x.double(), n // 2).values.item()
