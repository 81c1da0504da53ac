"""A study's units: what is run, one stored result each, and what each depends on.

Per variant ``V`` (grouped so one process builds ``V`` once and runs all of its units):

* ``variant/V``     — the prune plan (drops: plan JSON only; sparsity: a saved checkpoint);
* ``eval/V/TASK``   — one evaluation task (``eval/V/`` has the ``prunelens eval`` layout);
* ``analysis/V``    — transitions, trajectories and option subspace against the dense model;
* ``predictor/V``   — the cheap screen: ``Var_p(Δz)/(2T²)`` from one teacher-forced pass;
* ``case_study/V``  — fixed GSM8K and open questions answered by the variant.

A unit's fingerprint covers the config fields it depends on, so an edited config re-runs only what it
changes (:class:`~prunelens.studies.store.Store` keeps the fingerprints of finished units).
"""

from __future__ import annotations

from dataclasses import dataclass

from prunelens.studies.config import StudyConfig

__all__ = ["NON_DENSE_DEPS", "Unit", "plan_units"]

NON_DENSE_DEPS = ("calibration",)


@dataclass(frozen=True)
class Unit:
    id: str
    kind: str
    variant: str
    task: str | None
    fingerprint: str

    @property
    def filename(self) -> str:
        return self.id.replace("/", "__").replace(":", "_") + ".json"


def plan_units(cfg: StudyConfig) -> list[Unit]:
    """Every unit of the study, grouped by variant (Full first)."""
    units: list[Unit] = []
    for v in cfg.variants:
        uses_calibration = not (v.is_dense or v.is_control)
        base = ["model", "dtype", "seed", f"variant:{v.name}"] + (
            list(NON_DENSE_DEPS) if uses_calibration else []
        )
        units.append(Unit(f"variant/{v.name}", "variant", v.name, None, cfg.fingerprint(*base)))
        for t in cfg.tasks:
            units.append(
                Unit(
                    f"eval/{v.name}/{t.task}",
                    "eval",
                    v.name,
                    t.task,
                    cfg.fingerprint(*base, "eval_batch_size", f"task:{t.task}"),
                )
            )
        if not v.is_dense:
            units.append(
                Unit(f"analysis/{v.name}", "analysis", v.name, None, cfg.fingerprint(*base, "analyses"))
            )
            units.append(
                Unit(f"predictor/{v.name}", "predictor", v.name, None, cfg.fingerprint(*base, "analyses"))
            )
        units.append(
            Unit(f"case_study/{v.name}", "case_study", v.name, None, cfg.fingerprint(*base, "case_study"))
        )
    return units
