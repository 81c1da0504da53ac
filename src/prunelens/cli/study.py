"""``prunelens study``, ``prunelens sweep`` and ``prunelens report``: run a study's units under one
progress bar, then build its report; rebuild a report from stored results."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from prunelens.cli.common import MODEL_HELP, CommonOptions, err_console, fail, out_console, set_threads


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
    threads: int | None = CommonOptions.threads,
):
    """The whole study: prune several ways, evaluate every variant on non-generative and generative tasks,
    analyse the representation hierarchy, and write tables, figures and report.html."""
    from prunelens.studies.config import DEFAULT_CONFIG_YAML, load_config
    from prunelens.studies.runner import plan_units, run_study

    if print_config:
        typer.echo(DEFAULT_CONFIG_YAML, nl=False)
        return
    if out is None:
        fail("--out is required (the study directory)")
    if engine not in ("local", "ray"):
        fail(f"unknown engine {engine!r}; choose local or ray")
    set_threads(threads)
    cfg = load_config(config)
    override = {k: v for k, v in (("model", model), ("dtype", dtype), ("device", device)) if v}
    if override:
        from prunelens.studies.config import DENSE, parse_config

        raw = cfg.to_dict()
        raw["variants"] = [v for v in raw["variants"] if v["name"] != DENSE]
        cfg = parse_config({**raw, **override})
    run_units(
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


def run_units(label: str, total: int, run, out: Path, extra: str = "") -> None:
    """Run a study's units (``run(report)``) under one overall progress bar, one line per unit, then build
    the report; a refused input anywhere inside is exit 2 and one line."""
    from rich.progress import Progress
    from transformers.utils import logging as hf_logging

    from prunelens.utils.progress import bar_columns

    hf_logging.disable_progress_bar()  # one overall bar; transformers' per-load bars would interleave with it
    t0 = time.perf_counter()
    with Progress(*bar_columns(), console=err_console, transient=False) as progress:
        task = progress.add_task(label, total=total)

        def report(unit_id: str, seconds: float, cached: bool) -> None:
            progress.console.print(
                f"{'[dim]cached[/]' if cached else '[green]done[/]  '} {unit_id}"
                + ("" if cached else f"  ({seconds:.0f} s)")
            )
            progress.advance(task)

        timings = run(report)  # a refused input inside is an InputError: one line, exit 2 (refusals_exit_2)
    from prunelens.report import build_report

    path = build_report(out)
    out_console.print(
        f"{label} finished in {time.perf_counter() - t0:.0f} s "
        f"(unit time {timings['total_unit_seconds']:.0f} s); report: {path}{extra}"
    )


def report(study_dir: Path = typer.Argument(..., help="A `prunelens study` output directory.")):
    """Rebuild tables, figures and report.html from a study's stored results."""
    from prunelens.report import build_report

    if not (study_dir / "study.json").exists():
        fail(f"{study_dir} is not a prunelens study directory (no study.json)")
    out_console.print(f"report: {build_report(study_dir)}")


def csv_numbers(text: str | None, option: str, kind: type) -> list | None:
    """``"1,2,4"`` → ``[1, 2, 4]`` (``kind`` int or float); a bad or empty list fails naming ``option``."""
    if text is None:
        return None
    word = "integers" if kind is int else "numbers"
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values:
        fail(f"{option}: {text!r} is not a comma-separated list of {word}")
    return values


# Longer than 80 lines only because typer declares its options in the signature.
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
    threads: int | None = CommonOptions.threads,
):
    """One pruning family over a range of ratios, each at several calibration seeds: curves with error bands
    of the retained non-generative score, generation fidelity (beside the control's), teacher-forced KL
    and the predictor against the ratio, and per use the largest ratio still indistinguishable from dense.

    Runs as a study (one unit per ratio × seed × task; the same command again resumes) and writes
    report/report.html with a Sweep section, report/sweep.json and report/sweep.csv.
    """
    from prunelens.studies.runner import plan_units
    from prunelens.studies.sweep import DEFAULT_SWEEP_YAML, parse_sweep, preflight, run_sweep, study_config

    if print_config:
        typer.echo(DEFAULT_SWEEP_YAML, nl=False)
        return
    if out is None:
        fail("--out is required (the sweep directory)")
    if engine not in ("local", "ray"):
        fail(f"unknown engine {engine!r}; choose local or ray")
    ns_list = csv_numbers(ns, "--ns", int)
    sp_list = csv_numbers(sparsities, "--sparsities", float)
    seed_list = csv_numbers(seeds, "--seeds", int)
    cli_drop, cli_sparse = bool(target or ns_list), bool(method or sp_list)
    if cli_drop and cli_sparse:
        fail("--target / --ns make a drop sweep, --method / --sparsities a sparsity sweep: give one family")
    raw = read_sweep_config(config)
    raw = {**raw, "sweep": merge_sweep_options(raw, target, ns_list, method, sp_list, seed_list)}
    raw.update({k: v for k, v in (("model", model), ("dtype", dtype), ("device", device)) if v})
    sc = parse_sweep(raw)
    set_threads(threads)
    preflight(sc)  # before the progress bar: a refused model or ratio prints one line
    run_units(
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


def read_sweep_config(config: Path | None) -> dict:
    """The sweep config file as a mapping (empty without ``--config``); a missing or malformed file fails."""
    import yaml

    raw: dict = {}
    if config is not None:
        if not config.exists():
            fail(f"--config {config} does not exist (see `prunelens sweep --print-config`)")
        try:
            raw = yaml.safe_load(config.read_text()) or {}
        except yaml.YAMLError as exc:
            fail(f"--config {config} is not valid YAML: {str(exc).splitlines()[0]}")
        if not isinstance(raw, dict):
            fail(f"--config {config}: the sweep config must be a YAML mapping")
    return raw


def merge_sweep_options(
    raw: dict,
    target: str | None,
    ns_list: list | None,
    method: str | None,
    sp_list: list | None,
    seed_list: list | None,
):
    """The config's ``sweep:`` block with the command line's family options laid over it.

    Options of the other family than the config's switch the sweep to their family (only ``seeds`` is
    kept from the file). A block that is not a mapping is returned as it is: ``parse_sweep`` names it.
    """
    cli_drop, cli_sparse = bool(target or ns_list), bool(method or sp_list)
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
    return block
