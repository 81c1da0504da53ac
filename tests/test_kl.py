"""The one softmax KL (prunelens.utils.kl) against a float64 reference written out from the definition."""

from __future__ import annotations

import pytest
import torch

from prunelens.utils.kl import kl_divergence, log_probs


def _logits(*shape, scale=3.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _reference(z_p: torch.Tensor, z_q: torch.Tensor, T: float) -> torch.Tensor:
    """Σ_i p_i (log p_i − log q_i) in float64, p = exp(z_p/T) / Σ exp(z_p/T) written out."""
    a, b = z_p.double() / T, z_q.double() / T
    log_p = a - a.logsumexp(-1, keepdim=True)
    log_q = b - b.logsumexp(-1, keepdim=True)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


@pytest.mark.parametrize("T", [1.0, 0.7, 2.0])
@pytest.mark.parametrize("nonnegative_terms", [False, True])
def test_kl_matches_the_float64_definition(T, nonnegative_terms):
    z_p, z_q = _logits(4, 5, 300, seed=1), _logits(4, 5, 300, seed=2)
    got = kl_divergence(log_probs(z_p, T), log_probs(z_q, T), nonnegative_terms=nonnegative_terms)
    assert got.dtype == torch.float32 and got.shape == (4, 5)
    torch.testing.assert_close(got.double(), _reference(z_p, z_q, T), rtol=1e-5, atol=1e-6)
    got64 = kl_divergence(
        log_probs(z_p.double(), T), log_probs(z_q.double(), T), nonnegative_terms=nonnegative_terms
    )
    torch.testing.assert_close(got64, _reference(z_p, z_q, T), rtol=1e-12, atol=1e-14)


def test_given_probabilities_and_in_place_terms_change_no_bit():
    lp, lq = log_probs(_logits(6, 1000, seed=3), 0.9), log_probs(_logits(6, 1000, seed=4), 0.9)
    want = (lp.exp() * (lp - lq)).sum(-1)  # the scoring loops' expression before it lived here
    assert torch.equal(kl_divergence(lp, lq), want)
    assert torch.equal(kl_divergence(lp, lq, lp.exp()), want)
    scratch = lq.clone()
    assert torch.equal(kl_divergence(lp, scratch, lp.exp(), overwrite_log_q=True), want)
    assert not torch.equal(scratch, lq)  # the log-probabilities were used as scratch


def test_temperature_one_skips_the_division_without_changing_a_bit():
    z = _logits(3, 50, seed=5)
    assert torch.equal(log_probs(z, 1.0), torch.log_softmax(z / 1.0, dim=-1))
    assert torch.equal(log_probs(z, 0.5), torch.log_softmax(z / 0.5, dim=-1))


def test_nonnegative_terms_stay_nonnegative_and_handle_zero_probabilities():
    z = _logits(8, 200, seed=6, scale=10.0)
    tiny = z + 1e-6 * _logits(8, 200, seed=7)  # nearly the same distribution: a KL near rounding
    lp, lq = log_probs(z), log_probs(tiny)
    assert (kl_divergence(lp, lq, nonnegative_terms=True) >= 0).all()
    assert torch.equal(kl_divergence(lp, lp, nonnegative_terms=True), torch.zeros(8))
    z_inf = z.clone()
    z_inf[:, :10] = -float("inf")  # p is zero there: those tokens add q_i - p_i = q_i
    got = kl_divergence(log_probs(z_inf.double()), log_probs(z.double()), nonnegative_terms=True)
    p, log_q = log_probs(z_inf.double()).exp(), log_probs(z.double())
    keep = p > 0
    want = torch.where(keep, p * (torch.where(keep, p.log(), 0.0) - log_q), 0.0).sum(-1)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
