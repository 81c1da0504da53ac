"""The command line on a tiny checkpoint: success paths, and refusals with exit code 2 that write nothing."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from prunelens.cli import app
from prunelens.models.tiny import tiny_model
from prunelens.plan import PLAN_FILE

from conftest import random_text

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from conftest import tiny_tokenizer

    d = tmp_path_factory.mktemp("tiny")
    tiny_model("llama").save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    (d.parent / "calib.txt").write_text(random_text(2000, 5))
    return d


def _common(model_dir):
    return ["--calib", str(model_dir.parent / "calib.txt"), "--nsamples", "4", "--seqlen", "16"]


def test_help_explains():
    res = runner.invoke(app, ["prune", "drop", "--help"])
    assert res.exit_code == 0
    for word in (
        "--target",
        "--n",
        "--calib",
        "--nsamples",
        "--seqlen",
        "--seed",
        "--dtype",
        "--device",
        "--overwrite",
    ):
        assert word in res.output


def test_drop_then_info(model_dir, tmp_path):
    out = tmp_path / "drop"
    res = runner.invoke(
        app,
        [
            "prune",
            "drop",
            str(model_dir),
            "--target",
            "attn",
            "--n",
            "2",
            "--out",
            str(out),
            *_common(model_dir),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "Drop-2A" in res.output
    plan = json.loads((out / PLAN_FILE).read_text())
    assert plan["calibration"] == {
        "source": str(model_dir.parent / "calib.txt"),
        "nsamples": 4,
        "seqlen": 16,
        "seed": 0,
        "tokens_available": 2000,
        "bos_id": None,
    }
    res = runner.invoke(app, ["info", str(out), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["layers"] == 4 and len(info["dropped_attention"]) == 2 and info["plan"]["target"] == "attn"


@pytest.mark.parametrize(
    "args",
    [
        ["--method", "wanda", "--sparsity", "0.5"],
        ["--method", "sparsegpt", "--pattern", "2:4"],
        ["--method", "magnitude", "--sparsity", "0.3"],
        ["--method", "wanda", "--sparsity", "0.5", "--dense-block-stats"],
        ["--method", "sparsegpt", "--sparsity", "0.5", "--true-sequential"],
    ],
)
def test_sparsify(model_dir, tmp_path, args):
    out = tmp_path / "sp"
    res = runner.invoke(
        app, ["prune", "sparsify", str(model_dir), *args, "--out", str(out), *_common(model_dir)]
    )
    assert res.exit_code == 0, res.output
    assert (out / "model.safetensors").exists() and (out / PLAN_FILE).exists()
    options = json.loads((out / PLAN_FILE).read_text())["options"]
    if "magnitude" not in args:
        expected = "--true-sequential" in args or ("wanda" in args and "--dense-block-stats" not in args)
        assert options["true_sequential"] is expected


@pytest.mark.parametrize(
    "args,message",
    [
        (["prune", "drop", "--target", "attn", "--n", "4"], "n must be between 1 and 3"),
        (["prune", "drop", "--target", "attn", "--n", "0"], "--n: must be a positive integer (got 0)"),
        (
            ["prune", "drop", "--target", "heads", "--n", "1"],
            "--target: must be one of attn, mlp, block, joint",
        ),
        (
            ["prune", "drop", "--target", "attn", "--n", "1", "--choice-task", "piqa"],
            "--choice-task: belongs to --objective choice",
        ),
        (["prune", "drop", "--target", "attn", "--n", "1", "--temperature", "0"], "--temperature: must be"),
        (
            ["prune", "drop", "--target", "mlp", "--n", "1", "--window"],
            "--window: only applies to --target block",
        ),
        (
            ["prune", "drop", "--target", "attn", "--n", "1", "--objective", "loss"],
            "--objective: must be one of hidden, generation, choice (got 'loss')",
        ),
        (
            [
                "prune",
                "drop",
                "--target",
                "attn",
                "--n",
                "1",
                "--objective",
                "generation",
                "--search-budget",
                "0",
            ],
            "positive number of seconds",
        ),
        (
            ["prune", "drop", "--target", "attn", "--n", "1", "--search-budget", "5"],
            "use --objective generation or choice",
        ),
        (
            [
                "prune",
                "drop",
                "--target",
                "attn",
                "--n",
                "1",
                "--objective",
                "choice",
                "--choice-task",
                "gsm8k",
            ],
            "must be a multiple-choice task",
        ),
        (
            ["prune", "drop", "--target", "attn", "--n", "1", "--objective", "choice", "--choice-limit", "0"],
            "--choice-limit: must be a positive integer",
        ),
        (
            [
                "prune",
                "drop",
                "--target",
                "attn",
                "--n",
                "1",
                "--objective",
                "choice",
                "--estimator",
                "fisher",
            ],
            "use --objective generation",
        ),
        (
            ["prune", "drop", "--target", "attn", "--n", "1", "--score-windows", "0"],
            "--score-windows: must be a positive integer",
        ),
        (["prune", "drop", "--target", "attn", "--n", "1", "--score-windows", "5"], "exceeds --nsamples 4"),
        (
            [
                "prune",
                "drop",
                "--target",
                "attn",
                "--n",
                "1",
                "--objective",
                "choice",
                "--score-windows",
                "2",
            ],
            "does not apply to --objective choice",
        ),
        (["prune", "sparsify", "--method", "wanda", "--sparsity", "1.0"], "[0, 1)"),
        (["prune", "sparsify", "--method", "wanda", "--sparsity", "-0.2"], "[0, 1)"),
        (["prune", "sparsify", "--method", "wanda", "--pattern", "4:4"], "0 < N < M"),
        (["prune", "sparsify", "--method", "wanda", "--pattern", "2:4", "--sparsity", "0.5"], "exactly one"),
    ],
)
def test_refusals_exit_2_and_write_nothing(model_dir, tmp_path, args, message):
    out = tmp_path / "out"
    cmd = args[:2] + [str(model_dir)] + args[2:] + ["--out", str(out), *_common(model_dir)]
    res = runner.invoke(app, cmd)
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split())
    assert not out.exists()


def test_drop_by_generation_objective_records_it_in_the_plan(model_dir, tmp_path):
    out = tmp_path / "kl"
    res = runner.invoke(
        app,
        [
            "prune",
            "drop",
            str(model_dir),
            "--target",
            "attn",
            "--n",
            "1",
            "--objective",
            "generation",
            "--search-evaluations",
            "3",
            "--score-windows",
            "2",
            "--out",
            str(out),
            *_common(model_dir),
        ],
    )
    assert res.exit_code == 0, res.output
    plan = json.loads((out / PLAN_FILE).read_text())
    assert plan["options"]["objective"] == "generation" and plan["scores"]["objective"] == "generation"
    assert plan["options"]["score_windows"] == 2
    assert plan["scores"]["search"]["evaluations"] == 3 and "kl" in plan["dropped_sublayers"][0]
    assert "objective" in res.output and "search" in res.output


def test_existing_output_and_unknown_model(model_dir, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "x").write_text("keep")
    res = runner.invoke(
        app,
        [
            "prune",
            "drop",
            str(model_dir),
            "--target",
            "attn",
            "--n",
            "1",
            "--out",
            str(out),
            *_common(model_dir),
        ],
    )
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert (out / "x").read_text() == "keep"
    res = runner.invoke(
        app,
        [
            "prune",
            "drop",
            "nobody/nothing-here",
            "--target",
            "attn",
            "--n",
            "1",
            "--out",
            str(tmp_path / "n"),
        ],
    )
    assert res.exit_code == 2 and "unknown model" in res.output
    assert not (tmp_path / "n").exists()


def test_too_short_calibration_is_refused(model_dir, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text(random_text(5))
    res = runner.invoke(
        app,
        [
            "prune",
            "drop",
            str(model_dir),
            "--target",
            "attn",
            "--n",
            "1",
            "--out",
            str(tmp_path / "o"),
            "--calib",
            str(short),
            "--seqlen",
            "16",
        ],
    )
    assert res.exit_code == 2 and "found 5 tokens" in " ".join(res.output.split())
    assert not (tmp_path / "o").exists()


def test_eval_and_compare(model_dir, tmp_path):
    from conftest import need_data

    need_data("wikitext2_tokens/test.txt")
    dense, pruned = tmp_path / "e-dense", tmp_path / "e-drop"
    res = runner.invoke(
        app, ["eval", str(model_dir), "--tasks", "wikitext2,arc_easy", "--limit", "2", "--out", str(dense)]
    )
    assert res.exit_code == 0, res.output
    drop_dir = tmp_path / "drop"
    assert (
        runner.invoke(
            app,
            [
                "prune",
                "drop",
                str(model_dir),
                "--target",
                "mlp",
                "--n",
                "2",
                "--out",
                str(drop_dir),
                *_common(model_dir),
            ],
        ).exit_code
        == 0
    )
    res = runner.invoke(
        app, ["eval", str(drop_dir), "--tasks", "wikitext2,arc_easy", "--limit", "2", "--out", str(pruned)]
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((pruned / "summary.json").read_text())
    assert summary["model"]["name"] == "Drop-2M" and set(summary["results"]) == {"wikitext2", "arc_easy"}
    assert len((pruned / "tasks" / "arc_easy.jsonl").read_text().splitlines()) == 2
    iv = summary["results"]["arc_easy"]["interval"]
    assert (
        iv["method"] == "wilson"
        and iv["n"] == 2
        and iv["low"] <= summary["results"]["arc_easy"]["score"] <= iv["high"]
    )
    ppl = summary["results"]["wikitext2"]
    assert ppl["interval"]["method"] == "bootstrap over windows" and ppl["interval"]["n"] == 2
    assert len((pruned / "tasks" / "wikitext2.jsonl").read_text().splitlines()) == 2  # one record per window
    res = runner.invoke(app, ["compare", str(dense), str(pruned), "--out", str(tmp_path / "table")])
    assert res.exit_code == 0, res.output
    assert "Drop-2M" in (tmp_path / "table.md").read_text()
    assert "paired against" in res.output and "McNemar" in res.output and "sign-flip" in res.output
    table = json.loads((tmp_path / "table.json").read_text())
    rows = {r["task"]: r for r in table["rows"]}
    mc = rows["arc_easy"]["paired"][1]
    assert mc["test"] == "exact McNemar" and mc["n"] == 2 and rows["arc_easy"]["paired"][0] is None
    assert rows["wikitext2"]["paired"][1]["test"] == "paired sign-flip test"
    assert "95% interval" in (tmp_path / "table.csv").read_text()
    res = runner.invoke(app, ["eval", str(model_dir), "--tasks", "nope", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "unknown task" in res.output


def test_choice_objective_without_multiple_choice_data_is_one_line_exit_2(model_dir, tmp_path, monkeypatch):
    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("PRUNELENS_DATA", str(empty))
    monkeypatch.chdir(empty)  # neither ./data nor ../shared/data exists here
    out = tmp_path / "out"
    res = runner.invoke(
        app,
        ["prune", "drop", str(model_dir), "--target", "attn", "--n", "1", "--objective", "choice"]
        + ["--out", str(out), *_common(model_dir)],
    )
    assert res.exit_code == 2, res.output
    assert "--choice-task arc_easy: no validation questions" in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert not out.exists()


def test_one_line_joins_a_data_error_listing():
    from prunelens.utils.cli_output import one_line

    msg = "could not find a.jsonl; looked in:\n  /x/a.jsonl\n  /y/a.jsonl\nSet PRUNELENS_DATA to a folder."
    assert (
        one_line(msg)
        == "could not find a.jsonl; looked in: /x/a.jsonl, /y/a.jsonl Set PRUNELENS_DATA to a folder."
    )
    assert one_line("plain") == "plain"


def test_an_internal_error_is_not_reported_as_bad_input(model_dir, monkeypatch):
    """A ValueError from inside the library is a bug of ours: it keeps its traceback (not exit 2)."""
    import prunelens.models.loading as loading

    def broken(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(loading, "load", broken)
    res = runner.invoke(app, ["info", str(model_dir)])
    assert res.exit_code != 2 and "boom" not in res.output
    assert isinstance(res.exception, ValueError) and str(res.exception) == "boom"


def test_every_input_error_is_one_line_exit_2(model_dir, monkeypatch):
    """Any InputError subclass raised below a command is caught in one place: one line, exit 2."""
    import prunelens.models.loading as loading

    def refused(*args, **kwargs):
        raise loading.ContextLengthError("the model reads at most 8 tokens\n(--seqlen 16 is longer)")

    monkeypatch.setattr(loading, "load", refused)
    res = runner.invoke(app, ["info", str(model_dir)])
    assert res.exit_code == 2, res.output
    assert res.output.strip() == "error: the model reads at most 8 tokens (--seqlen 16 is longer)"
    res = runner.invoke(app, ["info", str(model_dir), "--json"])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1


def test_unknown_dtype_is_bad_input(model_dir, tmp_path):
    res = runner.invoke(
        app, ["eval", str(model_dir), "--tasks", "wikitext2", "--dtype", "fp7", "--out", str(tmp_path / "e")]
    )
    assert res.exit_code == 2 and "unknown dtype 'fp7'" in res.output
