"""Evaluation runner: resumable storage, refusal of foreign directories, and the comparison table."""

from __future__ import annotations

import json

import pytest

from prunelens.evaluation import runner
from prunelens.evaluation.compare import render_markdown, write_comparison
from prunelens.evaluation.results import TaskResult
from prunelens.evaluation.runner import EvalSettings, comparison_table, evaluate_model, load_records
from prunelens.utils.io import OutputExistsError


@pytest.fixture
def fake_tasks(monkeypatch):
    calls = []

    def fake_run(model, tok, name, settings):
        calls.append(name)
        if name == "gsm8k" and getattr(fake_run, "explode", False):
            raise KeyboardInterrupt
        kind = runner.task_kind(name)
        return TaskResult(
            task=name,
            kind=kind,
            main_metric="acc",
            metrics={"acc": 0.5},
            n=2,
            seconds=1.0,
            records=[
                {"id": "a", "prompt": "p", "target": "t", "prediction": "t", "score": 1.0},
                {"id": "b", "prompt": "p", "target": "t", "prediction": "x", "score": 0.0},
            ],
        )

    monkeypatch.setattr(runner, "run_task", fake_run)
    return fake_run, calls


def test_resume_skips_finished_tasks(tmp_path, fake_tasks):
    fake_run, calls = fake_tasks
    info = {"spec": "m", "name": "dense", "parameters": 10}
    fake_run.explode = True
    with pytest.raises(KeyboardInterrupt):
        evaluate_model(
            None, None, ["arc_easy", "gsm8k"], tmp_path / "e", settings=EvalSettings(limit=2), model_info=info
        )
    assert calls == ["arc_easy", "gsm8k"]
    assert (tmp_path / "e/tasks/arc_easy.json").exists() and not (tmp_path / "e/tasks/gsm8k.json").exists()
    fake_run.explode = False
    summary = evaluate_model(
        None, None, ["arc_easy", "gsm8k"], tmp_path / "e", settings=EvalSettings(limit=2), model_info=info
    )
    assert calls == ["arc_easy", "gsm8k", "gsm8k"]  # arc_easy was not run again
    assert set(summary["results"]) == {"arc_easy", "gsm8k"}
    assert len(load_records(tmp_path / "e", "gsm8k")) == 2
    saved = json.loads((tmp_path / "e/config.json").read_text())
    assert saved["settings"]["limit"] == 2 and "torch" in saved["versions"]
    # other settings: refused unless overwrite, and then the old results are gone
    with pytest.raises(OutputExistsError):
        evaluate_model(
            None, None, ["arc_easy"], tmp_path / "e", settings=EvalSettings(limit=3), model_info=info
        )
    summary = evaluate_model(
        None,
        None,
        ["arc_easy"],
        tmp_path / "e",
        settings=EvalSettings(limit=3),
        model_info=info,
        overwrite=True,
    )
    assert set(summary["results"]) == {"arc_easy"}


def test_unknown_task_fails_before_work(tmp_path, fake_tasks):
    with pytest.raises(ValueError, match="unknown task"):
        evaluate_model(
            None, None, ["arc_easy", "nope"], tmp_path / "e", settings=EvalSettings(), model_info={}
        )
    assert not (tmp_path / "e").exists()


def _summary(name, params, scores):
    kinds = {
        "arc_easy": "mc",
        "boolq": "mc",
        "gsm8k": "gen",
        "wikitext2": "ppl",
        "boolq_retrieval": "retrieval",
    }
    return {
        "model": {"name": name, "parameters": params},
        "results": {t: {"kind": kinds[t], "main_metric": "m", "score": v} for t, v in scores.items()},
    }


def test_comparison_table_averages_and_retained(tmp_path):
    dense = _summary(
        "dense", 100, {"arc_easy": 0.6, "boolq": 0.8, "boolq_retrieval": 0.4, "gsm8k": 0.2, "wikitext2": 20.0}
    )
    pruned = _summary(
        "Drop-8A",
        90,
        {"arc_easy": 0.54, "boolq": 0.8, "boolq_retrieval": 0.4, "gsm8k": 0.05, "wikitext2": 40.0},
    )
    table = comparison_table([dense, pruned])
    av = table["averages"]
    assert av["non_generative"][0] == pytest.approx(0.6) and av["non_generative"][1] == pytest.approx(0.58)
    assert av["generative"] == [pytest.approx(0.2), pytest.approx(0.05)]
    assert av["generative_retained"][1] == pytest.approx(0.25)
    rows = {r["task"]: r for r in table["rows"]}
    assert rows["arc_easy"]["retained"][1] == pytest.approx(0.9)
    assert rows["wikitext2"]["retained"][1] == pytest.approx(0.5)  # lower is better: dense / pruned
    md = render_markdown(table)
    assert md.startswith("| task | metric | dense | Drop-8A | Drop-8A retained |")
    paths = write_comparison(table, tmp_path / "t")
    assert [p.suffix for p in paths] == [".csv", ".md", ".json"] and all(p.stat().st_size for p in paths)
