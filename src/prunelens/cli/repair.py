"""``prunelens repair``: distil the dense teacher into a pruned checkpoint, then show what changed."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from prunelens.cli.common import CommonOptions, fail, set_threads
from prunelens.cli.render import print_repair


# Longer than 80 lines only because typer declares its twenty-odd options in the signature.
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
    calib: str = CommonOptions.calib,
    nsamples: int = CommonOptions.nsamples,
    seqlen: int = CommonOptions.seqlen,
    calib_seed: int = typer.Option(0, "--calib-seed", help="Seed for calibration sampling."),
    dtype: str = CommonOptions.dtype,
    device: str = CommonOptions.device,
    overwrite: bool = CommonOptions.overwrite,
    restart: bool = typer.Option(
        False, "--restart", help="Discard the saved state of an interrupted repair instead of resuming it."
    ),
    threads: int | None = CommonOptions.threads,
):
    """Repair a pruned model by distilling the dense teacher's next-token probabilities into it.

    The damage pruning does to generation is in the probabilities (softmax amplifies small logit changes,
    decoding compounds them); this trains LoRA adapters (or norms) so that the pruned model's distribution
    matches the teacher's on calibration text. Masks and drops are kept: sparse weights keep their zeros
    and N:M pattern, dropped sublayers stay dropped. An interrupted repair resumes when run again with the
    same arguments. Writes a prunelens checkpoint (its plan records the repair), repair_log.json and
    repair_loss.png.
    """
    from prunelens.distill import RepairSettings, RepairSettingsError
    from prunelens.distill import repair as run_repair

    set_threads(threads)
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
        fail(f"--{exc.field.replace('_', '-')}: {str(exc).split(': ', 1)[1]}")
    print_repair(result, out, time.perf_counter() - t0)
