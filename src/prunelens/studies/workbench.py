"""The workbench: one process's view of a study — the dense model (loaded once), the calibration windows
per seed, the control, and each variant built from its config entry (drop, sparsify, repair) or loaded
back from the study directory, swapped into the dense weights while its units run."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prunelens.studies.config import StudyConfig
from prunelens.studies.store import Store
from prunelens.utils.io import atomic_write_json

__all__ = ["Workbench"]


class Workbench:
    """One process's view of the study: the dense model (loaded once) and the current variant."""

    def __init__(self, cfg: StudyConfig, store: Store):
        self.cfg = cfg
        self.store = store
        self._dense = None
        self._calibrations: dict[int, Any] = {}
        self._controls: dict[str, Any] = {}
        #: dense-model results that every variant's units reuse (decoded prompts, teacher-forced states)
        self.shared: dict[Any, Any] = {}

    @property
    def dense(self):
        if self._dense is None:
            from prunelens.models.loading import load

            kw = {"device_map": "auto"} if self.cfg.device == "auto" else {"device": self.cfg.device}
            self._dense = load(self.cfg.model, dtype=self.cfg.dtype, **kw)
        return self._dense

    @property
    def calibration(self):
        """The calibration windows at the study's seed."""
        return self.calibration_for(self.cfg.seed)

    def calibration_for(self, seed: int):
        """The calibration windows drawn with ``seed`` (each seed read once per process)."""
        if seed not in self._calibrations:
            from prunelens.data.calibration import get_calibration

            c = self.cfg.calibration
            self._calibrations[seed] = get_calibration(self.dense[1], c.source, c.nsamples, c.seqlen, seed)
        return self._calibrations[seed]

    def control(self, name: str):
        """The control variant ``name``: every weight rounded to the configured format and back, held as
        overrides of the dense weights (built once per process)."""
        if name not in self._controls:
            from prunelens.analysis.variants import Variant
            from prunelens.models.perturb import resolve_rounding, rounded_overrides

            spec = self.spec(name)
            model, _ = self.dense
            fmt = resolve_rounding(spec.control["round_to"], next(model.parameters()).dtype)
            self._controls[name] = Variant(
                name=name,
                source=f"control: every weight rounded to {fmt}",
                overrides=rounded_overrides(model, fmt),
            )
        return self._controls[name]

    def spec(self, name: str):
        """The config entry of variant ``name``."""
        return next(v for v in self.cfg.variants if v.name == name)

    def build_variant(self, name: str) -> dict[str, Any]:
        """Prune (or not) and store the variant's plan / checkpoint; return its info."""
        from prunelens.models.adapter import param_count

        spec = self.spec(name)
        model, _ = self.dense
        out = self.store.variant_dir(name)
        out.mkdir(parents=True, exist_ok=True)
        plan = None
        extra: dict[str, Any] = {}
        seed = spec.seed if spec.seed is not None else self.cfg.seed
        if spec.control is not None:
            v = self.control(name)
            params = param_count(model)
            extra["control"] = {
                "round_to": v.source.rsplit(" ", 1)[-1],
                "changed_tensors": len(v.overrides),
            }
        elif spec.drop is not None:
            plan, params = self._build_drop(spec, seed, out)
        elif spec.sparsify is not None:
            plan, params = self._build_sparsify(spec, seed, out)
        else:
            params = param_count(model)
        info = {
            "name": name,
            "parameters": params,
            "plan": plan.to_dict() if plan is not None else None,
            **extra,
        }
        atomic_write_json(out / "info.json", info)
        return info

    def _build_drop(self, spec, seed: int, out: Path):
        """Drop as ``spec.drop`` says (a :class:`~prunelens.prune.specs.DropSpec`'s fields; omitted ones take
        its defaults) on a copy of the dense model, scored on the calibration windows drawn with ``seed``;
        store the plan (or the repaired checkpoint). Returns the plan and the parameter count as pruned."""
        from prunelens.prune.drop import drop
        from prunelens.prune.specs import DropSpec

        model, tok = self.dense
        calibration = self.calibration_for(seed)
        pruned = copy.deepcopy(model)
        d = DropSpec(**spec.drop)
        d = dataclasses.replace(d, temperature=float(d.temperature))  # the plan records a float
        choices = None
        if d.objective == "choice":
            from prunelens.analysis.subspace import choice_set

            task, limit = d.questions
            choices = choice_set(tok, task, limit=limit, seed=seed)
        plan = drop(
            pruned,
            calibration,
            d,
            batch_size=self.cfg.batch_size,
            base_model=self.cfg.model,
            choices=choices,
            seed=seed,
        )
        params = plan.params_after  # recorded as pruned, before any repair
        if spec.repair is not None:
            plan = self._repair(spec, pruned, plan, out)
        else:
            plan.save(out)
        del pruned
        return plan, params

    def _build_sparsify(self, spec, seed: int, out: Path):
        """Sparsify as ``spec.sparsify`` says (a :class:`~prunelens.prune.specs.SparsifySpec`'s fields) on a
        copy of the dense model, calibrated on the windows drawn with ``seed`` unless magnitude with a
        uniform allocation, which reads none; store the checkpoint. Returns the plan and the parameter
        count as pruned."""
        from prunelens.prune.save import save_pruned
        from prunelens.prune.sparsify import sparsify
        from prunelens.prune.specs import SparsifySpec

        model, tok = self.dense
        calibration = self.calibration_for(seed)
        pruned = copy.deepcopy(model)
        s = SparsifySpec(**spec.sparsify)
        calibrate = s.method != "magnitude" or s.allocation != "uniform"
        plan = sparsify(
            pruned,
            calibration if calibrate else None,
            s,
            batch_size=self.cfg.batch_size,
            base_model=self.cfg.model,
        )
        params = plan.params_after
        if spec.repair is not None:
            plan = self._repair(spec, pruned, plan, out)
        else:
            save_pruned(pruned, tok, plan, out / "checkpoint", overwrite=True)
        del pruned
        return plan, params

    def _repair(self, spec, pruned, plan, out: Path):
        """Repair the freshly pruned ``pruned`` towards the dense model as ``spec.repair`` says and save the
        checkpoint (its plan records the repair; the loss curves go beside it). The training state lives in
        ``out/repair-state`` until the checkpoint is written, so an interrupted study resumes the repair."""
        import shutil

        from prunelens.data.calibration import split_calibration
        from prunelens.distill.settings import RepairSettings
        from prunelens.distill.trainer import repair_model, write_log
        from prunelens.prune.save import save_pruned

        model, tok = self.dense
        r = dict(spec.repair)
        nsamples, seqlen = r.pop("nsamples"), r.pop("seqlen", self.cfg.calibration.seqlen)
        settings = RepairSettings(**r)
        train, held = split_calibration(
            tok, self.cfg.calibration.source, nsamples, seqlen, self.cfg.seed, settings.heldout
        )
        state = out / "repair-state"
        result = repair_model(
            pruned, model, train, held, settings, plan=plan, teacher_name=self.cfg.model, state_dir=state
        )
        save_pruned(result.model, tok, result.plan, out / "checkpoint", overwrite=True)
        write_log(result.log, out)
        shutil.rmtree(state, ignore_errors=True)
        return result.plan

    def variant(self, name: str):
        """The analysis :class:`~prunelens.analysis.variants.Variant` of ``name`` on the dense weights."""
        from prunelens.analysis.variants import resolve_variant
        from prunelens.plan import PrunePlan

        spec = self.spec(name)
        if spec.control is not None:
            return self.control(name)
        model, tok = self.dense
        out = self.store.variant_dir(name)
        if spec.drop is not None and spec.repair is None:  # a drop alone: the plan is all there is
            v = resolve_variant(model, PrunePlan.load(out), tokenizer=tok)
        else:
            v = resolve_variant(model, str(out / "checkpoint"), tokenizer=tok)
        v.name = name
        return v

    @contextmanager
    def active(self, name: str) -> Iterator[Any]:
        """The dense model, behaving as variant ``name`` inside the block (dropped sublayers swapped for
        no-ops, sparsified weights swapped in; a dropped block is both of its sublayers dropped, which is
        the same computation) and restored afterwards: no second copy of the unchanged weights."""
        model, _ = self.dense
        spec = self.spec(name)
        if spec.is_dense:
            yield model
            return
        with self.variant(name).active(model) as m:
            yield m

    def info(self, name: str) -> dict[str, Any]:
        return json.loads((self.store.variant_dir(name) / "info.json").read_text())
