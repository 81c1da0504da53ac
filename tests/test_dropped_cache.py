"""Dropped sublayers and the KV cache, for every family and the installed transformers' cache API.

A dropped attention still has to record each step in the cache (transformers reads the cache length and
the attention-mask sizes from per-layer entries, layer 0 by default). These tests cover the cases that
went wrong before: layer 0's attention dropped, prompts of different lengths left-padded in one batch,
and every tiny family, for free-running decoding and for multiple choice with a shared KV cache.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from test_multiple_choice import _brute_force, _examples

from prunelens.analysis.trajectories import decode
from prunelens.evaluation.multiple_choice import evaluate_multiple_choice
from prunelens.models.adapter import Adapter, drop_sublayer
from prunelens.models.compat import CACHE_KW, cache_kwargs, module_cache, output_cache
from prunelens.models.tiny import TINY_FAMILIES, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

# lengths 2..11: a left-padded batch, some prompts longer than the tiny sliding window (8)
PROMPTS = [
    [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [16, 17],
    [18, 19, 20, 21, 22],
    [23, 24, 25, 26, 27, 28, 29, 30, 31],
]

DROPS = {
    "attn0": ((0, "attn"),),
    "attn0+mlp2": ((0, "attn"), (2, "mlp")),
    "attn0,1,3": ((0, "attn"), (1, "attn"), (3, "attn")),
}


def _dropped(family: str, drops) -> torch.nn.Module:
    model = tiny_model(family, seed=2)
    adapter = Adapter(model)
    for layer, kind in drops:
        drop_sublayer(adapter, layer, kind)
    return model


@pytest.mark.parametrize("drops", list(DROPS), ids=list(DROPS))
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_cached_decoding_equals_recomputation_with_layer0_attention_dropped(family, drops):
    model = _dropped(family, DROPS[drops])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated cache keyword from our calls
        cached = decode(model, PROMPTS, max_new_tokens=6, use_cache=True, batch_size=4)
    recomputed = decode(model, PROMPTS, max_new_tokens=6, use_cache=False, batch_size=4)
    assert cached.tokens == recomputed.tokens
    for a, b in zip(cached.hidden, recomputed.hidden):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # left padding changes nothing: each prompt decoded alone gives the same tokens
    for i, p in enumerate(PROMPTS):
        assert decode(model, [p], max_new_tokens=6, use_cache=True).tokens[0] == cached.tokens[i]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_shared_kv_multiple_choice_with_layer0_attention_dropped(tok, family):
    model = _dropped(family, DROPS["attn0+mlp2"])
    exs = _examples(6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        shared = evaluate_multiple_choice(model, tok, exs, batch_size=6, method="shared_kv")
    rows = evaluate_multiple_choice(model, tok, exs, batch_size=4, method="rows")
    for ex, a, b in zip(exs, shared.records, rows.records):
        assert a["logprobs"] == pytest.approx(b["logprobs"], abs=1e-4)
        assert a["logprobs"] == pytest.approx(_brute_force(model, tok, ex), abs=1e-4)


def test_the_dropped_attention_writes_its_cache_entry():
    """Called the way the installed transformers calls attention, the stub records every token."""
    model = _dropped("llama", DROPS["attn0"])
    ids = torch.tensor([PROMPTS[0]])
    out = model(input_ids=ids, use_cache=True)
    cache = output_cache(out)
    assert cache.get_seq_length(0) == ids.shape[1]
    out = model(input_ids=torch.tensor([[3]]), use_cache=True, **cache_kwargs(cache))
    assert output_cache(out).get_seq_length(0) == ids.shape[1] + 1


def test_compat_helpers():
    assert CACHE_KW in ("cache", "past_key_values")
    sentinel = object()
    for key in ("cache", "past_key_values", "past_key_value", "layer_past"):
        assert module_cache({key: sentinel, "x": 1}) is sentinel
    assert module_cache({"cache": None, "past_key_values": None}) is None
