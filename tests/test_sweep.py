"""Sweeps: the config (errors name the field), the generated variants, the seed statistics and the
"largest indistinguishable ratio" rule (pure), a whole sweep on a tiny model (runs, resumes, sweep.json,
the report section, headless Chromium) and the command line (bad input exits 2, writes nothing)."""

from __future__ import annotations

import csv
import json
import math
import re

import pytest
import yaml

from prunelens.models.tiny import tiny_model
from prunelens.report.sweep import (
    largest_indistinguishable,
    nongen_indistinguishable,
    ratio_verdict,
    seed_interval,
    t_quantile_975,
)
from prunelens.studies.config import CONTROL, StudyConfigError
from prunelens.studies.sweep import (
    DEFAULT_SWEEP_YAML,
    load_sweep,
    parse_sweep,
    run_sweep,
    study_config,
    sweep_variants,
)

from conftest import missing, need_data

# ----------------------------------------------------------------------------------------------------
# config


@pytest.mark.parametrize(
    "raw, field",
    [
        ({"sweep": {"ns": [1, 2, 0]}}, "sweep.ns[2]"),
        ({"sweep": {"ns": [1, "x"]}}, "sweep.ns[1]"),
        ({"sweep": {"ns": [2, 2]}}, "sweep.ns"),
        ({"sweep": {"ns": []}}, "sweep.ns"),
        ({"sweep": {"target": "head"}}, "sweep.target"),
        ({"sweep": {"family": "quantize"}}, "sweep.family"),
        ({"sweep": {"method": "wanda", "sparsities": [0.1, 1.0]}}, "sweep.sparsities[1]"),
        ({"sweep": {"method": "wanda", "sparsities": [0.3, 0.3]}}, "sweep.sparsities"),
        ({"sweep": {"method": "obs"}}, "sweep.method"),
        ({"sweep": {"target": "mlp", "sparsities": [0.5]}}, "sweep.target"),
        ({"sweep": {"seeds": []}}, "sweep.seeds"),
        ({"sweep": {"seeds": [0, -1]}}, "sweep.seeds[1]"),
        ({"sweep": {"seeds": [1, 1]}}, "sweep.seeds"),
        ({"sweep": {"bogus": 1}}, "sweep"),
        ({"sweep": [1, 2]}, "sweep"),
        ({"variants": []}, "(top level)"),
        ({"tasks": [{"task": "nope"}]}, "tasks[0].task"),
        ({"tasks": [{"task": "wikitext2", "limit": 1}]}, "tasks"),
        ({"calibration": {"nsamples": 0}}, "calibration.nsamples"),
        ({"dtype": "int4"}, "dtype"),
    ],
)
def test_config_errors_name_the_field(raw, field):
    with pytest.raises(StudyConfigError, match=re.escape(f"field '{field}'")):
        parse_sweep(raw)


def test_default_config_is_the_printed_one_with_the_study_n():
    sc = load_sweep(None)
    assert sc == parse_sweep(yaml.safe_load(DEFAULT_SWEEP_YAML))
    assert (sc.family, sc.target, sc.ratios, sc.seeds) == ("drop", "attn", (1, 2, 4, 8, 12, 16), (0, 1, 2))
    assert {t.task for t in sc.tasks} == {"arc_easy", "piqa", "gsm8k", "nq_open"}
    limits = {t.task: t.limit for t in sc.tasks}
    assert limits["arc_easy"] >= 200 and limits["piqa"] >= 200  # enough for a paired verdict
    assert limits["gsm8k"] >= 24 and limits["nq_open"] >= 24


def test_variants_are_ratio_by_seed_plus_the_control():
    sc = parse_sweep({"sweep": {"target": "mlp", "ns": [4, 1], "seeds": [0, 2]}})
    vs = sweep_variants(sc)
    assert vs[0] == {"name": CONTROL, "control": {"round_to": "auto"}}
    assert vs[1:] == [
        {"name": "mlp-1@s0", "seed": 0, "drop": {"target": "mlp", "n": 1}},
        {"name": "mlp-1@s2", "seed": 2, "drop": {"target": "mlp", "n": 1}},
        {"name": "mlp-4@s0", "seed": 0, "drop": {"target": "mlp", "n": 4}},
        {"name": "mlp-4@s2", "seed": 2, "drop": {"target": "mlp", "n": 4}},
    ]
    cfg = study_config(sc)
    assert [v.name for v in cfg.variants] == ["Full", CONTROL] + [v["name"] for v in vs[1:]]
    assert cfg.variants[-1].seed == 2 and cfg.analyses.enabled == ("trajectories",)
    sp = parse_sweep({"sweep": {"method": "wanda", "sparsities": [0.5, 0.125], "seeds": [1]}})
    assert [v["name"] for v in sweep_variants(sp)] == [CONTROL, "wanda-12.5%@s1", "wanda-50%@s1"]
    assert sweep_variants(sp)[2]["sparsify"] == {"method": "wanda", "sparsity": 0.5}
    # magnitude pruning reads no calibration data: every seed would give the same mask, one is run
    mag = parse_sweep({"sweep": {"method": "magnitude", "sparsities": [0.5]}})
    assert [v["name"] for v in sweep_variants(mag)] == [CONTROL, "magnitude-50%@s0"]


# ----------------------------------------------------------------------------------------------------
# the statistics and the rule (pure)


def test_seed_interval_is_the_student_t_interval_of_the_mean():
    iv = seed_interval([1.0, 2.0, 3.0, None, float("nan")])
    assert iv["n"] == 3 and iv["mean"] == 2.0 and (iv["min"], iv["max"]) == (1.0, 3.0)
    half = 4.303 * 1.0 / math.sqrt(3)  # s = 1, t_{0.975, 2}
    assert iv["low"] == pytest.approx(2 - half) and iv["high"] == pytest.approx(2 + half)
    one = seed_interval([0.5])
    assert one["n"] == 1 and one["mean"] == 0.5 and one["low"] is None and one["high"] is None
    assert seed_interval([None])["mean"] is None
    # the expansion beyond the table continues it
    assert t_quantile_975(30) == 2.042 and 2.03 < t_quantile_975(31) < 2.042
    assert t_quantile_975(1000) == pytest.approx(1.962, abs=1e-3)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_ratio_verdict_needs_every_seed():
    assert ratio_verdict([True, True]) is True
    assert ratio_verdict([True, False]) is False
    assert ratio_verdict([True, None]) is None
    assert ratio_verdict([None, False]) is False
    assert ratio_verdict([]) is None


def test_largest_indistinguishable_stops_at_the_first_failure():
    assert largest_indistinguishable([(1, True), (2, True), (4, False), (8, True)]) == 2
    assert largest_indistinguishable([(4, True), (1, True), (2, None)]) == 1  # order-free, None stops
    assert largest_indistinguishable([(1, False), (2, True)]) is None
    assert largest_indistinguishable([]) is None


def test_verdict_outcomes_map_to_three_verdicts():
    """The sweep reads the verdict rules' outcome fields, never their sentences."""
    from prunelens.studies.verdicts import CARE, NOT_MEASURED, SAFE, UNSAFE, Finding, PartOutcome, UseOutcome

    def use(grade, *findings):
        parts = tuple(PartOutcome("generative", "dense", grade, f) for f in findings)
        return UseOutcome("generative", grade, parts).indistinguishable

    ind, lower = Finding.INDISTINGUISHABLE, Finding.LOWER
    assert use(SAFE, ind) is True
    assert use(SAFE, ind, ind) is True  # the score and the fidelity against the control
    assert use(SAFE, Finding.NOT_MEASURED, ind) is True  # a part that judged nothing is left out
    assert use(CARE, ind, lower) is False
    assert use(UNSAFE, lower) is False
    assert use(CARE, Finding.UNCLEAR) is None and use(CARE, Finding.POINT_ONLY) is None
    assert use(CARE, Finding.FIXED_THRESHOLDS) is None
    assert use(NOT_MEASURED, ind) is None and use(SAFE) is None


def test_nongen_rule_reads_the_paired_tests_of_the_table():
    def paired(p):
        return {"p_value": p, "n": 40, "difference": -0.1, "interval": [-0.2, 0.0], "test": "McNemar"}

    table = {
        "models": ["Full", "a", "b"],
        "rows": [
            {"task": "arc_easy", "kind": "mc", "paired": [None, paired(0.4), paired(0.01)]},
            {"task": "piqa", "kind": "mc", "paired": [None, paired(0.2), paired(0.5)]},
            {"task": "gsm8k", "kind": "gen", "paired": [None, paired(0.001), paired(0.001)]},  # not this use
        ],
    }
    ok, detail = nongen_indistinguishable(table, "a")
    assert ok is True and detail == {"tasks": 2, "min_p": 0.2, "task": "piqa", "n": 40}
    assert nongen_indistinguishable(table, "b")[0] is False
    assert nongen_indistinguishable(table, "missing")[0] is None


# ----------------------------------------------------------------------------------------------------
# a whole sweep on a tiny model


def _raw(model_dir, ns=(1, 2)):
    return {
        "model": str(model_dir),
        "calibration": {"source": "c4", "nsamples": 2, "seqlen": 32},
        "sweep": {"family": "drop", "target": "joint", "ns": list(ns), "seeds": [0, 1]},
        # 10 examples: the fewest on which the report's guidance judges a paired test at all
        "tasks": [{"task": "arc_easy", "limit": 10}, {"task": "gsm8k", "limit": 10, "max_new_tokens": 4}],
        "batch_size": 2,
    }


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from test_study_run import _tokenizer

    d = tmp_path_factory.mktemp("tinysweepmodel")
    tiny_model("llama", num_hidden_layers=2).save_pretrained(d)  # joint: 4 candidate sublayers, n ∈ {1, 2}
    _tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def swept(tiny_dir, tmp_path_factory):
    need_data("c4/c4_demo.json")
    from prunelens.report import build_report
    from prunelens.studies.runner import plan_units

    out = tmp_path_factory.mktemp("sweep") / "s"
    sc = parse_sweep(_raw(tiny_dir))
    seen: list[tuple[str, bool]] = []
    run_sweep(sc, out, report=lambda u, s, cached: seen.append((u, cached)))
    first = list(seen)
    seen.clear()
    run_sweep(sc, out, report=lambda u, s, cached: seen.append((u, cached)))
    page = build_report(out)
    return sc, out, page, first, list(seen), [u.id for u in plan_units(study_config(sc))]


@pytest.mark.slow
def test_sweep_runs_every_unit_once_and_resumes(swept):
    sc, out, _, first, second, ids = swept
    assert [u for u, c in first if not c] == ids
    assert (
        len(ids) == 6 * 2 + 5 * 4 + 2
    )  # 6 variants × (variant, case study) + 5 pruned × (eval ×2, analysis,
    # predictor) + Full's two evaluations
    assert second and all(c for _, c in second) and len(second) == len(ids)  # the second run runs nothing
    rec = json.loads((out / "study.json").read_text())["sweep"]
    assert rec["family"] == "drop" and rec["target"] == "joint" and rec["ns"] == [1, 2]
    assert [(v["name"], v["ratio"], v["seed"]) for v in rec["variants"]] == [
        ("joint-1@s0", 1, 0),
        ("joint-1@s1", 1, 1),
        ("joint-2@s0", 2, 0),
        ("joint-2@s1", 2, 1),
    ]
    # each seed drew its own calibration windows: the plans record the seed they were scored with
    infos = {
        n: json.loads((out / f"variants/{n}/info.json").read_text()) for n in ("joint-1@s0", "joint-1@s1")
    }
    assert all(i["plan"] is not None for i in infos.values())


@pytest.mark.slow
def test_sweep_json_aggregates_each_ratio_over_its_seeds(swept):
    _, out, _, _, _, _ = swept
    s = json.loads((out / "report" / "sweep.json").read_text())
    assert [r["ratio"] for r in s["rows"]] == [1.0, 2.0] and all(r["n_seeds"] == 2 for r in s["rows"])
    assert "Student-t" in s["interval"]
    for r in s["rows"]:
        assert [x["seed"] for x in r["seeds"]] == [0, 1]
        for key in ("retained_nongen", "rouge_l", "kl_teacher_forced", "predictor"):
            m = r["metrics"][key]
            vals = [x[key] for x in r["seeds"]]
            assert m["n"] == 2 and all(v is not None and math.isfinite(v) for v in vals), (key, vals)
            assert (
                m["mean"] == pytest.approx(sum(vals) / 2) and m["min"] == min(vals) and m["max"] == max(vals)
            )
            assert m["low"] <= m["mean"] <= m["high"]
        for use in ("non_generative", "generative"):
            per_seed = [x["indistinguishable"][use] for x in r["seeds"]]
            assert r["indistinguishable"][use] == ratio_verdict(per_seed)
            assert all(v in (True, False, None) for v in per_seed)
            assert all(x["tests"][use]["tasks"] == 1 for x in r["seeds"])  # each use was tested at every seed
    for use in ("non_generative", "generative"):
        best = s["largest_indistinguishable"][use]
        assert best == largest_indistinguishable(
            [(r["ratio"], r["indistinguishable"][use]) for r in s["rows"]]
        )
    ctrl = s["control_reference"]
    assert ctrl["rouge_l"] is not None and ctrl["rouge_l_band"]["low"] <= ctrl["rouge_l_band"]["high"]
    rows = list(csv.DictReader((out / "report" / "sweep.csv").open()))
    assert len(rows) == 2 * 4 and {r["n_seeds"] for r in rows} == {"2"}


@pytest.mark.slow
def test_report_has_the_sweep_section_and_its_figure(swept):
    _, out, page, _, _, _ = swept
    html = page.read_text()
    s = json.loads((out / "report" / "sweep.json").read_text())
    assert '<section id="sweep">' in html and 'href="#sweep"' in html
    sec = html[html.index('<section id="sweep">') :]
    sec = sec[: sec.index("</section>")]
    assert sec.count("data:image/png;base64,") == 1 and (out / "report/figures/sweep.png").exists()
    assert "For non-generative use" in sec and "For generation" in sec
    for use in ("non_generative", "generative"):
        best = s["largest_indistinguishable"][use]
        if best is None:
            assert "none" in sec or "could be judged" in sec
        else:
            assert "stays indistinguishable from dense" in sec
    assert "joint-1@s0" in html and "n = 2" in sec
    # an ordinary study has no sweep section
    assert '<section id="sweep">' not in _plain_report(out)


def _plain_report(out):
    """The same directory's report, built as if study.json recorded no sweep (a copy)."""
    import shutil

    from prunelens.report import build_report

    plain = out.parent / "plain"
    if not plain.exists():
        shutil.copytree(out, plain)
        rec = json.loads((plain / "study.json").read_text())
        del rec["sweep"]
        (plain / "study.json").write_text(json.dumps(rec))
    return build_report(plain).read_text()


def test_impossible_ratios_are_refused_before_anything_is_written(tiny_dir, tmp_path):
    sc = parse_sweep(_raw(tiny_dir, ns=(1, 4)))  # joint on 2 layers: 4 candidates, n ≤ 3
    with pytest.raises(StudyConfigError, match=r"sweep\.ns\[1\].*cannot drop 4"):
        run_sweep(sc, tmp_path / "s")
    assert not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------------------------------
# the command line


def _cli(args):
    from typer.testing import CliRunner

    from prunelens.cli import app

    return CliRunner().invoke(app, args)


@pytest.mark.slow
def test_cli_resumes_a_finished_sweep_and_prints_the_report(swept, tmp_path):
    _, out, _, _, _, _ = swept
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(_raw(swept[0].model)))
    before = sorted(p.name for p in (out / "units").glob("*.json"))
    res = _cli(["sweep", "--config", str(cfg), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "report:" in res.output and "report.html" in res.output
    assert sorted(p.name for p in (out / "units").glob("*.json")) == before


def test_cli_print_config_and_help():
    res = _cli(["sweep", "--print-config"])
    assert res.exit_code == 0 and parse_sweep(yaml.safe_load(res.output)) == load_sweep(None)
    res = _cli(["sweep", "--help"])
    assert res.exit_code == 0 and "--sparsities" in res.output and "indistinguishable" in res.output


@pytest.mark.parametrize(
    "args, says",
    [
        (["--ns", "1,x"], "--ns"),
        (["--seeds", ""], "--seeds"),
        (["--target", "attn", "--method", "wanda"], "one family"),
        (["--ns", "1,0"], "sweep.ns[1]"),
        (["--method", "wanda", "--sparsities", "0.2,1.5"], "sweep.sparsities[1]"),
        (["--target", "heads"], "sweep.target"),
        (["--engine", "spark"], "engine"),
        (["--config", "/nonexistent/sweep.yaml"], "--config"),
        (["--model", "/nonexistent/model"], "no such model"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(args, says, tmp_path):
    out = tmp_path / "s"
    res = _cli(["sweep", *args, "--out", str(out)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and says in lines[0], res.output
    assert not out.exists()


def test_cli_refuses_an_impossible_ratio_naming_the_field(tiny_dir, tmp_path):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(_raw(tiny_dir)))
    res = _cli(["sweep", "--config", str(cfg), "--ns", "1,9", "--out", str(tmp_path / "s")])
    assert res.exit_code == 2 and "sweep.ns[1]" in res.output and not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------------------------------
# the page in a real headless browser


@pytest.fixture(scope="module")
def chromium():
    from browser_check import ensure_chromium

    path, why = ensure_chromium()
    if path:
        return path
    missing(f"Chromium for the browser check could not be provided: {why}")


@pytest.mark.slow
def test_sweep_report_in_headless_chromium(swept, chromium, tmp_path):
    from browser_check import check_page

    _, _, page, _, _, _ = swept
    shot = tmp_path / "sweep.png"
    r = check_page(page, shot, chromium=chromium)
    assert r.problems() == [], r.problems()
    assert r.console_errors == [] and r.requests == []
    assert r.images and all(i["naturalWidth"] > 0 and i["naturalHeight"] > 0 for i in r.images)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_ray_runs_the_same_sweep_units(tiny_dir, tmp_path):
    """The Ray engine runs each variant (ratio × seed) as a task and the sweep is recorded as with local."""
    pytest.importorskip("ray")
    need_data("c4/c4_demo.json")
    from prunelens.studies.runner import plan_units

    raw = _raw(tiny_dir, ns=(1,))
    raw["tasks"] = [{"task": "arc_easy", "limit": 2}]
    sc = parse_sweep(raw)
    ran: list[str] = []
    run_sweep(sc, tmp_path / "r", engine="ray", workers=2, report=lambda u, s, c: ran.append(u))
    ids = [u.id for u in plan_units(study_config(sc))]
    assert sorted(ran) == sorted(ids) and len(ran) == len(set(ran))
    rec = json.loads((tmp_path / "r" / "study.json").read_text())["sweep"]
    assert [v["name"] for v in rec["variants"]] == ["joint-1@s0", "joint-1@s1"]
    import ray

    ray.shutdown()
