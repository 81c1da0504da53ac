"""Repair a pruned model by distilling its dense teacher's next-token distribution into it.

What trains (``settings.train``):

* ``lora`` — low-rank adapters (``peft``) on every linear layer the pruned blocks still have, merged into
  the weights when the repair ends, so the result is a plain checkpoint with the pruned structure;
* ``norms`` — the norm weights only (the cheapest repair: a few thousand parameters).

What stays as it was: dropped sublayers and blocks stay dropped (their no-op modules have no linear to
adapt), embeddings and the unembedding are frozen, and **sparsified weights keep their zeros**. For a
sparse linear the adapter's update is masked by the weight's non-zero pattern *in the forward pass*,
``W + M ⊙ (B A)·s``, so training sees the same function that the merged, still-sparse weight computes
(merging an unmasked update and masking afterwards would train one function and save another). The
masked forward builds the dense update of each sparse linear (``out × in``) on every step, which costs
one extra weight-sized tensor per adapted layer in the autograd graph.

The loop is the usual one: AdamW, linear warm-up then cosine decay (``transformers``' schedule),
gradient accumulation, gradient clipping, float32 or bfloat16 autocast, a seeded window order, the
held-out teacher-forced KL every ``eval_every`` steps with early stopping (the best state is kept), and a
checkpoint of the trainable tensors, the optimiser and the schedule at every evaluation, so a killed
repair started again with the same settings continues where it stopped and ends with the same weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunelens.data.calibration import Calibration
from prunelens.distill.losses import repair_loss, token_cross_entropy, token_divergence
from prunelens.distill.settings import RepairSettings
from prunelens.distill.trainable import attach_trainable, load_trainable, merge_trainable, trainable_state
from prunelens.plan import PrunePlan
from prunelens.utils.errors import InputError
from prunelens.utils.io import atomic_write_json
from prunelens.utils.progress import progress_bar

STATE_FORMAT = "prunelens.repair-state/1"


class RepairInputError(InputError):
    """Teacher, student or calibration that cannot be repaired together (one line: what and why)."""


@dataclass
class RepairResult:
    """The repaired student (adapters merged) and what happened on the way."""

    model: nn.Module
    plan: PrunePlan
    log: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


# --- the pair ----------------------------------------------------------------------------------


def check_pair(student: nn.Module, teacher: nn.Module, student_tok=None, teacher_tok=None) -> None:
    """Teacher and student must speak the same vocabulary: the losses compare distributions over it."""
    vs = student.get_output_embeddings().weight.shape[0]
    vt = teacher.get_output_embeddings().weight.shape[0]
    if vs != vt:
        raise RepairInputError(
            f"teacher and student have different vocabularies ({vt} vs {vs} tokens): "
            "distillation compares their distributions token by token"
        )
    if (
        student_tok is not None
        and teacher_tok is not None
        and student_tok.get_vocab() != teacher_tok.get_vocab()
    ):
        raise RepairInputError("teacher and student tokenizers differ: their token ids do not mean the same")


# --- the loop ----------------------------------------------------------------------------------


def _window_order(n: int, seed: int, count: int, start: int = 0) -> list[int]:
    """Windows ``start … start+count−1`` of an endless seeded sequence of epochs (each a permutation of
    ``n`` windows): a pure function of its arguments, so a resumed run reads the same windows."""
    out: list[int] = []
    epoch_cache: dict[int, list[int]] = {}
    for k in range(start, start + count):
        epoch, pos = divmod(k, n)
        if epoch not in epoch_cache:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            epoch_cache[epoch] = torch.randperm(n, generator=g).tolist()
        out.append(epoch_cache[epoch][pos])
    return out


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits


@torch.no_grad()
def heldout_metrics(
    student: nn.Module,
    teacher: nn.Module,
    windows: torch.Tensor,
    batch_size: int,
    teacher_logits: list[torch.Tensor] | None = None,
) -> dict[str, float]:
    """Teacher-forced ``KL(p ‖ q)`` at T = 1 and the student's cross-entropy on held-out windows (means
    over every predicted position, float32)."""
    device = next(student.parameters()).device
    kl_sum = ce_sum = 0.0
    count = 0
    for b, start in enumerate(range(0, windows.shape[0], batch_size)):
        ids = windows[start : start + batch_size].to(device)
        t = teacher_logits[b] if teacher_logits is not None else _logits(teacher, ids)
        s = _logits(student, ids)
        kl_sum += float(token_divergence(s[:, :-1], t[:, :-1].to(s.device), "kl", 1.0).sum())
        ce_sum += float(token_cross_entropy(s[:, :-1], ids[:, 1:]).sum())
        count += ids.shape[0] * (ids.shape[1] - 1)
    return {"heldout_kl": kl_sum / count, "heldout_ce": ce_sum / count}


def settings_fingerprint(settings: RepairSettings, calibration: Calibration, extra: dict[str, Any]) -> str:
    """What a saved repair state must match to be resumed (settings, calibration, student, teacher)."""
    blob = json.dumps(
        {"settings": settings.to_dict(), "calibration": calibration.describe(), **extra},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class RepairStateError(RepairInputError):
    """A saved repair state that does not belong to this repair."""


def _save_state(state_dir: Path, step: int, model, opt, sched, meta: dict[str, Any], best) -> None:
    """One complete checkpoint directory ``step-NNNNNN``, written beside and renamed into place."""
    from safetensors.torch import save_file

    final = state_dir / f"step-{step:06d}"
    tmp = state_dir / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in trainable_state(model).items()}, str(tmp / "trainable.safetensors")
    )
    if best is not None:
        save_file({k: v.contiguous() for k, v in best.items()}, str(tmp / "best.safetensors"))
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({**meta, "step": step}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in state_dir.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def _latest_state(state_dir: Path | None) -> Path | None:
    if state_dir is None or not state_dir.is_dir():
        return None
    done = sorted(p for p in state_dir.glob("step-*") if (p / "state.json").exists())
    return done[-1] if done else None


@dataclass
class _Loop:
    """What every step of one repair uses: the model being trained, its teacher, the optimiser and the
    held-out windows (with the teacher's logits on them when they fit in memory)."""

    model: nn.Module
    teacher: nn.Module
    settings: RepairSettings
    params: list[nn.Parameter]
    opt: torch.optim.Optimizer
    sched: Any
    device: torch.device
    autocast: Any
    held_ids: torch.Tensor
    held_teacher: list[torch.Tensor] | None

    def heldout(self) -> dict[str, float]:
        return heldout_metrics(
            self.model, self.teacher, self.held_ids, self.settings.batch_size, self.held_teacher
        )


@dataclass
class _Progress:
    """Where a repair stands: what a checkpoint saves and a resumed repair restores."""

    step: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, torch.Tensor] | None = None
    best_kl: float = math.inf
    bad_evals: int = 0
    seconds_before: float = 0.0


def _make_loop(
    model: nn.Module, student: nn.Module, teacher: nn.Module, settings: RepairSettings, held_ids: torch.Tensor
) -> _Loop:
    """AdamW over what trains, the warm-up + cosine schedule, the autocast, the teacher's held-out logits."""
    from transformers import get_cosine_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RepairInputError(f"nothing to train: the student has no {settings.train} parameters")
    opt = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    sched = get_cosine_schedule_with_warmup(
        opt, num_warmup_steps=math.floor(settings.warmup * settings.steps), num_training_steps=settings.steps
    )
    device = next(student.parameters()).device
    autocast = torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=settings.precision == "bfloat16"
    )
    held_teacher = None
    bs = settings.batch_size
    held_bytes = held_ids.numel() * student.get_output_embeddings().weight.shape[0] * 4
    if held_bytes <= 2**30:  # the teacher's held-out logits are fixed: keep them when they fit
        with torch.no_grad():
            held_teacher = [
                _logits(teacher, held_ids[i : i + bs].to(device)) for i in range(0, held_ids.shape[0], bs)
            ]
    return _Loop(model, teacher, settings, params, opt, sched, device, autocast, held_ids, held_teacher)


def _resumable_state(state_dir: Path | None, fingerprint: str) -> Path | None:
    """The latest checkpoint under ``state_dir`` (None: none); one of another repair is refused."""
    latest = _latest_state(state_dir)
    if latest is not None:
        meta = json.loads((latest / "state.json").read_text())
        if meta.get("fingerprint") != fingerprint or meta.get("format") != STATE_FORMAT:
            raise RepairStateError(
                f"{latest / 'state.json'}: field 'fingerprint': a repair with other settings, calibration "
                "or models was started here; remove the directory (or use --restart) to begin anew"
            )
    return latest


def _resume(latest: Path, loop: _Loop) -> _Progress:
    """Trainable tensors, best state, optimiser and schedule as the checkpoint ``latest`` saved them."""
    from safetensors.torch import load_file

    meta = json.loads((latest / "state.json").read_text())
    load_trainable(loop.model, load_file(str(latest / "trainable.safetensors")))
    best = None
    if (latest / "best.safetensors").exists():
        best = load_file(str(latest / "best.safetensors"))
    opt_state = torch.load(latest / "optimizer.pt", weights_only=True)
    loop.opt.load_state_dict(opt_state["optimizer"])
    loop.sched.load_state_dict(opt_state["scheduler"])
    return _Progress(meta["step"], meta["log"], best, meta["best_kl"], meta["bad_evals"], meta["seconds"])


def _start(loop: _Loop) -> _Progress:
    """A fresh repair: the held-out metrics before any step are its first log row and its best so far."""
    before = loop.heldout()
    return _Progress(
        log=[{"step": 0, **before}], best=trainable_state(loop.model), best_kl=before["heldout_kl"]
    )


def _optimiser_step(loop: _Loop, calibration: Calibration, step: int) -> float:
    """One optimiser step over ``grad_accum`` micro-batches of the seeded window order; the mean loss."""
    s = loop.settings
    bs = s.batch_size
    per_step = bs * s.grad_accum
    order = _window_order(calibration.nsamples, s.seed, per_step, start=step * per_step)
    total = 0.0
    for micro in range(s.grad_accum):
        ids = calibration.input_ids[order[micro * bs : (micro + 1) * bs]].to(loop.device)
        with torch.no_grad():
            t_logits = None if s.loss == "ce" else _logits(loop.teacher, ids)
        with loop.autocast:
            s_logits = _logits(loop.model, ids)
        loss = repair_loss(s_logits, t_logits, ids, loss=s.loss, temperature=s.temperature)
        (loss / s.grad_accum).backward()
        total += float(loss.detach()) / s.grad_accum
    torch.nn.utils.clip_grad_norm_(loop.params, s.max_grad_norm)
    loop.opt.step()
    loop.sched.step()
    loop.opt.zero_grad(set_to_none=True)
    return total


def _evaluate(loop: _Loop, progress: _Progress, row: dict[str, Any]) -> bool:
    """Add the held-out metrics to ``row``, keep the best state; whether patience says stop."""
    row.update(loop.heldout())
    if row["heldout_kl"] < progress.best_kl:
        progress.best_kl, progress.bad_evals = row["heldout_kl"], 0
        progress.best = trainable_state(loop.model)
        return False
    progress.bad_evals += 1
    return loop.settings.patience is not None and progress.bad_evals >= loop.settings.patience


def _checkpoint(state_dir: Path, fingerprint: str, loop: _Loop, progress: _Progress, t0: float) -> None:
    meta = {
        "format": STATE_FORMAT,
        "fingerprint": fingerprint,
        "log": progress.log,
        "best_kl": progress.best_kl,
        "bad_evals": progress.bad_evals,
        "seconds": progress.seconds_before + time.perf_counter() - t0,
    }
    _save_state(state_dir, progress.step, loop.model, loop.opt, loop.sched, meta, progress.best)


def _train(
    loop: _Loop,
    progress: _Progress,
    calibration: Calibration,
    state_dir: Path | None,
    fingerprint: str,
    t0: float,
    on_step: Callable[[int], None] | None,
) -> str:
    """Step until ``settings.steps`` or early stopping (checkpointing at every evaluation); how it ended."""
    s = loop.settings
    with progress_bar(f"repair ({s.loss})", s.steps) as bar:
        bar.advance(progress.step)
        while progress.step < s.steps:
            total = _optimiser_step(loop, calibration, progress.step)
            progress.step += 1
            step = progress.step
            row: dict[str, Any] = {"step": step, "loss": total, "lr": loop.sched.get_last_lr()[0]}
            stop = False
            if step % s.eval_every == 0 or step == s.steps:
                stop = _evaluate(loop, progress, row)
            progress.log.append(row)
            bar.update(description=f"repair ({s.loss}) loss {total:.4f}")
            bar.advance()
            if state_dir is not None and ("heldout_kl" in row or stop):
                _checkpoint(state_dir, fingerprint, loop, progress, t0)
            if on_step is not None:
                on_step(step)
            if stop:
                return (
                    f"early stop at step {step} (held-out KL not lower for {progress.bad_evals} evaluations)"
                )
    return "steps"


def _kept_row(loop: _Loop, progress: _Progress) -> dict[str, Any]:
    """Load the state ``settings.keep`` asks for; its held-out row (the last state measured if need be)."""
    evaluated = [r for r in progress.log if "heldout_kl" in r]
    if loop.settings.keep == "best" and progress.best is not None:
        load_trainable(loop.model, progress.best)
        return min(evaluated, key=lambda r: r["heldout_kl"])
    if evaluated[-1]["step"] != progress.step:  # the last state has not been measured yet
        evaluated.append({"step": progress.step, **loop.heldout()})
    return evaluated[-1]


def _summary(
    loop: _Loop,
    progress: _Progress,
    calibration: Calibration,
    heldout: Calibration,
    teacher_name: str,
    kept: dict[str, Any],
    stopped: str,
    masks_kept: int,
    clocks: tuple[float, float],
) -> dict[str, Any]:
    """The ``repair`` record of the returned plan; ``clocks``: wall and CPU time when the steps began."""
    settings, step = loop.settings, progress.step
    before = next(r for r in progress.log if r["step"] == 0)
    t0, c0 = clocks
    return {
        "loss": settings.loss,
        "temperature": settings.temperature if settings.loss != "ce" else None,
        "train": settings.train,
        "rank": settings.rank if settings.train == "lora" else None,
        "alpha": settings.alpha if settings.train == "lora" else None,
        "learning_rate": settings.learning_rate,
        "steps": settings.steps,
        "steps_run": step,
        "kept_step": kept["step"],
        "keep": settings.keep,
        "stopped": stopped,
        "tokens": step * settings.batch_size * settings.grad_accum * calibration.seqlen,
        "batch_size": settings.batch_size,
        "grad_accum": settings.grad_accum,
        "warmup": settings.warmup,
        "precision": settings.precision,
        "seed": settings.seed,
        "teacher": teacher_name,
        "trainable_parameters": sum(p.numel() for p in loop.params),
        "masks_kept": masks_kept,
        "calibration": calibration.describe(),
        "heldout": heldout.describe(),
        "heldout_before": {k: before[k] for k in ("heldout_kl", "heldout_ce")},
        "heldout_after": {k: kept[k] for k in ("heldout_kl", "heldout_ce")},
        "seconds": progress.seconds_before + time.perf_counter() - t0,
        "cpu_seconds_this_run": time.process_time() - c0,
    }


def repair_model(
    student: nn.Module,
    teacher: nn.Module,
    calibration: Calibration,
    heldout: Calibration,
    settings: RepairSettings,
    *,
    plan: PrunePlan,
    teacher_name: str,
    state_dir: str | Path | None = None,
    on_step: Callable[[int], None] | None = None,
) -> RepairResult:
    """Repair ``student`` (modified in place, then returned merged) towards ``teacher`` on ``calibration``.

    ``heldout``: windows from text disjoint from ``calibration``'s (see
    :func:`prunelens.data.calibration.split_calibration`), for the held-out KL and early stopping.

    ``plan``: the student's prune plan; the returned plan is a copy with ``repair`` filled in.
    ``state_dir``: where checkpoints go; an existing state from the same settings is resumed, one from
    other settings is refused (:class:`RepairStateError`). ``on_step(step)`` is called after every
    optimiser step (tests use it to interrupt a run).
    """
    settings.check()
    if plan.quantization:  # training would move the weights off the quantization grid
        raise RepairInputError(
            f"{plan.name} is quantized: a repair would move its weights off the {plan.quantization['label']} "
            "grid; repair the model before quantizing it"
        )
    if calibration.nsamples == 0 or heldout.nsamples == 0:
        raise RepairInputError("the calibration set is empty")
    check_pair(student, teacher)
    student_plan = plan.to_dict() | {"created": None}
    fingerprint = settings_fingerprint(
        settings,
        calibration,
        {"teacher": teacher_name, "student": student_plan, "heldout": heldout.describe()},
    )
    state_dir = Path(state_dir) if state_dir is not None else None
    latest = _resumable_state(state_dir, fingerprint)

    teacher.eval()
    student.eval()  # no dropout: the loss is a deterministic function of the weights
    model, masks = attach_trainable(student, settings, plan)
    loop = _make_loop(model, student, teacher, settings, heldout.input_ids)
    progress = _resume(latest, loop) if latest is not None else _start(loop)
    t0, c0 = time.perf_counter(), time.process_time()
    stopped = _train(loop, progress, calibration, state_dir, fingerprint, t0, on_step)
    kept = _kept_row(loop, progress)
    merged = merge_trainable(model, masks, settings)
    summary = _summary(
        loop, progress, calibration, heldout, teacher_name, kept, stopped, len(masks), (t0, c0)
    )
    new_plan = PrunePlan.from_dict({**plan.to_dict(), "repair": summary})
    return RepairResult(merged, new_plan, progress.log, summary)


def write_log(log: list[dict[str, Any]], out: Path) -> None:
    """``repair_log.json`` (every step) and ``repair_loss.png`` (training loss and held-out KL)."""
    atomic_write_json(out / "repair_log.json", log)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    train = [r for r in log if "loss" in r]
    held = [r for r in log if "heldout_kl" in r]
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, label="training loss")
    ax.plot([r["step"] for r in held], [r["heldout_kl"] for r in held], "o-", label="held-out KL(p‖q)")
    ax.set_xlabel("optimiser step")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("repair: training loss and held-out teacher-forced KL")
    fig.tight_layout()
    fig.savefig(out / "repair_loss.png", dpi=120)
    plt.close(fig)
