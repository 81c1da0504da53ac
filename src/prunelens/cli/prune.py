"""``prunelens prune drop`` and ``prunelens prune sparsify``: check the request, load, prune, save, show.

Each command's options become a spec (:class:`~prunelens.prune.specs.DropSpec`, :class:`SparsifySpec`)
whose check runs before any model loads, so that a refused request writes nothing; its refusals name
the options (``--score-windows: ...``).
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
from prunelens.prune.specs import CHOICE_LIMIT, CHOICE_SPLIT, CHOICE_TASK, DropSpec, SparsifySpec
from prunelens.utils.errors import InputError

ALREADY_PRUNED = "the model is already pruned; prune its dense parent instead (plans do not stack yet)"


# Longer than 80 lines only because typer declares its options in the signature.
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
    choice_task: str | None = typer.Option(
        None,
        "--choice-task",
        help=f"choice objective: multiple-choice task whose validation split is read (default {CHOICE_TASK})",
    ),
    choice_limit: int | None = typer.Option(
        None, "--choice-limit", help=f"choice objective: number of questions (default {CHOICE_LIMIT})."
    ),
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
    from prunelens.prune.drop import drop
    from prunelens.prune.save import save_pruned
    from prunelens.utils.io import check_output_dir

    set_threads(threads)
    spec = DropSpec(
        target,
        n,
        iterative=iterative,
        window=window,
        objective=objective,
        estimator=estimator,
        temperature=temperature,
        search_budget=search_budget,
        search_evaluations=search_evaluations,
        choice_task=choice_task,
        choice_limit=choice_limit,
        score_windows=score_windows,
    ).check(nsamples=nsamples)
    choice_examples = choice_examples_for(spec, seed) if spec.objective == "choice" else None
    check_output_dir(out, overwrite)
    t0 = time.perf_counter()
    src = resolve_model(model)
    if src.plan is not None:
        fail(ALREADY_PRUNED)
    spec.check(nsamples=nsamples, num_layers=src.num_layers)
    texts = check_calibration_request(src, calib, nsamples, seqlen)
    m, tok, _ = load_model(src, dtype, device)
    cal = get_calibration(tok, calib, nsamples, seqlen, seed, texts=texts)
    choices = None
    if choice_examples is not None:
        choices = _choice_set(tok, spec, seed, choice_examples)
    plan = drop(
        m, cal, spec, batch_size=batch_size, base_model=model or DEFAULT_MODEL, choices=choices, seed=seed
    )
    save_pruned(m, tok, plan, out, overwrite=overwrite)
    print_plan(plan, out, time.perf_counter() - t0)


def choice_examples_for(spec: DropSpec, seed: int):
    """The choice objective's questions (the task's validation split), read before any model loads."""
    from prunelens.data.tasks import load_task

    task, limit = spec.questions
    try:
        examples = load_task(task, split=CHOICE_SPLIT, limit=limit, seed=seed)
    except (OSError, InputError) as exc:  # no data, or a data file that cannot be read
        fail(f"--choice-task {task}: no {CHOICE_SPLIT} questions to score on ({exc})")
    if not examples:
        fail(f"--choice-task {task}: its {CHOICE_SPLIT} split holds no question")
    return examples


def _choice_set(tok, spec: DropSpec, seed: int, examples):
    """The choice objective's questions as option-token ids; a tokenizer without them is refused."""
    from prunelens.analysis.subspace import OptionTokenError, choice_set

    task, limit = spec.questions
    try:
        return choice_set(tok, task, limit=limit, seed=seed, examples=examples)
    except OptionTokenError as exc:
        fail(f"--choice-task {task}: {exc}")


# Longer than 80 lines only because typer declares its options in the signature.
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
    spec = SparsifySpec(
        method,
        sparsity,
        pattern,
        true_sequential=true_sequential,
        allocation=allocation,
        allocation_lambda=allocation_lambda,
        blocksize=blocksize,
        percdamp=percdamp,
    ).check()
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
        m, cal, spec, batch_size=batch_size, device=exec_device, base_model=model or DEFAULT_MODEL
    )
    save_pruned(m, tok, plan, out, overwrite=overwrite)
    print_plan(plan, out, time.perf_counter() - t0)
