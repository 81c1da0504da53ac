"""Assemble the per-unit files of a study into the study-level ones the report reads, and aggregate the
generation fidelity (every variant's greedy outputs against the dense ones, and against the control's)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prunelens.studies.config import DENSE, StudyConfig
from prunelens.utils.io import atomic_write_json

__all__ = ["collect", "fidelity_against_control"]


def collect(root: str | Path, cfg: StudyConfig) -> None:
    """Assemble the per-unit files into the study-level ones the report reads.

    ``predictor.json`` ({variant: predictor}), ``case_study.json`` (prompts + answers per variant) and
    ``eval/fidelity.json`` ({variant: {task: metrics}}: every generative task's outputs against Full's,
    paired by example id — exact match, common token prefix, ROUGE-L, repeated 4-gram rate).
    """
    from prunelens.evaluation.fidelity import fidelity
    from prunelens.evaluation.runner import load_records

    root = Path(root)
    names = [v.name for v in cfg.variants]
    predictor = {
        n: json.loads((root / "predictor" / f"{n}.json").read_text())
        for n in names
        if (root / "predictor" / f"{n}.json").exists()
    }
    atomic_write_json(root / "predictor.json", predictor)
    cases = {
        n: json.loads((root / "case_study" / f"{n}.json").read_text())
        for n in names
        if (root / "case_study" / f"{n}.json").exists()
    }
    if DENSE in cases:
        atomic_write_json(
            root / "case_study.json",
            {"prompts": cases[DENSE]["prompts"], "answers": {n: c["answers"] for n, c in cases.items()}},
        )
    gen_tasks = [t.task for t in cfg.tasks if _kind(t.task) == "gen"]
    fid: dict[str, dict[str, Any]] = {}
    per_prompt: dict[str, dict[str, dict[str, float]]] = {}
    for task in gen_tasks:
        dense = load_records(root / "eval" / DENSE, task)
        if not dense:
            continue
        for n in names[1:]:
            pruned = load_records(root / "eval" / n, task)
            if len(pruned) != len(dense):
                continue
            res = fidelity(dense, pruned, task=task)
            m = res.metrics
            fid.setdefault(n, {})[task] = {
                **m,
                "rouge_l": m.get("rouge_l_mean"),
                "prefix_tokens": m.get("prefix_tokens_mean"),
                "repeat_ngram_rate": m.get("pruned_rep4_mean"),
            }
            per_prompt.setdefault(n, {})[task] = {str(r["id"]): float(r["rouge_l"]) for r in res.records}
    atomic_write_json(root / "eval" / "fidelity.json", fid)
    control = next((v.name for v in cfg.variants if v.is_control), None)
    atomic_write_json(
        root / "eval" / "fidelity_vs_control.json", fidelity_against_control(per_prompt, control)
    )


def fidelity_against_control(
    per_prompt: dict[str, dict[str, dict[str, float]]], control: str | None, seed: int = 0
) -> dict[str, Any]:
    """Every variant's per-prompt ROUGE-L against the dense outputs, paired with the control's on the same
    prompts: per task the paired bootstrap (variant − control), and the pooled ratio variant / control
    with its interval. The control's drift is the noise floor of greedy decoding, so this, not the
    distance from a perfect 1, says whether a variant generates differently from the dense model."""
    from prunelens.evaluation.uncertainty import compare_paired, pooled_retained

    if control is None or control not in per_prompt:
        return {}
    floor = per_prompt[control]
    out: dict[str, Any] = {}
    for name, tasks in per_prompt.items():
        if name == control:
            continue
        entry: dict[str, Any] = {"control": control, "tasks": {}, "control_rouge_l": {}}
        pairs = []
        for task, scores in tasks.items():
            ids = [i for i in floor.get(task, {}) if i in scores]
            if not ids:
                continue
            c = [floor[task][i] for i in ids]
            v = [scores[i] for i in ids]
            entry["tasks"][task] = compare_paired(c, v, seed=seed).to_dict()
            entry["control_rouge_l"][task] = sum(c) / len(c)
            pairs.append((c, v))
        if not pairs:
            continue
        pooled = pooled_retained(pairs, seed=seed)
        entry["ratio"], entry["ratio_interval"] = (pooled[0], list(pooled[1])) if pooled else (None, None)
        out[name] = entry
    return out


def _kind(task: str) -> str:
    from prunelens.evaluation.runner import task_kind

    return task_kind(task)
