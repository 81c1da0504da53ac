"""Bad artifacts read from disk: exit code 2, one line naming the file and the field, nothing written.

Plans, configs and safetensors files are checked before any weights load; counts, lengths and files
given on the command line are checked before the model loads.
"""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from prunelens.cli import app
from prunelens.models.tiny import tiny_model
from prunelens.plan import PLAN_FILE, PlanError, PrunePlan
from prunelens.utils.artifacts import ArtifactError, check_safetensors

from conftest import random_text, tiny_tokenizer

runner = CliRunner()


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("dense")
    tiny_model("llama").save_pretrained(d)  # 4 layers, 256-token context
    tiny_tokenizer().save_pretrained(d)
    (d.parent / "calib.txt").write_text(random_text(2000, 5))
    return d


@pytest.fixture(scope="module")
def pruned_dir(dense_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned") / "drop"
    res = runner.invoke(
        app,
        [
            "prune",
            "drop",
            str(dense_dir),
            "--target",
            "attn",
            "--n",
            "1",
            "--out",
            str(out),
            "--calib",
            str(dense_dir.parent / "calib.txt"),
            "--nsamples",
            "4",
            "--seqlen",
            "16",
        ],
    )
    assert res.exit_code == 0, res.output
    return out


def _copy_with_plan(pruned_dir, tmp_path, edit):
    d = tmp_path / "bad"
    shutil.copytree(pruned_dir, d)
    plan = json.loads((d / PLAN_FILE).read_text())
    text = edit(plan)
    (d / PLAN_FILE).write_text(text if isinstance(text, str) else json.dumps(plan))
    return d


def _one_line_error(res, *needles):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    text = " ".join(res.output.split())  # rich may wrap a long line
    for needle in needles:
        assert needle in text, (needle, res.output)
    assert "Traceback" not in res.output


def _set(key, value):
    def edit(plan):
        plan[key] = value

    return edit


PLAN_CASES = {
    "layer out of range": (
        lambda p: p["dropped_sublayers"][0].update(layer=99),
        "dropped_sublayers[0].layer",
    ),
    "sublayer kind": (
        lambda p: p["dropped_sublayers"][0].update(sublayer="ffn"),
        "dropped_sublayers[0].sublayer",
    ),
    "negative layer": (lambda p: p["dropped_sublayers"][0].update(layer=-1), "dropped_sublayers[0].layer"),
    "duplicate": (
        lambda p: p["dropped_sublayers"].append(dict(p["dropped_sublayers"][0])),
        "dropped_sublayers[1]",
    ),
    "family": (_set("family", "gemma2"), "'family'"),
    "family missing": (_set("family", None), "'family'"),
    "format": (_set("format", "prunelens.plan/9"), "'format'"),
    "method": (_set("method", "lottery"), "'method'"),
    "target": (_set("target", "heads"), "'target'"),
    "layer count": (_set("num_layers_before", 30), "'num_layers_before'"),
    "blocks": (_set("dropped_blocks", [1, 1]), "'dropped_blocks'"),
    "seed": (_set("seed", "zero"), "'seed'"),
    "malformed JSON": (lambda p: json.dumps(p)[:-7], "not valid JSON"),
}


@pytest.mark.parametrize("case", list(PLAN_CASES))
def test_bad_plan_is_refused_by_info_and_eval(pruned_dir, tmp_path, case):
    edit, field = PLAN_CASES[case]
    bad = _copy_with_plan(pruned_dir, tmp_path, edit)
    _one_line_error(runner.invoke(app, ["info", str(bad)]), PLAN_FILE, field)
    out = tmp_path / "eval"
    res = runner.invoke(app, ["eval", str(bad), "--tasks", "wikitext2", "--limit", "2", "--out", str(out)])
    _one_line_error(res, PLAN_FILE, field)
    assert not out.exists()


@pytest.mark.parametrize(
    "sparsity, field",
    [({"sparsity": 1.5}, "sparsity.sparsity"), ({"pattern": "4:2"}, "sparsity.pattern"), ({}, "'sparsity'")],
)
def test_sparsity_fields_are_validated(sparsity, field, tmp_path):
    data = PrunePlan(method="wanda", base_model="m", family="llama", sparsity=sparsity).to_dict()
    with pytest.raises(PlanError, match=field.replace("[", r"\[").replace("]", r"\]")):
        PrunePlan.from_dict(data, source=tmp_path / PLAN_FILE)
    ok = PrunePlan(
        method="wanda", base_model="m", family="llama", sparsity={"pattern": "2:4", "sparsity": 0.5}
    )
    assert PrunePlan.from_dict(ok.to_dict()).sparsity["pattern"] == "2:4"


def _truncate(path, keep: float = 0.6):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_safetensors_names_the_file(pruned_dir, dense_dir, tmp_path):
    for src in (pruned_dir, dense_dir):
        bad = tmp_path / f"trunc-{src.name}"
        shutil.copytree(src, bad)
        _truncate(bad / "model.safetensors")
        _one_line_error(runner.invoke(app, ["info", str(bad)]), "model.safetensors", "incomplete")
        out = tmp_path / f"eval-{src.name}"
        res = runner.invoke(
            app, ["eval", str(bad), "--tasks", "wikitext2", "--limit", "2", "--out", str(out)]
        )
        _one_line_error(res, "model.safetensors")
        assert not out.exists()


def test_safetensors_check(tmp_path, dense_dir):
    good = dense_dir / "model.safetensors"
    check_safetensors(good)
    for name, mangle in {
        "short": lambda b: b[:5],
        "header": lambda b: b[:8] + b"{not json" + b[17:],
        "tail": lambda b: b + b"\0\0",
        "cut": lambda b: b[: len(b) - 10],
    }.items():
        f = tmp_path / f"{name}.safetensors"
        f.write_bytes(mangle(good.read_bytes()))
        with pytest.raises(ArtifactError, match=f.name):
            check_safetensors(f)


def test_broken_config_is_refused(dense_dir, tmp_path):
    bad = tmp_path / "cfg"
    shutil.copytree(dense_dir, bad)
    (bad / "config.json").write_text('{"hidden_size": 64,')
    _one_line_error(runner.invoke(app, ["info", str(bad)]), "config.json", "not valid JSON")
    (bad / "config.json").write_text('{"hidden_size": 64}')
    _one_line_error(runner.invoke(app, ["info", str(bad)]), "config.json", "model_type")


def _no_model_load(monkeypatch):
    import prunelens.models.loading as loading

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the cheap checks")

    monkeypatch.setattr(loading, "load", refuse)


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--nsamples", "0"], ["--nsamples: must be a positive integer"]),
        (["--seqlen", "0"], ["--seqlen: must be a positive integer"]),
        (["--seqlen", "100000"], ["--seqlen 100000", "context length of 256"]),
        (["--calib", "missing-file.txt"], ["missing-file.txt", "does not exist"]),
    ],
)
@pytest.mark.parametrize(
    "command",
    [
        ["prune", "drop", "--target", "attn", "--n", "1"],
        ["prune", "sparsify", "--method", "wanda", "--sparsity", "0.5"],
    ],
)
def test_cheap_checks_come_before_the_model_loads(dense_dir, tmp_path, monkeypatch, command, args, needles):
    _no_model_load(monkeypatch)
    out = tmp_path / "out"
    base = ["--calib", str(dense_dir.parent / "calib.txt"), "--nsamples", "4", "--seqlen", "16"]
    res = runner.invoke(app, [*command[:2], str(dense_dir), *command[2:], "--out", str(out), *base, *args])
    _one_line_error(res, *needles)
    assert not out.exists()


def test_drop_count_is_checked_from_the_config(dense_dir, tmp_path, monkeypatch):
    _no_model_load(monkeypatch)
    res = runner.invoke(
        app,
        [
            "prune",
            "drop",
            str(dense_dir),
            "--target",
            "attn",
            "--n",
            "9",
            "--out",
            str(tmp_path / "o"),
            "--calib",
            str(dense_dir.parent / "calib.txt"),
        ],
    )
    assert res.exit_code == 2 and not (tmp_path / "o").exists()


def test_analyze_refuses_a_seqlen_beyond_the_context(dense_dir, tmp_path, monkeypatch):
    _no_model_load(monkeypatch)
    out = tmp_path / "a"
    res = runner.invoke(app, ["analyze", str(dense_dir), "drop-1A", "--out", str(out), "--seqlen", "5000"])
    _one_line_error(res, "context length of 256")
    assert not out.exists()
