"""The study config: which variants, which tasks, which analyses — a small YAML file, validated.

``prunelens study --print-config`` prints :data:`DEFAULT_CONFIG`; copy it, edit it, pass it back.
Every error names the field and the allowed values.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prunelens.plan import DROP_TARGETS, SPARSE_METHODS

DEFAULT_CONFIG_YAML = """\
# prunelens study config. Every field is optional except where noted; `prunelens study --print-config`
# prints this default. The small limits keep the default study short on a 2-core CPU; raise them
# (and add tasks: humaneval, mbpp, mmlu, hellaswag, ...) for numbers you would publish.
model: smollm2-135m          # hub id, local dir, .gguf, or alias
dtype: float32               # float32 | bfloat16 | float16
device: cpu                  # cpu | cuda | cuda:N | mps | auto (accelerate device map)
seed: 0
calibration:                 # used to score drops and to calibrate Wanda / SparseGPT
  source: c4                 # c4 | wikitext2 | a .txt/.json/.jsonl file | hub:NAME[:CONFIG[:SPLIT]]
  nsamples: 32
  seqlen: 256
variants:                    # the dense model ("Full") is always included first
  - {name: Drop-4A, drop: {target: attn, n: 4}}
  - {name: Drop-8A, drop: {target: attn, n: 8}}
  - {name: Drop-4M, drop: {target: mlp, n: 4}}
  - {name: Drop-8M, drop: {target: mlp, n: 8}}
  - {name: Drop-4B, drop: {target: block, n: 4}}
  - {name: Wanda-50%, sparsify: {method: wanda, sparsity: 0.5}}
  - {name: SparseGPT-2:4, sparsify: {method: sparsegpt, pattern: "2:4"}}
tasks:                       # kind is taken from the task registry (mc, retrieval, ppl = non-generative; gen)
  - {task: arc_easy, limit: 40}
  - {task: piqa, limit: 40}
  - {task: boolq, limit: 24}
  - {task: wikitext2, limit: 4}          # perplexity: number of 256-token windows
  - {task: boolq_retrieval, limit: 30}   # embedder: the studied model (last-token pooling), pruned the same way
  - {task: gsm8k, limit: 8, max_new_tokens: 128}
  - {task: nq_open, limit: 12, max_new_tokens: 24}
batch_size: 8
analyses:
  prompts: {gsm8k: 2, nq_open: 1}        # analysed prompt set: this many of each (seeded)
  scope: variant                         # variant: the sublayers each variant prunes | all: every layer
  positions: generated                   # tokens analysed in transitions: generated | prompt | all
  transitions: {temperatures: [1.0]}
  trajectories: {max_new_tokens: 24}
  subspace: {task: arc_easy, limit: 24}
case_study: {gsm8k: 2, nq_open: 2, max_new_tokens: 96}
"""

TASK_FIELDS = {"task", "limit", "max_new_tokens", "num_fewshot"}
ANALYSES = ("transitions", "trajectories", "subspace")


class StudyConfigError(ValueError):
    """An invalid study config; the message names the field and what is allowed."""


@dataclass
class VariantSpec:
    name: str
    drop: dict[str, Any] | None = None
    sparsify: dict[str, Any] | None = None

    @property
    def is_dense(self) -> bool:
        return self.drop is None and self.sparsify is None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class TaskSpec:
    task: str
    limit: int | None = None
    max_new_tokens: int | None = None
    num_fewshot: int = 0


@dataclass
class StudyConfig:
    model: str = "smollm2-135m"
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    calibration: dict[str, Any] = field(default_factory=lambda: {"source": "c4", "nsamples": 32, "seqlen": 256})
    variants: list[VariantSpec] = field(default_factory=list)
    tasks: list[TaskSpec] = field(default_factory=list)
    batch_size: int = 8
    analyses: dict[str, Any] = field(default_factory=dict)
    case_study: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["variants"] = [v.to_dict() for v in self.variants]
        return d

    def fingerprint(self, *parts: str) -> str:
        """Hash of the config fields that a unit depends on (``parts`` are top-level keys or ``variant:NAME``)."""
        d = self.to_dict()
        picked = {}
        for p in parts:
            if p.startswith("variant:"):
                picked[p] = next(v for v in d["variants"] if v["name"] == p[8:])
            elif p.startswith("task:"):
                picked[p] = next(t for t in d["tasks"] if t["task"] == p[5:])
            else:
                picked[p] = d[p]
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def _err(field_name: str, message: str) -> StudyConfigError:
    return StudyConfigError(f"study config: field '{field_name}': {message}")


def _expect(cond: bool, field_name: str, message: str) -> None:
    if not cond:
        raise _err(field_name, message)


def _int(value: Any, field_name: str, minimum: int = 1, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    _expect(isinstance(value, int) and not isinstance(value, bool) and value >= minimum, field_name,
            f"must be an integer ≥ {minimum}, got {value!r}")
    return value


def _variant(raw: Any, i: int) -> VariantSpec:
    where = f"variants[{i}]"
    _expect(isinstance(raw, dict), where, f"must be a mapping with 'name' and one of 'drop' / 'sparsify', got {raw!r}")
    unknown = set(raw) - {"name", "drop", "sparsify"}
    _expect(not unknown, where, f"unknown keys {sorted(unknown)}; allowed: name, drop, sparsify")
    name = raw.get("name")
    _expect(isinstance(name, str) and name.strip() != "" and "/" not in name, f"{where}.name",
            f"must be a non-empty name without '/', got {name!r}")
    drop, sparsify = raw.get("drop"), raw.get("sparsify")
    _expect((drop is None) != (sparsify is None) or name == "Full", where, "give exactly one of 'drop' or 'sparsify'")
    if drop is not None:
        _expect(isinstance(drop, dict), f"{where}.drop", "must be a mapping {target, n[, iterative, window]}")
        unknown = set(drop) - {"target", "n", "iterative", "window"}
        _expect(not unknown, f"{where}.drop", f"unknown keys {sorted(unknown)}; allowed: target, n, iterative, window")
        _expect(drop.get("target") in DROP_TARGETS, f"{where}.drop.target",
                f"must be one of {', '.join(DROP_TARGETS)}, got {drop.get('target')!r}")
        _int(drop.get("n"), f"{where}.drop.n")
    if sparsify is not None:
        _expect(isinstance(sparsify, dict), f"{where}.sparsify",
                "must be a mapping {method, sparsity | pattern[, true_sequential]}")
        unknown = set(sparsify) - {"method", "sparsity", "pattern", "true_sequential"}
        _expect(not unknown, f"{where}.sparsify",
                f"unknown keys {sorted(unknown)}; allowed: method, sparsity, pattern, true_sequential")
        _expect(sparsify.get("true_sequential") in (None, True, False), f"{where}.sparsify.true_sequential",
                f"must be true or false, got {sparsify.get('true_sequential')!r}")
        _expect(sparsify.get("method") in SPARSE_METHODS, f"{where}.sparsify.method",
                f"must be one of {', '.join(SPARSE_METHODS)}, got {sparsify.get('method')!r}")
        from prunelens.prune.sparsify import TRUE_SEQUENTIAL_DEFAULT, validate_sparsity

        try:
            validate_sparsity(sparsify["method"], sparsify.get("sparsity"), sparsify.get("pattern"))
        except ValueError as exc:
            raise _err(f"{where}.sparsify", str(exc)) from exc
        if sparsify["method"] in TRUE_SEQUENTIAL_DEFAULT:  # spelled out, so a changed default changes the fingerprint
            sparsify = {**sparsify, "true_sequential": sparsify.get("true_sequential",
                                                                    TRUE_SEQUENTIAL_DEFAULT[sparsify["method"]])}
    return VariantSpec(name=name, drop=drop, sparsify=sparsify)


def _task(raw: Any, i: int) -> TaskSpec:
    from prunelens.data.tasks import TASKS

    where = f"tasks[{i}]"
    if isinstance(raw, str):
        raw = {"task": raw}
    _expect(isinstance(raw, dict), where, f"must be a task name or a mapping with 'task', got {raw!r}")
    unknown = set(raw) - TASK_FIELDS
    _expect(not unknown, where, f"unknown keys {sorted(unknown)}; allowed: {', '.join(sorted(TASK_FIELDS))}")
    name = raw.get("task")
    _expect(name in TASKS, f"{where}.task", f"must be one of {', '.join(sorted(TASKS))}, got {name!r}")
    return TaskSpec(task=name, limit=_int(raw.get("limit"), f"{where}.limit", allow_none=True),
                    max_new_tokens=_int(raw.get("max_new_tokens"), f"{where}.max_new_tokens", allow_none=True),
                    num_fewshot=_int(raw.get("num_fewshot", 0), f"{where}.num_fewshot", minimum=0))


def parse_config(data: Any) -> StudyConfig:
    """Validate a parsed YAML mapping into a :class:`StudyConfig`."""
    if data is None:
        data = {}
    _expect(isinstance(data, dict), "(top level)", "the config must be a YAML mapping")
    allowed = set(StudyConfig.__dataclass_fields__)
    unknown = set(data) - allowed
    _expect(not unknown, "(top level)", f"unknown keys {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}")
    default = yaml.safe_load(DEFAULT_CONFIG_YAML)
    merged = {**default, **data}
    cfg = StudyConfig()
    _expect(isinstance(merged["model"], str) and merged["model"], "model", "must be a model spec string")
    cfg.model = merged["model"]
    _expect(merged["dtype"] in ("float32", "bfloat16", "float16", "auto"), "dtype",
            f"must be one of float32, bfloat16, float16, auto; got {merged['dtype']!r}")
    cfg.dtype = merged["dtype"]
    _expect(isinstance(merged["device"], str) and re.fullmatch(r"cpu|cuda(:\d+)?|mps|auto", merged["device"]) is not None,
            "device", f"must be cpu, cuda, cuda:N, mps or auto; got {merged['device']!r}")
    cfg.device = merged["device"]
    cfg.seed = _int(merged["seed"], "seed", minimum=0)
    cal = {**default["calibration"], **(merged["calibration"] or {})}
    unknown = set(cal) - {"source", "nsamples", "seqlen"}
    _expect(not unknown, "calibration", f"unknown keys {sorted(unknown)}; allowed: source, nsamples, seqlen")
    _int(cal["nsamples"], "calibration.nsamples")
    _int(cal["seqlen"], "calibration.seqlen", minimum=8)
    cfg.calibration = cal
    _expect(isinstance(merged["variants"], list), "variants", "must be a list of variants")
    cfg.variants = [VariantSpec(name="Full")] + [_variant(v, i) for i, v in enumerate(merged["variants"])
                                                  if not (isinstance(v, dict) and v.get("name") == "Full")]
    names = [v.name for v in cfg.variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    _expect(not dupes, "variants", f"names must be unique; repeated: {dupes}")
    _expect(isinstance(merged["tasks"], list) and merged["tasks"], "tasks", "must be a non-empty list")
    cfg.tasks = [_task(t, i) for i, t in enumerate(merged["tasks"])]
    tnames = [t.task for t in cfg.tasks]
    _expect(len(set(tnames)) == len(tnames), "tasks", "each task may appear once")
    cfg.batch_size = _int(merged["batch_size"], "batch_size")
    analyses = merged["analyses"] or {}
    _expect(isinstance(analyses, dict), "analyses", "must be a mapping")
    unknown = set(analyses) - set(ANALYSES) - {"prompts", "scope", "positions"}
    _expect(not unknown, "analyses",
            f"unknown keys {sorted(unknown)}; allowed: prompts, scope, positions, {', '.join(ANALYSES)}")
    _expect(analyses.get("scope", "variant") in ("variant", "all"), "analyses.scope",
            f"must be variant or all, got {analyses.get('scope')!r}")
    _expect(analyses.get("positions", "generated") in ("generated", "prompt", "all"), "analyses.positions",
            f"must be generated, prompt or all, got {analyses.get('positions')!r}")
    temps = (analyses.get("transitions") or {}).get("temperatures", [1.0])
    _expect(isinstance(temps, list) and temps and all(isinstance(t, (int, float)) and t > 0 for t in temps),
            "analyses.transitions.temperatures", f"must be a non-empty list of positive numbers, got {temps!r}")
    cfg.analyses = analyses
    cfg.case_study = merged["case_study"] or {}
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
