"""Twin variants: the ``twin`` config field and its validation, the ``score_windows`` drop key, the chunked
exact KL, the paired statistics between twins on hand-made numbers, and the twin pair in the report and
in guidance.json."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from prunelens.report import twins as TW
from prunelens.report.guidance import UNCLEAR
from prunelens.studies.config import DEFAULT_CONFIG_YAML, StudyConfigError, load_config, parse_config
from prunelens.studies.facts import TaskTest, TwinFacts, VariantFacts
from prunelens.studies.runner import plan_units

# ----------------------------------------------------------------------------------------------------
# the config field


def _variants(*vs):
    return {"variants": list(vs)}


A = {"name": "A", "drop": {"target": "attn", "n": 2}}
B = {"name": "B", "drop": {"target": "attn", "n": 2, "objective": "generation"}, "twin": "A"}


def test_default_study_has_the_kl_twin_of_drop_8a():
    cfg = load_config(None)
    names = [v.name for v in cfg.variants]
    assert names.index("Drop-8A-KL") == names.index("Drop-8A") + 1
    kl = next(v for v in cfg.variants if v.name == "Drop-8A-KL")
    assert kl.twin == "Drop-8A" and kl.drop["objective"] == "generation"
    assert 1 <= kl.drop["score_windows"] <= cfg.calibration.nsamples
    assert "twin: Drop-8A" in DEFAULT_CONFIG_YAML and "score_windows" in DEFAULT_CONFIG_YAML
    assert parse_config(yaml.safe_load(DEFAULT_CONFIG_YAML)).to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    "variants, field, says",
    [
        ((A, {**B, "twin": "Nope"}), "variants[1].twin", "must name another variant of the study (A, B)"),
        ((A, {**B, "twin": "B"}), "variants[1].twin", "cannot be its own twin"),
        ((A, {**B, "twin": "Full"}), "variants[1].twin", "already compared with Full"),
        ((A, {**B, "twin": 3}), "variants[1].twin", "must be the name of another variant"),
        (({**A, "twin": "B"}, B), "variants[0].twin", "give the twin on one side only"),
        (
            (A, {**B, "drop": {**B["drop"], "score_windows": 0}}),
            "variants[1].drop.score_windows",
            "must be a positive integer (got 0)",
        ),
        (
            (A, {**B, "drop": {**B["drop"], "score_windows": 99}}),
            "variants[1].drop.score_windows",
            "at most calibration.nsamples (32)",
        ),
        (
            (A, {**B, "drop": {"target": "attn", "n": 2, "objective": "choice", "score_windows": 2}}),
            "variants[1].drop.score_windows",
            "use choice_limit",
        ),
    ],
)
def test_bad_twins_and_windows_name_the_field(variants, field, says):
    with pytest.raises(StudyConfigError) as err:
        parse_config(_variants(*variants))
    assert f"'{field}'" in str(err.value) and says in str(err.value)


def test_a_bad_twin_is_exit_2_one_line_and_nothing_written(tmp_path):
    from typer.testing import CliRunner

    from prunelens.cli import app

    cfg = tmp_path / "study.yaml"
    cfg.write_text(yaml.safe_dump(_variants(A, {**B, "twin": "Drop-8Z"})))
    out = tmp_path / "s"
    res = CliRunner().invoke(app, ["study", str(cfg), "--out", str(out)])
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert res.exit_code == 2 and len(lines) == 1
    assert "'variants[1].twin'" in lines[0] and "Drop-8Z" in lines[0] and not out.exists()


def test_the_twin_label_changes_no_unit_fingerprint():
    """Pairing two variants in the report re-runs nothing; a changed score_windows re-runs the variant."""
    base = {u.id: u.fingerprint for u in plan_units(parse_config(_variants(A, {**B, "twin": None})))}
    paired = {u.id: u.fingerprint for u in plan_units(parse_config(_variants(A, B)))}
    assert base == paired
    windows = {
        u.id: u.fingerprint
        for u in plan_units(parse_config(_variants(A, {**B, "drop": {**B["drop"], "score_windows": 4}})))
    }
    differ = {k for k in base if base[k] != windows[k]}
    assert differ and all("/B" in k for k in differ) and "variant/B" in differ


# ----------------------------------------------------------------------------------------------------
# scoring on a subset of the calibration windows, and the chunked exact KL


def test_chunked_head_kl_equals_the_whole_batch_kl():
    from prunelens.models.adapter import Adapter
    from prunelens.models.capture import head_kl_sum
    from prunelens.models.tiny import tiny_model
    from prunelens.prune.objectives import _kl_sum

    model = tiny_model("llama")
    adapter = Adapter(model)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(3, 7, model.config.hidden_size, generator=g)
    ref = F.log_softmax(torch.randn(3, 7, model.config.vocab_size, generator=g) * 3, dim=-1)
    with torch.no_grad():
        z = adapter.logits_from_hidden(h).float()
        flat = ref.reshape(-1, ref.shape[-1])
        for T in (1.0, 0.7):
            want = _kl_sum(ref, z, T)
            for chunk in (1, 4, 5, 21, 512):  # chunks that divide the 21 positions and that do not
                got = head_kl_sum(adapter, h, flat, flat.exp(), T, chunk=chunk)
                assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("objective", ["hidden", "generation"])
def test_score_windows_scores_on_the_first_windows_and_is_recorded(objective):
    import copy

    from prunelens.data.calibration import Calibration
    from prunelens.models.tiny import tiny_model
    from prunelens.prune.drop import PruneConfigError, drop

    model = tiny_model("llama", num_hidden_layers=4)
    ids = torch.randint(3, 250, (6, 12), generator=torch.Generator().manual_seed(0))
    full = Calibration(ids, "random", 0, int(ids.numel()))
    first = Calibration(ids[:2], "random", 0, int(ids.numel()))
    kw = {"target": "attn", "n": 2, "objective": objective, "batch_size": 4}
    sub = drop(copy.deepcopy(model), full, score_windows=2, **kw)
    direct = drop(copy.deepcopy(model), first, **kw)
    assert sub.options["score_windows"] == 2 and "score_windows" not in direct.options
    assert sub.calibration["nsamples"] == 2 and sub.dropped_sublayers == direct.dropped_sublayers
    if objective == "generation":
        assert sub.scores["tokens"] == 2 * 12 and sub.scores["kl"] == direct.scores["kl"]
    with pytest.raises(PruneConfigError, match="score_windows: 7 exceeds nsamples 6"):
        drop(copy.deepcopy(model), full, score_windows=7, **kw)


# ----------------------------------------------------------------------------------------------------
# the paired statistics between twins, on hand-made numbers


def _exact_sign_flip(d: np.ndarray) -> float:
    obs = abs(d.mean())
    means = [abs((np.array(s) * d).mean()) for s in itertools.product((1, -1), repeat=d.size)]
    return float(np.mean([m >= obs - 1e-12 for m in means]))


def test_pooled_paired_difference_on_a_hand_made_example():
    from prunelens.report.stats import pooled_paired_difference

    # two tasks of 3 and 5 prompts: tasks weigh equally, so the 3-prompt task's pairs weigh 5/3 as much
    t1 = ([0.2, 0.4, 0.6], [0.5, 0.4, 0.9])  # differences +0.3, 0, +0.3: task mean +0.2
    t2 = ([0.5, 0.5, 0.5, 0.5, 0.5], [0.4, 0.6, 0.7, 0.5, 0.8])  # −0.1, +0.1, +0.2, 0, +0.3: +0.1
    r = pooled_paired_difference([t1, t2])
    assert r["n"] == 8 and r["tasks"] == 2
    assert r["dense"] == pytest.approx((0.4 + 0.5) / 2) and r["pruned"] == pytest.approx((0.6 + 0.6) / 2)
    assert r["difference"] == pytest.approx((0.2 + 0.1) / 2)
    weighted = np.array([0.3, 0, 0.3]) * 8 / (2 * 3)
    weighted = np.concatenate([weighted, np.array([-0.1, 0.1, 0.2, 0, 0.3]) * 8 / (2 * 5)])
    assert weighted.mean() == pytest.approx(r["difference"])
    assert r["p_value"] == pytest.approx(_exact_sign_flip(weighted))  # 8 pairs: every sign pattern
    lo, hi = r["interval"]
    assert lo <= r["difference"] <= hi
    # no difference at all: p = 1, interval [0, 0]
    same = pooled_paired_difference([([0.1, 0.2], [0.1, 0.2])])
    assert same["difference"] == 0 and same["p_value"] == 1.0 and same["interval"] == [0.0, 0.0]


def _tt(task, ref, val, p, n=200, test="exact McNemar"):
    d = val - ref
    return TaskTest(task, n, ref, val, d, (d - 0.05, d + 0.05), p, test)


def _facts():
    """Full, a variant X and its twin Y: fidelity axis (the dense model answers nothing)."""
    full = VariantFacts("Full", group="dense", dense_nongen=0.6, dense_gen=0.0)
    out = [full]
    for name, kept, rouge in (("Y", 0.95, 0.30), ("X", 0.97, 0.41)):
        f = VariantFacts(name, group="attn", n=8, dense_nongen=0.6, dense_gen=0.0)
        f.retained_nongen, f.retained_nongen_interval = kept, (kept - 0.04, min(1.0, kept + 0.04))
        f.nongen_tests = [_tt("arc_easy", 0.6, 0.6 * kept, 0.4)]
        f.rouge_l, f.exact_match = rouge, 0.0
        out.append(f)
    return out


def test_twin_sentences_from_the_measured_numbers():
    fid = TaskTest("ROUGE-L to dense", 48, 0.30, 0.41, 0.11, (0.05, 0.17), 0.002, "paired sign-flip test")
    t = TwinFacts(
        "X",
        "Y",
        ["drop.objective: hidden → generation"],
        nongen_tests=[_tt("arc_easy", 0.57, 0.582, 0.5), _tt("piqa", 0.60, 0.62, 0.2)],
        fidelity=fid,
        fidelity_tests=[TaskTest("gsm8k", 24, 0.3, 0.4, 0.1, (0.0, 0.2), 0.01, "paired sign-flip test")],
    )
    (g,) = TW.twin_guidance([t], _facts())
    gen = g.generative
    assert gen.finding == TW.TWIN_BETTER and gen.measure == "ROUGE-L to dense"
    assert gen.sentence.startswith(
        "On generation, X keeps ROUGE-L 0.41 against Y's 0.30 (paired difference +0.11 [+0.05, +0.17], "
        "paired sign-flip test p = 0.002 on 48 prompts): X's changed rule "
        "(drop.objective: hidden → generation) suits generation better on this model."
    )
    ng = g.non_generative
    assert ng.finding == TW.TWIN_SAME and ng.n == {"arc_easy": 200, "piqa": 200}
    # Holm over the two tasks: 0.2·2 = 0.4, then max(0.4, 0.5) = 0.5
    assert [d["p_holm"] for d in ng.tests] == pytest.approx([0.5, 0.4])
    assert (
        "On non-generative use, X keeps 97% of the dense non-generative score against Y's 95%" in ng.sentence
    )
    assert (
        "smallest Holm-adjusted p = 0.4; n = 200 on arc_easy, 200 on piqa): indistinguishable at this n"
        in (ng.sentence)
    )
    d = g.to_dict()
    assert d["variant"] == "X" and d["twin"] == "Y" and d["generative"]["verdicts"].keys() == {"X", "Y"}
    json.dumps(d)  # guidance.json can hold it
    # the other way round, and too few prompts
    worse = TaskTest(
        "ROUGE-L to dense", 48, 0.41, 0.30, -0.11, (-0.17, -0.05), 0.002, "paired sign-flip test"
    )
    (g,) = TW.twin_guidance(
        [TwinFacts("X", "Y", ["drop.objective: hidden → generation"], fidelity=worse)], _facts()
    )
    assert g.generative.finding == TW.TWIN_WORSE and "suits generation worse" in g.generative.sentence
    assert "Y's rule is the better choice here" in g.generative.sentence
    few = TaskTest("ROUGE-L to dense", 6, 0.3, 0.9, 0.6, (0.4, 0.8), 0.03, "paired sign-flip test")
    (g,) = TW.twin_guidance([TwinFacts("X", "Y", [], fidelity=few)], _facts())
    assert g.generative.finding == UNCLEAR and "only 6 shared prompts" in g.generative.sentence
    # a significant non-generative difference names the task, the test and the adjusted p
    t = TwinFacts("X", "Y", ["repair: unset → {steps: 10}"], nongen_tests=[_tt("piqa", 0.55, 0.62, 0.004)])
    (g,) = TW.twin_guidance([t], _facts())
    assert g.non_generative.finding == TW.TWIN_BETTER
    assert "piqa +7.0 points [+2.0, +12.0] (exact McNemar, Holm-adjusted p = 0.004, n = 200)" in (
        g.non_generative.sentence
    )
    assert "X's changed rule (repair: unset → {steps: 10}) suits non-generative use better" in (
        g.non_generative.sentence
    )


def test_twin_outcomes_are_fields_the_sentences_are_written_from():
    from prunelens.studies.twins import SCORES, TwinFinding, judge_twins

    t = TwinFacts("X", "Y", ["repair: unset → {steps: 10}"], nongen_tests=[_tt("piqa", 0.55, 0.62, 0.004)])
    (o,) = judge_twins([t], _facts())
    ng = o.non_generative
    assert ng.finding is TwinFinding.BETTER and ng.finding.told_apart and ng.measure == SCORES
    assert [(x.task, p) for x, p in ng.significant] == [("piqa", pytest.approx(0.004))]
    assert list(ng.grades) == ["X", "Y"] and ng.kept == (0.97, 0.95)
    # the fidelity axis without a pooled comparison: the scores cannot tell the twins apart
    assert o.generative.finding is TwinFinding.NOT_MEASURED and o.generative.same
    (g,) = TW.twin_guidance([t], _facts())
    assert g.non_generative.finding == TW.TWIN_BETTER and g.generative.finding == "not measured"


def test_changed_rule_reads_omitted_drop_keys_as_their_defaults():
    from prunelens.report.tables import changed_rule

    a = {"name": "Drop-8A", "drop": {"target": "attn", "n": 8}}
    b = {
        "name": "Drop-8A-KL",
        "drop": {"target": "attn", "n": 8, "objective": "generation", "score_windows": 8},
        "twin": "Drop-8A",
    }
    assert changed_rule(a, b, 32) == ["drop.objective: hidden → generation", "drop.score_windows: all 32 → 8"]
    assert changed_rule(a, {**a, "repair": {"steps": 10}}) == ["repair: unset → {steps: 10}"]


# ----------------------------------------------------------------------------------------------------
# the twin pair in the report, from a hand-made study directory


def _w(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def _jsonl(path: Path, rows: list[dict]) -> None:
    _w(path, "".join(json.dumps(r) + "\n" for r in rows))


N = 12
ARC = {"Full": set(range(8)), "A": set(range(4)), "A-KL": set(range(10))}  # questions answered right
DENSE_TEXT = "a b c d"
GEN = {  # per prompt the output: ROUGE-L against "a b c d" is 1, 0.75, 0.5 or 0
    "Full": [DENSE_TEXT] * N,
    "A": ["a b c x"] * 6 + ["x y z w"] * 6,  # 0.75 ×6, 0 ×6
    "A-KL": [DENSE_TEXT] * 8 + ["a b x y"] * 4,  # 1 ×8, 0.5 ×4
}
ROUGE = {"A": [0.75] * 6 + [0.0] * 6, "A-KL": [1.0] * 8 + [0.5] * 4}


def make_twin_study(root: Path, order=("A", "A-KL")) -> Path:
    specs = {
        "A": {"name": "A", "drop": {"target": "attn", "n": 1}},
        "A-KL": {
            "name": "A-KL",
            "drop": {"target": "attn", "n": 1, "objective": "generation", "score_windows": 2},
            "twin": "A",
        },
    }
    _w(
        root / "study.json",
        {
            "config": {
                "model": "tiny",
                "seed": 0,
                "calibration": {"source": "c4", "nsamples": 4, "seqlen": 32},
                "variants": [specs[n] for n in order],
                "tasks": [{"task": "arc_easy", "limit": N}, {"task": "gsm8k", "limit": N}],
            },
            "versions": {"prunelens": "test"},
        },
    )
    for name in ("Full", "A", "A-KL"):
        _w(root / "variants" / name / "info.json", {"name": name, "parameters": 1000, "plan": None})
        arc = [{"id": i, "score": float(i in ARC[name])} for i in range(N)]
        gen = [{"id": f"g{i}", "text": t, "score": 0.0} for i, t in enumerate(GEN[name])]
        _jsonl(root / "eval" / name / "tasks" / "arc_easy.jsonl", arc)
        _jsonl(root / "eval" / name / "tasks" / "gsm8k.jsonl", gen)
        _w(
            root / "eval" / name / "summary.json",
            {
                "model": {"name": name, "parameters": 1000},
                "results": {
                    "arc_easy": {
                        "kind": "mc",
                        "main_metric": "acc",
                        "score": len(ARC[name]) / N,
                        "metrics": {"acc": len(ARC[name]) / N},
                        "n": N,
                    },
                    "gsm8k": {
                        "kind": "gen",
                        "main_metric": "exact_match",
                        "score": 0.0,
                        "metrics": {},
                        "n": N,
                    },
                },
            },
        )
    _w(
        root / "eval" / "fidelity.json",
        {n: {"gsm8k": {"rouge_l": sum(v) / N, "exact_match": v.count(1.0) / N}} for n, v in ROUGE.items()},
    )
    from test_study_report import analysis_summary

    for name, kl in (("A", 0.4), ("A-KL", 0.1)):
        _w(root / "analysis" / name / "summary.json", analysis_summary(name, kl=kl, tf=(0.9, 2 * kl)))
    return root


def test_the_twin_pair_in_the_report_and_guidance(tmp_path):
    from prunelens.evaluation.uncertainty import mcnemar_exact
    from prunelens.report import build_report

    root = make_twin_study(tmp_path / "study")
    html = build_report(root).read_text()
    guidance = json.loads((root / "report" / "guidance.json").read_text())
    (twin,) = guidance["twins"]
    assert twin["variant"] == "A-KL" and twin["twin"] == "A"
    assert twin["changed"] == ["drop.objective: hidden → generation", "drop.score_windows: all 4 → 2"]
    # ARC-Easy, paired by question: A right on 0–3, A-KL on 0–9: 6 discordant pairs, all for A-KL
    (arc,) = twin["non_generative"]["tests"]
    assert arc["task"] == "arc_easy" and arc["n"] == N and arc["test"] == "exact McNemar"
    assert arc["reference"] == pytest.approx(4 / N) and arc["value"] == pytest.approx(10 / N)
    assert arc["difference"] == pytest.approx(6 / N)
    assert arc["p_value"] == pytest.approx(mcnemar_exact(0, 6)) == pytest.approx(2 / 2**6)
    assert twin["non_generative"]["finding"] == TW.TWIN_BETTER
    # generation: per-prompt ROUGE-L against the dense outputs, paired by prompt
    gen = twin["generative"]
    pooled = gen["tests"][0]
    assert pooled["task"] == "pooled" and pooled["n"] == N
    assert pooled["reference"] == pytest.approx(4.5 / N) and pooled["value"] == pytest.approx(10 / N)
    diffs = np.array(ROUGE["A-KL"]) - np.array(ROUGE["A"])
    assert pooled["difference"] == pytest.approx(diffs.mean())
    assert pooled["p_value"] == pytest.approx(_exact_sign_flip(diffs)) == pytest.approx(2 / 2**N)
    assert gen["measure"] == "ROUGE-L to dense" and gen["finding"] == TW.TWIN_BETTER
    assert gen["sentence"].startswith("On generation, A-KL keeps ROUGE-L 0.83 against A's 0.38 (paired")
    assert "on 12 prompts): A-KL's changed rule" in gen["sentence"]
    assert twin["numbers"]["A-KL"]["kl_teacher_forced"] == pytest.approx(0.2)
    assert twin["numbers"]["A"]["kl_teacher_forced"] == pytest.approx(0.8)
    # the page: a Twins section with both columns, the tests and the sentences
    assert 'id="twins"' in html and 'href="#twins"' in html
    section = html[html.index('id="twins"') : html.index('id="hierarchy"')]
    assert "A-KL beside its twin A" in section and "exact McNemar" in section and "p = 0.031" in section
    assert "drop.objective: hidden → generation" in section and "TF KL" in section
    import html as _html

    assert _html.escape(gen["sentence"], quote=True) in section
    assert _html.escape(twin["non_generative"]["sentence"], quote=True) in section


def test_the_twin_sits_beside_its_twin_in_the_hierarchy(tmp_path):
    from prunelens.report import build_report, load_study
    from prunelens.report.page import twin_order

    root = make_twin_study(tmp_path / "study", order=("A-KL", "A"))  # the twin listed first
    assert twin_order(load_study(root)) == ["Full", "A", "A-KL"]
    html = build_report(root).read_text()
    section = html[html.index('id="hierarchy"') :]
    assert section.index("<th>A</th>") < section.index("<th>A-KL</th>")


def test_a_study_without_twins_has_no_twin_section(tmp_path):
    from prunelens.report import build_report

    root = make_twin_study(tmp_path / "study")
    cfg = json.loads((root / "study.json").read_text())
    for v in cfg["config"]["variants"]:
        v.pop("twin", None)
    _w(root / "study.json", cfg)
    html = build_report(root).read_text()
    assert 'id="twins"' not in html
    assert json.loads((root / "report" / "guidance.json").read_text())["twins"] == []


def test_twin_sentences_are_finite_numbers_only(tmp_path):
    """No placeholder: every number a twin sentence quotes is one the report measured."""
    root = make_twin_study(tmp_path / "study")
    from prunelens.report import build_report

    build_report(root)
    twin = json.loads((root / "report" / "guidance.json").read_text())["twins"][0]
    for use in ("non_generative", "generative"):
        s = twin[use]["sentence"]
        assert "nan" not in s.lower() and "None" not in s and "—" not in s
        for t in twin[use]["tests"]:
            assert all(math.isfinite(t[k]) for k in ("reference", "value", "difference", "p_value"))


@pytest.mark.slow
def test_a_tiny_study_with_twins_runs_and_reports_them(tmp_path):
    """End to end on a tiny random model: the twin scores on the first window only, the plan says so, and
    the report and guidance.json carry the pair."""
    from test_study_run import _tokenizer

    from prunelens.models.tiny import tiny_model
    from prunelens.report import build_report
    from prunelens.studies.runner import run_study

    from conftest import need_data

    need_data("c4/c4_demo.json")
    model_dir = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model_dir)
    _tokenizer().save_pretrained(model_dir)
    cfg = parse_config(
        {
            "model": str(model_dir),
            "calibration": {"source": "c4", "nsamples": 2, "seqlen": 16},
            "variants": [
                {"name": "Drop-1A", "drop": {"target": "attn", "n": 1}},
                {
                    "name": "Drop-1A-KL",
                    "drop": {"target": "attn", "n": 1, "objective": "generation", "score_windows": 1},
                    "twin": "Drop-1A",
                },
            ],
            "tasks": [{"task": "arc_easy", "limit": 2}, {"task": "gsm8k", "limit": 2, "max_new_tokens": 3}],
            "batch_size": 2,
            "analyses": {"prompts": {"gsm8k": 1}, "transitions": {}},
            "case_study": {"gsm8k": 0, "nq_open": 0, "max_new_tokens": 2},
        }
    )
    run_study(cfg, tmp_path / "s")
    plan = json.loads((tmp_path / "s/variants/Drop-1A-KL/info.json").read_text())["plan"]
    assert plan["options"]["score_windows"] == 1 and plan["scores"]["tokens"] == 16
    assert plan["calibration"]["nsamples"] == 1
    html = build_report(tmp_path / "s").read_text()
    (twin,) = json.loads((tmp_path / "s/report/guidance.json").read_text())["twins"]
    assert (twin["variant"], twin["twin"]) == ("Drop-1A-KL", "Drop-1A")
    assert "drop.objective: hidden → generation" in twin["changed"]
    assert "drop.score_windows: all 2 → 1" in twin["changed"]
    assert twin["non_generative"]["n"] == {"arc_easy": 2} and twin["non_generative"]["sentence"]
    assert twin["generative"]["sentence"].startswith("On generation, Drop-1A-KL")
    assert 'id="twins"' in html and "Drop-1A-KL beside its twin Drop-1A" in html
