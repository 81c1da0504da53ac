"""The sweep section of a study report: per ratio, the seeds aggregated, curves with error bands, and the
largest ratio whose verdict stays "indistinguishable from dense" for each use.

A sweep study (see :mod:`prunelens.studies.sweep`) records in ``study.json`` which variant is which
(ratio, calibration seed). Per ratio, over its seeds, four measures are aggregated:

* ``retained_nongen`` — pruned / dense, averaged over the multiple-choice + retrieval tasks (the report's
  :class:`~prunelens.studies.facts.VariantFacts`);
* ``rouge_l`` — generation fidelity: mean ROUGE-L F1 of the pruned greedy outputs against the dense ones
  (``eval/fidelity.json``), drawn beside the control's, the noise floor of a harmless perturbation;
* ``kl_teacher_forced`` — the median teacher-forced KL(p_dense ‖ p_pruned) along the dense continuation;
* ``predictor`` — the one-pass screen Var_p(Δz)/(2T²) (``predictor.json``).

Each gets its mean, min–max and a 95 % Student-t interval of the mean over seeds (``mean ± t·s/√n``, n − 1
degrees of freedom; none for one seed). The seeds are few, so the t-interval is wide on purpose: it is the
spread of what one calibration draw would give, not of the examples.

Verdict per use and ratio (:func:`ratio_verdict`): "indistinguishable from dense" when, at *every* seed,
the verdict rules (:mod:`prunelens.studies.verdicts`, read as the field
:attr:`~prunelens.studies.verdicts.UseOutcome.indistinguishable`) find the variant indistinguishable —
from dense on the Holm-adjusted paired task tests with an interval that excludes a large loss and enough
examples per task, and for generation also from the control's fidelity. Beside it, ``sweep.json`` records
the raw per-task evidence at each seed (:func:`nongen_indistinguishable`,
:func:`generative_indistinguishable`: the smallest unadjusted p of a paired test on the same examples,
p ≥ :data:`ALPHA` meaning no task tells the variant apart).
A verdict is three-valued: indistinguishable, told apart, or cannot tell.
:func:`largest_indistinguishable` walks the ratios upwards and stops at the first that is not
indistinguishable (told apart, or cannot tell).

Pure functions (:func:`t_quantile_975`, :func:`seed_interval`, :func:`ratio_verdict`,
:func:`largest_indistinguishable`, :func:`nongen_indistinguishable`) apart from the file reading and the
figure / page / file writing (:func:`build_sweep`).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from pathlib import Path
from typing import Any

from prunelens.report.guidance import INDISTINGUISHABLE, describe
from prunelens.report.load import Study
from prunelens.report.stats import finite_or_none, is_finite
from prunelens.studies.config import CONTROL, DENSE
from prunelens.studies.facts import VariantFacts
from prunelens.studies.verdicts import ALPHA, judge

__all__ = [
    "ALPHA",
    "METRICS",
    "USES",
    "t_quantile_975",
    "seed_interval",
    "ratio_verdict",
    "largest_indistinguishable",
    "nongen_indistinguishable",
    "generative_indistinguishable",
    "sweep_summary",
    "sweep_figure",
    "sweep_html",
    "build_sweep",
]

#: (key, label, log-y) of the aggregated measures, in the figure's panel order
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("retained_nongen", "retained non-generative score (pruned / dense)", False),
    ("rouge_l", "generation fidelity: ROUGE-L F1 to the dense outputs", False),
    ("kl_teacher_forced", "teacher-forced KL(p_dense ‖ p_pruned), median", True),
    ("predictor", "predictor Var_p(Δz)/(2T²), median", True),
)
_SHORT = {
    "retained_nongen": "retained non-generative",
    "rouge_l": "fidelity (ROUGE-L)",
    "kl_teacher_forced": "teacher-forced KL",
    "predictor": "predictor",
}
#: (key, label) of the uses judged
USES: tuple[tuple[str, str], ...] = (("non_generative", "non-generative use"), ("generative", "generation"))
INTERVAL_METHOD = "95 % Student-t interval of the mean over calibration seeds (mean ± t·s/√n, n − 1 df)"

# two-sided 95 % Student-t quantiles t_{0.975, df}, df = 1 … 30
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """``t_{0.975, df}``: tabulated to df = 30, then the Cornish–Fisher expansion around the normal quantile
    (error < 1e-3 there), so no statistics library is needed for a handful of seeds."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be ≥ 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def seed_interval(values: list[float | None]) -> dict[str, Any]:
    """Mean, min, max and the 95 % t-interval of the mean over seeds (the finite values only).

    ``n`` counts the seeds that measured the value; with one, ``low``/``high`` are ``None`` (one draw says
    nothing about the spread); with none, every number is ``None``.
    """
    xs = [float(v) for v in values if v is not None and is_finite(v)]
    n = len(xs)
    out: dict[str, Any] = {"n": n, "mean": None, "min": None, "max": None, "low": None, "high": None}
    if not n:
        return out
    mean = sum(xs) / n
    out.update(mean=mean, min=min(xs), max=max(xs))
    if n >= 2:
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
        half = t_quantile_975(n - 1) * sd / math.sqrt(n)
        out.update(low=mean - half, high=mean + half)
    return out


def ratio_verdict(per_seed: list[bool | None]) -> bool | None:
    """One ratio's verdict from its seeds': ``True`` (indistinguishable) only when every seed is; ``False``
    when any seed is told apart; ``None`` (not measured) otherwise."""
    if any(v is False for v in per_seed):
        return False
    if per_seed and all(v is True for v in per_seed):
        return True
    return None


def largest_indistinguishable(verdicts: list[tuple[float, bool | None]]) -> float | None:
    """The largest ratio up to which the verdict *stays* indistinguishable: walking the ratios upwards, the
    last one before the first that is not (told apart or not measured). ``None``: not even the smallest."""
    best = None
    for ratio, v in sorted(verdicts, key=lambda rv: rv[0]):
        if v is not True:
            break
        best = ratio
    return best


def nongen_indistinguishable(table: dict[str, Any] | None, name: str) -> tuple[bool | None, dict[str, Any]]:
    """Whether variant ``name`` is told apart from Full on any mc / retrieval task (paired test, p < ALPHA).

    Returns ``(verdict, detail)``; ``detail`` has the smallest p-value, its task and the tasks tested.
    ``None`` when the table has no paired test for this variant.
    """
    if not table or name not in table.get("models", []):
        return None, {"tasks": 0}
    i = table["models"].index(name)
    ps = []
    for r in table["rows"]:
        if r.get("kind") not in ("mc", "retrieval"):
            continue
        c = (r.get("paired") or [None] * (i + 1))[i]
        if isinstance(c, dict) and is_finite(c.get("p_value")):
            ps.append((float(c["p_value"]), r["task"], int(c.get("n") or 0)))
    if not ps:
        return None, {"tasks": 0}
    p, task, n = min(ps)
    return p >= ALPHA, {"tasks": len(ps), "min_p": p, "task": task, "n": n}


def _per_prompt_rouge(root: Path, name: str, task: str) -> dict[str, float] | None:
    """Per prompt id, ROUGE-L F1 of ``name``'s greedy output against Full's (None when either is missing)."""
    from prunelens.evaluation.fidelity import fidelity
    from prunelens.evaluation.runner import load_records

    dense, mine = load_records(root / "eval" / DENSE, task), load_records(root / "eval" / name, task)
    if not dense or len(dense) != len(mine):
        return None
    try:
        rows = fidelity(dense, mine, task=task).records
    except ValueError:
        return None
    return {str(r["id"]): float(r["rouge_l"]) for r in rows}


def generative_indistinguishable(
    root: Path, name: str, control: str, tasks: list[str]
) -> tuple[bool | None, dict[str, Any]]:
    """Whether ``name``'s fidelity to the dense outputs is told apart from the control's on any generative
    task: per prompt, ROUGE-L(variant, dense) against ROUGE-L(control, dense), a paired test on the same
    prompts (:func:`~prunelens.evaluation.uncertainty.compare_paired`).
    ``None`` without control or records."""
    from prunelens.evaluation.uncertainty import compare_paired

    ps = []
    for task in tasks:
        ref, mine = _per_prompt_rouge(root, control, task), _per_prompt_rouge(root, name, task)
        if not ref or not mine:
            continue
        ids = [k for k in ref if k in mine]
        if not ids:
            continue
        c = compare_paired([ref[k] for k in ids], [mine[k] for k in ids])
        ps.append((float(c.p_value), task, len(ids), c.difference))
    if not ps:
        return None, {"tasks": 0}
    p, task, n, diff = min(ps)
    return p >= ALPHA, {"tasks": len(ps), "min_p": p, "task": task, "n": n, "difference": diff}


def _control_rouge_band(root: Path, control: str, tasks: list[str]) -> dict[str, Any] | None:
    """The control's fidelity: mean ROUGE-L over the generative tasks and a 95 % bootstrap interval over its
    prompts (resampled within each task, the task means averaged — the same average as ``rouge_l``)."""
    import numpy as np

    per_task = [v for t in tasks if (v := _per_prompt_rouge(root, control, t))]
    if not per_task:
        return None
    rng = np.random.default_rng(0)
    arrays = [np.asarray(list(v.values())) for v in per_task]
    boots = np.mean([a[rng.integers(0, a.size, size=(2000, a.size))].mean(axis=1) for a in arrays], axis=0)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    mean = float(np.mean([a.mean() for a in arrays]))
    return {
        "mean": mean,
        "low": float(lo),
        "high": float(hi),
        "n": int(sum(a.size for a in arrays)),
        "interval": "95 % bootstrap over the control's prompts",
    }


def _guidance_verdicts(facts: list[VariantFacts]) -> dict[str, dict[str, tuple[bool | None, str]]]:
    """Per variant and use, the verdict rules' three-valued reading
    (:attr:`~prunelens.studies.verdicts.UseOutcome.indistinguishable`) and, for ``sweep.json``, the finding
    in the words of the guidance (or the grade where nothing was found)."""
    out: dict[str, dict[str, tuple[bool | None, str]]] = {}
    for o in judge(facts):
        out[o.name] = {}
        for key, _ in USES:
            use = o.use(key)
            out[o.name][key] = (use.indistinguishable, describe(use).finding or use.grade)
    return out


def sweep_summary(
    st: Study, table: dict[str, Any] | None, facts: list[VariantFacts]
) -> dict[str, Any] | None:
    """The aggregated sweep (what ``sweep.json`` holds); ``None`` when the study is not a sweep."""
    rec = st.meta.get("sweep")
    if not isinstance(rec, dict) or not isinstance(rec.get("variants"), list):
        return None
    from prunelens.evaluation.runner import task_kind

    by_name = {f.name: f for f in facts}
    control = rec.get("control") or CONTROL
    gen_tasks = [
        t["task"]
        for t in st.config.get("tasks") or []
        if isinstance(t, dict) and task_kind(t["task"]) == "gen"
    ]
    from_guidance = _guidance_verdicts(facts)
    ratios: dict[float, list[dict[str, Any]]] = {}
    for v in rec["variants"]:
        ratios.setdefault(float(v["ratio"]), []).append(v)
    rows = []
    for ratio in sorted(ratios):
        members = ratios[ratio]
        seeds = []
        for v in members:
            f = by_name.get(v["name"])
            ng, ng_detail = nongen_indistinguishable(table, v["name"])
            gen, gen_detail = generative_indistinguishable(st.root, v["name"], control, gen_tasks)
            if control not in st.variants:
                gen, gen_detail = None, {"tasks": 0, "why": "the study has no control variant"}
            mine = from_guidance.get(v["name"], {})
            ng, ng_detail["guidance"] = mine.get("non_generative", (None, "not judged"))
            gen, gen_detail["guidance"] = mine.get("generative", (None, "not judged"))
            seeds.append(
                {
                    "variant": v["name"],
                    "seed": v["seed"],
                    **{k: (finite_or_none(getattr(f, k)) if f else None) for k, _, _ in METRICS},
                    "indistinguishable": {"non_generative": ng, "generative": gen},
                    "tests": {"non_generative": ng_detail, "generative": gen_detail},
                }
            )
        rows.append(
            {
                "ratio": ratio,
                "label": (rec.get("ratio_labels") or {}).get(str(v["ratio"]), f"{ratio:g}"),
                "n_seeds": len(seeds),
                "seeds": seeds,
                "metrics": {k: seed_interval([s[k] for s in seeds]) for k, _, _ in METRICS},
                "indistinguishable": {
                    key: ratio_verdict([s["indistinguishable"][key] for s in seeds]) for key, _ in USES
                },
            }
        )
    cf = by_name.get(control)
    ctrl: dict[str, Any] = {k: (finite_or_none(getattr(cf, k)) if cf else None) for k, _, _ in METRICS}
    ctrl["rouge_l_band"] = _control_rouge_band(st.root, control, gen_tasks) if cf else None
    largest = {
        key: largest_indistinguishable([(r["ratio"], r["indistinguishable"][key]) for r in rows])
        for key, _ in USES
    }
    return {
        "family": rec.get("family"),
        "target": rec.get("target"),
        "method": rec.get("method"),
        "ratio_name": rec.get("ratio_name") or "ratio",
        "seeds": rec.get("effective_seeds") or rec.get("seeds"),
        "control": control,
        "interval": INTERVAL_METHOD,
        "rule": (
            f"the report's guidance at every seed: the finding is '{INDISTINGUISHABLE}' "
            "(for generation also indistinguishable from the control's fidelity); 'lower than' at any seed "
            "is told apart, anything else (too few examples, not measured) cannot tell"
        ),
        "rows": rows,
        "control_reference": ctrl,
        "largest_indistinguishable": largest,
        "labels": {str(r["ratio"]): r["label"] for r in rows},
    }


def sweep_csv(summary: dict[str, Any]) -> str:
    """One line per ratio × measure: mean, t-interval, min–max and the number of seeds."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["ratio", "label", "measure", "mean", "low", "high", "min", "max", "n_seeds"])
    for r in summary["rows"]:
        for key, _, _ in METRICS:
            m = r["metrics"][key]
            w.writerow(
                [r["ratio"], r["label"], key]
                + ["" if m[k] is None else m[k] for k in METRICS_FIELDS]
                + [m["n"]]
            )
    return buf.getvalue()


METRICS_FIELDS = ("mean", "low", "high", "min", "max")


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


def _e(s: Any) -> str:
    return html.escape("" if s is None else str(s), quote=True)


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
        '<div class="answer">' + "".join(f"<p>{_e(s)}</p>" for s in marked_sentences(summary)) + "</div>"
    ]
    parts.append(
        f'<p class="sub">{_e(summary["ratio_name"])}, calibration seeds {_e(summary["seeds"])}. Rule: '
        f"{_e(summary['rule'])}. Intervals: {_e(summary['interval'])}; few seeds make them wide.</p>"
    )
    if figure is not None and figure.exists():
        data = base64.b64encode(figure.read_bytes()).decode("ascii")
        alt = "Sweep: retained score, fidelity, teacher-forced KL and predictor against the ratio"
        parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}"><figcaption>'
            "Each measure against the ratio: the line is the mean over calibration seeds, the shaded band "
            "its 95 % t-interval, the dots single seeds; dashed orange: the control (bfloat16 rounding), "
            "with its bootstrap band for fidelity; green: the largest ratio still indistinguishable from "
            "dense."
            "</figcaption></figure>"
        )
    head = "".join(f'<th colspan="2">{_e(_SHORT[key])}</th>' for key, _, _ in METRICS)
    parts.append(
        f'<div class="tablewrap"><table><thead><tr><th class="l">{_e(summary["ratio_name"])}</th>'
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
            f'<tr><td class="l">{_e(r["label"])}</td><td>{r["n_seeds"]}</td>'
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
