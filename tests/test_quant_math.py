"""Quantize → de-quantize round trips: GGUF types against the gguf package (the oracle), round to nearest
against a float64 reference, and what happens to a sparse model's exact zeros."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunelens.prune.quant_math import (
    GGUF_TYPES,
    gguf_block_size,
    gguf_round_trip,
    keep_zeros,
    rtn_round_trip,
)
from prunelens.prune.specs import SpecError


def _weight(rows=8, cols=128, seed=0, sparsity=0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[:, :3] *= 20  # a few outlier columns, as real weights have
    if sparsity:
        w[torch.rand(rows, cols, generator=g) < sparsity] = 0.0
    return w


@pytest.fixture(scope="module")
def embedded():
    import prunelens

    return prunelens.load()


def _oracle_rows(w: torch.Tensor, qtype: str) -> np.ndarray:
    """The gguf package applied to one row at a time: GGUF blocks run along the input width."""
    from gguf import GGMLQuantizationType, quants

    t = GGMLQuantizationType[qtype]
    a = w.numpy().astype(np.float32)
    return np.stack([quants.dequantize(quants.quantize(a[i : i + 1], t), t)[0] for i in range(a.shape[0])])


@pytest.mark.parametrize("qtype", GGUF_TYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gguf_round_trip_is_the_gguf_package_along_the_input_width(qtype, dtype):
    w = _weight().to(dtype)
    got = gguf_round_trip(w, qtype)
    assert got.dtype == dtype and got.shape == w.shape
    want = torch.from_numpy(_oracle_rows(w.float(), qtype)).to(dtype)
    assert torch.equal(got, want)  # element for element
    err = (got.float() - w.float()).abs().max()
    assert 0 < err < 0.1 * w.float().abs().max()  # it did quantize, and not wildly


@pytest.mark.real_model
@pytest.mark.parametrize("qtype", GGUF_TYPES)
def test_gguf_round_trip_on_the_embedded_models_weights(embedded, qtype):
    model, _ = embedded
    block = model.model.layers[0]
    for lin in (block.self_attn.q_proj, block.mlp.down_proj):  # input widths 576 and 1536
        w = lin.weight.detach()[:64]
        assert torch.equal(gguf_round_trip(w, qtype), torch.from_numpy(_oracle_rows(w, qtype)))


@pytest.mark.parametrize("qtype", GGUF_TYPES)
def test_exact_zeros_under_each_gguf_type(qtype):
    w = _weight(sparsity=0.5)
    zeros = w == 0
    got = gguf_round_trip(w, qtype)
    kept = bool((got[zeros] == 0).all())
    # types without an offset put 0 on a level; Q4_1 / Q5_1 (scale and minimum) generally do not
    assert kept == (qtype in ("Q8_0", "Q5_0", "Q4_0"))
    fixed = keep_zeros(w, got)
    assert torch.equal(fixed == 0, zeros | (got == 0)) and bool((fixed[zeros] == 0).all())
    assert torch.equal(fixed[~zeros], got[~zeros])


def _rtn_reference(w: np.ndarray, bits: int, group: int, symmetric: bool) -> np.ndarray:
    """Round to nearest in float64, one group at a time (half to even, as numpy's round)."""
    out = np.empty_like(w, dtype=np.float64)
    for r in range(w.shape[0]):
        for c0 in range(0, w.shape[1], group):
            x = w[r, c0 : c0 + group].astype(np.float64)
            if symmetric:
                qmax = 2 ** (bits - 1) - 1
                s = np.abs(x).max() / qmax or 1.0
                out[r, c0 : c0 + group] = np.clip(np.round(x / s), -qmax - 1, qmax) * s
            else:
                qmax = 2**bits - 1
                lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)
                s = (hi - lo) / qmax or 1.0
                z = np.round(-lo / s)
                out[r, c0 : c0 + group] = (np.clip(np.round(x / s) + z, 0, qmax) - z) * s
    return out


@pytest.mark.parametrize("bits", [8, 4, 3])
@pytest.mark.parametrize("group", [None, 32, 64])
@pytest.mark.parametrize("symmetric", [True, False])
def test_rtn_matches_a_float64_reference(bits, group, symmetric):
    w = _weight(rows=16, cols=128, seed=bits)
    got = rtn_round_trip(w, bits, group_size=group, symmetric=symmetric).double().numpy()
    want = _rtn_reference(w.numpy(), bits, group or 128, symmetric)
    g = group or 128
    # the grid's step per group: float32 and float64 scales can put a value on either side of a tie
    step = np.repeat(np.abs(w.numpy()).reshape(16, -1, g).max(-1), g, axis=1) / (2 ** (bits - 1) - 1)
    diff = np.abs(got - want)
    same_level = diff <= 1e-5 * np.abs(want) + 1e-6 * step  # float32 arithmetic on the same level
    assert same_level.mean() > 0.999  # a float32 scale may put a rare value on the other side of a tie
    assert (diff <= step * 1.0001 + 1e-9).all()  # and then by one level at most
    levels = [len(np.unique(got[r, c : c + g])) for r in range(16) for c in range(0, 128, g)]
    assert max(levels) <= 2**bits
    assert np.abs(got - w.numpy()).max() <= step.max() * (1 if symmetric else 2)


def test_rtn_keeps_zeros_and_zero_groups_when_symmetric():
    w = _weight(sparsity=0.5)
    w[0] = 0.0
    got = rtn_round_trip(w, 4, group_size=32)
    assert bool((got[w == 0] == 0).all()) and bool((got[0] == 0).all())
    assert torch.equal(rtn_round_trip(w, 8, group_size=32, symmetric=False)[0], w[0])  # an all-zero row


@pytest.mark.parametrize(
    "call,field",
    [
        (lambda w: rtn_round_trip(w, 5), "bits"),
        (lambda w: rtn_round_trip(w, 4, group_size=48), "group_size"),
        (lambda w: gguf_round_trip(w[:, :40], "Q4_0"), "type"),
        (lambda w: gguf_round_trip(w, "Q4_K"), "type"),
    ],
)
def test_impossible_requests_name_the_field(call, field):
    with pytest.raises(SpecError) as err:
        call(_weight())
    assert err.value.field == field


def test_gguf_blocks_are_32_weights():
    assert {gguf_block_size(t) for t in GGUF_TYPES} == {32}
