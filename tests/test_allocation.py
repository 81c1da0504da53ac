"""Per-block sparsity allocation: the pure map (exact mean, bounds, monotonicity), OWL's outlier ratio and
the KL sensitivities against direct computations, the wiring through sparsify, the plan, the CLI and
the study config, and the refusals."""

from __future__ import annotations

import copy
import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from prunelens.cli import app
from prunelens.data.calibration import Calibration
from prunelens.models.adapter import Adapter
from prunelens.models.tiny import tiny_model
from prunelens.plan import PLAN_FILE, PlanError, PrunePlan
from prunelens.prune.allocation import (
    OWL_LAMBDA,
    OWL_OUTLIER_M,
    allocate,
    kl_scores,
    outlier_ratio,
    sparsity_ceiling,
    weighted_mean,
)
from prunelens.prune.sensitivity import block_params, block_sensitivity
from prunelens.prune.sparse_math import magnitude_scores, score_mask, wanda_scores
from prunelens.prune.sparsify import block_sparsities, sparsify
from prunelens.studies.config import StudyConfigError, parse_config

from conftest import random_text

IDS = torch.randint(3, 256, (6, 16), generator=torch.Generator().manual_seed(1))
CAL = Calibration(IDS, "random", 0, IDS.numel())
FAMILIES = ("llama", "gpt_neox", "qwen2")

# --- the pure map ------------------------------------------------------------------------------------


def _exact(scores, weights, target, lam):
    """The same map in exact rational arithmetic (the reference for the float one)."""
    x = [Fraction(v) for v in scores]
    w = [Fraction(v) for v in weights]
    t, lam_f = Fraction(target), Fraction(lam)
    xbar = sum(a * b for a, b in zip(x, w)) / sum(w)
    dev = [v - xbar for v in x]
    spread = max(abs(d) for d in dev)
    if spread == 0 or lam_f == 0:
        return [t] * len(x)
    c = lam_f / spread
    ceiling = (1 + t) / 2
    for d in dev:
        if d > 0:
            c = min(c, t / d)
        elif d < 0:
            c = min(c, (ceiling - t) / -d)
    return [t - c * d for d in dev]


def test_allocation_has_the_target_mean_and_the_deviation_bound():
    scores = [0.01, 0.03, 0.02, 0.08, 0.05]
    weights = [10, 10, 10, 10, 10]
    s = allocate(scores, weights, 0.7, 0.08)
    assert weighted_mean(s, weights) == pytest.approx(0.7, abs=1e-15)
    assert max(abs(v - 0.7) for v in s) == pytest.approx(0.08, abs=1e-15)  # the extreme block gets ±λ
    assert s[3] == min(s) and s[0] == max(s)  # most outliers → densest
    for got, want in zip(s, _exact(scores, weights, 0.7, 0.08)):
        assert got == pytest.approx(float(want), abs=1e-15)


def test_weights_decide_the_mean():
    s = allocate([0.0, 1.0], [3, 1], 0.5, 0.1)
    assert 3 * s[0] + s[1] == pytest.approx(4 * 0.5, abs=1e-15)
    assert s[0] > 0.5 > s[1]


def test_uniform_scores_and_zero_lambda_give_uniform():
    assert allocate([0.2] * 4, [1, 2, 3, 4], 0.6, 0.08) == [0.6] * 4
    assert allocate([0.1, 0.5, 0.2], [1, 1, 1], 0.6, 0.0) == [0.6] * 3


def test_bounds_shrink_the_scale_near_zero_and_one():
    low = allocate([0.0, 1.0, 2.0, 3.0], [1, 1, 1, 1], 0.02, 0.08)
    assert min(low) >= 0.0 and weighted_mean(low, [1] * 4) == pytest.approx(0.02, abs=1e-15)
    assert min(low) == pytest.approx(0.0, abs=1e-15)  # the lower bound binds
    high = allocate([3.0, 0.0, 0.0, 0.0], [1, 1, 1, 1], 0.97, 0.08)
    assert max(high) <= sparsity_ceiling(0.97) < 1.0
    assert weighted_mean(high, [1] * 4) == pytest.approx(0.97, abs=1e-15)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(-50, 50, allow_nan=False, allow_infinity=False),
            st.integers(1, 10**8),
        ),
        min_size=1,
        max_size=40,
    ),
    st.floats(0.0, 0.999),
    st.floats(0.0, 0.5),
)
def test_allocation_properties(pairs, target, lam):
    scores = [p[0] for p in pairs]
    weights = [p[1] for p in pairs]
    s = allocate(scores, weights, target, lam)
    ceiling = sparsity_ceiling(target)
    assert all(0.0 <= v <= ceiling < 1.0 for v in s)
    assert all(abs(v - target) <= lam + 1e-12 for v in s)
    assert abs(weighted_mean(s, weights) - target) <= 1e-12
    order = sorted(range(len(s)), key=lambda i: scores[i])
    for a, b in zip(order, order[1:]):  # monotone: a higher score never gets a higher sparsity
        assert s[b] <= s[a] + 1e-12
    for got, want in zip(s, _exact(scores, weights, target, lam)):
        assert abs(got - float(want)) <= 1e-12


@pytest.mark.parametrize(
    "args,match",
    [
        (([], [], 0.5, 0.08), "at least one"),
        (([1.0], [1, 2], 0.5, 0.08), "one of each"),
        (([1.0, math.nan], [1, 1], 0.5, 0.08), "finite"),
        (([1.0, 2.0], [1, 0], 0.5, 0.08), "positive"),
        (([1.0, 2.0], [1, 1], 1.0, 0.08), r"\[0, 1\)"),
        (([1.0, 2.0], [1, 1], 0.5, -0.1), "lambda"),
    ],
)
def test_allocate_refuses(args, match):
    with pytest.raises(ValueError, match=match):
        allocate(*args)


def test_kl_scores_are_logs_with_zero_floored():
    assert kl_scores([math.e, 1.0]) == pytest.approx([1.0, 0.0])
    assert kl_scores([0.0, 0.5, 2.0]) == pytest.approx([math.log(0.5), math.log(0.5), math.log(2.0)])
    assert kl_scores([0.0, 0.0]) == [0.0, 0.0]


def test_outlier_ratio_matches_a_float64_count():
    g = torch.Generator().manual_seed(0)
    parts = [torch.rand(8, 16, generator=g) ** 6, torch.rand(4, 32, generator=g) ** 8]
    flat = np.concatenate([p.double().numpy().ravel() for p in parts])
    for m in (1.0, 3.0, OWL_OUTLIER_M):
        assert outlier_ratio(parts, m) == pytest.approx(float((flat > m * flat.mean()).mean()), abs=1e-12)
    assert outlier_ratio([torch.tensor([1.0, 1.0, 1.0, 13.0])], 2.0) == 0.25  # mean 4, one entry above 8


# --- sparsify ----------------------------------------------------------------------------------------


def _block_zero_share(adapter, i):
    z = n = 0
    for lin in adapter.block_linears(i).values():
        z += int((lin.weight == 0).sum())
        n += lin.weight.numel()
    return z / n


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("rule", ["owl", "kl"])
def test_sparsify_follows_the_allocation(family, method, rule):
    model = tiny_model(family)
    plan = sparsify(model, CAL, method=method, sparsity=0.6, batch_size=4, allocation=rule)
    alloc = plan.sparsity["allocation"]
    adapter = Adapter(model)
    assert alloc["rule"] == rule and alloc["lambda"] == OWL_LAMBDA
    assert len(alloc["by_block"]) == len(alloc["scores"]) == adapter.num_layers
    assert alloc["block_params"] == block_params(adapter)
    assert weighted_mean(alloc["by_block"], alloc["block_params"]) == pytest.approx(0.6, abs=1e-12)
    assert max(abs(s - 0.6) for s in alloc["by_block"]) == pytest.approx(OWL_LAMBDA, abs=1e-12)
    assert alloc["seconds"] >= 0 and alloc["tokens"] > 0
    for i, s in enumerate(alloc["by_block"]):
        # per matrix (magnitude, SparseGPT) or per 64-column row (Wanda: the count is floored per row)
        assert _block_zero_share(adapter, i) == pytest.approx(s, abs=1 / 64 + 1e-6), i
    assert block_sparsities(plan, adapter.num_layers) == alloc["by_block"]
    again = PrunePlan.from_dict(json.loads(plan.to_json()))  # the plan validates and round-trips
    assert again.sparsity["allocation"] == alloc
    assert plan.calibration  # the scores read calibration, also for magnitude


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_uniform_default_is_unchanged(method):
    a, b = tiny_model("llama"), tiny_model("llama")
    pa = sparsify(a, CAL, method=method, sparsity=0.5, batch_size=4)
    pb = sparsify(b, CAL, method=method, sparsity=0.5, batch_size=4, allocation="uniform")
    for (n, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(x, y), n
    assert "allocation" not in pa.sparsity and pa.sparsity.keys() == pb.sparsity.keys()
    assert block_sparsities(pa, 4) == [0.5] * 4
    if method == "magnitude":
        assert pa.calibration == {}  # uniform magnitude still reads no calibration


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_kl_sensitivity_is_the_exact_counterfactual(family):
    """Each block's score equals the KL of the dense model against a copy with only that block pruned."""
    model = tiny_model(family)
    dense = copy.deepcopy(model)
    got = block_sensitivity(model, CAL, rule="kl", method="magnitude", sparsity=0.5, windows=4, batch_size=3)
    for (n, x), (_, y) in zip(model.named_parameters(), dense.named_parameters()):
        assert torch.equal(x, y), n  # the model is left dense
    ids = IDS[:4]
    with torch.no_grad():
        logp = F.log_softmax(dense(ids, use_cache=False).logits.float(), -1)
        for i in range(Adapter(dense).num_layers):
            cand = copy.deepcopy(dense)
            for lin in Adapter(cand).block_linears(i).values():
                lin.weight.masked_fill_(
                    score_mask(magnitude_scores(lin.weight), sparsity=0.5, per_row=False), 0
                )
            logq = F.log_softmax(cand(ids, use_cache=False).logits.float(), -1)
            want = float((logp.exp() * (logp - logq)).sum(-1).mean())
            assert got["scores"][i] == pytest.approx(want, rel=1e-4, abs=1e-9), i
    assert got["tokens"] == ids.numel()


def test_owl_scores_are_the_dense_outlier_ratios():
    """The outlier ratio of every block from the dense model's inputs (hooks on one full forward)."""
    model = tiny_model("llama")
    adapter = Adapter(model)
    sq: dict[int, torch.Tensor] = {}
    lins = [lin for i in range(adapter.num_layers) for lin in adapter.block_linears(i).values()]
    hooks = [
        lin.register_forward_pre_hook(
            lambda mod, args: sq.__setitem__(
                id(mod), sq.get(id(mod), 0) + (args[0].reshape(-1, args[0].shape[-1]).float() ** 2).sum(0)
            )
        )
        for lin in lins
    ]
    with torch.no_grad():
        model(IDS, use_cache=False)
    for h in hooks:
        h.remove()
    got = block_sensitivity(model, CAL, rule="owl", method="wanda", sparsity=0.5, batch_size=4)
    for i in range(adapter.num_layers):
        parts = [wanda_scores(lin.weight, sq[id(lin)]) for lin in adapter.block_linears(i).values()]
        assert got["scores"][i] == pytest.approx(outlier_ratio(parts, OWL_OUTLIER_M), abs=2e-3), i


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"pattern": "2:4", "allocation": "owl"}, "needs sparsity: N:M patterns"),
        ({"sparsity": 0.5, "allocation": "greedy"}, "must be one of uniform, owl, kl"),
        ({"sparsity": 0.5, "allocation": "kl", "allocation_lambda": 1.2}, "lambda"),
        ({"sparsity": 0.5, "allocation_lambda": 0.1}, "non-uniform"),
    ],
)
def test_sparsify_refuses(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sparsify(tiny_model("llama"), CAL, method="wanda", **kwargs)


def test_allocation_needs_calibration_even_for_magnitude():
    with pytest.raises(ValueError, match="needs calibration"):
        sparsify(tiny_model("llama"), None, method="magnitude", sparsity=0.5, allocation="owl")


# --- the plan ----------------------------------------------------------------------------------------


def _plan(**alloc):
    base = {
        "rule": "owl",
        "lambda": 0.08,
        "by_block": [0.62, 0.78],
        "scores": [0.02, 0.01],
        "block_params": [100, 100],
    }
    base.update(alloc)
    return PrunePlan(
        method="wanda",
        base_model="m",
        family="llama",
        num_layers_before=2,
        sparsity={"sparsity": 0.7, "allocation": {k: v for k, v in base.items() if v is not None}},
    ).to_dict()


def test_an_allocated_plan_validates():
    assert PrunePlan.from_dict(_plan()).sparsity["allocation"]["by_block"] == [0.62, 0.78]


@pytest.mark.parametrize(
    "change,field",
    [
        ({"rule": "greedy"}, "sparsity.allocation.rule"),
        ({"lambda": 1.5}, "sparsity.allocation.lambda"),
        ({"by_block": [0.7]}, "sparsity.allocation.by_block"),
        ({"by_block": [0.6, 0.8]}, "sparsity.allocation.by_block"),  # beyond λ of 0.7
        ({"by_block": [0.6, 0.75]}, "sparsity.allocation"),  # mean 0.675, not 0.7
        ({"scores": [0.1, "x"]}, "sparsity.allocation.scores[1]"),
        ({"block_params": [100, 0]}, "sparsity.allocation.block_params[1]"),
        ({"block_params": None}, "sparsity.allocation.block_params"),
        ({"tokens": 0}, "sparsity.allocation.tokens"),
        ({"seconds": -1.0}, "sparsity.allocation.seconds"),
        ({"outlier_threshold": 0}, "sparsity.allocation.outlier_threshold"),
        ({"score": 3}, "sparsity.allocation.score"),
    ],
)
def test_plan_validation_names_the_bad_allocation_field(change, field):
    with pytest.raises(PlanError, match=field.replace("[", r"\[").replace("]", r"\]")):
        PrunePlan.from_dict(_plan(**change))


def test_plan_refuses_an_allocated_nm_pattern():
    data = _plan()
    data["sparsity"] = {"pattern": "2:4", "sparsity": 0.5, "allocation": data["sparsity"]["allocation"]}
    with pytest.raises(PlanError, match="N:M patterns stay uniform"):
        PrunePlan.from_dict(data)


# --- the CLI -----------------------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from conftest import tiny_tokenizer

    d = tmp_path_factory.mktemp("tiny_alloc")
    tiny_model("llama").save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    (d.parent / "calib.txt").write_text(random_text(2000, 5))
    return d


def _common(model_dir):
    return ["--calib", str(model_dir.parent / "calib.txt"), "--nsamples", "4", "--seqlen", "16"]


@pytest.mark.parametrize(
    "args",
    [
        ["--method", "wanda", "--sparsity", "0.6", "--allocation", "owl"],
        ["--method", "magnitude", "--sparsity", "0.6", "--allocation", "kl", "--allocation-lambda", "0.05"],
    ],
)
def test_cli_records_the_allocation(model_dir, tmp_path, args):
    out = tmp_path / "sp"
    res = runner.invoke(
        app, ["prune", "sparsify", str(model_dir), *args, "--out", str(out), *_common(model_dir)]
    )
    assert res.exit_code == 0, res.output
    plan = json.loads((out / PLAN_FILE).read_text())
    alloc = plan["sparsity"]["allocation"]
    assert alloc["rule"] == args[args.index("--allocation") + 1]
    assert alloc["lambda"] == (0.05 if "--allocation-lambda" in args else OWL_LAMBDA)
    assert len(alloc["by_block"]) == 4 and plan["calibration"]["nsamples"] == 4


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--method", "wanda", "--pattern", "2:4", "--allocation", "owl"],
            "--allocation: owl needs --sparsity",
        ),
        (["--method", "sparsegpt", "--pattern", "2:4", "--allocation", "kl"], "N:M patterns (--pattern)"),
        (
            ["--method", "wanda", "--sparsity", "0.5", "--allocation", "greedy"],
            "--allocation: must be one of",
        ),
        (
            ["--method", "wanda", "--sparsity", "0.5", "--allocation-lambda", "0.1"],
            "--allocation-lambda: only",
        ),
        (
            ["--method", "wanda", "--sparsity", "0.5", "--allocation", "owl", "--allocation-lambda", "1"],
            "--allocation-lambda: must be a number in [0, 1)",
        ),
    ],
)
def test_cli_refusals_exit_2_and_write_nothing(model_dir, tmp_path, args, message):
    out = tmp_path / "out"
    res = runner.invoke(
        app, ["prune", "sparsify", str(model_dir), *args, "--out", str(out), *_common(model_dir)]
    )
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())
    assert len(res.output.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_refuses_before_the_model_loads(tmp_path):
    """The N:M refusal needs no model: an unknown model path is never resolved."""
    out = tmp_path / "out"
    res = runner.invoke(
        app,
        ["prune", "sparsify", str(tmp_path / "missing"), "--method", "wanda", "--pattern", "2:4"]
        + ["--allocation", "owl", "--out", str(out)],
    )
    assert res.exit_code == 2 and "--allocation: owl needs --sparsity" in res.output
    assert not out.exists()


# --- the study config --------------------------------------------------------------------------------


def test_study_variant_takes_an_allocation():
    cfg = parse_config(
        {"variants": [{"name": "W70", "sparsify": {"method": "wanda", "sparsity": 0.7, "allocation": "owl"}}]}
    )
    s = next(v for v in cfg.variants if v.name == "W70").sparsify
    assert s["allocation"] == "owl" and s["allocation_lambda"] == OWL_LAMBDA  # spelled out
    plain = parse_config({"variants": [{"name": "W", "sparsify": {"method": "wanda", "sparsity": 0.7}}]})
    assert "allocation" not in plain.variants[-1].sparsify  # uniform stays implicit: fingerprints unchanged


@pytest.mark.parametrize(
    "sparsify_spec,message",
    [
        ({"method": "sparsegpt", "pattern": "2:4", "allocation": "owl"}, "needs sparsity: N:M patterns"),
        ({"method": "wanda", "sparsity": 0.7, "allocation": "best"}, "must be one of uniform, owl, kl"),
        ({"method": "wanda", "sparsity": 0.7, "allocation": "kl", "allocation_lambda": -1}, "lambda"),
        ({"method": "wanda", "sparsity": 0.7, "allocation_lambda": 0.1}, "non-uniform"),
    ],
)
def test_study_config_refuses_bad_allocations(sparsify_spec, message):
    with pytest.raises(StudyConfigError, match="variants\\[0\\].sparsify.allocation") as exc:
        parse_config({"variants": [{"name": "X", "sparsify": sparsify_spec}]})
    assert message in str(exc.value)


@pytest.mark.slow
def test_study_builds_the_allocated_variant_and_the_analysis_rebuilds_it(tmp_path):
    """A study variant with ``allocation: owl`` is built non-uniform (magnitude calibrates for it), and
    the analysis rebuilding a magnitude variant from the plan alone keeps the per-block sparsities."""
    from conftest import need_data, tiny_tokenizer

    need_data("c4/c4_demo.json")
    from prunelens.analysis.variants import resolve_variant
    from prunelens.studies.runner import Store, Workbench

    d = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    cfg = parse_config(
        {
            "model": str(d),
            "calibration": {"source": "c4", "nsamples": 4, "seqlen": 32},
            "variants": [
                {"name": "M", "sparsify": {"method": "magnitude", "sparsity": 0.6, "allocation": "owl"}}
            ],
            "tasks": [{"task": "wikitext2", "limit": 1}],
        }
    )
    bench = Workbench(cfg, Store(tmp_path / "s"))
    info = bench.build_variant("M")
    alloc = info["plan"]["sparsity"]["allocation"]
    assert alloc["rule"] == "owl" and len(set(alloc["by_block"])) > 1
    model, tok = bench.dense
    plan = PrunePlan.from_dict(info["plan"])
    rebuilt = resolve_variant(model, plan, tokenizer=tok)
    adapter = Adapter(model)
    with rebuilt.active(model):
        for i, s in enumerate(alloc["by_block"]):
            assert _block_zero_share(adapter, i) == pytest.approx(s, abs=1 / 64 + 1e-6), i
