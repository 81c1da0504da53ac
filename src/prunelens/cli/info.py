"""``prunelens info`` (what a checkpoint is) and ``prunelens demo`` (the 90-second tour)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from prunelens import DEFAULT_MODEL
from prunelens.cli.common import (
    MODEL_HELP,
    CommonOptions,
    err_console,
    load_model,
    out_console,
    set_threads,
)
from prunelens.cli.render import print_demo, print_info


def info(
    model: str | None = typer.Argument(None, help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
):
    """Parameters, layers, family, and the prune plan if the model was pruned by prunelens."""
    from prunelens.models.adapter import Adapter, param_count

    m, _, plan = load_model(model, "auto", "cpu")
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
    print_info(data, plan)


DEMO_PROMPT = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)


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
    threads: int | None = CommonOptions.threads,
):
    """A 90-second tour (`prunelens study` is the whole job): drop the N least important attention \
sublayers of the
    embedded model, save it, and print a before/after summary (parameters, perplexity on held-out C4,
    one greedy generation from each)."""
    from prunelens.data.calibration import bos_prefix, get_calibration, load_texts, token_stream
    from prunelens.evaluation.decoding import generate
    from prunelens.evaluation.perplexity import perplexity
    from prunelens.models.adapter import param_count
    from prunelens.prune.drop import drop
    from prunelens.prune.save import save_pruned
    from prunelens.utils.io import atomic_write_json, check_output_dir

    set_threads(threads)
    check_output_dir(out, overwrite)
    t0 = time.perf_counter()
    m, tok, _ = load_model(model, "float32", "cpu")
    err_console.print(f"loaded {model or 'smollm2-135m'} ({param_count(m):,} parameters)")
    stream = token_stream(tok, load_texts("c4-heldout"))

    def measure(desc: str):
        """Perplexity on held-out C4 and the greedy answer to the demo prompt, as the model stands."""
        ppl = perplexity(m, stream, seqlen=256, max_windows=ppl_windows, bos_id=bos_prefix(tok), desc=desc)
        return ppl, generate(m, tok, [DEMO_PROMPT], max_new_tokens=max_new_tokens)[0]

    before_ppl, before_gen = measure("perplexity (dense)")
    params_before = param_count(m)
    cal = get_calibration(tok, "c4", nsamples, 256, 0)
    plan = drop(m, cal, target="attn", n=n, base_model=model or DEFAULT_MODEL)
    after_ppl, after_gen = measure(f"perplexity ({plan.name})")
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
    print_demo(summary, plan, params_before, before_ppl, after_ppl, before_gen, after_gen, out)
