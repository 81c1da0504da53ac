"""``prunelens quantize``: check the request, load (a dense or a pruned checkpoint), quantize, save, show."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from prunelens import DEFAULT_MODEL
from prunelens.cli.common import MODEL_HELP, CommonOptions, load_model, resolve_model, set_threads
from prunelens.cli.render import print_plan
from prunelens.prune.specs import GGUF_TYPES, QuantizeSpec


def quantize(
    model: str | None = typer.Argument(
        None, help=MODEL_HELP + " A pruned checkpoint is quantized as pruned."
    ),
    out: Path = typer.Option(..., "--out", help="Output directory for the quantized checkpoint."),
    qtype: str | None = typer.Option(
        None, "--type", help=f"A GGUF type, as llama.cpp stores it: {', '.join(GGUF_TYPES)}."
    ),
    method: str | None = typer.Option(None, "--method", help="rtn: round to nearest (instead of --type)."),
    bits: int | None = typer.Option(None, "--bits", help="rtn: bits per weight, 8, 4 or 3."),
    group_size: int | None = typer.Option(
        None, "--group-size", help="rtn: input columns sharing a scale (default: one scale per output row)."
    ),
    asymmetric: bool = typer.Option(
        False, "--asymmetric", help="rtn: a min–max grid with a zero point instead of the absmax grid."
    ),
    dtype: str = CommonOptions.dtype,
    device: str = CommonOptions.device,
    overwrite: bool = CommonOptions.overwrite,
    threads: int | None = CommonOptions.threads,
):
    """Quantize every linear weight inside the blocks and keep the de-quantized weights (a normal
    checkpoint that every command reads): a GGUF type through the gguf package, or round to nearest. A
    pruned model keeps its exact zeros; the plan records the quantization."""
    from prunelens.prune.quantize import check_config
    from prunelens.prune.quantize import quantize as quantize_weights
    from prunelens.prune.save import save_pruned
    from prunelens.utils.io import check_output_dir

    set_threads(threads)
    spec = QuantizeSpec(
        type=qtype, method=method, bits=bits, group_size=group_size, symmetric=not asymmetric
    ).check()
    check_output_dir(out, overwrite)
    t0 = time.perf_counter()
    src = resolve_model(model)
    check_config(src.config, spec)  # widths that cannot hold whole groups are refused before loading
    m, tok, plan = load_model(src, dtype, device)
    new_plan = quantize_weights(
        m, spec, plan=plan, base_model=plan.base_model if plan is not None else model or DEFAULT_MODEL
    )
    save_pruned(m, tok, new_plan, out, overwrite=overwrite)
    print_plan(new_plan, out, time.perf_counter() - t0)
