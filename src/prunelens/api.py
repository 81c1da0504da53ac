"""The Python API: what the commands do, callable on a model already in memory (a notebook's habit).

    import prunelens

    model, tok = prunelens.load()                       # the embedded SmolLM2-135M-Instruct
    before = prunelens.evaluate(model, tok, tasks=["arc_easy"], limit=50, name="dense")
    pruned = prunelens.drop(model, tok, target="attn", n=4, nsamples=8)   # in place; .plan says what
    after = prunelens.evaluate(pruned, tasks=["arc_easy"], limit=50)
    print(prunelens.compare(before, after))             # paired test on the shared questions

Every function takes a loaded model (with its tokenizer) or a model spec (hub id, directory, ``.gguf``,
alias), and a spec object or its fields as keywords — the same :class:`~prunelens.prune.specs.DropSpec`,
:class:`~prunelens.prune.specs.SparsifySpec` and :class:`~prunelens.distill.RepairSettings` the command
line builds, so the same requests are refused for the same reasons (an
:class:`~prunelens.utils.errors.InputError`). Results are typed objects carrying their settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelens import DEFAULT_MODEL
from prunelens.plan import PrunePlan
from prunelens.prune.specs import CalibrationSpec, DropSpec, QuantizeSpec, SparsifySpec
from prunelens.utils.errors import InputError

__all__ = [
    "Comparison",
    "Evaluation",
    "PruneResult",
    "analyze",
    "compare",
    "drop",
    "evaluate",
    "quantize",
    "repair",
    "sparsify",
    "study",
]


def _resolved(model, tokenizer):
    """``(model, tokenizer, name, plan)`` from a :class:`PruneResult`, a loaded model and its tokenizer, or
    a model spec loaded here (a pruned checkpoint with its plan). ``name`` is the spec, or the in-memory
    model's ``_name_or_path``; ``plan`` is ``None`` for an unpruned model."""
    if isinstance(model, PruneResult):
        return model.model, tokenizer or model.tokenizer, model.plan.base_model, model.plan
    if model is None or isinstance(model, str | Path):
        from prunelens.models.loading import load

        spec = None if model is None else str(model)
        loaded, tok, plan = load(spec, return_plan=True)
        return loaded, tokenizer or tok, spec or DEFAULT_MODEL, plan
    if tokenizer is None:
        raise InputError("a model given in memory needs its tokenizer: pass tokenizer=")
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or "model"
    return model, tokenizer, str(name), None


# --- pruning ------------------------------------------------------------------------------------------


@dataclass
class PruneResult:
    """A pruned model (pruned in place when one was passed in), its tokenizer and the plan that says what
    was removed and how it was chosen."""

    model: Any
    tokenizer: Any
    plan: PrunePlan

    def save(self, out: str | Path, *, overwrite: bool = False) -> Path:
        """Write a prunelens checkpoint (weights, tokenizer, ``prune_plan.json``) that
        :func:`prunelens.load` and every command read."""
        from prunelens.prune.save import save_pruned

        return save_pruned(self.model, self.tokenizer, self.plan, out, overwrite=overwrite)


def _calibration(tok, calibration: CalibrationSpec):
    from prunelens.data.calibration import get_calibration

    c = calibration
    return get_calibration(tok, c.source, c.nsamples, c.seqlen, c.seed)


def drop(
    model=None,
    tokenizer=None,
    spec: DropSpec | None = None,
    *,
    calib: str = CalibrationSpec.source,
    nsamples: int = CalibrationSpec.nsamples,
    seqlen: int = CalibrationSpec.seqlen,
    seed: int = CalibrationSpec.seed,
    batch_size: int = 8,
    **fields: Any,
) -> PruneResult:
    """Drop the least important sublayers or blocks, chosen on calibration text; ``model`` is pruned in
    place.

        pruned = prunelens.drop(model, tok, target="attn", n=8, objective="generation")

    ``spec``: a :class:`~prunelens.prune.specs.DropSpec`, or its fields as keywords (``target``, ``n``,
    ``objective``, ``iterative``, ...). Calibration: ``nsamples`` windows of ``seqlen`` tokens from
    ``calib`` (``c4``, ``wikitext2``, a file, ``hub:NAME``), drawn with ``seed``.
    """
    from prunelens.prune.drop import drop as drop_units

    spec = spec or DropSpec(**fields)
    cal_spec = CalibrationSpec(calib, nsamples, seqlen, seed).check()
    spec.check(nsamples=cal_spec.nsamples)
    m, tok, name, _ = _resolved(model, tokenizer)
    choices = None
    if spec.objective == "choice":
        from prunelens.analysis.subspace import choice_set

        task, limit = spec.questions
        choices = choice_set(tok, task, limit=limit, seed=seed)
    plan = drop_units(
        m,
        _calibration(tok, cal_spec),
        spec,
        batch_size=batch_size,
        base_model=name,
        choices=choices,
        seed=seed,
    )
    return PruneResult(m, tok, plan)


def sparsify(
    model=None,
    tokenizer=None,
    spec: SparsifySpec | None = None,
    *,
    calib: str = CalibrationSpec.source,
    nsamples: int = CalibrationSpec.nsamples,
    seqlen: int = CalibrationSpec.seqlen,
    seed: int = CalibrationSpec.seed,
    batch_size: int = 8,
    device: str | None = None,
    **fields: Any,
) -> PruneResult:
    """Zero weights inside every block (magnitude, Wanda or SparseGPT; unstructured or N:M); ``model`` is
    pruned in place.

        pruned = prunelens.sparsify(model, tok, method="wanda", sparsity=0.5)

    ``spec``: a :class:`~prunelens.prune.specs.SparsifySpec`, or its fields as keywords. ``device``: run
    each block there while the model stays where it is (a CPU-held model pruned on one GPU).
    """
    from prunelens.prune.sparsify import sparsify as sparsify_blocks

    spec = (spec or SparsifySpec(**fields)).check()
    cal_spec = CalibrationSpec(calib, nsamples, seqlen, seed).check()
    m, tok, name, _ = _resolved(model, tokenizer)
    needs_calibration = spec.method != "magnitude" or spec.allocation != "uniform"
    cal = _calibration(tok, cal_spec) if needs_calibration else None
    plan = sparsify_blocks(m, cal, spec, batch_size=batch_size, device=device, base_model=name)
    return PruneResult(m, tok, plan)


def quantize(model=None, tokenizer=None, spec: QuantizeSpec | None = None, **fields: Any) -> PruneResult:
    """Quantize the block linears (held as de-quantized weights, so everything runs on the result
    unchanged); ``model`` is changed in place. A :class:`PruneResult` or a pruned checkpoint is quantized
    after its pruning, its exact zeros kept.

        q4 = prunelens.quantize(model, tok, type="Q4_0")
        w4 = prunelens.quantize(pruned, method="rtn", bits=4, group_size=128)

    ``spec``: a :class:`~prunelens.prune.specs.QuantizeSpec`, or its fields as keywords.
    """
    from prunelens.prune.quantize import quantize as quantize_weights

    spec = (spec or QuantizeSpec(**fields)).check()
    m, tok, name, plan = _resolved(model, tokenizer)
    return PruneResult(m, tok, quantize_weights(m, spec, plan=plan, base_model=name))


def repair(pruned, *, teacher=None, tokenizer=None, out: str | Path | None = None, **kwargs: Any):
    """Distil the dense teacher's next-token distribution into a pruned model (LoRA or norms; masks and
    drops kept).

        repaired = prunelens.repair(pruned, teacher=dense, steps=64, lr=2e-3)   # in memory
        prunelens.repair("runs/drop8a", out="runs/drop8a-kl")                   # checkpoint to checkpoint

    ``pruned``: a :class:`PruneResult`, or a prunelens checkpoint directory (then ``out`` is required and
    the teacher defaults to the model it was pruned from). ``kwargs``: the
    :class:`~prunelens.distill.RepairSettings` fields (``loss``, ``steps``, ``lr``, ...) and the calibration
    (``calib``, ``nsamples``, ``seqlen``, ``calib_seed``). Returns a
    :class:`~prunelens.distill.RepairResult` (the repaired model, its plan, the loss log).
    """
    from prunelens.distill import repair as repair_checkpoint
    from prunelens.distill import repair_in_memory

    if isinstance(pruned, str | Path):
        if out is None:
            raise InputError("repairing a checkpoint writes one: pass out=")
        return repair_checkpoint(str(pruned), out=out, teacher=teacher, **kwargs)
    if not isinstance(pruned, PruneResult):
        raise InputError("repair needs a PruneResult (from prunelens.drop / sparsify) or a checkpoint path")
    if teacher is None:
        raise InputError("an in-memory repair needs its dense teacher: pass teacher= (a model or a spec)")
    teacher_model, _, teacher_name, _ = _resolved(teacher, tokenizer or pruned.tokenizer)
    result = repair_in_memory(
        pruned.model, teacher_model, pruned.tokenizer, pruned.plan, teacher_name=teacher_name, **kwargs
    )
    if out is not None:
        PruneResult(result.model, pruned.tokenizer, result.plan).save(out)
    return result


# --- evaluation ---------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """One model's scores on tasks, with every example's record (what ``prunelens eval`` writes)."""

    name: str
    results: dict[str, Any]  # task -> TaskResult
    settings: dict[str, Any]
    model: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The shape of ``prunelens eval``'s ``summary.json`` (what :func:`compare` tabulates)."""
        from prunelens.evaluation.runner import result_dict

        results = {t: result_dict(r) for t, r in self.results.items()}
        return {"model": {"name": self.name, **self.model}, "settings": self.settings, "results": results}

    def records(self) -> dict[str, list[dict[str, Any]]]:
        return {t: r.records for t, r in self.results.items()}

    def scores(self) -> dict[str, float]:
        return {t: r.score for t, r in self.results.items()}

    def __repr__(self) -> str:
        body = ", ".join(f"{t}={r.score:.4g} (n={r.n})" for t, r in self.results.items())
        return f"Evaluation({self.name!r}: {body})"


def evaluate(
    model=None,
    tokenizer=None,
    tasks: list[str] | str = ("arc_easy",),
    *,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    max_new_tokens: int = 192,
    num_fewshot: int = 0,
    embedder: str | None = None,
    name: str | None = None,
    out: str | Path | None = None,
) -> Evaluation:
    """Evaluate a (pruned) model on tasks: multiple choice, generation, retrieval, perplexity.

        ev = prunelens.evaluate(model, tok, tasks=["arc_easy", "gsm8k"], limit=100, name="dense")
        ev = prunelens.evaluate(pruned, tasks=["arc_easy"])      # a PruneResult is named by its plan

    ``model``: a loaded model with its ``tokenizer``, a :class:`PruneResult`, or a model spec.

    ``limit``: a seeded subset of that many examples per task (perplexity: windows). ``out``: also write
    what ``prunelens eval`` writes there (and resume finished tasks).
    """
    from prunelens.evaluation.runner import (
        EvalSettings,
        evaluate_model,
        load_task_results,
        model_info,
        run_task,
    )

    names = [tasks] if isinstance(tasks, str) else list(tasks)
    settings = EvalSettings(
        limit=limit,
        seed=seed,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        num_fewshot=num_fewshot,
        embedder=embedder,
    ).check(names)
    in_memory = not (model is None or isinstance(model, str | Path | PruneResult))
    m, tok, spec, plan = _resolved(model, tokenizer)
    info = model_info(m, spec, plan, name=name or ("model" if in_memory else None))
    if out is not None:
        evaluate_model(m, tok, names, out, settings=settings, model_info=info)
        results = load_task_results(out, names)
    else:
        results = {t: run_task(m, tok, t, settings) for t in names}
    return Evaluation(
        info["name"], results, settings.to_dict(), {k: v for k, v in info.items() if k != "name"}
    )


@dataclass
class Comparison:
    """The paper's table across models: per task the scores with 95 % intervals, the retained fraction of
    the first model's score, and a paired test against it on the examples both evaluated."""

    table: dict[str, Any]

    def to_markdown(self) -> str:
        from prunelens.evaluation.compare import render_markdown

        return render_markdown(self.table)

    def write(self, stem: str | Path) -> list[Path]:
        """CSV, Markdown and JSON beside ``stem``."""
        from prunelens.evaluation.compare import write_comparison

        return write_comparison(self.table, stem)

    def __str__(self) -> str:
        return self.to_markdown()


def compare(*evaluations: Evaluation | str | Path) -> Comparison:
    """Tabulate evaluations (objects from :func:`evaluate`, or ``prunelens eval`` directories); the first
    is the reference."""
    from prunelens.evaluation.runner import comparison_table, load_all_records, load_summary

    if not evaluations:
        raise InputError("compare needs at least one evaluation")
    summaries, records = [], []
    for ev in evaluations:
        if isinstance(ev, Evaluation):
            summaries.append(ev.summary())
            records.append(ev.records())
        else:
            s = load_summary(ev)
            summaries.append(s)
            records.extend(load_all_records([ev], [s]))
    return Comparison(comparison_table(summaries, records))


# --- analysis and studies -----------------------------------------------------------------------------


def _variant(dense, tok, variant, name: str | None):
    """A variant of the dense model: a PruneResult, a PrunePlan (drops, magnitude), a pruned model in
    memory, or a spec the command line accepts (a checkpoint, a plan file, ``drop-8-attn``)."""
    from prunelens.analysis.variants import resolve_variant, variant_from_plan, variant_from_state

    if isinstance(variant, PruneResult):
        if (variant.plan.is_drop or variant.plan.method == "magnitude") and not variant.plan.quantization:
            variant = variant.plan
        else:
            variant = variant.model
    if isinstance(variant, PrunePlan):
        return variant_from_plan(dense, variant, source="plan")
    if isinstance(variant, str | Path):
        return resolve_variant(dense, str(variant), tokenizer=tok)
    return variant_from_state(dense, variant.state_dict().items(), name=name or "pruned", source="in memory")


def analyze(
    dense,
    tokenizer,
    *variants: Any,
    prompts: int | list[str] | str | None = None,
    mc: str | None = None,
    mc_limit: int = 24,
    out: str | Path | None = None,
    seed: int = 0,
    **config: Any,
):
    """Measure each variant's perturbation of the dense model in hidden, logit and probability space:
    sublayer transitions, decoding trajectories, the multiple-choice option subspace.

        hierarchy = prunelens.analyze(dense, tok, pruned, prompts=4)
        hierarchy.headline        # one line per variant; .tables holds the long tables

    ``variants``: :class:`PruneResult` objects, prune plans, pruned models in memory (the same architecture,
    weights changed: a sparsified copy), or checkpoint paths.
    ``prompts``: the first N of the default set, a list of texts, a prompt file or a task name.
    ``mc``: the option subspace's task (default ``arc_easy`` when its data is at hand; ``"none"``: skip).
    ``config``: :class:`~prunelens.analysis.pipeline.AnalysisConfig` fields (``temperatures``,
    ``max_new_tokens``, ``analyses``, ...). Returns an :class:`~prunelens.analysis.pipeline.AnalysisReport`.
    """
    from prunelens.analysis.pipeline import AnalysisConfig, run_analysis
    from prunelens.analysis.prompts import load_prompts
    from prunelens.analysis.subspace import analysis_questions

    if not variants:
        raise InputError("analyze needs at least one variant of the dense model")
    cfg = AnalysisConfig(seed=seed, **config)
    if isinstance(prompts, list):
        prompt_set, notes = [(f"prompt/{i}", str(p)) for i, p in enumerate(prompts)], []
    else:
        limit = prompts if isinstance(prompts, int) else None
        prompt_set, notes = load_prompts(
            None if isinstance(prompts, int) else prompts, limit=limit, seed=seed
        )
    if not prompt_set:
        raise InputError("analyze needs at least one prompt")
    resolved = [_variant(dense, tokenizer, v, None) for v in variants]
    mc_examples, mc_task = (None, None)
    if "subspace" in cfg.analyses:
        mc_examples, mc_task = analysis_questions(tokenizer, mc, mc_limit, seed, cfg.option_labels, notes)
    return run_analysis(
        dense,
        tokenizer,
        resolved,
        prompt_set,
        cfg,
        out=out,
        mc_examples=mc_examples,
        mc_task=mc_task,
        notes=notes,
    )


def study(config=None, *, out: str | Path, engine: str = "local", overwrite: bool = False, **overrides: Any):
    """Run a whole study (prune several ways, evaluate, analyse, report) and return its report's path.

        report = prunelens.study("configs/study-repair.yaml", out="runs/repair")

    ``config``: a YAML path, a mapping in the config's format, or ``None`` for the built-in study;
    ``overrides``: top-level fields (``model``, ``dtype``, ``device``). A study loads its own model (it
    rebuilds each variant from the dense weights and resumes unit by unit), so it takes a model spec, not
    a model in memory. The same call again resumes.
    """
    from prunelens.report import build_report
    from prunelens.studies.config import StudyConfig, load_config, parse_config
    from prunelens.studies.runner import run_study

    if isinstance(config, StudyConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = parse_config({**config, **overrides})
        overrides = {}
    else:
        cfg = load_config(config)
    if overrides:
        from prunelens.studies.config import DENSE

        raw = cfg.to_dict()
        raw["variants"] = [v for v in raw["variants"] if v["name"] != DENSE]
        cfg = parse_config({**raw, **overrides})
    run_study(cfg, out, overwrite=overwrite, engine=engine)
    return build_report(out)
