"""Perplexity with non-overlapping and sliding windows, against a direct computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prunelens.evaluation.perplexity import _windows, perplexity
from prunelens.models.tiny import tiny_model

STREAM = torch.randint(3, 256, (103,), generator=torch.Generator().manual_seed(4))


def _direct_nll(model, ids: torch.Tensor, first: int) -> list[float]:
    with torch.no_grad():
        logp = F.log_softmax(model(ids[None]).logits[0, :-1].double(), -1)
    return [-float(logp[t - 1, ids[t]]) for t in range(first, ids.numel())]


def test_non_overlapping_windows_match_direct_computation():
    model = tiny_model("llama")
    res = perplexity(model, STREAM, seqlen=32, batch_size=2)
    nll = []
    for b in range(0, 103, 32):
        w = STREAM[b : b + 32]
        if w.numel() >= 2:
            nll += _direct_nll(model, w, 1)
    assert res.tokens == len(nll)
    assert res.nll == pytest.approx(sum(nll) / len(nll), rel=1e-5)
    assert res.ppl == pytest.approx(math.exp(res.nll))


def test_sliding_window_scores_every_token_once_with_more_context():
    wins = _windows(103, 32, 16)
    scored = [b + t for b, e, first in wins for t in range(first, e - b)]
    assert scored == list(range(1, 103))  # every token but the first, exactly once
    model = tiny_model("llama")
    res = perplexity(model, STREAM, seqlen=32, stride=16, batch_size=3)
    nll = []
    for b, e, first in wins:
        nll += _direct_nll(model, STREAM[b:e], first)
    assert res.tokens == 102 and res.nll == pytest.approx(sum(nll) / len(nll), rel=1e-5)
    with pytest.raises(ValueError, match="stride"):
        perplexity(model, STREAM, seqlen=32, stride=40)


def test_bos_windows_score_every_token_from_a_bos_prefix():
    """With a BOS token each window is [BOS] + seqlen − 1 stream tokens and all of them are scored."""
    model = tiny_model("gemma")
    bos = 2
    res = perplexity(model, STREAM, seqlen=32, batch_size=2, bos_id=bos)
    nll = []
    for b in range(0, 103, 31):
        w = torch.cat([torch.tensor([bos]), STREAM[b : b + 31]])
        nll += _direct_nll(model, w, 1)
    assert res.tokens == 103 == len(nll) and res.bos_id == bos
    assert res.nll == pytest.approx(sum(nll) / len(nll), rel=1e-5)
    wins = _windows(103, 31, 10, prefixed=True)  # sliding: still every token exactly once
    assert [b + t for b, e, first in wins for t in range(first, e - b)] == list(range(103))
    slid = perplexity(model, STREAM, seqlen=32, stride=10, bos_id=bos)
    assert slid.tokens == 103 and slid.nll < res.nll + 1.0
