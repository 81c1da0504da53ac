"""Lockstep execution and true-sequential sparsification."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunelens.data.calibration import Calibration
from prunelens.models.adapter import Adapter
from prunelens.models.capture import capture_block_inputs, run_block
from prunelens.models.tiny import TINY_FAMILIES, tiny_model
from prunelens.prune import block_prune
from prunelens.prune.block_prune import CalibrationMemoryError, _sparsegpt_group, _zero
from prunelens.prune.linear_stats import SharedInputStats, collect_input_stats, linear_groups
from prunelens.prune.lockstep import LockstepError, run_in_lockstep
from prunelens.prune.sparse_math import score_mask, wanda_scores
from prunelens.prune.sparsify import sparsify
from prunelens.prune.specs import TRUE_SEQUENTIAL_DEFAULT

IDS = torch.randint(3, 256, (6, 16), generator=torch.Generator().manual_seed(2))
CAL = Calibration(IDS, "random", 0, IDS.numel())


class _Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(6, 3)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g)

    def forward(self, x):
        return self.c(torch.relu(self.a(x)) * self.b(x))


def _batches(n=5):
    return [torch.randn(2, 4, generator=torch.Generator().manual_seed(10 + i)) for i in range(n)]


def _lockstep(mod, xs, gates, **kw):
    outs: list = [None] * len(xs)

    def run(j):
        outs[j] = mod(xs[j])

    run_in_lockstep(
        run,
        len(xs),
        {mod.a: "ab", mod.c: "c"},
        members={mod.b: "ab"},
        on_arrive=lambda key, x: gates.append(("arrive", key, x.shape[0])),
        on_gate=lambda key: gates.append(("gate", key)),
        **kw,
    )
    return outs


def test_every_batch_parks_at_a_gate_before_it_opens_and_results_match_a_plain_loop():
    mod, xs, events = _Mlp(), _batches(), []
    outs = _lockstep(mod, xs, events)
    n = len(xs)
    assert events == [("arrive", "ab", 2)] * n + [("gate", "ab")] + [("arrive", "c", 2)] * n + [("gate", "c")]
    with torch.no_grad():
        for x, o in zip(xs, outs):
            assert torch.equal(o, mod(x))
    assert not mod.a._forward_pre_hooks and not mod.b._forward_pre_hooks and not mod.c._forward_pre_hooks


def test_on_gate_sees_every_batch_and_changes_what_follows():
    """What a gate does to its module (pruning) applies to every batch's product through that module."""
    mod, xs = _Mlp(), _batches(3)
    seen: dict[str, int] = {}

    def arrive(key, x):
        seen[key] = seen.get(key, 0) + x.shape[0]

    outs: list = [None] * 3

    def run(j):
        outs[j] = mod(xs[j])

    run_in_lockstep(
        run,
        3,
        {mod.a: "ab", mod.c: "c"},
        on_arrive=arrive,
        on_gate=lambda key: getattr(mod, key[0]).weight.data.zero_(),
    )
    assert seen == {"ab": 6, "c": 6}
    for o, _x in zip(outs, xs):
        torch.testing.assert_close(
            o, mod.c.bias.expand(2, 3)
        )  # a zeroed → relu(bias_a)·b(x); c zeroed → bias


def test_finish_false_stops_once_the_last_gate_opened():
    mod, xs, events = _Mlp(), _batches(3), []
    outs = _lockstep(mod, xs, events, finish=False)
    assert events[-1] == ("gate", "c") and outs == [None] * 3


def test_an_error_in_one_batch_unwinds_the_parked_ones_and_is_raised():
    mod, xs = _Mlp(), _batches(4)
    unwound: list[int] = []

    def run(j):
        try:
            if j == 2:
                raise ValueError("batch 2 is broken")
            mod(xs[j])
        finally:
            unwound.append(j)

    with pytest.raises(ValueError, match="batch 2 is broken"):
        run_in_lockstep(run, 4, {mod.a: "ab"}, on_arrive=lambda k, x: None, on_gate=lambda k: None)
    assert sorted(unwound) == [0, 1, 2]  # 0 and 1 were parked at the gate; 3 never started
    assert not mod.a._forward_pre_hooks


def test_an_error_at_a_gate_is_raised_and_calls_outside_the_lockstep_pass_freely():
    mod, xs = _Mlp(), _batches(2)

    def gate(key):
        raise RuntimeError("pruning failed")

    with pytest.raises(RuntimeError, match="pruning failed"):
        run_in_lockstep(lambda j: mod(xs[j]), 2, {mod.a: "ab"}, on_arrive=lambda k, x: None, on_gate=gate)
    arrived = []
    run_in_lockstep(
        lambda j: mod(xs[j]),
        1,
        {mod.a: "ab"},
        on_arrive=lambda k, x: arrived.append(k),
        on_gate=lambda k: mod(xs[1]),
    )  # the gate's own call of the module is not gated
    assert arrived == ["ab"]


def test_batches_on_different_paths_are_refused():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.left, self.right = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.left(x) if x.sum() > 0 else self.right(x)

    mod = Branchy()
    xs = [torch.ones(1, 4), -torch.ones(1, 4)]
    with pytest.raises(LockstepError, match="different paths"):
        run_in_lockstep(
            lambda j: mod(xs[j]),
            2,
            {mod.left: "L", mod.right: "R"},
            on_arrive=lambda k, x: None,
            on_gate=lambda k: None,
        )
    with pytest.raises(LockstepError, match="different paths"):  # one batch never reaches the gate
        run_in_lockstep(
            lambda j: mod(xs[j]), 2, {mod.left: "L"}, on_arrive=lambda k, x: None, on_gate=lambda k: None
        )


def test_a_member_reading_another_tensor_is_refused():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.a(x) + self.b(x * 2)

    mod = TwoInputs()
    with pytest.raises(LockstepError, match="does not read the tensor"):
        run_in_lockstep(
            lambda j: mod(torch.ones(1, 4)),
            2,
            {mod.a: "ab"},
            members={mod.b: "ab"},
            on_arrive=lambda k, x: None,
            on_gate=lambda k: None,
        )


def _group_by_group(model, method):
    """Reference true-sequential pruning, written the slow way: for every group of linears, a fresh pass over
    the block (with the groups before it already pruned) collects that group's statistics."""
    adapter = Adapter(model)
    with torch.no_grad():
        inps, kwargs = capture_block_inputs(model, adapter, IDS, batch_size=4, device=torch.device("cpu"))
        outs = torch.empty_like(inps)
        for i in range(adapter.num_layers):
            block, linears = adapter.layers[i], adapter.block_linears(i)
            for owner, names in linear_groups(block, linears, inps, kwargs[i]).items():
                stats = SharedInputStats("cpu", hessian=method == "sparsegpt")
                collect_input_stats(block, {n: linears[n] for n in names}, stats, inps, kwargs[i], 4)
                if method == "wanda":
                    for n in names:
                        w = linears[n].weight
                        _zero(
                            w,
                            score_mask(wanda_scores(w, stats[owner].sq), sparsity=0.5, nm=None, per_row=True),
                        )
                else:
                    _sparsegpt_group([linears[n].weight for n in names], stats[owner].H, 0.5, None, 128, 0.01)
            run_block(block, inps, outs, kwargs[i], 4)
            inps, outs = outs, inps
    return model


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_true_sequential_equals_a_pass_per_group(family, method):
    model = tiny_model(family)
    ref = _group_by_group(copy.deepcopy(model), method)
    plan = sparsify(model, CAL, method=method, sparsity=0.5, batch_size=4, true_sequential=True)
    assert plan.options["true_sequential"] is True
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("family", ["llama", "qwen3", "gpt_neox"])
def test_true_sequential_changes_only_what_follows_the_first_group(family):
    """Block 0's first group reads the same inputs either way; the groups after it see pruned predecessors."""
    dense = tiny_model(family)
    std, seq = copy.deepcopy(dense), copy.deepcopy(dense)
    sparsify(std, CAL, method="wanda", sparsity=0.5, batch_size=4, true_sequential=False)
    sparsify(seq, CAL, method="wanda", sparsity=0.5, batch_size=4, true_sequential=True)
    a = Adapter(dense)
    inps, kwargs = capture_block_inputs(dense, a, IDS, batch_size=4, device=torch.device("cpu"))
    groups = list(linear_groups(a.layers[0], a.block_linears(0), inps, kwargs[0]).values())
    ls, lq = Adapter(std).block_linears(0), Adapter(seq).block_linears(0)
    for n in groups[0]:
        assert torch.equal(ls[n].weight, lq[n].weight)
    assert any(not torch.equal(ls[n].weight, lq[n].weight) for g in groups[1:] for n in g)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_each_method_has_its_own_default(method):
    plan = sparsify(tiny_model("llama"), CAL, method=method, sparsity=0.5, batch_size=4)
    assert plan.options["true_sequential"] is TRUE_SEQUENTIAL_DEFAULT[method]
    assert TRUE_SEQUENTIAL_DEFAULT == {"wanda": True, "sparsegpt": False}


@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory"),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"),
    ],
)
def test_running_out_of_memory_says_what_to_change(monkeypatch, error):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(block_prune, "run_in_lockstep", fail)
    with pytest.raises(
        CalibrationMemoryError,
        match="true_sequential=False.*--dense-block-stats.*6 calibration windows"
        "|6 calibration windows.*true_sequential=False",
    ):
        sparsify(tiny_model("llama"), CAL, method="wanda", sparsity=0.5, batch_size=4, true_sequential=True)
    monkeypatch.setattr(
        block_prune, "run_in_lockstep", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("other"))
    )
    with pytest.raises(RuntimeError, match="^other$"):
        sparsify(tiny_model("llama"), CAL, method="wanda", sparsity=0.5, batch_size=4, true_sequential=True)
