"""The guidance in words: the sentences that say what the verdict rules found (``guidance.json`` and the
page's Guidance section), and the rule itself written out from the rules' constants.

The decisions are made in :mod:`prunelens.studies.verdicts` (structured outcomes); this module only reads
their fields and writes English, so a changed threshold changes the verdicts and the printed rule alike.
The constants are read from that module at call time for the same reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prunelens.studies import verdicts as V
from prunelens.studies.facts import VariantFacts, finite
from prunelens.studies.verdicts import Finding, GenerativeAxis, PartOutcome, UseOutcome

__all__ = [
    "INDISTINGUISHABLE",
    "LOWER",
    "UNCLEAR",
    "POINT_ONLY",
    "FLOOR",
    "NO_CONTROL",
    "GROUP_LABELS",
    "pct",
    "pct_interval",
    "finding_text",
    "part_reasons",
    "Verdict",
    "VariantGuidance",
    "describe",
    "non_generative_verdict",
    "generative_verdict",
    "guidance",
    "rule_text",
    "axis_label",
    "axis_cause",
    "axis_reason",
]

# what the paired tests found, in words (``Verdict.finding``); the grade (safe / care / unsafe) is the colour
INDISTINGUISHABLE = "indistinguishable from dense at this n"
LOWER = "lower than dense"
UNCLEAR = "not enough data to tell"
POINT_ONLY = "judged on point values (no paired records)"
FLOOR = "the noise floor"
NO_CONTROL = "no control: fixed thresholds on identical outputs"

GROUP_LABELS = {
    "dense": "dense",
    "control": "the control",
    "attn": "attention drops",
    "mlp": "MLP drops",
    "block": "block drops",
    "joint": "joint attention/MLP drops",
    "sparse": "sparsified variants",
    "other": "other variants",
}


def pct(v: float | None, digits: int = 0) -> str:
    """``0.623 → '62%'``; ``None → '—'``."""
    return f"{100 * v:.{digits}f}%" if finite(v) else "—"  # type: ignore[operator]


def pct_interval(iv: tuple[float, float] | None) -> str:
    """``(0.9, 1.05) → '[90–105%]'``; ``None → ''``."""
    return f"[{pct(iv[0])[:-1]}–{pct(iv[1])}]" if iv else ""


def finding_text(p: PartOutcome) -> str:
    """What one part found, in the words ``guidance.json`` records ("" where nothing was judged)."""
    dense = p.reference == V.DENSE_REFERENCE
    if p.finding is Finding.LOWER:
        return (LOWER if dense else f"lower than the {p.reference}") + f" (p < {V.ALPHA:g})"
    if p.finding is Finding.INDISTINGUISHABLE:
        return INDISTINGUISHABLE if dense else f"indistinguishable from the {p.reference} at this n"
    return {
        Finding.UNCLEAR: UNCLEAR,
        Finding.POINT_ONLY: POINT_ONLY,
        Finding.FIXED_THRESHOLDS: NO_CONTROL,
        Finding.FLOOR: FLOOR,
    }.get(p.finding, "")


def _paired_reasons(p: PartOutcome) -> list[str]:
    """The reason of a part judged on paired tests (or on its point value, or not at all)."""
    against, what = p.reference, p.measure
    if p.finding is Finding.NOT_MEASURED:
        if p.reference_score is not None:
            return [
                f"the {against} {what} score ({p.reference_score:.3f}) is below {V.MIN_DENSE_SCORE}: "
                "a retained fraction would mean nothing"
            ]
        return [f"no {what} score measured"]
    if p.finding is Finding.POINT_ONLY:
        return [f"keeps {pct(p.retained)} of the {against} {what} score (no paired records)"]
    if p.few:
        return [
            f"keeps {pct(p.retained)} of the {against} {what} score; only "
            + ", ".join(f"{t.n} on {t.task}" for t in p.few)
            + f" shared examples (fewer than {V.MIN_PAIRED_N}): no interval can be trusted"
        ]
    keeps = f"keeps {pct(p.retained)} {pct_interval(p.interval)} of the {against} {what} score"
    worst = p.worst
    if worst is not None:
        return [
            f"{keeps}; lower on {', '.join(t.task for t, _ in p.lower)} "
            f"({worst[0].test}, Holm-adjusted p = {worst[1]:.2g} at n = {worst[0].n})"
        ]
    if p.finding is Finding.INDISTINGUISHABLE:
        return [f"{keeps}; no task differs significantly (Holm-adjusted p ≥ {V.ALPHA:g})"]
    return [
        f"{keeps}; no task differs significantly, but the interval still allows keeping "
        f"less than {pct(V.CARE_RETAINED)}"
    ]


def part_reasons(p: PartOutcome) -> list[str]:
    """Why one part found what it found, one sentence per reason."""
    if p.finding is Finding.FLOOR:
        return [
            "the control's drift from the dense generations is the floor the variants are judged against"
        ] + ([f"its ROUGE-L against the dense outputs is {p.rouge_l:.2f}"] if finite(p.rouge_l) else [])
    if p.finding is Finding.FIXED_THRESHOLDS:
        return [f"{pct(p.exact_match)} of its generations are identical to the dense model's"]
    lead = []
    if finite(p.rouge_l) and finite(p.reference_rouge_l):  # the fidelity part quotes both ROUGE-Ls first
        lead = [
            f"its greedy outputs reach ROUGE-L {p.rouge_l:.2f} against the dense ones, the control's "
            f"{p.reference_rouge_l:.2f}"
        ]
    return lead + _paired_reasons(p)


@dataclass
class Verdict:
    """A use's verdict in words: ``verdict`` is the grade (safe / use with care / unsafe / not measured, the
    badge colour), ``finding`` what the paired tests found, ``retained`` and ``interval`` the pooled retained
    fraction, ``n`` the examples per judged task, ``tests`` the evidence."""

    use: str  # "non-generative" | "generative"
    verdict: str
    reasons: list[str] = field(default_factory=list)
    finding: str = ""
    retained: float | None = None
    interval: tuple[float, float] | None = None
    n: dict[str, int] = field(default_factory=dict)
    tests: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "finding": self.finding,
            "retained": self.retained,
            "interval": list(self.interval) if self.interval else None,
            "n": self.n,
            "tests": self.tests,
            "reasons": self.reasons,
        }


@dataclass
class VariantGuidance:
    name: str
    non_generative: Verdict
    generative: Verdict

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.name,
            "non_generative": self.non_generative.to_dict(),
            "generative": self.generative.to_dict(),
        }


def describe(o: UseOutcome) -> Verdict:
    """A use's outcome in words."""
    reasons = [r for p in o.parts for r in part_reasons(p)]
    if not reasons:
        reasons = ["no generative score or fidelity measured"]
    if o.worse_decides:
        reasons.append(f"the worse of the two decides: '{o.grade}'")
    finding = "; ".join(t for p in o.parts if (t := finding_text(p)))
    return Verdict(o.use, o.grade, reasons, finding, o.retained, o.interval, o.n, o.tests)


def non_generative_verdict(f: VariantFacts) -> Verdict:
    return describe(V.non_generative_outcome(f))


def generative_verdict(f: VariantFacts) -> Verdict:
    """The worse of the generative score verdict and the fidelity verdict, in words."""
    return describe(V.generative_outcome(f))


def guidance(facts: Iterable[VariantFacts]) -> list[VariantGuidance]:
    """Verdicts in words for every pruned variant (the dense reference is skipped)."""
    return [
        VariantGuidance(o.name, describe(o.non_generative), describe(o.generative)) for o in V.judge(facts)
    ]


def rule_text() -> list[str]:
    """The verdict rule, one sentence per item, written from the rules' constants."""
    SAFE, CARE, UNSAFE, NOT_MEASURED = V.SAFE, V.CARE, V.UNSAFE, V.NOT_MEASURED
    return [
        (
            f"A retained fraction is the pruned score divided by the dense (Full) score, pooled over the "
            f"tasks of a use, with a 95% interval from a paired bootstrap over the shared examples; it is "
            f"judged only when the dense score is at least {V.MIN_DENSE_SCORE}."
        ),
        (
            "Multiple-choice tasks on which the dense model scores within two standard errors of chance "
            "are left out of the judged averages (the table shows them and names them)."
        ),
        (
            f"Each task is compared with the dense model on the same examples (exact McNemar for "
            f"accuracies, a paired sign-flip test otherwise), p-values Holm-adjusted over the tasks of "
            f"a use. A significant loss (p < {V.ALPHA:g}) is '{LOWER}': '{UNSAFE}' when even the "
            f"interval's upper end keeps less than {pct(V.CARE_RETAINED)}, else '{CARE}'. "
            f"No significant loss and an interval whose lower end keeps at least "
            f"{pct(V.CARE_RETAINED)} is '{INDISTINGUISHABLE}' ('{SAFE}'); otherwise '{UNCLEAR}' "
            f"('{CARE}'), as whenever a judged task has fewer than {V.MIN_PAIRED_N} shared examples."
        ),
        (
            "Generative use: the same rule on the generative scores where the dense model scores, and "
            "the same rule on the fidelity of the greedy outputs to the dense ones (per-prompt ROUGE-L) "
            "against the control's — the dense weights rounded to a lower precision, the noise floor of "
            "greedy decoding; the worse decides. Without a control, fewer than "
            f"{pct(V.FIDELITY_UNSAFE_EXACT_MATCH)} identical outputs make it '{UNSAFE}' and fewer than "
            f"{pct(V.FIDELITY_CARE_EXACT_MATCH)} at most '{CARE}'."
        ),
        (
            f"Without paired records the point value is judged against {pct(V.SAFE_RETAINED)} ('{SAFE}') "
            f"and {pct(V.CARE_RETAINED)} ('{CARE}'); without a usable score the verdict is '{NOT_MEASURED}'."
        ),
    ]


def axis_label(axis: GenerativeAxis) -> str:
    """The generative measure's axis label."""
    if axis.kind == "score":
        return "retained generative score (pruned / dense)"
    if axis.kind == "fidelity":
        return "fidelity to the dense generations (ROUGE-L F1)"
    return "generative measure"


def axis_cause(axis: GenerativeAxis) -> str:
    """Why a retained generative score could not be used ("" where it is)."""
    if axis.kind != "fidelity":
        return ""
    if finite(axis.dense_gen):
        return f"the dense model's generative score ({axis.dense_gen:.3f}) is below {V.MIN_DENSE_SCORE}"
    return "no generative score is measured"


def axis_reason(axis: GenerativeAxis) -> str:
    """Why this measure was chosen, one sentence."""
    if axis.kind == "score":
        return "generation is measured by the generative task scores, as a fraction of the dense score"
    if axis.kind == "fidelity":
        return (
            f"{axis_cause(axis)}, so generation is measured by how closely the pruned greedy outputs "
            "follow the "
            "dense ones (mean ROUGE-L F1; the dense model has 1)"
        )
    return "no generative result is measured"
