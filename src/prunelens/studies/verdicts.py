"""The verdict rules: per variant and use, may it be used for non-generative tasks, for generation?

Pure functions over :class:`~prunelens.studies.facts.VariantFacts` returning structured outcomes
(:class:`UseOutcome`, made of :class:`PartOutcome`): the grade (safe / use with care / unsafe / not
measured), what the paired tests found (:class:`Finding`) and the numbers behind it. The sweep and the twin
rules read these fields; :mod:`prunelens.report.guidance` turns them into the report's sentences and writes
the rule out *from the constants below*, so the report always prints the rule that produced its verdicts.

Rule (``r`` = retained fraction of the dense model's score, ``pruned / dense``, pooled over the tasks of
a use). Each variant is evaluated on the *same* examples as the dense model, so every judgement rests on
paired tests (exact McNemar for accuracies, a sign-flip test otherwise; ``prunelens.evaluation.uncertainty``):

* **non-generative use** (multiple choice + retrieval; perplexity is shown but not judged): the task tests
  are Holm-adjusted; a significant loss on any task (adjusted ``p < ALPHA``) is *lower than dense*
  (``unsafe`` when even the upper end of ``r``'s interval is below ``CARE_RETAINED``, else ``use with
  care``); no significant loss and the lower end of ``r``'s interval at least ``CARE_RETAINED`` is
  *indistinguishable from dense at this n* (``safe``); otherwise the interval still allows a large loss:
  *not enough data to tell*;
* **generative use**: the same rule on the generative task scores where the dense model scores at least
  ``MIN_DENSE_SCORE``, and — the sensitive signal — the fidelity of the variant's greedy outputs to the
  dense ones (per-prompt ROUGE-L) against the **control**'s (the dense weights rounded to a lower
  precision: a perturbation nobody calls pruning, whose drift is the noise floor); the worse of the two
  decides. Without a control, fidelity falls back to fixed thresholds on identical outputs
  (``FIDELITY_*_EXACT_MATCH``);
* without paired records (an old study directory) the retained fraction's point value is judged
  against the same thresholds, and the outcome says so; without any usable score: ``not measured``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from prunelens.studies.facts import TaskTest, VariantFacts, finite

__all__ = [
    "SAFE_RETAINED",
    "CARE_RETAINED",
    "FIDELITY_CARE_EXACT_MATCH",
    "FIDELITY_UNSAFE_EXACT_MATCH",
    "MIN_DENSE_SCORE",
    "GAP_MARGIN",
    "ALPHA",
    "MIN_PAIRED_N",
    "SAFE",
    "CARE",
    "UNSAFE",
    "NOT_MEASURED",
    "GRADE_ORDER",
    "DENSE_REFERENCE",
    "Finding",
    "PartOutcome",
    "UseOutcome",
    "VariantOutcome",
    "score_verdict",
    "judge_part",
    "non_generative_outcome",
    "generative_outcome",
    "judge",
    "GenerativeAxis",
    "generative_axis",
]

#: retained fraction of the dense score at or above which a variant is "safe"
SAFE_RETAINED = 0.95
#: retained fraction at or above which a variant is "use with care" (below: "unsafe")
CARE_RETAINED = 0.85
#: identical-to-dense generations below this fraction cap the generative verdict at "use with care"
FIDELITY_CARE_EXACT_MATCH = 0.5
#: identical-to-dense generations below this fraction make the generative verdict "unsafe"
FIDELITY_UNSAFE_EXACT_MATCH = 0.1
#: a dense score below this is too small for a retained fraction to mean anything
MIN_DENSE_SCORE = 0.02
#: "generation loses more than non-generative use" needs a gap of at least this many retained points
GAP_MARGIN = 0.05
#: significance level of the paired tests (Holm-adjusted over the tasks of a use)
ALPHA = 0.05
#: fewer shared examples than this on a judged task: no interval is trusted, "not enough data to tell"
MIN_PAIRED_N = 10

# the grades: the badge colour of a use (values are what guidance.json records)
SAFE, CARE, UNSAFE, NOT_MEASURED = "safe", "use with care", "unsafe", "not measured"
#: measured grades from best to worst (the worse of two parts decides)
GRADE_ORDER = {SAFE: 0, CARE: 1, UNSAFE: 2}
#: the reference of a part judged against the dense model (else the reference is the control's name)
DENSE_REFERENCE = "dense"


class Finding(enum.Enum):
    """What the paired tests of one part found."""

    INDISTINGUISHABLE = "indistinguishable"  # no significant loss, and the interval excludes a large one
    LOWER = "lower"  # a significant loss on some task (Holm-adjusted p < ALPHA)
    UNCLEAR = "not enough data"  # too few shared examples, or an interval that still allows a large loss
    POINT_ONLY = "point value"  # no paired records: the retained fraction's point value is judged
    FIXED_THRESHOLDS = "fixed thresholds"  # generation without a control: identical outputs, fixed cut-offs
    FLOOR = "floor"  # the control itself: its drift is the floor the variants are judged against
    NOT_MEASURED = "not measured"  # no usable score (or a reference score too small to divide by)


@dataclass(frozen=True)
class PartOutcome:
    """One judgement inside a use: a score kept against the dense model, or the fidelity of the greedy
    outputs kept against the control's.

    ``measure``: what is kept ("non-generative", "generative", "fidelity", "identical outputs");
    ``reference``: :data:`DENSE_REFERENCE` or the control's name. ``tests``: the task tests with their
    Holm-adjusted p (``p_holm``); ``few``: judged tasks with fewer than :data:`MIN_PAIRED_N` shared examples;
    ``lower``: the significant losses with their adjusted p. ``reference_score``: set when the reference
    scores below :data:`MIN_DENSE_SCORE` (then nothing is judged). ``exact_match``: the identical-output
    fraction the fixed thresholds judged; ``rouge_l`` / ``reference_rouge_l``: the variant's and the
    reference's ROUGE-L against the dense outputs, where the part is about fidelity."""

    measure: str
    reference: str
    grade: str
    finding: Finding
    retained: float | None = None
    interval: tuple[float, float] | None = None
    tests: list[dict[str, Any]] = field(default_factory=list)
    few: list[TaskTest] = field(default_factory=list)
    lower: list[tuple[TaskTest, float]] = field(default_factory=list)
    reference_score: float | None = None
    exact_match: float | None = None
    rouge_l: float | None = None
    reference_rouge_l: float | None = None

    @property
    def worst(self) -> tuple[TaskTest, float] | None:
        """The significant loss with the smallest adjusted p (``None`` when nothing is lower)."""
        return min(self.lower, key=lambda tp: tp[1]) if self.lower else None


@dataclass(frozen=True)
class UseOutcome:
    """A use's outcome: ``grade`` decides the badge, ``parts`` say what was judged and found; ``retained``
    and ``interval`` are the pooled retained fraction, ``n`` the examples per judged task, ``tests`` the
    evidence. ``worse_decides``: several parts were measured with different grades, the worse one decided."""

    use: str  # "non-generative" | "generative"
    grade: str
    parts: tuple[PartOutcome, ...] = ()
    retained: float | None = None
    interval: tuple[float, float] | None = None
    n: dict[str, int] = field(default_factory=dict)
    tests: list[dict[str, Any]] = field(default_factory=list)
    worse_decides: bool = False

    @property
    def indistinguishable(self) -> bool | None:
        """Three-valued: ``True`` when every judged part found the variant indistinguishable (from dense, or
        from the control); ``False`` when a part found it lower; ``None`` otherwise (not enough data, point
        values only, fixed thresholds, not measured)."""
        judged = [p for p in self.parts if p.finding is not Finding.NOT_MEASURED]
        if self.grade == NOT_MEASURED or not judged:
            return None
        if any(p.finding is Finding.LOWER for p in judged):
            return False
        return True if all(p.finding is Finding.INDISTINGUISHABLE for p in judged) else None


@dataclass(frozen=True)
class VariantOutcome:
    name: str
    non_generative: UseOutcome
    generative: UseOutcome

    def use(self, key: str) -> UseOutcome:
        """``key``: "non_generative" or "generative" (the guidance.json keys)."""
        return self.non_generative if key == "non_generative" else self.generative


def score_verdict(retained: float | None) -> str:
    """``safe`` / ``use with care`` / ``unsafe`` from a retained fraction (``not measured`` for ``None``)."""
    if not finite(retained):
        return NOT_MEASURED
    assert retained is not None
    if retained >= SAFE_RETAINED:
        return SAFE
    if retained >= CARE_RETAINED:
        return CARE
    return UNSAFE


def judge_part(
    retained: float | None,
    interval: tuple[float, float] | None,
    tests: list[TaskTest],
    reference_score: float | None,
    measure: str,
    reference: str = DENSE_REFERENCE,
) -> PartOutcome:
    """One part from Holm-adjusted paired tests and a pooled interval (see the module docstring)."""
    from prunelens.evaluation.uncertainty import holm

    if finite(reference_score) and reference_score < MIN_DENSE_SCORE:  # type: ignore[operator]
        return PartOutcome(
            measure, reference, NOT_MEASURED, Finding.NOT_MEASURED, reference_score=reference_score
        )
    if not tests or interval is None or not finite(retained):
        grade = score_verdict(retained)
        finding = Finding.NOT_MEASURED if grade == NOT_MEASURED else Finding.POINT_ONLY
        return PartOutcome(measure, reference, grade, finding, retained)
    assert retained is not None
    adjusted = holm([t.p_value for t in tests])
    dicts = [{**t.to_dict(), "p_holm": p} for t, p in zip(tests, adjusted)]
    part = PartOutcome(measure, reference, CARE, Finding.UNCLEAR, retained, interval, dicts)
    few = [t for t in tests if t.n < MIN_PAIRED_N]
    if few:
        return replace(part, few=few)
    lower = [(t, p) for t, p in zip(tests, adjusted) if p < ALPHA and t.difference < 0]
    if lower:
        grade = UNSAFE if interval[1] < CARE_RETAINED else CARE
        return replace(part, grade=grade, finding=Finding.LOWER, lower=lower)
    if interval[0] >= CARE_RETAINED:
        return replace(part, grade=SAFE, finding=Finding.INDISTINGUISHABLE)
    return part  # no task differs, but the interval still allows keeping less than CARE_RETAINED


def _n(tests: list[TaskTest]) -> dict[str, int]:
    return {t.task: t.n for t in tests}


def non_generative_outcome(f: VariantFacts) -> UseOutcome:
    part = judge_part(
        f.retained_nongen, f.retained_nongen_interval, f.nongen_tests, f.dense_nongen, "non-generative"
    )
    return UseOutcome(
        "non-generative",
        part.grade,
        (part,),
        f.retained_nongen,
        f.retained_nongen_interval,
        _n(f.nongen_tests),
        part.tests,
    )


def _fixed_fidelity(em: float) -> str:
    if em < FIDELITY_UNSAFE_EXACT_MATCH:
        return UNSAFE
    if em < FIDELITY_CARE_EXACT_MATCH:
        return CARE
    return SAFE


def generative_outcome(f: VariantFacts) -> UseOutcome:
    """The worse of the generative score part and the fidelity part (see the module docstring)."""
    if f.is_control:
        floor = PartOutcome("fidelity", DENSE_REFERENCE, NOT_MEASURED, Finding.FLOOR, rouge_l=f.rouge_l)
        return UseOutcome("generative", NOT_MEASURED, (floor,))
    has_score = finite(f.retained_gen) and not (finite(f.dense_gen) and f.dense_gen < MIN_DENSE_SCORE)  # type: ignore[operator]
    parts: list[PartOutcome] = []
    if has_score or not (f.fidelity_tests or finite(f.exact_match)):
        parts.append(
            judge_part(f.retained_gen, f.retained_gen_interval, f.gen_tests, f.dense_gen, "generative")
        )
    if f.fidelity_tests and f.control:
        fid = judge_part(
            f.fidelity_ratio, f.fidelity_ratio_interval, f.fidelity_tests, None, "fidelity", f.control
        )
        parts.append(replace(fid, rouge_l=f.rouge_l, reference_rouge_l=f.control_rouge_l))
    elif finite(f.exact_match):
        em = float(f.exact_match)  # type: ignore[arg-type]
        grade = _fixed_fidelity(em)
        parts.append(
            PartOutcome("identical outputs", DENSE_REFERENCE, grade, Finding.FIXED_THRESHOLDS, exact_match=em)
        )
    measured = [p for p in parts if p.grade != NOT_MEASURED]
    if not measured:
        return UseOutcome("generative", NOT_MEASURED, tuple(parts))
    worst = max(measured, key=lambda p: GRADE_ORDER[p.grade])
    return UseOutcome(
        "generative",
        worst.grade,
        tuple(parts),
        f.retained_gen if has_score else f.fidelity_ratio,
        f.retained_gen_interval if has_score else f.fidelity_ratio_interval,
        _n(f.gen_tests if has_score else f.fidelity_tests),
        [t for p in parts for t in p.tests],
        worse_decides=len(measured) > 1
        and any(GRADE_ORDER[p.grade] < GRADE_ORDER[worst.grade] for p in measured),
    )


def judge(facts: Iterable[VariantFacts]) -> list[VariantOutcome]:
    """Outcomes for every variant but the dense reference."""
    return [
        VariantOutcome(f.name, non_generative_outcome(f), generative_outcome(f))
        for f in facts
        if not f.is_dense
    ]


@dataclass(frozen=True)
class GenerativeAxis:
    """How a study measures "what generation keeps", one choice for all variants.

    ``score``: the retained generative task score (pruned / dense), when the dense model scores at least
    ``MIN_DENSE_SCORE``. ``fidelity``: the mean ROUGE-L F1 of the pruned greedy outputs against the dense
    ones (the dense model has fidelity 1 by definition), used when the dense score is too small for a
    retained fraction to mean anything — small models often answer no GSM8K question right, yet the
    way their generations drift from the dense ones is still measured. ``none``: neither is measured.
    ``dense_gen``: the dense model's generative score (``None`` when not measured), the number behind the
    choice of fidelity.
    """

    kind: str  # "score" | "fidelity" | "none"
    dense_gen: float | None = None

    def interval(self, f: VariantFacts) -> tuple[float, float] | None:
        """The 95 % interval of :meth:`value` (``None`` for the dense model or where it is not measured)."""
        if f.is_dense:
            return None
        if self.kind == "score":
            return f.retained_gen_interval
        return f.rouge_l_interval if self.kind == "fidelity" else None

    def value(self, f: VariantFacts) -> float | None:
        if f.is_dense:
            return 1.0 if self.kind != "none" else None
        v = f.retained_gen if self.kind == "score" else f.rouge_l if self.kind == "fidelity" else None
        return v if finite(v) else None


def generative_axis(facts: Iterable[VariantFacts]) -> GenerativeAxis:
    """Pick the study-wide generative measure: the retained score where the dense model scores enough,
    otherwise fidelity to the dense generations (ROUGE-L), otherwise ``none``."""
    facts = list(facts)
    pruned = [f for f in facts if not f.is_dense and not f.is_control]
    dense_gen = next((f.dense_gen for f in facts if finite(f.dense_gen)), None)
    too_small = finite(dense_gen) and dense_gen < MIN_DENSE_SCORE  # type: ignore[operator]
    if any(finite(f.retained_gen) for f in pruned) and not too_small:
        return GenerativeAxis("score", dense_gen)
    if any(finite(f.rouge_l) for f in pruned):
        return GenerativeAxis("fidelity", dense_gen)
    return GenerativeAxis("none", dense_gen)
