"""The study figures and their captions: retained scores and probability-space divergence per variant, and the
one-pass predictor against measured generative degradation."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from prunelens.report.guidance import GROUP_LABELS, axis_cause, axis_label, pct
from prunelens.report.stats import finite_or_none, is_finite, spearman
from prunelens.studies.config import DENSE
from prunelens.studies.facts import VariantFacts
from prunelens.studies.verdicts import GenerativeAxis, generative_axis

__all__ = ["story_figure", "predictor_figure", "story_caption", "predictor_caption"]

_COLORS = {
    "dense": "#222222",
    "attn": "#1f77b4",
    "mlp": "#d62728",
    "block": "#9467bd",
    "joint": "#8c564b",
    "sparse": "#2ca02c",
    "other": "#7f7f7f",
}


_LABEL_OFFSETS = ((5, 4), (5, -11), (-8, 8), (-8, -13), (12, 14), (12, -19))


def _label_points(ax, pts: list[tuple[str, float, float]], near: tuple[float, float]) -> None:
    """Name each point; a point within ``near`` (x, y, in axis fractions) of points already named gets the
    next offset around it, so clustered variants stay readable."""
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    log = ax.get_xscale() == "log"

    def frac(x: float, y: float) -> tuple[float, float]:
        if log:
            fx = (math.log10(x) - math.log10(x0)) / (math.log10(x1) - math.log10(x0))
        else:
            fx = (x - x0) / ((x1 - x0) or 1)
        return fx, (y - y0) / ((y1 - y0) or 1)

    placed: list[tuple[float, float]] = []
    for name, x, y in sorted(pts, key=lambda p: (p[1], p[2])):
        fx, fy = frac(x, y)
        k = sum(1 for px, py in placed if abs(px - fx) < near[0] and abs(py - fy) < near[1])
        dx, dy = _LABEL_OFFSETS[k % len(_LABEL_OFFSETS)]
        ax.annotate(
            name,
            (x, y),
            xytext=(dx, dy),
            textcoords="offset points",
            fontsize=8.5,
            ha="right" if dx < 0 else "left",
        )
        placed.append((fx, fy))


def _error_bars(ax, x: float, y: float, xiv, yiv, group: str) -> None:
    """95 % interval bars around a variant's point (either may be missing)."""
    if xiv is None and yiv is None:
        return
    xerr = [[max(0.0, x - xiv[0])], [max(0.0, xiv[1] - x)]] if xiv else None
    yerr = [[max(0.0, y - yiv[0])], [max(0.0, yiv[1] - y)]] if yiv else None
    ax.errorbar(
        [x],
        [y],
        xerr=xerr,
        yerr=yerr,
        fmt="none",
        ecolor=_COLORS.get(group, "#7f7f7f"),
        alpha=0.55,
        elinewidth=1.1,
        capsize=2.5,
        zorder=3,
    )


def story_figure(
    facts: list[VariantFacts], directory: str | Path, axis: GenerativeAxis | None = None
) -> list[Path]:
    """Left: retained non-generative (x) vs the generative measure (y, see :func:`generative_axis`) per
    variant, ``y = x``, dense at (1, 1). Right: median probability-space KL per variant (sublayer transitions,
    teacher-forced, free-running)."""
    from prunelens.analysis.figures import pyplot, save

    axis = axis or generative_axis(facts)
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1, 1.25]})
    _retained_panel(ax, facts, axis)
    _divergence_panel(bx, facts)
    fig.tight_layout()
    return save(fig, directory, "retained_and_divergence")


def _retained_panel(ax, facts: list[VariantFacts], axis: GenerativeAxis) -> None:
    """Retained non-generative (x) against the generative measure (y) per variant, with ``y = x``."""
    gen = {f.name: axis.value(f) for f in facts}
    pts = [f for f in facts if not f.is_dense and is_finite(f.retained_nongen) and gen[f.name] is not None]
    # each axis spans its own data (and the dense point at 1): clustered variants spread out; y = x is kept
    xs = [f.retained_nongen for f in pts] + [1.0]
    ys = [gen[f.name] for f in pts] + [1.0]
    xpad, ypad = max(0.02, 0.08 * (max(xs) - min(xs))), max(0.03, 0.08 * (max(ys) - min(ys)))
    xlo, xhi, ylo, yhi = min(xs) - xpad, max(xs) + xpad, min(ys) - ypad, max(ys) + ypad
    lo, hi = min(xlo, ylo), max(xhi, yhi)
    ax.plot([lo, hi], [lo, hi], "--", color="#999", lw=1, label="y = x (no extra loss on generation)")
    ax.fill_between([lo, hi], [lo, lo], [lo, hi], color="#d62728", alpha=0.05)
    ax.scatter([1], [1], marker="*", s=220, color=_COLORS["dense"], zorder=5, label=f"{DENSE} (dense)")
    seen = set()
    for f in pts:
        lab = GROUP_LABELS.get(f.group, f.group) if f.group not in seen else None
        seen.add(f.group)
        _error_bars(ax, f.retained_nongen, gen[f.name], f.retained_nongen_interval, axis.interval(f), f.group)
        ax.scatter(
            [f.retained_nongen],
            [gen[f.name]],
            s=60,
            color=_COLORS.get(f.group, "#7f7f7f"),
            zorder=4,
            label=lab,
            edgecolors="white",
            linewidths=0.8,
        )
    ax.set_xlim(xlo, xhi)
    ax.set_ylim(ylo, yhi)
    _label_points(ax, [(f.name, f.retained_nongen, gen[f.name]) for f in pts], near=(0.12, 0.05))
    ax.set_xlabel("retained non-generative score (pruned / dense)")
    ax.set_ylabel(axis_label(axis))
    ax.set_title("What pruning keeps: non-generative vs generative", fontsize=10.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="best")
    if not pts:
        ax.text(0.5, 0.5, "no variant has both scores", transform=ax.transAxes, ha="center", color="#777")


def _divergence_panel(bx, facts: list[VariantFacts]) -> None:
    """Median probability-space KL per variant: sublayer transitions, teacher-forced, free-running."""
    kl = [
        f
        for f in facts
        if not f.is_dense
        and any(is_finite(v) for v in (f.kl_transitions, f.kl_teacher_forced, f.kl_free_running))
    ]
    series = (
        ("kl_transitions", "sublayer transitions", "#ff7f0e"),
        ("kl_teacher_forced", "decoding, teacher-forced", "#9467bd"),
        ("kl_free_running", "decoding, free-running", "#d62728"),
    )
    present = [s for s in series if any(is_finite(getattr(f, s[0])) for f in kl)]
    width = 0.8 / max(1, len(present))
    allv = []
    for j, (attr, label, color) in enumerate(present):
        xs = [i + (j - (len(present) - 1) / 2) * width for i in range(len(kl))]
        ys = [getattr(f, attr) if is_finite(getattr(f, attr)) else 0.0 for f in kl]
        allv += [y for y in ys if y > 0]
        bx.bar(xs, ys, width=width, color=color, label=label)
    bx.set_xticks(range(len(kl)))
    bx.set_xticklabels([f.name for f in kl], rotation=30, ha="right", fontsize=8.5)
    if allv and max(allv) / min(allv) > 50:
        bx.set_yscale("log")
        bx.set_ylim(top=max(allv) * 30)  # headroom for the legend above the bars
    elif allv:
        bx.set_ylim(top=max(allv) * 1.35)
    bx.set_ylabel("median KL(p_dense ‖ p_pruned)")
    bx.set_title("How far the probabilities move (probability space)", fontsize=10.5)
    bx.grid(alpha=0.3, axis="y", which="both")
    if present:
        bx.legend(fontsize=8, loc="upper left", ncol=len(present))
    else:
        bx.text(0.5, 0.5, "no analysis results", transform=bx.transAxes, ha="center", color="#777")
        bx.set_xticks([])


def predictor_figure(
    facts: list[VariantFacts], directory: str | Path, axis: GenerativeAxis | None = None
) -> tuple[list[Path], float | None, int]:
    """The one-pass predictor ``Var_p(Δz)/(2T²)`` (x, log) against generative degradation
    ``1 − the generative measure`` (y: retained score, or ROUGE-L fidelity to dense; see
    :func:`generative_axis`).

    Returns ``(paths, spearman ρ, number of variants)``; no figure when no variant has both numbers.
    """
    from prunelens.analysis.figures import pyplot, save

    axis = axis or generative_axis(facts)
    loss = {f.name: 1 - v for f in facts if (v := axis.value(f)) is not None}
    pts = [
        f for f in facts if not f.is_dense and is_finite(f.predictor) and f.predictor > 0 and f.name in loss
    ]
    if not pts:
        return [], None, 0
    rho = spearman([f.predictor for f in pts], [loss[f.name] for f in pts])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for f in pts:
        iv = axis.interval(f)
        _error_bars(ax, f.predictor, loss[f.name], None, (1 - iv[1], 1 - iv[0]) if iv else None, f.group)
        ax.scatter(
            [f.predictor],
            [loss[f.name]],
            s=60,
            color=_COLORS.get(f.group, "#7f7f7f"),
            zorder=4,
            edgecolors="white",
            linewidths=0.8,
        )
    ax.set_xscale("log")
    xs = [f.predictor for f in pts]
    ax.set_xlim(min(xs) / 2, max(xs) * 2)
    _label_points(ax, [(f.name, f.predictor, loss[f.name]) for f in pts], near=(0.15, 0.06))
    ax.axhline(0, color="#999", lw=1, ls="--")
    ax.set_xlabel("predictor Var_p(Δz) / (2T²)  (one teacher-forced pass)")
    lost = "ROUGE-L vs dense" if axis.kind == "fidelity" else "retained score"
    ax.set_ylabel("generative degradation (1 − " + lost + ")")
    rtxt = (
        f"Spearman ρ = {rho:.2f}"
        if rho is not None and len(pts) >= 3
        else "too few variants for a correlation"
    )
    ax.set_title(f"Cheap predictor vs measured degradation — {rtxt} (n = {len(pts)})", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return save(fig, directory, "predictor"), rho, len(pts)


# ----------------------------------------------------------------------------------------------------
# captions (one sentence from the data)


def story_caption(facts: list[VariantFacts], axis: GenerativeAxis | None = None) -> str:
    axis = axis or generative_axis(facts)
    gen = {f.name: axis.value(f) for f in facts}
    pts = [f for f in facts if not f.is_dense and gen[f.name] is not None]
    if not pts:
        return "No pruned variant has a generative score or fidelity yet, so generation cannot be compared."
    worst = min(pts, key=lambda f: gen[f.name])
    best = max(pts, key=lambda f: gen[f.name])
    fid = axis.kind == "fidelity"

    def say(f: VariantFacts) -> str:
        s = (
            f"{f.name}'s generations reach a ROUGE-L of {gen[f.name]:.2f} against the dense ones"
            if fid
            else f"{f.name} keeps {pct(gen[f.name])} of the generative score"
        )
        if is_finite(f.retained_nongen):
            s += f" ({pct(f.retained_nongen)} of the non-generative score kept)"
        s += f" and its median probability-space KL is {f.kl:.3g}" if is_finite(f.kl) else " (no KL measured)"
        return s

    both = [f for f in pts if is_finite(f.retained_nongen)]
    below = sum(1 for f in both if gen[f.name] < f.retained_nongen)
    tail = f"; {below} of {len(both)} variants lie below y = x, losing more on generation" if both else ""
    because = f"because {axis_cause(axis)}. "
    lead = f"Generation is measured as fidelity to the dense outputs {because}" if fid else ""
    bars = (
        " Bars: 95% intervals (paired bootstrap over the shared examples; prompts resampled within each "
        "generative task)."
        if any(f.retained_nongen_interval or axis.interval(f) for f in pts)
        else ""
    )
    if best is worst:
        return f"{lead}{say(worst)}{tail}.{bars}"
    return f"{lead}{say(worst)}, while {say(best)}{tail}.{bars}"


def predictor_caption(
    facts: list[VariantFacts],
    rho: float | None,
    n: int,
    predictor: dict[str, Any] | None = None,
    axis: GenerativeAxis | None = None,
) -> str:
    if n == 0:
        return ""
    axis = axis or generative_axis(facts)
    pts = sorted(
        (f for f in facts if not f.is_dense and is_finite(f.predictor) and axis.value(f) is not None),
        key=lambda f: f.predictor,
    )
    what = (
        "1 − ROUGE-L against the dense generations"
        if axis.kind == "fidelity"
        else "1 − retained generative score"
    )
    rtxt = (
        f"the Spearman correlation between predictor and degradation ({what}) across {n} variants is "
        f"{rho:.2f}"
        if rho is not None and n >= 3
        else f"with {n} variant{'s' if n != 1 else ''} no correlation is computed"
    )
    ratios = []
    for f in pts:
        kl = finite_or_none(((predictor or {}).get(f.name) or {}).get("kl"))
        if kl and kl > 0:
            ratios.append(f.predictor / kl)
    est = f"; its median ratio to the measured KL is {statistics.median(ratios):.2f}" if ratios else ""
    return (
        f"The predictor ranges from {pts[0].predictor:.3g} ({pts[0].name}) to {pts[-1].predictor:.3g} "
        f"({pts[-1].name}); {rtxt}{est}."
    )
