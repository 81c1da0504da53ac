"""``prunelens prune drop`` and ``prunelens prune sparsify``: check the request, load, prune, save, show.

Each command's option checks are one function (:func:`check_drop_options`, :func:`check_sparsify_options`)
run before any model loads, so that a refused request writes nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from prunelens import DEFAULT_MODEL
from prunelens.cli.common import (
    MODEL_HELP,
    CommonOptions,
    check_calibration_request,
    fail,
    load_model,
    resolve_model,
    set_threads,
)
from prunelens.cli.render import print_plan
from prunelens.utils.errors import InputError

ALREADY_PRUNED = "the model is already pruned; prune its dense parent instead (plans do not stack yet)"


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
    calib: str = CommonOptions.calib,
    nsamples: int = CommonOptions.nsamples,
    seqlen: int = CommonOptions.seqlen,
    seed: int = CommonOptions.seed,
    dtype: str = CommonOptions.dtype,
    device: str = CommonOptions.device,
    batch_size: int = CommonOptions.batch_size,
    overwrite: bool = CommonOptions.overwrite,
    threads: int | None = CommonOptions.threads,
):
    """Drop the N least important attention/MLP sublayers or blocks: by default the highest \
input/output cosine similarity; with --objective generation or choice, the smallest exact effect on the \
next-token or option distribution."""
    from prunelens.data.calibration import get_calibration
    from prunelens.prune.drop import drop, validate_drop
    from prunelens.prune.save import save_pruned
    from prunelens.utils.io import check_output_dir

    set_threads(threads)
    check_drop_options(
        target,
        n,
        window,
        temperature,
        objective,
        estimator,
        search_budget,
        search_evaluations,
        score_windows,
        nsamples,
    )
    choice_examples = None
    if objective == "choice":
        choice_examples = choice_examples_for(choice_task, choice_limit, seed)
    check_output_dir(out, overwrite)
    t0 = time.perf_counter()
    src = resolve_model(model)
    if src.plan is not None:
        fail(ALREADY_PRUNED)
    validate_drop(src.num_layers, target, n)
    texts = check_calibration_request(src, calib, nsamples, seqlen)
    m, tok, _ = load_model(src, dtype, device)
    cal = get_calibration(tok, calib, nsamples, seqlen, seed, texts=texts)
    choices = None
    if choice_examples is not None:
        choices = _choice_set(tok, choice_task, choice_limit, seed, choice_examples)
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
    print_plan(plan, out, time.perf_counter() - t0)


def check_drop_options(
    target: str,
    n: int,
    window: bool,
    temperature: float,
    objective: str,
    estimator: str,
    search_budget: float | None,
    search_evaluations: int | None,
    score_windows: int | None,
    nsamples: int,
) -> None:
    """Every check of ``prune drop``'s options that needs no model (its layer count is checked later)."""
    from prunelens.plan import DROP_TARGETS
    from prunelens.prune.drop import validate_objective, validate_score_windows

    if target not in DROP_TARGETS:
        fail(f"unknown target {target!r}; choose one of {', '.join(DROP_TARGETS)}")
    if n <= 0:
        fail(f"--n must be positive (got {n})")
    if window and target != "block":
        fail("--window only applies to --target block")
    if not temperature > 0:
        fail(f"--temperature must be positive (got {temperature})")
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


def choice_examples_for(task: str, limit: int, seed: int):
    """The choice objective's questions (the task's validation split), read before any model loads."""
    from prunelens.analysis.subspace import CHOICE_SPLIT
    from prunelens.data.tasks import TASKS, load_task

    mc = sorted(k for k, v in TASKS.items() if v.kind == "mc")
    if task not in mc:
        fail(f"--choice-task must be a multiple-choice task ({', '.join(mc)}), got {task!r}")
    if limit <= 0:
        fail(f"--choice-limit must be positive (got {limit})")
    try:
        examples = load_task(task, split=CHOICE_SPLIT, limit=limit, seed=seed)
    except (OSError, InputError) as exc:  # no data, or a data file that cannot be read
        fail(f"--choice-task {task}: no {CHOICE_SPLIT} questions to score on ({exc})")
    if not examples:
        fail(f"--choice-task {task}: its {CHOICE_SPLIT} split holds no question")
    return examples


def _choice_set(tok, task: str, limit: int, seed: int, examples):
    """The choice objective's questions as option-token ids; a tokenizer without them is refused."""
    from prunelens.analysis.subspace import OptionTokenError, choice_set

    try:
        return choice_set(tok, task, limit=limit, seed=seed, examples=examples)
    except OptionTokenError as exc:
        fail(f"--choice-task {task}: {exc}")


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
    calib: str = CommonOptions.calib,
    nsamples: int = CommonOptions.nsamples,
    seqlen: int = CommonOptions.seqlen,
    seed: int = CommonOptions.seed,
    dtype: str = CommonOptions.dtype,
    device: str = CommonOptions.device,
    batch_size: int = CommonOptions.batch_size,
    overwrite: bool = CommonOptions.overwrite,
    threads: int | None = CommonOptions.threads,
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
    from prunelens.data.calibration import get_calibration
    from prunelens.prune.save import save_pruned
    from prunelens.prune.sparsify import sparsify
    from prunelens.utils.io import check_output_dir

    set_threads(threads)
    check_sparsify_options(method, sparsity, pattern, allocation, allocation_lambda)
    check_output_dir(out, overwrite)
    t0 = time.perf_counter()
    exec_device = None
    if device not in ("cpu", "auto"):
        exec_device, device = (
            device,
            "cpu",
        )  # keep weights on the CPU, process one block at a time on the device
    src = resolve_model(model)
    if src.plan is not None:
        fail(ALREADY_PRUNED)
    calibrate = method != "magnitude" or allocation != "uniform"
    texts = check_calibration_request(src, calib, nsamples, seqlen) if calibrate else None
    m, tok, _ = load_model(src, dtype, device)
    cal = get_calibration(tok, calib, nsamples, seqlen, seed, texts=texts) if calibrate else None
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
    save_pruned(m, tok, plan, out, overwrite=overwrite)
    print_plan(plan, out, time.perf_counter() - t0)


def check_sparsify_options(
    method: str,
    sparsity: float | None,
    pattern: str | None,
    allocation: str,
    allocation_lambda: float | None,
) -> None:
    """Every check of ``prune sparsify``'s options, made before any model loads."""
    from prunelens.plan import ALLOCATIONS
    from prunelens.prune.sparsify import validate_sparsity

    if allocation not in ALLOCATIONS:
        fail(f"--allocation must be one of {', '.join(ALLOCATIONS)} (got {allocation!r})")
    if allocation != "uniform" and pattern is not None:
        fail(f"--allocation {allocation} needs --sparsity: N:M patterns (--pattern) stay uniform")
    if allocation == "uniform" and allocation_lambda is not None:
        fail("--allocation-lambda only applies with --allocation owl or kl")
    if allocation_lambda is not None and not 0.0 <= allocation_lambda < 1.0:
        fail(f"--allocation-lambda must be in [0, 1) (got {allocation_lambda})")
    validate_sparsity(method, sparsity, pattern, allocation, allocation_lambda)
