"""The study config: which variants, which tasks, which analyses — a small YAML file, validated.

``prunelens study --print-config`` prints :data:`DEFAULT_CONFIG`; copy it, edit it, pass it back.
Every error names the field and the allowed values.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from prunelens import DEFAULT_MODEL
from prunelens.analysis import ANALYSES
from prunelens.prune.specs import TRUE_SEQUENTIAL_DEFAULT, DropSpec, SparsifySpec, SpecError
from prunelens.utils.errors import InputError

#: the name of the unpruned model in every study table, figure and directory
DENSE = "Full"

TASK_FIELDS = {"task", "limit", "max_new_tokens", "num_fewshot"}


class StudyConfigError(InputError):
    """An invalid study config; the message names the field and what is allowed."""


@dataclass
class VariantSpec:
    name: str
    drop: dict[str, Any] | None = None
    sparsify: dict[str, Any] | None = None
    #: a control perturbation (``{round_to: auto|bfloat16|float16}``): the noise floor, not pruning
    control: dict[str, Any] | None = None
    #: the calibration seed of this variant's drop scores / sparsity masks (default: the study's seed)
    seed: int | None = None
    #: the name of another variant of the study that this one is the same pruning as, but for one changed
    #: rule (an objective, a repair, ...): the report shows the two side by side with paired differences
    #: between them. A label for the report only: it is left out of every unit fingerprint.
    twin: str | None = None
    #: a repair after the pruning (``prunelens repair``): the :class:`~prunelens.distill.RepairSettings`
    #: fields, every default spelled out, plus ``nsamples`` / ``seqlen`` of its calibration windows
    repair: dict[str, Any] | None = None

    @property
    def is_dense(self) -> bool:
        return self.drop is None and self.sparsify is None and self.control is None

    @property
    def is_control(self) -> bool:
        return self.control is not None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class StudyTask:
    """One task of the study and its limits (the task itself is defined in :mod:`prunelens.data.tasks`)."""

    task: str
    limit: int | None = None
    max_new_tokens: int | None = None
    num_fewshot: int = 0


# --- nested sections: every default lives here, once; the printed default config is generated from them ---


@dataclass(frozen=True)
class CalibrationConfig:
    source: str = "c4"
    nsamples: int = 32
    seqlen: int = 256


@dataclass(frozen=True)
class TransitionsConfig:
    temperatures: tuple[float, ...] = (1.0,)


@dataclass(frozen=True)
class TrajectoriesConfig:
    max_new_tokens: int = 24


@dataclass(frozen=True)
class SubspaceConfig:
    task: str = "arc_easy"
    limit: int = 24


@dataclass(frozen=True)
class AnalysesConfig:
    """Which analyses run and how. An analysis runs when it is set (``None`` = not run)."""

    prompts: dict[str, int] = field(default_factory=lambda: {"gsm8k": 2, "nq_open": 1})
    scope: str = "variant"
    positions: str = "generated"
    transitions: TransitionsConfig | None = TransitionsConfig()
    trajectories: TrajectoriesConfig | None = TrajectoriesConfig()
    subspace: SubspaceConfig | None = SubspaceConfig()

    @property
    def enabled(self) -> tuple[str, ...]:
        return tuple(a for a in ANALYSES if getattr(self, a) is not None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for a in ANALYSES:  # a disabled analysis is simply absent, as in a hand-written config
            if d[a] is None:
                del d[a]
        if "transitions" in d:
            d["transitions"]["temperatures"] = list(d["transitions"]["temperatures"])
        return d


@dataclass(frozen=True)
class CaseStudyConfig:
    gsm8k: int = 2
    nq_open: int = 2
    max_new_tokens: int = 96


#: the name of the default control variant (weights rounded to a lower precision: the noise floor)
CONTROL = "Control"

DEFAULT_VARIANTS: tuple[dict[str, Any], ...] = (
    {"name": CONTROL, "control": {"round_to": "auto"}},
    {"name": "Drop-4A", "drop": {"target": "attn", "n": 4}},
    {"name": "Drop-8A", "drop": {"target": "attn", "n": 8}},
    {  # Drop-8A's twin (see VARIANT_COMMENTS)
        "name": "Drop-8A-KL",
        "drop": {"target": "attn", "n": 8, "objective": "generation", "score_windows": 4},
        "twin": "Drop-8A",
    },
    {"name": "Drop-4M", "drop": {"target": "mlp", "n": 4}},
    {"name": "Drop-8M", "drop": {"target": "mlp", "n": 8}},
    {"name": "Drop-4B", "drop": {"target": "block", "n": 4}},
    {"name": "Wanda-50%", "sparsify": {"method": "wanda", "sparsity": 0.5}},
    {"name": "SparseGPT-2:4", "sparsify": {"method": "sparsegpt", "pattern": "2:4"}},
)

#: comment lines printed above a default variant
VARIANT_COMMENTS: dict[str, tuple[str, ...]] = {
    "Drop-8A-KL": (
        "twin: NAME = the same pruning as NAME but for one changed rule; the report pairs the two.",
        "Here: the exact next-token KL chooses (objective generation) instead of the cosine, scored on",
        "the first 4 calibration windows (score_windows; its cost and choices: benchmarks/README.md,",
        "section 'What the default study's report says').",
    ),
}

#: (task entry, comment printed beside it)
DEFAULT_TASKS: tuple[tuple[dict[str, Any], str], ...] = (
    ({"task": "arc_easy", "limit": 200}, "n = 200: a paired test detects 14 points at worst"),
    ({"task": "piqa", "limit": 200}, ""),
    ({"task": "wikitext2", "limit": 4}, "perplexity: number of 256-token windows"),
    (
        {"task": "boolq_retrieval", "limit": 30},
        "embedder: the studied model (last-token pooling), pruned the same way",
    ),
    ({"task": "gsm8k", "limit": 24, "max_new_tokens": 128}, ""),
    ({"task": "nq_open", "limit": 24, "max_new_tokens": 24}, ""),
)


@dataclass
class StudyConfig:
    model: str = DEFAULT_MODEL
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    calibration: CalibrationConfig = CalibrationConfig()
    variants: list[VariantSpec] = field(default_factory=list)
    tasks: list[StudyTask] = field(default_factory=list)
    batch_size: int = 8  # calibration windows per forward pass (drop scoring, Wanda, SparseGPT)
    eval_batch_size: int = 32  # evaluation: MC rows, perplexity windows, retrieval texts, generated prompts
    analyses: AnalysesConfig = AnalysesConfig()
    case_study: CaseStudyConfig = CaseStudyConfig()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["variants"] = [v.to_dict() for v in self.variants]
        d["analyses"] = self.analyses.to_dict()
        return d

    def fingerprint(self, *parts: str) -> str:
        """Hash of the config fields that a unit depends on
        (``parts`` are top-level keys or ``variant:NAME``)."""
        d = self.to_dict()
        picked = {}
        for p in parts:
            if p.startswith("variant:"):  # the twin label changes no unit's result
                v = next(v for v in d["variants"] if v["name"] == p[8:])
                picked[p] = {k: x for k, x in v.items() if k != "twin"}
            elif p.startswith("task:"):
                picked[p] = next(t for t in d["tasks"] if t["task"] == p[5:])
            else:
                picked[p] = d[p]
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def _flow(value: Any) -> str:
    """One YAML value in flow style, as a person would write it in this file."""
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip()


def _default_config_yaml() -> str:
    """The printed default config, generated from the dataclass defaults above (one source of truth)."""
    cal, an, cs, top = CalibrationConfig(), AnalysesConfig(), CaseStudyConfig(), StudyConfig()
    lines = [
        (
            "# prunelens study config. Every field is optional except where noted; "
            "`prunelens study --print-config`"
        ),
        "# prints this default. The limits keep the default study under 20 minutes on a 2-core CPU while",
        "# giving paired tests a usable n; raise them (and add tasks: boolq, humaneval, mbpp, mmlu,",
        "# hellaswag, ...) for numbers you would publish. BoolQ is not in the default: the embedded 135M",
        "# model answers it below chance (benchmarks/README.md, section 'The whole study'), so it could not",
        "# judge anything.",
        "# A nested block you give is merged with these defaults field by field.",
    ]

    def row(text: str, comment: str = "") -> None:
        lines.append(f"{text:<28} # {comment}" if comment else text)

    row(f"model: {top.model}", "hub id, local dir, .gguf, or alias")
    row(f"dtype: {top.dtype}", "float32 | bfloat16 | float16")
    row(f"device: {top.device}", "cpu | cuda | cuda:N | mps | auto (accelerate device map)")
    row(f"seed: {top.seed}")
    row("calibration:", "used to score drops and to calibrate Wanda / SparseGPT")
    row(f"  source: {cal.source}", "c4 | wikitext2 | a .txt/.json/.jsonl file | hub:NAME[:CONFIG[:SPLIT]]")
    row(f"  nsamples: {cal.nsamples}")
    row(f"  seqlen: {cal.seqlen}", "at most the model's context length")
    row("variants:", 'the dense model ("Full") is always included first')
    for v in DEFAULT_VARIANTS:
        for comment in VARIANT_COMMENTS.get(v["name"], ()):
            lines.append(f"  # {comment}")
        lines.append(f"  - {_flow(v)}")
    row("tasks:", "kind is taken from the task registry (mc, retrieval, ppl = non-generative; gen)")
    for t, comment in DEFAULT_TASKS:
        lines.append(f"  - {_flow(t):<36} # {comment}" if comment else f"  - {_flow(t)}")
    row(f"batch_size: {top.batch_size}", "calibration windows per pass (drop scoring, Wanda, SparseGPT)")
    row(f"eval_batch_size: {top.eval_batch_size}", "evaluation: MC rows, windows, texts, prompts per pass")
    row("analyses:", "an analysis runs when listed; a block without any runs transitions only")
    lines.append(f"  prompts: {_flow(an.prompts):<30} # analysed prompt set: this many of each (seeded)")
    lines.append(f"  scope: {an.scope:<32} # variant: the sublayers each variant prunes | all: every layer")
    lines.append(
        f"  positions: {an.positions:<28} # tokens analysed in transitions: generated | prompt | all"
    )
    lines.append(f"  transitions: {_flow({'temperatures': list(an.transitions.temperatures)})}")
    lines.append(f"  trajectories: {_flow(asdict(an.trajectories))}")
    lines.append(f"  subspace: {_flow(asdict(an.subspace))}")
    lines.append(f"case_study: {_flow(asdict(cs))}")
    return "\n".join(lines) + "\n"


DEFAULT_CONFIG_YAML = _default_config_yaml()


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
    _expect(scope in ("variant", "all"), "analyses.scope", f"must be variant or all, got {scope!r}")
    positions = raw.get("positions", d.positions)
    _expect(
        positions in ("generated", "prompt", "all"),
        "analyses.positions",
        f"must be generated, prompt or all, got {positions!r}",
    )
    listed = [a for a in ANALYSES if raw.get(a) is not None]
    if not listed:
        listed = ["transitions"]
    tr = tj = sub = None
    if "transitions" in listed:
        t = _section(raw.get("transitions") or {}, TransitionsConfig, "analyses.transitions")
        temps = t.get("temperatures", list(TransitionsConfig().temperatures))
        _expect(
            isinstance(temps, list)
            and temps
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in temps),
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
        from prunelens.data.tasks import TASKS

        t = _section(raw["subspace"], SubspaceConfig, "analyses.subspace")
        task = t.get("task", SubspaceConfig().task)
        mc = sorted(k for k, v in TASKS.items() if v.kind == "mc")
        _expect(
            task in mc,
            "analyses.subspace.task",
            f"must be a multiple-choice task ({', '.join(mc)}), got {task!r}",
        )
        sub = SubspaceConfig(task, _int(t.get("limit", SubspaceConfig().limit), "analyses.subspace.limit"))
    return AnalysesConfig(
        prompts=dict(prompts), scope=scope, positions=positions, transitions=tr, trajectories=tj, subspace=sub
    )


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
