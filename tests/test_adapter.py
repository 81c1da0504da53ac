"""Architecture adapter on tiny random models of every supported family (no downloads)."""

from __future__ import annotations

import copy

import pytest
import torch

from prunelens.models.adapter import (
    FAMILIES,
    Adapter,
    UnsupportedArchitectureError,
    drop_blocks,
    drop_sublayer,
    param_count,
    spec_for,
)
from prunelens.models.residual import record_blocks
from prunelens.models.tiny import TINY_FAMILIES, tiny_model

IDS = torch.randint(3, 256, (2, 12), generator=torch.Generator().manual_seed(0))


def test_every_family_has_a_tiny_config():
    assert set(TINY_FAMILIES) == set(FAMILIES)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_residual_points_match_hidden_states(family):
    model = tiny_model(family)
    adapter = Adapter(model)
    got = []
    with record_blocks(adapter, got.append), torch.no_grad():
        out = model(IDS, output_hidden_states=True)
    assert [s.layer for s in got] == list(range(adapter.num_layers))
    for s in got:
        torch.testing.assert_close(s.pre + s.d_attn + s.d_mlp, s.post, rtol=0, atol=1e-6)
        torch.testing.assert_close(s.pre, out.hidden_states[s.layer], rtol=0, atol=0)
    # the final norm + unembedding of the last residual reproduces the model's logits
    torch.testing.assert_close(adapter.logits_from_hidden(got[-1].post), out.logits, rtol=1e-5, atol=1e-5)


def _zero_hook(module, args, out):
    if isinstance(out, tuple):
        return (torch.zeros_like(out[0]),) + tuple(out[1:])
    return torch.zeros_like(out)


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("kind", ["attn", "mlp"])
def test_dropped_sublayer_equals_zeroed_contribution(family, kind):
    """Dropping = the dense model with that sublayer's residual contribution forced to zero."""
    model = tiny_model(family)
    reference = copy.deepcopy(model)
    ref_adapter = Adapter(reference)
    handles = [ref_adapter.sublayer_out(layer, kind).register_forward_hook(_zero_hook) for layer in (0, 2)]
    adapter = Adapter(model)
    before = param_count(model)
    removed = sum(p.numel() for p in adapter.sublayer(0, kind).parameters())
    removed += sum(
        p.numel()
        for n in adapter.sublayer_norms(kind)
        for p in adapter.layers[0].get_submodule(n).parameters()
    )
    for layer in (0, 2):
        drop_sublayer(adapter, layer, kind)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, reference(IDS).logits, rtol=0, atol=1e-5)
    for h in handles:
        h.remove()
    assert param_count(model) == before - 2 * removed
    assert adapter.is_dropped(0, kind) and adapter.is_dropped(2, kind) and not adapter.is_dropped(1, kind)
    assert not list(adapter.sublayer(0, kind).parameters())


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_generation_with_kv_cache_after_drops(family):
    """The cache stays consistent when layer 0's attention is gone (seq length is read from layer 0)."""
    for kind, layers in (("attn", [0, 3]), ("mlp", [1])):
        model = tiny_model(family)
        adapter = Adapter(model)
        for layer in layers:
            drop_sublayer(adapter, layer, kind)
        prompt = IDS[:, :5]
        with torch.no_grad():
            cached = model.generate(
                prompt, max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=0
            )
            uncached = model.generate(
                prompt, max_new_tokens=12, do_sample=False, use_cache=False, pad_token_id=0
            )
        assert torch.equal(cached, uncached)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_drop_blocks_reindexes_and_skips(family):
    model = tiny_model(family)
    reference = copy.deepcopy(model)
    adapter = Adapter(model)
    types_before = adapter.layer_types()
    per_block = param_count(adapter.layers[1])
    before = param_count(model)
    drop_blocks(adapter, [1, 2])
    assert adapter.num_layers == 2 == model.config.num_hidden_layers
    assert param_count(model) == before - 2 * per_block
    if types_before is not None:
        assert adapter.layer_types() == [types_before[0], types_before[3]]
    idx = [m.layer_idx for block in adapter.layers for m in block.modules() if hasattr(m, "layer_idx")]
    assert sorted(set(idx)) == [0, 1]
    # reference: the dense model whose blocks 1 and 2 return their input unchanged
    ref_adapter = Adapter(reference)
    hooks = []
    for i in (1, 2):
        block = ref_adapter.layers[i]
        hooks.append(
            block.register_forward_hook(
                lambda m, args, kwargs, out: args[0] if args else kwargs["hidden_states"], with_kwargs=True
            )
        )
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, reference(IDS).logits, rtol=0, atol=1e-5)
        prompt = IDS[:, :5]
        cached = model.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = model.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)


def test_drop_blocks_refuses_bad_indices():
    adapter = Adapter(tiny_model("llama"))
    with pytest.raises(ValueError, match="block indices"):
        drop_blocks(adapter, [4])
    with pytest.raises(ValueError, match="all"):
        drop_blocks(adapter, [0, 1, 2, 3])


def test_unsupported_architecture_error_names_families_and_how_to_add():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    with pytest.raises(UnsupportedArchitectureError) as err:
        spec_for(model)
    msg = str(err.value)
    assert "gpt2" in msg and "llama" in msg and "gemma2" in msg and "FAMILIES" in msg


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
def test_logit_lens_applies_softcap(family):
    model = tiny_model(family)
    adapter = Adapter(model)
    assert adapter.logit_softcap == 30.0
    h = torch.randn(3, model.config.hidden_size) * 50
    z = adapter.logits_from_hidden(h)
    assert z.abs().max() <= 30.0
    raw = adapter.unembed(adapter.final_norm(h))
    torch.testing.assert_close(z, torch.tanh(raw / 30.0) * 30.0)
    # the seed scripts' convention skips the final norm
    torch.testing.assert_close(
        adapter.logits_from_hidden(h, apply_final_norm=False), torch.tanh(adapter.unembed(h) / 30.0) * 30.0
    )
