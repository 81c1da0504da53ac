"""What a study config holds and its defaults: the sections as dataclasses (every default written once,
here), the default variants and tasks, and the default config printed by ``prunelens study
--print-config``, generated from them. Reading and checking a config: :mod:`prunelens.studies.config`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from prunelens import DEFAULT_MODEL
from prunelens.analysis import ANALYSES
from prunelens.prune.specs import CHOICE_TASK

#: the name of the unpruned model in every study table, figure and directory
DENSE = "Full"

TASK_FIELDS = {"task", "limit", "max_new_tokens", "num_fewshot"}


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
    task: str = CHOICE_TASK
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


def flow_yaml(value: Any) -> str:
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
        lines.append(f"  - {flow_yaml(v)}")
    row("tasks:", "kind is taken from the task registry (mc, retrieval, ppl = non-generative; gen)")
    for t, comment in DEFAULT_TASKS:
        lines.append(f"  - {flow_yaml(t):<36} # {comment}" if comment else f"  - {flow_yaml(t)}")
    row(f"batch_size: {top.batch_size}", "calibration windows per pass (drop scoring, Wanda, SparseGPT)")
    row(f"eval_batch_size: {top.eval_batch_size}", "evaluation: MC rows, windows, texts, prompts per pass")
    row("analyses:", "an analysis runs when listed; a block without any runs transitions only")
    lines.append(f"  prompts: {flow_yaml(an.prompts):<30} # analysed prompt set: this many of each (seeded)")
    lines.append(f"  scope: {an.scope:<32} # variant: the sublayers each variant prunes | all: every layer")
    lines.append(
        f"  positions: {an.positions:<28} # tokens analysed in transitions: generated | prompt | all"
    )
    lines.append(f"  transitions: {flow_yaml({'temperatures': list(an.transitions.temperatures)})}")
    lines.append(f"  trajectories: {flow_yaml(asdict(an.trajectories))}")
    lines.append(f"  subspace: {flow_yaml(asdict(an.subspace))}")
    lines.append(f"case_study: {flow_yaml(asdict(cs))}")
    return "\n".join(lines) + "\n"


DEFAULT_CONFIG_YAML = _default_config_yaml()
