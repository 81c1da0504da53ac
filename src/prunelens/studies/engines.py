"""The engines that run a study's unit groups: ``local`` runs the groups one after another in this process
(one workbench, so the dense model loads once); ``ray`` hands each variant group to a Ray task
(``ray.init()`` starts a local cluster of worker processes, or joins a running cluster with
``--ray-address``); a failed group is retried by Ray and skips the units it already stored."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prunelens.studies.config import parse_config
from prunelens.studies.steps import RUNNERS
from prunelens.studies.store import Store
from prunelens.studies.units import Unit, plan_units
from prunelens.studies.workbench import Workbench

__all__ = ["FAULT_ENV", "run_group", "run_local", "run_ray"]

Report = Callable[[str, float, bool], None]

FAULT_ENV = "PRUNELENS_FAULT_ONCE"


def _maybe_fail(store: Store, unit: Unit) -> None:
    """Fault injection for testing retries: ``PRUNELENS_FAULT_ONCE=<unit id>`` fails that unit once."""
    import os

    if os.environ.get(FAULT_ENV) == unit.id:
        flag = store.root / "units" / (unit.filename + ".failed-once")
        if not flag.exists():
            flag.parent.mkdir(parents=True, exist_ok=True)
            flag.write_text("injected failure\n")
            raise RuntimeError(f"injected failure in {unit.id} ({FAULT_ENV})")


def run_group(
    root: str,
    cfg_dict: dict[str, Any],
    variant: str,
    report: Callable[[str, float, bool], None] | None = None,
    bench: Workbench | None = None,
) -> list[str]:
    """Run every unfinished unit of one variant (in this process); return the ids of units run. ``bench``:
    a workbench to share between groups run in one process (the dense model and calibration load once)."""
    cfg = parse_config({k: v for k, v in cfg_dict.items()})
    store = Store(root)
    bench = bench or Workbench(cfg, store)
    ran = []
    for unit in [u for u in plan_units(cfg) if u.variant == variant]:
        if store.done(unit):
            if report:
                report(unit.id, 0.0, True)
            continue
        _maybe_fail(store, unit)
        t0 = time.perf_counter()
        extra = RUNNERS[unit.kind](bench, unit)
        seconds = time.perf_counter() - t0
        store.mark(unit, seconds, result=extra)
        ran.append(unit.id)
        if report:
            report(unit.id, seconds, False)
    return ran


def run_local(bench: Workbench, cfg_dict: dict[str, Any], names: list[str], report: Report | None) -> None:
    """Every group in this process, sharing ``bench`` (its store set to the study directory)."""
    from prunelens.utils.memory import reuse_freed_memory

    # Full first: its evaluations are the reference and its model is the one every variant reuses
    with reuse_freed_memory():
        for name in names:
            run_group(str(bench.store.root), cfg_dict, name, report, bench=bench)


def run_ray(
    root: str,
    cfg_dict: dict[str, Any],
    names: list[str],
    workers: int,
    address: str | None,
    report: Report | None,
) -> None:
    """Every group as a Ray task (retried twice on failure); the environment the units read travels along."""
    import os

    import ray

    env = {
        k: os.environ[k]
        for k in (FAULT_ENV, "HF_HUB_OFFLINE", "PRUNELENS_DATA", "PRUNELENS_CACHE", "PRUNELENS_QUIET")
        if k in os.environ
    }
    ray.init(
        address=address,
        num_cpus=None if address else workers,
        ignore_reinit_error=True,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": env, "working_dir": None} if env else None,
    )
    remote = ray.remote(max_retries=2, retry_exceptions=True)(run_group)
    refs = {name: remote.remote(root, cfg_dict, name) for name in names}
    for ref in refs.values():
        for unit_id in ray.get(ref):
            if report:
                report(unit_id, 0.0, False)
