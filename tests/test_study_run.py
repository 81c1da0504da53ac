"""A whole study on a tiny model: every unit runs, re-running resumes, Ray's local cluster runs the same
units in worker processes and retries a failed one, and the report is built."""

from __future__ import annotations

import json

import pytest
import yaml

from prunelens.models.tiny import tiny_model
from prunelens.studies.config import parse_config
from prunelens.studies.runner import FAULT_ENV, plan_units, run_study
from prunelens.utils.io import OutputExistsError

from conftest import need_data


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "A", "B", "C", "D", "Answer", ":", "."])}
    for i in range(256 - len(vocab)):
        vocab[f"w{i}"] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tinymodel")
    tiny_model("llama").save_pretrained(d)
    _tokenizer().save_pretrained(d)
    return d


def _config(model_dir):
    return parse_config(
        {
            "model": str(model_dir),
            "calibration": {"source": "c4", "nsamples": 2, "seqlen": 32},
            "variants": [
                {"name": "Control", "control": {"round_to": "auto"}},
                {"name": "Drop-1A", "drop": {"target": "attn", "n": 1}},
                {"name": "Mag-50%", "sparsify": {"method": "magnitude", "sparsity": 0.5}},
            ],
            "tasks": [
                {"task": "arc_easy", "limit": 2},
                {"task": "wikitext2", "limit": 1},
                {"task": "gsm8k", "limit": 2, "max_new_tokens": 4},
            ],
            "batch_size": 2,
            "analyses": {
                "prompts": {"gsm8k": 1, "nq_open": 1},
                "transitions": {"temperatures": [1.0]},
                "trajectories": {"max_new_tokens": 3},
                "subspace": {"task": "arc_easy", "limit": 2},
            },
            "case_study": {"gsm8k": 1, "nq_open": 1, "max_new_tokens": 4},
        }
    )


@pytest.mark.slow
def test_local_study_runs_resumes_and_reports(tiny_dir, tmp_path):
    need_data("c4/c4_demo.json")
    cfg = _config(tiny_dir)
    seen = []
    run_study(cfg, tmp_path / "s", report=lambda u, s, cached: seen.append((u, cached)))
    ids = [u.id for u in plan_units(cfg)]
    assert [u for u, c in seen if not c] == ids
    for name in ("Full", "Control", "Drop-1A", "Mag-50%"):
        summary = json.loads((tmp_path / f"s/eval/{name}/summary.json").read_text())
        assert set(summary["results"]) == {"arc_easy", "wikitext2", "gsm8k"}
    assert (tmp_path / "s/variants/Mag-50%/checkpoint/model.safetensors").exists()
    # the control is the dense model with its weights rounded to bfloat16: no checkpoint, no calibration
    control = json.loads((tmp_path / "s/variants/Control/info.json").read_text())
    assert control["plan"] is None and control["control"]["round_to"] == "bfloat16"
    assert (
        control["control"]["changed_tensors"] > 0
        and not (tmp_path / "s/variants/Control/checkpoint").exists()
    )
    pruned = {"Control", "Drop-1A", "Mag-50%"}
    assert set(json.loads((tmp_path / "s/predictor.json").read_text())) == pruned
    assert set(json.loads((tmp_path / "s/eval/fidelity.json").read_text())) == pruned
    # a second run does nothing but report what is cached
    seen.clear()
    run_study(cfg, tmp_path / "s", report=lambda u, s, cached: seen.append((u, cached)))
    assert all(c for _, c in seen) and len(seen) == len(ids)
    # another config is refused without --overwrite; with it, only the changed units re-run
    raw = yaml.safe_load(json.dumps(json.loads((tmp_path / "s/study.json").read_text())["config"]))
    raw["tasks"][0]["limit"] = 3
    changed = parse_config(raw)
    with pytest.raises(OutputExistsError):
        run_study(changed, tmp_path / "s")
    seen.clear()
    run_study(changed, tmp_path / "s", overwrite=True, report=lambda u, s, cached: seen.append((u, cached)))
    assert sorted(u for u, c in seen if not c) == [
        "eval/Control/arc_easy",
        "eval/Drop-1A/arc_easy",
        "eval/Full/arc_easy",
        "eval/Mag-50%/arc_easy",
    ]

    from prunelens.report import build_report, load_study

    html = build_report(tmp_path / "s").read_text()
    assert "Drop-1A" in html and "Mag-50%" in html and "data:image/png;base64," in html
    # every score carries its interval, every variant a paired test against Full on the same examples
    table = json.loads((tmp_path / "s" / "report" / "table.json").read_text())
    for row in table["rows"]:
        assert all(
            iv is not None and iv["low"] <= v <= iv["high"] for iv, v in zip(row["intervals"], row["scores"])
        )
        assert row["paired"][0] is None and all(c is not None and c["n"] >= 1 for c in row["paired"][1:])
    assert html.count('class="ci"') >= 2 * len(table["rows"]) and "McNemar" in html
    for row in table["rows"]:
        mdd = row["min_detectable_difference"]
        if row["kind"] == "mc":  # accuracies: the smallest paired difference this n detects
            assert mdd is not None and 0 < mdd["value"] <= 1 and mdd["n"] >= 1
        elif row["kind"] in ("ppl", "retrieval"):
            assert mdd is None
    assert "detects ≥" in html
    # the summary figure's error bars: every variant carries its intervals, and the caption says so
    from prunelens.report.tables import build_tables, variant_facts

    st = load_study(tmp_path / "s")
    facts = {f.name: f for f in variant_facts(st, build_tables(st))}
    for name in ("Control", "Drop-1A", "Mag-50%"):
        lo, hi = facts[name].retained_nongen_interval
        assert lo <= facts[name].retained_nongen <= hi
        lo, hi = facts[name].rouge_l_interval
        assert 0 <= lo <= facts[name].rouge_l <= hi <= 1
    assert "Bars: 95% intervals" in html
    # the report reads the analysis summaries the run really wrote: every analysis contributes its numbers
    headline = load_study(tmp_path / "s").analysis
    assert set(headline) == pruned
    for name, a in headline.items():
        assert None not in (a.cos_p, a.kl_transitions, a.tf_kl, a.fr_kl, a.choice_flip_rate)
        # bfloat16 rounding may not change a single greedy token in 3 steps: then there is no divergence step
        assert a.first_divergence is not None or name == "Control"


@pytest.mark.slow
def test_ray_local_cluster_runs_units_once_and_retries(tiny_dir, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    need_data("c4/c4_demo.json")
    cfg = _config(tiny_dir)
    monkeypatch.setenv(FAULT_ENV, "eval/Drop-1A/gsm8k")
    ran = []
    run_study(cfg, tmp_path / "r", engine="ray", workers=2, report=lambda u, s, c: ran.append(u))
    ids = [u.id for u in plan_units(cfg)]
    assert (tmp_path / "r/units/eval__Drop-1A__gsm8k.json.failed-once").exists()
    markers = sorted(p.name for p in (tmp_path / "r/units").glob("*.json"))
    assert len(markers) == len(ids)  # every unit finished, the failed one after Ray's retry
    # the retried group skipped what its failed attempt had already stored: no unit ran twice
    assert len(ran) == len(set(ran)) and "eval/Drop-1A/gsm8k" in ran
    assert "variant/Drop-1A" not in ran and "eval/Drop-1A/arc_easy" not in ran
    assert set(ran) | {"variant/Drop-1A", "eval/Drop-1A/arc_easy", "eval/Drop-1A/wikitext2"} == set(ids)
    import ray

    ray.shutdown()


def test_impossible_drops_and_unknown_models_are_refused_before_anything_is_written(tiny_dir, tmp_path):
    from typer.testing import CliRunner

    from prunelens.cli import app
    from prunelens.prune.drop import PruneConfigError

    raw = _config(tiny_dir).to_dict()
    raw["variants"] = [{"name": "Drop-9A", "drop": {"target": "attn", "n": 9}}]  # the tiny model has 2 layers
    with pytest.raises(PruneConfigError, match="variant Drop-9A: cannot drop 9"):
        run_study(parse_config(raw), tmp_path / "s")
    assert not (tmp_path / "s").exists()
    with pytest.raises(PruneConfigError, match="variant Drop-9A"):  # the Ray engine reads the config only
        run_study(parse_config(raw), tmp_path / "s", engine="ray")
    assert not (tmp_path / "s").exists()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    res = CliRunner().invoke(app, ["study", str(cfg), "--out", str(tmp_path / "s")])
    assert res.exit_code == 2 and "variant Drop-9A" in res.output and not (tmp_path / "s").exists()
    res = CliRunner().invoke(
        app, ["study", str(cfg), "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "s")]
    )
    assert res.exit_code == 2 and "no such model" in res.output and not (tmp_path / "s").exists()
