"""The capture engine (prunelens.models.capture): the block-by-block iterator, counterfactual suffix KL
sums and the hooks, on tiny models (its users' tests cover the rest: objectives, sparsify, tracing)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from prunelens.models.adapter import Adapter
from prunelens.models.capture import (
    block_input_hooks,
    blocks_in_turn,
    counterfactual_kl_sums,
    final_hidden_hook,
    sublayer_output_hooks,
    without_cache,
)
from prunelens.models.residual import record_blocks
from prunelens.models.tiny import TINY_FAMILIES, tiny_model
from prunelens.prune.objectives import temporarily_dropped
from prunelens.utils.kl import log_probs

pytestmark = pytest.mark.usefixtures("one_thread")

IDS = torch.randint(3, 250, (5, 10), generator=torch.Generator().manual_seed(4))


@pytest.mark.parametrize("family", TINY_FAMILIES)
@torch.no_grad()
def test_blocks_in_turn_feeds_each_block_the_outputs_of_the_one_before(family):
    model = tiny_model(family)
    adapter = Adapter(model)
    states = []
    with record_blocks(adapter, states.append):
        model(IDS, use_cache=False)
    seen = []
    for step in blocks_in_turn(model, adapter, IDS, batch_size=2, desc="test"):
        seen.append(step.index)
        assert step.block is adapter.layers[step.index]
        assert step.last == (step.index == adapter.num_layers - 1)
        torch.testing.assert_close(step.inputs, states[step.index].pre, rtol=0, atol=1e-5)
    assert seen == list(range(adapter.num_layers))


@torch.no_grad()
def test_outputs_written_by_the_caller_are_what_the_next_block_reads():
    model = tiny_model("llama")
    adapter = Adapter(model)
    for step in blocks_in_turn(model, adapter, IDS, batch_size=2, desc="test"):
        if step.index == 1:
            assert torch.equal(step.inputs, torch.full_like(step.inputs, 0.5))
        if step.index == 0:
            step.outputs.fill_(0.5)
            step.outputs_written = True


@torch.no_grad()
def test_counterfactual_kl_sums_of_no_change_and_of_a_drop():
    model = tiny_model("llama")
    adapter = Adapter(model)
    kept = counterfactual_kl_sums(
        model, adapter, IDS, [(0, contextlib.nullcontext), (2, contextlib.nullcontext)], batch_size=2
    )
    assert kept.tokens == IDS.numel() and all(abs(s) < 1e-4 for s in kept.sums)
    assert len(kept.reference) == 3
    torch.testing.assert_close(kept.reference[0], log_probs(model(IDS[:2], use_cache=False).logits.float()))
    dropped = counterfactual_kl_sums(
        model,
        adapter,
        IDS,
        [(1, lambda: temporarily_dropped(adapter, [(1, "mlp")]))],
        batch_size=2,
        keep_reference=False,
    )
    assert dropped.reference == [] and dropped.sums[0] > 1e-3
    assert not adapter.is_dropped(1, "mlp")  # undone


@torch.no_grad()
def test_hooks_see_block_inputs_sublayer_outputs_and_the_last_stream_then_go():
    model = tiny_model("llama")
    adapter = Adapter(model)
    got: dict = {}
    with (
        block_input_hooks(adapter, lambda i, h, a, k: got.setdefault("in", []).append(i), layers=[1]),
        sublayer_output_hooks(adapter, lambda i, k, o: got.setdefault("out", []).append((i, k))),
        final_hidden_hook(adapter, lambda h: got.__setitem__("h", h)),
    ):
        logits = model(IDS, use_cache=False).logits
    assert got["in"] == [1]
    assert got["out"] == [(i, k) for i in range(adapter.num_layers) for k in ("attn", "mlp")]
    torch.testing.assert_close(adapter.logits_from_hidden(got["h"]), logits)
    assert not any(b._forward_pre_hooks or b._forward_hooks for b in adapter.layers)


def test_without_cache_drops_the_cache_and_turns_use_cache_off():
    kw = {"attention_mask": 1, "past_key_values": object(), "layer_past": object(), "use_cache": True}
    assert without_cache(kw) == {"attention_mask": 1, "use_cache": False}
    assert without_cache({"position_ids": 2}) == {"position_ids": 2}
