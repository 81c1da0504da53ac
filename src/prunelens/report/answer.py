"""The answer to "does pruning work on this model?": one paragraph from the measured numbers, saying where
the model agrees with the paper's claims (non-generative scores survive, generation collapses, attention
drops are gentler than MLP drops) and, plainly, where it does not. Thresholds are the verdict rules'
(:mod:`prunelens.studies.verdicts`), read at call time.
"""

from __future__ import annotations

from collections.abc import Iterable

from prunelens.report.guidance import GROUP_LABELS, pct
from prunelens.studies import verdicts as V
from prunelens.studies.facts import VariantFacts, finite

__all__ = ["answer_for_model"]


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


def _family_sentences(model: str, groups: dict[str, list[VariantFacts]], gv: dict, fid: bool) -> list[str]:
    """Per family of variants, the range of retained non-generative and generative scores."""
    parts: list[str] = []
    first = True
    for g, fs in groups.items():
        ng = [v for f in fs if (v := f.retained_nongen) is not None and finite(v)]
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
    return parts


def _caution_sentences(facts: list[VariantFacts], near_chance: list[str], fid: bool) -> list[str]:
    """Near-chance tasks left out, and a dense generative score too small to divide by."""
    parts: list[str] = []
    if near_chance:
        parts.append(
            f"The dense model is near chance on {', '.join(near_chance)}: "
            f"{'that task is' if len(near_chance) == 1 else 'those tasks are'} left out of the judged "
            "non-generative averages."
        )
    dense_gen = next((f.dense_gen for f in facts if finite(f.dense_gen)), None)
    if finite(dense_gen) and dense_gen < V.MIN_DENSE_SCORE:  # type: ignore[operator]
        parts.append(
            f"Caution: the dense model's generative score ({dense_gen:.3f}) is below {V.MIN_DENSE_SCORE}, so "
            "retained generative fractions say little here; "
            + (
                "generation is judged instead by the fidelity to the dense generations "
                "(ROUGE-L, 1 = identical), "
                "with the probability-space divergence as the mechanism."
                if fid
                else "the probability-space divergence is the better evidence."
            )
        )
    return parts


def _gap_sentences(pruned: list[VariantFacts], gv: dict, fid: bool) -> list[str]:
    """The paper's claim that generation loses more than non-generative use (by at least GAP_MARGIN)."""
    both = [f for f in pruned if finite(f.retained_nongen) and gv[f.name] is not None]
    if not both:
        return []
    gap = [f for f in both if gv[f.name] < f.retained_nongen - V.GAP_MARGIN]  # type: ignore[operator]
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
        return [
            f"As the paper claims, every pruned variant loses more on {on_gen} than on the "
            "non-generative tasks."
        ]
    if gap:
        return [
            f"As the paper claims, {_names(gap)} lose{'s' if len(gap) == 1 else ''} more on {on_gen} "
            f"than on the non-generative tasks; unlike the paper's claim, {_names(nogap)} "
            f"lose{'s' if len(nogap) == 1 else ''} no more on generation (gap under "
            f"{round(100 * V.GAP_MARGIN)} points)."
        ]
    return [
        f"Unlike the paper's claim, no variant loses more on generation than on the non-generative "
        f"tasks (gap under {round(100 * V.GAP_MARGIN)} points)."
    ]


def _nongen_sentences(pruned: list[VariantFacts]) -> list[str]:
    """The paper's claim that non-generative scores survive pruning (keep at least CARE_RETAINED)."""
    hurt = [f for f in pruned if finite(f.retained_nongen) and f.retained_nongen < V.CARE_RETAINED]  # type: ignore[operator]
    if hurt:
        detail = []
        for f in hurt:
            mc = f.retained_by_kind.get("mc")
            detail.append(
                f"{f.name} keeps {pct(f.retained_nongen)}"
                + (f" ({pct(mc)} on multiple choice)" if finite(mc) else "")
            )
        mlp_mc = [
            f
            for f in hurt
            if f.group == "mlp"
            and finite(f.retained_by_kind.get("mc"))
            and f.retained_by_kind["mc"] < V.CARE_RETAINED  # type: ignore[operator]
        ]
        extra = " — MLP drops hurt multiple choice too" if mlp_mc else ""
        return [
            "Unlike the paper's claim that non-generative scores survive pruning, here "
            f"{'; '.join(detail)} of the non-generative score{extra}."
        ]
    if any(finite(f.retained_nongen) for f in pruned):
        return [
            f"As the paper claims, every pruned variant keeps at least {pct(V.CARE_RETAINED)} of the "
            "non-generative score."
        ]
    return []


def _attention_sentences(groups: dict[str, list[VariantFacts]], gv: dict, fid: bool) -> list[str]:
    """Attention and MLP drops of the same size (the paper: dropping attention is gentler on generation)."""
    attn = {f.n: f for f in groups.get("attn", []) if gv[f.name] is not None}
    mlp = {f.n: f for f in groups.get("mlp", []) if gv[f.name] is not None}
    show = (lambda v: f"ROUGE-L {v:.2f}") if fid else pct
    pairs = [(attn[n], mlp[n]) for n in sorted(set(attn) & set(mlp), key=lambda x: (x is None, x or 0))]
    agree = [(a, m) for a, m in pairs if gv[a.name] >= gv[m.name]]
    disagree = [(a, m) for a, m in pairs if gv[a.name] < gv[m.name]]
    parts: list[str] = []
    if agree:
        parts.append(
            "As in the paper, dropping attention is gentler on generation than dropping as many MLPs ("
            + "; ".join(f"{a.name} {show(gv[a.name])} vs {m.name} {show(gv[m.name])}" for a, m in agree)
            + ")."
        )
    if disagree:
        parts.append(
            "Unlike the paper, dropping attention hurts generation more than dropping as many MLPs ("
            + "; ".join(f"{a.name} {show(gv[a.name])} vs {m.name} {show(gv[m.name])}" for a, m in disagree)
            + ")."
        )
    return parts


def _divergence_sentences(pruned: list[VariantFacts]) -> list[str]:
    kl = [f for f in pruned if finite(f.kl)]
    if not kl:
        return []
    worst = max(kl, key=lambda f: f.kl)  # type: ignore[arg-type, return-value]
    best = min(kl, key=lambda f: f.kl)  # type: ignore[arg-type, return-value]
    s = f"The probability-space divergence (median KL) is largest for {worst.name} ({worst.kl:.3g})"
    s += f" and smallest for {best.name} ({best.kl:.3g})." if best is not worst else "."
    return [s]


def answer_for_model(model: str, facts: list[VariantFacts], near_chance: Iterable[str] = ()) -> str:
    """One paragraph answering "does pruning work on this model?" from the measured numbers.

    It summarises each family of variants (attention drops, MLP drops, …) by the range of retained
    non-generative and generative scores, then says where the model agrees with the paper's claim
    (non-generative scores survive, generation collapses, attention drops are gentler than MLP drops)
    and, plainly, where it does not. ``near_chance``: multiple-choice tasks on which the dense model is not
    clearly above random guessing; the answer warns that their retained fractions are noise.
    """
    pruned = [f for f in facts if not f.is_dense and not f.is_control]
    ax = V.generative_axis(facts)
    fid = ax.kind == "fidelity"
    gv = {f.name: ax.value(f) for f in pruned}  # the generative measure of each variant
    if not pruned:
        return f"No pruned variant of {model} has results yet, so there is nothing to answer."
    groups: dict[str, list[VariantFacts]] = {}
    for f in pruned:
        groups.setdefault(f.group, []).append(f)
    parts = _family_sentences(model, groups, gv, fid)
    parts += _caution_sentences(facts, list(near_chance), fid)
    parts += _gap_sentences(pruned, gv, fid)
    parts += _nongen_sentences(pruned)
    parts += _attention_sentences(groups, gv, fid)
    parts += _divergence_sentences(pruned)
    return " ".join(parts)
