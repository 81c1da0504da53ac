"""The twin comparisons in words: for every twin pair and use, one plain sentence from the paired
differences between the twins (did the changed rule move the score, and which way, or are the twins
indistinguishable at this n, and did it move the verdict), as ``guidance.json`` and the page carry them.

The decisions are :mod:`prunelens.studies.twins`'s (structured outcomes); this module reads their fields.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prunelens.report.guidance import UNCLEAR, pct
from prunelens.studies.facts import TaskTest, TwinFacts, VariantFacts
from prunelens.studies.twins import TwinFinding, TwinUseOutcome, judge_twins
from prunelens.studies.verdicts import MIN_PAIRED_N, NOT_MEASURED, GenerativeAxis

__all__ = [
    "TWIN_BETTER",
    "TWIN_WORSE",
    "TWIN_MIXED",
    "TWIN_SAME",
    "TwinUse",
    "TwinGuidance",
    "changed_rule_words",
    "twin_difference",
    "twin_guidance",
]

#: what the paired comparison of two twins found on a use, in words (``TwinUse.finding``)
TWIN_BETTER = "the changed rule does better"
TWIN_WORSE = "the changed rule does worse"
TWIN_MIXED = "the changed rule does better on some tasks and worse on others"
TWIN_SAME = "indistinguishable at this n"
_FINDING = {
    TwinFinding.BETTER: TWIN_BETTER,
    TwinFinding.WORSE: TWIN_WORSE,
    TwinFinding.MIXED: TWIN_MIXED,
    TwinFinding.SAME: TWIN_SAME,
    TwinFinding.UNCLEAR: UNCLEAR,
    TwinFinding.NOT_MEASURED: NOT_MEASURED,
}


@dataclass
class TwinUse:
    """One use of one twin pair: what the paired differences found, the sentence that says so, both grades."""

    use: str  # "non-generative" | "generative"
    finding: str
    sentence: str
    verdicts: dict[str, str] = field(default_factory=dict)  # name -> grade, variant first
    moved: bool = False  # the two grades differ
    measure: str = ""  # what was compared: "scores", "ROUGE-L to dense"
    n: dict[str, int] = field(default_factory=dict)
    tests: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "finding": self.finding,
            "sentence": self.sentence,
            "verdicts": self.verdicts,
            "verdict_moved": self.moved,
            "measure": self.measure,
            "n": self.n,
            "tests": self.tests,
        }


@dataclass
class TwinGuidance:
    name: str
    twin: str
    changed: list[str]
    non_generative: TwinUse
    generative: TwinUse
    numbers: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.name,
            "twin": self.twin,
            "changed": self.changed,
            "non_generative": self.non_generative.to_dict(),
            "generative": self.generative.to_dict(),
            "numbers": self.numbers,
        }


def changed_rule_words(t: TwinFacts) -> str:
    """The changed rule in words: ``drop.objective: hidden → generation; …``."""
    return "; ".join(t.changed) if t.changed else "no config field differs"


def twin_difference(t: TaskTest) -> str:
    """``+3.5 points [+0.5, +6.5]`` for an accuracy (0/1 scores), ``+0.110 [+0.050, +0.170]`` otherwise."""
    if "McNemar" in t.test:
        lo, hi = t.interval
        return f"{100 * t.difference:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return f"{t.difference:+.3f} [{t.interval[0]:+.3f}, {t.interval[1]:+.3f}]"


def _verdict_clause(t: TwinFacts, o: TwinUseOutcome) -> str:
    gx, gy = o.grades[t.name], o.grades[t.twin]
    if gx == gy:
        return f" Verdict: '{gx}' for both."
    tail = ", although the twins themselves are not told apart at this n" if o.same else ""
    return f" The verdict moves from '{gy}' ({t.twin}) to '{gx}' ({t.name}){tail}."


def _rule_clause(t: TwinFacts, o: TwinUseOutcome, use_words: str) -> str:
    """What a told-apart finding means for the changed rule."""
    rule = f"{t.name}'s changed rule ({changed_rule_words(t)})"
    if o.finding is TwinFinding.BETTER:
        return f"{rule} suits {use_words} better on this model"
    if o.finding is TwinFinding.WORSE:
        return f"{rule} suits {use_words} worse on this model ({t.twin}'s rule is the better choice here)"
    up = [x.task for x, _ in o.significant if x.difference > 0]
    down = [x.task for x, _ in o.significant if x.difference < 0]
    return f"{rule} helps on {', '.join(up)} and hurts on {', '.join(down)}"


def _evidence_clause(t: TwinFacts, o: TwinUseOutcome, use_words: str) -> str:
    """The per-task evidence of a use judged on scores."""
    if o.finding is TwinFinding.UNCLEAR:
        return (
            "only "
            + ", ".join(f"{x.n} on {x.task}" for x in o.few)
            + f" shared examples (fewer than {MIN_PAIRED_N}): {UNCLEAR}"
        )
    if o.finding is TwinFinding.SAME:
        ns = ", ".join(f"{x.n} on {x.task}" for x in o.task_tests)
        return (
            f"no task differs between the twins (smallest Holm-adjusted p = {min(o.adjusted):.2g}; "
            f"n = {ns}): {TWIN_SAME}"
        )
    parts = "; ".join(
        f"{x.task} {twin_difference(x)} ({x.test}, Holm-adjusted p = {p:.2g}, n = {x.n})"
        for x, p in o.significant
    )
    return f"paired difference {t.name} − {t.twin}: {parts}: {_rule_clause(t, o, use_words)}"


def _scores_sentence(t: TwinFacts, o: TwinUseOutcome) -> str:
    words = "non-generative use" if o.use == "non-generative" else "generation"
    which = "non-generative" if o.use == "non-generative" else "generative"
    if o.finding is TwinFinding.NOT_MEASURED:
        return f"On {words}, {t.name} and {t.twin} share no paired {which} records: {NOT_MEASURED}." + (
            _verdict_clause(t, o)
        )
    lead = f"On {words}, {t.name}"
    if o.kept is not None:
        lead += f" keeps {pct(o.kept[0])} of the dense {which} score against {t.twin}'s {pct(o.kept[1])}"
    else:
        lead += f" against {t.twin}"
    return f"{lead}; {_evidence_clause(t, o, words)}." + _verdict_clause(t, o)


def _fidelity_sentence(t: TwinFacts, o: TwinUseOutcome) -> str:
    f = o.pooled
    assert f is not None
    lead = f"On generation, {t.name} keeps ROUGE-L {f.value:.2f} against {t.twin}'s {f.reference:.2f}"
    evidence = (
        f"(paired difference {f.difference:+.2f} [{f.interval[0]:+.2f}, {f.interval[1]:+.2f}], "
        f"{f.test} p = {f.p_value:.2g} on {f.n} prompts)"
    )
    if o.finding is TwinFinding.UNCLEAR:
        tail = f"only {f.n} shared prompts (fewer than {MIN_PAIRED_N}): {UNCLEAR}"
    elif o.finding.told_apart:
        tail = _rule_clause(t, o, "generation")
    else:
        tail = TWIN_SAME
    return f"{lead} {evidence}: {tail}." + _verdict_clause(t, o)


def _words(t: TwinFacts, o: TwinUseOutcome) -> TwinUse:
    sentence = _fidelity_sentence(t, o) if o.pooled is not None else _scores_sentence(t, o)
    return TwinUse(o.use, _FINDING[o.finding], sentence, dict(o.grades), o.moved, o.measure, o.n, o.tests)


def twin_guidance(
    twins: Iterable[TwinFacts], facts: Iterable[VariantFacts], axis: GenerativeAxis | None = None
) -> list[TwinGuidance]:
    """For every twin pair and use, one plain sentence from the paired differences between the twins (the
    rules: :func:`prunelens.studies.twins.judge_twins`)."""
    return [
        TwinGuidance(
            o.facts.name,
            o.facts.twin,
            list(o.facts.changed),
            _words(o.facts, o.non_generative),
            _words(o.facts, o.generative),
            o.facts.numbers,
        )
        for o in judge_twins(twins, facts, axis)
    ]
