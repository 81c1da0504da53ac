"""The sweep section's figure and page body (the marked ratios, the curves, the per-ratio table), and
:func:`build_sweep`, which writes ``sweep.json``, ``sweep.csv`` and the figure; the numbers and verdicts
come from :func:`prunelens.report.sweep.sweep_summary`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from prunelens.report.load import Study
from prunelens.report.markup import esc, img
from prunelens.report.stats import is_finite
from prunelens.report.sweep import METRICS, SHORT_LABELS, USES, sweep_csv, sweep_summary
from prunelens.studies.facts import VariantFacts

__all__ = ["sweep_figure", "marked_sentences", "sweep_html", "build_sweep"]


def sweep_figure(summary: dict[str, Any], directory: str | Path) -> list[Path]:
    """The four measures against the ratio: mean line, shaded 95 % t-interval over seeds, each seed a dot;
    the control as a dashed line (with its bootstrap band for fidelity); the largest indistinguishable
    ratio per use as a vertical line on the retained-score and fidelity panels. Log-y for KL and the
    predictor (a band's non-positive part is clipped there)."""
    from prunelens.analysis.figures import pyplot, save

    plt = pyplot()
    rows = summary["rows"]
    xs = [r["ratio"] for r in rows]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.6), sharex=True)
    ctrl = summary["control_reference"]
    largest = summary["largest_indistinguishable"]
    marks = {"retained_nongen": "non_generative", "rouge_l": "generative"}
    for ax, (key, label, log) in zip(axes.flat, METRICS):
        pts = [(r["ratio"], r["metrics"][key]) for r in rows if r["metrics"][key]["mean"] is not None]
        if pts:
            x = [p[0] for p in pts]
            mean = [p[1]["mean"] for p in pts]
            floor = min(v for _, m in pts for v in (m["min"],) if v is not None)
            floor = floor / 10 if log and floor > 0 else (1e-12 if log else -math.inf)
            lo = [max(floor, m["low"] if m["low"] is not None else m["mean"]) for _, m in pts]
            hi = [m["high"] if m["high"] is not None else m["mean"] for _, m in pts]
            ax.fill_between(x, lo, hi, color="#1f77b4", alpha=0.2, lw=0, label="95 % t-interval over seeds")
            ax.plot(x, mean, "-o", color="#1f77b4", ms=4, label="mean over seeds")
            sx = [r["ratio"] for r in rows for s in r["seeds"] if is_finite(s[key])]
            sy = [s[key] for r in rows for s in r["seeds"] if is_finite(s[key])]
            if log:
                sx, sy = [a for a, b in zip(sx, sy) if b > 0], [b for b in sy if b > 0]
            ax.scatter(sx, sy, s=10, color="#444444", alpha=0.6, zorder=3, label="one seed")
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="#777")
        if key == "retained_nongen":
            ax.axhline(1.0, color="#222222", lw=0.8, ls=":", label="dense")
        c = ctrl.get(key)
        band = ctrl.get("rouge_l_band") if key == "rouge_l" else None
        if band:
            ax.axhspan(band["low"], band["high"], color="#ff7f0e", alpha=0.15, lw=0)
        if is_finite(c) and (not log or c > 0):
            ax.axhline(c, color="#ff7f0e", lw=1.2, ls="--", label=f"control ({summary['control']})")
        if key in marks and largest.get(marks[key]) is not None:
            ax.axvline(largest[marks[key]], color="#2ca02c", lw=1.2, label="largest indistinguishable")
        if log and (pts or (is_finite(c) and c > 0)):
            ax.set_yscale("log")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="best")
    for ax in axes[1]:
        ax.set_xlabel(summary["ratio_name"])
    if summary.get("family") == "drop":
        for ax in axes.flat:
            ax.set_xticks(xs)
    return save(fig, directory, "sweep")


def _fmt(v: Any, key: str) -> str:
    if not is_finite(v):
        return "—"
    if key in ("retained_nongen", "rouge_l"):
        return f"{v:.3f}"
    return f"{v:.3g}"


def _why(verdict: bool | None) -> str:
    if verdict is False:
        return "is told apart from dense at some seed"
    return "cannot be called indistinguishable at some seed (too few examples, or not measured)"


def marked_sentences(summary: dict[str, Any]) -> list[str]:
    """One sentence per use: the largest ratio whose verdict stays indistinguishable from dense, or none."""
    labels = summary["labels"]
    rows = summary["rows"]
    out = []
    for key, use in USES:
        best = summary["largest_indistinguishable"][key]
        first = next((r for r in rows if r["indistinguishable"][key] is not True), None)
        if not rows:
            out.append(f"For {use}, none: no ratio was run.")
        elif best is None:
            smallest = rows[0]
            out.append(
                f"For {use}, none: even the smallest ratio ({labels[str(smallest['ratio'])]}) "
                f"{_why(smallest['indistinguishable'][key])}."
            )
        else:
            tail = ""
            if first is not None:
                tail = f"; the next, {labels[str(first['ratio'])]}, {_why(first['indistinguishable'][key])}"
            out.append(
                f"For {use}, the largest ratio that stays indistinguishable from dense at every seed is "
                f"{labels[str(best)]} ({summary['ratio_name']}){tail}."
            )
    return out


def sweep_html(summary: dict[str, Any], figure: Path | None) -> str:
    """The page's sweep section body: the marked ratios, the figure (data URI) and the per-ratio table."""
    parts = [
        '<div class="answer">' + "".join(f"<p>{esc(s)}</p>" for s in marked_sentences(summary)) + "</div>"
    ]
    parts.append(
        f'<p class="sub">{esc(summary["ratio_name"])}, calibration seeds {esc(summary["seeds"])}. Rule: '
        f"{esc(summary['rule'])}. Intervals: {esc(summary['interval'])}; few seeds make them wide.</p>"
    )
    if figure is not None and figure.exists():
        alt = "Sweep: retained score, fidelity, teacher-forced KL and predictor against the ratio"
        parts.append(
            f"<figure>{img(figure, alt)}<figcaption>"
            "Each measure against the ratio: the line is the mean over calibration seeds, the shaded band "
            "its 95 % t-interval, the dots single seeds; dashed orange: the control (bfloat16 rounding), "
            "with its bootstrap band for fidelity; green: the largest ratio still indistinguishable from "
            "dense."
            "</figcaption></figure>"
        )
    head = "".join(f'<th colspan="2">{esc(SHORT_LABELS[key])}</th>' for key, _, _ in METRICS)
    parts.append(
        f'<div class="tablewrap"><table><thead><tr><th class="l">{esc(summary["ratio_name"])}</th>'
        "<th>seeds</th>" + head + "<th>non-generative</th><th>generation</th></tr></thead><tbody>"
    )
    word = {True: "indistinguishable", False: "told apart", None: "cannot tell"}
    for r in summary["rows"]:
        cells = []
        for key, _, _ in METRICS:
            m = r["metrics"][key]
            iv = (
                f'<span class="ci">[{_fmt(m["low"], key)}, {_fmt(m["high"], key)}]</span>'
                if m["low"] is not None
                else ""
            )
            rng = (
                f'<span class="ci">min–max {_fmt(m["min"], key)}–{_fmt(m["max"], key)}</span>'
                if m["n"]
                else ""
            )
            cells.append(
                f'<td>{_fmt(m["mean"], key)}{iv}</td><td>{rng}<span class="ci">n = {m["n"]}</span></td>'
            )
        verdicts = "".join(f"<td>{word[r['indistinguishable'][k]]}</td>" for k, _ in USES)
        parts.append(
            f'<tr><td class="l">{esc(r["label"])}</td><td>{r["n_seeds"]}</td>'
            + "".join(cells)
            + verdicts
            + "</tr>"
        )
    c = summary["control_reference"]
    parts.append(
        '<tr class="avg"><td class="l">control</td><td>1</td>'
        + "".join(f"<td>{_fmt(c.get(k), k)}</td><td></td>" for k, _, _ in METRICS)
        + "<td></td><td></td></tr></tbody></table></div>"
    )
    return "".join(parts)


def build_sweep(
    st: Study, table: dict[str, Any] | None, facts: list[VariantFacts], out: str | Path
) -> tuple[dict[str, Any], list[Path], str] | None:
    """Write ``sweep.json``, ``sweep.csv`` and ``figures/sweep.png|svg`` into ``out`` (the report directory);
    return ``(summary, figure paths, section html)``, or ``None`` when the study is not a sweep."""
    from prunelens.utils.io import atomic_write_json, atomic_write_text

    summary = sweep_summary(st, table, facts)
    if summary is None:
        return None
    out = Path(out)
    atomic_write_json(out / "sweep.json", summary)
    atomic_write_text(out / "sweep.csv", sweep_csv(summary))
    paths = sweep_figure(summary, out / "figures")
    return summary, paths, sweep_html(summary, paths[0] if paths else None)
