"""prunelens command line: thin wrappers that parse arguments, call the library and say where results went.

    prunelens demo --out runs/demo                 # the main job on the embedded model
    prunelens prune drop [MODEL] --target attn --n 8 --out DIR
    prunelens prune sparsify [MODEL] --method wanda --sparsity 0.5 --out DIR
    prunelens info MODEL_OR_DIR

Bad input (unknown model, impossible counts or sparsities, an existing output directory) exits with
code 2 and a one-line reason, before anything is written.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from prunelens import DEFAULT_MODEL
from prunelens.utils.cli_output import err_console
from prunelens.utils.cli_output import fail as _fail

app = typer.Typer(
    help=(
        "prunelens: prune LLMs and measure when pruning works, and why (hidden → logit → probability space)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
prune_app = typer.Typer(
    help="Prune a model: drop sublayers/blocks, or sparsify weights.", no_args_is_help=True
)
app.add_typer(prune_app, name="prune")
out_console = Console()

MODEL_HELP = (
    "Hub id, local checkpoint dir, .gguf file, prunelens dir, or alias (default: smollm2-135m, embedded)."
)


def _threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


class _Common:
    """Options shared by the prune commands."""

    calib = typer.Option(
        "c4",
        "--calib",
        help=(
            "Calibration: c4, c4-heldout, wikitext2, a .txt/.json/.jsonl file, or hub:NAME[:CONFIG[:SPLIT]]."
        ),
    )
    nsamples = typer.Option(64, "--nsamples", help="Number of calibration windows.")
    seqlen = typer.Option(256, "--seqlen", help="Tokens per calibration window.")
    seed = typer.Option(0, "--seed", help="Seed for calibration sampling.")
    dtype = typer.Option("float32", "--dtype", help="Model dtype: float32, bfloat16, float16 or auto.")
    device = typer.Option(
        "cpu", "--device", help="Device: cpu, cuda, cuda:N, or auto (accelerate device map over all devices)."
    )
    batch_size = typer.Option(8, "--batch-size", help="Calibration windows per forward pass.")
    overwrite = typer.Option(False, "--overwrite", help="Replace a non-empty output directory.")
    threads = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice).")


def _resolve(model: str | None):
    """Resolve the model spec and run the cheap checks (files, config, plan) before any weights load."""
    from prunelens.models.adapter import UnsupportedArchitectureError, spec_for
    from prunelens.models.loading import ModelNotFoundError, resolve
    from prunelens.utils.artifacts import ArtifactError

    try:
        src = resolve(model)
        spec_for(src.config)
        return src
    except (ModelNotFoundError, UnsupportedArchitectureError, ArtifactError) as exc:
        _fail(str(exc))


def _load(src, dtype: str, device: str):
    """Load a model resolved by :func:`_resolve` (or a spec, resolved here): ``(model, tokenizer, plan)``."""
    from prunelens.models.adapter import UnsupportedArchitectureError
    from prunelens.models.loading import ModelNotFoundError, ModelSource, load

    if not isinstance(src, ModelSource):
        src = _resolve(src)
    try:
        if device == "auto":
            return load(src, dtype=dtype, device_map="auto", return_plan=True)
        return load(src, dtype=dtype, device=device, return_plan=True)
    except (ModelNotFoundError, UnsupportedArchitectureError, ValueError) as exc:
        _fail(str(exc))


def _check_calibration_request(src, calib: str, nsamples: int, seqlen: int):
    """Counts, lengths and the calibration file, checked before the model loads; returns the documents."""
    from prunelens.data.calibration import CalibrationDataError, load_texts
    from prunelens.data.paths import DataNotFoundError
    from prunelens.models.loading import check_seqlen

    if nsamples <= 0:
        _fail(f"--nsamples must be positive (got {nsamples})")
    if seqlen <= 0:
        _fail(f"--seqlen must be positive (got {seqlen})")
    try:
        check_seqlen(seqlen, src.config)
        return load_texts(calib)
    except (CalibrationDataError, DataNotFoundError, ValueError) as exc:
        _fail(str(exc))


def _calibration(tokenizer, calib: str, nsamples: int, seqlen: int, seed: int, texts=None):
    from prunelens.data.calibration import CalibrationDataError, get_calibration
    from prunelens.data.paths import DataNotFoundError

    try:
        return get_calibration(tokenizer, calib, nsamples, seqlen, seed, texts=texts)
    except (CalibrationDataError, DataNotFoundError) as exc:
        _fail(str(exc))


def _check_out(out: Path, overwrite: bool) -> None:
    from prunelens.utils.io import OutputExistsError, check_output_dir

    try:
        check_output_dir(out, overwrite)
    except OutputExistsError as exc:
        _fail(str(exc))


def _print_plan(plan, out: Path, seconds: float) -> None:
    t = Table(title=f"{plan.name} saved to {out}", show_header=False)
    t.add_row("method", plan.method + (f" ({plan.target})" if plan.target else ""))
    t.add_row(
        "parameters",
        f"{plan.params_before:,} → {plan.params_after:,} "
        f"({100 * (1 - plan.params_after / plan.params_before):.1f}% fewer)",
    )
    if plan.dropped_sublayers:
        t.add_row("dropped", ", ".join(f"{d['sublayer']}@{d['layer']}" for d in plan.dropped_sublayers))
    if plan.dropped_blocks:
        t.add_row("dropped blocks", ", ".join(map(str, plan.dropped_blocks)))
    objective = (plan.options or {}).get("objective")
    if objective and objective != "hidden":
        sc = plan.scores or {}
        t.add_row(
            "objective",
            f"{objective} ({plan.options.get('estimator', 'exact')} KL at "
            f"T = {plan.options.get('temperature', 1.0):g}, {sc.get('seconds', 0.0):.1f} s)",
        )
        if "search" in sc:
            r = sc["search"]
            t.add_row(
                "search",
                f"{r['evaluations']} sets in {r['seconds']:.0f} s: "
                f"KL {r['kl_before']:.4g} → {r['kl_after']:.4g} ({len(r['accepted_swaps'])} swaps kept)",
            )
    if "achieved" in plan.sparsity:
        ach = plan.sparsity["achieved"]
        t.add_row(
            "sparsity",
            f"{ach['overall']:.4f} overall; " + ", ".join(f"{k} {v:.3f}" for k, v in ach["by_group"].items()),
        )
    if plan.calibration:
        c = plan.calibration
        t.add_row("calibration", f"{c['source']}: {c['nsamples']}×{c['seqlen']} tokens, seed {c['seed']}")
    t.add_row("time", f"{seconds:.1f} s")
    out_console.print(t)


@prune_app.command("drop")
def prune_drop(
    model: str | None = typer.Argument(None, help=MODEL_HELP),
    target: str = typer.Option(
        ..., "--target", help="attn | mlp | block | joint (attention and MLP ranked together)."
    ),
    n: int = typer.Option(..., "--n", help="How many sublayers (or blocks) to drop."),
    out: Path = typer.Option(..., "--out", help="Output directory for the pruned checkpoint."),
    iterative: bool = typer.Option(
        False, "--iterative", help="Re-score after each removal (n scoring passes)."
    ),
    window: bool = typer.Option(
        False, "--window", help="block only: drop the best window of n consecutive blocks."
    ),
    objective: str = typer.Option(
        "hidden",
        "--objective",
        help="What to preserve. hidden: input/output cosine of the residual stream (LLM-Drop, ShortGPT); "
        "generation: exact KL of the next-token distributions on the calibration tokens; "
        "choice: KL of the option distribution on lettered multiple-choice questions.",
    ),
    temperature: float = typer.Option(1.0, "--temperature", help="Temperature T of the KL objectives."),
    estimator: str = typer.Option(
        "exact",
        "--estimator",
        help="generation objective: exact (a counterfactual suffix pass per unit) or fisher (every unit "
        "at once from one backward pass, a second-order estimate).",
    ),
    search_budget: float | None = typer.Option(
        None,
        "--search-budget",
        help="Seconds of swap search after the selection, keeping swaps that lower the set's KL "
        "(generation / choice objectives).",
    ),
    search_evaluations: int | None = typer.Option(
        None,
        "--search-evaluations",
        help="Stop the swap search after this many set evaluations (reproducible on any machine).",
    ),
    choice_task: str = typer.Option(
        "arc_easy",
        "--choice-task",
        help="choice objective: multiple-choice task whose validation split is read.",
    ),
    choice_limit: int = typer.Option(64, "--choice-limit", help="choice objective: number of questions."),
    score_windows: int | None = typer.Option(
        None,
        "--score-windows",
        help="Score (and search) on the first K calibration windows only (a seeded random subset; "
        "default: all --nsamples). An exact KL objective costs about a forward pass per candidate, so "
        "fewer windows trade ranking noise for time; hidden and generation objectives.",
    ),
    calib: str = _Common.calib,
    nsamples: int = _Common.nsamples,
    seqlen: int = _Common.seqlen,
    seed: int = _Common.seed,
    dtype: str = _Common.dtype,
    device: str = _Common.device,
    batch_size: int = _Common.batch_size,
    overwrite: bool = _Common.overwrite,
    threads: int | None = _Common.threads,
):
    """Drop the N least important attention/MLP sublayers or blocks: by default the highest \
input/output cosine similarity; with --objective generation or choice, the smallest exact effect on the \
next-token or option distribution."""
    from prunelens.plan import DROP_TARGETS
    from prunelens.prune.drop import (
        PruneConfigError,
        drop,
        validate_drop,
        validate_objective,
        validate_score_windows,
    )
    from prunelens.prune.save import save_pruned

    _threads(threads)
    if target not in DROP_TARGETS:
        _fail(f"unknown target {target!r}; choose one of {', '.join(DROP_TARGETS)}")
    if n <= 0:
        _fail(f"--n must be positive (got {n})")
    if window and target != "block":
        _fail("--window only applies to --target block")
    if not temperature > 0:
        _fail(f"--temperature must be positive (got {temperature})")
    try:
        validate_objective(
            objective,
            window=window,
            search_budget=search_budget,
            search_evaluations=search_evaluations,
            estimator=estimator,
            need_choices=False,
        )
        validate_score_windows(
            score_windows,
            objective,
            nsamples,
            option="--score-windows",
            objective_option="--objective",
            nsamples_option="--nsamples",
        )
    except PruneConfigError as exc:
        _fail(str(exc))
    choice_examples = None
    if objective == "choice":
        choice_examples = _choice_examples(choice_task, choice_limit, seed)
    _check_out(out, overwrite)
    t0 = time.perf_counter()
    src = _resolve(model)
    if src.plan is not None:
        _fail("the model is already pruned; prune its dense parent instead (plans do not stack yet)")
    try:
        validate_drop(src.num_layers, target, n)
    except PruneConfigError as exc:
        _fail(str(exc))
    texts = _check_calibration_request(src, calib, nsamples, seqlen)
    m, tok, _ = _load(src, dtype, device)
    cal = _calibration(tok, calib, nsamples, seqlen, seed, texts)
    choices = None
    if choice_examples is not None:
        from prunelens.analysis.subspace import OptionTokenError, choice_set

        try:
            choices = choice_set(tok, choice_task, limit=choice_limit, seed=seed, examples=choice_examples)
        except OptionTokenError as exc:
            _fail(f"--choice-task {choice_task}: {exc}")
    plan = drop(
        m,
        cal,
        target=target,
        n=n,
        iterative=iterative,
        window=window,
        batch_size=batch_size,
        base_model=model or DEFAULT_MODEL,
        objective=objective,
        temperature=temperature,
        choices=choices,
        search_budget=search_budget,
        search_evaluations=search_evaluations,
        estimator=estimator,
        seed=seed,
        score_windows=score_windows,
    )
    save_pruned(m, tok, plan, out, overwrite=overwrite)
    _print_plan(plan, out, time.perf_counter() - t0)


def _choice_examples(task: str, limit: int, seed: int):
    """The choice objective's questions (the task's validation split), read before any model loads."""
    from prunelens.analysis.subspace import CHOICE_SPLIT
    from prunelens.data.tasks import TASKS, load_task

    mc = sorted(k for k, v in TASKS.items() if v.kind == "mc")
    if task not in mc:
        _fail(f"--choice-task must be a multiple-choice task ({', '.join(mc)}), got {task!r}")
    if limit <= 0:
        _fail(f"--choice-limit must be positive (got {limit})")
    try:
        examples = load_task(task, split=CHOICE_SPLIT, limit=limit, seed=seed)
    except (OSError, ValueError) as exc:
        _fail(f"--choice-task {task}: no {CHOICE_SPLIT} questions to score on ({exc})")
    if not examples:
        _fail(f"--choice-task {task}: its {CHOICE_SPLIT} split holds no question")
    return examples


@prune_app.command("sparsify")
def prune_sparsify(
    model: str | None = typer.Argument(None, help=MODEL_HELP),
    method: str = typer.Option(..., "--method", help="magnitude | wanda | sparsegpt."),
    sparsity: float | None = typer.Option(
        None, "--sparsity", help="Unstructured sparsity in [0, 1), e.g. 0.5."
    ),
    pattern: str | None = typer.Option(
        None, "--pattern", help="N:M semi-structured pattern, N kept in every M (e.g. 2:4)."
    ),
    out: Path = typer.Option(..., "--out", help="Output directory for the pruned checkpoint."),
    calib: str = _Common.calib,
    nsamples: int = _Common.nsamples,
    seqlen: int = _Common.seqlen,
    seed: int = _Common.seed,
    dtype: str = _Common.dtype,
    device: str = _Common.device,
    batch_size: int = _Common.batch_size,
    overwrite: bool = _Common.overwrite,
    threads: int | None = _Common.threads,
    blocksize: int = typer.Option(128, "--blocksize", help="SparseGPT column block size."),
    percdamp: float = typer.Option(
        0.01, "--percdamp", help="SparseGPT Hessian dampening (fraction of mean diagonal)."
    ),
    true_sequential: bool | None = typer.Option(
        None,
        "--true-sequential/--dense-block-stats",
        help="Calibration inside a block. --true-sequential prunes the linears group by group "
        "(q/k/v, o, gate/up, "
        "down), each on the inputs the already-pruned groups give it, in one pass, holding all calibration "
        "activations of the block at once. --dense-block-stats is the published procedure: every linear's "
        "statistics from the dense block, then a second pass over the pruned block. Default: true-sequential "
        "for Wanda (faster, equal or better perplexity measured), dense-block for SparseGPT (its perplexity "
        "was worse true-sequentially).",
    ),
    allocation: str = typer.Option(
        "uniform",
        "--allocation",
        help="How the overall --sparsity is shared among the blocks. uniform: every block alike; owl: "
        "fewer zeros where a block has more outlier Wanda scores (above 5× the block mean; OWL); kl: fewer "
        "zeros where sparsifying that block alone moves the next-token distribution more (exact KL on the "
        "first 8 calibration windows). Weighted mean kept at --sparsity, every block within "
        "--allocation-lambda of it. Needs calibration (also for magnitude); N:M patterns stay uniform.",
    ),
    allocation_lambda: float | None = typer.Option(
        None,
        "--allocation-lambda",
        help="owl / kl: the largest deviation of a block's sparsity from --sparsity (default 0.08, OWL's).",
    ),
):
    """Zero weights of every linear layer in the blocks \
(layer by layer, calibrated on pruned predecessors)."""
    from prunelens.plan import ALLOCATIONS
    from prunelens.prune.save import save_pruned
    from prunelens.prune.sparsify import sparsify, validate_sparsity

    _threads(threads)
    if allocation not in ALLOCATIONS:
        _fail(f"--allocation must be one of {', '.join(ALLOCATIONS)} (got {allocation!r})")
    if allocation != "uniform" and pattern is not None:
        _fail(f"--allocation {allocation} needs --sparsity: N:M patterns (--pattern) stay uniform")
    if allocation == "uniform" and allocation_lambda is not None:
        _fail("--allocation-lambda only applies with --allocation owl or kl")
    if allocation_lambda is not None and not 0.0 <= allocation_lambda < 1.0:
        _fail(f"--allocation-lambda must be in [0, 1) (got {allocation_lambda})")
    try:
        validate_sparsity(method, sparsity, pattern, allocation, allocation_lambda)
    except ValueError as exc:
        _fail(str(exc))
    _check_out(out, overwrite)
    t0 = time.perf_counter()
    exec_device = None
    if device not in ("cpu", "auto"):
        exec_device, device = (
            device,
            "cpu",
        )  # keep weights on the CPU, process one block at a time on the device
    src = _resolve(model)
    if src.plan is not None:
        _fail("the model is already pruned; prune its dense parent instead (plans do not stack yet)")
    calibrate = method != "magnitude" or allocation != "uniform"
    texts = _check_calibration_request(src, calib, nsamples, seqlen) if calibrate else None
    m, tok, _ = _load(src, dtype, device)
    cal = _calibration(tok, calib, nsamples, seqlen, seed, texts) if calibrate else None
    try:
        plan = sparsify(
            m,
            cal,
            method=method,
            sparsity=sparsity,
            pattern=pattern,
            batch_size=batch_size,
            blocksize=blocksize,
            percdamp=percdamp,
            device=exec_device,
            base_model=model or DEFAULT_MODEL,
            true_sequential=true_sequential,
            allocation=allocation,
            allocation_lambda=allocation_lambda,
        )
    except (ValueError, MemoryError) as exc:
        _fail(str(exc))
    save_pruned(m, tok, plan, out, overwrite=overwrite)
    _print_plan(plan, out, time.perf_counter() - t0)


@app.command()
def info(
    model: str | None = typer.Argument(None, help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
):
    """Parameters, layers, family, and the prune plan if the model was pruned by prunelens."""
    from prunelens.models.adapter import Adapter, param_count

    m, _, plan = _load(model, "auto", "cpu")
    a = Adapter(m)
    data = {
        "model": model or DEFAULT_MODEL,
        "family": a.spec.family,
        "class": type(m).__name__,
        "parameters": param_count(m),
        "layers": a.num_layers,
        "dropped_attention": [i for i in range(a.num_layers) if a.is_dropped(i, "attn")],
        "dropped_mlp": [i for i in range(a.num_layers) if a.is_dropped(i, "mlp")],
        "hidden_size": m.config.hidden_size,
        "vocab_size": m.config.vocab_size,
        "dtype": str(next(m.parameters()).dtype).replace("torch.", ""),
        "plan": plan.to_dict() if plan is not None else None,
    }
    if as_json:
        out_console.print_json(json.dumps(data))
        return
    t = Table(title=f"{data['model']}", show_header=False)
    for key in ("family", "class", "parameters", "layers", "hidden_size", "vocab_size", "dtype"):
        v = data[key]
        t.add_row(key, f"{v:,}" if isinstance(v, int) else str(v))
    if plan is not None:
        t.add_row("pruned", f"{plan.name} (from {plan.base_model}, {plan.params_before:,} params before)")
        if data["dropped_attention"]:
            t.add_row("dropped attention", ", ".join(map(str, data["dropped_attention"])))
        if data["dropped_mlp"]:
            t.add_row("dropped MLP", ", ".join(map(str, data["dropped_mlp"])))
        if plan.dropped_blocks:
            t.add_row("dropped blocks", ", ".join(map(str, plan.dropped_blocks)))
        if "achieved" in plan.sparsity:
            t.add_row("sparsity", f"{plan.sparsity['achieved']['overall']:.4f}")
        if plan.repair:
            r = plan.repair
            before, after = r.get("heldout_before", {}), r.get("heldout_after", {})
            t.add_row(
                "repaired",
                f"{r['loss']} ({r.get('train', 'lora')}) from {r['teacher']}: {r['steps_run']} steps, "
                f"{r['tokens']:,} tokens"
                + (
                    f", held-out KL {before['heldout_kl']:.4f} → {after['heldout_kl']:.4f}"
                    if "heldout_kl" in before and "heldout_kl" in after
                    else ""
                ),
            )
    else:
        t.add_row("pruned", "no (no prune_plan.json)")
    out_console.print(t)


DEMO_PROMPT = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)


@app.command()
def demo(
    out: Path = typer.Option(
        Path("runs/demo-drop8a"), "--out", help="Where the pruned checkpoint and summary go."
    ),
    model: str | None = typer.Option(None, "--model", help=MODEL_HELP),
    n: int = typer.Option(8, "--n", help="Attention sublayers to drop."),
    nsamples: int = typer.Option(32, "--nsamples", help="Calibration windows (C4 sample, 256 tokens each)."),
    ppl_windows: int = typer.Option(
        16, "--ppl-windows", help="256-token windows of held-out C4 for perplexity."
    ),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output directory."),
    threads: int | None = _Common.threads,
):
    """A 90-second tour (`prunelens study` is the whole job): drop the N least important attention \
sublayers of the
    embedded model, save it, and print a before/after summary (parameters, perplexity on held-out C4,
    one greedy generation from each)."""
    from prunelens.data.calibration import bos_prefix, load_texts, token_stream
    from prunelens.evaluation.generation import generate
    from prunelens.evaluation.perplexity import perplexity
    from prunelens.models.adapter import param_count
    from prunelens.prune.drop import drop
    from prunelens.prune.save import save_pruned
    from prunelens.utils.io import atomic_write_json

    _threads(threads)
    _check_out(out, overwrite)
    t0 = time.perf_counter()
    m, tok, _ = _load(model, "float32", "cpu")
    err_console.print(f"loaded {model or 'smollm2-135m'} ({param_count(m):,} parameters)")
    stream = token_stream(tok, load_texts("c4-heldout"))
    before_ppl = perplexity(
        m, stream, seqlen=256, max_windows=ppl_windows, bos_id=bos_prefix(tok), desc="perplexity (dense)"
    )
    before_gen = generate(m, tok, [DEMO_PROMPT], max_new_tokens=max_new_tokens)[0]
    params_before = param_count(m)
    cal = _calibration(tok, "c4", nsamples, 256, 0)
    plan = drop(m, cal, target="attn", n=n, base_model=model or DEFAULT_MODEL)
    after_ppl = perplexity(
        m,
        stream,
        seqlen=256,
        max_windows=ppl_windows,
        bos_id=bos_prefix(tok),
        desc=f"perplexity ({plan.name})",
    )
    after_gen = generate(m, tok, [DEMO_PROMPT], max_new_tokens=max_new_tokens)[0]
    save_pruned(m, tok, plan, out, overwrite=overwrite)
    summary = {
        "model": model or DEFAULT_MODEL,
        "variant": plan.name,
        "dropped": plan.dropped_sublayers,
        "parameters": {"dense": params_before, "pruned": plan.params_after},
        "perplexity_c4_heldout": {"dense": before_ppl.to_dict(), "pruned": after_ppl.to_dict()},
        "generation": {
            "prompt": DEMO_PROMPT,
            "dense": before_gen,
            "pruned": after_gen,
            "max_new_tokens": max_new_tokens,
            "decoding": "greedy, chat template",
        },
        "seconds": time.perf_counter() - t0,
    }
    atomic_write_json(out / "demo_summary.json", summary)
    t = Table(title=f"{summary['model']}: dense vs {plan.name}")
    t.add_column("")
    t.add_column("dense")
    t.add_column(plan.name)
    t.add_row("parameters", f"{params_before:,}", f"{plan.params_after:,}")
    t.add_row("layers dropped", "—", ", ".join(f"attn@{d['layer']}" for d in plan.dropped_sublayers))
    t.add_row("perplexity (held-out C4)", f"{before_ppl.ppl:.2f}", f"{after_ppl.ppl:.2f}")
    t.add_row("greedy answer", before_gen, after_gen)
    out_console.print(t)
    out_console.print(f"pruned checkpoint: {out}  (reload with prunelens.load({str(out)!r}))")
    out_console.print(f"summary: {out / 'demo_summary.json'}   time: {summary['seconds']:.0f} s")


def _model_info(spec: str | None, model, plan) -> dict:
    from prunelens.models.adapter import param_count

    name = (
        plan.name
        if plan is not None
        else ("dense" if spec in (None, DEFAULT_MODEL) else Path(str(spec)).name)
    )
    return {
        "spec": spec or DEFAULT_MODEL,
        "name": name,
        "parameters": param_count(model),
        "plan": plan.to_dict() if plan is not None else None,
    }


@app.command("eval")
def eval_cmd(
    model: str | None = typer.Argument(None, help=MODEL_HELP),
    tasks: str = typer.Option(
        ...,
        "--tasks",
        help=(
            "Comma-separated tasks, e.g. "
            "arc_easy,boolq,piqa,gsm8k,nq_open,humaneval,mbpp,wikitext2,boolq_retrieval."
        ),
    ),
    out: Path = typer.Option(..., "--out", help="Output directory (re-running resumes finished tasks)."),
    limit: int | None = typer.Option(
        None, "--limit", help="Seeded deterministic subset of N examples per task (perplexity: N windows)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for subsets, few-shot examples and sampling."),
    batch_size: int = typer.Option(8, "--batch-size"),
    max_new_tokens: int = typer.Option(192, "--max-new-tokens", help="Generation budget per example."),
    num_fewshot: int = typer.Option(
        0, "--num-fewshot", help="Few-shot examples for generative tasks that support them (GSM8K)."
    ),
    embedder: str | None = typer.Option(
        None,
        "--embedder",
        help=(
            "Retrieval: embedding model (sentence-transformers dir/id); "
            "default: the evaluated model with last-token pooling."
        ),
    ),
    dtype: str = _Common.dtype,
    device: str = _Common.device,
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a directory written with other settings."
    ),
    threads: int | None = _Common.threads,
):
    """Evaluate a (pruned) model on non-generative and generative tasks; per-example JSONL + summary JSON."""
    from prunelens.evaluation.runner import EvalSettings, evaluate_model, task_kind
    from prunelens.utils.io import OutputExistsError

    _threads(threads)
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        _fail("--tasks is empty")
    try:
        for t in names:
            task_kind(t)
    except ValueError as exc:
        _fail(str(exc))
    if limit is not None and limit <= 0:
        _fail(f"--limit must be positive (got {limit})")
    if max_new_tokens <= 0:
        _fail(f"--max-new-tokens must be positive (got {max_new_tokens})")
    if batch_size <= 0:
        _fail(f"--batch-size must be positive (got {batch_size})")
    m, tok, plan = _load(_resolve(model), dtype, device)
    info = _model_info(model, m, plan)
    settings = EvalSettings(
        limit=limit,
        seed=seed,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        num_fewshot=num_fewshot,
        embedder=embedder,
    )

    def done(result, cached):
        err_console.print(
            f"{'[dim]cached[/]' if cached else '[green]done[/]'}  {result.task}: "
            f"{result.main_metric} = {result.score:.4f}  (n={result.n}, {result.seconds:.0f} s)"
        )

    try:
        summary = evaluate_model(
            m, tok, names, out, settings=settings, model_info=info, overwrite=overwrite, on_task_done=done
        )
    except OutputExistsError as exc:
        _fail(str(exc))
    t = Table(title=f"{info['name']} ({info['parameters']:,} parameters) → {out}")
    for col in ("task", "metric", "score", "n", "seconds"):
        t.add_column(col)
    for name, r in summary["results"].items():
        t.add_row(name, r["main_metric"], f"{r['score']:.4f}", str(r["n"]), f"{r['seconds']:.0f}")
    out_console.print(t)


@app.command()
def compare(
    dirs: list[Path] = typer.Argument(
        ..., help="`prunelens eval` output directories; the first is the reference (dense)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Also write the table as CSV, Markdown and JSON (FILE without suffix)."
    ),
):
    """The paper-style table across evaluated models: tasks × models with 95 % intervals, averages, retained
    fraction of dense, and a paired test of each model against the first on the examples they share."""
    from prunelens.evaluation.compare import write_comparison
    from prunelens.evaluation.runner import comparison_table, load_all_records, load_summary

    try:
        summaries = [load_summary(d) for d in dirs]
        table = comparison_table(summaries, load_all_records(dirs, summaries))
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    t = Table(title="non-generative vs generative")
    t.add_column("task")
    t.add_column("metric")
    for name in table["models"]:
        t.add_column(name, justify="right")

    def num(v):
        return f"{v:.2f}" if abs(v) >= 10 else f"{v:.3f}"

    def fmt(v, retained=None, interval=None):
        if v is None:
            return "—"
        s = num(v) + (f" [dim][{num(interval['low'])}, {num(interval['high'])}][/]" if interval else "")
        return s + (f" [dim]({100 * retained:.0f}%)[/]" if retained is not None and retained != 1 else "")

    t.add_row("parameters", "", *[f"{p / 1e6:.1f}M" if p else "—" for p in table["parameters"]])
    for r in table["rows"]:
        t.add_row(
            r["task"],
            r["metric"],
            *[fmt(v, k, iv) for v, k, iv in zip(r["scores"], r["retained"], r["intervals"])],
        )
    av = table["averages"]
    t.add_row(
        "[bold]non-generative avg[/]",
        "",
        *[fmt(v, k) for v, k in zip(av["non_generative"], av["non_generative_retained"])],
    )
    t.add_row(
        "[bold]generative avg[/]",
        "",
        *[fmt(v, k) for v, k in zip(av["generative"], av["generative_retained"])],
    )
    out_console.print(t)
    paired = Table(
        title=f"paired against {table['models'][0]} (same examples; Δ = model − reference, 95 % interval)"
    )
    for col in ("task", "model", "n", "Δ", "interval", "p", "test"):
        paired.add_column(col, justify="left" if col in ("task", "model", "test") else "right")
    for r in table["rows"]:
        for name, c in zip(table["models"][1:], r.get("paired", [None])[1:]):
            if c is not None:
                paired.add_row(
                    r["task"],
                    name,
                    str(c["n"]),
                    f"{c['difference']:+.3f}",
                    f"[{c['interval'][0]:+.3f}, {c['interval'][1]:+.3f}]",
                    f"{c['p_value']:.3g}",
                    c["test"] + (" (NLL)" if r["kind"] == "ppl" else ""),
                )
    if paired.row_count:
        out_console.print(paired)
    if out is not None:
        for path in write_comparison(table, out):
            out_console.print(f"wrote {path}")


@app.command()
def study(
    config: Path | None = typer.Argument(
        None, help="Study config (YAML). Default: the built-in study on the embedded model."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Study directory (re-running the same command resumes it)."
    ),
    model: str | None = typer.Option(None, "--model", help="Override the config's model. " + MODEL_HELP),
    dtype: str | None = typer.Option(
        None, "--dtype", help="Override the config's dtype: float32, bfloat16 or float16."
    ),
    device: str | None = typer.Option(
        None, "--device", help="Override the config's device: cpu, cuda, cuda:N or auto."
    ),
    print_config: bool = typer.Option(
        False, "--print-config", help="Print the default config (copy, edit, pass back) and exit."
    ),
    engine: str = typer.Option(
        "local",
        "--engine",
        help="local (one process) or ray (variants as Ray tasks; local cluster or --ray-address).",
    ),
    workers: int = typer.Option(2, "--workers", help="Ray: worker processes of the local cluster."),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Ray: join a running cluster (e.g. auto)."
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Re-use a directory written with another config (units it changes are re-run).",
    ),
    threads: int | None = _Common.threads,
):
    """The whole study: prune several ways, evaluate every variant on non-generative and generative tasks,
    analyse the representation hierarchy, and write tables, figures and report.html."""
    from prunelens.studies.config import DEFAULT_CONFIG_YAML, StudyConfigError, load_config
    from prunelens.studies.runner import run_study

    if print_config:
        typer.echo(DEFAULT_CONFIG_YAML, nl=False)
        return
    if out is None:
        _fail("--out is required (the study directory)")
    if engine not in ("local", "ray"):
        _fail(f"unknown engine {engine!r}; choose local or ray")
    _threads(threads)
    try:
        cfg = load_config(config)
        override = {k: v for k, v in (("model", model), ("dtype", dtype), ("device", device)) if v}
        if override:
            from prunelens.studies.config import DENSE, parse_config

            raw = cfg.to_dict()
            raw["variants"] = [v for v in raw["variants"] if v["name"] != DENSE]
            cfg = parse_config({**raw, **override})
    except StudyConfigError as exc:
        _fail(str(exc))
    from prunelens.studies.runner import plan_units

    _run_units(
        "study",
        len(plan_units(cfg)),
        lambda report: run_study(
            cfg,
            out,
            overwrite=overwrite,
            engine=engine,
            workers=workers,
            ray_address=ray_address,
            report=report,
        ),
        out,
    )


def _run_units(label: str, total: int, run, out: Path, extra: str = "") -> None:
    """Run a study's units (``run(report)``) under one overall progress bar, one line per unit, then build
    the report; a refused input anywhere inside is exit 2 and one line."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from transformers.utils import logging as hf_logging

    from prunelens.models.adapter import UnsupportedArchitectureError
    from prunelens.models.loading import ContextLengthError, ModelNotFoundError
    from prunelens.prune.drop import PruneConfigError
    from prunelens.studies.config import StudyConfigError
    from prunelens.utils.artifacts import ArtifactError
    from prunelens.utils.io import OutputExistsError

    hf_logging.disable_progress_bar()  # one overall bar; transformers' per-load bars would interleave with it
    t0 = time.perf_counter()
    with Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    ) as progress:
        task = progress.add_task(label, total=total)

        def report(unit_id: str, seconds: float, cached: bool) -> None:
            progress.console.print(
                f"{'[dim]cached[/]' if cached else '[green]done[/]  '} {unit_id}"
                + ("" if cached else f"  ({seconds:.0f} s)")
            )
            progress.advance(task)

        try:
            timings = run(report)
        except (
            StudyConfigError,
            OutputExistsError,
            PruneConfigError,
            ModelNotFoundError,
            UnsupportedArchitectureError,
            ArtifactError,
            ContextLengthError,
        ) as exc:
            _fail(str(exc))
    from prunelens.report import build_report

    path = build_report(out)
    out_console.print(
        f"{label} finished in {time.perf_counter() - t0:.0f} s "
        f"(unit time {timings['total_unit_seconds']:.0f} s); report: {path}{extra}"
    )


@app.command()
def report(study_dir: Path = typer.Argument(..., help="A `prunelens study` output directory.")):
    """Rebuild tables, figures and report.html from a study's stored results."""
    from prunelens.report import build_report

    if not (study_dir / "study.json").exists():
        _fail(f"{study_dir} is not a prunelens study directory (no study.json)")
    out_console.print(f"report: {build_report(study_dir)}")


def _csv_numbers(text: str | None, option: str, kind: type) -> list | None:
    """``"1,2,4"`` → ``[1, 2, 4]`` (``kind`` int or float); a bad or empty list fails naming ``option``."""
    if text is None:
        return None
    word = "integers" if kind is int else "numbers"
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values:
        _fail(f"{option}: {text!r} is not a comma-separated list of {word}")
    return values


@app.command()
def sweep(
    config: Path | None = typer.Option(
        None, "--config", help="Sweep config (YAML, see --print-config). Options below override it."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Sweep directory (re-running the same command resumes it)."
    ),
    model: str | None = typer.Option(None, "--model", help="Override the config's model. " + MODEL_HELP),
    target: str | None = typer.Option(
        None, "--target", help="Drop sweep: attn, mlp, block or joint (exclusive with --method)."
    ),
    method: str | None = typer.Option(
        None, "--method", help="Sparsity sweep: magnitude, wanda or sparsegpt (exclusive with --target)."
    ),
    ns: str | None = typer.Option(None, "--ns", help="Drop counts, e.g. 1,2,4,8 (drop sweeps)."),
    sparsities: str | None = typer.Option(
        None, "--sparsities", help="Sparsities in (0, 1), e.g. 0.1,0.3,0.5 (sparsity sweeps)."
    ),
    seeds: str | None = typer.Option(
        None, "--seeds", help="Calibration seeds per ratio, e.g. 0,1,2 (default 0,1,2)."
    ),
    dtype: str | None = typer.Option(None, "--dtype", help="Override the dtype: float32, bfloat16, float16."),
    device: str | None = typer.Option(None, "--device", help="Override the device: cpu, cuda, cuda:N, auto."),
    print_config: bool = typer.Option(
        False, "--print-config", help="Print the default sweep config (copy, edit, pass back) and exit."
    ),
    engine: str = typer.Option(
        "local", "--engine", help="local (one process) or ray (one Ray task per variant = ratio × seed)."
    ),
    workers: int = typer.Option(2, "--workers", help="Ray: worker processes of the local cluster."),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Ray: join a running cluster (e.g. auto)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Re-use a directory written with another config (changed units re-run)."
    ),
    threads: int | None = _Common.threads,
):
    """One pruning family over a range of ratios, each at several calibration seeds: curves with error bands
    of the retained non-generative score, generation fidelity (beside the control's), teacher-forced KL
    and the predictor against the ratio, and per use the largest ratio still indistinguishable from dense.

    Runs as a study (one unit per ratio × seed × task; the same command again resumes) and writes
    report/report.html with a Sweep section, report/sweep.json and report/sweep.csv.
    """
    import yaml

    from prunelens.models.adapter import UnsupportedArchitectureError
    from prunelens.models.loading import ContextLengthError, ModelNotFoundError
    from prunelens.studies.config import StudyConfigError
    from prunelens.studies.runner import plan_units
    from prunelens.studies.sweep import DEFAULT_SWEEP_YAML, parse_sweep, preflight, run_sweep, study_config

    if print_config:
        typer.echo(DEFAULT_SWEEP_YAML, nl=False)
        return
    if out is None:
        _fail("--out is required (the sweep directory)")
    if engine not in ("local", "ray"):
        _fail(f"unknown engine {engine!r}; choose local or ray")
    ns_list = _csv_numbers(ns, "--ns", int)
    sp_list = _csv_numbers(sparsities, "--sparsities", float)
    seed_list = _csv_numbers(seeds, "--seeds", int)
    cli_drop, cli_sparse = bool(target or ns_list), bool(method or sp_list)
    if cli_drop and cli_sparse:
        _fail("--target / --ns make a drop sweep, --method / --sparsities a sparsity sweep: give one family")
    raw: dict = {}
    if config is not None:
        if not config.exists():
            _fail(f"--config {config} does not exist (see `prunelens sweep --print-config`)")
        try:
            raw = yaml.safe_load(config.read_text()) or {}
        except yaml.YAMLError as exc:
            _fail(f"--config {config} is not valid YAML: {str(exc).splitlines()[0]}")
        if not isinstance(raw, dict):
            _fail(f"--config {config}: the sweep config must be a YAML mapping")
    block = raw.get("sweep") if raw.get("sweep") is not None else {}
    if isinstance(block, dict):  # not a mapping: parse_sweep names the field
        block = dict(block)
        fam = block.get("family") or ("sparsify" if {"method", "sparsities"} & set(block) else "drop")
        if (cli_drop and fam != "drop") or (cli_sparse and fam != "sparsify"):
            block = {k: v for k, v in block.items() if k == "seeds"}  # the command line switches family
        overrides = (("target", target), ("ns", ns_list), ("method", method), ("sparsities", sp_list))
        block.update({k: v for k, v in overrides if v})
        if cli_drop or cli_sparse:
            block["family"] = "drop" if cli_drop else "sparsify"
        if seed_list:
            block["seeds"] = seed_list
    raw = {**raw, "sweep": block}
    raw.update({k: v for k, v in (("model", model), ("dtype", dtype), ("device", device)) if v})
    try:
        sc = parse_sweep(raw)
    except StudyConfigError as exc:
        _fail(str(exc))
    _threads(threads)
    try:  # before the progress bar: a refused model or ratio prints one line
        preflight(sc)
    except (StudyConfigError, ModelNotFoundError, UnsupportedArchitectureError, ContextLengthError) as exc:
        _fail(str(exc))
    _run_units(
        "sweep",
        len(plan_units(study_config(sc))),
        lambda report: run_sweep(
            sc,
            out,
            overwrite=overwrite,
            engine=engine,
            workers=workers,
            ray_address=ray_address,
            report=report,
        ),
        out,
        " (sweep.json, sweep.csv beside it)",
    )


@app.command()
def repair(
    pruned: str = typer.Argument(..., help="A pruned prunelens checkpoint (from `prunelens prune ...`)."),
    out: Path = typer.Option(..., "--out", help="Output directory for the repaired checkpoint."),
    teacher: str | None = typer.Option(
        None,
        "--teacher",
        help="The dense teacher (default: the model PRUNED was pruned from, as its plan says).",
    ),
    loss: str = typer.Option(
        "kl",
        "--loss",
        help="kl (forward KL to the teacher's distribution), reverse-kl, jsd, or ce (plain next-token "
        "cross-entropy on the same text: the baseline).",
    ),
    temperature: float = typer.Option(1.0, "--temperature", help="Softmax temperature of the divergence."),
    train: str = typer.Option(
        "lora",
        "--train",
        help="lora (adapters on every remaining linear, merged on save) or norms (norm weights).",
    ),
    rank: int = typer.Option(8, "--rank", help="LoRA rank."),
    alpha: float = typer.Option(16.0, "--alpha", help="LoRA alpha (the update is scaled by alpha / rank)."),
    lr: float | None = typer.Option(
        None, "--lr", help="Peak learning rate (default: 2e-4 for lora, 1e-3 for norms)."
    ),
    steps: int = typer.Option(100, "--steps", help="Optimiser steps."),
    warmup: float = typer.Option(0.1, "--warmup", help="Fraction of the steps with a rising learning rate."),
    batch_size: int = typer.Option(4, "--batch-size", help="Calibration windows per micro-batch."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per optimiser step."),
    weight_decay: float = typer.Option(0.0, "--weight-decay", help="AdamW weight decay."),
    precision: str = typer.Option("float32", "--precision", help="float32 or bfloat16 (autocast)."),
    heldout: float = typer.Option(
        0.125,
        "--heldout",
        help="Fraction of the calibration text held out (disjoint) for the KL and early stopping.",
    ),
    eval_every: int = typer.Option(
        20, "--eval-every", help="Measure the held-out KL (and checkpoint) every N steps."
    ),
    patience: int | None = typer.Option(
        3, "--patience", help="Stop after this many evaluations without a lower held-out KL (0: never)."
    ),
    keep: str = typer.Option(
        "best", "--keep", help="best (the state with the lowest held-out KL) or last (where training ended)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the adapter initialisation and the window order."),
    calib: str = _Common.calib,
    nsamples: int = _Common.nsamples,
    seqlen: int = _Common.seqlen,
    calib_seed: int = typer.Option(0, "--calib-seed", help="Seed for calibration sampling."),
    dtype: str = _Common.dtype,
    device: str = _Common.device,
    overwrite: bool = _Common.overwrite,
    restart: bool = typer.Option(
        False, "--restart", help="Discard the saved state of an interrupted repair instead of resuming it."
    ),
    threads: int | None = _Common.threads,
):
    """Repair a pruned model by distilling the dense teacher's next-token probabilities into it.

    The damage pruning does to generation is in the probabilities (softmax amplifies small logit changes,
    decoding compounds them); this trains LoRA adapters (or norms) so that the pruned model's distribution
    matches the teacher's on calibration text. Masks and drops are kept: sparse weights keep their zeros
    and N:M pattern, dropped sublayers stay dropped. An interrupted repair resumes when run again with the
    same arguments. Writes a prunelens checkpoint (its plan records the repair), repair_log.json and
    repair_loss.png.
    """
    from prunelens.data.calibration import CalibrationDataError
    from prunelens.data.paths import DataNotFoundError
    from prunelens.distill import RepairInputError, RepairSettings, RepairSettingsError
    from prunelens.distill import repair as run_repair
    from prunelens.models.adapter import UnsupportedArchitectureError
    from prunelens.models.loading import ContextLengthError, ModelNotFoundError
    from prunelens.utils.artifacts import ArtifactError
    from prunelens.utils.io import OutputExistsError

    _threads(threads)
    t0 = time.perf_counter()
    try:
        settings = RepairSettings(
            loss=loss,
            temperature=temperature,
            train=train,
            rank=rank,
            alpha=alpha,
            lr=lr,
            steps=steps,
            warmup=warmup,
            batch_size=batch_size,
            grad_accum=grad_accum,
            weight_decay=weight_decay,
            precision=precision,
            heldout=heldout,
            eval_every=eval_every,
            patience=patience or None,
            keep=keep,
            seed=seed,
        )
        result = run_repair(
            pruned,
            out=out,
            teacher=teacher,
            settings=settings,
            calib=calib,
            nsamples=nsamples,
            seqlen=seqlen,
            calib_seed=calib_seed,
            dtype=dtype,
            device=device,
            overwrite=overwrite,
            restart=restart,
        )
    except RepairSettingsError as exc:
        # a settings field is spelled as its option: batch_size → --batch-size
        _fail(f"--{exc.field.replace('_', '-')}: {str(exc).split(': ', 1)[1]}")
    except (
        RepairInputError,
        CalibrationDataError,
        DataNotFoundError,
        ModelNotFoundError,
        UnsupportedArchitectureError,
        ArtifactError,
        ContextLengthError,
        OutputExistsError,
    ) as exc:
        _fail(str(exc))
    r = result.summary
    t = Table(title=f"{result.plan.name} saved to {out}", show_header=False)
    t.add_row("repair", f"{r['loss']} on {r['train']}, {r['trainable_parameters']:,} trainable parameters")
    t.add_row("steps", f"{r['steps_run']} of {r['steps']} ({r['stopped']}); kept step {r['kept_step']}")
    t.add_row("tokens", f"{r['tokens']:,}")
    b, a = r["heldout_before"], r["heldout_after"]
    t.add_row("held-out KL(p‖q)", f"{b['heldout_kl']:.4f} → {a['heldout_kl']:.4f}")
    t.add_row("held-out CE", f"{b['heldout_ce']:.4f} → {a['heldout_ce']:.4f}")
    t.add_row("time", f"{time.perf_counter() - t0:.1f} s (repair {r['seconds']:.1f} s)")
    out_console.print(t)


@app.command("cache")
def cache_cmd(
    action: str = typer.Argument("list", help="list: show converted GGUF checkpoints; clear: remove them."),
):
    """The cache of converted GGUF files (each GGUF is de-quantised once, then loads as safetensors)."""
    from prunelens.models.loading import clear_gguf_cache, gguf_cache_root

    root = gguf_cache_root()
    if action == "list":
        entries = (
            sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            if root.exists()
            else []
        )
        for p in entries:
            size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            out_console.print(f"{p}  ({size / 2**20:.0f} MiB)", soft_wrap=True)
        if not entries:
            out_console.print(f"no converted GGUF files in {root}")
    elif action == "clear":
        removed = clear_gguf_cache()
        out_console.print(f"removed {len(removed)} converted checkpoint(s) from {root}")
    else:
        _fail(f"unknown cache action {action!r}; choose list or clear")


# `prunelens analyze` is defined with the analysis it drives; registered here, after the app exists
from prunelens.analysis.cli import analyze as _analyze  # noqa: E402

app.command("analyze")(_analyze)


def main() -> None:  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
