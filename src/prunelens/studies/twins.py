"""The twin rules: a variant against its twin (the same pruning but for one changed rule), per use.

Pure functions over :class:`~prunelens.studies.facts.TwinFacts` returning structured outcomes
(:class:`TwinUseOutcome`): did the changed rule move the score, and which way (:class:`TwinFinding`), or are
the twins indistinguishable at this n, and did it move the verdict (the grades come from
:mod:`prunelens.studies.verdicts`, read as fields). :mod:`prunelens.report.twins` writes the sentences.

Non-generative use: per-task paired tests (exact McNemar / sign-flip), Holm-adjusted over the judged
tasks. Generation: the study's generative measure (:func:`~prunelens.studies.verdicts.generative_axis`) —
the ROUGE-L against the dense outputs pooled over the generative tasks (a sign-flip test on the shared
prompts), or the generative task scores where the dense model scores.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prunelens.studies.facts import TaskTest, TwinFacts, VariantFacts, finite
from prunelens.studies.verdicts import (
    ALPHA,
    MIN_PAIRED_N,
    NOT_MEASURED,
    GenerativeAxis,
    VariantOutcome,
    generative_axis,
    judge,
)

__all__ = [
    "SCORES",
    "FIDELITY",
    "TwinFinding",
    "TwinUseOutcome",
    "TwinOutcome",
    "judge_twins",
]

#: what a use compared: the task scores, or the ROUGE-L of the greedy outputs against the dense ones
SCORES, FIDELITY = "scores", "ROUGE-L to dense"


class TwinFinding(enum.Enum):
    """What the paired comparison of two twins found on a use."""

    BETTER = "better"  # significantly better on some task, worse on none
    WORSE = "worse"  # significantly worse on some task, better on none
    MIXED = "mixed"  # better on some tasks, worse on others
    SAME = "same"  # no significant difference: indistinguishable at this n
    UNCLEAR = "not enough data"  # fewer than MIN_PAIRED_N shared examples on some task
    NOT_MEASURED = "not measured"  # no shared paired records

    @property
    def told_apart(self) -> bool:
        return self in (TwinFinding.BETTER, TwinFinding.WORSE, TwinFinding.MIXED)


@dataclass(frozen=True)
class TwinUseOutcome:
    """One use of one twin pair. ``grades``: name → grade, the variant first; ``measure``: :data:`SCORES` or
    :data:`FIDELITY`; ``kept``: the two retained fractions (variant, twin) the verdicts hold for these scores,
    ``None`` where they are not of these scores or not measured. ``task_tests`` with ``adjusted`` (their
    Holm-adjusted p, in order); ``few``: tasks with fewer than :data:`MIN_PAIRED_N` shared examples;
    ``significant``: the tests that tell the twins apart, with their adjusted p. ``pooled``: the pooled
    fidelity comparison, when generation is judged on it. ``tests``: the evidence as recorded."""

    use: str  # "non-generative" | "generative"
    finding: TwinFinding
    grades: dict[str, str]
    measure: str = SCORES
    kept: tuple[float, float] | None = None
    task_tests: list[TaskTest] = field(default_factory=list)
    adjusted: list[float] = field(default_factory=list)
    few: list[TaskTest] = field(default_factory=list)
    significant: list[tuple[TaskTest, float]] = field(default_factory=list)
    pooled: TaskTest | None = None
    n: dict[str, int] = field(default_factory=dict)
    tests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def moved(self) -> bool:
        """The two grades differ."""
        return len(set(self.grades.values())) > 1

    @property
    def same(self) -> bool:
        """The twins themselves are not told apart (indistinguishable, or too few examples to tell)."""
        return self.finding in (TwinFinding.SAME, TwinFinding.UNCLEAR, TwinFinding.NOT_MEASURED)


@dataclass(frozen=True)
class TwinOutcome:
    facts: TwinFacts
    non_generative: TwinUseOutcome
    generative: TwinUseOutcome


def _grades(t: TwinFacts, outcomes: dict[str, VariantOutcome], key: str) -> dict[str, str]:
    def grade(name: str) -> str:
        o = outcomes.get(name)
        return NOT_MEASURED if o is None else o.use(key).grade

    return {t.name: grade(t.name), t.twin: grade(t.twin)}


def _kept(t: TwinFacts, outcomes: dict[str, VariantOutcome], key: str) -> tuple[float, float] | None:
    vals = []
    for name in (t.name, t.twin):
        o = outcomes.get(name)
        r = o.use(key).retained if o is not None else None
        if not finite(r):
            return None
        vals.append(float(r))  # type: ignore[arg-type]
    return vals[0], vals[1]


def _direction(significant: list[tuple[TaskTest, float]]) -> TwinFinding:
    up = any(x.difference > 0 for x, _ in significant)
    down = any(x.difference < 0 for x, _ in significant)
    if up and not down:
        return TwinFinding.BETTER
    if down and not up:
        return TwinFinding.WORSE
    return TwinFinding.MIXED


def _scores_use(
    t: TwinFacts, outcomes: dict[str, VariantOutcome], use: str, tests: list[TaskTest], show_kept: bool
) -> TwinUseOutcome:
    """A use judged on task scores (non-generative, or generative where the dense model scores);
    ``show_kept``: the verdicts' retained fractions are of these scores."""
    from prunelens.evaluation.uncertainty import holm

    key = "non_generative" if use == "non-generative" else "generative"
    grades = _grades(t, outcomes, key)
    kept = _kept(t, outcomes, key) if show_kept else None
    if not tests:
        return TwinUseOutcome(use, TwinFinding.NOT_MEASURED, grades, SCORES, kept)
    adjusted = holm([x.p_value for x in tests])
    few = [x for x in tests if x.n < MIN_PAIRED_N]
    significant = [] if few else [(x, p) for x, p in zip(tests, adjusted) if p < ALPHA and x.difference != 0]
    if few:
        finding = TwinFinding.UNCLEAR
    elif not significant:
        finding = TwinFinding.SAME
    else:
        finding = _direction(significant)
    return TwinUseOutcome(
        use,
        finding,
        grades,
        SCORES,
        kept,
        list(tests),
        list(adjusted),
        few,
        significant,
        n={x.task: x.n for x in tests},
        tests=[{**x.to_dict(), "p_holm": p} for x, p in zip(tests, adjusted)],
    )


def _fidelity_use(t: TwinFacts, outcomes: dict[str, VariantOutcome]) -> TwinUseOutcome:
    """Generation judged on the ROUGE-L of the greedy outputs against the dense ones, pooled over tasks."""
    f = t.fidelity
    assert f is not None
    if f.n < MIN_PAIRED_N:
        finding = TwinFinding.UNCLEAR
    elif f.p_value < ALPHA and f.difference > 0:
        finding = TwinFinding.BETTER
    elif f.p_value < ALPHA and f.difference < 0:
        finding = TwinFinding.WORSE
    else:
        finding = TwinFinding.SAME
    return TwinUseOutcome(
        "generative",
        finding,
        _grades(t, outcomes, "generative"),
        FIDELITY,
        pooled=f,
        n={x.task: x.n for x in t.fidelity_tests} or {"pooled": f.n},
        tests=[{**f.to_dict(), "task": "pooled", "p_holm": None}]
        + [{**x.to_dict(), "p_holm": None} for x in t.fidelity_tests],
    )


def judge_twins(
    twins: Iterable[TwinFacts], facts: Iterable[VariantFacts], axis: GenerativeAxis | None = None
) -> list[TwinOutcome]:
    """For every twin pair, both uses judged (see the module docstring)."""
    facts = list(facts)
    axis = axis or generative_axis(facts)
    outcomes = {o.name: o for o in judge(facts)}
    out = []
    for t in twins:
        non_gen = _scores_use(t, outcomes, "non-generative", t.nongen_tests, True)
        if axis.kind == "fidelity" and t.fidelity is not None:
            gen = _fidelity_use(t, outcomes)
        elif axis.kind == "fidelity":  # the dense model scores too little: its scores cannot tell the twins
            gen = _scores_use(t, outcomes, "generative", [], False)
        else:
            gen = _scores_use(t, outcomes, "generative", t.gen_tests, axis.kind == "score")
        out.append(TwinOutcome(t, non_gen, gen))
    return out
