"""Layer-by-layer sparsification on tiny models of every family."""

from __future__ import annotations

import copy

import pytest
import torch

from prunelens.data.calibration import Calibration
from prunelens.models.adapter import Adapter
from prunelens.models.capture import capture_block_inputs, layer_kwargs, run_block
from prunelens.models.residual import record_blocks
from prunelens.models.tiny import TINY_FAMILIES, tiny_model
from prunelens.prune.linear_stats import InputStats, SharedInputStats, collect_input_stats
from prunelens.prune.sparsify import sparsify
from prunelens.prune.specs import SparsifySpec, SpecError

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
            run_block(adapter.layers[i], inps, outs, kwargs[i], batch_size=4)
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
            zeros = lin.weight == 0
            if method == "wanda":  # compared within each output row
                assert (zeros.sum(1) == lin.in_features // 2).all(), name
            else:
                assert abs(zeros.float().mean().item() - 0.5) < 0.01, name
    assert torch.equal(adapter.embed.weight, embed)  # embeddings stay dense
    assert abs(plan.sparsity["achieved"]["overall"] - 0.5) < 0.01
    assert (
        set(plan.sparsity["achieved"]["by_group"])
        and len(plan.sparsity["achieved"]["by_layer"]) == adapter.num_layers
    )
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
    for (na, pa), (_nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-5, msg=na)


@pytest.mark.parametrize(
    "args,match",
    [
        (("wanda", 1.0, None), r"\[0, 1\)"),
        (("wanda", -0.1, None), r"\[0, 1\)"),
        (("wanda", None, "4:4"), "0 < N < M"),
        (("wanda", None, "5:4"), "0 < N < M"),
        (("wanda", 0.5, "2:4"), "exactly one"),
        (("wanda", None, None), "exactly one"),
        (("obs", 0.5, None), "method: must be one of magnitude, wanda, sparsegpt"),
        (("wanda", 0.5, None, "owl", 1.5), r"allocation_lambda: must be a number in \[0, 1\)"),
        (("wanda", None, "2:4", "kl"), r"N:M patterns \(pattern\) stay uniform"),
        (("wanda", 0.5, None, "uniform", 0.1), "only applies to a non-uniform allocation"),
    ],
)
def test_sparsify_spec_refuses(args, match):
    """The one check of a sparsify request (SparsifySpec.check), which the CLI, configs and API all call."""
    with pytest.raises(SpecError, match=match):
        SparsifySpec(*args[:3], **dict(zip(("allocation", "allocation_lambda"), args[3:]))).check()


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
    shared = SharedInputStats("cpu", hessian=True)
    alone = {n: InputStats(lin.in_features, "cpu", True) for n, lin in linears.items()}

    def both(n, x):
        shared.add(n, x)
        alone[n].add(x)

    hooks = [lin.register_forward_pre_hook(lambda m, a, n=n: both(n, a[0])) for n, lin in linears.items()]
    hooks.append(block.register_forward_pre_hook(lambda m, a: shared.new_call()))
    with torch.no_grad():
        run_block(block, inps, torch.empty_like(inps), kw, batch_size=2)  # 3 calls
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
    st = SharedInputStats("cpu", hessian=False)
    x, y = torch.randn(2, 3), torch.randn(2, 3)
    st.add("a", x)
    st.add("b", x)  # b shares a's input in the first call
    st.new_call()
    st.add("a", x)
    with pytest.raises(RuntimeError, match="shared its input with a"):
        st.add("b", y)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_statistics_pass_stops_after_the_last_linear_input(family):
    """The statistics pass records every linear's input and skips the last product
    (its output is not needed)."""
    block, linears, inps, kw = _first_block(family)
    full = {n: InputStats(lin.in_features, "cpu", True) for n, lin in linears.items()}
    ran: list[str] = []
    hooks = [lin.register_forward_pre_hook(lambda m, a, n=n: full[n].add(a[0])) for n, lin in linears.items()]
    with torch.no_grad():
        run_block(block, inps, torch.empty_like(inps), kw, batch_size=2)
    for h in hooks:
        h.remove()
    hooks = [lin.register_forward_hook(lambda m, a, o, n=n: ran.append(n)) for n, lin in linears.items()]
    shared = SharedInputStats("cpu", hessian=True)
    with torch.no_grad():
        collect_input_stats(block, linears, shared, inps, kw, batch_size=2)
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


def _kwargs_by_real_forward(model, adapter, ids):
    got = [None] * adapter.num_layers
    hooks = [
        b.register_forward_pre_hook(lambda m, a, kw, i=i: got.__setitem__(i, kw), with_kwargs=True)
        for i, b in enumerate(adapter.layers)
    ]
    with torch.no_grad():
        model(ids, use_cache=False)
    for h in hooks:
        h.remove()
    return got


def _assert_same_kwargs(a: dict, b: dict):
    assert set(a) == set(b) - {"hidden_states"}
    for k, v in a.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, b[k]), k
        elif isinstance(v, tuple):
            assert all(torch.equal(x, y) for x, y in zip(v, b[k])), k


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_layer_kwargs_come_without_running_the_blocks(family):
    """Every block's keyword arguments equal those of a real forward, and no attention or MLP ran."""
    model = tiny_model(family)
    adapter = Adapter(model)
    ids = IDS[:1]
    ref = _kwargs_by_real_forward(model, adapter, ids)
    ran = []
    hooks = [
        adapter.sublayer(i, s).register_forward_hook(lambda *a: ran.append(1))
        for i in range(adapter.num_layers)
        for s in ("attn", "mlp")
    ]
    got = layer_kwargs(model, adapter, ids)
    for h in hooks:
        h.remove()
    assert not ran
    for a, b in zip(got, ref):
        _assert_same_kwargs(a, b)
    assert all("forward" not in b.__dict__ for b in adapter.layers)  # the stand-ins are gone


def test_layer_kwargs_fall_back_to_a_real_forward_and_keep_wrapped_forwards():
    """A model whose loop rejects the stand-ins is run for real; a wrapper set on a block's forward
    (as accelerate's hooks do) is put back."""
    model = tiny_model("llama")
    adapter = Adapter(model)
    block0 = adapter.layers[0]
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        return type(block0).forward(block0, *args, **kwargs)

    block0.forward = wrapped
    refused = []

    def picky(mod, args, kwargs, out):  # fails once, the first time it sees the stand-in's output
        if not refused:
            refused.append(1)
            raise RuntimeError("unexpected block output")

    h = adapter.layers[1].register_forward_hook(picky, with_kwargs=True)
    got = layer_kwargs(model, adapter, IDS[:1])
    h.remove()
    assert refused and calls  # the fallback ran block 0 through its wrapper
    assert block0.__dict__["forward"] is wrapped
    del block0.forward
    for a, b in zip(got, _kwargs_by_real_forward(model, adapter, IDS[:1])):
        _assert_same_kwargs(a, b)
