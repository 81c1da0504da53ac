"""A sweep: one pruning family over a range of ratios × calibration seeds, run as a study.

A sweep *is* a study whose variants are generated: one variant per (ratio, seed) — ``attn-8@s1`` drops 8
attention sublayers scored on calibration windows drawn with seed 1 — plus the control (every weight
rounded to bfloat16, the noise floor of generation fidelity). :func:`study_config` turns a
:class:`SweepConfig` into that :class:`~prunelens.studies.config.StudyConfig`, so the study runner's units,
fingerprints, resume and Ray engine apply unchanged (one unit per variant × task, i.e. per ratio × seed ×
task). Several seeds per ratio are the point: a drop ranking or a sparsity mask scored on one calibration
draw is one sample of what the method would do, and a verdict should hold over the draws.

The sweep file is its own small YAML (``prunelens sweep --print-config`` prints :data:`DEFAULT_SWEEP_YAML`):
a ``sweep:`` block plus the study fields a sweep needs (model, dtype, device, seed, calibration, tasks,
batch_size). The analyses are fixed to what the sweep's curves read — the teacher-forced / free-running
trajectories (their KL) and the one-pass predictor; transitions and the option subspace are not run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prunelens import DEFAULT_MODEL
from prunelens.plan import DROP_TARGETS, SPARSE_METHODS
from prunelens.prune.specs import DropSpec, SparsifySpec, SpecError
from prunelens.studies.config import (
    CONTROL,
    CalibrationConfig,
    StudyConfig,
    StudyConfigError,
    StudyTask,
    _err,
    _expect,
    _int,
    _section,
    _task,
    parse_config,
)
from prunelens.studies.schema import flow_yaml

__all__ = [
    "SweepConfig",
    "DEFAULT_SWEEP_YAML",
    "DEFAULT_NS",
    "DEFAULT_SPARSITIES",
    "DEFAULT_SEEDS",
    "parse_sweep",
    "load_sweep",
    "sweep_variants",
    "study_config",
    "sweep_record",
    "check_sweep",
    "preflight",
    "run_sweep",
]

DEFAULT_NS: tuple[int, ...] = (1, 2, 4, 8, 12, 16)
DEFAULT_SPARSITIES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)
FAMILIES = ("drop", "sparsify")

#: (task entry, comment printed beside it); a sweep evaluates every ratio × seed on all of them
DEFAULT_SWEEP_TASKS: tuple[tuple[dict[str, Any], str], ...] = (
    # the default study's n: with fewer questions no interval excludes a large loss, and every ratio
    # would read "not enough data to tell"
    ({"task": "arc_easy", "limit": 200}, "multiple choice: paired McNemar per seed"),
    ({"task": "piqa", "limit": 200}, ""),
    ({"task": "gsm8k", "limit": 24, "max_new_tokens": 64}, "generation: fidelity to the dense outputs"),
    ({"task": "nq_open", "limit": 24, "max_new_tokens": 24}, ""),
)

#: the analyses a sweep runs: the trajectories (teacher-forced KL) and, always, the predictor
SWEEP_ANALYSES: dict[str, Any] = {
    "prompts": {"gsm8k": 2, "nq_open": 1},
    "trajectories": {"max_new_tokens": 24},
}
#: the case study is not part of a sweep's report; one short answer per prompt kind keeps the unit cheap
SWEEP_CASE_STUDY: dict[str, int] = {"gsm8k": 1, "nq_open": 1, "max_new_tokens": 16}

SWEEP_FIELDS = ("family", "target", "ns", "method", "sparsities", "seeds")
TOP_FIELDS = (
    "model",
    "dtype",
    "device",
    "seed",
    "calibration",
    "tasks",
    "batch_size",
    "eval_batch_size",
    "sweep",
)


@dataclass
class SweepConfig:
    """One pruning family over ``ratios`` (drop counts or sparsities), each at every calibration seed."""

    family: str = "drop"  # drop | sparsify
    target: str | None = "attn"  # drop: attn | mlp | block | joint
    method: str | None = None  # sparsify: magnitude | wanda | sparsegpt
    #: drop: n (integers); sparsify: sparsity in (0, 1). As given (errors name the index); used ascending
    ratios: tuple[float, ...] = DEFAULT_NS
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    model: str = DEFAULT_MODEL
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0  # the study's seed: which examples and prompts are drawn (the same for every variant)
    calibration: CalibrationConfig = CalibrationConfig()
    tasks: list[StudyTask] = field(default_factory=list)
    batch_size: int = 8
    eval_batch_size: int = 32

    @property
    def ratio_name(self) -> str:
        """What the ratio is, for axis labels and tables."""
        if self.family == "drop":
            return f"{self.target} {'sublayers' if self.target == 'joint' else 'layers'} dropped (n)"
        return f"{self.method} sparsity"

    @property
    def effective_seeds(self) -> tuple[int, ...]:
        """Magnitude pruning reads no calibration data, so every seed gives the same mask: one is run."""
        return self.seeds[:1] if self.method == "magnitude" else self.seeds

    def sweep_dict(self) -> dict[str, Any]:
        """The ``sweep:`` block as it would be written in the file."""
        if self.family == "drop":
            return {
                "family": "drop",
                "target": self.target,
                "ns": [int(r) for r in sorted(self.ratios)],
                "seeds": list(self.seeds),
            }
        return {
            "family": "sparsify",
            "method": self.method,
            "sparsities": [float(r) for r in sorted(self.ratios)],
            "seeds": list(self.seeds),
        }


def ratio_label(family: str, ratio: float) -> str:
    """``8`` for a drop count, ``50%`` for a sparsity (the form used in names, tables and the page)."""
    return str(int(ratio)) if family == "drop" else f"{100 * ratio:g}%"


def _default_sweep_yaml() -> str:
    sc = SweepConfig()
    cal = sc.calibration
    lines = [
        "# prunelens sweep config: one pruning family over a range of ratios, each at several calibration",
        "# seeds, run as a study (resumable, --engine ray). `prunelens sweep --print-config` prints this.",
        "# Every ratio × seed evaluates all the tasks, at the default study's n (fewer examples leave every",
        "# ratio 'not enough data to tell'); pass fewer ns or seeds for a first look.",
        "sweep:",
        "  family: drop                # drop | sparsify",
        f"  target: {sc.target:<19} # drop: {' | '.join(DROP_TARGETS)}",
        f"  ns: {flow_yaml(list(DEFAULT_NS)):<23} # drop: how many to drop (each < the model's layers)",
        f"  # method: wanda            # sparsify: {' | '.join(SPARSE_METHODS)}",
        f"  # sparsities: {flow_yaml(list(DEFAULT_SPARSITIES))}  # sparsify: fractions in (0, 1)",
        f"  seeds: {flow_yaml(list(DEFAULT_SEEDS)):<20} # calibration seeds per ratio (magnitude needs one)",
        f"model: {sc.model:<22} # hub id, local dir, .gguf, or alias",
        f"dtype: {sc.dtype:<22} # float32 | bfloat16 | float16",
        f"device: {sc.device:<21} # cpu | cuda | cuda:N | mps | auto",
        f"seed: {sc.seed:<23} # which examples and prompts are drawn (the same for every variant)",
        "calibration:                  # drop scores and Wanda / SparseGPT statistics, drawn per seed",
        f"  source: {cal.source}",
        f"  nsamples: {cal.nsamples}",
        f"  seqlen: {cal.seqlen}",
        "tasks:                        # mc / retrieval: retained score; gen: fidelity to the dense outputs",
    ]
    for t, comment in DEFAULT_SWEEP_TASKS:
        lines.append(f"  - {flow_yaml(t):<52} # {comment}" if comment else f"  - {flow_yaml(t)}")
    lines.append(f"batch_size: {sc.batch_size}")
    lines.append(f"eval_batch_size: {sc.eval_batch_size}")
    return "\n".join(lines) + "\n"


DEFAULT_SWEEP_YAML = _default_sweep_yaml()


def _number_list(raw: Any, where: str, *, integer: bool) -> list[Any]:
    _expect(isinstance(raw, list) and bool(raw), where, f"must be a non-empty list, got {raw!r}")
    out: list[Any] = []
    for i, v in enumerate(raw):
        if integer:
            out.append(_int(v, f"{where}[{i}]", minimum=1))
        else:
            _expect(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1,
                f"{where}[{i}]",
                f"must be a sparsity strictly between 0 and 1, got {v!r}",
            )
            out.append(float(v))
    dupes = sorted({v for v in out if out.count(v) > 1})
    _expect(not dupes, where, f"each ratio may appear once; repeated: {dupes}")
    return out


def _spec_rules(check) -> None:
    """The target or method is the pruning spec's rule (:mod:`prunelens.prune.specs`), named as the
    sweep's field."""
    try:
        check()
    except SpecError as exc:
        raise _err(f"sweep.{exc.field}", exc.text()) from None


def _sweep_block(raw: Any) -> dict[str, Any]:
    if raw is None:
        raw = {}
    _expect(isinstance(raw, dict), "sweep", f"must be a mapping, got {raw!r}")
    unknown = set(raw) - set(SWEEP_FIELDS)
    _expect(not unknown, "sweep", f"unknown keys {sorted(unknown)}; allowed: {', '.join(SWEEP_FIELDS)}")
    family = raw.get("family") or ("sparsify" if {"method", "sparsities"} & set(raw) else "drop")
    _expect(family in FAMILIES, "sweep.family", f"must be drop or sparsify, got {family!r}")
    out: dict[str, Any] = {"family": family}
    if family == "drop":
        for k in ("method", "sparsities"):
            _expect(k not in raw, f"sweep.{k}", "belongs to a sparsify sweep; this one is family: drop")
        target = raw.get("target", "attn")
        _spec_rules(lambda: DropSpec(target, 1).check())
        out["target"], out["method"] = target, None
        out["ratios"] = tuple(_number_list(raw.get("ns", list(DEFAULT_NS)), "sweep.ns", integer=True))
    else:
        for k in ("target", "ns"):
            _expect(k not in raw, f"sweep.{k}", "belongs to a drop sweep; this one is family: sparsify")
        method = raw.get("method", "wanda")
        _spec_rules(lambda: SparsifySpec(method, 0.5).check())
        out["target"], out["method"] = None, method
        out["ratios"] = tuple(
            _number_list(raw.get("sparsities", list(DEFAULT_SPARSITIES)), "sweep.sparsities", integer=False)
        )
    seeds = raw.get("seeds", list(DEFAULT_SEEDS))
    _expect(
        isinstance(seeds, list) and bool(seeds), "sweep.seeds", f"must be a non-empty list, got {seeds!r}"
    )
    seeds = [_int(s, f"sweep.seeds[{i}]", minimum=0) for i, s in enumerate(seeds)]
    dupes = sorted({s for s in seeds if seeds.count(s) > 1})
    _expect(not dupes, "sweep.seeds", f"each seed may appear once; repeated: {dupes}")
    out["seeds"] = tuple(seeds)
    return out


def parse_sweep(data: Any) -> SweepConfig:
    """Validate a parsed sweep YAML mapping into a :class:`SweepConfig` (omitted fields take the defaults).

    The study fields are validated by :func:`~prunelens.studies.config.parse_config` itself (the generated
    study is parsed here once), so a sweep accepts exactly what a study accepts, with the same messages.
    """
    if data is None:
        data = {}
    _expect(isinstance(data, dict), "(top level)", "the sweep config must be a YAML mapping")
    unknown = set(data) - set(TOP_FIELDS)
    _expect(
        not unknown,
        "(top level)",
        f"unknown keys {sorted(unknown)}; allowed: {', '.join(TOP_FIELDS)} "
        "(a sweep generates its variants and fixes its analyses)",
    )
    block = _sweep_block(data.get("sweep"))
    top = SweepConfig()
    tasks = data.get("tasks", [t for t, _ in DEFAULT_SWEEP_TASKS])
    _expect(isinstance(tasks, list) and bool(tasks), "tasks", "must be a non-empty list")
    sc = SweepConfig(
        **block,
        model=data.get("model", top.model),
        dtype=data.get("dtype", top.dtype),
        device=data.get("device", top.device),
        seed=data.get("seed", top.seed),
        calibration=CalibrationConfig(**_section(data.get("calibration"), CalibrationConfig, "calibration")),
        tasks=[_task(t, i) for i, t in enumerate(tasks)],
        batch_size=data.get("batch_size", top.batch_size),
        eval_batch_size=data.get("eval_batch_size", top.eval_batch_size),
    )
    from prunelens.data.tasks import TASKS

    _expect(
        any(TASKS[t.task].kind in ("mc", "retrieval", "gen") for t in sc.tasks),
        "tasks",
        "a sweep needs at least one multiple-choice, retrieval or generative task (its curves read them)",
    )
    cfg = study_config(sc)  # validates model / dtype / device / calibration / batch_size like a study
    sc.model, sc.dtype, sc.device, sc.seed = cfg.model, cfg.dtype, cfg.device, cfg.seed
    sc.calibration, sc.tasks, sc.batch_size = cfg.calibration, cfg.tasks, cfg.batch_size
    sc.eval_batch_size = cfg.eval_batch_size
    return sc


def load_sweep(path: str | Path | None) -> SweepConfig:
    """Read and validate a sweep YAML file (the default sweep when ``path`` is None)."""
    if path is None:
        return parse_sweep(yaml.safe_load(DEFAULT_SWEEP_YAML))
    path = Path(path)
    if not path.exists():
        raise StudyConfigError(f"sweep config {path} does not exist (see `prunelens sweep --print-config`)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise StudyConfigError(f"sweep config {path} is not valid YAML: {exc}") from exc
    return parse_sweep(data)


def variant_name(sc: SweepConfig, ratio: float, seed: int) -> str:
    """``attn-8@s1``: 8 attention sublayers dropped, scored on calibration seed 1; ``wanda-50%@s0``."""
    head = sc.target if sc.family == "drop" else sc.method
    return f"{head}-{ratio_label(sc.family, ratio)}@s{seed}"


def sweep_variants(sc: SweepConfig) -> list[dict[str, Any]]:
    """The generated variants: the control first, then every ratio (ascending) at every seed."""
    out: list[dict[str, Any]] = [{"name": CONTROL, "control": {"round_to": "auto"}}]
    for r in sorted(sc.ratios):
        for s in sc.effective_seeds:
            v: dict[str, Any] = {"name": variant_name(sc, r, s), "seed": s}
            if sc.family == "drop":
                v["drop"] = {"target": sc.target, "n": int(r)}
            else:
                v["sparsify"] = {"method": sc.method, "sparsity": float(r)}
            out.append(v)
    return out


def study_config(sc: SweepConfig) -> StudyConfig:
    """The study that runs the sweep: its generated variants, its tasks, the sweep's fixed analyses."""
    return parse_config(
        {
            "model": sc.model,
            "dtype": sc.dtype,
            "device": sc.device,
            "seed": sc.seed,
            "calibration": {
                "source": sc.calibration.source,
                "nsamples": sc.calibration.nsamples,
                "seqlen": sc.calibration.seqlen,
            },
            "variants": sweep_variants(sc),
            "tasks": [
                {k: v for k, v in vars(t).items() if v is not None and not (k == "num_fewshot" and v == 0)}
                for t in sc.tasks
            ],
            "batch_size": sc.batch_size,
            "eval_batch_size": sc.eval_batch_size,
            "analyses": SWEEP_ANALYSES,
            "case_study": SWEEP_CASE_STUDY,
        }
    )


def sweep_record(sc: SweepConfig) -> dict[str, Any]:
    """What ``study.json`` records under ``sweep``: the block, and which variant is which (ratio, seed), so
    the report reads the mapping instead of parsing names."""
    variants = []
    for r in sorted(sc.ratios):
        for s in sc.effective_seeds:
            variants.append({"name": variant_name(sc, r, s), "ratio": r, "seed": s})
    return {
        **sc.sweep_dict(),
        "ratio_name": sc.ratio_name,
        "ratio_labels": {str(r): ratio_label(sc.family, r) for r in sc.ratios},
        "effective_seeds": list(sc.effective_seeds),
        "control": CONTROL,
        "variants": variants,
    }


def check_sweep(sc: SweepConfig, num_layers: int | None) -> None:
    """Refuse drop counts the model cannot satisfy before anything runs, naming the sweep field
    (``num_layers=None``: not known without loading the model, nothing is checked)."""
    if sc.family != "drop" or not num_layers:
        return
    from prunelens.prune.specs import SpecError, check_drop_count

    for i, n in enumerate(sc.ratios):
        try:
            check_drop_count(int(num_layers), str(sc.target), int(n))
        except SpecError as exc:
            raise _err(f"sweep.ns[{i}]", exc.text()) from None


def preflight(sc: SweepConfig) -> None:
    """The cheap checks, before anything is loaded or written: the model exists, the calibration windows fit
    its context, every drop count fits its layers (errors name the field)."""
    from prunelens.models.loading import check_seqlen, resolve

    src = resolve(sc.model)
    check_seqlen(sc.calibration.seqlen, src.config, option="calibration.seqlen")
    check_sweep(sc, src.num_layers)


def run_sweep(
    sc: SweepConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    engine: str = "local",
    workers: int = 2,
    ray_address: str | None = None,
    report: Callable[[str, float, bool], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the sweep's study, then record the sweep in ``study.json`` (the report's cue to draw
    the sweep section). Returns the study's timings. Drop counts are checked against the model first."""
    from prunelens.studies.runner import run_study
    from prunelens.utils.io import atomic_write_json

    cfg = study_config(sc)
    preflight(sc)
    timings = run_study(
        cfg, out, overwrite=overwrite, engine=engine, workers=workers, ray_address=ray_address, report=report
    )
    path = Path(out) / "study.json"
    record = json.loads(path.read_text())
    record["sweep"] = sweep_record(sc)
    atomic_write_json(path, record)
    return timings
