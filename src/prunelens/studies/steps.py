"""The unit runners: what each kind of unit does with the workbench (evaluate a task, analyse against the
dense model, the one-pass predictor, the case study), each storing its result before it returns."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch

from prunelens.studies.config import DENSE, StudyConfig, TrajectoriesConfig, TransitionsConfig
from prunelens.studies.units import Unit
from prunelens.studies.workbench import Workbench
from prunelens.utils.io import atomic_write_json

__all__ = ["RUNNERS", "study_prompts"]


def _run_eval(bench: Workbench, unit: Unit) -> dict[str, Any]:
    from prunelens.evaluation.runner import EvalSettings, run_task, store_task_result

    cfg = bench.cfg
    t = next(t for t in cfg.tasks if t.task == unit.task)
    settings = EvalSettings(
        limit=t.limit,
        seed=cfg.seed,
        batch_size=cfg.eval_batch_size,
        max_new_tokens=t.max_new_tokens or EvalSettings.max_new_tokens,  # unset: the evaluation default
        num_fewshot=t.num_fewshot,
    )
    _, tok = bench.dense
    out = bench.store.eval_dir(unit.variant)
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"results": {}}
    info = bench.info(unit.variant)
    summary["model"] = {
        "spec": cfg.model,
        "name": unit.variant,
        "parameters": info["parameters"],
        "plan": info["plan"],
    }
    with bench.active(unit.variant) as m:
        result = run_task(m, tok, unit.task, settings)
    store_task_result(out, result, summary)
    return {"score": result.score, "metric": result.main_metric}


def study_prompts(cfg: StudyConfig) -> list[tuple[str, str]]:
    """The fixed analysed prompt set: N GSM8K questions and N open questions (seeded)."""
    from prunelens.data.tasks import load_task

    want = cfg.analyses.prompts
    prompts: list[tuple[str, str]] = []
    for task, n in want.items():
        for ex in load_task(task, limit=int(n), seed=cfg.seed):
            text = ex.meta.get("question") or ex.prompt
            prompts.append((f"{task}/{ex.id}", text))
    return prompts


def _temperatures(cfg: StudyConfig) -> tuple[float, ...]:
    """The analysed temperatures (the transitions' own, or the default when transitions do not run)."""
    return (cfg.analyses.transitions or TransitionsConfig()).temperatures


def _analysed_tokens(cfg: StudyConfig) -> int:
    """Tokens decoded per analysed prompt (the trajectories' setting, or its default)."""
    return (cfg.analyses.trajectories or TrajectoriesConfig()).max_new_tokens


def _run_analysis(bench: Workbench, unit: Unit) -> dict[str, Any]:
    from prunelens.analysis.pipeline import AnalysisConfig, run_analysis
    from prunelens.data.tasks import load_task

    cfg = bench.cfg
    a = cfg.analyses
    model, tok = bench.dense
    mc_task = a.subspace.task if a.subspace else None
    mc = load_task(mc_task, limit=a.subspace.limit, seed=cfg.seed) if a.subspace else None
    acfg = AnalysisConfig(
        temperatures=_temperatures(cfg),
        max_new_tokens=_analysed_tokens(cfg),
        analyses=a.enabled,
        seed=cfg.seed,
        batch_size=min(cfg.batch_size, 8),
        scope=a.scope,
        positions=a.positions,
    )
    report = run_analysis(
        model,
        tok,
        [bench.variant(unit.variant)],
        study_prompts(cfg),
        acfg,
        out=bench.store.root / "analysis" / unit.variant,
        overwrite=True,
        dense_name=DENSE,
        mc_examples=mc,
        mc_task=mc_task,
        dense_cache=bench.shared,
    )
    return {"figures": len(report.figures)}


@torch.no_grad()
def _run_predictor(bench: Workbench, unit: Unit) -> dict[str, Any]:
    """Median ``Var_{i∼p}(Δz_i)/(2T²)`` (Theorem 3's KL estimate) and the exact KL, one teacher-forced pass.

    The sequences are the analysed prompts followed by the dense model's greedy continuation; both
    models read the same tokens, so this isolates the per-step perturbation without any decoding by
    the pruned model — a screen that costs two forward passes per variant.
    """
    import numpy as np

    from prunelens.analysis.metrics import kl, kl_estimate
    from prunelens.evaluation.decoding import format_prompt
    from prunelens.models.adapter import input_device

    cfg = bench.cfg
    model, tok = bench.dense
    T = float(_temperatures(cfg)[0])
    n_new = _analysed_tokens(cfg)
    device = input_device(model)
    key = ("predictor_sequences", n_new)
    if key not in bench.shared:  # the dense continuations are the same for every variant: decode them once
        seqs = []
        for _, text in study_prompts(cfg):
            ids = tok(format_prompt(tok, text), return_tensors="pt", add_special_tokens=False).input_ids.to(
                device
            )
            out = model.generate(ids, max_new_tokens=n_new, do_sample=False, pad_token_id=tok.pad_token_id)
            seqs.append((out, ids.shape[1]))
        bench.shared[key] = seqs
    seqs = bench.shared[key]
    est, exact = [], []
    variant = bench.variant(unit.variant)
    for ids, start in seqs:
        z_dense = model(ids, use_cache=False).logits[0, start - 1 : -1].float()
        with variant.active(model):
            z_pruned = model(ids, use_cache=False).logits[0, start - 1 : -1].float()
        est.append(kl_estimate(z_dense, z_pruned, T).cpu().numpy())
        exact.append(kl(z_dense, z_pruned, T).cpu().numpy())
    est_all, kl_all = np.concatenate(est), np.concatenate(exact)
    result = {
        "var_p_dz_over_2T2": float(np.median(est_all)),
        "kl": float(np.median(kl_all)),
        "mean_estimate": float(est_all.mean()),
        "mean_kl": float(kl_all.mean()),
        "steps": int(est_all.size),
        "temperature": T,
    }
    atomic_write_json(bench.store.root / "predictor" / f"{unit.variant}.json", result)
    return result


def _run_case_study(bench: Workbench, unit: Unit) -> dict[str, Any]:
    from prunelens.data.tasks import load_task
    from prunelens.evaluation.decoding import generate

    cfg = bench.cfg
    cs = cfg.case_study
    prompts = []
    for task in ("gsm8k", "nq_open"):
        for ex in load_task(task, limit=getattr(cs, task), seed=cfg.seed + 1):
            question = ex.meta.get("question") or ex.prompt
            target = ex.target if isinstance(ex.target, str) else " / ".join(ex.target)
            prompts.append({"id": ex.id, "task": task, "prompt": question, "target": target})
    model, tok = bench.dense
    texts = [p["prompt"] for p in prompts]
    n_new = cs.max_new_tokens
    with bench.active(unit.variant) as m:
        answers = generate(m, tok, texts, max_new_tokens=n_new)
    atomic_write_json(
        bench.store.root / "case_study" / f"{unit.variant}.json",
        {"prompts": prompts, "answers": answers, "max_new_tokens": n_new},
    )
    return {"answers": len(answers)}


RUNNERS: dict[str, Callable[[Workbench, Unit], dict[str, Any]]] = {
    "variant": lambda bench, unit: {"parameters": bench.build_variant(unit.variant)["parameters"]},
    "eval": _run_eval,
    "analysis": _run_analysis,
    "predictor": _run_predictor,
    "case_study": _run_case_study,
}
