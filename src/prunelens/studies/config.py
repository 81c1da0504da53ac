"""The study config: which variants, which tasks, which analyses — a small YAML file, read and checked.

``prunelens study --print-config`` prints :data:`DEFAULT_CONFIG_YAML`; copy it, edit it, pass it back.
Every error names the field and the allowed values. What the sections hold and their defaults:
:mod:`prunelens.studies.schema`; a variant's ``drop`` / ``sparsify`` rules: the specs of
:mod:`prunelens.prune.specs`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import yaml

from prunelens.analysis import ANALYSES
from prunelens.prune.specs import TRUE_SEQUENTIAL_DEFAULT, DropSpec, SparsifySpec, SpecError
from prunelens.studies.schema import (  # re-exported: the config's names, imported from here by callers
    CONTROL,
    DEFAULT_CONFIG_YAML,
    DEFAULT_TASKS,
    DEFAULT_VARIANTS,
    DENSE,
    TASK_FIELDS,
    VARIANT_COMMENTS,
    AnalysesConfig,
    CalibrationConfig,
    CaseStudyConfig,
    StudyConfig,
    StudyTask,
    SubspaceConfig,
    TrajectoriesConfig,
    TransitionsConfig,
    VariantSpec,
)
from prunelens.utils.errors import InputError

__all__ = [
    "StudyConfigError",
    "load_config",
    "parse_config",
    "twin_pairs",
    "DENSE",
    "TASK_FIELDS",
    "VariantSpec",
    "StudyTask",
    "CalibrationConfig",
    "TransitionsConfig",
    "TrajectoriesConfig",
    "SubspaceConfig",
    "AnalysesConfig",
    "CaseStudyConfig",
    "CONTROL",
    "DEFAULT_VARIANTS",
    "VARIANT_COMMENTS",
    "DEFAULT_TASKS",
    "StudyConfig",
    "DEFAULT_CONFIG_YAML",
]


class StudyConfigError(InputError):
    """An invalid study config; the message names the field and what is allowed."""


def _err(field_name: str, message: str) -> StudyConfigError:
    return StudyConfigError(f"study config: field '{field_name}': {message}")


def _expect(cond: bool, field_name: str, message: str) -> None:
    if not cond:
        raise _err(field_name, message)


def _int(value: Any, field_name: str, minimum: int = 1, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    _expect(
        isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
        field_name,
        f"must be an integer ≥ {minimum}, got {value!r}",
    )
    return value


def _spec_field(where: str, exc: SpecError) -> StudyConfigError:
    """A spec's refusal as a config error naming the field's path (``variants[2].drop.n``)."""
    return _err(f"{where}.{exc.field}", exc.text())


def _drop_block(drop: Any, where: str) -> dict[str, Any]:
    """A variant's ``drop`` block: its keys, then :meth:`DropSpec.check` (every rule lives there). The block
    is kept as written (defaults not spelled out: unit fingerprints of existing studies stay valid)."""
    keys = DropSpec.keys()
    _expect(isinstance(drop, dict), where, "must be a mapping {target, n[, iterative, ...]}")
    unknown = set(drop) - set(keys)
    _expect(not unknown, where, f"unknown keys {sorted(unknown)}; allowed: {', '.join(keys)}")
    try:
        DropSpec(**{"target": None, "n": None, **drop}).check()
    except SpecError as exc:
        raise _spec_field(where, exc) from None
    return drop


def _sparsify_block(sparsify: Any, where: str) -> dict[str, Any]:
    """A variant's ``sparsify`` block, checked by :meth:`SparsifySpec.check`; the calibration order and the
    allocation's lambda are spelled out, so a changed default changes the fingerprint."""
    allowed = ("method", "sparsity", "pattern", "true_sequential", "allocation", "allocation_lambda")
    _expect(
        isinstance(sparsify, dict),
        where,
        "must be a mapping {method, sparsity | pattern[, true_sequential, allocation, allocation_lambda]}",
    )
    unknown = set(sparsify) - set(allowed)
    _expect(not unknown, where, f"unknown keys {sorted(unknown)}; allowed: {', '.join(allowed)}")
    try:
        spec = SparsifySpec(**{"method": None, **sparsify}).check()
    except SpecError as exc:
        raise _spec_field(where, exc) from None
    out = dict(sparsify)
    if spec.allocation != "uniform":
        out["allocation_lambda"] = spec.spread
    if spec.method in TRUE_SEQUENTIAL_DEFAULT:
        out["true_sequential"] = spec.calibrates_true_sequentially
    return out


def _variant(raw: Any, i: int) -> VariantSpec:
    where = f"variants[{i}]"
    kinds = ("drop", "sparsify", "control")
    _expect(
        isinstance(raw, dict),
        where,
        f"must be a mapping with 'name' and one of {' / '.join(kinds)}, got {raw!r}",
    )
    unknown = set(raw) - {"name", "seed", "twin", "repair", *kinds}
    _expect(
        not unknown,
        where,
        f"unknown keys {sorted(unknown)}; allowed: name, drop, sparsify, control, seed, twin, repair",
    )
    name = raw.get("name")
    _expect(
        isinstance(name, str) and name.strip() != "" and "/" not in name,
        f"{where}.name",
        f"must be a non-empty name without '/', got {name!r}",
    )
    drop, sparsify, control = raw.get("drop"), raw.get("sparsify"), raw.get("control")
    _expect(
        sum(x is not None for x in (drop, sparsify, control)) == 1 or name == DENSE,
        where,
        "give exactly one of 'drop', 'sparsify' or 'control'",
    )
    seed = _int(raw.get("seed"), f"{where}.seed", minimum=0, allow_none=True)
    _expect(
        seed is None or control is None,
        f"{where}.seed",
        "a control uses no calibration data, so it takes no seed",
    )
    if control is not None:
        from prunelens.models.perturb import CONTROL_ROUNDINGS

        _expect(isinstance(control, dict), f"{where}.control", "must be a mapping {round_to}")
        unknown = set(control) - {"round_to"}
        _expect(not unknown, f"{where}.control", f"unknown keys {sorted(unknown)}; allowed: round_to")
        control = {"round_to": control.get("round_to", "auto")}
        _expect(
            control["round_to"] in CONTROL_ROUNDINGS,
            f"{where}.control.round_to",
            f"must be one of {', '.join(CONTROL_ROUNDINGS)}, got {control['round_to']!r}",
        )
    if drop is not None:
        drop = _drop_block(drop, f"{where}.drop")
    if sparsify is not None:
        sparsify = _sparsify_block(sparsify, f"{where}.sparsify")
    twin = raw.get("twin")
    _expect(
        twin is None or (isinstance(twin, str) and twin.strip() != ""),
        f"{where}.twin",
        f"must be the name of another variant of the study, got {twin!r}",
    )
    repair = _repair(raw.get("repair"), where, pruned=drop is not None or sparsify is not None)
    return VariantSpec(
        name=name, drop=drop, sparsify=sparsify, control=control, seed=seed, twin=twin, repair=repair
    )


#: calibration windows of a study variant's repair unless its ``repair:`` block says otherwise
REPAIR_NSAMPLES = 64


def _repair(raw: Any, where: str, *, pruned: bool) -> dict[str, Any] | None:
    """A variant's ``repair:`` block, checked as ``prunelens repair`` checks its options, defaults
    spelled out (so a changed default changes the fingerprint)."""
    from prunelens.distill.settings import RepairSettings, RepairSettingsError

    if raw is None:
        return None
    field = f"{where}.repair"
    _expect(isinstance(raw, dict), field, f"must be a mapping of repair settings, got {raw!r}")
    _expect(pruned, field, "repairs a pruned variant: give it a drop or sparsify block too")
    calib = {"nsamples": raw.get("nsamples", REPAIR_NSAMPLES), "seqlen": raw.get("seqlen")}
    for key in ("nsamples", "seqlen"):
        v = calib[key]
        ok = v is None and key == "seqlen" or isinstance(v, int) and not isinstance(v, bool) and v > 0
        _expect(ok, f"{field}.{key}", f"must be a positive integer, got {v!r}")
    _expect(calib["nsamples"] >= 2, f"{field}.nsamples", "needs at least 2 windows (training and held-out)")
    try:
        settings = RepairSettings.from_dict(
            {k: v for k, v in raw.items() if k not in ("nsamples", "seqlen")}, where=field
        )
    except (RepairSettingsError, TypeError) as exc:
        raise _err(getattr(exc, "field", field), str(exc).split(": ", 1)[-1]) from None
    out = {**settings.to_dict(), "nsamples": calib["nsamples"]}
    if calib["seqlen"] is not None:
        out["seqlen"] = calib["seqlen"]
    return out


def _task(raw: Any, i: int) -> StudyTask:
    from prunelens.data.tasks import TASKS

    where = f"tasks[{i}]"
    if isinstance(raw, str):
        raw = {"task": raw}
    _expect(isinstance(raw, dict), where, f"must be a task name or a mapping with 'task', got {raw!r}")
    unknown = set(raw) - TASK_FIELDS
    _expect(not unknown, where, f"unknown keys {sorted(unknown)}; allowed: {', '.join(sorted(TASK_FIELDS))}")
    name = raw.get("task")
    _expect(name in TASKS, f"{where}.task", f"must be one of {', '.join(sorted(TASKS))}, got {name!r}")
    return StudyTask(
        task=name,
        limit=_int(raw.get("limit"), f"{where}.limit", allow_none=True),
        max_new_tokens=_int(raw.get("max_new_tokens"), f"{where}.max_new_tokens", allow_none=True),
        num_fewshot=_int(raw.get("num_fewshot", 0), f"{where}.num_fewshot", minimum=0),
    )


def _section(raw: Any, cls, where: str) -> dict[str, Any]:
    """A nested block merged field by field over ``cls``'s defaults; unknown keys name the allowed ones."""
    if raw is None:
        return {}
    _expect(isinstance(raw, dict), where, f"must be a mapping, got {raw!r}")
    allowed = [f.name for f in fields(cls)]
    unknown = set(raw) - set(allowed)
    _expect(not unknown, where, f"unknown keys {sorted(unknown)}; allowed: {', '.join(allowed)}")
    return raw


def _analyses(raw: Any) -> AnalysesConfig:
    if raw is None:
        return AnalysesConfig()
    raw = _section(raw, AnalysesConfig, "analyses")
    d = AnalysesConfig()
    prompts = raw.get("prompts", d.prompts)
    _expect(
        isinstance(prompts, dict) and prompts,
        "analyses.prompts",
        f"must map gsm8k / nq_open to a number of prompts, got {prompts!r}",
    )
    for task, k in prompts.items():
        _expect(
            task in ("gsm8k", "nq_open"), "analyses.prompts", f"tasks are gsm8k and nq_open, got {task!r}"
        )
        _int(k, f"analyses.prompts.{task}", minimum=0)
    scope = raw.get("scope", d.scope)
    positions = raw.get("positions", d.positions)
    listed = [a for a in ANALYSES if raw.get(a) is not None]
    if not listed:
        listed = ["transitions"]
    tr = tj = sub = None
    if "transitions" in listed:
        t = _section(raw.get("transitions") or {}, TransitionsConfig, "analyses.transitions")
        temps = t.get("temperatures", list(TransitionsConfig().temperatures))
        _expect(
            isinstance(temps, list) and temps and not any(isinstance(x, bool) for x in temps),
            "analyses.transitions.temperatures",
            f"must be a non-empty list of positive numbers, got {temps!r}",
        )
        tr = TransitionsConfig(tuple(float(x) if isinstance(x, float) else x for x in temps))
    if "trajectories" in listed:
        t = _section(raw["trajectories"], TrajectoriesConfig, "analyses.trajectories")
        tj = TrajectoriesConfig(
            _int(
                t.get("max_new_tokens", TrajectoriesConfig().max_new_tokens),
                "analyses.trajectories.max_new_tokens",
            )
        )
    if "subspace" in listed:
        from prunelens.data.tasks import tasks_of_kind

        t = _section(raw["subspace"], SubspaceConfig, "analyses.subspace")
        task = t.get("task", SubspaceConfig().task)
        mc = tasks_of_kind("mc")
        _expect(
            task in mc,
            "analyses.subspace.task",
            f"must be a multiple-choice task ({', '.join(mc)}), got {task!r}",
        )
        sub = SubspaceConfig(task, _int(t.get("limit", SubspaceConfig().limit), "analyses.subspace.limit"))
    _check_analysis_rules(scope, positions, tr, tj)
    return AnalysesConfig(
        prompts=dict(prompts), scope=scope, positions=positions, transitions=tr, trajectories=tj, subspace=sub
    )


def _check_analysis_rules(scope: Any, positions: Any, tr, tj) -> None:
    """Scope, positions, temperatures and token counts are the analysis's own rules
    (:class:`~prunelens.analysis.pipeline.AnalysisConfig`); a refusal names the config's field."""
    from prunelens.analysis.pipeline import AnalysisConfig

    where = {
        "temperature": "analyses.transitions.temperatures",
        "max_new_tokens": "analyses.trajectories.max_new_tokens",
    }
    try:
        AnalysisConfig(
            temperatures=tr.temperatures if tr else (1.0,),
            max_new_tokens=tj.max_new_tokens if tj else 1,
            scope=scope,
            positions=positions,
        )
    except SpecError as exc:
        raise _err(where.get(exc.field, f"analyses.{exc.field}"), exc.text()) from None


def _twins_and_windows(cfg: StudyConfig, raw_variants: list[Any]) -> None:
    """Checks across variants: a ``twin`` names another listed variant (not itself, not the dense model,
    not a variant that names this one back), and ``drop.score_windows`` fits the calibration."""
    index = {
        v.get("name"): i for i, v in enumerate(raw_variants) if isinstance(v, dict) and v.get("name") != DENSE
    }
    listed = {v.name: v for v in cfg.variants if v.name != DENSE}
    for v in listed.values():
        where = f"variants[{index.get(v.name, '?')}]"
        if v.twin is not None:
            _expect(v.twin != v.name, f"{where}.twin", f"{v.name!r} cannot be its own twin")
            _expect(
                v.twin != DENSE,
                f"{where}.twin",
                f"every variant is already compared with {DENSE}: name another variant of the study",
            )
            _expect(
                v.twin in listed,
                f"{where}.twin",
                f"must name another variant of the study ({', '.join(listed)}), got {v.twin!r}",
            )
            _expect(
                listed[v.twin].twin != v.name,
                f"{where}.twin",
                f"{v.twin!r} already names {v.name!r} as its twin: give the twin on one side only",
            )
        k = (v.drop or {}).get("score_windows")
        _expect(
            k is None or k <= cfg.calibration.nsamples,
            f"{where}.drop.score_windows",
            f"must be at most calibration.nsamples ({cfg.calibration.nsamples}), got {k!r}",
        )


def twin_pairs(cfg_variants: list[VariantSpec] | list[dict[str, Any]]) -> list[tuple[str, str]]:
    """``(variant, its twin)`` for every variant that names one, in config order."""
    out = []
    for v in cfg_variants:
        name, twin = (v.get("name"), v.get("twin")) if isinstance(v, dict) else (v.name, v.twin)
        if isinstance(name, str) and isinstance(twin, str):
            out.append((name, twin))
    return out


def parse_config(data: Any) -> StudyConfig:
    """Validate a parsed YAML mapping into a :class:`StudyConfig`; every omitted field takes its default."""
    if data is None:
        data = {}
    _expect(isinstance(data, dict), "(top level)", "the config must be a YAML mapping")
    allowed = set(StudyConfig.__dataclass_fields__)
    unknown = set(data) - allowed
    _expect(
        not unknown, "(top level)", f"unknown keys {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}"
    )
    top = StudyConfig()
    cfg = StudyConfig()
    cfg.model = data.get("model", top.model)
    _expect(isinstance(cfg.model, str) and cfg.model, "model", "must be a model spec string")
    cfg.dtype = data.get("dtype", top.dtype)
    _expect(
        cfg.dtype in ("float32", "bfloat16", "float16", "auto"),
        "dtype",
        f"must be one of float32, bfloat16, float16, auto; got {cfg.dtype!r}",
    )
    cfg.device = data.get("device", top.device)
    _expect(
        isinstance(cfg.device, str) and re.fullmatch(r"cpu|cuda(:\d+)?|mps|auto", cfg.device) is not None,
        "device",
        f"must be cpu, cuda, cuda:N, mps or auto; got {cfg.device!r}",
    )
    cfg.seed = _int(data.get("seed", top.seed), "seed", minimum=0)
    cal = {
        **asdict(CalibrationConfig()),
        **_section(data.get("calibration"), CalibrationConfig, "calibration"),
    }
    _expect(
        isinstance(cal["source"], str) and cal["source"],
        "calibration.source",
        "must be a source name or file",
    )
    cfg.calibration = CalibrationConfig(
        cal["source"],
        _int(cal["nsamples"], "calibration.nsamples"),
        _int(cal["seqlen"], "calibration.seqlen", minimum=8),
    )
    variants = data.get("variants", list(DEFAULT_VARIANTS))
    _expect(isinstance(variants, list), "variants", "must be a list of variants")
    cfg.variants = [VariantSpec(name=DENSE)] + [
        _variant(v, i) for i, v in enumerate(variants) if not (isinstance(v, dict) and v.get("name") == DENSE)
    ]
    names = [v.name for v in cfg.variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    _expect(not dupes, "variants", f"names must be unique; repeated: {dupes}")
    _twins_and_windows(cfg, variants)
    tasks = data.get("tasks", [t for t, _ in DEFAULT_TASKS])
    _expect(isinstance(tasks, list) and tasks, "tasks", "must be a non-empty list")
    cfg.tasks = [_task(t, i) for i, t in enumerate(tasks)]
    tnames = [t.task for t in cfg.tasks]
    _expect(len(set(tnames)) == len(tnames), "tasks", "each task may appear once")
    cfg.batch_size = _int(data.get("batch_size", top.batch_size), "batch_size")
    cfg.eval_batch_size = _int(data.get("eval_batch_size", top.eval_batch_size), "eval_batch_size")
    cfg.analyses = _analyses(data.get("analyses"))
    cs = {**asdict(CaseStudyConfig()), **_section(data.get("case_study"), CaseStudyConfig, "case_study")}
    cfg.case_study = CaseStudyConfig(
        *(
            _int(cs[k], f"case_study.{k}", minimum=0 if k != "max_new_tokens" else 1)
            for k in ("gsm8k", "nq_open", "max_new_tokens")
        )
    )
    return cfg


def load_config(path: str | Path | None) -> StudyConfig:
    """Read and validate a YAML study config (the default when ``path`` is None)."""
    if path is None:
        return parse_config(yaml.safe_load(DEFAULT_CONFIG_YAML))
    path = Path(path)
    if not path.exists():
        raise StudyConfigError(f"study config {path} does not exist (see `prunelens study --print-config`)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise StudyConfigError(f"study config {path} is not valid YAML: {exc}") from exc
    return parse_config(data)
