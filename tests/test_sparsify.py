"""Layer-by-layer sparsification on tiny models of every family."""

from __future__ import annotations

import copy

import pytest
import torch

from prunelens.data.calibration import Calibration
from prunelens.models.adapter import Adapter
from prunelens.models.residual import record_blocks
from prunelens.models.tiny import TINY_FAMILIES, tiny_model
from prunelens.prune.sparsify import (_collect_stats, _run_block, _SharedStats, _Stats, capture_block_inputs, sparsify,
                                      validate_sparsity)

IDS = torch.randint(3, 256, (6, 16), generator=torch.Generator().manual_seed(1))
CAL = Calibration(IDS, "random", 0, IDS.numel())


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_block_replay_reproduces_the_dense_forward(family):
    """Captured block-0 inputs + per-block kwargs replayed block by block give the full forward's states."""
    model = tiny_model(family)
    adapter = Adapter(model)
    states = []
    with record_blocks(adapter, states.append), torch.no_grad():
        model(IDS, use_cache=False)
    inps, kwargs = capture_block_inputs(model, adapter, IDS, batch_size=4, device=torch.device("cpu"))
    outs = torch.empty_like(inps)
    with torch.no_grad():
        for i in range(adapter.num_layers):
            _run_block(adapter.layers[i], inps, outs, kwargs[i], batch_size=4)
            torch.testing.assert_close(outs, states[i].post, rtol=0, atol=1e-6)
            inps, outs = outs, inps


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_unstructured_half(family, method):
    model = tiny_model(family)
    embed = Adapter(model).embed.weight.clone()
    plan = sparsify(model, CAL, method=method, sparsity=0.5, batch_size=4)
    adapter = Adapter(model)
    for i in range(adapter.num_layers):
        for name, lin in adapter.block_linears(i).items():
            zeros = (lin.weight == 0)
            if method == "wanda":  # compared within each output row
                assert (zeros.sum(1) == lin.in_features // 2).all(), name
            else:
                assert abs(zeros.float().mean().item() - 0.5) < 0.01, name
    assert torch.equal(adapter.embed.weight, embed)  # embeddings stay dense
    assert abs(plan.sparsity["achieved"]["overall"] - 0.5) < 0.01
    assert set(plan.sparsity["achieved"]["by_group"]) and len(plan.sparsity["achieved"]["by_layer"]) == adapter.num_layers
    with torch.no_grad():
        assert torch.isfinite(model(IDS).logits).all()


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt_neox", "phi3"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["2:4", "1:4"])
def test_nm_pattern_holds_in_every_group(family, method, pattern):
    n, m = map(int, pattern.split(":"))
    model = tiny_model(family)
    plan = sparsify(model, CAL, method=method, pattern=pattern, batch_size=4)
    adapter = Adapter(model)
    for i in range(adapter.num_layers):
        for lin in adapter.block_linears(i).values():
            nonzero = (lin.weight != 0).view(lin.out_features, -1, m).sum(-1)
            assert (nonzero <= n).all()
    assert plan.sparsity["pattern"] == pattern
    assert plan.sparsity["achieved"]["overall"] >= 1 - n / m - 1e-6
    assert plan.name.endswith(pattern)


def test_wanda_uses_calibration_and_magnitude_does_not():
    base = tiny_model("llama")
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    sparsify(a, CAL, method="wanda", sparsity=0.5, batch_size=4)
    sparsify(b, None, method="magnitude", sparsity=0.5)
    la, lb = Adapter(a).block_linears(0), Adapter(b).block_linears(0)
    assert any(not torch.equal(la[k].weight == 0, lb[k].weight == 0) for k in la)
    with pytest.raises(ValueError, match="calibration"):
        sparsify(copy.deepcopy(base), None, method="wanda", sparsity=0.5)


def test_sparsegpt_is_deterministic():
    a, b = tiny_model("qwen2"), tiny_model("qwen2")
    sparsify(a, CAL, method="sparsegpt", sparsity=0.5, batch_size=4)
    sparsify(b, CAL, method="sparsegpt", sparsity=0.5, batch_size=2)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-5, msg=na)


@pytest.mark.parametrize("args,match", [
    (("wanda", 1.0, None), r"\[0, 1\)"),
    (("wanda", -0.1, None), r"\[0, 1\)"),
    (("wanda", None, "4:4"), "0 < N < M"),
    (("wanda", None, "5:4"), "0 < N < M"),
    (("wanda", 0.5, "2:4"), "exactly one"),
    (("wanda", None, None), "exactly one"),
    (("obs", 0.5, None), "unknown method"),
])
def test_validate_sparsity_refuses(args, match):
    with pytest.raises(ValueError, match=match):
        validate_sparsity(*args)


def _first_block(family):
    """Block 0 of a tiny model, its linears, and its captured inputs and keyword arguments."""
    model = tiny_model(family)
    adapter = Adapter(model)
    inps, kwargs = capture_block_inputs(model, adapter, IDS, batch_size=4, device=torch.device("cpu"))
    return adapter.layers[0], adapter.block_linears(0), inps, kwargs[0]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_linears_reading_one_tensor_share_their_statistics(family):
    """q/k/v (and gate/up) read the same tensor: one accumulator, equal to what each would compute alone."""
    block, linears, inps, kw = _first_block(family)
    shared = _SharedStats(linears, "cpu", hessian=True)
    alone = {n: _Stats(lin.in_features, "cpu", True) for n, lin in linears.items()}

    def both(n, x):
        shared.add(n, x)
        alone[n].add(x)

    hooks = [lin.register_forward_pre_hook(lambda m, a, n=n: both(n, a[0])) for n, lin in linears.items()]
    hooks.append(block.register_forward_pre_hook(lambda m, a: shared.new_call()))
    with torch.no_grad():
        _run_block(block, inps, torch.empty_like(inps), kw, batch_size=2)  # 3 calls
    for h in hooks:
        h.remove()
    for n in linears:
        torch.testing.assert_close(shared[n].H, alone[n].H)
        torch.testing.assert_close(shared[n].sq, alone[n].sq)
    owners = {n: shared._owner[n] for n in linears}
    fused = any(n.endswith("qkv_proj") or n.endswith("query_key_value") for n in linears)
    if not fused:  # separate q/k/v projections share one accumulator
        q = next(n for n in linears if n.endswith("q_proj"))
        assert owners[q.replace("q_proj", "k_proj")] == owners[q.replace("q_proj", "v_proj")] == q
    else:  # fused projections (Phi-3, GPT-NeoX): every linear reads its own tensor
        assert all(owners[n] == n for n in linears)


def test_shared_statistics_refuse_a_changed_sharing():
    st = _SharedStats({}, "cpu", hessian=False)
    x, y = torch.randn(2, 3), torch.randn(2, 3)
    st.add("a", x)
    st.add("b", x)  # b shares a's input in the first call
    st.new_call()
    st.add("a", x)
    with pytest.raises(RuntimeError, match="shared its input with a"):
        st.add("b", y)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_statistics_pass_stops_after_the_last_linear_input(family):
    """The statistics pass records every linear's input and skips the last product (its output is not needed)."""
    block, linears, inps, kw = _first_block(family)
    full = {n: _Stats(lin.in_features, "cpu", True) for n, lin in linears.items()}
    ran: list[str] = []
    hooks = [lin.register_forward_pre_hook(lambda m, a, n=n: full[n].add(a[0])) for n, lin in linears.items()]
    with torch.no_grad():
        _run_block(block, inps, torch.empty_like(inps), kw, batch_size=2)
    for h in hooks:
        h.remove()
    hooks = [lin.register_forward_hook(lambda m, a, o, n=n: ran.append(n)) for n, lin in linears.items()]
    shared = _SharedStats(linears, "cpu", hessian=True)
    with torch.no_grad():
        _collect_stats(block, linears, shared, inps, kw, batch_size=2)
    for h in hooks:
        h.remove()
    for n in linears:
        torch.testing.assert_close(shared[n].H, full[n].H)
        assert shared[n].n == full[n].n == IDS.numel()
    calls = len(range(0, IDS.shape[0], 2))
    assert len(ran) == calls * (len(linears) - 1)  # one product skipped per call
    assert len(set(ran)) == len(linears) - 1


def test_reuse_freed_memory_is_a_scoped_setting():
    from prunelens.utils.memory import reuse_freed_memory

    with reuse_freed_memory() as applied:
        for _ in range(3):
            x = torch.empty(4 << 20)
            del x
    assert isinstance(applied, bool)
