"""Counterfactual tracing and transitions on tiny random models of every supported family."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from prunelens.analysis.tracing import plan_counterfactuals, trace
from prunelens.analysis.transitions import Sequences, transitions
from prunelens.analysis.variants import Variant
from prunelens.models.adapter import Adapter, drop_sublayer
from prunelens.models.residual import record_blocks
from prunelens.models.tiny import TINY_FAMILIES, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _ids(seed=0, B=2, S=9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 250, (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[1, 6:] = False  # right padding on the second row
    return ids, mask


def _states(model, ids, mask):
    got = {}
    with torch.no_grad(), record_blocks(Adapter(model), lambda s: got.__setitem__(s.layer, s)):
        model(input_ids=ids, attention_mask=mask.long(), use_cache=False)
    return got


def _overrides(model, layer, kind, seed=0):
    """Magnitude-style pruned weights (half of each matrix zeroed) for one sublayer."""
    a = Adapter(model)
    prefix = f"{a.spec.layers}.{layer}.{a._path(kind)}."
    g = torch.Generator().manual_seed(seed)
    return {
        n: p.detach() * (torch.rand(p.shape, generator=g) > 0.5)
        for n, p in model.named_parameters()
        if n.startswith(prefix) and p.dim() == 2
    }


def _hybrid(model, overrides):
    m2 = copy.deepcopy(model)
    sd = m2.state_dict()
    sd.update(overrides)
    m2.load_state_dict(sd)
    return m2


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_counterfactual_equals_second_model(family):
    """Drop and sparsified counterfactuals equal an explicit second model run on the same input."""
    model = tiny_model(family)
    a = Adapter(model)
    ids, mask = _ids()
    ov = {**_overrides(model, 1, "attn"), **_overrides(model, 2, "mlp", seed=1)}
    v = Variant("v", "test", drops=((0, "mlp"), (3, "attn")), overrides=ov)
    plan, _ = plan_counterfactuals(a, v, scope="variant")
    assert set(plan) == {(0, "mlp"), (3, "attn"), (1, "attn"), (2, "mlp")}
    tr = trace(model, ids, mask, counterfactuals=plan)
    dense = _states(model, ids, mask)
    # dense states and the drop counterfactual (no second model needed)
    for layer, kind in ((0, "mlp"), (3, "attn")):
        e = tr.get(layer, kind)
        s = dense[layer]
        exp_before, exp_dense = (s.pre, s.mid) if kind == "attn" else (s.mid, s.post)
        # (the trace passes position ids cumsum(mask) − 1: padded positions differ, valid ones do not)
        torch.testing.assert_close(e.before[mask], exp_before[mask], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(e.dense[mask], exp_dense[mask], rtol=1e-6, atol=1e-6)
        assert e.pruned is e.before
        # a deep copy with the sublayer really dropped, up to and including that sublayer
        m2 = copy.deepcopy(model)
        drop_sublayer(Adapter(m2), layer, kind)
        s2 = _states(m2, ids, mask)[layer]
        got = s2.mid if kind == "attn" else s2.post
        if kind == "mlp" or layer == 0 or all(x[0] >= layer for x in v.drops):
            torch.testing.assert_close(e.pruned[mask], got[mask], rtol=1e-5, atol=1e-5)
    # sparsified sublayers: a second model holding only that sublayer's pruned weights
    for layer, kind in ((1, "attn"), (2, "mlp")):
        e = tr.get(layer, kind)
        sub = {n: t for n, t in ov.items() if f".{layer}." in n}
        s2 = _states(_hybrid(model, sub), ids, mask)[layer]
        got = s2.mid if kind == "attn" else s2.post
        assert e.counterfactual == "override"
        torch.testing.assert_close(e.pruned[mask], got[mask], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt_neox"])
def test_counterfactual_with_norm_overrides(family):
    """A pruned checkpoint that also changes the sublayer's own norms (pre- and Gemma's post-norm)."""
    model = tiny_model(family)
    a = Adapter(model)
    layer = 1
    names = [f"{a.spec.layers}.{layer}.{n}." for n in a.sublayer_norms("attn")]
    ov = _overrides(model, layer, "attn")
    for n, p in model.named_parameters():
        if any(n.startswith(x) for x in names):
            ov[n] = p.detach() + 0.3
    v = Variant("v", "test", overrides=ov)
    tr = trace(model, *_ids(), counterfactuals=plan_counterfactuals(a, v, scope="variant")[0])
    ids, mask = _ids()
    s2 = _states(_hybrid(model, ov), ids, mask)[layer]
    torch.testing.assert_close(tr.get(layer, "attn").pruned[mask], s2.mid[mask], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt_neox"])
def test_transitions_alone_equal_padded_batch(family):
    model = tiny_model(family)
    seqs = Sequences([[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16]], [[20, 21], [22, 23, 24, 25, 26], []])
    v = Variant("v", "test", drops=((1, "attn"),), overrides=_overrides(model, 2, "mlp"))
    both = transitions(model, seqs, v, temperatures=(1.0, 0.5), batch_size=2, chunk_tokens=5)  # two batches
    lengths = [len(seqs.full(i)) for i in range(3)]
    assert both.n_tokens == sum(lengths)  # padded positions never enter
    for i in range(3):
        alone = transitions(
            model,
            Sequences([seqs.prompt_ids[i]], [seqs.generated_ids[i]]),
            v,
            temperatures=(1.0, 0.5),
            batch_size=1,
        )
        sel = both.tokens["prompt"] == i
        np.testing.assert_array_equal(both.tokens["position"][sel], np.arange(lengths[i]))
        np.testing.assert_array_equal(both.tokens["token_id"][sel], seqs.full(i))
        kinds = ["prompt"] * len(seqs.prompt_ids[i]) + ["generated"] * len(seqs.generated_ids[i])
        assert list(both.tokens["position_kind"][sel]) == kinds
        for key, arr in both.values.items():
            got, want = arr[:, sel], alone.values[key]
            if "rank_shift" in key[1] or "overlap" in key[1] or key[1] == "top1_match":
                # integer-valued: a near tie may flip under batch-shape rounding, rarely
                assert np.mean(got != want) <= 0.03, key
            else:
                np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-5, err_msg=str(key))


def test_transitions_scope_and_exact_reference():
    model = tiny_model("llama")
    seqs = Sequences([[5, 6, 7, 8, 9]], [[10, 11]])
    v = Variant("Drop-1A", "test", drops=((2, "attn"),))
    res = transitions(model, seqs, v, scope="all", exact=False)
    ref = transitions(model, seqs, v, scope="all", exact=True)
    assert [e for e in res.entries if e.in_variant] == [(2, "attn", "drop", True)]
    assert len(res.entries) == 8 and all(e.counterfactual == "drop" for e in res.entries)
    for key, arr in ref.values.items():
        np.testing.assert_allclose(res.values[key], arr, rtol=5e-3, atol=1e-6, err_msg=str(key))
    only = transitions(model, seqs, v, scope="variant")
    assert only.entries == [(2, "attn", "drop", True)]
    # h-space: the cosine between the streams before and after a dropped sublayer, token by token
    tr = trace(model, *Sequences([[5, 6, 7, 8, 9, 10, 11]], [[]]).batch([0], 0))
    e = tr.get(2, "attn")
    cos = torch.nn.functional.cosine_similarity(e.dense[0], e.pruned[0], dim=-1)
    np.testing.assert_allclose(only.values[("h", "cos", None)][0], cos.numpy(), rtol=1e-5)
    # the seed scripts' convention (no final norm) changes z and p but not h
    raw = transitions(model, seqs, v, scope="variant", final_norm=False)
    np.testing.assert_array_equal(raw.values[("h", "cos", None)], only.values[("h", "cos", None)])
    # (the RMS norm only rescales each state, which no cosine sees; the softmax does)
    assert not np.allclose(raw.values[("p", "kl", 1.0)], only.values[("p", "kl", 1.0)])


def test_estimates_are_exact_to_second_order_for_small_perturbations():
    """As the pruned weights approach the dense ones, every estimate/real ratio tends to 1 (Theorems 1–3)."""
    model = tiny_model("llama")
    a = Adapter(model)
    prefix = f"{a.spec.layers}.1.{a.spec.attn}."
    seqs = Sequences([[5, 6, 7, 8, 9, 10, 11, 12]], [[]])
    # the fast path's KL has an absolute error ~1e-8 (pairstats docstring): tiny perturbations need exact=True
    for eps, exact, tol in ((1e-2, False, 0.02), (1e-3, True, 0.005)):
        g = torch.Generator().manual_seed(0)
        ov = {
            n: p.detach() * (1 + eps * torch.randn(p.shape, generator=g))
            for n, p in model.named_parameters()
            if n.startswith(prefix)
        }
        res = transitions(model, seqs, Variant("tiny", "t", overrides=ov), scope="variant", exact=exact)
        for key in (
            ("h", "theorem1_ratio", None),
            ("z", "theorem1_ratio", None),
            ("p", "theorem2_ratio", 1.0),
            ("p", "theorem3_ratio", 1.0),
        ):
            np.testing.assert_allclose(res.values[key], 1.0, rtol=tol, err_msg=str((eps, key)))
        kl, rkl = res.values[("p", "kl", 1.0)], res.values[("p", "kl_reverse", 1.0)]
        np.testing.assert_allclose(rkl / kl, 1.0, rtol=tol)
