"""The measured numbers a study's verdicts are judged on: per variant (:class:`VariantFacts`), per twin pair
(:class:`TwinFacts`), and one paired test on the same examples (:class:`TaskTest`).

The report gathers them from a study directory (:mod:`prunelens.report.tables`); the rules that judge them
live in :mod:`prunelens.studies.verdicts` and :mod:`prunelens.studies.twins`, the sentences that say what
the rules found in :mod:`prunelens.report.guidance`. Plain data: nothing here decides or writes prose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["finite", "TaskTest", "VariantFacts", "TwinFacts"]


def finite(v: Any) -> bool:
    """A real, finite number (``bool`` is not one): what every rule asks of a measured value."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class TaskTest:
    """One paired comparison of a variant with its reference (the dense model, or the control) on the same
    examples of one task: means, the difference (variant − reference) and its interval, the p-value."""

    task: str
    n: int
    reference: float
    value: float
    difference: float
    interval: tuple[float, float]
    p_value: float
    test: str

    @classmethod
    def from_dict(cls, task: str, d: Any) -> TaskTest | None:
        """From a ``PairedComparison.to_dict()`` (``None`` when ``d`` is not one)."""
        try:
            return cls(
                task,
                int(d["n"]),
                float(d["dense"]),
                float(d["pruned"]),
                float(d["difference"]),
                (float(d["interval"][0]), float(d["interval"][1])),
                float(d["p_value"]),
                str(d["test"]),
            )
        except (KeyError, TypeError, ValueError, IndexError):
            return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "n": self.n,
            "reference": self.reference,
            "value": self.value,
            "difference": self.difference,
            "interval": list(self.interval),
            "p_value": self.p_value,
            "test": self.test,
        }


@dataclass
class VariantFacts:
    """The measured numbers for one variant (``None`` where not measured)."""

    name: str
    group: str = "other"  # dense | control | attn | mlp | block | joint | sparse | other
    n: float | None = None  # number of dropped sublayers/blocks, or sparsity
    parameters: int | None = None
    retained_nongen: float | None = None
    retained_gen: float | None = None
    retained_by_kind: dict[str, float | None] = field(default_factory=dict)  # mc, retrieval, gen, ppl
    dense_nongen: float | None = None  # the dense model's absolute averages (same for every variant)
    dense_gen: float | None = None
    exact_match: float | None = None  # mean over generative tasks of identical-to-dense outputs
    rouge_l: float | None = None
    rouge_l_interval: tuple[float, float] | None = None  # prompts resampled within each generative task
    repeat_ngram_rate: float | None = None
    kl_transitions: float | None = None
    kl_teacher_forced: float | None = None
    kl_free_running: float | None = None
    cos_p_transitions: float | None = None
    choice_flip_rate: float | None = None
    predictor: float | None = None
    # paired evidence (empty / None where the records are not there)
    nongen_tests: list[TaskTest] = field(default_factory=list)  # against dense, per judged task
    retained_nongen_interval: tuple[float, float] | None = None
    gen_tests: list[TaskTest] = field(default_factory=list)  # generative task scores against dense
    retained_gen_interval: tuple[float, float] | None = None
    fidelity_tests: list[TaskTest] = field(default_factory=list)  # per-prompt ROUGE-L against the control's
    fidelity_ratio: float | None = None  # the variant's ROUGE-L / the control's, pooled over tasks
    fidelity_ratio_interval: tuple[float, float] | None = None
    control_rouge_l: float | None = None  # the noise floor: the control's ROUGE-L against dense
    control: str | None = None  # the control variant's name, when the study has one

    @property
    def is_dense(self) -> bool:
        return self.group == "dense"

    @property
    def is_control(self) -> bool:
        return self.group == "control"

    @property
    def kl(self) -> float | None:
        """The probability-space divergence the report quotes:
        transitions, else teacher-forced, else free-running."""
        for v in (self.kl_transitions, self.kl_teacher_forced, self.kl_free_running):
            if finite(v):
                return v
        return None


@dataclass
class TwinFacts:
    """A variant (``name``) against its twin (``twin``: the same pruning but for the rules in ``changed``), on
    the examples both evaluated. Every :class:`TaskTest` here has the twin as ``reference`` and the variant as
    ``value``: differences are variant − twin.

    ``nongen_tests``: per judged multiple-choice / retrieval task (near-chance tasks left out, as in the
    verdicts); ``gen_tests``: per generative task score; ``fidelity_tests``: per generative task, the
    per-prompt ROUGE-L against the dense outputs; ``fidelity``: that ROUGE-L pooled over the generative tasks
    (the mean of the task means, tasks weighing equally); ``shown_tests``: tasks shown but never judged
    (perplexity: NLL per token). ``numbers``: per name, the headline numbers shown side by side."""

    name: str
    twin: str
    changed: list[str] = field(default_factory=list)
    nongen_tests: list[TaskTest] = field(default_factory=list)
    gen_tests: list[TaskTest] = field(default_factory=list)
    fidelity_tests: list[TaskTest] = field(default_factory=list)
    fidelity: TaskTest | None = None
    shown_tests: list[TaskTest] = field(default_factory=list)
    numbers: dict[str, dict[str, float | None]] = field(default_factory=dict)
