"""Choosing what to drop by its effect in probability space: the exact counterfactual scores against
brute force on every tiny family, the drop plans they make (one-shot, iterative, searched) and the
errors for impossible requests."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from prunelens.data.calibration import Calibration
from prunelens.models.adapter import Adapter, drop_sublayer
from prunelens.models.capture import record_forward, suffix_logits
from prunelens.models.tiny import TINY_FAMILIES, tiny_model
from prunelens.prune.drop import PruneConfigError, drop
from prunelens.prune.objectives import (
    ChoiceSet,
    choice_divergence,
    counterfactual_kl,
    temporarily_dropped,
)
from prunelens.prune.specs import DropSpec, SpecError

pytestmark = pytest.mark.usefixtures("one_thread")


def _ids(n=3, length=12, vocab=250, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n, length), generator=g)


def _calibration(ids):
    return Calibration(ids, "random", 0, int(ids.numel()))


def _brute_kl(model, ids, units, T=1.0):
    """KL(dense ‖ copy with ``units`` dropped for good), full forwards, float64."""
    with torch.no_grad():
        ref = F.log_softmax(model(ids, use_cache=False).logits.double() / T, -1)
        other = copy.deepcopy(model)
        a = Adapter(other)
        for layer, kind in units:
            for k in ("attn", "mlp") if kind == "block" else (kind,):
                drop_sublayer(a, layer, k)
        q = F.log_softmax(other(ids, use_cache=False).logits.double() / T, -1)
    return float((ref.exp() * (ref - q)).sum(-1).mean())


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_suffix_rerun_reproduces_the_model_and_counterfactuals_match_brute_force(family):
    model = tiny_model(family)
    adapter = Adapter(model)
    ids = _ids()
    with torch.no_grad():
        rec = record_forward(model, adapter, ids)
        for start in range(adapter.num_layers):  # re-running from any recorded block input changes nothing
            assert torch.allclose(suffix_logits(adapter, rec, start), rec.logits, atol=1e-4, rtol=1e-4)
    scores, _ = counterfactual_kl(model, ids, ("attn", "mlp", "block"), temperature=2.0, batch_size=2)
    for kind in ("attn", "mlp", "block"):
        for layer in range(adapter.num_layers):
            want = _brute_kl(model, ids, [(layer, kind)], T=2.0)
            assert scores.divergence[kind][layer] == pytest.approx(want, rel=1e-3, abs=1e-6), (kind, layer)
    # the model is left as it was
    assert not any(adapter.is_dropped(i, k) for i in range(adapter.num_layers) for k in ("attn", "mlp"))


def test_temporarily_dropped_restores_modules_and_skips_dropped_units():
    model = tiny_model("llama", num_hidden_layers=3)
    adapter = Adapter(model)
    before = {n: id(m) for n, m in model.named_modules()}
    with temporarily_dropped(adapter, [(0, "attn"), (1, "block")]):
        assert (
            adapter.is_dropped(0, "attn") and adapter.is_dropped(1, "attn") and adapter.is_dropped(1, "mlp")
        )
        assert not adapter.is_dropped(0, "mlp")
    assert {n: id(m) for n, m in model.named_modules()} == before


def test_generation_objective_one_shot_iterative_and_search():
    model = tiny_model("llama", num_hidden_layers=4)
    ids = _ids(4, 16)
    cal = _calibration(ids)
    scores, _ = counterfactual_kl(model, ids, ("attn",), batch_size=2)
    best2 = sorted(range(4), key=lambda i: scores.divergence["attn"][i])[:2]
    dry = drop(model, cal, target="attn", n=2, objective="generation", batch_size=2, dry_run=True)
    assert sorted(d["layer"] for d in dry.dropped_sublayers) == sorted(best2)
    assert dry.options["objective"] == "generation" and dry.scores["objective"] == "generation"
    assert dry.scores["kl"]["attn"] == pytest.approx(scores.divergence["attn"])
    assert all(d["kl"] == pytest.approx(scores.divergence["attn"][d["layer"]]) for d in dry.dropped_sublayers)
    assert not Adapter(model).is_dropped(best2[0], "attn")  # a dry run leaves the model as it was

    it = drop(
        model, cal, target="attn", n=2, objective="generation", iterative=True, batch_size=2, dry_run=True
    )
    steps = it.scores["iterative_steps"]
    assert [s["step"] for s in steps] == [0, 1] and steps[0]["layer"] == best2[0]
    # the second step was scored with the first unit gone: its KL is that of the pair
    pair = [(steps[0]["layer"], "attn"), (steps[1]["layer"], "attn")]
    assert steps[1]["kl"] == pytest.approx(_brute_kl(model, ids, pair), rel=1e-3)

    searched = drop(
        model,
        cal,
        target="attn",
        n=2,
        objective="generation",
        batch_size=2,
        search_budget=2.0,
        seed=3,
        dry_run=True,
    )
    rec = searched.scores["search"]
    assert rec["evaluations"] >= 2 and rec["kl_after"] <= rec["kl_before"]
    final = [(d["layer"], "attn") for d in searched.dropped_sublayers]
    assert rec["kl_after"] == pytest.approx(_brute_kl(model, ids, final), rel=1e-3)

    # for real: the plan's units are dropped, and the block target drops whole blocks
    real = copy.deepcopy(model)
    plan = drop(real, cal, target="attn", n=2, objective="generation", batch_size=2)
    assert all(Adapter(real).is_dropped(d["layer"], "attn") for d in plan.dropped_sublayers)
    blocks = copy.deepcopy(model)
    bplan = drop(blocks, cal, target="block", n=1, objective="generation", batch_size=2)
    assert len(bplan.dropped_blocks) == 1 and Adapter(blocks).num_layers == 3


def _choices(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 250, (8,), generator=g).tolist() for _ in range(n)]
    options = [[[10], [11], [12]] for _ in range(n)]  # one token per option letter
    return ChoiceSet(prompts, options, "toy")


def test_choice_objective_against_brute_force_and_in_drop():
    # float64 on both sides: the batched (left-padded) and the one-prompt-at-a-time forward passes then
    # agree to rounding, whatever kernels this CPU picks (in float32 they differ by ~1e-7 in a 1e-4 KL)
    model = tiny_model("qwen2", num_hidden_layers=3).double()
    ch = _choices()
    scores, _ = choice_divergence(model, ch, ("mlp",))
    with torch.no_grad():
        for layer in range(3):
            other = copy.deepcopy(model)
            drop_sublayer(Adapter(other), layer, "mlp")
            kl, flips = 0.0, 0
            for ids, opts in zip(ch.prompts, ch.options):
                t = torch.tensor([ids])
                za = model(t).logits[0, -1].double()
                zb = other(t).logits[0, -1].double()
                pa = F.log_softmax(za, -1)[[o[0] for o in opts]]
                pb = F.log_softmax(zb, -1)[[o[0] for o in opts]]
                pa, pb = pa - torch.logsumexp(pa, 0), pb - torch.logsumexp(pb, 0)
                kl += float((pa.exp() * (pa - pb)).sum())
                flips += int(pa.argmax() != pb.argmax())
            assert scores.divergence["mlp"][layer] == pytest.approx(kl / len(ch.prompts), rel=1e-3, abs=1e-7)
            assert scores.flip_rate["mlp"][layer] == flips / len(ch.prompts)
    plan = drop(model, _calibration(_ids()), target="mlp", n=1, objective="choice", choices=ch, dry_run=True)
    best = min(range(3), key=lambda i: scores.divergence["mlp"][i])
    assert plan.dropped_sublayers[0]["layer"] == best and plan.scores["objective"] == "choice"
    assert "flip_rate" in plan.scores and plan.scores["questions"] == 5


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"objective": "loss"}, r"objective: must be one of hidden, generation, choice \(got 'loss'\)"),
        ({"objective": "choice"}, "needs multiple-choice questions"),
        ({"objective": "generation", "search_budget": 0}, "positive number of seconds"),
        ({"objective": "generation", "search_budget": -3.0}, "positive number of seconds"),
        ({"objective": "hidden", "search_budget": 5.0}, "use objective generation or choice"),
        ({"objective": "generation", "window": True}, "needs objective hidden"),
    ],
)
def test_impossible_objective_requests_are_refused(kw, msg):
    """Refused by the DropSpec's check (missing questions: by drop itself) before anything is dropped."""
    model = tiny_model("llama", num_hidden_layers=3)
    target = "block" if kw.get("window") else "attn"
    with pytest.raises(PruneConfigError, match=msg):
        drop(model, _calibration(_ids()), target=target, n=1, **kw)
    assert not Adapter(model).is_dropped(0, "attn")


def _second_order(model, ids, layer, kind, T=1.0, eps=1e-4):
    """``½ Σ_t Var_{p_t}(dz_t / T)`` per token, with ``dz`` the logit change from removing the unit's output
    to first order (a central difference of scaling it by ``1 ± eps``): the exact quadratic form the Fisher
    estimate samples."""
    adapter = Adapter(model)
    mods = [adapter.sublayer_out(layer, k) for k in (("attn", "mlp") if kind == "block" else (kind,))]

    def scaled(out, s):
        return (out[0] * s, *out[1:]) if isinstance(out, tuple) else out * s

    def run(scale):
        hs = [m.register_forward_hook(lambda mod, a, out, s=scale: scaled(out, s)) for m in mods]
        try:
            return model(ids, use_cache=False).logits.double()
        finally:
            for h in hs:
                h.remove()

    with torch.no_grad():
        z0 = run(1.0)
        dz = (run(1.0 - eps) - run(1.0 + eps)) / (2 * eps) / T  # d z / d(removal)
        p = torch.softmax(z0 / T, -1)
        var = (p * dz**2).sum(-1) - (p * dz).sum(-1) ** 2
    return float(0.5 * var.mean())


def test_fisher_estimate_samples_the_exact_second_order_form():
    from prunelens.prune.objectives import fisher_kl_estimate

    model = tiny_model("llama", num_hidden_layers=3).double()
    ids = _ids(4, 10)
    est = fisher_kl_estimate(model, ids, ("attn", "mlp", "block"), samples=300, batch_size=4, temperature=1.5)
    for kind in ("attn", "mlp", "block"):
        for layer in range(3):
            want = _second_order(model, ids, layer, kind, T=1.5)
            assert est.divergence[kind][layer] == pytest.approx(want, rel=0.25), (kind, layer)
    # parameters keep their requires_grad, and no gradient is left on them
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    # the estimate picks what the exact scores pick when the objective asks for it
    plan = drop(
        model, _calibration(ids), target="attn", n=1, objective="generation", estimator="fisher", dry_run=True
    )
    assert plan.options["estimator"] == "fisher" and "Fisher" in plan.scores["method"]
    with pytest.raises(SpecError, match="estimator: .* use objective generation"):
        DropSpec("attn", 1, objective="choice", estimator="fisher").check()


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt_neox"])
def test_choice_scores_of_left_padded_batches_equal_one_question_at_a_time(family):
    model = tiny_model(family, num_hidden_layers=2)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 250, (k,), generator=g).tolist() for k in (5, 9, 3, 7, 6)]
    ch = ChoiceSet(prompts, [[[10], [11], [12], [13]][: 2 + i % 3] for i in range(5)], "toy")
    one, _ = choice_divergence(model, ch, ("attn", "mlp"), batch_size=1)
    batched, _ = choice_divergence(model, ch, ("attn", "mlp"), batch_size=4)
    for kind in ("attn", "mlp"):
        assert batched.divergence[kind] == pytest.approx(one.divergence[kind], rel=1e-4, abs=1e-7)
        assert batched.flip_rate[kind] == one.flip_rate[kind]
