"""Study config: defaults, validation errors that name the field, and unit fingerprints."""

from __future__ import annotations

import pytest
import yaml

from prunelens.studies.config import DEFAULT_CONFIG_YAML, StudyConfigError, load_config, parse_config
from prunelens.studies.runner import plan_units


def test_default_config_is_the_documented_study():
    cfg = load_config(None)
    assert [v.name for v in cfg.variants] == [
        "Full",
        "Control",
        "Drop-4A",
        "Drop-8A",
        "Drop-8A-KL",
        "Drop-4M",
        "Drop-8M",
        "Drop-4B",
        "Wanda-50%",
        "SparseGPT-2:4",
    ]
    kinds = {t.task for t in cfg.tasks}
    assert {"arc_easy", "piqa", "wikitext2", "boolq_retrieval", "gsm8k", "nq_open"} <= kinds
    # enough data for paired verdicts: ≥ 200 questions per multiple-choice task, ≥ 24 prompts per gen. task
    limits = {t.task: t.limit for t in cfg.tasks}
    assert limits["arc_easy"] >= 200 and limits["piqa"] >= 200
    assert limits["gsm8k"] >= 24 and limits["nq_open"] >= 24
    assert parse_config(yaml.safe_load(DEFAULT_CONFIG_YAML)).to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    "patch,field,allowed",
    [
        (
            {"variants": [{"name": "X", "drop": {"target": "heads", "n": 2}}]},
            "variants[0].drop.target",
            "attn, mlp, block, joint",
        ),
        (
            {"variants": [{"name": "X", "drop": {"target": "attn", "n": 0}}]},
            "variants[0].drop.n",
            "must be a positive integer (got 0)",
        ),
        (
            {"variants": [{"name": "X", "sparsify": {"method": "obs", "sparsity": 0.5}}]},
            "variants[0].sparsify.method",
            "magnitude, wanda, sparsegpt",
        ),
        (
            {"variants": [{"name": "X", "sparsify": {"method": "wanda", "sparsity": 1.5}}]},
            "variants[0].sparsify.sparsity",
            "[0, 1)",
        ),
        (
            {
                "variants": [
                    {
                        "name": "X",
                        "drop": {"target": "attn", "n": 2},
                        "sparsify": {"method": "wanda", "sparsity": 0.5},
                    }
                ]
            },
            "variants[0]",
            "exactly one",
        ),
        (
            {
                "variants": [
                    {"name": "X", "sparsify": {"method": "wanda", "sparsity": 0.5, "true_sequential": "yes"}}
                ]
            },
            "variants[0].sparsify.true_sequential",
            "true or false",
        ),
        (
            {"variants": [{"name": "X", "sparsify": {"method": "wanda", "sparsity": 0.5, "order": 1}}]},
            "variants[0].sparsify",
            "allowed: method, sparsity, pattern, true_sequential",
        ),
        (
            {
                "variants": [
                    {"name": "A", "drop": {"target": "attn", "n": 1}},
                    {"name": "A", "drop": {"target": "mlp", "n": 1}},
                ]
            },
            "variants",
            "unique",
        ),
        ({"tasks": [{"task": "arc_hard"}]}, "tasks[0].task", "arc_easy"),
        ({"tasks": [{"task": "arc_easy", "limit": -3}]}, "tasks[0].limit", "≥ 1"),
        (
            {"tasks": [{"task": "arc_easy", "shots": 3}]},
            "tasks[0]",
            "allowed: limit, max_new_tokens, num_fewshot, task",
        ),
        ({"dtype": "int4"}, "dtype", "float32, bfloat16, float16, auto"),
        (
            {"analyses": {"transitions": {"temperatures": [0]}}},
            "analyses.transitions.temperatures",
            "positive",
        ),
        ({"colour": "blue"}, "(top level)", "allowed:"),
        (
            {"variants": [{"name": "X", "drop": {"target": "attn", "n": 2, "objective": "loss"}}]},
            "variants[0].drop.objective",
            "hidden, generation, choice",
        ),
        (
            {"variants": [{"name": "X", "drop": {"target": "attn", "n": 2, "search_budget": 10}}]},
            "variants[0].drop.search_budget",
            "use objective generation or choice",
        ),
        (
            {
                "variants": [
                    {
                        "name": "X",
                        "drop": {"target": "attn", "n": 2, "objective": "generation", "search_budget": 0},
                    }
                ]
            },
            "variants[0].drop.search_budget",
            "positive number of seconds",
        ),
        (
            {
                "variants": [
                    {
                        "name": "X",
                        "drop": {"target": "attn", "n": 2, "objective": "choice", "estimator": "fisher"},
                    }
                ]
            },
            "variants[0].drop.estimator",
            "use objective generation",
        ),
        (
            {
                "variants": [
                    {
                        "name": "X",
                        "drop": {"target": "attn", "n": 2, "objective": "choice", "choice_task": "gsm8k"},
                    }
                ]
            },
            "variants[0].drop.choice_task",
            "multiple-choice task",
        ),
        (
            {"variants": [{"name": "X", "drop": {"target": "attn", "n": 2, "order": 1}}]},
            "variants[0].drop",
            "allowed: target, n, iterative, window, objective",
        ),
        (
            {"variants": [{"name": "C", "control": {"round_to": "int8"}}]},
            "variants[0].control.round_to",
            "auto, bfloat16, float16",
        ),
        (
            {"variants": [{"name": "C", "control": {"round_to": "auto"}, "seed": 1}]},
            "variants[0].seed",
            "no seed",
        ),
        (
            {
                "variants": [
                    {"name": "C", "control": {"round_to": "auto"}, "drop": {"target": "attn", "n": 1}}
                ]
            },
            "variants[0]",
            "exactly one of 'drop', 'sparsify' or 'control'",
        ),
        (
            {"variants": [{"name": "X", "drop": {"target": "attn", "n": 1}, "seed": -1}]},
            "variants[0].seed",
            "≥ 0",
        ),
    ],
)
def test_invalid_configs_name_the_field(patch, field, allowed):
    with pytest.raises(StudyConfigError) as err:
        parse_config(patch)
    msg = str(err.value)
    assert f"'{field}'" in msg and allowed in msg


def test_sparsify_variants_spell_out_their_calibration_order():
    """The method's default is written into the variant,
    so a changed default re-runs the variant on resume."""
    cfg = load_config(None)
    by_name = {v.name: v.sparsify for v in cfg.variants if v.sparsify}
    assert (
        by_name["Wanda-50%"]["true_sequential"] is True
        and by_name["SparseGPT-2:4"]["true_sequential"] is False
    )
    explicit = parse_config(
        {
            "variants": [
                {"name": "W", "sparsify": {"method": "wanda", "sparsity": 0.5, "true_sequential": False}}
            ]
        }
    )
    assert next(v for v in explicit.variants if v.name == "W").sparsify["true_sequential"] is False


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(StudyConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("variants: [\n")
    with pytest.raises(StudyConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_a_changed_config_invalidates_only_what_it_affects():
    base = yaml.safe_load(DEFAULT_CONFIG_YAML)
    before = {u.id: u.fingerprint for u in plan_units(parse_config(base))}
    changed = yaml.safe_load(DEFAULT_CONFIG_YAML)
    changed["tasks"][0]["limit"] = 99  # arc_easy only
    changed["variants"][2]["drop"]["n"] = 7  # Drop-8A only
    after = {u.id: u.fingerprint for u in plan_units(parse_config(changed))}
    differ = sorted(k for k in before if before[k] != after.get(k))
    assert all(k.startswith("eval/") and k.endswith("/arc_easy") or "/Drop-8A" in k for k in differ)
    assert "eval/Full/arc_easy" in differ and "variant/Drop-8A" in differ and "analysis/Drop-8A" in differ
    assert "eval/Full/gsm8k" not in differ and "variant/Drop-4A" not in differ
    # calibration affects every pruned variant but not the dense one
    changed = yaml.safe_load(DEFAULT_CONFIG_YAML)
    changed["calibration"]["nsamples"] = 8
    after = {u.id: u.fingerprint for u in plan_units(parse_config(changed))}
    assert after["eval/Full/arc_easy"] == before["eval/Full/arc_easy"]
    assert after["eval/Drop-4A/arc_easy"] != before["eval/Drop-4A/arc_easy"]


def test_study_command_overrides_model_dtype_and_device(tmp_path):
    from typer.testing import CliRunner

    from prunelens.cli import app

    out = tmp_path / "s"
    res = CliRunner().invoke(app, ["study", "--out", str(out), "--device", "gpu"])
    assert res.exit_code == 2 and "device" in res.output and "cuda:N" in res.output and not out.exists()
    res = CliRunner().invoke(app, ["study", "--out", str(out), "--dtype", "int8"])
    assert res.exit_code == 2 and "dtype" in res.output and "bfloat16" in res.output and not out.exists()
    cfg = parse_config({**yaml.safe_load(DEFAULT_CONFIG_YAML), "device": "cuda:1", "dtype": "bfloat16"})
    assert (cfg.device, cfg.dtype) == ("cuda:1", "bfloat16")


def test_partial_nested_blocks_take_the_printed_defaults():
    """A nested block is merged field by field with the defaults --print-config shows (no second set)."""
    printed = yaml.safe_load(DEFAULT_CONFIG_YAML)
    cfg = parse_config(
        {
            "analyses": {"trajectories": {}, "subspace": {"task": "piqa"}},
            "calibration": {"nsamples": 4},
            "case_study": {"gsm8k": 1},
        }
    )
    assert cfg.analyses.trajectories.max_new_tokens == printed["analyses"]["trajectories"]["max_new_tokens"]
    assert (
        cfg.analyses.subspace.limit == printed["analyses"]["subspace"]["limit"]
        and cfg.analyses.subspace.task == "piqa"
    )
    assert cfg.analyses.prompts == printed["analyses"]["prompts"]
    assert cfg.analyses.enabled == ("trajectories", "subspace")  # listed analyses run, the others do not
    assert cfg.calibration.seqlen == printed["calibration"]["seqlen"] and cfg.calibration.nsamples == 4
    assert (
        cfg.case_study.max_new_tokens == printed["case_study"]["max_new_tokens"] and cfg.case_study.gsm8k == 1
    )
    assert parse_config({"analyses": {"scope": "all"}}).analyses.enabled == ("transitions",)
    assert parse_config(None).analyses.enabled == ("transitions", "trajectories", "subspace")
    # what goes to disk parses back to the same config (the runner re-reads it in every worker)
    assert parse_config(cfg.to_dict()).to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"analyses": {"trajectories": {"max_new_tokens": 0}}}, "analyses.trajectories.max_new_tokens"),
        ({"analyses": {"subspace": {"task": "gsm8k"}}}, "analyses.subspace.task"),
        ({"analyses": {"subspace": {"tsk": "piqa"}}}, "analyses.subspace"),
        ({"case_study": {"max_new_tokens": 0}}, "case_study.max_new_tokens"),
        ({"case_study": {"mmlu": 3}}, "case_study"),
        ({"calibration": {"seqlen": 4}}, "calibration.seqlen"),
    ],
)
def test_nested_fields_are_validated(patch, field):
    with pytest.raises(StudyConfigError, match=f"'{field}'"):
        parse_config(patch)
