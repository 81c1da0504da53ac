"""Run a study: variants × evaluations × analyses, each a unit stored as soon as it is done.

The pieces, one job per module: :mod:`~prunelens.studies.units` (what the units are and what each depends
on), :mod:`~prunelens.studies.store` (the study directory and its markers),
:mod:`~prunelens.studies.workbench` (the dense model, calibration and the variants built from the config),
:mod:`~prunelens.studies.steps` (what each kind of unit does), :mod:`~prunelens.studies.preflight` (the cheap
checks), :mod:`~prunelens.studies.collect` (the study-level files the report reads) and
:mod:`~prunelens.studies.engines` (local and Ray). This module puts them in order.

A unit is skipped when ``units/<unit>.json`` holds the fingerprint of the config fields it depends
on, so re-running resumes, and an edited config re-runs only what it changes. Every file is written
atomically; a killed run loses at most the unit in progress.

Engines: ``local`` runs the groups one after another in this process; ``ray`` hands each variant group
to a Ray task (``ray.init()`` starts a local cluster of worker processes, or joins a running cluster
with ``--ray-address``); a failed group is retried by Ray and skips the units it already stored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prunelens.studies.collect import collect, fidelity_against_control
from prunelens.studies.config import StudyConfig
from prunelens.studies.engines import FAULT_ENV, run_group, run_local, run_ray
from prunelens.studies.preflight import check_variants, preflight
from prunelens.studies.steps import RUNNERS, study_prompts
from prunelens.studies.store import Store, config_for_disk, prepare_study_dir
from prunelens.studies.units import NON_DENSE_DEPS, Unit, plan_units
from prunelens.studies.workbench import Workbench
from prunelens.utils.io import atomic_write_json

__all__ = [
    "FAULT_ENV",
    "NON_DENSE_DEPS",
    "RUNNERS",
    "Store",
    "Unit",
    "Workbench",
    "check_variants",
    "collect",
    "fidelity_against_control",
    "plan_units",
    "prepare_study_dir",
    "run_group",
    "run_study",
    "study_prompts",
]

ENGINES = ("local", "ray")


def run_study(
    cfg: StudyConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    engine: str = "local",
    workers: int = 2,
    ray_address: str | None = None,
    report: Callable[[str, float, bool], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the study; returns timings. See the module docstring for the engines."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose local or ray")
    t0 = time.perf_counter()
    preflight(cfg)  # nothing is loaded or written before the cheap checks pass
    bench = None
    if engine == "local":
        bench = Workbench(cfg, None)  # type: ignore[arg-type]
        _ = bench.dense  # load the model before anything is written
    store = prepare_study_dir(cfg, out, overwrite)
    cfg_dict = config_for_disk(cfg)
    names = [v.name for v in cfg.variants]
    if bench is not None:
        bench.store = store
        run_local(bench, cfg_dict, names, report)
    else:
        run_ray(str(store.root), cfg_dict, names, workers, ray_address, report)
    units = {}
    for unit in plan_units(cfg):
        path = store.marker(unit)
        if path.exists():
            units[unit.id] = json.loads(path.read_text()).get("seconds", 0.0)
    collect(store.root, cfg)
    record = json.loads((store.root / "study.json").read_text())
    record["timings"] = {
        "wall_seconds_this_run": time.perf_counter() - t0,
        "units": units,
        "total_unit_seconds": sum(units.values()),
    }
    atomic_write_json(store.root / "study.json", record)
    return record["timings"]
