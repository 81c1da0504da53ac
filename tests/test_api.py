"""The Python API on models in memory: prune, evaluate, compare, analyse and repair a tiny model; the same
request refused for the same reason by the API, the command line and a study config; the README's
example run as written on the embedded model."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import prunelens
from prunelens.api import Comparison, Evaluation, PruneResult
from prunelens.cli import app
from prunelens.models.adapter import Adapter
from prunelens.models.tiny import tiny_model
from prunelens.prune.specs import DropSpec, SpecError

from conftest import random_text, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(random_text(2000, 5))
    return str(path)


def _cal(calib: str) -> dict:
    return {"calib": calib, "nsamples": 4, "seqlen": 16}


def test_the_package_exposes_the_api_as_functions():
    import prunelens.evaluation
    import prunelens.studies

    for name in ("load", "drop", "sparsify", "repair", "evaluate", "compare", "analyze", "study"):
        assert callable(getattr(prunelens, name)), name
    # the subpackages that had these names were renamed, so importing them shadows nothing
    assert callable(prunelens.evaluate) and callable(prunelens.study)
    assert prunelens.evaluation.__name__ == "prunelens.evaluation"
    with pytest.raises(AttributeError):
        prunelens.no_such_function  # noqa: B018


def test_prune_evaluate_compare_analyze_in_memory(calib):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    dense = copy.deepcopy(model)
    before = prunelens.evaluate(model, tok, tasks=["arc_easy"], limit=8, name="dense")
    pruned = prunelens.drop(model, tok, target="attn", n=2, **_cal(calib))
    assert isinstance(pruned, PruneResult) and pruned.model is model  # pruned in place, as documented
    assert len(pruned.plan.dropped_sublayers) == 2 and Adapter(model).is_dropped(
        pruned.plan.dropped_sublayers[0]["layer"], "attn"
    )
    after = prunelens.evaluate(pruned, tasks="arc_easy", limit=8)
    assert isinstance(after, Evaluation) and after.name == pruned.plan.name
    assert after.results["arc_easy"].n == 8 and len(after.records()["arc_easy"]) == 8
    table = prunelens.compare(before, after)
    assert isinstance(table, Comparison) and table.table["models"] == ["dense", pruned.plan.name]
    row = table.table["rows"][0]
    assert row["paired"][1]["n"] == 8  # paired on the 8 shared questions
    assert "arc_easy" in str(table)
    report = prunelens.analyze(
        dense, tok, pruned, prompts=["w1 w2 w3 w4", "w5 w6"], max_new_tokens=4, mc="none"
    )
    assert list(report.headline.columns) == [pruned.plan.name]
    assert report.summary["variants"][pruned.plan.name]["transitions"]


def test_api_drop_equals_the_command_line(tmp_path, calib):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    model.save_pretrained(tmp_path / "dense")
    tok.save_pretrained(tmp_path / "dense")
    api = prunelens.drop(model, tok, target="mlp", n=2, objective="generation", **_cal(calib)).plan
    cli = [
        "prune", "drop", str(tmp_path / "dense"), "--target", "mlp", "--n", "2", "--objective", "generation",
        "--calib", calib, "--nsamples", "4", "--seqlen", "16", "--out", str(tmp_path / "cli"),
    ]  # fmt: skip
    res = CliRunner().invoke(app, cli)
    assert res.exit_code == 0, res.output
    from prunelens.plan import PrunePlan

    by_cli = PrunePlan.load(tmp_path / "cli")
    assert [(d["layer"], d["sublayer"]) for d in api.dropped_sublayers] == [
        (d["layer"], d["sublayer"]) for d in by_cli.dropped_sublayers
    ]
    assert api.options == by_cli.options


def test_sparsify_in_memory_and_its_analysis(calib):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    dense = copy.deepcopy(model)
    pruned = prunelens.sparsify(model, tok, method="wanda", sparsity=0.5, **_cal(calib))
    w = Adapter(model).layers[0].mlp.down_proj.weight
    assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    report = prunelens.analyze(dense, tok, pruned, prompts=["w1 w2 w3"], max_new_tokens=3, mc="none")
    assert report.summary["variants"]  # analysed from the weights that differ from the dense model


def test_repair_in_memory_keeps_the_drops(calib):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    dense = copy.deepcopy(model)
    pruned = prunelens.drop(model, tok, target="attn", n=1, **_cal(calib))
    result = prunelens.repair(pruned, teacher=dense, steps=2, eval_every=1, **_cal(calib))
    assert result.plan.repair and result.plan.dropped_sublayers == pruned.plan.dropped_sublayers
    layer = pruned.plan.dropped_sublayers[0]["layer"]
    assert Adapter(result.model).is_dropped(layer, "attn")


def test_one_rule_one_reason_in_every_front_end(tmp_path, calib):
    """The Fisher estimate with the choice objective is refused by DropSpec.check alone; the API, the
    command line and a study config give its reason, each spelling the fields its own way."""
    with pytest.raises(SpecError) as api:
        prunelens.drop(tiny_model("llama"), tiny_tokenizer(), target="attn", n=1, objective="choice",
                       estimator="fisher", **_cal(calib))  # fmt: skip
    reason = "the Fisher estimate is of the generation objective's KL: use {} generation"
    assert str(api.value) == "estimator: " + reason.format("objective")
    res = CliRunner().invoke(
        app,
        ["prune", "drop", "--target", "attn", "--n", "1", "--objective", "choice", "--estimator", "fisher",
         "--out", str(tmp_path / "o")],
    )  # fmt: skip
    assert res.exit_code == 2 and "--estimator: " + reason.format("--objective") in " ".join(
        res.output.split()
    )
    from prunelens.studies.config import StudyConfigError, parse_config

    drop = {"target": "attn", "n": 1, "objective": "choice", "estimator": "fisher"}
    with pytest.raises(StudyConfigError) as cfg:
        parse_config({"variants": [{"name": "X", "drop": drop}]})
    assert str(cfg.value).endswith("'variants[0].drop.estimator': " + reason.format("objective"))
    assert not (tmp_path / "o").exists()
    with pytest.raises(SpecError, match="score_windows: 5 exceeds nsamples 4"):
        DropSpec("attn", 1, score_windows=5).check(nsamples=4)


def test_in_memory_models_need_their_tokenizer():
    with pytest.raises(prunelens.utils.errors.InputError, match="tokenizer"):
        prunelens.drop(tiny_model("llama"), target="attn", n=1)


def _readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python example"
    return blocks[0]


@pytest.mark.real_model
def test_the_readme_example_runs_as_written(capsys):
    """The first python block of the README, run as a user would paste it (on the embedded model; it
    writes nothing)."""
    torch.manual_seed(0)
    exec(compile(_readme_example(), str(README), "exec"), {})
    printed = capsys.readouterr().out
    assert "arc_easy" in printed


@pytest.mark.slow
def test_study_from_python_writes_its_report_and_resumes(tmp_path, calib):
    model_dir = tmp_path / "dense"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    config = {
        "model": str(model_dir),
        "calibration": {"source": calib, "nsamples": 2, "seqlen": 16},
        "variants": [{"name": "Drop-1A", "drop": {"target": "attn", "n": 1}}],
        "tasks": [{"task": "wikitext2", "limit": 1}],
        "analyses": {"prompts": {"nq_open": 1}, "transitions": {"temperatures": [1.0]}},
        "case_study": {"gsm8k": 0, "nq_open": 1, "max_new_tokens": 2},
    }
    report = prunelens.study(config, out=tmp_path / "s")
    assert Path(report).name == "report.html" and "Drop-1A" in Path(report).read_text()
    again = prunelens.study(config, out=tmp_path / "s")  # every unit cached: the same report
    assert again == report
