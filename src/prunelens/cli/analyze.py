"""``prunelens analyze``: where a pruning perturbation lives — hidden, logit or probability space.

    prunelens analyze smollm2-135m drop-8a drop-8m --out runs/analysis
    prunelens analyze DENSE runs/drop8a --out DIR --prompts prompts.txt -T 1 -T 0.7 --max-new-tokens 64
    prunelens analyze DENSE runs/wanda50 --out DIR --mc mmlu --mc-limit 100 --analyses transitions,subspace

DENSE is a model spec as elsewhere (alias, local dir, .gguf, hub id). Each PRUNED is a prunelens
checkpoint directory, a ``prune_plan.json`` (applied to DENSE on the fly, no second copy of the
weights), any other checkpoint of the same architecture and vocabulary, or a shorthand ``drop-NX``
(X = a attention, m MLP, j joint, b blocks) that scores DENSE on calibration text and drops the N most
redundant units as ``prunelens prune drop`` would. Bad input (non-positive temperature, an existing
output directory without ``--overwrite``, mismatched models, unknown data) exits with code 2 and a
one-line reason before any work.

The command reads as its steps: check the options (:func:`check_options`), read the prompts, load the
dense model, read the multiple-choice questions, resolve the pruned variants, run, show the headline table.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from prunelens.cli.common import err_console, fail, set_threads
from prunelens.cli.render import print_analysis
from prunelens.utils.errors import InputError


def csv_list(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


# Longer than 80 lines only because typer declares its thirty options in the signature.
def analyze(
    dense: str = typer.Argument(
        ..., help="Dense model: alias (smollm2-135m), local dir, .gguf file or hub id."
    ),
    pruned: list[str] = typer.Argument(
        ...,
        help="Pruned side(s): prunelens dir, prune_plan.json, checkpoint of the "
        "same architecture, or drop-N{a,m,j,b} (e.g. drop-8a).",
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output directory (tables, figures, config.json, summary.json)."
    ),
    prompts: str | None = typer.Option(
        None,
        "--prompts",
        help="Prompt file (.txt/.json/.jsonl) or task name (default: 8 GSM8K questions + 4 open questions).",
    ),
    limit: int | None = typer.Option(None, "--limit", help="Use only the first N prompts."),
    temperature: list[float] = typer.Option(
        [1.0], "--temperature", "-T", help="Softmax temperature(s) for p; repeat."
    ),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Tokens decoded per prompt."),
    mc: str | None = typer.Option(
        None,
        "--mc",
        help="Multiple-choice task for the option subspace (arc_easy, "
        "arc_challenge, openbookqa, mmlu, ...) or 'none'. Default: "
        "arc_easy when its data is available.",
    ),
    mc_limit: int = typer.Option(32, "--mc-limit", help="Multiple-choice questions (seeded subset)."),
    option_labels: str | None = typer.Option(
        None, "--option-labels", help="Comma-separated option labels (default A,B,C,...)."
    ),
    analyses: str = typer.Option(
        "transitions,trajectories,subspace", "--analyses", help="Comma-separated subset."
    ),
    scope: str = typer.Option(
        "all",
        "--scope",
        help="Transitions: 'all' layers (drop-each counterfactual where the "
        "variant keeps a sublayer) or only the 'variant' sublayers.",
    ),
    layers: str | None = typer.Option(None, "--layers", help="Comma-separated layer indices (default: all)."),
    positions: str = typer.Option(
        "all", "--positions", help="Transitions over all, prompt or generated tokens."
    ),
    no_final_norm: bool = typer.Option(
        False,
        "--no-final-norm",
        help="Logit lens without the final norm (the seed scripts' convention) for intermediate states.",
    ),
    sample: bool = typer.Option(
        False, "--sample", help="Sample (Gumbel-max, noise shared by dense and pruned) instead of greedy."
    ),
    sample_temperature: float = typer.Option(
        1.0, "--sample-temperature", help="Sampling temperature with --sample."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for sampling, prompt and question subsets."),
    batch_size: int = typer.Option(4, "--batch-size", help="Prompts per forward pass."),
    chunk_tokens: int = typer.Option(
        32, "--chunk-tokens", help="Tokens per logit-lens chunk (memory ~ chunk × vocab)."
    ),
    exact: bool = typer.Option(
        False,
        "--exact",
        help="Reference metrics (prunelens.analysis.metrics) instead of the "
        "fast streaming path (~4x slower; exact KL below ~1e-6).",
    ),
    calib: str = typer.Option("c4", "--calib", help="Calibration source for drop-N shorthands."),
    nsamples: int = typer.Option(32, "--nsamples", help="Calibration windows for drop-N shorthands."),
    seqlen: int = typer.Option(256, "--seqlen", help="Tokens per calibration window."),
    dtype: str = typer.Option("float32", "--dtype", help="Model dtype."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N."),
    threads: int | None = typer.Option(None, "--threads", help="torch CPU threads."),
    no_csv: bool = typer.Option(False, "--no-csv", help="Write Parquet only."),
    no_figures: bool = typer.Option(False, "--no-figures", help="Skip the figures."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output directory."),
):
    """Measure a pruning perturbation in hidden, logit and probability space: sublayer transitions, decoding
    trajectories (teacher-forced and free-running) and the multiple-choice option subspace."""
    from prunelens.analysis.pipeline import AnalysisConfig, run_analysis
    from prunelens.utils.io import check_output_dir

    layer_list = check_options(
        positive={"--mc-limit": mc_limit, "--nsamples": nsamples, "--seqlen": seqlen},
        limit=limit,
        layers=layers,
    )
    config = AnalysisConfig(  # its own check refuses bad temperatures, analyses, scope, positions, counts
        temperatures=tuple(temperature),
        max_new_tokens=max_new_tokens,
        analyses=tuple(csv_list(analyses)),
        scope=scope,
        final_norm=not no_final_norm,
        sample=sample,
        sample_temperature=sample_temperature,
        seed=seed,
        positions=positions,
        batch_size=batch_size,
        chunk_tokens=chunk_tokens,
        exact=exact,
        layers=layer_list,
        option_labels=tuple(csv_list(option_labels)) or None,
        csv=not no_csv,
        figures=not no_figures,
    )
    check_output_dir(out, overwrite)
    set_threads(threads)
    t0 = time.perf_counter()
    # the prompts before the model: an empty or malformed prompt file is refused without loading anything
    prompt_set, notes = load_prompt_set(prompts, limit, seed)
    model, tok = load_dense(dense, seqlen, dtype, device)
    mc_examples, mc_task = multiple_choice(mc, mc_limit, seed, config, tok, notes)
    calib_args = (calib, nsamples, seqlen, seed)
    variants = resolve_variants(model, tok, dense, pruned, calib_args)
    report = run_analysis(
        model,
        tok,
        variants,
        prompt_set,
        config,
        out=out,
        overwrite=overwrite,
        dense_name=dense,
        mc_examples=mc_examples,
        mc_task=mc_task,
        notes=notes,
        log=lambda m: err_console.print(m),
    )
    print_analysis(report, dense, config, out, time.perf_counter() - t0)


def check_options(
    *, positive: dict[str, int], limit: int | None, layers: str | None
) -> tuple[int, ...] | None:
    """The cheap checks of the options that are not the analysis's own (those are
    :class:`~prunelens.analysis.pipeline.AnalysisConfig`'s); returns the layer indices."""
    for name, val in positive.items():
        if val < 1:
            fail(f"{name} must be positive (got {val})")
    if limit is not None and limit < 1:
        fail(f"--limit must be positive (got {limit})")
    try:
        layer_list = tuple(int(x) for x in csv_list(layers)) or None
    except ValueError:
        fail(f"--layers must be comma-separated integers (got {layers!r})")
    return layer_list


def load_dense(dense: str, seqlen: int, dtype: str, device: str):
    """The dense model and tokenizer (its files, config and plan checked before any weights load)."""
    from prunelens.models.loading import check_seqlen, load, resolve

    src = resolve(dense)  # files, config and plan checked before any weights load
    check_seqlen(seqlen, src.config)
    try:
        model, tok, dense_plan = load(src, dtype=dtype, device=device, return_plan=True)
    except OSError as exc:  # a checkpoint directory whose files transformers cannot read
        fail(str(exc))
    if dense_plan is not None:
        err_console.print(f"note: the dense side {dense} is itself pruned ({dense_plan.name})")
    err_console.print(f"loaded {dense} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    return model, tok


def load_prompt_set(prompts: str | None, limit: int | None, seed: int):
    """The prompts (a file, a task, or the default set) and the notes their reading left."""
    from prunelens.analysis.prompts import load_prompts

    try:
        return load_prompts(prompts, limit=limit, seed=seed)
    except OSError as exc:  # a prompt file that cannot be read
        fail(str(exc))


def multiple_choice(mc: str | None, mc_limit: int, seed: int, config, tok, notes: list):
    """The option subspace's questions and task, or ``(None, None)`` when it is skipped
    (:func:`prunelens.analysis.subspace.analysis_questions`, which the Python API calls too)."""
    if "subspace" not in config.analyses:
        return None, None
    from prunelens.analysis.subspace import analysis_questions

    return analysis_questions(tok, mc, mc_limit, seed, config.option_labels, notes)


def resolve_variants(model, tok, dense: str, pruned: list[str], calib_args: tuple):
    """Each PRUNED spec as a variant of the loaded dense model; calibration is read at most once, and only
    when a ``drop-N`` shorthand needs it. ``calib_args`` is ``(calib, nsamples, seqlen, seed)``."""
    from prunelens.analysis.variants import resolve_variant

    cal_cache: dict = {}

    def calibration():
        if "cal" not in cal_cache:
            from prunelens.data.calibration import CalibrationDataError, get_calibration
            from prunelens.data.paths import DataNotFoundError

            try:
                cal_cache["cal"] = get_calibration(tok, *calib_args)
            except (CalibrationDataError, DataNotFoundError) as exc:
                fail(str(exc))
        return cal_cache["cal"]

    sims_cache: dict = {}
    variants: list = []
    for spec in pruned:
        try:
            v = resolve_variant(
                model,
                spec,
                tokenizer=tok,
                base_model=dense,
                calibration_factory=calibration,
                sims_cache=sims_cache,
            )
        except (InputError, OSError) as exc:  # named by the spec it came from
            fail(f"{spec}: {exc}")
        if any(v.name == w.name for w in variants):
            v.name = f"{v.name}#{len(variants)}"
        variants.append(v)
        err_console.print(
            f"variant {v.name}: {len(v.drops)} dropped sublayers, {len(v.overrides)} overridden tensors "
            f"({v.override_bytes / 2**20:.1f} MiB held twice)"
        )
    return variants
