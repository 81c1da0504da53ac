"""The study report: guidance rules and Spearman (pure), tables/figures/HTML from a synthetic study directory,
missing files, and the page in a real headless Chromium (see tests/browser_check.py)."""

from __future__ import annotations

import csv
import json
import math
import re
import struct
import zlib
from pathlib import Path

import pytest

from prunelens.report import AnalysisHeadline, build_report, load_study, rankdata, spearman
from prunelens.report import guidance as G
from prunelens.report.answer import answer_for_model
from prunelens.studies import verdicts as V
from prunelens.studies.facts import TaskTest, VariantFacts

from conftest import missing

# ----------------------------------------------------------------------------------------------------
# a synthetic study directory in the runner's layout

TASKS = {  # task: (kind, main metric)
    "arc_easy": ("mc", "acc"),
    "piqa": ("mc", "acc"),
    "boolq_retrieval": ("retrieval", "ndcg@10"),
    "wikitext2": ("ppl", "perplexity"),
    "gsm8k": ("gen", "exact_match"),
    "nq_open": ("gen", "exact_match"),
}
SCORES = {  # arc, piqa, retrieval, ppl, gsm8k, nq
    "Full": (0.60, 0.65, 0.70, 20.0, 0.20, 0.10),
    "Drop-2A": (0.59, 0.64, 0.69, 21.0, 0.20, 0.095),
    "Drop-2M": (0.48, 0.52, 0.64, 30.0, 0.08, 0.05),
    "Drop-4M": (0.40, 0.50, 0.60, 45.0, 0.00, 0.01),
    "Wanda-50%": (0.57, 0.62, 0.68, 25.0, 0.12, 0.07),
}
PARAMS = {
    "Full": 134_515_008,
    "Drop-2A": 133_000_000,
    "Drop-2M": 130_000_000,
    "Drop-4M": 125_000_000,
    "Wanda-50%": 134_515_008,
}
SPECS = [
    {"name": "Full"},
    {"name": "Drop-2A", "drop": {"target": "attn", "n": 2}},
    {"name": "Drop-2M", "drop": {"target": "mlp", "n": 2}},
    {"name": "Drop-4M", "drop": {"target": "mlp", "n": 4}},
    {"name": "Wanda-50%", "sparsify": {"method": "wanda", "sparsity": 0.5}},
]
EXACT = {"Drop-2A": 0.4, "Drop-2M": 0.2, "Drop-4M": 0.0, "Wanda-50%": 0.3}
PREDICTOR = {"Drop-2A": 0.01, "Wanda-50%": 0.05, "Drop-2M": 0.2, "Drop-4M": 0.9}
EVIL = '<script>alert("x")</script> a < b & c'


def tiny_png(w: int = 48, h: int = 32, rgb=(40, 90, 160)) -> bytes:
    """A valid solid-colour PNG, written by hand (no imaging library needed)."""
    raw = b"".join(b"\0" + bytes(rgb) * w for _ in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _w(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) if not isinstance(data, str) else data)


ROUGE = {"Drop-2A": 0.8, "Drop-2M": 0.3, "Drop-4M": 0.1, "Wanda-50%": 0.5}


def analysis_summary(
    name: str,
    *,
    cos=(0.99, 0.97, 0.8),
    kl=0.02,
    ratios=(1.1, 0.95),
    tf=(0.9, 0.04),
    fr=(0.5, 0.1),
    steps=(3, 3, None),
    flips=0.1,
    kl_options=0.01,
    kl_full=0.02,
    own_sublayers: bool = True,
    tf_ratios=(1.0, 1.0),
    fr_ratios=(1.0, 1.0),
    ratio_n: int | None = None,
    mc: tuple[float, int, int] | None = None,
) -> dict:
    """``analysis/<name>/summary.json`` as :func:`prunelens.analysis.pipeline.run_analysis` writes it for one
    variant (the keys of ``headline_transitions`` / ``headline_trajectories`` / ``headline_subspace``).

    ``cos``: median (h, z, p) cosines over the variant's sublayers, ``kl`` their median KL, ``ratios`` the
    Theorem 2 / 3 estimate ratios; ``tf`` / ``fr``: (median cos p, median KL) teacher-forced / free-running,
    ``steps`` the first free-running divergence per prompt. ``own_sublayers=False``: no ``variant_sublayers``
    (a variant that drops none of the measured sublayers), the numbers are under ``all_sublayers`` only.
    ``tf_ratios`` / ``fr_ratios``: the Theorem 2 / 3 ratios along decoding; ``ratio_n``: the ``n`` of every
    ratio median (absent, as in older summaries, when None); ``mc``: (dense letter accuracy, questions,
    options per question) with the stored ``chance`` (absent, as in older summaries, when None).
    """
    n_ratio = {} if ratio_n is None else {"n_estimate_ratio": {"theorem2": ratio_n, "theorem3": ratio_n}}
    h, z, p = cos

    def block(scale: float) -> dict:  # one headline_transitions group; ``all_sublayers`` gets other numbers
        return {
            "n_sublayers": 2,
            "median_cos": {"h": h * scale, "z": z * scale, "z_centered": z * scale, "p": p * scale},
            "median_one_minus_cos": {"h": 1 - h * scale, "z": 1 - z * scale, "p": 1 - p * scale},
            "median_kl": kl / scale,
            "median_kl_reverse": kl / scale,
            "median_estimate_ratio": {
                "theorem1_h": 1.0,
                "theorem1_z": 1.0,
                "theorem2": ratios[0] * scale,
                "theorem3": ratios[1] * scale,
            },
            "top1_agreement": 0.9,
            "median_cos_attn": {"h": h, "z": z, "p": p, "kl": kl},
            **n_ratio,
        }

    def regime(cos_p: float, regime_kl: float, ratios=(1.0, 1.0)) -> dict:
        return {
            "steps": 6,
            "median_cos": {"h": 0.9, "z": 0.9, "z_centered": 0.9, "p": cos_p},
            "median_kl": regime_kl,
            "mean_kl": regime_kl,
            "q90_kl": regime_kl * 2,
            "top1_agreement": 0.5,
            "median_estimate_ratio": {"theorem2": ratios[0], "theorem3": ratios[1]},
            **n_ratio,
            "median_kl_first_quarter": None,
            "median_kl_last_quarter": None,
            "first_divergence_steps": list(steps),
            "diverged": sum(s is not None for s in steps),
            "prompts": len(steps),
        }

    transitions = {
        "all_sublayers": block(1.0) if not own_sublayers else block(0.5),
        "temperature": 1.0,
        "notes": [],
        "tokens": 6,
    }
    if own_sublayers:
        transitions["variant_sublayers"] = block(1.0)
    entry = {
        "description": {
            "name": name,
            "source": "plan",
            "dropped_sublayers": [{"layer": 3, "sublayer": "attn"}],
            "override_tensors": 0,
            "override_bytes": 0,
            "override_names": [],
            "plan": None,
        },
        "transitions": transitions,
        "trajectories": {
            "temperature": 1.0,
            "teacher_forced": regime(*tf, tf_ratios),
            "free_running": regime(*fr, fr_ratios),
        },
        "subspace": {
            "temperature": 1.0,
            "questions": 4,
            "chosen_option_changed": flips,
            "dense_accuracy": 0.5,
            "pruned_accuracy": 0.5,
            "median_option_mass_dense": 0.2,
            "median_kl": {"full": kl_full, "options": kl_options},
            "median_cos_p": {"full": 0.99, "options": 0.99},
            "median_estimate_ratio_theorem3": {"full": 1.0, "options": 1.0},
        },
    }
    if mc is not None:
        acc, questions, k = mc
        entry["subspace"].update(
            {"dense_accuracy": acc, "questions": questions, "n_options": [k], "chance": 1 / k}
        )
    return {
        "dense": "Full",
        "variants": {name: entry},
        "timings_s": {"total": 1.0, "write": 0.1},
        "memory": {"peak_rss_bytes": 1},
        "notes": [],
        "dense_generations": [{"prompt": "gsm8k-0", "text": "7"}],
        "figures": [f"figures/layerwise_{name}.png"],
    }


def make_study(root: Path, dense_generates: bool = True, piqa_chance: bool = False) -> Path:
    """``dense_generates=False``: every generative score is 0 (as for the 135M embedded model), so the report
    must fall back to fidelity (ROUGE-L against the dense outputs) for its generative axis."""
    config = {
        "model": "smollm2-135m",
        "dtype": "float32",
        "device": "cpu",
        "seed": 7,
        "calibration": {"source": "c4", "nsamples": 32, "seqlen": 256},
        "variants": SPECS,
        "tasks": [
            {"task": t, "limit": 10, "max_new_tokens": 64 if k == "gen" else None, "num_fewshot": 0}
            for t, (k, _) in TASKS.items()
        ],
        "batch_size": 8,
        "analyses": {"prompts": {"gsm8k": 2}, "transitions": {"temperatures": [1.0]}},
        "case_study": {"gsm8k": 1, "nq_open": 1, "max_new_tokens": 64},
    }
    _w(
        root / "study.json",
        {
            "config": config,
            "versions": {"prunelens": "0.1.0", "torch": "2.13.0", "python": "3.11"},
            "created": "2026-03-01T12:00:00+00:00",
            "timings": {
                "total_seconds": 1234.5,
                "units": {"eval/Full": 300.0, "eval/Drop-2A": 280.0, "analysis/Drop-2A": 90.0},
            },
        },
    )
    for name, scores in SCORES.items():
        plan = None if name == "Full" else {"method": "drop", "target": "attn"}
        _w(root / "variants" / name / "info.json", {"name": name, "parameters": PARAMS[name], "plan": plan})
        results = {}
        for (task, (kind, metric)), s in zip(TASKS.items(), scores):
            s = s if dense_generates or kind != "gen" else 0.0
            chance = {"arc_easy": {"chance": 0.25}, **({"piqa": {"chance": 0.5}} if piqa_chance else {})}.get(
                task, {}
            )
            results[task] = {
                "kind": kind,
                "main_metric": metric,
                "score": s,
                "metrics": {metric: s, **chance},
                "n": 10,
                "seconds": 1.0,
            }
            _w(
                root / "eval" / name / "tasks" / f"{task}.jsonl",
                json.dumps({"id": 0, "prompt": "q", "target": "a", "prediction": "a", "score": s}) + "\n",
            )
        _w(
            root / "eval" / name / "summary.json",
            {"model": {"name": f"/some/path/{name}", "parameters": PARAMS[name]}, "results": results},
        )
    _w(
        root / "eval" / "fidelity.json",
        {
            v: {
                t: {
                    "exact_match": em,
                    "prefix_tokens": 5.0,
                    "rouge_l": ROUGE[v],
                    "repeat_ngram_rate": 0.1,
                    "distinct_2": 0.8,
                }
                for t in ("gsm8k", "nq_open")
            }
            for v, em in EXACT.items()
        },
    )
    for name, kl in (("Drop-2A", 0.02), ("Drop-4M", 0.9)):
        _w(
            root / "analysis" / name / "summary.json",
            analysis_summary(name, kl=kl, tf=(0.9, kl * 2), fr=(0.5, kl * 5), kl_full=kl),
        )
    _w(
        root / "analysis" / "Drop-2M" / "summary.json",
        analysis_summary(
            "Drop-2M",
            cos=(0.98, 0.95, 0.6),
            kl=0.3,
            ratios=(1.2, 0.9),
            tf=(0.7, 0.5),
            fr=(0.3, 1.5),
            steps=(2, 6, None),
            flips=0.25,
            kl_options=0.05,
            kl_full=0.3,
        ),
    )
    for name in ("layerwise_Drop-2A", "decoding_steps_Drop-2A"):
        p = root / "analysis" / "Drop-2A" / "figures" / f"{name}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(tiny_png())
    _w(root / "predictor.json", {v: {"var_p_dz_over_2T2": x, "kl": x * 1.1} for v, x in PREDICTOR.items()})
    prompts = [
        {
            "id": "gsm8k-0",
            "task": "gsm8k",
            "prompt": "Tom has 3 apples and buys 4 more. How many?",
            "target": "7",
        },
        {"id": "nq-0", "task": "nq_open", "prompt": "who wrote hamlet?", "target": "Shakespeare"},
    ]
    _w(
        root / "case_study.json",
        {
            "prompts": prompts,
            "answers": {
                "Full": ["Tom has 3 + 4 = 7 apples. The answer is 7.", "William Shakespeare"],
                "Drop-2A": ["3 + 4 = 7. The answer is 7.", "Shakespeare"],
                "Drop-2M": ["Tom has apples apples apples apples", EVIL],
                "Drop-4M": ["the the the the the", "the the the"],
                "Wanda-50%": ["Tom has 7 apples.", "Christopher Marlowe"],
            },
        },
    )
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = make_study(tmp_path_factory.mktemp("study") / "study")
    page = build_report(root)
    return root, page, page.read_text()


# ----------------------------------------------------------------------------------------------------
# Spearman (pure)


def test_rankdata_average_ties():
    assert rankdata([10, 20, 20, 30]) == [1, 2.5, 2.5, 4]
    assert rankdata([3, 1, 2]) == [3, 1, 2]
    assert rankdata([5, 5, 5]) == [2, 2, 2]
    assert rankdata([]) == []


def test_spearman_known_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 100, 1000]) == pytest.approx(1.0)  # ranks only, not values
    # ties: x ranks [1, 2.5, 2.5, 4], y ranks [1, 2, 3, 4] → ρ = 4.5 / sqrt(4.5 · 5)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    # classic textbook example (no ties): ρ = 1 − 6 Σd² / (n(n² − 1))
    x, y = [106, 86, 100, 101, 99, 103, 97, 113, 112, 110], [7, 0, 27, 50, 28, 29, 20, 12, 6, 17]
    assert spearman(x, y) == pytest.approx(-29 / 165)


def test_spearman_degenerate_and_missing():
    assert spearman([1], [2]) is None
    assert spearman([1, 1, 1], [1, 2, 3]) is None  # constant side
    assert spearman([1, 2, None, 3, float("nan")], [1, 2, 5, 3, 4]) == pytest.approx(1.0)  # pairs dropped
    with pytest.raises(ValueError):
        spearman([1, 2], [1])


@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")
def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    import random

    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(3, 12)
        x = [rng.choice([0.1, 0.2, 0.3, rng.random()]) for _ in range(n)]
        y = [rng.choice([1.0, rng.random()]) for _ in range(n)]
        ref = stats.spearmanr(x, y).statistic
        got = spearman(x, y)
        if math.isnan(ref):
            assert got is None
        else:
            assert got == pytest.approx(ref, abs=1e-12)


# ----------------------------------------------------------------------------------------------------
# guidance (pure)


def test_score_verdict_thresholds():
    assert V.score_verdict(V.SAFE_RETAINED) == V.SAFE
    assert V.score_verdict(1.2) == V.SAFE
    assert V.score_verdict(V.SAFE_RETAINED - 1e-9) == V.CARE
    assert V.score_verdict(V.CARE_RETAINED) == V.CARE
    assert V.score_verdict(V.CARE_RETAINED - 1e-9) == V.UNSAFE
    assert V.score_verdict(None) == V.NOT_MEASURED
    assert V.score_verdict(float("nan")) == V.NOT_MEASURED


def test_generative_verdict_fidelity_lowers_never_raises():
    f = VariantFacts("V", retained_gen=0.99, dense_gen=0.3)
    assert G.generative_verdict(f).verdict == V.SAFE
    f.exact_match = V.FIDELITY_CARE_EXACT_MATCH - 0.01
    v = G.generative_verdict(f)
    assert v.verdict == V.CARE and any("the worse of the two decides" in r for r in v.reasons)
    f.exact_match = V.FIDELITY_UNSAFE_EXACT_MATCH - 0.01
    assert G.generative_verdict(f).verdict == V.UNSAFE
    bad = VariantFacts("W", retained_gen=0.5, dense_gen=0.3, exact_match=1.0)
    assert G.generative_verdict(bad).verdict == V.UNSAFE  # perfect fidelity does not rescue a lost score
    only_fid = VariantFacts("X", retained_gen=None, exact_match=0.9)
    assert G.generative_verdict(only_fid).verdict == V.SAFE
    assert G.generative_verdict(VariantFacts("Y")).verdict == V.NOT_MEASURED


def _test(task, diff, p, n=200, ref=0.6):
    return TaskTest(task, n, ref, ref + diff, diff, (diff - 0.05, diff + 0.05), p, "exact McNemar")


@pytest.mark.parametrize(
    "tests,interval,grade,finding",
    [
        ([_test("a", -0.01, 0.6), _test("b", 0.0, 1.0)], (0.9, 1.05), V.SAFE, G.INDISTINGUISHABLE),
        ([_test("a", -0.3, 1e-6)], (0.4, 0.6), V.UNSAFE, G.LOWER),
        ([_test("a", -0.05, 0.001)], (0.85, 0.97), V.CARE, G.LOWER),
        ([_test("a", -0.05, 0.3)], (0.7, 1.1), V.CARE, G.UNCLEAR),
        # two tasks at p = 0.03 each: Holm makes both 0.06, not significant
        ([_test("a", -0.1, 0.03), _test("b", -0.1, 0.03)], (0.86, 1.0), V.SAFE, G.INDISTINGUISHABLE),
        # a significant *gain* is no loss
        ([_test("a", 0.1, 1e-4)], (1.05, 1.3), V.SAFE, G.INDISTINGUISHABLE),
    ],
)
def test_interval_verdict_rule(tests, interval, grade, finding):
    f = VariantFacts(
        "V", retained_nongen=(interval[0] + interval[1]) / 2, dense_nongen=0.6, nongen_tests=tests
    )
    f.retained_nongen_interval = interval
    v = G.non_generative_verdict(f)
    assert v.verdict == grade and v.finding.startswith(finding)
    d = v.to_dict()
    assert d["interval"] == list(interval) and d["n"] == {t.task: t.n for t in tests}
    assert [t["p_holm"] for t in d["tests"]] == pytest.approx(
        __import__("prunelens.evaluation.uncertainty", fromlist=["holm"]).holm([t.p_value for t in tests])
    )


def test_generation_is_judged_against_the_control_and_the_worse_decides():
    ok = [_test("gsm8k", -0.01, 0.7, n=24, ref=0.5)]
    bad = [_test("gsm8k", -0.3, 1e-4, n=24, ref=0.5)]
    f = VariantFacts(
        "V", retained_gen=1.0, dense_gen=0.5, gen_tests=ok, retained_gen_interval=(0.9, 1.1), rouge_l=0.2
    )
    f.control, f.control_rouge_l = "Control", 0.8
    f.fidelity_tests, f.fidelity_ratio, f.fidelity_ratio_interval = bad, 0.25, (0.15, 0.35)
    v = G.generative_verdict(f)
    assert v.verdict == V.UNSAFE and "lower than the Control" in v.finding
    assert any("the control's 0.80" in r for r in v.reasons) and any("worse" in r for r in v.reasons)
    f.fidelity_tests, f.fidelity_ratio, f.fidelity_ratio_interval = ok, 0.98, (0.9, 1.05)
    v = G.generative_verdict(f)
    assert v.verdict == V.SAFE and "indistinguishable from the Control" in v.finding
    control = VariantFacts("Control", group="control", rouge_l=0.8)
    assert G.generative_verdict(control).finding == G.FLOOR
    # the control is judged for non-generative use but is not a pruned variant in the answer
    text = answer_for_model("tiny", [VariantFacts("Full", group="dense"), control, f])
    assert "Control" not in text


def test_outcomes_are_fields_the_words_are_written_from():
    f = VariantFacts("V", retained_nongen=0.5, dense_nongen=0.6, nongen_tests=[_test("a", -0.3, 1e-6)])
    f.retained_nongen_interval = (0.4, 0.6)
    o = V.non_generative_outcome(f)
    (part,) = o.parts
    assert o.grade == V.UNSAFE and part.finding is V.Finding.LOWER and o.indistinguishable is False
    assert part.worst is not None and part.worst[0].task == "a" and part.reference == V.DENSE_REFERENCE
    assert G.describe(o).finding == f"{G.LOWER} (p < 0.05)"
    few = VariantFacts("W", retained_nongen=1.0, dense_nongen=0.6, nongen_tests=[_test("a", 0.0, 1.0, n=4)])
    few.retained_nongen_interval = (0.9, 1.1)
    (part,) = V.non_generative_outcome(few).parts
    assert part.finding is V.Finding.UNCLEAR and [t.n for t in part.few] == [4]


def test_tiny_dense_score_is_not_judged():
    f = VariantFacts("V", retained_nongen=0.5, dense_nongen=V.MIN_DENSE_SCORE / 2)
    v = G.non_generative_verdict(f)
    assert v.verdict == V.NOT_MEASURED and "mean nothing" in v.reasons[0]


def test_rule_text_is_written_from_the_constants(monkeypatch):
    text = " ".join(G.rule_text())
    assert "95%" in text and "85%" in text and "50%" in text and "10%" in text
    monkeypatch.setattr(V, "SAFE_RETAINED", 0.9)
    monkeypatch.setattr(V, "FIDELITY_UNSAFE_EXACT_MATCH", 0.2)
    text = " ".join(G.rule_text())
    assert "90% ('safe')" in text and "20%" in text and "95% ('safe')" not in text
    assert V.score_verdict(0.92) == V.SAFE  # the verdicts use the same constants


def _facts(**over):
    base = [
        VariantFacts("Full", group="dense"),
        VariantFacts(
            "Drop-8A",
            group="attn",
            n=8,
            retained_nongen=0.99,
            retained_gen=0.7,
            retained_by_kind={"mc": 0.99},
            kl_transitions=0.05,
        ),
        VariantFacts(
            "Drop-8M",
            group="mlp",
            n=8,
            retained_nongen=0.97,
            retained_gen=0.1,
            retained_by_kind={"mc": 0.96},
            kl_transitions=0.8,
        ),
    ]
    for f in base:
        for k, v in over.get(f.name, {}).items():
            setattr(f, k, v)
    return base


def test_answer_agrees_with_the_paper():
    text = answer_for_model("tiny", _facts())
    assert text.startswith(
        "On tiny, attention drops (Drop-8A) keep 99% of the non-generative and 70% of the generative"
    )
    assert "As the paper claims, every pruned variant loses more on generation" in text
    assert "As in the paper, dropping attention is gentler" in text
    assert "Unlike" not in text
    assert "largest for Drop-8M (0.8)" in text


def test_answer_says_plainly_where_the_model_differs():
    text = answer_for_model(
        "tiny",
        _facts(
            **{
                "Drop-8M": {"retained_nongen": 0.6, "retained_by_kind": {"mc": 0.55}, "retained_gen": 0.6},
                "Drop-8A": {"retained_gen": 0.3},
            }
        ),
    )
    assert "Unlike the paper's claim that non-generative scores survive pruning" in text
    assert "MLP drops hurt multiple choice too" in text and "55% on multiple choice" in text
    assert "Unlike the paper, dropping attention hurts generation more" in text
    assert "Drop-8M loses no more on generation" in text


def test_answer_warns_when_the_dense_generative_score_is_tiny():
    facts = _facts()
    for f in facts:
        f.dense_gen = 0.01
    assert "Caution: the dense model's generative score (0.010)" in answer_for_model("tiny", facts)


def test_generative_axis_prefers_scores_then_fidelity():
    facts = _facts()
    for f in facts:
        f.dense_gen = 0.3
    ax = V.generative_axis(facts)
    assert ax.kind == "score" and ax.value(facts[1]) == 0.7 and ax.value(facts[0]) == 1.0
    for f in facts:  # the dense model answers (almost) nothing: a retained fraction means nothing ...
        f.dense_gen = 0.01
    assert V.generative_axis(facts).kind == "none"
    facts[1].rouge_l, facts[2].rouge_l = 0.4, 0.05  # ... but fidelity to the dense outputs was measured
    ax = V.generative_axis(facts)
    assert ax.kind == "fidelity" and ax.value(facts[1]) == 0.4 and ax.value(facts[0]) == 1.0
    assert "0.010" in G.axis_reason(ax) and "ROUGE-L" in G.axis_label(ax)
    facts[1].rouge_l = float("nan")
    assert ax.value(facts[1]) is None


def test_answer_uses_fidelity_when_the_dense_model_cannot_answer():
    facts = _facts(**{"Drop-8A": {"rouge_l": 0.41}, "Drop-8M": {"rouge_l": 0.08}})
    for f in facts:
        f.dense_gen = 0.0
    text = answer_for_model("tiny", facts)
    assert (
        "attention drops (Drop-8A) keep 99% of the dense model's non-generative score "
        "and reach a ROUGE-L of 0.41" in text
    )
    assert "judged instead by the fidelity to the dense generations" in text
    assert (
        "dropping attention is gentler on generation than dropping as many MLPs "
        "(Drop-8A ROUGE-L 0.41 vs Drop-8M ROUGE-L 0.08)" in text
    )
    assert "70%" not in text  # the meaningless retained generative fraction is not quoted


def test_report_falls_back_to_fidelity(tmp_path):
    root = make_study(tmp_path / "study", dense_generates=False)
    text = build_report(root).read_text()
    g = json.loads((root / "report" / "guidance.json").read_text())
    assert g["generative_measure"]["kind"] == "fidelity"
    # predictor vs 1 − ROUGE-L: predictor order 2A < Wanda < 2M < 4M, ROUGE-L order 0.8 > 0.5 > 0.3 > 0.1
    assert g["predictor_spearman"] == {"rho": pytest.approx(1.0), "variants": 4}
    assert "degradation (1 − ROUGE-L against the dense generations) across 4 variants is 1.00" in text
    assert "Generation is measured as fidelity to the dense outputs because the dense model" in text
    assert "Drop-4M&#x27;s generations reach a ROUGE-L of 0.10 against the dense ones" in text
    assert len(re.findall(r"<img [^>]*>", text)) == 4  # the summary and predictor figures are both drawn
    assert (root / "report" / "figures" / "predictor.png").stat().st_size > 1000


def test_answer_without_results():
    assert "nothing to answer" in answer_for_model("m", [VariantFacts("Full", group="dense")])


def test_analysis_headline_reads_the_pipeline_summary():
    summary = analysis_summary(
        "V",
        cos=(0.9, 0.8, 0.1),
        kl=2.0,
        ratios=(1.5, 1.0),
        tf=(0.7, 0.4),
        fr=(0.2, 3.0),
        steps=(1, 5, None),
        flips=0.5,
        kl_options=0.01,
        kl_full=0.3,
    )
    a = AnalysisHeadline.from_summary(summary, "V")
    assert a == AnalysisHeadline(
        cos_h=0.9,
        cos_z=0.8,
        cos_p=0.1,
        kl_transitions=2.0,
        ratio_theorem2=1.5,
        ratio_theorem3=1.0,
        tf_cos_p=0.7,
        tf_kl=0.4,
        fr_cos_p=0.2,
        fr_kl=3.0,
        tf_ratio_theorem2=1.0,
        tf_ratio_theorem3=1.0,
        fr_ratio_theorem2=1.0,
        fr_ratio_theorem3=1.0,
        first_divergence=3.0,
        choice_flip_rate=0.5,
        kl_options=0.01,
        kl_full=0.3,
        mc_dense_accuracy=0.5,
        mc_questions=4,
    )
    # a variant with none of its own sublayers measured: the numbers over every sublayer
    b = AnalysisHeadline.from_summary(analysis_summary("V", kl=0.4, own_sublayers=False), "V")
    assert (b.cos_p, b.kl_transitions) == (0.8, 0.4)
    # the variant's own entry, else the only one; several others or none: nothing
    assert AnalysisHeadline.from_summary(analysis_summary("other", kl=0.4), "V").kl_transitions == 0.4
    two = {"variants": {**analysis_summary("A")["variants"], **analysis_summary("B", kl=0.7)["variants"]}}
    assert AnalysisHeadline.from_summary(two, "B").kl_transitions == 0.7
    assert AnalysisHeadline.from_summary(two, "V") == AnalysisHeadline()
    assert AnalysisHeadline.from_summary({"transitions": {"median_kl": 1.0}}, "V") == AnalysisHeadline()
    # analyses that did not run, odd values: tolerated, no crash
    partial = analysis_summary("V")
    del partial["variants"]["V"]["subspace"], partial["variants"]["V"]["trajectories"]["teacher_forced"]
    partial["variants"]["V"]["trajectories"]["free_running"]["first_divergence_steps"] = [None, None]
    c = AnalysisHeadline.from_summary(partial, "V")
    assert c.cos_p == 0.8 and c.fr_kl == 0.1
    assert c.tf_kl is None and c.first_divergence is None and c.choice_flip_rate is None
    odd = AnalysisHeadline.from_variant({"transitions": None, "trajectories": [1], "subspace": "x"})
    assert odd == AnalysisHeadline()
    not_a_number = {"transitions": {"variant_sublayers": {"median_kl": "x"}}}
    assert AnalysisHeadline.from_variant(not_a_number).kl_transitions is None


# ----------------------------------------------------------------------------------------------------
# the report from a synthetic study


def test_tables_written(built):
    root, _, _ = built
    rows = list(csv.reader((root / "report" / "table.csv").open()))
    assert rows[0][:7] == ["task", "metric", "Full", "Drop-2A", "Drop-2M", "Drop-4M", "Wanda-50%"]
    assert rows[1][0] == "parameters" and rows[1][2] == str(PARAMS["Full"])
    avg = {r[0]: r for r in rows}
    assert float(avg["non_generative average"][2]) == pytest.approx(0.65)  # mc + retrieval, no perplexity
    assert float(avg["generative average"][2]) == pytest.approx(0.15)
    assert float(avg["wikitext2"][7]) == pytest.approx(
        20 / 21, abs=1e-4
    )  # retained perplexity = dense / pruned
    md = (root / "report" / "table.md").read_text()
    assert md.startswith("| task | metric | Full | Drop-2A") and "non_generative average" in md


def test_figures_written(built):
    root, _, _ = built
    figs = root / "report" / "figures"
    for stem in ("retained_and_divergence", "predictor"):
        for ext in ("png", "svg"):
            assert (figs / f"{stem}.{ext}").stat().st_size > 1000


def test_report_sections_and_self_contained(built):
    root, page, text = built
    assert page == root / "report" / "report.html"
    for sid in (
        "question",
        "answer",
        "missing",
        "table",
        "figures",
        "hierarchy",
        "case-study",
        "guidance",
        "how-run",
    ):
        assert f'<section id="{sid}">' in text, sid
    imgs = re.findall(r"<img [^>]*>", text)
    assert len(imgs) == 4  # summary, predictor, two analysis figures
    assert all('src="data:image/png;base64,' in i for i in imgs)
    assert "http://" not in text and "https://" not in text
    assert not re.search(r'(?:src|href)="(?!data:image/png;base64,|#)', text)
    assert "<script" not in text and "<link" not in text and "@import" not in text
    assert "could not be built" not in text


def test_report_content_from_data(built):
    _, _, text = built
    # answer paragraph
    assert (
        "On smollm2-135m, attention drops (Drop-2A) keep 98% of the non-generative and 98% of the generative"
        in text
    )
    assert "MLP drops hurt multiple choice too" in text
    # captions written from the data
    assert (
        "Drop-4M keeps 3% of the generative score (77% of the non-generative score kept) and its median "
        "probability-space KL is 0.9"
    ) in text
    assert (
        "Spearman correlation between predictor and degradation (1 − retained generative score) "
        "across 4 variants is 1.00" in text
    )
    assert "its median ratio to the measured KL is 0.91" in text  # predictor / measured KL = 1 / 1.1
    assert "Drop-2A: Cosine in hidden, logit and probability space and KL per layer" in text
    assert "first greedy divergence at step 3" in text
    assert text.index("Drop-2A: Cosine in hidden") < text.index("Drop-2A: Similarity and KL along decoding")
    # the analysis table: median first divergences of [3, 3], [2, 6] and [3, 3] (Drop-2A, Drop-2M, Drop-4M)
    assert re.search(r"<td class=\"l\">first divergence</td><td>3</td><td>4</td><td>3</td>", text)
    # what is missing: Wanda has no analysis
    assert "analysis/Wanda-50%/summary.json is missing" in text
    # case study, escaped
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; a &lt; b &amp; c" in text
    assert "Christopher Marlowe" in text and "Reference answer: <b>Shakespeare</b>" in text
    # how it was run
    assert (
        "seed <b>7</b>" in text and "model: smollm2-135m" in text and "torch" in text and "eval/Full" in text
    )
    assert "20.6 min" in text


def test_tasks_near_chance_are_flagged_and_not_judged(built, tmp_path):
    root, _, text = built
    assert (
        json.loads((root / "report" / "guidance.json").read_text())["near_chance"] == []
    )  # ARC 0.60 vs 0.25
    assert "Near chance" not in text
    root = make_study(tmp_path / "study", piqa_chance=True)
    text = build_report(root).read_text()
    g = json.loads((root / "report" / "guidance.json").read_text())
    # dense PIQA 0.65 on 10 two-choice questions is within 2 SE of chance (0.5 + 2·0.158 = 0.816); ARC 0.60
    # on four choices is not (0.25 + 2·0.137 = 0.524)
    assert [f["task"] for f in g["near_chance"]] == ["piqa"]
    assert g["near_chance"][0]["bound"] == pytest.approx(0.5 + 2 * math.sqrt(0.025))
    assert "near chance on piqa: that task is left out of the judged non-generative averages" in g["answer"]
    assert (
        "Near chance: the dense model is within two standard errors of random guessing on piqa: "
        "0.65 against chance 0.50" in text
    )
    # judged without PIQA, Drop-2M keeps (0.48 + 0.64) / (0.60 + 0.70) = 86% (84% with it): care, not unsafe
    v = {x["variant"]: x for x in g["variants"]}
    assert v["Drop-2M"]["non_generative"]["verdict"] == V.CARE
    assert "keeps 86% of the dense non-generative score" in v["Drop-2M"]["non_generative"]["reasons"][0]
    assert "86%" in text


def _ratio_tables(variant: str):
    """Synthetic ``transitions`` / ``trajectories`` long tables (the analysis's columns, space p, T = 1): at
    the transitions the estimates are exact (ratio 1) for KL 1e-5…1e-2; along decoding KL is 1e-2…1 and the
    Theorem 2 / 3 ratios are 0.3 / 0.56 teacher-forced, 0.25 / 0.5 free-running."""
    import numpy as np
    import pandas as pd

    kl_t, kl_d = np.logspace(-5, -2, 40), np.logspace(-2, 0, 20)
    rows = []
    for i, kl in enumerate(kl_t):
        base = {"variant": variant, "prompt": 0, "position": i, "position_kind": "prompt", "token_id": 5}
        base |= {"layer": 1, "sublayer": "attn", "counterfactual": "drop", "in_variant": True, "space": "p"}
        for metric, v in (("kl", kl), ("theorem2_ratio", 1.0), ("theorem3_ratio", 1.0)):
            rows.append({**base, "metric": metric, "temperature": 1.0, "value": v})
    transitions = pd.DataFrame(rows)
    rows = []
    for regime, (r2, r3) in (("teacher_forced", (0.3, 0.56)), ("free_running", (0.25, 0.5))):
        for i, kl in enumerate(kl_d):
            base = {"variant": variant, "prompt": 0, "regime": regime, "step": i + 1, "space": "p"}
            for metric, v in (("kl", kl), ("theorem2_ratio", r2), ("theorem3_ratio", r3)):
                rows.append({**base, "metric": metric, "temperature": 1.0, "value": v})
    return transitions, pd.DataFrame(rows)


def test_report_shows_estimate_ratios_at_transitions_and_along_decoding(tmp_path):
    from prunelens.analysis.figures import estimate_ratio_vs_kl

    root = make_study(tmp_path / "study")
    _w(
        root / "analysis" / "Drop-2A" / "summary.json",
        analysis_summary(
            "Drop-2A", ratios=(1.0, 0.99), tf_ratios=(0.3, 0.56), fr_ratios=(0.25, 0.5), ratio_n=120
        ),
    )
    figs = root / "analysis" / "Drop-2A" / "figures"
    paths = estimate_ratio_vs_kl(*_ratio_tables("Drop-2A"), figs, "Drop-2A")
    assert [p.name for p in paths] == ["estimate_ratio_vs_kl_Drop-2A.png", "estimate_ratio_vs_kl_Drop-2A.svg"]
    assert all(p.stat().st_size > 1000 for p in paths)
    text = build_report(root).read_text()
    # both medians in the table, each with its n (Drop-2A is the first analysis column)
    for label, value in (
        ("T2 est / real, transitions", "1"),
        ("T3 est / real, transitions", "0.99"),
        ("TF T2 est / real", "0.3"),
        ("TF T3 est / real", "0.56"),
        ("FR T2 est / real", "0.25"),
        ("FR T3 est / real", "0.5"),
    ):
        assert f'<td class="l">{label}</td><td>{value}<span class="ci">n = 120</span></td>' in text, label
    # the figure is on the page, after the layer-wise one and before decoding, with a caption from the data
    assert len(re.findall(r"<img ", text)) == 5  # summary, predictor, three analysis figures
    caption = (
        "Drop-2A: Theorem 2 and 3 estimate/real against the perturbation size (exact KL), at sublayer "
        "transitions and along decoding; median estimate/real: "
        "Theorem 2 sublayer transitions 1.00 (n = 120), teacher-forced 0.30 (n = 120), "
        "free-running 0.25 (n = 120); "
        "Theorem 3 sublayer transitions 0.99 (n = 120), teacher-forced 0.56 (n = 120), "
        "free-running 0.50 (n = 120). "
        "The Theorem 2 estimate is close to exact (ratio within 0.8–1.25) at sublayer transitions; "
        "it underestimates (ratio below 0.8) along decoding (teacher-forced and free-running). "
        "The Theorem 3 estimate is close to exact (ratio within 0.8–1.25) at sublayer transitions; "
        "it underestimates (ratio below 0.8) along decoding (teacher-forced and free-running)."
    )
    assert caption in text
    i = text.index("Drop-2A: Theorem 2 and 3 estimate/real")
    assert (
        text.index("Drop-2A: Cosine in hidden") < i < text.index("Drop-2A: Similarity and KL along decoding")
    )
    # without the n (older summaries) the medians are shown bare, the caption says no n
    _w(root / "analysis" / "Drop-2A" / "summary.json", analysis_summary("Drop-2A", tf_ratios=(0.3, 0.56)))
    text = build_report(root).read_text()
    assert '<td class="l">TF T2 est / real</td><td>0.3</td>' in text
    assert "teacher-forced 0.30, free-running 1.00" in text


def test_option_subspace_near_chance_is_flagged(built, tmp_path):
    from prunelens.report.stats import chance_bound

    # the rule of the score tables: chance + 2·sqrt(chance·(1 − chance)/n)
    assert chance_bound(0.5, 10) == pytest.approx(0.5 + 2 * math.sqrt(0.025))
    with pytest.raises(ValueError):
        chance_bound(1.0, 10)
    bound = 0.25 + 2 * math.sqrt(0.25 * 0.75 / 40)  # 0.387 on 40 four-option questions
    assert AnalysisHeadline(
        mc_dense_accuracy=0.3, mc_questions=40, mc_chance=0.25
    ).subspace_near_chance() == {
        "score": 0.3,
        "chance": 0.25,
        "n": 40,
        "bound": pytest.approx(bound),
    }
    assert (
        AnalysisHeadline(mc_dense_accuracy=0.4, mc_questions=40, mc_chance=0.25).subspace_near_chance()
        is None
    )
    no_chance = AnalysisHeadline(mc_dense_accuracy=0.3, mc_questions=40)  # an older summary: not judged
    assert no_chance.subspace_near_chance() is None
    # the option-subspace figure's caption says it too
    from prunelens.report.analysis_results import analysis_caption

    near = AnalysisHeadline(choice_flip_rate=0.3, mc_dense_accuracy=0.3, mc_questions=40, mc_chance=0.25)
    cap = analysis_caption(Path("option_subspace_V.png"), "V", near)
    assert "near chance (30% on n = 40 against chance 25%), so these numbers describe noise" in cap
    clear = AnalysisHeadline(choice_flip_rate=0.3, mc_dense_accuracy=0.4, mc_questions=40, mc_chance=0.25)
    assert "near chance" not in analysis_caption(Path("option_subspace_V.png"), "V", clear)
    # older summaries store no chance: not judged
    assert "Near chance (option subspace)" not in built[2]
    root = make_study(tmp_path / "study")
    for name in ("Drop-2A", "Drop-2M", "Drop-4M"):
        _w(root / "analysis" / name / "summary.json", analysis_summary(name, mc=(0.3, 40, 4)))
    text = build_report(root).read_text()
    assert (
        "Near chance (option subspace): the dense model is within two standard errors of random guessing on "
        "the letter-format prompt of the option-subspace analysis (Drop-2A, Drop-2M, Drop-4M: dense accuracy "
        "0.30 on n = 40 questions against chance 0.25, needs ≥ 0.39). The option-subspace numbers (MC choice "
        "flips, KL options, KL full vocabulary) are measured on a prompt the model answers near chance, so "
        "they describe noise more than choice."
    ) in text
    assert '<td class="l">MC dense accuracy</td><td>30%<span class="ci">n = 40</span></td>' in text
    # above the bound: the dense accuracy is shown, nothing is flagged
    for name in ("Drop-2A", "Drop-2M", "Drop-4M"):
        _w(root / "analysis" / name / "summary.json", analysis_summary(name, mc=(0.4, 40, 4)))
    text = build_report(root).read_text()
    assert "Near chance (option subspace)" not in text and "noise more than choice" not in text
    assert '<td class="l">MC dense accuracy</td><td>40%<span class="ci">n = 40</span></td>' in text


def test_guidance_verdicts(built):
    root, _, text = built
    g = {v["variant"]: v for v in json.loads((root / "report" / "guidance.json").read_text())["variants"]}
    assert set(g) == {"Drop-2A", "Drop-2M", "Drop-4M", "Wanda-50%"}
    verdict = {k: (v["non_generative"]["verdict"], v["generative"]["verdict"]) for k, v in g.items()}
    # the synthetic study stores one record per task: no paired interval can be trusted, so every score
    # verdict is "not enough data to tell"; only the fixed fidelity threshold (no control here) can say more
    assert verdict == {
        "Drop-2A": (V.CARE, V.CARE),
        "Drop-2M": (V.CARE, V.CARE),
        "Drop-4M": (V.CARE, V.UNSAFE),  # under 10% identical generations
        "Wanda-50%": (V.CARE, V.CARE),
    }
    assert all(v["non_generative"]["finding"] == G.UNCLEAR for v in g.values())
    assert "fewer than 10" in g["Drop-2A"]["non_generative"]["reasons"][0]
    for line in G.rule_text():
        assert __import__("html").escape(line) in text


def test_report_rebuild_is_idempotent(built):
    root, page, _ = built
    assert build_report(root) == page
    assert not [p for p in (root / "report").iterdir() if p.name.startswith(".")]  # no temporary files left


def test_missing_files_never_crash(tmp_path):
    # an empty directory
    empty = tmp_path / "empty_study"
    empty.mkdir()
    page = build_report(empty)
    text = page.read_text()
    assert "study.json is missing" in text and "No evaluation results are stored" in text
    # only the dense evaluation, one corrupt file, a study.json without a config
    root = tmp_path / "partial"
    make_study(root)
    for p in ("predictor.json", "case_study.json", "eval/fidelity.json"):
        (root / p).unlink()
    (root / "eval" / "Drop-2M" / "summary.json").write_text("{not json")
    (root / "study.json").write_text(json.dumps({"created": "x"}))
    text = build_report(root).read_text()
    assert "predictor.json is missing" in text and "case_study.json is missing" in text
    assert "eval/Drop-2M/summary.json could not be read" in text
    assert "No case study is stored" in text
    assert len(re.findall(r"<img ", text)) == 3  # summary figure + two analysis figures, no predictor
    assert "could not be built" not in text
    st = load_study(root)
    assert st.variants[0] == "Full" and "Drop-2M" in st.variants


def test_no_study_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_report(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


def test_odd_values_are_tolerated(tmp_path):
    root = make_study(tmp_path / "odd")
    s = json.loads((root / "eval" / "Drop-2A" / "summary.json").read_text())
    s["results"]["gsm8k"]["score"] = None
    s["results"]["weird"] = "not a dict"
    (root / "eval" / "Drop-2A" / "summary.json").write_text(json.dumps(s))
    (root / "case_study.json").write_text(
        json.dumps({"prompts": ["bare prompt"], "answers": {"Full": "not a list"}})
    )
    (root / "predictor.json").write_text(json.dumps({"Drop-2A": "x", "Drop-2M": {"var_p_dz_over_2T2": -1}}))
    text = build_report(root).read_text()
    assert '<section id="case-study">' in text and "bare prompt" in text


# ----------------------------------------------------------------------------------------------------
# the page in a real headless browser


@pytest.fixture(scope="session")
def chromium():
    from browser_check import ensure_chromium

    path, why = ensure_chromium()
    if path:
        return path
    missing(f"Chromium for the browser check could not be provided: {why}")


@pytest.mark.slow
def test_report_in_headless_chromium(built, chromium, tmp_path):
    from browser_check import check_page

    _, page, _ = built
    shot = tmp_path / "report.png"
    r = check_page(page, shot, chromium=chromium)
    assert r.problems() == [], r.problems()
    assert r.console_errors == [] and r.requests == []
    assert len(r.images) == 4 and all(i["naturalWidth"] > 0 and i["naturalHeight"] > 0 for i in r.images)
    assert r.title.startswith("prunelens study")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    assert r.page_height > 2000


@pytest.mark.slow
def test_browser_check_catches_problems(chromium, tmp_path):
    """The checker itself: a console error, a broken image and an external request are all reported."""
    from browser_check import check_page

    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><head><title>bad</title></head><body><p>x</p>"
        '<img src="missing.png"><img src="http://127.0.0.1:9/x.png">'
        '<script>console.error("boom"); undefinedFunction();</script></body></html>'
    )
    r = check_page(bad, tmp_path / "bad.png", chromium=chromium, timeout=30)
    joined = " ".join(r.problems())
    assert "boom" in joined and "undefinedFunction" in joined
    assert len(r.broken_images) == 2
    assert any(u.startswith("http://127.0.0.1:9/") for u in r.requests)
    assert any("missing.png" in u for u in r.requests)  # another local file: not self-contained either
