"""Repair a pruned model where the damage is: distil the dense teacher's probabilities into it.

    import prunelens
    result = prunelens.repair("runs/drop8a", out="runs/drop8a-kl", loss="kl", steps=100)

:func:`repair` is the whole job from model specs (what ``prunelens repair`` runs): it checks everything
cheap first (settings, calibration text, output directory, the student's plan), loads the student and
its teacher (by default the model the student was pruned from), repairs
(:func:`prunelens.distill.trainer.repair_model`) and writes a normal prunelens checkpoint whose
``prune_plan.json`` records the repair, with the loss curves beside it.

Modules: :mod:`~prunelens.distill.settings` (:class:`RepairSettings`, one validated settings object with
its defaults), :mod:`~prunelens.distill.losses` (the distillation losses: kl, reverse-kl, jsd, and the ce
baseline), :mod:`~prunelens.distill.trainable` (what trains — LoRA adapters masked to a sparse weight's
pattern, or the norms — and how it is merged back into a plain model) and :mod:`~prunelens.distill.trainer`
(the training loop: schedule, accumulation, held-out KL, early stopping, resumable checkpoints).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prunelens.distill.losses import LOSSES
from prunelens.distill.settings import RepairSettings, RepairSettingsError
from prunelens.distill.trainer import RepairInputError, RepairResult, RepairStateError, repair_model

__all__ = [
    "LOSSES",
    "RepairInputError",
    "RepairResult",
    "RepairSettings",
    "RepairSettingsError",
    "RepairStateError",
    "repair",
    "repair_in_memory",
    "repair_model",
    "state_dir_for",
]


def state_dir_for(out: str | Path) -> Path:
    """Where the resumable state of a repair writing ``out`` lives until it finishes (a hidden sibling)."""
    out = Path(out)
    return out.parent / f".{out.name}.repair-state"


def _skeleton(config):
    """The model a config describes, on the meta device: its layer shapes, no memory, no weights read."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _tokenizer(src):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(src.path if src.path is not None else src.spec)


def _checked_settings(
    settings: RepairSettings | None, overrides: dict[str, Any], nsamples: int, seqlen: int
) -> RepairSettings:
    settings = settings or RepairSettings()
    if overrides:
        settings = RepairSettings(**{**settings.to_dict(), **overrides})
    settings.check()
    for name, v in (("nsamples", nsamples), ("seqlen", seqlen)):
        if not (isinstance(v, int) and v > 0):
            raise RepairSettingsError(name, f"must be a positive integer (got {v!r})")
    if nsamples < 2:
        raise RepairSettingsError("nsamples", f"is {nsamples}; training and held-out windows need at least 2")
    return settings


def _check_pair_specs(
    pruned: str, src, teacher_spec: str, tsrc, seqlen: int, settings: RepairSettings
) -> None:
    """What the configs alone can refuse: the context length, the LoRA rank, the vocabularies."""
    from prunelens.distill.trainable import check_rank
    from prunelens.models.loading import check_seqlen

    check_seqlen(seqlen, src.config)
    if settings.train == "lora":
        check_rank(_skeleton(src.config), settings.rank)
    vs, vt = getattr(src.config, "vocab_size", None), getattr(tsrc.config, "vocab_size", None)
    if vs != vt:
        raise RepairInputError(
            f"teacher {teacher_spec} and student {pruned} have different vocabularies ({vt} vs {vs} tokens): "
            "distillation compares their distributions token by token"
        )


def _save_repaired(
    result: RepairResult, tok, out: str | Path, overwrite: bool, config: dict[str, Any]
) -> None:
    """The repaired checkpoint, its plan, the loss curves and ``repair_config.json``, written atomically."""
    from prunelens.distill.trainer import write_log
    from prunelens.utils.io import atomic_output_dir, atomic_write_json

    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        result.model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        result.plan.save(tmp)
        write_log(result.log, tmp)
        atomic_write_json(tmp / "repair_config.json", config)


def repair(
    pruned: str,
    *,
    out: str | Path,
    teacher: str | None = None,
    settings: RepairSettings | None = None,
    calib: str = "c4",
    nsamples: int = 64,
    seqlen: int = 256,
    calib_seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
    overwrite: bool = False,
    restart: bool = False,
    **overrides: Any,
) -> RepairResult:
    """Repair the prunelens checkpoint ``pruned`` and save it to ``out``; returns the result.

    ``settings`` (or keyword ``overrides`` of its fields, e.g. ``loss="ce", steps=50``) say how.
    Calibration: ``nsamples`` windows of ``seqlen`` tokens from ``calib``, split into training and
    held-out windows from disjoint text (``settings.heldout``). A killed repair called again with the
    same arguments resumes from its last evaluation; ``restart=True`` discards that state.

    Raises :class:`RepairSettingsError`, :class:`RepairInputError` (and the loaders' own errors) before
    anything is written.
    """
    from transformers import AutoTokenizer

    from prunelens.data.calibration import load_texts, split_calibration, token_stream
    from prunelens.distill.trainer import check_pair
    from prunelens.models.loading import load, resolve
    from prunelens.utils.io import check_output_dir

    settings = _checked_settings(settings, overrides, nsamples, seqlen)
    check_output_dir(out, overwrite)
    src = resolve(pruned)
    if src.plan is None:
        raise RepairInputError(
            f"{pruned} is not a prunelens checkpoint (no prune_plan.json): repair a pruned model, "
            "e.g. the output of `prunelens prune drop`"
        )
    teacher_spec = teacher or src.plan.base_model
    tsrc = resolve(teacher_spec)
    _check_pair_specs(pruned, src, teacher_spec, tsrc, seqlen, settings)
    texts = load_texts(calib)
    tok, teacher_tok = AutoTokenizer.from_pretrained(src.path), _tokenizer(tsrc)
    if tok.get_vocab() != teacher_tok.get_vocab():
        raise RepairInputError(f"teacher {teacher_spec} and student {pruned} have different tokenizers")
    token_stream(tok, texts)  # empty text is refused here, before any weights load
    student, tok = load(src, dtype=dtype, device=device)
    teacher_model, _ = load(tsrc, dtype=dtype, device=device)
    check_pair(student, teacher_model)  # the tokenizers were compared above, before any weights loaded
    train, held = split_calibration(tok, calib, nsamples, seqlen, calib_seed, settings.heldout, texts=texts)
    state = state_dir_for(out)
    if restart:
        shutil.rmtree(state, ignore_errors=True)
    result = repair_model(
        student,
        teacher_model,
        train,
        held,
        settings,
        plan=src.plan,
        teacher_name=teacher_spec,
        state_dir=state,
    )
    config = {
        "student": str(pruned),
        "teacher": teacher_spec,
        "settings": settings.to_dict(),
        "calibration": {"source": calib, "nsamples": nsamples, "seqlen": seqlen, "seed": calib_seed},
        "dtype": dtype,
        "device": device,
    }
    _save_repaired(result, tok, out, overwrite, config)
    shutil.rmtree(state, ignore_errors=True)
    return result


def repair_in_memory(
    student,
    teacher,
    tokenizer,
    plan,
    *,
    teacher_name: str,
    settings: RepairSettings | None = None,
    calib: str = "c4",
    nsamples: int = 64,
    seqlen: int = 256,
    calib_seed: int = 0,
    **overrides: Any,
) -> RepairResult:
    """Repair ``student`` (pruned as ``plan`` says, modified in place) towards ``teacher``, both already in
    memory; the same settings, checks and calibration split as :func:`repair`, nothing written."""
    from prunelens.data.calibration import split_calibration
    from prunelens.distill.trainer import check_pair

    settings = _checked_settings(settings, overrides, nsamples, seqlen)
    check_pair(student, teacher)
    train, held = split_calibration(tokenizer, calib, nsamples, seqlen, calib_seed, settings.heldout)
    return repair_model(student, teacher, train, held, settings, plan=plan, teacher_name=teacher_name)
