"""What the commands share: the common options, and the steps every command takes before the library runs
(threads, resolving and loading the model, checking calibration and the output directory)."""

from __future__ import annotations

import functools

import typer
from rich.console import Console

from prunelens.prune.specs import CalibrationSpec, SpecError, option_name
from prunelens.utils.cli_output import err_console
from prunelens.utils.cli_output import fail as fail
from prunelens.utils.errors import InputError

__all__ = ["MODEL_HELP", "CommonOptions", "err_console", "fail", "out_console"]

out_console = Console()

MODEL_HELP = (
    "Hub id, local checkpoint dir, .gguf file, prunelens dir, or alias (default: smollm2-135m, embedded)."
)


class CommonOptions:
    """Options shared by the prune commands (and some of the others)."""

    calib = typer.Option(
        CalibrationSpec.source,
        "--calib",
        help=(
            "Calibration: c4, c4-heldout, wikitext2, a .txt/.json/.jsonl file, or hub:NAME[:CONFIG[:SPLIT]]."
        ),
    )
    nsamples = typer.Option(CalibrationSpec.nsamples, "--nsamples", help="Number of calibration windows.")
    seqlen = typer.Option(CalibrationSpec.seqlen, "--seqlen", help="Tokens per calibration window.")
    seed = typer.Option(CalibrationSpec.seed, "--seed", help="Seed for calibration sampling.")
    dtype = typer.Option("float32", "--dtype", help="Model dtype: float32, bfloat16, float16 or auto.")
    device = typer.Option(
        "cpu", "--device", help="Device: cpu, cuda, cuda:N, or auto (accelerate device map over all devices)."
    )
    batch_size = typer.Option(8, "--batch-size", help="Calibration windows per forward pass.")
    overwrite = typer.Option(False, "--overwrite", help="Replace a non-empty output directory.")
    threads = typer.Option(None, "--threads", help="torch CPU threads (default: torch's choice).")


def set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)


def refusals_exit_2(command):
    """``command`` with every :class:`~prunelens.utils.errors.InputError` it raises turned into one line on
    stderr and exit code 2 (:func:`fail`): the one place the command line reports bad input.

    Anything else keeps its traceback: an internal error reported as bad input would send the user looking
    for a mistake they did not make.
    """

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except SpecError as exc:  # a spec's field, spelled as the option that set it
            fail(exc.render(option_name))
        except InputError as exc:
            fail(str(exc))

    return run


def resolve_model(model: str | None):
    """Resolve the model spec and run the cheap checks (files, config, plan) before any weights load."""
    from prunelens.models.adapter import spec_for
    from prunelens.models.loading import resolve

    src = resolve(model)
    spec_for(src.config)
    return src


def load_model(src, dtype: str, device: str):
    """Load a model resolved by :func:`resolve_model` (or a spec, resolved here).

    Returns ``(model, tokenizer, plan)``.
    """
    from prunelens.models.loading import ModelSource, load

    if not isinstance(src, ModelSource):
        src = resolve_model(src)
    if device == "auto":
        return load(src, dtype=dtype, device_map="auto", return_plan=True)
    return load(src, dtype=dtype, device=device, return_plan=True)


def check_calibration_request(src, calib: str, nsamples: int, seqlen: int):
    """Counts, lengths and the calibration file, checked before the model loads; returns the documents."""
    from prunelens.data.calibration import load_texts
    from prunelens.models.loading import check_seqlen

    CalibrationSpec(calib, nsamples, seqlen).check()
    check_seqlen(seqlen, src.config)
    return load_texts(calib)
