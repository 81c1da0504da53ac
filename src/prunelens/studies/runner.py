"""Run a study: variants × evaluations × analyses, each a unit stored as soon as it is done.

Units, per variant ``V`` (grouped so one process builds ``V`` once and runs all of its units):

* ``variant/V``     — the prune plan (drops: plan JSON only; sparsity: a saved checkpoint);
* ``eval/V/TASK``   — one evaluation task (``eval/V/`` has the ``prunelens eval`` layout);
* ``analysis/V``    — transitions, trajectories and option subspace against the dense model;
* ``predictor/V``   — the cheap screen: ``Var_p(Δz)/(2T²)`` from one teacher-forced pass;
* ``case_study/V``  — fixed GSM8K and open questions answered by the variant.

A unit is skipped when ``units/<unit>.json`` holds the fingerprint of the config fields it depends
on, so re-running resumes, and an edited config re-runs only what it changes. Every file is written
atomically; a killed run loses at most the unit in progress.

Engines: ``local`` runs the groups one after another in this process; ``ray`` hands each variant group
to a Ray task (``ray.init()`` starts a local cluster of worker processes, or joins a running cluster
with ``--ray-address``); a failed group is retried by Ray and skips the units it already stored.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prunelens import __version__
from prunelens.studies.config import DENSE, StudyConfig, TrajectoriesConfig, TransitionsConfig, parse_config
from prunelens.utils.io import OutputExistsError, atomic_write_json

NON_DENSE_DEPS = ("calibration",)


@dataclass(frozen=True)
class Unit:
    id: str
    kind: str
    variant: str
    task: str | None
    fingerprint: str

    @property
    def filename(self) -> str:
        return self.id.replace("/", "__").replace(":", "_") + ".json"


def plan_units(cfg: StudyConfig) -> list[Unit]:
    """Every unit of the study, grouped by variant (Full first)."""
    units: list[Unit] = []
    for v in cfg.variants:
        uses_calibration = not (v.is_dense or v.is_control)
        base = ["model", "dtype", "seed", f"variant:{v.name}"] + (
            list(NON_DENSE_DEPS) if uses_calibration else []
        )
        units.append(Unit(f"variant/{v.name}", "variant", v.name, None, cfg.fingerprint(*base)))
        for t in cfg.tasks:
            units.append(
                Unit(
                    f"eval/{v.name}/{t.task}",
                    "eval",
                    v.name,
                    t.task,
                    cfg.fingerprint(*base, "eval_batch_size", f"task:{t.task}"),
                )
            )
        if not v.is_dense:
            units.append(
                Unit(f"analysis/{v.name}", "analysis", v.name, None, cfg.fingerprint(*base, "analyses"))
            )
            units.append(
                Unit(f"predictor/{v.name}", "predictor", v.name, None, cfg.fingerprint(*base, "analyses"))
            )
        units.append(
            Unit(f"case_study/{v.name}", "case_study", v.name, None, cfg.fingerprint(*base, "case_study"))
        )
    return units


class Store:
    """The study directory: unit markers, results, and the study record."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def marker(self, unit: Unit) -> Path:
        return self.root / "units" / unit.filename

    def done(self, unit: Unit) -> bool:
        path = self.marker(unit)
        if not path.exists():
            return False
        try:
            return json.loads(path.read_text()).get("fingerprint") == unit.fingerprint
        except json.JSONDecodeError:
            return False

    def mark(self, unit: Unit, seconds: float, **extra: Any) -> None:
        atomic_write_json(
            self.marker(unit), {"unit": unit.id, "fingerprint": unit.fingerprint, "seconds": seconds, **extra}
        )

    def variant_dir(self, name: str) -> Path:
        return self.root / "variants" / name

    def eval_dir(self, name: str) -> Path:
        return self.root / "eval" / name


# --- building and loading variants -------------------------------------------------------------------


class Workbench:
    """One process's view of the study: the dense model (loaded once) and the current variant."""

    def __init__(self, cfg: StudyConfig, store: Store):
        self.cfg = cfg
        self.store = store
        self._dense = None
        self._calibrations: dict[int, Any] = {}
        self._controls: dict[str, Any] = {}
        #: dense-model results that every variant's units reuse (decoded prompts, teacher-forced states)
        self.shared: dict[Any, Any] = {}

    @property
    def dense(self):
        if self._dense is None:
            from prunelens.models.loading import load

            kw = {"device_map": "auto"} if self.cfg.device == "auto" else {"device": self.cfg.device}
            self._dense = load(self.cfg.model, dtype=self.cfg.dtype, **kw)
        return self._dense

    @property
    def calibration(self):
        """The calibration windows at the study's seed."""
        return self.calibration_for(self.cfg.seed)

    def calibration_for(self, seed: int):
        """The calibration windows drawn with ``seed`` (each seed read once per process)."""
        if seed not in self._calibrations:
            from prunelens.data.calibration import get_calibration

            c = self.cfg.calibration
            self._calibrations[seed] = get_calibration(self.dense[1], c.source, c.nsamples, c.seqlen, seed)
        return self._calibrations[seed]

    def control(self, name: str):
        """The control variant ``name``: every weight rounded to the configured format and back, held as
        overrides of the dense weights (built once per process)."""
        if name not in self._controls:
            from prunelens.analysis.variants import Variant
            from prunelens.models.perturb import resolve_rounding, rounded_overrides

            spec = next(v for v in self.cfg.variants if v.name == name)
            model, _ = self.dense
            fmt = resolve_rounding(spec.control["round_to"], next(model.parameters()).dtype)
            self._controls[name] = Variant(
                name=name,
                source=f"control: every weight rounded to {fmt}",
                overrides=rounded_overrides(model, fmt),
            )
        return self._controls[name]

    def build_variant(self, name: str) -> dict[str, Any]:
        """Prune (or not) and store the variant's plan / checkpoint; return its info."""
        from prunelens.models.adapter import param_count
        from prunelens.prune.drop import drop
        from prunelens.prune.save import save_pruned
        from prunelens.prune.sparsify import sparsify

        spec = next(v for v in self.cfg.variants if v.name == name)
        model, tok = self.dense
        out = self.store.variant_dir(name)
        out.mkdir(parents=True, exist_ok=True)
        plan = None
        extra: dict[str, Any] = {}
        seed = spec.seed if spec.seed is not None else self.cfg.seed
        if spec.control is not None:
            v = self.control(name)
            params = param_count(model)
            extra["control"] = {
                "round_to": v.source.rsplit(" ", 1)[-1],
                "changed_tensors": len(v.overrides),
            }
        elif spec.drop is not None:
            calibration = self.calibration_for(seed)
            pruned = copy.deepcopy(model)
            d = spec.drop
            choices = None
            if d.get("objective") == "choice":
                from prunelens.analysis.subspace import choice_set

                choices = choice_set(
                    tok, d.get("choice_task", "arc_easy"), limit=d.get("choice_limit", 64), seed=seed
                )
            plan = drop(
                pruned,
                calibration,
                target=d["target"],
                n=d["n"],
                iterative=d.get("iterative", False),
                window=d.get("window", False),
                batch_size=self.cfg.batch_size,
                base_model=self.cfg.model,
                objective=d.get("objective", "hidden"),
                temperature=float(d.get("temperature", 1.0)),
                choices=choices,
                search_budget=d.get("search_budget"),
                search_evaluations=d.get("search_evaluations"),
                estimator=d.get("estimator", "exact"),
                seed=seed,
                score_windows=d.get("score_windows"),
            )
            params = plan.params_after
            if spec.repair is not None:
                plan = self._repair(spec, pruned, plan, out)
            else:
                plan.save(out)
            del pruned
        elif spec.sparsify is not None:
            calibration = self.calibration_for(seed)
            pruned = copy.deepcopy(model)
            s = spec.sparsify
            allocation = s.get("allocation", "uniform")
            calibrate = s["method"] != "magnitude" or allocation != "uniform"
            plan = sparsify(
                pruned,
                calibration if calibrate else None,
                method=s["method"],
                sparsity=s.get("sparsity"),
                pattern=s.get("pattern"),
                batch_size=self.cfg.batch_size,
                base_model=self.cfg.model,
                true_sequential=s.get("true_sequential"),
                allocation=allocation,
                allocation_lambda=s.get("allocation_lambda"),
            )
            params = plan.params_after
            if spec.repair is not None:
                plan = self._repair(spec, pruned, plan, out)
            else:
                save_pruned(pruned, tok, plan, out / "checkpoint", overwrite=True)
            del pruned
        else:
            params = param_count(model)
        info = {
            "name": name,
            "parameters": params,
            "plan": plan.to_dict() if plan is not None else None,
            **extra,
        }
        atomic_write_json(out / "info.json", info)
        return info

    def _repair(self, spec, pruned, plan, out: Path):
        """Repair the freshly pruned ``pruned`` towards the dense model as ``spec.repair`` says and save the
        checkpoint (its plan records the repair; the loss curves go beside it). The training state lives in
        ``out/repair-state`` until the checkpoint is written, so an interrupted study resumes the repair."""
        import shutil

        from prunelens.data.calibration import split_calibration
        from prunelens.distill.settings import RepairSettings
        from prunelens.distill.trainer import repair_model, write_log
        from prunelens.prune.save import save_pruned

        model, tok = self.dense
        r = dict(spec.repair)
        nsamples, seqlen = r.pop("nsamples"), r.pop("seqlen", self.cfg.calibration.seqlen)
        settings = RepairSettings(**r)
        train, held = split_calibration(
            tok, self.cfg.calibration.source, nsamples, seqlen, self.cfg.seed, settings.heldout
        )
        state = out / "repair-state"
        result = repair_model(
            pruned, model, train, held, settings, plan=plan, teacher_name=self.cfg.model, state_dir=state
        )
        save_pruned(result.model, tok, result.plan, out / "checkpoint", overwrite=True)
        write_log(result.log, out)
        shutil.rmtree(state, ignore_errors=True)
        return result.plan

    def variant(self, name: str):
        """The analysis :class:`~prunelens.analysis.variants.Variant` of ``name`` on the dense weights."""
        from prunelens.analysis.variants import resolve_variant
        from prunelens.plan import PrunePlan

        spec = next(v for v in self.cfg.variants if v.name == name)
        if spec.control is not None:
            return self.control(name)
        model, tok = self.dense
        out = self.store.variant_dir(name)
        if spec.drop is not None and spec.repair is None:  # a drop alone: the plan is all there is
            v = resolve_variant(model, PrunePlan.load(out), tokenizer=tok)
        else:
            v = resolve_variant(model, str(out / "checkpoint"), tokenizer=tok)
        v.name = name
        return v

    @contextmanager
    def active(self, name: str) -> Iterator[Any]:
        """The dense model, behaving as variant ``name`` inside the block (dropped sublayers swapped for
        no-ops, sparsified weights swapped in; a dropped block is both of its sublayers dropped, which is
        the same computation) and restored afterwards: no second copy of the unchanged weights."""
        model, _ = self.dense
        spec = next(v for v in self.cfg.variants if v.name == name)
        if spec.is_dense:
            yield model
            return
        with self.variant(name).active(model) as m:
            yield m

    def info(self, name: str) -> dict[str, Any]:
        return json.loads((self.store.variant_dir(name) / "info.json").read_text())


# --- the units ---------------------------------------------------------------------------------------


def _run_eval(bench: Workbench, unit: Unit) -> dict[str, Any]:
    from prunelens.evaluation.runner import EvalSettings, run_task, store_task_result

    cfg = bench.cfg
    t = next(t for t in cfg.tasks if t.task == unit.task)
    settings = EvalSettings(
        limit=t.limit,
        seed=cfg.seed,
        batch_size=cfg.eval_batch_size,
        max_new_tokens=t.max_new_tokens or 192,
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


FAULT_ENV = "PRUNELENS_FAULT_ONCE"


def _maybe_fail(store: Store, unit: Unit) -> None:
    """Fault injection for testing retries: ``PRUNELENS_FAULT_ONCE=<unit id>`` fails that unit once."""
    import os

    if os.environ.get(FAULT_ENV) == unit.id:
        flag = store.root / "units" / (unit.filename + ".failed-once")
        if not flag.exists():
            flag.parent.mkdir(parents=True, exist_ok=True)
            flag.write_text("injected failure\n")
            raise RuntimeError(f"injected failure in {unit.id} ({FAULT_ENV})")


def run_group(
    root: str,
    cfg_dict: dict[str, Any],
    variant: str,
    report: Callable[[str, float, bool], None] | None = None,
    bench: Workbench | None = None,
) -> list[str]:
    """Run every unfinished unit of one variant (in this process); return the ids of units run. ``bench``:
    a workbench to share between groups run in one process (the dense model and calibration load once)."""
    cfg = parse_config({k: v for k, v in cfg_dict.items()})
    store = Store(root)
    bench = bench or Workbench(cfg, store)
    ran = []
    for unit in [u for u in plan_units(cfg) if u.variant == variant]:
        if store.done(unit):
            if report:
                report(unit.id, 0.0, True)
            continue
        _maybe_fail(store, unit)
        t0 = time.perf_counter()
        extra = RUNNERS[unit.kind](bench, unit)
        seconds = time.perf_counter() - t0
        store.mark(unit, seconds, result=extra)
        ran.append(unit.id)
        if report:
            report(unit.id, seconds, False)
    return ran


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


def _config_for_disk(cfg: StudyConfig) -> dict[str, Any]:
    d = cfg.to_dict()
    d["variants"] = [v for v in d["variants"] if v["name"] != DENSE]
    return d


def prepare_study_dir(cfg: StudyConfig, out: str | Path, overwrite: bool) -> Store:
    """Create or reopen a study directory; refuse one written by another config unless ``overwrite``."""
    out = Path(out)
    record = out / "study.json"
    if out.exists() and any(out.iterdir()):
        if not record.exists():
            if not overwrite:
                raise OutputExistsError(
                    f"{out} exists, is not empty and is not a prunelens study (pass --overwrite)"
                )
        else:
            old = json.loads(record.read_text()).get("config")
            if old != _config_for_disk(cfg) and not overwrite:
                raise OutputExistsError(
                    f"{out} holds a study with another config; "
                    "pass --overwrite to re-run what the new config changes "
                    "(finished units whose inputs are unchanged are kept)"
                )
    out.mkdir(parents=True, exist_ok=True)
    import torch as _torch
    import transformers

    atomic_write_json(
        record,
        {
            "config": _config_for_disk(cfg),
            "versions": {
                "prunelens": __version__,
                "torch": _torch.__version__,
                "transformers": transformers.__version__,
            },
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )
    return Store(out)


def check_variants(cfg: StudyConfig, num_layers: int | None) -> None:
    """Refuse drop counts the model cannot satisfy before any unit runs (:class:`PruneConfigError`, naming
    the variant). ``num_layers=None`` (not known without loading the model) checks nothing."""
    from prunelens.prune.drop import PruneConfigError, validate_drop

    if not num_layers:
        return
    for v in cfg.variants:
        if v.drop is not None:
            try:
                validate_drop(int(num_layers), v.drop["target"], int(v.drop["n"]))
            except PruneConfigError as exc:
                raise PruneConfigError(f"variant {v.name}: {exc}") from None
            if v.drop.get("objective") == "choice":  # its questions must be readable before anything runs
                from prunelens.analysis.subspace import CHOICE_SPLIT
                from prunelens.data.tasks import load_task

                task = v.drop.get("choice_task", "arc_easy")
                try:
                    load_task(task, split=CHOICE_SPLIT, limit=v.drop.get("choice_limit", 64), seed=cfg.seed)
                except (OSError, ValueError) as exc:
                    raise PruneConfigError(
                        f"variant {v.name}: the choice objective has no {task} {CHOICE_SPLIT} "
                        f"questions ({exc})"
                    ) from None


def run_study(
    cfg: StudyConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    engine: str = "local",
    workers: int = 2,
    ray_address: str | None = None,
    report: Callable[[str, float, bool], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the study; returns timings. See the module docstring for the engines."""
    if engine not in ("local", "ray"):
        raise ValueError(f"unknown engine {engine!r}; choose local or ray")
    t0 = time.perf_counter()
    bench = None
    # cheap checks first (files, config, plan, drop counts, lengths); nothing is loaded or written before them
    from prunelens.models.loading import check_seqlen, resolve

    src = resolve(cfg.model)
    check_seqlen(cfg.calibration.seqlen, src.config, option="calibration.seqlen")
    check_variants(cfg, src.num_layers)
    if engine == "local":
        bench = Workbench(cfg, None)  # type: ignore[arg-type]
        _ = bench.dense  # load the model before anything is written
    store = prepare_study_dir(cfg, out, overwrite)
    cfg_dict = _config_for_disk(cfg)
    names = [v.name for v in cfg.variants]
    if engine == "local":
        bench.store = store
        from prunelens.utils.memory import reuse_freed_memory

        # Full first: its evaluations are the reference and its model is the one every variant reuses
        with reuse_freed_memory():
            for name in names:
                run_group(str(store.root), cfg_dict, name, report, bench=bench)
    elif engine == "ray":
        import os

        import ray

        env = {
            k: os.environ[k]
            for k in (FAULT_ENV, "HF_HUB_OFFLINE", "PRUNELENS_DATA", "PRUNELENS_CACHE", "PRUNELENS_QUIET")
            if k in os.environ
        }
        ray.init(
            address=ray_address,
            num_cpus=None if ray_address else workers,
            ignore_reinit_error=True,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": env, "working_dir": None} if env else None,
        )
        remote = ray.remote(max_retries=2, retry_exceptions=True)(run_group)
        refs = {name: remote.remote(str(store.root), cfg_dict, name) for name in names}
        for ref in refs.values():
            for unit_id in ray.get(ref):
                if report:
                    report(unit_id, 0.0, False)
    units = {}
    for unit in plan_units(cfg):
        path = store.marker(unit)
        if path.exists():
            units[unit.id] = json.loads(path.read_text()).get("seconds", 0.0)
    collect(store.root, cfg)
    record = json.loads((store.root / "study.json").read_text())
    record["timings"] = {
        "wall_seconds_this_run": time.perf_counter() - t0,
        "units": units,
        "total_unit_seconds": sum(units.values()),
    }
    atomic_write_json(store.root / "study.json", record)
    return record["timings"]
