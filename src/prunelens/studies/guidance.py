"""Guidance from a study's measured numbers: per variant, may it be used for non-generative tasks,
for generation?

Pure functions over :class:`VariantFacts` (the numbers the report gathers for one variant). The verdict
rules live in the module constants below; :func:`rule_text` writes the rule out *from the same
constants*, so the report always prints the rule that produced its verdicts.

Rule (``r`` = retained fraction of the dense model's score, ``pruned / dense``, pooled over the tasks of
a use). Each variant is evaluated on the *same* examples as the dense model, so every judgement rests on
paired tests (exact McNemar for accuracies, a sign-flip test otherwise; ``prunelens.evaluation.uncertainty``):

* **non-generative use** (multiple choice + retrieval; perplexity is shown but not judged): the task tests
  are Holm-adjusted; a significant loss on any task (adjusted ``p < ALPHA``) is ``lower than dense``
  (``unsafe`` when even the upper end of ``r``'s interval is below ``CARE_RETAINED``, else ``use with
  care``); no significant loss and the lower end of ``r``'s interval at least ``CARE_RETAINED`` is
  ``indistinguishable from dense at this n`` (``safe``); otherwise the interval still allows a large loss:
  ``not enough data to tell``;
* **generative use**: the same rule on the generative task scores where the dense model scores at least
  ``MIN_DENSE_SCORE``, and — the sensitive signal — the fidelity of the variant's greedy outputs to the
  dense ones (per-prompt ROUGE-L) against the **control**'s (the dense weights rounded to a lower
  precision: a perturbation nobody calls pruning, whose drift is the noise floor); the worse of the two
  decides. Without a control, fidelity falls back to fixed thresholds on identical outputs
  (``FIDELITY_*_EXACT_MATCH``);
* without paired records (an old study directory) the retained fraction's point value is judged
  against the same thresholds, and the verdict says so; without any usable score: ``not measured``.
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
    "ALPHA",
    "MIN_PAIRED_N",
    "INDISTINGUISHABLE",
    "LOWER",
    "UNCLEAR",
    "POINT_ONLY",
    "FLOOR",
    "TaskTest",
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
    "TWIN_BETTER",
    "TWIN_WORSE",
    "TWIN_MIXED",
    "TWIN_SAME",
    "TwinFacts",
    "TwinUse",
    "TwinGuidance",
    "twin_difference",
    "twin_guidance",
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

# what the paired tests found (``Verdict.finding``); the grade (safe / care / unsafe) is the colour
INDISTINGUISHABLE = "indistinguishable from dense at this n"
LOWER = "lower than dense"
UNCLEAR = "not enough data to tell"
POINT_ONLY = "judged on point values (no paired records)"
FLOOR = "the noise floor"

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

    def interval(self, f: VariantFacts) -> tuple[float, float] | None:
        """The 95 % interval of :meth:`value` (``None`` for the dense model or where it is not measured)."""
        if f.is_dense:
            return None
        return (
            f.retained_gen_interval
            if self.kind == "score"
            else f.rouge_l_interval
            if self.kind == "fidelity"
            else None
        )

    def value(self, f: VariantFacts) -> float | None:
        if f.is_dense:
            return 1.0 if self.kind != "none" else None
        v = f.retained_gen if self.kind == "score" else f.rouge_l if self.kind == "fidelity" else None
        return v if _ok(v) else None


def generative_axis(facts: Iterable[VariantFacts]) -> GenerativeAxis:
    """Pick the study-wide generative measure: the retained score where the dense model scores enough,
    otherwise fidelity to the dense generations (ROUGE-L), otherwise ``none``."""
    facts = list(facts)
    pruned = [f for f in facts if not f.is_dense and not f.is_control]
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
    """A use's verdict: ``verdict`` is the grade (safe / use with care / unsafe / not measured, the badge
    colour), ``finding`` what the paired tests found, ``retained`` and ``interval`` the pooled retained
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


def _pct_iv(iv: tuple[float, float] | None) -> str:
    return f"[{pct(iv[0])[:-1]}–{pct(iv[1])}]" if iv else ""


def _paired_part(
    retained: float | None,
    interval: tuple[float, float] | None,
    tests: list[TaskTest],
    dense: float | None,
    what: str,
    against: str = "dense",
) -> tuple[str, str, list[str], list[dict[str, Any]]]:
    """(grade, finding, reasons, test dicts) from Holm-adjusted paired tests and a pooled interval."""
    from prunelens.evaluation.uncertainty import holm

    if _ok(dense) and dense < MIN_DENSE_SCORE:
        return (
            NOT_MEASURED,
            "",
            [
                f"the {against} {what} score ({dense:.3f}) is below {MIN_DENSE_SCORE}: "
                "a retained fraction would mean nothing"
            ],
            [],
        )
    if not tests or interval is None or not _ok(retained):
        v = score_verdict(retained)
        if v == NOT_MEASURED:
            return v, "", [f"no {what} score measured"], []
        return v, POINT_ONLY, [f"keeps {pct(retained)} of the {against} {what} score (no paired records)"], []
    adjusted = holm([t.p_value for t in tests])
    dicts = [{**t.to_dict(), "p_holm": p} for t, p in zip(tests, adjusted)]
    few = [t for t in tests if t.n < MIN_PAIRED_N]
    if few:
        return (
            CARE,
            UNCLEAR,
            [
                f"keeps {pct(retained)} of the {against} {what} score; only "
                + ", ".join(f"{t.n} on {t.task}" for t in few)
                + f" shared examples (fewer than {MIN_PAIRED_N}): no interval can be trusted"
            ],
            dicts,
        )
    lower = [(t, p) for t, p in zip(tests, adjusted) if p < ALPHA and t.difference < 0]
    keeps = f"keeps {pct(retained)} {_pct_iv(interval)} of the {against} {what} score"
    if lower:
        worst = min(lower, key=lambda tp: tp[1])
        grade = UNSAFE if interval[1] < CARE_RETAINED else CARE
        why = (
            f"{keeps}; lower on {', '.join(t.task for t, _ in lower)} "
            f"({worst[0].test}, Holm-adjusted p = {worst[1]:.2g} at n = {worst[0].n})"
        )
        finding = LOWER if against == "dense" else f"lower than the {against}"
        return grade, f"{finding} (p < {ALPHA:g})", [why], dicts
    if interval[0] >= CARE_RETAINED:
        finding = (
            INDISTINGUISHABLE if against == "dense" else f"indistinguishable from the {against} at this n"
        )
        return SAFE, finding, [f"{keeps}; no task differs significantly (Holm-adjusted p ≥ {ALPHA:g})"], dicts
    return (
        CARE,
        UNCLEAR,
        [
            f"{keeps}; no task differs significantly, but the interval still allows keeping "
            f"less than {pct(CARE_RETAINED)}"
        ],
        dicts,
    )


def _n(tests: list[TaskTest]) -> dict[str, int]:
    return {t.task: t.n for t in tests}


def non_generative_verdict(f: VariantFacts) -> Verdict:
    grade, finding, reasons, tests = _paired_part(
        f.retained_nongen, f.retained_nongen_interval, f.nongen_tests, f.dense_nongen, "non-generative"
    )
    return Verdict(
        "non-generative",
        grade,
        reasons,
        finding,
        f.retained_nongen,
        f.retained_nongen_interval,
        _n(f.nongen_tests),
        tests,
    )


def _fixed_fidelity(em: float) -> str:
    if em < FIDELITY_UNSAFE_EXACT_MATCH:
        return UNSAFE
    if em < FIDELITY_CARE_EXACT_MATCH:
        return CARE
    return SAFE


def generative_verdict(f: VariantFacts) -> Verdict:
    """The worse of the generative score verdict and the fidelity verdict (see the module docstring)."""
    if f.is_control:
        return Verdict(
            "generative",
            NOT_MEASURED,
            ["the control's drift from the dense generations is the floor the variants are judged against"]
            + ([f"its ROUGE-L against the dense outputs is {f.rouge_l:.2f}"] if _ok(f.rouge_l) else []),
            FLOOR,
        )
    has_score = _ok(f.retained_gen) and not (_ok(f.dense_gen) and f.dense_gen < MIN_DENSE_SCORE)
    parts: list[tuple[str, str, list[str], list[dict[str, Any]]]] = []
    if has_score or not (f.fidelity_tests or _ok(f.exact_match)):
        parts.append(
            _paired_part(f.retained_gen, f.retained_gen_interval, f.gen_tests, f.dense_gen, "generative")
        )
    if f.fidelity_tests and f.control:
        g, finding, reasons, tests = _paired_part(
            f.fidelity_ratio, f.fidelity_ratio_interval, f.fidelity_tests, None, "fidelity", f.control
        )
        lead = (
            f"its greedy outputs reach ROUGE-L {f.rouge_l:.2f} against the dense ones, the control's "
            f"{f.control_rouge_l:.2f}"
            if _ok(f.rouge_l) and _ok(f.control_rouge_l)
            else ""
        )
        parts.append((g, finding, ([lead] if lead else []) + reasons, tests))
    elif _ok(f.exact_match):
        g = _fixed_fidelity(f.exact_match)
        parts.append(
            (
                g,
                "no control: fixed thresholds on identical outputs",
                [f"{pct(f.exact_match)} of its generations are identical to the dense model's"],
                [],
            )
        )
    measured = [p for p in parts if p[0] != NOT_MEASURED]
    if not measured:
        reasons = [r for p in parts for r in p[2]] or ["no generative score or fidelity measured"]
        return Verdict("generative", NOT_MEASURED, reasons)
    worst = max(measured, key=lambda p: _ORDER[p[0]])
    reasons = [r for p in parts for r in p[2]]
    if len(measured) > 1 and any(_ORDER[p[0]] < _ORDER[worst[0]] for p in measured):
        reasons.append(f"the worse of the two decides: '{worst[0]}'")
    return Verdict(
        "generative",
        worst[0],
        reasons,
        "; ".join(p[1] for p in parts if p[1]),
        f.retained_gen if has_score else f.fidelity_ratio,
        f.retained_gen_interval if has_score else f.fidelity_ratio_interval,
        _n(f.gen_tests if has_score else f.fidelity_tests),
        [t for p in parts for t in p[3]],
    )


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
            f"A retained fraction is the pruned score divided by the dense (Full) score, pooled over the "
            f"tasks of a use, with a 95% interval from a paired bootstrap over the shared examples; it is "
            f"judged only when the dense score is at least {MIN_DENSE_SCORE}."
        ),
        (
            "Multiple-choice tasks on which the dense model scores within two standard errors of chance "
            "are left out of the judged averages (the table shows them and names them)."
        ),
        (
            f"Each task is compared with the dense model on the same examples (exact McNemar for "
            f"accuracies, a paired sign-flip test otherwise), p-values Holm-adjusted over the tasks of "
            f"a use. A significant loss (p < {ALPHA:g}) is '{LOWER}': '{UNSAFE}' when even the "
            f"interval's upper end keeps less than {pct(CARE_RETAINED)}, else '{CARE}'. "
            f"No significant loss and an interval whose lower end keeps at least "
            f"{pct(CARE_RETAINED)} is '{INDISTINGUISHABLE}' ('{SAFE}'); otherwise '{UNCLEAR}' "
            f"('{CARE}'), as whenever a judged task has fewer than {MIN_PAIRED_N} shared examples."
        ),
        (
            "Generative use: the same rule on the generative scores where the dense model scores, and "
            "the same rule on the fidelity of the greedy outputs to the dense ones (per-prompt ROUGE-L) "
            "against the control's — the dense weights rounded to a lower precision, the noise floor of "
            "greedy decoding; the worse decides. Without a control, fewer than "
            f"{pct(FIDELITY_UNSAFE_EXACT_MATCH)} identical outputs make it '{UNSAFE}' and fewer than "
            f"{pct(FIDELITY_CARE_EXACT_MATCH)} at most '{CARE}'."
        ),
        (
            f"Without paired records the point value is judged against {pct(SAFE_RETAINED)} ('{SAFE}') "
            f"and {pct(CARE_RETAINED)} ('{CARE}'); without a usable score the verdict is '{NOT_MEASURED}'."
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
    pruned = [f for f in facts if not f.is_dense and not f.is_control]
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


# ----------------------------------------------------------------------------------------------------
# twins: a variant against the same pruning but for one changed rule

#: what the paired comparison of two twins found on a use (``TwinUse.finding``)
TWIN_BETTER = "the changed rule does better"
TWIN_WORSE = "the changed rule does worse"
TWIN_MIXED = "the changed rule does better on some tasks and worse on others"
TWIN_SAME = "indistinguishable at this n"


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

    @property
    def rule(self) -> str:
        """The changed rule in words: ``drop.objective: hidden → generation; …``."""
        return "; ".join(self.changed) if self.changed else "no config field differs"


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


def _binary(t: TaskTest) -> bool:
    return "McNemar" in t.test


def twin_difference(t: TaskTest) -> str:
    """``+3.5 points [+0.5, +6.5]`` for an accuracy (0/1 scores), ``+0.110 [+0.050, +0.170]`` otherwise."""
    if _binary(t):
        lo, hi = t.interval
        return f"{100 * t.difference:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return f"{t.difference:+.3f} [{t.interval[0]:+.3f}, {t.interval[1]:+.3f}]"


def _verdict_clause(name: str, twin: str, gx: str, gy: str, same: bool) -> str:
    if gx == gy:
        return f" Verdict: '{gx}' for both."
    tail = ", although the twins themselves are not told apart at this n" if same else ""
    return f" The verdict moves from '{gy}' ({twin}) to '{gx}' ({name}){tail}."


def _holm_part(t: TwinFacts, tests: list[TaskTest], use_words: str) -> tuple[str, str, list[dict[str, Any]]]:
    """(finding, evidence clause, test dicts) from per-task twin tests, Holm-adjusted over the use's tasks."""
    from prunelens.evaluation.uncertainty import holm

    adjusted = holm([x.p_value for x in tests])
    dicts = [{**x.to_dict(), "p_holm": p} for x, p in zip(tests, adjusted)]
    few = [x for x in tests if x.n < MIN_PAIRED_N]
    if few:
        return (
            UNCLEAR,
            "only "
            + ", ".join(f"{x.n} on {x.task}" for x in few)
            + f" shared examples (fewer than {MIN_PAIRED_N}): {UNCLEAR}",
            dicts,
        )
    sig = [(x, p) for x, p in zip(tests, adjusted) if p < ALPHA and x.difference != 0]
    ns = ", ".join(f"{x.n} on {x.task}" for x in tests)
    if not sig:
        p_min = min(adjusted)
        return (
            TWIN_SAME,
            f"no task differs between the twins (smallest Holm-adjusted p = {p_min:.2g}; n = {ns}): "
            f"{TWIN_SAME}",
            dicts,
        )
    parts = "; ".join(
        f"{x.task} {twin_difference(x)} ({x.test}, Holm-adjusted p = {p:.2g}, n = {x.n})" for x, p in sig
    )
    up = [x for x, _ in sig if x.difference > 0]
    down = [x for x, _ in sig if x.difference < 0]
    if up and not down:
        return (
            TWIN_BETTER,
            f"paired difference {t.name} − {t.twin}: {parts}: {t.name}'s changed rule ({t.rule}) suits "
            f"{use_words} better on this model",
            dicts,
        )
    if down and not up:
        return (
            TWIN_WORSE,
            f"paired difference {t.name} − {t.twin}: {parts}: {t.name}'s changed rule ({t.rule}) suits "
            f"{use_words} worse on this model ({t.twin}'s rule is the better choice here)",
            dicts,
        )
    return (
        TWIN_MIXED,
        f"paired difference {t.name} − {t.twin}: {parts}: {t.name}'s changed rule ({t.rule}) helps on "
        f"{', '.join(x.task for x in up)} and hurts on {', '.join(x.task for x in down)}",
        dicts,
    )


def _grades(name: str, twin: str, verdicts: dict[str, VariantGuidance], use: str) -> tuple[str, str]:
    def grade(n: str) -> str:
        g = verdicts.get(n)
        if g is None:
            return NOT_MEASURED
        return (g.non_generative if use == "non-generative" else g.generative).verdict

    return grade(name), grade(twin)


def _kept(v: VariantGuidance | None, use: str) -> float | None:
    if v is None:
        return None
    r = (v.non_generative if use == "non-generative" else v.generative).retained
    return r if _ok(r) else None


def _twin_scores_use(
    t: TwinFacts, verdicts: dict[str, VariantGuidance], use: str, tests: list[TaskTest], show_kept: bool
) -> TwinUse:
    """A use judged on task scores (non-generative, or generative where the dense model scores);
    ``show_kept``: the verdicts' retained fractions are of these scores, so the sentence quotes them."""
    words = "non-generative use" if use == "non-generative" else "generation"
    gx, gy = _grades(t.name, t.twin, verdicts, use)
    kx, ky = _kept(verdicts.get(t.name), use), _kept(verdicts.get(t.twin), use)
    which = "non-generative" if use == "non-generative" else "generative"
    lead = f"On {words}, {t.name}"
    if kx is not None and ky is not None and show_kept:
        lead += f" keeps {pct(kx)} of the dense {which} score against {t.twin}'s {pct(ky)}"
    else:
        lead += f" against {t.twin}"
    verdicts_d = {t.name: gx, t.twin: gy}
    if not tests:
        return TwinUse(
            use,
            NOT_MEASURED,
            f"On {words}, {t.name} and {t.twin} share no paired {which} records: {NOT_MEASURED}."
            + _verdict_clause(t.name, t.twin, gx, gy, True),
            verdicts_d,
            gx != gy,
            "scores",
        )
    finding, clause, dicts = _holm_part(t, tests, words)
    same = finding in (TWIN_SAME, UNCLEAR)
    return TwinUse(
        use,
        finding,
        f"{lead}; {clause}." + _verdict_clause(t.name, t.twin, gx, gy, same),
        verdicts_d,
        gx != gy,
        "scores",
        {x.task: x.n for x in tests},
        dicts,
    )


def _twin_fidelity_use(t: TwinFacts, verdicts: dict[str, VariantGuidance]) -> TwinUse:
    """Generation judged on the ROUGE-L of the greedy outputs against the dense ones, pooled over tasks."""
    f = t.fidelity
    assert f is not None
    gx, gy = _grades(t.name, t.twin, verdicts, "generative")
    lead = f"On generation, {t.name} keeps ROUGE-L {f.value:.2f} against {t.twin}'s {f.reference:.2f}"
    evidence = (
        f"(paired difference {f.difference:+.2f} [{f.interval[0]:+.2f}, {f.interval[1]:+.2f}], "
        f"{f.test} p = {f.p_value:.2g} on {f.n} prompts)"
    )
    if f.n < MIN_PAIRED_N:
        finding, tail = UNCLEAR, f"only {f.n} shared prompts (fewer than {MIN_PAIRED_N}): {UNCLEAR}"
    elif f.p_value < ALPHA and f.difference > 0:
        finding = TWIN_BETTER
        tail = f"{t.name}'s changed rule ({t.rule}) suits generation better on this model"
    elif f.p_value < ALPHA and f.difference < 0:
        finding = TWIN_WORSE
        tail = (
            f"{t.name}'s changed rule ({t.rule}) suits generation worse on this model "
            f"({t.twin}'s rule is the better choice here)"
        )
    else:
        finding, tail = TWIN_SAME, TWIN_SAME
    same = finding in (TWIN_SAME, UNCLEAR)
    tests = [{**x.to_dict(), "p_holm": None} for x in t.fidelity_tests]
    return TwinUse(
        "generative",
        finding,
        f"{lead} {evidence}: {tail}." + _verdict_clause(t.name, t.twin, gx, gy, same),
        {t.name: gx, t.twin: gy},
        gx != gy,
        "ROUGE-L to dense",
        {x.task: x.n for x in t.fidelity_tests} or {"pooled": f.n},
        [{**f.to_dict(), "task": "pooled", "p_holm": None}] + tests,
    )


def twin_guidance(
    twins: Iterable[TwinFacts], facts: Iterable[VariantFacts], axis: GenerativeAxis | None = None
) -> list[TwinGuidance]:
    """For every twin pair and use, one plain sentence from the paired differences between the twins: did
    the changed rule move the score (and which way), or are the twins indistinguishable at this n, and
    did it move the verdict. Non-generative use: per-task paired tests (exact McNemar / sign-flip),
    Holm-adjusted over the judged tasks. Generation: the study's generative measure (:func:`generative_axis`)
    — the ROUGE-L against the dense outputs pooled over the generative tasks (a sign-flip test on the
    shared prompts), or the generative task scores where the dense model scores."""
    facts = list(facts)
    axis = axis or generative_axis(facts)
    verdicts = {g.name: g for g in guidance(facts)}
    out = []
    for t in twins:
        non_gen = _twin_scores_use(t, verdicts, "non-generative", t.nongen_tests, True)
        if axis.kind == "fidelity" and t.fidelity is not None:
            gen = _twin_fidelity_use(t, verdicts)
        elif axis.kind == "fidelity":  # the dense model scores too little: its scores cannot tell the twins
            gen = _twin_scores_use(t, verdicts, "generative", [], False)
        else:
            gen = _twin_scores_use(t, verdicts, "generative", t.gen_tests, axis.kind == "score")
        out.append(TwinGuidance(t.name, t.twin, list(t.changed), non_gen, gen, t.numbers))
    return out
