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
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MethodType
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from prunelens.data.calibration import Calibration
from prunelens.distill.losses import repair_loss, token_cross_entropy, token_divergence
from prunelens.distill.settings import RepairSettings, RepairSettingsError
from prunelens.models.adapter import Adapter, get_submodule
from prunelens.plan import SPARSE_METHODS, PrunePlan
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


# --- what trains ---------------------------------------------------------------------------------


def adaptable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every linear layer inside the decoder blocks, by its full module name (embeddings, unembedding
    and the no-op stand-ins of dropped sublayers are not among them)."""
    prefix = Adapter(model).spec.layers
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.startswith(prefix + ".")
    }


def norm_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights (and biases) of every normalisation module: RMSNorm and LayerNorm of any family."""
    out: dict[str, nn.Parameter] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.LayerNorm) or type(m).__name__.endswith(("RMSNorm", "LayerNorm")):
            for pname, p in m.named_parameters(recurse=False):
                out[f"{name}.{pname}"] = p
    return out


def check_rank(model: nn.Module, rank: int) -> None:
    """A LoRA rank no larger than any adapted layer's smaller side (else the update is not low-rank)."""
    for name, m in adaptable_linears(model).items():
        if rank > min(m.in_features, m.out_features):
            raise RepairSettingsError(
                "rank",
                f"is {rank}, larger than layer {name} ({m.out_features} × {m.in_features}); "
                f"use at most {min(m.in_features, m.out_features)}",
            )


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


def _masked_lora_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """peft LoRA linear whose update keeps the base weight's zeros: ``x (W + M ⊙ ΔW)ᵀ + b``."""
    base = self.get_base_layer()
    weight = base.weight
    if not self.disable_adapters and not self.merged:
        for name in self.active_adapters:
            if name in self.lora_A:
                weight = weight + self.get_delta_weight(name).to(weight.dtype) * self.prunelens_mask
    return F.linear(x, weight.to(x.dtype), None if base.bias is None else base.bias.to(x.dtype))


def _sparse_masks(model: nn.Module, plan: PrunePlan | None) -> dict[str, torch.Tensor]:
    """For a sparsified student, the non-zero pattern of every adapted linear (what repair must keep)."""
    if plan is None or plan.method not in SPARSE_METHODS:
        return {}
    return {name: (m.weight != 0) for name, m in adaptable_linears(model).items()}


def attach_trainable(model: nn.Module, settings: RepairSettings, plan: PrunePlan | None):
    """Make ``model`` trainable as ``settings.train`` says; returns ``(model to call, masks)``.

    LoRA is initialised from the seed (peft draws A randomly and sets B to zero, so the untrained
    adapter changes nothing).
    """
    for p in model.parameters():
        p.requires_grad_(False)
    masks = _sparse_masks(model, plan)
    if settings.train == "norms":
        for p in norm_parameters(model).values():
            p.requires_grad_(True)
        return model, masks
    from peft import LoraConfig, get_peft_model

    check_rank(model, settings.rank)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=0.0,
        bias="none",
        target_modules=sorted(adaptable_linears(model)),
    )
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        # peft asks transformers an attribute that transformers 5 renamed; not the user's concern
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        torch.manual_seed(settings.seed)  # the adapters' initialisation, without touching the caller's RNG
        wrapped = get_peft_model(model, config)
    for name, mask in masks.items():
        layer = wrapped.base_model.model.get_submodule(name)
        layer.prunelens_mask = mask
        layer.forward = MethodType(_masked_lora_forward, layer)
    return wrapped, masks


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def merge_trainable(
    wrapped: nn.Module, masks: dict[str, torch.Tensor], settings: RepairSettings
) -> nn.Module:
    """Fold the adapters into the weights (masked for sparse layers) and return the plain model."""
    if settings.train == "norms":
        for p in wrapped.parameters():
            p.requires_grad_(False)
        return wrapped
    inner = wrapped.base_model.model
    with torch.no_grad():
        for name, mask in masks.items():
            layer = inner.get_submodule(name)
            base = layer.get_base_layer()
            for a in layer.active_adapters:
                base.weight += layer.get_delta_weight(a).to(base.weight.dtype) * mask
                layer.lora_B[a].weight.zero_()  # already folded in: peft's merge adds nothing more
    model = wrapped.merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(False)
    for name, mask in masks.items():
        w = get_submodule(model, name).weight
        if bool((w[~mask] != 0).any()):  # pragma: no cover - guarded by construction
            raise RuntimeError(f"repair changed the sparsity pattern of {name}")
    return model


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
    from transformers import get_cosine_schedule_with_warmup

    settings.check()
    if calibration.nsamples == 0 or heldout.nsamples == 0:
        raise RepairInputError("the calibration set is empty")
    check_pair(student, teacher)
    n_train, n_held = calibration.nsamples, heldout.nsamples
    train_ids, held_ids = calibration.input_ids, heldout.input_ids
    fingerprint = settings_fingerprint(
        settings,
        calibration,
        {
            "teacher": teacher_name,
            "student": plan.to_dict() | {"created": None},
            "heldout": heldout.describe(),
        },
    )
    state_dir = Path(state_dir) if state_dir is not None else None
    latest = _latest_state(state_dir)
    if latest is not None:
        meta = json.loads((latest / "state.json").read_text())
        if meta.get("fingerprint") != fingerprint or meta.get("format") != STATE_FORMAT:
            raise RepairStateError(
                f"{latest / 'state.json'}: field 'fingerprint': a repair with other settings, calibration "
                "or models was started here; remove the directory (or use --restart) to begin anew"
            )

    teacher.eval()
    student.eval()  # no dropout: the loss is a deterministic function of the weights
    model, masks = attach_trainable(student, settings, plan)
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
            held_teacher = [_logits(teacher, held_ids[i : i + bs].to(device)) for i in range(0, n_held, bs)]

    log: list[dict[str, Any]] = []
    start, best, best_kl, bad_evals, seconds_before = 0, None, math.inf, 0, 0.0
    if latest is not None:
        from safetensors.torch import load_file

        meta = json.loads((latest / "state.json").read_text())
        _load_trainable(model, load_file(str(latest / "trainable.safetensors")))
        if (latest / "best.safetensors").exists():
            best = load_file(str(latest / "best.safetensors"))
        opt_state = torch.load(latest / "optimizer.pt", weights_only=True)
        opt.load_state_dict(opt_state["optimizer"])
        sched.load_state_dict(opt_state["scheduler"])
        start, log = meta["step"], meta["log"]
        best_kl, bad_evals, seconds_before = meta["best_kl"], meta["bad_evals"], meta["seconds"]
    else:
        before = heldout_metrics(model, teacher, held_ids, bs, held_teacher)
        log.append({"step": 0, **before})
        best_kl = before["heldout_kl"]
        best = trainable_state(model)
    before = next(r for r in log if r["step"] == 0)

    t0, c0 = time.perf_counter(), time.process_time()
    stopped = "steps"
    step = start
    per_step = bs * settings.grad_accum
    with progress_bar(f"repair ({settings.loss})", settings.steps) as bar:
        bar.advance(start)
        while step < settings.steps:
            order = _window_order(n_train, settings.seed, per_step, start=step * per_step)
            total = 0.0
            for micro in range(settings.grad_accum):
                ids = train_ids[order[micro * bs : (micro + 1) * bs]].to(device)
                with torch.no_grad():
                    t_logits = None if settings.loss == "ce" else _logits(teacher, ids)
                with autocast:
                    s_logits = _logits(model, ids)
                loss = repair_loss(
                    s_logits, t_logits, ids, loss=settings.loss, temperature=settings.temperature
                )
                (loss / settings.grad_accum).backward()
                total += float(loss.detach()) / settings.grad_accum
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            row: dict[str, Any] = {"step": step, "loss": total, "lr": sched.get_last_lr()[0]}
            stop = False
            if step % settings.eval_every == 0 or step == settings.steps:
                row.update(heldout_metrics(model, teacher, held_ids, bs, held_teacher))
                if row["heldout_kl"] < best_kl:
                    best_kl, bad_evals, best = row["heldout_kl"], 0, trainable_state(model)
                else:
                    bad_evals += 1
                    stop = settings.patience is not None and bad_evals >= settings.patience
            log.append(row)
            bar.update(description=f"repair ({settings.loss}) loss {total:.4f}")
            bar.advance()
            if state_dir is not None and ("heldout_kl" in row or stop):
                meta = {
                    "format": STATE_FORMAT,
                    "fingerprint": fingerprint,
                    "log": log,
                    "best_kl": best_kl,
                    "bad_evals": bad_evals,
                    "seconds": seconds_before + time.perf_counter() - t0,
                }
                _save_state(state_dir, step, model, opt, sched, meta, best)
            if on_step is not None:
                on_step(step)
            if stop:
                stopped = f"early stop at step {step} (held-out KL not lower for {bad_evals} evaluations)"
                break
    evaluated = [r for r in log if "heldout_kl" in r]
    if settings.keep == "best" and best is not None:
        _load_trainable(model, best)
        best_row = min(evaluated, key=lambda r: r["heldout_kl"])
    else:
        if evaluated[-1]["step"] != step:  # the last state has not been measured yet
            evaluated.append({"step": step, **heldout_metrics(model, teacher, held_ids, bs, held_teacher)})
        best_row = evaluated[-1]
    merged = merge_trainable(model, masks, settings)
    trained = sum(p.numel() for p in params)
    summary = {
        "loss": settings.loss,
        "temperature": settings.temperature if settings.loss != "ce" else None,
        "train": settings.train,
        "rank": settings.rank if settings.train == "lora" else None,
        "alpha": settings.alpha if settings.train == "lora" else None,
        "learning_rate": settings.learning_rate,
        "steps": settings.steps,
        "steps_run": step,
        "kept_step": best_row["step"],
        "keep": settings.keep,
        "stopped": stopped,
        "tokens": step * per_step * calibration.seqlen,
        "batch_size": bs,
        "grad_accum": settings.grad_accum,
        "warmup": settings.warmup,
        "precision": settings.precision,
        "seed": settings.seed,
        "teacher": teacher_name,
        "trainable_parameters": trained,
        "masks_kept": len(masks),
        "calibration": calibration.describe(),
        "heldout": heldout.describe(),
        "heldout_before": {k: before[k] for k in ("heldout_kl", "heldout_ce")},
        "heldout_after": {k: best_row[k] for k in ("heldout_kl", "heldout_ce")},
        "seconds": seconds_before + time.perf_counter() - t0,
        "cpu_seconds_this_run": time.process_time() - c0,
    }
    new_plan = PrunePlan.from_dict({**plan.to_dict(), "repair": summary})
    return RepairResult(merged, new_plan, log, summary)


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
