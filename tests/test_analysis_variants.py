"""Variants: the pruned side on the dense weights, from plans, checkpoints and shorthands;
clear mismatches."""

from __future__ import annotations

import copy

import pytest
import torch

from prunelens.analysis.variants import Variant, VariantMismatchError, resolve_variant, variant_from_plan
from prunelens.data.calibration import Calibration
from prunelens.models.adapter import Adapter, apply_structure, drop_blocks
from prunelens.models.tiny import tiny_model
from prunelens.plan import PrunePlan
from prunelens.prune.drop import drop
from prunelens.prune.save import save_pruned
from prunelens.prune.sparsify import sparsify

from conftest import tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

IDS = torch.tensor([[5, 9, 33, 2, 71, 18, 4, 100]])


def _logits(model):
    with torch.no_grad():
        return model(IDS, use_cache=False).logits


def _drop_plan(layers_kinds, n_layers=4):
    return PrunePlan(
        method="drop",
        base_model="tiny",
        family="llama",
        target="attn",
        num_layers_before=n_layers,
        dropped_sublayers=[{"layer": i, "sublayer": k, "similarity": 0.9} for i, k in layers_kinds],
    )


def test_active_turns_dense_into_pruned_and_restores():
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [id(m) for m in model.modules()]
    plan = _drop_plan([(1, "attn"), (2, "mlp")])
    ref = copy.deepcopy(model)
    apply_structure(ref, plan)
    v = variant_from_plan(model, plan)
    dense = _logits(model)
    with v.active(model):
        torch.testing.assert_close(_logits(model), _logits(ref), rtol=0, atol=0)
    torch.testing.assert_close(_logits(model), dense, rtol=0, atol=0)
    assert [id(m) for m in model.modules()] == modules
    assert all(torch.equal(before[k], v_) for k, v_ in model.state_dict().items())
    with pytest.raises(RuntimeError):  # restored even when the block raises
        with v.active(model):
            raise RuntimeError("boom")
    torch.testing.assert_close(_logits(model), dense, rtol=0, atol=0)


def test_prunelens_checkpoints_as_variants(tmp_path):
    model = tiny_model("llama")
    tok = tiny_tokenizer()
    # sublayer drop directory: drops only, no weight held twice
    m1 = copy.deepcopy(model)
    plan = _drop_plan([(0, "attn"), (3, "attn")])
    apply_structure(m1, plan)
    save_pruned(m1, tok, plan, tmp_path / "drop")
    v = resolve_variant(model, str(tmp_path / "drop"), tokenizer=tok)
    assert v.drops == ((0, "attn"), (3, "attn")) and not v.overrides and v.name == "Drop-2A"
    # the plan file alone gives the same variant
    assert resolve_variant(model, str(tmp_path / "drop" / "prune_plan.json")).drops == v.drops
    # sparsified directory: only the pruned linear weights become overrides
    m2 = copy.deepcopy(model)
    splan = sparsify(m2, None, method="magnitude", sparsity=0.5, base_model="tiny")
    save_pruned(m2, tok, splan, tmp_path / "sparse")
    vs = resolve_variant(model, str(tmp_path / "sparse"), tokenizer=tok)
    a = Adapter(model)
    linears = {f"{a.spec.layers}.{i}.{n}.weight" for i in range(a.num_layers) for n in a.block_linears(i)}
    assert set(vs.overrides) == linears and not vs.drops
    with vs.active(model):
        torch.testing.assert_close(_logits(model), _logits(m2), rtol=1e-6, atol=1e-6)
    # a magnitude plan alone is re-applied on the fly and gives the same weights
    vm = resolve_variant(model, str(tmp_path / "sparse" / "prune_plan.json"))
    assert all(torch.equal(vm.overrides[n], vs.overrides[n]) for n in linears)
    # block-dropped directory: layer indices are renumbered in the checkpoint, mapped back here
    m3 = copy.deepcopy(model)
    drop_blocks(Adapter(m3), [1])
    bplan = PrunePlan(
        method="drop",
        base_model="tiny",
        family="llama",
        target="block",
        dropped_blocks=[1],
        num_layers_before=4,
    )
    save_pruned(m3, tok, bplan, tmp_path / "block")
    vb = resolve_variant(model, str(tmp_path / "block"), tokenizer=tok)
    assert vb.drops == ((1, "attn"), (1, "mlp")) and not vb.overrides
    with vb.active(model):
        torch.testing.assert_close(_logits(model), _logits(m3), rtol=1e-5, atol=1e-6)


def test_other_checkpoint_and_model_object(tmp_path):
    model = tiny_model("llama")
    other = tiny_model("llama", seed=1)  # same architecture, different weights
    other.save_pretrained(tmp_path / "other")
    v = resolve_variant(model, str(tmp_path / "other"))
    differ = {n for n, t in model.state_dict().items() if not torch.equal(t, other.state_dict()[n])}
    assert set(v.overrides) == differ and len(differ) > 20  # norms (all ones in both) stay shared
    with v.active(model):
        torch.testing.assert_close(_logits(model), _logits(other), rtol=1e-6, atol=1e-6)
    vo = resolve_variant(model, other, name="other")
    assert set(vo.overrides) == set(v.overrides)


def test_mismatched_architecture_and_vocabulary(tmp_path):
    model = tiny_model("llama")
    tiny_model("qwen2").save_pretrained(tmp_path / "qwen2")
    with pytest.raises(VariantMismatchError, match="architecture mismatch"):
        resolve_variant(model, str(tmp_path / "qwen2"))
    tiny_model("llama", vocab_size=300).save_pretrained(tmp_path / "vocab")
    with pytest.raises(VariantMismatchError, match="vocabulary mismatch"):
        resolve_variant(model, str(tmp_path / "vocab"))
    tiny_model("llama", hidden_size=32, intermediate_size=64).save_pretrained(tmp_path / "narrow")
    with pytest.raises(VariantMismatchError, match="hidden_size"):
        resolve_variant(model, str(tmp_path / "narrow"))
    same = tiny_model("llama", seed=2)
    same.save_pretrained(tmp_path / "tok")
    tiny_tokenizer(256).save_pretrained(tmp_path / "tok")
    other_tok = tiny_tokenizer(256)
    other_tok.add_tokens(["zzz"])
    with pytest.raises(VariantMismatchError, match="tokenizer"):
        resolve_variant(model, str(tmp_path / "tok"), tokenizer=other_tok)
    with pytest.raises(VariantMismatchError, match="layers"):
        variant_from_plan(model, _drop_plan([(0, "attn")], n_layers=6))
    with pytest.raises(VariantMismatchError):
        Variant("bad", "t", drops=((9, "attn"),)).check(Adapter(model))


def test_drop_shorthand_matches_prune_drop():
    model = tiny_model("llama")
    g = torch.Generator().manual_seed(0)
    cal = Calibration(torch.randint(3, 250, (4, 16), generator=g), "test", 0, 64)
    ref = copy.deepcopy(model)
    want = drop(ref, cal, target="attn", n=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cache: dict = {}
    v = resolve_variant(model, "drop-2a", calibration=cal, sims_cache=cache)
    assert [d["layer"] for d in want.dropped_sublayers] == [layer for layer, _ in v.drops]
    assert v.plan.params_after == want.params_after and v.name == "Drop-2A"
    vm = resolve_variant(model, "drop-1m", calibration=cal, sims_cache=cache)
    assert len(cache) == 1 and vm.drops[0][1] == "mlp"
    assert all(torch.equal(before[k], x) for k, x in model.state_dict().items())  # not modified
    with pytest.raises(ValueError):
        drop(model, cal, target="attn", n=4, dry_run=True)
