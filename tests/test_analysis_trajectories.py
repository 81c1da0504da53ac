"""Decoding trajectories: cached decoding, teacher forcing in one pass, sampling with shared noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunelens.analysis.tracing import forward_final_hidden
from prunelens.analysis.trajectories import (
    Sampler,
    decode,
    first_divergence,
    teacher_forced_hidden,
    trajectories,
)
from prunelens.analysis.transitions import Sequences
from prunelens.analysis.variants import Variant
from prunelens.models.tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt_neox"])
def test_kv_cache_decoding_equals_recomputation(family):
    """Free-running decoding with a KV cache equals recomputing every prefix, dense and with drops."""
    model = tiny_model(family)
    v = Variant("v", "test", drops=((1, "attn"), (2, "mlp")))
    for ctx in (None, v):
        if ctx is None:
            a = decode(model, PROMPTS, max_new_tokens=6, use_cache=True)
            b = decode(model, PROMPTS, max_new_tokens=6, use_cache=False)
        else:
            with v.active(model):
                a = decode(model, PROMPTS, max_new_tokens=6, use_cache=True)
                b = decode(model, PROMPTS, max_new_tokens=6, use_cache=False)
        assert a.tokens == b.tokens
        for x, y in zip(a.hidden, b.hidden):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_decoding_alone_equals_batched_and_stops_at_eos():
    model = tiny_model("llama")
    both = decode(model, PROMPTS, max_new_tokens=5, batch_size=3)
    for i, p in enumerate(PROMPTS):
        alone = decode(model, [p], max_new_tokens=5, batch_size=1)
        assert alone.tokens[0] == both.tokens[i]
        torch.testing.assert_close(alone.hidden[0], both.hidden[i], rtol=1e-4, atol=1e-5)
    eos = both.tokens[0][2]
    stopped = decode(model, PROMPTS[:1], max_new_tokens=5, eos_ids=[eos])
    assert stopped.tokens[0] == both.tokens[0][: both.tokens[0].index(eos) + 1] and stopped.finished[0]
    assert stopped.hidden[0].shape[0] == len(stopped.tokens[0])


def test_teacher_forced_single_pass_equals_per_step():
    model = tiny_model("qwen2")
    v = Variant("v", "test", drops=((0, "attn"), (3, "mlp")))
    dense = decode(model, PROMPTS, max_new_tokens=5)
    seqs = Sequences(PROMPTS, dense.tokens)
    with v.active(model):
        tf = teacher_forced_hidden(model, seqs, batch_size=3)
        for i, p in enumerate(PROMPTS):
            gen = dense.tokens[i]
            assert tf[i].shape[0] == len(gen)
            for t in range(1, len(gen) + 1):
                prefix = torch.tensor([p + gen[: t - 1]])
                h = forward_final_hidden(model, prefix)[0, -1]
                torch.testing.assert_close(tf[i][t - 1], h, rtol=1e-4, atol=1e-5)


def test_sampling_noise_is_shared_and_reproducible():
    model = tiny_model("llama")
    s = Sampler(greedy=False, temperature=1.0, seed=3)
    a = decode(model, PROMPTS, max_new_tokens=6, sampler=s, batch_size=3)
    b = decode(model, PROMPTS[1:2], max_new_tokens=6, sampler=s, uids=[1])
    assert a.tokens[1] == b.tokens[0]
    greedy = decode(model, PROMPTS, max_new_tokens=6)
    assert a.tokens != greedy.tokens  # sampling does sample
    with pytest.raises(ValueError):
        Sampler(greedy=False, temperature=0.0)


def test_trajectories_identity_variant_and_divergence():
    model = tiny_model("llama")
    none = Variant("none", "test")
    res = trajectories(model, none, PROMPTS, max_new_tokens=4, temperatures=(1.0,))
    for regime in ("teacher_forced", "free_running"):
        assert res.divergence[regime] == [None, None, None]
        kl = np.concatenate(res.values[(regime, "p", "kl", 1.0)])
        assert kl.size == sum(len(t) for t in res.dense_tokens)
        np.testing.assert_allclose(kl, 0.0, atol=1e-6)
    drop = Variant("Drop-2A", "test", drops=((0, "attn"), (1, "attn")))
    res = trajectories(model, drop, PROMPTS, max_new_tokens=6, temperatures=(1.0, 2.0))
    for i in range(len(PROMPTS)):
        fr = res.divergence["free_running"][i]
        assert fr == first_divergence(res.dense_tokens[i], res.pruned_tokens["free_running"][i])
        # greedy: before the first divergence both regimes read the same prefix, so they agree
        assert res.divergence["teacher_forced"][i] == fr
        if fr is not None and fr > 1:
            a = res.values[("teacher_forced", "p", "kl", 1.0)][i][: fr - 1]
            b = res.values[("free_running", "p", "kl", 1.0)][i][: fr - 1]
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)
    frames = res.frames()
    assert set(frames) == {"trajectories", "trajectory_tokens", "divergence"}
    assert set(frames["trajectories"]["regime"]) == {"teacher_forced", "free_running"}


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 2
    assert first_divergence([1, 2], [1, 2, 3]) is None
