"""Guidance from a study's measured numbers: per variant, may it be used for non-generative tasks,
for generation?

Pure functions over :class:`VariantFacts` (the numbers the report gathers for one variant). The verdict
rules live in the module constants below; :func:`rule_text` writes the rule out *from the same
constants*, so the report always prints the rule that produced its verdicts.

Rule (``r`` = retained fraction of the dense model's score, ``pruned / dense``, averaged per kind):

* **non-generative use** (multiple choice + retrieval; perplexity is shown but not judged):
  ``safe`` if ``r ≥ SAFE_RETAINED``, ``use with care`` if ``r ≥ CARE_RETAINED``, else ``unsafe``;
* **generative use**: the same thresholds on the generative ``r``, then the fidelity of the pruned
  generations to the dense ones (fraction of prompts whose greedy output is *identical*, ``em``) can only
  lower the verdict: ``em < FIDELITY_UNSAFE_EXACT_MATCH`` → ``unsafe``; ``em < FIDELITY_CARE_EXACT_MATCH``
  → at most ``use with care``. Scores on a few dozen prompts are noisy; identical outputs are the
  sensitive signal that the model still behaves like the dense one;
* a retained fraction is only judged when the dense score is at least ``MIN_DENSE_SCORE`` (a ratio of two
  near-zero scores says nothing); without a usable score or fidelity the verdict is ``not measured``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SAFE_RETAINED",
    "CARE_RETAINED",
    "FIDELITY_CARE_EXACT_MATCH",
    "FIDELITY_UNSAFE_EXACT_MATCH",
    "MIN_DENSE_SCORE",
    "GAP_MARGIN",
    "SAFE",
    "CARE",
    "UNSAFE",
    "NOT_MEASURED",
    "VariantFacts",
    "Verdict",
    "VariantGuidance",
    "score_verdict",
    "non_generative_verdict",
    "generative_verdict",
    "guidance",
    "rule_text",
    "answer_for_model",
    "pct",
    "GROUP_LABELS",
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

SAFE, CARE, UNSAFE, NOT_MEASURED = "safe", "use with care", "unsafe", "not measured"
_ORDER = {SAFE: 0, CARE: 1, UNSAFE: 2}

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
    repeat_ngram_rate: float | None = None
    kl_transitions: float | None = None
    kl_teacher_forced: float | None = None
    kl_free_running: float | None = None
    cos_p_transitions: float | None = None
    choice_flip_rate: float | None = None
    predictor: float | None = None

    @property
    def is_dense(self) -> bool:
        return self.group == "dense"

    @property
    def kl(self) -> float | None:
        """The probability-space divergence the report quotes:
        transitions, else teacher-forced, else free-running."""
        for v in (self.kl_transitions, self.kl_teacher_forced, self.kl_free_running):
            if _ok(v):
                return v
        return None


@dataclass(frozen=True)
class GenerativeAxis:
    """How a study measures "what generation keeps", one choice for all variants.

    ``score``: the retained generative task score (pruned / dense), when the dense model scores at least
    ``MIN_DENSE_SCORE``. ``fidelity``: the mean ROUGE-L F1 of the pruned greedy outputs against the dense
    ones (the dense model has fidelity 1 by definition), used when the dense score is too small for a
    retained fraction to mean anything — small models often answer no GSM8K question right, yet the
    way their generations drift from the dense ones is still measured. ``none``: neither is measured.
    """

    kind: str  # "score" | "fidelity" | "none"
    label: str  # axis label
    cause: str  # why a retained score could not be used ("" for "score")

    @property
    def reason(self) -> str:
        """Why this measure was chosen, one sentence."""
        if self.kind == "score":
            return "generation is measured by the generative task scores, as a fraction of the dense score"
        if self.kind == "fidelity":
            return (
                f"{self.cause}, so generation is measured by how closely the pruned greedy outputs "
                "follow the "
                "dense ones (mean ROUGE-L F1; the dense model has 1)"
            )
        return "no generative result is measured"

    def value(self, f: VariantFacts) -> float | None:
        if f.is_dense:
            return 1.0 if self.kind != "none" else None
        v = f.retained_gen if self.kind == "score" else f.rouge_l if self.kind == "fidelity" else None
        return v if _ok(v) else None


def generative_axis(facts: Iterable[VariantFacts]) -> GenerativeAxis:
    """Pick the study-wide generative measure: the retained score where the dense model scores enough,
    otherwise fidelity to the dense generations (ROUGE-L), otherwise ``none``."""
    facts = list(facts)
    pruned = [f for f in facts if not f.is_dense]
    dense_gen = next((f.dense_gen for f in facts if _ok(f.dense_gen)), None)
    if any(_ok(f.retained_gen) for f in pruned) and not (_ok(dense_gen) and dense_gen < MIN_DENSE_SCORE):
        return GenerativeAxis("score", "retained generative score (pruned / dense)", "")
    if any(_ok(f.rouge_l) for f in pruned):
        cause = (
            f"the dense model's generative score ({dense_gen:.3f}) is below {MIN_DENSE_SCORE}"
            if _ok(dense_gen)
            else "no generative score is measured"
        )
        return GenerativeAxis("fidelity", "fidelity to the dense generations (ROUGE-L F1)", cause)
    return GenerativeAxis("none", "generative measure", "")


@dataclass
class Verdict:
    use: str  # "non-generative" | "generative"
    verdict: str
    reasons: list[str] = field(default_factory=list)


@dataclass
class VariantGuidance:
    name: str
    non_generative: Verdict
    generative: Verdict

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.name,
            "non_generative": {
                "verdict": self.non_generative.verdict,
                "reasons": self.non_generative.reasons,
            },
            "generative": {"verdict": self.generative.verdict, "reasons": self.generative.reasons},
        }


def _ok(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def pct(v: float | None, digits: int = 0) -> str:
    """``0.623 → '62%'``; ``None → '—'``."""
    return f"{100 * v:.{digits}f}%" if _ok(v) else "—"


def score_verdict(retained: float | None) -> str:
    """``safe`` / ``use with care`` / ``unsafe`` from a retained fraction (``not measured`` for ``None``)."""
    if not _ok(retained):
        return NOT_MEASURED
    if retained >= SAFE_RETAINED:
        return SAFE
    if retained >= CARE_RETAINED:
        return CARE
    return UNSAFE


def _score_part(retained: float | None, dense: float | None, what: str) -> tuple[str, list[str]]:
    if _ok(dense) and dense < MIN_DENSE_SCORE:
        return NOT_MEASURED, [
            (
                f"the dense {what} score ({dense:.3f}) is below {MIN_DENSE_SCORE}: "
                "a retained fraction would mean nothing"
            )
        ]
    v = score_verdict(retained)
    if v == NOT_MEASURED:
        return v, [f"no {what} score measured"]
    bound = {
        SAFE: f"≥ {pct(SAFE_RETAINED)}",
        CARE: f"≥ {pct(CARE_RETAINED)}, < {pct(SAFE_RETAINED)}",
        UNSAFE: f"< {pct(CARE_RETAINED)}",
    }[v]
    return v, [f"keeps {pct(retained)} of the dense {what} score ({bound})"]


def non_generative_verdict(f: VariantFacts) -> Verdict:
    v, reasons = _score_part(f.retained_nongen, f.dense_nongen, "non-generative")
    return Verdict("non-generative", v, reasons)


def generative_verdict(f: VariantFacts) -> Verdict:
    v, reasons = _score_part(f.retained_gen, f.dense_gen, "generative")
    em = f.exact_match
    if _ok(em):
        if em < FIDELITY_UNSAFE_EXACT_MATCH:
            cap = UNSAFE
        elif em < FIDELITY_CARE_EXACT_MATCH:
            cap = CARE
        else:
            cap = SAFE
        reasons.append(f"{pct(em)} of its generations are identical to the dense model's")
        if v == NOT_MEASURED:
            v = cap
        elif _ORDER[cap] > _ORDER[v]:
            v = cap
            reasons.append(f"fidelity lowers the verdict to '{cap}'")
    return Verdict("generative", v, reasons)


def guidance(facts: Iterable[VariantFacts]) -> list[VariantGuidance]:
    """Verdicts for every pruned variant (the dense reference is skipped)."""
    return [
        VariantGuidance(f.name, non_generative_verdict(f), generative_verdict(f))
        for f in facts
        if not f.is_dense
    ]


def rule_text() -> list[str]:
    """The verdict rule, one sentence per item, written from the module constants."""
    return [
        (
            f"A retained fraction is the pruned score divided by the dense (Full) score, "
            f"averaged per kind; it is judged "
            f"only when the dense score is at least {MIN_DENSE_SCORE}."
        ),
        (
            "Multiple-choice tasks on which the dense model scores within two standard errors of chance "
            "are left out "
            "of the judged averages (the table shows them and names them)."
        ),
        (
            f"Non-generative use (multiple choice and retrieval; perplexity is shown but not judged): "
            f"'{SAFE}' if the variant keeps at least {pct(SAFE_RETAINED)} of the dense score, "
            f"'{CARE}' if it keeps at least {pct(CARE_RETAINED)}, otherwise '{UNSAFE}'."
        ),
        (
            f"Generative use: the same thresholds on the generative score; "
            f"then, where the pruned generations were "
            f"compared with the dense ones, fewer than {pct(FIDELITY_UNSAFE_EXACT_MATCH)} "
            f"identical outputs make it "
            f"'{UNSAFE}' and fewer than {pct(FIDELITY_CARE_EXACT_MATCH)} make it at most '{CARE}'."
        ),
        (
            f"Without a usable score (and, for generation, without a fidelity measurement) "
            f"the verdict is '{NOT_MEASURED}'."
        ),
    ]


# ----------------------------------------------------------------------------------------------------
# the answer for this model


def _range(vals: list[float]) -> str:
    lo, hi = min(vals), max(vals)
    return pct(lo) if round(100 * lo) == round(100 * hi) else f"{pct(lo)[:-1]}–{pct(hi)}"


def _rouge_range(vals: list[float]) -> str:
    lo, hi = min(vals), max(vals)
    return f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}–{hi:.2f}"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _names(fs: list[VariantFacts]) -> str:
    names = [f.name for f in fs]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def answer_for_model(model: str, facts: list[VariantFacts], near_chance: Iterable[str] = ()) -> str:
    """One paragraph answering "does pruning work on this model?" from the measured numbers.

    It summarises each family of variants (attention drops, MLP drops, …) by the range of retained
    non-generative and generative scores, then says where the model agrees with the paper's claim
    (non-generative scores survive, generation collapses, attention drops are gentler than MLP drops)
    and, plainly, where it does not. ``near_chance``: multiple-choice tasks on which the dense model is not
    clearly above random guessing; the answer warns that their retained fractions are noise.
    """
    pruned = [f for f in facts if not f.is_dense]
    ax = generative_axis(facts)
    fid = ax.kind == "fidelity"
    gv = {f.name: ax.value(f) for f in pruned}  # the generative measure of each variant
    if not pruned:
        return f"No pruned variant of {model} has results yet, so there is nothing to answer."
    parts: list[str] = []
    groups: dict[str, list[VariantFacts]] = {}
    for f in pruned:
        groups.setdefault(f.group, []).append(f)
    first = True
    for g, fs in groups.items():
        ng = [f.retained_nongen for f in fs if _ok(f.retained_nongen)]
        gen = [gv[f.name] for f in fs if gv[f.name] is not None]
        if not ng and not gen:
            parts.append(f"{_cap(GROUP_LABELS.get(g, g))} ({_names(fs)}) have no scores yet.")
            continue
        label = GROUP_LABELS.get(g, g)
        lead = f"On {model}, {label}" if first else _cap(label)
        if fid:
            bits = [f"keep {_range(ng)} of the dense model's non-generative score"] if ng else []
            if gen:
                bits.append(f"reach a ROUGE-L of {_rouge_range(gen)} against the dense generations")
            parts.append(f"{lead} ({_names(fs)}) {' and '.join(bits)}.")
        else:
            bits = []
            if ng:
                bits.append(f"{_range(ng)} of the non-generative")
            if gen:
                bits.append(f"{_range(gen)} of the generative")
            parts.append(
                f"{lead} ({_names(fs)}) keep {' and '.join(bits)} score{'s' if len(bits) > 1 else ''} "
                "of the dense model."
            )
        first = False

    near_chance = list(near_chance)
    if near_chance:
        parts.append(
            f"The dense model is near chance on {', '.join(near_chance)}: "
            f"{'that task is' if len(near_chance) == 1 else 'those tasks are'} left out of the judged "
            "non-generative averages."
        )
    dense_gen = next((f.dense_gen for f in facts if _ok(f.dense_gen)), None)
    if _ok(dense_gen) and dense_gen < MIN_DENSE_SCORE:
        parts.append(
            f"Caution: the dense model's generative score ({dense_gen:.3f}) is below {MIN_DENSE_SCORE}, so "
            "retained generative fractions say little here; "
            + (
                "generation is judged instead by the fidelity to the dense generations "
                "(ROUGE-L, 1 = identical), "
                "with the probability-space divergence as the mechanism."
                if fid
                else "the probability-space divergence is the better evidence."
            )
        )
    both = [f for f in pruned if _ok(f.retained_nongen) and gv[f.name] is not None]
    if both:
        gap = [f for f in both if gv[f.name] < f.retained_nongen - GAP_MARGIN]
        nogap = [f for f in both if f not in gap]
        on_gen = (
            (
                "generation (their ROUGE-L against the dense outputs is lower than their retained "
                "non-generative score)"
            )
            if fid
            else "generation"
        )
        if gap and not nogap:
            parts.append(
                f"As the paper claims, every pruned variant loses more on {on_gen} than on the "
                "non-generative tasks."
            )
        elif gap:
            parts.append(
                f"As the paper claims, {_names(gap)} lose{'s' if len(gap) == 1 else ''} more on {on_gen} "
                f"than on the non-generative tasks; unlike the paper's claim, {_names(nogap)} "
                f"lose{'s' if len(nogap) == 1 else ''} no more on generation (gap under "
                f"{round(100 * GAP_MARGIN)} points)."
            )
        else:
            parts.append(
                f"Unlike the paper's claim, no variant loses more on generation than on the non-generative "
                f"tasks (gap under {round(100 * GAP_MARGIN)} points)."
            )

    hurt = [f for f in pruned if _ok(f.retained_nongen) and f.retained_nongen < CARE_RETAINED]
    if hurt:
        detail = []
        for f in hurt:
            mc = f.retained_by_kind.get("mc")
            detail.append(
                f"{f.name} keeps {pct(f.retained_nongen)}"
                + (f" ({pct(mc)} on multiple choice)" if _ok(mc) else "")
            )
        mlp_mc = [
            f
            for f in hurt
            if f.group == "mlp"
            and _ok(f.retained_by_kind.get("mc"))
            and f.retained_by_kind["mc"] < CARE_RETAINED
        ]
        extra = " — MLP drops hurt multiple choice too" if mlp_mc else ""
        parts.append(
            "Unlike the paper's claim that non-generative scores survive pruning, here "
            f"{'; '.join(detail)} of the non-generative score{extra}."
        )
    elif any(_ok(f.retained_nongen) for f in pruned):
        parts.append(
            f"As the paper claims, every pruned variant keeps at least {pct(CARE_RETAINED)} of the "
            "non-generative score."
        )

    # attention versus MLP drops of the same size (the paper: dropping attention is gentler on generation)
    attn = {f.n: f for f in groups.get("attn", []) if gv[f.name] is not None}
    mlp = {f.n: f for f in groups.get("mlp", []) if gv[f.name] is not None}
    show = (lambda v: f"ROUGE-L {v:.2f}") if fid else pct
    pairs = [(attn[n], mlp[n]) for n in sorted(set(attn) & set(mlp), key=lambda x: (x is None, x or 0))]
    if pairs:
        agree = [(a, m) for a, m in pairs if gv[a.name] >= gv[m.name]]
        disagree = [(a, m) for a, m in pairs if gv[a.name] < gv[m.name]]
        if agree:
            parts.append(
                "As in the paper, dropping attention is gentler on generation than dropping as many MLPs ("
                + "; ".join(f"{a.name} {show(gv[a.name])} vs {m.name} {show(gv[m.name])}" for a, m in agree)
                + ")."
            )
        if disagree:
            parts.append(
                "Unlike the paper, dropping attention hurts generation more than dropping as many MLPs ("
                + "; ".join(
                    f"{a.name} {show(gv[a.name])} vs {m.name} {show(gv[m.name])}" for a, m in disagree
                )
                + ")."
            )

    kl = [f for f in pruned if _ok(f.kl)]
    if kl:
        worst = max(kl, key=lambda f: f.kl)
        best = min(kl, key=lambda f: f.kl)
        s = f"The probability-space divergence (median KL) is largest for {worst.name} ({worst.kl:.3g})"
        s += f" and smallest for {best.name} ({best.kl:.3g})." if best is not worst else "."
        parts.append(s)
    return " ".join(parts)
