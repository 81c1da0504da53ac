"""The study report: from a study directory's stored results, tables, figures, guidance and ``report.html``.

Usage::

    from prunelens.study.report import build_report
    build_report("runs/study")        # → runs/study/report/report.html   (CLI: ``prunelens report DIR``)

Reads (every file optional; what is missing is listed in the report, nothing crashes)::

    STUDY/study.json                         config, versions, created, timings
    STUDY/variants/<v>/info.json             name, parameters, prune plan
    STUDY/eval/<v>/summary.json              scores per task
    STUDY/eval/fidelity.json                 pruned vs dense generations
    STUDY/analysis/<v>/summary.json          representation-hierarchy headline numbers
    STUDY/analysis/<v>/figures/*.png         the analysis figures (embedded as they are)
    STUDY/predictor.json                     the one-pass predictor Var_p(Δz)/(2T²) per variant
    STUDY/case_study.json                    the same prompts answered by every variant

Writes ``STUDY/report/``: ``table.csv|md|json`` (the paper's Table 1/2 shape, via
:func:`prunelens.evaluate.runner.comparison_table`), ``figures/*.png|svg`` (retained scores and
probability-space divergence; predictor against measured degradation), ``guidance.json`` and one
self-contained ``report.html`` (images as base64 data URIs, inline CSS, no scripts, no network).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelens.study import guidance as G
from prunelens.study.config import DENSE
from prunelens.study.guidance import VariantFacts, pct

__all__ = ["Study", "load_study", "build_tables", "variant_facts", "rankdata", "spearman", "story_figure",
           "predictor_figure", "render_html", "build_report", "REPORT_DIR", "DENSE"]

REPORT_DIR = "report"
_NON_GEN = ("mc", "retrieval")
_KIND_LABEL = {"mc": "multiple choice", "retrieval": "retrieval", "gen": "generation", "ppl": "perplexity ↓"}


# ----------------------------------------------------------------------------------------------------
# statistics (pure)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def rankdata(values: Sequence[float]) -> list[float]:
    """Ranks 1…n, ties given the average of the ranks they span (``[10, 20, 20, 30] → [1, 2.5, 2.5, 4]``)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        avg = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = avg
        i = j + 1
    return ranks


def spearman(x: Sequence[float | None], y: Sequence[float | None]) -> float | None:
    """Spearman's rank correlation: the Pearson correlation of the average-tie ranks of ``x`` and ``y``.

    ``ρ = Σ (r_i − r̄)(s_i − s̄) / sqrt(Σ (r_i − r̄)² · Σ (s_i − s̄)²)`` over the pairs where both values are
    finite. ``None`` when fewer than two pairs remain or either side is constant.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length ({len(x)} vs {len(y)})")
    pairs = [(a, b) for a, b in zip(x, y) if _finite(a) and _finite(b)]
    if len(pairs) < 2:
        return None
    r = rankdata([a for a, _ in pairs])
    s = rankdata([b for _, b in pairs])
    mr, ms = sum(r) / len(r), sum(s) / len(s)
    cov = sum((a - mr) * (b - ms) for a, b in zip(r, s))
    vr = sum((a - mr) ** 2 for a in r)
    vs = sum((b - ms) ** 2 for b in s)
    if vr == 0 or vs == 0:
        return None
    return max(-1.0, min(1.0, cov / math.sqrt(vr * vs)))


# ----------------------------------------------------------------------------------------------------
# reading the study directory


@dataclass
class Study:
    """Everything stored in a study directory (``None`` / empty where a file is missing)."""

    root: Path
    meta: dict[str, Any] = field(default_factory=dict)  # study.json
    variants: list[str] = field(default_factory=list)  # Full first, then config order
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    infos: dict[str, dict[str, Any]] = field(default_factory=dict)
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    fidelity: dict[str, Any] | None = None
    analysis: dict[str, dict[str, Any]] = field(default_factory=dict)  # flat headline numbers per variant
    analysis_figures: dict[str, list[Path]] = field(default_factory=dict)
    predictor: dict[str, Any] | None = None
    case_study: dict[str, Any] | None = None
    missing: list[str] = field(default_factory=list)  # what is missing and what that means for the report

    @property
    def config(self) -> dict[str, Any]:
        c = self.meta.get("config")
        return c if isinstance(c, dict) else {}

    @property
    def model(self) -> str:
        m = self.config.get("model")
        if isinstance(m, str) and m:
            return m
        for s in self.summaries.values():
            name = (s.get("model") or {}).get("base_model") or (s.get("model") or {}).get("spec")
            if isinstance(name, str) and name:
                return name
        return "the studied model"


def _read_json(path: Path, study: Study, consequence: str) -> Any:
    rel = path.relative_to(study.root).as_posix() if path.is_relative_to(study.root) else str(path)
    if not path.exists():
        study.missing.append(f"{rel} is missing: {consequence}")
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        study.missing.append(f"{rel} could not be read ({type(exc).__name__}: {exc}): {consequence}")
        return None


def _dig(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _num(v: Any) -> float | None:
    return float(v) if _finite(v) else None


def _first(*vals: Any) -> float | None:
    for v in vals:
        if _finite(v):
            return float(v)
    return None


def analysis_numbers(vs: dict[str, Any]) -> dict[str, float | None]:
    """Flat headline numbers from one variant's analysis summary.

    Reads both the short shape (``transitions.median_cos.p``, ``trajectories.free_running.median_cos_p``,
    ``subspace.choice_flip_rate`` …) and the analysis pipeline's own (``transitions.variant_sublayers…``,
    ``trajectories.<regime>.median_cos.p``, ``subspace.chosen_option_changed`` …).
    """
    if not isinstance(vs, dict):
        return {}
    tr = vs.get("transitions") if isinstance(vs.get("transitions"), dict) else {}
    t = tr.get("variant_sublayers") or tr.get("all_sublayers") or tr
    out: dict[str, float | None] = {
        "cos_h": _num(_dig(t, "median_cos", "h")), "cos_z": _num(_dig(t, "median_cos", "z")),
        "cos_p": _num(_dig(t, "median_cos", "p")), "kl_transitions": _num(_dig(t, "median_kl")),
        "ratio_theorem2": _first(_dig(t, "ratio_theorem2"), _dig(t, "median_estimate_ratio", "theorem2")),
        "ratio_theorem3": _first(_dig(t, "ratio_theorem3"), _dig(t, "median_estimate_ratio", "theorem3")),
    }
    traj = vs.get("trajectories") if isinstance(vs.get("trajectories"), dict) else {}
    for regime, short in (("teacher_forced", "tf"), ("free_running", "fr")):
        r = traj.get(regime) if isinstance(traj.get(regime), dict) else {}
        out[f"{short}_cos_p"] = _first(r.get("median_cos_p"), _dig(r, "median_cos", "p"))
        out[f"{short}_kl"] = _num(r.get("median_kl"))
    fr = traj.get("free_running") if isinstance(traj.get("free_running"), dict) else {}
    fd = fr.get("first_divergence_median")
    if not _finite(fd) and isinstance(fr.get("first_divergence_steps"), list):
        steps = [s for s in fr["first_divergence_steps"] if _finite(s)]
        fd = statistics.median(steps) if steps else None
    out["first_divergence"] = _num(fd)
    sub = vs.get("subspace") if isinstance(vs.get("subspace"), dict) else {}
    out["choice_flip_rate"] = _first(sub.get("choice_flip_rate"), sub.get("chosen_option_changed"))
    out["kl_options"] = _first(sub.get("median_kl_options"), _dig(sub, "median_kl", "options"))
    out["kl_full"] = _first(sub.get("median_kl_full"), _dig(sub, "median_kl", "full"))
    return out


def _subdirs(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")) if path.is_dir() else []


def load_study(study_dir: str | Path) -> Study:
    """Read whatever a study directory holds; every missing or unreadable file is noted in ``missing``."""
    root = Path(study_dir)
    st = Study(root=root)
    if not root.is_dir():
        st.missing.append(f"{root} is not a directory: there is nothing to report")
        return st
    meta = _read_json(root / "study.json", st, "the config, versions and timings are not shown")
    st.meta = meta if isinstance(meta, dict) else {}
    names: list[str] = []
    for v in st.config.get("variants") or []:
        if isinstance(v, dict) and isinstance(v.get("name"), str):
            names.append(v["name"])
            st.specs[v["name"]] = v
    for sub in ("variants", "eval", "analysis"):
        names += [n for n in _subdirs(root / sub) if n not in names]
    names = [DENSE] + [n for n in names if n != DENSE]
    st.variants = names
    for n in names:
        d = root / "variants" / n / "info.json"
        if d.exists() or n in st.specs or (root / "variants").is_dir():
            info = _read_json(d, st, f"the parameter count and prune plan of {n} come from its evaluation only")
            if isinstance(info, dict):
                st.infos[n] = info
        s = _read_json(root / "eval" / n / "summary.json", st, f"{n} has no scores in the table")
        if isinstance(s, dict) and isinstance(s.get("results"), dict):
            st.summaries[n] = s
        elif s is not None:
            st.missing.append(f"eval/{n}/summary.json has no 'results' mapping: {n} has no scores in the table")
        if n != DENSE:
            a_path = root / "analysis" / n / "summary.json"
            a = _read_json(a_path, st, f"{n} has no representation-hierarchy numbers")
            if isinstance(a, dict):
                vs = a.get("variants")
                if isinstance(vs, dict):
                    vs = vs.get(n) if n in vs else (next(iter(vs.values())) if len(vs) == 1 else None)
                else:
                    vs = a
                st.analysis[n] = analysis_numbers(vs) if isinstance(vs, dict) else {}
            figs = sorted((root / "analysis" / n / "figures").glob("*.png"), key=_figure_order)
            if figs:
                st.analysis_figures[n] = figs
    fid = _read_json(root / "eval" / "fidelity.json", st,
                     "generations are not compared with the dense model's (generative verdicts rest on scores alone)")
    st.fidelity = fid if isinstance(fid, dict) else None
    pred = _read_json(root / "predictor.json", st, "the predictor figure is not drawn")
    st.predictor = pred if isinstance(pred, dict) else None
    cs = _read_json(root / "case_study.json", st, "there is no side-by-side case study")
    st.case_study = cs if isinstance(cs, dict) else None
    return st


# ----------------------------------------------------------------------------------------------------
# tables and facts


def _summaries_for_table(st: Study) -> list[dict[str, Any]]:
    out = []
    for n in st.variants:
        s = st.summaries.get(n) or {"results": {}}
        model = dict(s.get("model") or {})
        model["name"] = n
        if model.get("parameters") is None:
            model["parameters"] = (st.infos.get(n) or {}).get("parameters")
        results = {t: r for t, r in (s.get("results") or {}).items()
                   if isinstance(r, dict) and {"kind", "main_metric"} <= set(r)}
        out.append({"model": model, "results": results})
    return out


def build_tables(st: Study, out_dir: str | Path | None = None) -> dict[str, Any] | None:
    """The comparison table (tasks × variants, Full first); written as ``table.csv|md|json`` into ``out_dir``."""
    from prunelens.evaluate.compare import write_comparison
    from prunelens.evaluate.runner import comparison_table

    if not st.summaries:
        return None
    table = comparison_table(_summaries_for_table(st))
    if out_dir is not None:
        write_comparison(table, Path(out_dir) / "table")
    return table


def _kind_average(table: dict[str, Any], kinds: tuple[str, ...], i: int, exclude: frozenset[str] = frozenset()) -> float | None:
    vals = [r["scores"][i] for r in table["rows"]
            if r["kind"] in kinds and r["task"] not in exclude and _finite(r["scores"][i])]
    return sum(vals) / len(vals) if vals else None


def _group(st: Study, name: str) -> tuple[str, float | None]:
    if name == DENSE:
        return "dense", None
    spec = st.specs.get(name) or {}
    if isinstance(spec.get("drop"), dict):
        return str(spec["drop"].get("target") or "other"), _num(spec["drop"].get("n"))
    if isinstance(spec.get("sparsify"), dict):
        return "sparse", _num(spec["sparsify"].get("sparsity"))
    plan = (st.infos.get(name) or {}).get("plan")
    if isinstance(plan, dict):
        if plan.get("method") == "drop":
            if plan.get("dropped_blocks"):
                return "block", float(len(plan["dropped_blocks"]))
            n = len(plan.get("dropped_sublayers") or []) or None
            return str(plan.get("target") or "other"), n
        if plan.get("method"):
            return "sparse", _num((plan.get("sparsity") or {}).get("sparsity"))
    m = re.fullmatch(r"Drop-(\d+)([AMBJ])", name)
    if m:
        return {"A": "attn", "M": "mlp", "B": "block", "J": "joint"}[m.group(2)], float(m.group(1))
    return "other", None


def _mean_of(d: Any, key: str) -> float | None:
    if not isinstance(d, dict):
        return None
    vals = [v[key] for v in d.values() if isinstance(v, dict) and _finite(v.get(key))]
    return sum(vals) / len(vals) if vals else None


def near_chance(st: Study) -> list[dict[str, Any]]:
    """Multiple-choice tasks on which the dense model is not clearly above chance.

    A task is flagged when the dense score is below ``chance + 2·sqrt(chance·(1 − chance)/n)`` — within two
    binomial standard errors of a uniform random guess — so its retained fractions are noise. Needs the
    ``chance`` metric (the mean of ``1 / number of choices``), which older results lack: those are not judged.
    """
    dense = (st.summaries.get(DENSE) or {}).get("results") or {}
    out = []
    for task, r in dense.items():
        if not isinstance(r, dict) or r.get("kind") != "mc":
            continue
        chance, score, n = _num((r.get("metrics") or {}).get("chance")), _num(r.get("score")), _num(r.get("n"))
        if chance is None or score is None or not n or not 0 < chance < 1:
            continue
        bound = chance + 2 * math.sqrt(chance * (1 - chance) / n)
        if score < bound:
            out.append({"task": task, "score": score, "chance": chance, "n": int(n), "bound": bound})
    return out


def variant_facts(st: Study, table: dict[str, Any] | None,
                  flags: list[dict[str, Any]] | None = None) -> list[VariantFacts]:
    """One :class:`VariantFacts` per variant, from the table, fidelity, analysis and predictor.

    Multiple-choice tasks on which the dense model is near chance (:func:`near_chance`) are left out of the
    judged non-generative averages (the table still shows them), unless every non-generative task is.
    """
    facts = []
    models = table["models"] if table else []
    flagged = frozenset(f["task"] for f in (near_chance(st) if flags is None else flags))
    if table and flagged and not any(r["kind"] in ("mc", "retrieval") and r["task"] not in flagged
                                     for r in table["rows"]):
        flagged = frozenset()
    for n in st.variants:
        group, size = _group(st, n)
        f = VariantFacts(name=n, group=group, n=size)
        f.parameters = (st.infos.get(n) or {}).get("parameters")
        if n in models:
            i = models.index(n)
            av = table["averages"]
            if f.parameters is None:
                f.parameters = table["parameters"][i]
            f.retained_gen = av["generative_retained"][i]
            f.dense_gen = av["generative"][0]
            f.dense_nongen = _kind_average(table, ("mc", "retrieval"), 0, flagged)
            mine = _kind_average(table, ("mc", "retrieval"), i, flagged)
            f.retained_nongen = mine / f.dense_nongen if (f.dense_nongen and mine is not None) else None
            for kind in ("mc", "retrieval", "gen"):
                dense, mine = _kind_average(table, (kind,), 0, flagged), _kind_average(table, (kind,), i, flagged)
                f.retained_by_kind[kind] = mine / dense if (dense and mine is not None) else None
            ppl = [r["retained"][i] for r in table["rows"] if r["kind"] == "ppl" and _finite(r["retained"][i])]
            f.retained_by_kind["ppl"] = sum(ppl) / len(ppl) if ppl else None
        fid = (st.fidelity or {}).get(n)
        f.exact_match = _mean_of(fid, "exact_match")
        f.rouge_l = _mean_of(fid, "rouge_l")
        f.repeat_ngram_rate = _mean_of(fid, "repeat_ngram_rate")
        a = st.analysis.get(n) or {}
        f.kl_transitions, f.kl_teacher_forced, f.kl_free_running = a.get("kl_transitions"), a.get("tf_kl"), a.get("fr_kl")
        f.cos_p_transitions, f.choice_flip_rate = a.get("cos_p"), a.get("choice_flip_rate")
        p = (st.predictor or {}).get(n)
        if isinstance(p, dict):
            f.predictor = _num(p.get("var_p_dz_over_2T2"))
        facts.append(f)
    return facts


# ----------------------------------------------------------------------------------------------------
# figures

_COLORS = {"dense": "#222222", "attn": "#1f77b4", "mlp": "#d62728", "block": "#9467bd", "joint": "#8c564b",
           "sparse": "#2ca02c", "other": "#7f7f7f"}


_LABEL_OFFSETS = ((5, 4), (5, -11), (-8, 8), (-8, -13), (12, 14), (12, -19))


def _label_points(ax, pts: list[tuple[str, float, float]], near: tuple[float, float]) -> None:
    """Name each point; a point within ``near`` (x, y, in axis fractions) of points already named gets the next
    offset around it, so clustered variants stay readable."""
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    log = ax.get_xscale() == "log"

    def frac(x: float, y: float) -> tuple[float, float]:
        fx = (math.log10(x) - math.log10(x0)) / (math.log10(x1) - math.log10(x0)) if log else (x - x0) / ((x1 - x0) or 1)
        return fx, (y - y0) / ((y1 - y0) or 1)

    placed: list[tuple[float, float]] = []
    for name, x, y in sorted(pts, key=lambda p: (p[1], p[2])):
        fx, fy = frac(x, y)
        k = sum(1 for px, py in placed if abs(px - fx) < near[0] and abs(py - fy) < near[1])
        dx, dy = _LABEL_OFFSETS[k % len(_LABEL_OFFSETS)]
        ax.annotate(name, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=8.5,
                    ha="right" if dx < 0 else "left")
        placed.append((fx, fy))


def story_figure(facts: list[VariantFacts], directory: str | Path, axis: G.GenerativeAxis | None = None) -> list[Path]:
    """Left: retained non-generative (x) vs the generative measure (y, see :func:`generative_axis`) per variant,
    ``y = x``, dense at (1, 1). Right: median probability-space KL per variant (sublayer transitions,
    teacher-forced, free-running)."""
    from prunelens.analysis.figures import pyplot, save

    axis = axis or G.generative_axis(facts)
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1, 1.25]})
    gen = {f.name: axis.value(f) for f in facts}
    pts = [f for f in facts if not f.is_dense and _finite(f.retained_nongen) and gen[f.name] is not None]
    # each axis spans its own data (and the dense point at 1): clustered variants spread out; y = x stays drawn
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
        lab = G.GROUP_LABELS.get(f.group, f.group) if f.group not in seen else None
        seen.add(f.group)
        ax.scatter([f.retained_nongen], [gen[f.name]], s=60, color=_COLORS.get(f.group, "#7f7f7f"), zorder=4,
                   label=lab, edgecolors="white", linewidths=0.8)
    ax.set_xlim(xlo, xhi)
    ax.set_ylim(ylo, yhi)
    _label_points(ax, [(f.name, f.retained_nongen, gen[f.name]) for f in pts], near=(0.12, 0.05))
    ax.set_xlabel("retained non-generative score (pruned / dense)")
    ax.set_ylabel(axis.label)
    ax.set_title("What pruning keeps: non-generative vs generative", fontsize=10.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="best")
    if not pts:
        ax.text(0.5, 0.5, "no variant has both scores", transform=ax.transAxes, ha="center", color="#777")

    kl = [f for f in facts if not f.is_dense and any(_finite(v) for v in
                                                     (f.kl_transitions, f.kl_teacher_forced, f.kl_free_running))]
    series = (("kl_transitions", "sublayer transitions", "#ff7f0e"), ("kl_teacher_forced", "decoding, teacher-forced", "#9467bd"),
              ("kl_free_running", "decoding, free-running", "#d62728"))
    present = [s for s in series if any(_finite(getattr(f, s[0])) for f in kl)]
    width = 0.8 / max(1, len(present))
    allv = []
    for j, (attr, label, color) in enumerate(present):
        xs = [i + (j - (len(present) - 1) / 2) * width for i in range(len(kl))]
        ys = [getattr(f, attr) if _finite(getattr(f, attr)) else 0.0 for f in kl]
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
    fig.tight_layout()
    return save(fig, directory, "retained_and_divergence")


def predictor_figure(facts: list[VariantFacts], directory: str | Path,
                     axis: G.GenerativeAxis | None = None) -> tuple[list[Path], float | None, int]:
    """The one-pass predictor ``Var_p(Δz)/(2T²)`` (x, log) against generative degradation
    ``1 − the generative measure`` (y: retained score, or ROUGE-L fidelity to dense; see :func:`generative_axis`).

    Returns ``(paths, spearman ρ, number of variants)``; no figure when no variant has both numbers.
    """
    from prunelens.analysis.figures import pyplot, save

    axis = axis or G.generative_axis(facts)
    loss = {f.name: 1 - v for f in facts if (v := axis.value(f)) is not None}
    pts = [f for f in facts if not f.is_dense and _finite(f.predictor) and f.predictor > 0 and f.name in loss]
    if not pts:
        return [], None, 0
    rho = spearman([f.predictor for f in pts], [loss[f.name] for f in pts])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for f in pts:
        ax.scatter([f.predictor], [loss[f.name]], s=60, color=_COLORS.get(f.group, "#7f7f7f"), zorder=4,
                   edgecolors="white", linewidths=0.8)
    ax.set_xscale("log")
    xs = [f.predictor for f in pts]
    ax.set_xlim(min(xs) / 2, max(xs) * 2)
    _label_points(ax, [(f.name, f.predictor, loss[f.name]) for f in pts], near=(0.15, 0.06))
    ax.axhline(0, color="#999", lw=1, ls="--")
    ax.set_xlabel("predictor Var_p(Δz) / (2T²)  (one teacher-forced pass)")
    ax.set_ylabel("generative degradation (1 − " + ("ROUGE-L vs dense" if axis.kind == "fidelity" else "retained score") + ")")
    rtxt = f"Spearman ρ = {rho:.2f}" if rho is not None and len(pts) >= 3 else "too few variants for a correlation"
    ax.set_title(f"Cheap predictor vs measured degradation — {rtxt} (n = {len(pts)})", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return save(fig, directory, "predictor"), rho, len(pts)


# ----------------------------------------------------------------------------------------------------
# captions (one sentence from the data)


def story_caption(facts: list[VariantFacts], axis: G.GenerativeAxis | None = None) -> str:
    axis = axis or G.generative_axis(facts)
    gen = {f.name: axis.value(f) for f in facts}
    pts = [f for f in facts if not f.is_dense and gen[f.name] is not None]
    if not pts:
        return "No pruned variant has a generative score or fidelity yet, so generation cannot be compared."
    worst = min(pts, key=lambda f: gen[f.name])
    best = max(pts, key=lambda f: gen[f.name])
    fid = axis.kind == "fidelity"

    def say(f: VariantFacts) -> str:
        s = (f"{f.name}'s generations reach a ROUGE-L of {gen[f.name]:.2f} against the dense ones" if fid
             else f"{f.name} keeps {pct(gen[f.name])} of the generative score")
        if _finite(f.retained_nongen):
            s += f" ({pct(f.retained_nongen)} of the non-generative score kept)"
        s += f" and its median probability-space KL is {f.kl:.3g}" if _finite(f.kl) else " (no KL measured)"
        return s

    both = [f for f in pts if _finite(f.retained_nongen)]
    below = sum(1 for f in both if gen[f.name] < f.retained_nongen)
    tail = f"; {below} of {len(both)} variants lie below y = x, losing more on generation" if both else ""
    lead = (f"Generation is measured as fidelity to the dense outputs because {axis.cause}. "
            if fid else "")
    if best is worst:
        return f"{lead}{say(worst)}{tail}."
    return f"{lead}{say(worst)}, while {say(best)}{tail}."


def predictor_caption(facts: list[VariantFacts], rho: float | None, n: int,
                      predictor: dict[str, Any] | None = None, axis: G.GenerativeAxis | None = None) -> str:
    if n == 0:
        return ""
    axis = axis or G.generative_axis(facts)
    pts = sorted((f for f in facts if not f.is_dense and _finite(f.predictor) and axis.value(f) is not None),
                 key=lambda f: f.predictor)
    what = "1 − ROUGE-L against the dense generations" if axis.kind == "fidelity" else "1 − retained generative score"
    rtxt = (f"the Spearman correlation between predictor and degradation ({what}) across {n} variants is {rho:.2f}"
            if rho is not None and n >= 3 else f"with {n} variant{'s' if n != 1 else ''} no correlation is computed")
    ratios = []
    for f in pts:
        kl = _num(((predictor or {}).get(f.name) or {}).get("kl"))
        if kl and kl > 0:
            ratios.append(f.predictor / kl)
    est = (f"; its median ratio to the measured KL is {statistics.median(ratios):.2f}"
           if ratios else "")
    return (f"The predictor ranges from {pts[0].predictor:.3g} ({pts[0].name}) to {pts[-1].predictor:.3g} "
            f"({pts[-1].name}); {rtxt}{est}.")


_FIG_KINDS = {
    "layerwise": "Cosine in hidden, logit and probability space and KL per layer, attention and MLP sublayers",
    "estimate_vs_real": "Theorem 1–3 estimates against the exact values, per token",
    "decoding_steps": "Similarity and KL along decoding steps, teacher-forced and free-running",
    "option_subspace": "Multiple choice: the option subspace against the full vocabulary",
    "top_tokens": "The dense model's top tokens at the answer position, dense and pruned probabilities",
}


def _figure_order(path: Path) -> tuple[int, str]:
    """The analysis figures in reading order: layer-wise, estimates, decoding, option subspace, top tokens, others."""
    kinds = list(_FIG_KINDS)
    return next((i for i, k in enumerate(kinds) if path.stem.startswith(k)), len(kinds)), path.name


def analysis_caption(path: Path, variant: str, numbers: dict[str, float | None]) -> str:
    stem = path.stem
    kind = next((k for k in _FIG_KINDS if stem.startswith(k)), None)
    what = _FIG_KINDS[kind] if kind else stem.replace("_", " ").capitalize()
    n = numbers or {}

    def f3(k: str) -> str:
        return f"{n[k]:.3g}" if _finite(n.get(k)) else "—"

    data = ""
    if kind in ("layerwise", "estimate_vs_real", None) and _finite(n.get("cos_p")):
        data = (f"; median cosine over its own sublayers: h {f3('cos_h')}, z {f3('cos_z')}, p {f3('cos_p')}, "
                f"KL {f3('kl_transitions')}")
        if kind == "estimate_vs_real" and _finite(n.get("ratio_theorem3")):
            data += f", Theorem 3 estimate/real {f3('ratio_theorem3')}"
    elif kind == "decoding_steps" and (_finite(n.get("tf_kl")) or _finite(n.get("fr_kl"))):
        data = f"; median KL teacher-forced {f3('tf_kl')}, free-running {f3('fr_kl')}"
        if _finite(n.get("first_divergence")):
            data += f", first greedy divergence at step {f3('first_divergence')} (median)"
    elif kind in ("option_subspace", "top_tokens") and _finite(n.get("choice_flip_rate")):
        data = (f"; the chosen option changes on {pct(n['choice_flip_rate'])} of questions, median KL over the "
                f"options {f3('kl_options')} vs full vocabulary {f3('kl_full')}")
    return f"{variant}: {what}{data}."


# ----------------------------------------------------------------------------------------------------
# HTML

_CSS = """
:root{--fg:#1d2330;--muted:#5b6475;--line:#dfe3ea;--bg:#fff;--soft:#f5f7fa;--accent:#2957a4;
--safe:#1e7b34;--safe-bg:#e3f4e6;--care:#8a5a00;--care-bg:#fdf1d6;--bad:#a32020;--bad-bg:#fbe3e3}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,
"DejaVu Sans",Arial,sans-serif}
main{max-width:1120px;margin:0 auto;padding:28px 28px 64px}
header{border-bottom:3px solid var(--accent);padding-bottom:10px;margin-bottom:8px}
h1{font-size:1.75em;margin:0 0 4px}
h2{font-size:1.3em;margin:34px 0 10px;padding-bottom:4px;border-bottom:1px solid var(--line)}
h3{font-size:1.05em;margin:18px 0 6px}
p{margin:8px 0}
.sub{color:var(--muted);font-size:.92em}
nav{font-size:.9em;color:var(--muted);margin:8px 0 0}
nav a{color:var(--accent);text-decoration:none;margin-right:14px}
.answer{background:var(--soft);border-left:4px solid var(--accent);padding:12px 16px;border-radius:4px}
.missing{background:var(--care-bg);border-left:4px solid #d99a00;padding:8px 16px;border-radius:4px}
.missing li{margin:2px 0}
.tablewrap{overflow-x:auto}
table{border-collapse:collapse;font-size:.88em;margin:8px 0}
th,td{border:1px solid var(--line);padding:4px 8px;text-align:right;white-space:nowrap}
th{background:var(--soft);font-weight:600}
td.l,th.l{text-align:left}
tr.avg td{font-weight:600;background:#fafbfd}
tr.params td{color:var(--muted)}
td.safe{background:var(--safe-bg)}td.care{background:var(--care-bg)}td.unsafe{background:var(--bad-bg)}
figure{margin:18px 0;padding:12px;border:1px solid var(--line);border-radius:6px;background:#fff}
figure img{display:block;max-width:100%;height:auto;margin:0 auto}
figcaption{color:var(--muted);font-size:.92em;margin-top:8px}
.grid2{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:12px}
.badge{display:inline-block;padding:1px 9px;border-radius:10px;font-size:.85em;font-weight:600;white-space:nowrap}
.badge.safe{color:var(--safe);background:var(--safe-bg)}.badge.care{color:var(--care);background:var(--care-bg)}
.badge.unsafe{color:var(--bad);background:var(--bad-bg)}.badge.none{color:var(--muted);background:var(--soft)}
table.scores td{vertical-align:top}
.ret{display:block;font-size:.82em;color:var(--muted)}
td.safe .ret,td.care .ret,td.unsafe .ret{color:inherit;font-weight:600}
.kind{display:block;font-size:.8em;color:var(--muted)}
td.what{white-space:normal;color:var(--muted);min-width:260px}
td.why{text-align:left;white-space:normal;color:var(--muted);min-width:280px}
.case{border:1px solid var(--line);border-radius:6px;padding:10px 14px;margin:14px 0}
.answers{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:10px;margin-top:8px}
.ans{background:var(--soft);border-radius:4px;padding:6px 10px}
.ans .v{font-weight:600;font-size:.88em;color:var(--accent)}
pre{white-space:pre-wrap;word-break:break-word;margin:4px 0;font:12.5px/1.45 ui-monospace,"DejaVu Sans Mono",
Menlo,Consolas,monospace}
pre.prompt{max-height:14em;overflow:auto;background:var(--soft);padding:6px 10px;border-radius:4px}
.ans pre{max-height:16em;overflow:auto}
pre.yaml{background:var(--soft);padding:10px 14px;border-radius:4px}
ol.rule li{margin:3px 0}
footer{margin-top:40px;color:var(--muted);font-size:.85em}
"""

_VERDICT_CLASS = {G.SAFE: "safe", G.CARE: "care", G.UNSAFE: "unsafe"}


def _e(s: Any) -> str:
    return html.escape("" if s is None else str(s), quote=True)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _params(v: Any) -> str:
    try:
        n = int(v)
    except (TypeError, ValueError):
        return "—"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.{1 if n < 100 * div else 0}f}{unit}"
    return str(n)


def _retained_class(v: float | None) -> str:
    return _VERDICT_CLASS.get(G.score_verdict(v), "")


def _table_html(table: dict[str, Any]) -> str:
    """Tasks × variants; each pruned cell shows the score and, below it, the retained fraction (coloured by the
    guidance thresholds). Same numbers as ``table.csv`` (:func:`prunelens.evaluate.compare.table_rows`)."""
    from prunelens.evaluate.compare import table_rows

    rows = table_rows(table)
    models = table["models"]
    nm = len(models)
    out = ['<div class="tablewrap"><table class="scores"><thead><tr><th class="l">task</th><th class="l">metric</th>']
    out += [f"<th>{_e(m)}</th>" for m in models]
    out.append("</tr></thead><tbody>")
    params = table["parameters"]
    cells = []
    for i, p in enumerate(params):
        frac = (p / params[0]) if i and _finite(p) and _finite(params[0]) and params[0] else None
        cells.append(f"<td>{_params(p)}" + (f'<span class="ret">{pct(frac, 1)}</span>' if frac is not None else "") + "</td>")
    out.append('<tr class="params"><td class="l" colspan="2">parameters</td>' + "".join(cells) + "</tr>")

    def cell(score: str, retained: float | None, i: int, colour: bool = True) -> str:
        if i == 0:
            return f"<td>{score or '—'}</td>"
        cls = _retained_class(retained) if colour else ""
        return f'<td class="{cls}">{score or "—"}<span class="ret">{pct(retained, 1)}</span></td>'

    for r, row in zip(table["rows"], rows[2:]):
        kind = _KIND_LABEL.get(r["kind"], r["kind"])
        out.append(f'<tr><td class="l">{_e(r["task"])}<span class="kind">{_e(kind)}</span></td>'
                   f'<td class="l">{_e(r["metric"])}</td>')
        out += [cell(_e(row[2 + i]), r["retained"][i], i, r["kind"] != "ppl") for i in range(nm)]
        out.append("</tr>")
    av = table["averages"]
    for key, label in (("non_generative", "non-generative average (mc + retrieval)"), ("generative", "generative average")):
        out.append(f'<tr class="avg"><td class="l" colspan="2">{_e(label)}</td>')
        out += [cell("" if v is None else f"{v:.4f}", av[f"{key}_retained"][i], i) for i, v in enumerate(av[key])]
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


_HIERARCHY_ROWS = [
    ("cos_h", "cos h", "transitions: hidden-state cosine, dense vs pruned, after the variant's own sublayers"),
    ("cos_z", "cos z", "transitions: logit cosine"),
    ("cos_p", "cos p", "transitions: probability cosine"),
    ("kl_transitions", "KL", "transitions: KL(p_dense ‖ p_pruned)"),
    ("ratio_theorem2", "T2 est / real", "Theorem 2 estimate over the exact 1 − cos p"),
    ("ratio_theorem3", "T3 est / real", "Theorem 3 estimate over the exact KL"),
    ("tf_cos_p", "TF cos p", "final outputs along decoding, teacher-forced"),
    ("tf_kl", "TF KL", "teacher-forced KL"),
    ("fr_cos_p", "FR cos p", "final outputs along decoding, free-running (each model reads its own output)"),
    ("fr_kl", "FR KL", "free-running KL"),
    ("first_divergence", "first divergence", "first decoding step where the greedy tokens differ"),
    ("choice_flip_rate", "MC choice flips", "multiple choice: questions whose chosen option changes"),
    ("kl_options", "KL options", "multiple choice: KL over the renormalised option subspace"),
    ("kl_full", "KL full vocabulary", "multiple choice: KL over the full vocabulary at the answer position"),
]


def _chance_note(flags: list[dict[str, Any]]) -> str:
    if not flags:
        return ""
    items = "; ".join(f"{f['task']}: {f['score']:.2f} against chance {f['chance']:.2f} (n = {f['n']}, needs "
                      f"≥ {f['bound']:.2f})" for f in flags)
    return (f'<p class="missing">Near chance: the dense model is within two standard errors of random guessing on '
            f"{_e(items)}. Retained fractions on {'this task' if len(flags) == 1 else 'these tasks'} are noise; "
            "raise the task limit or use a stronger model.</p>")


def _table_section(table: dict[str, Any] | None, flags: list[dict[str, Any]] | None = None) -> str:
    if not table:
        return "<p>No evaluation results are stored.</p>"
    return (_table_html(table) + _chance_note(flags or []) + '<p class="sub">Each pruned cell gives the score and, below it, the retained fraction '
            "of the dense score (pruned / dense; for perplexity dense / pruned), coloured by the guidance thresholds "
            f"({pct(G.SAFE_RETAINED)}, {pct(G.CARE_RETAINED)}). Non-generative average = multiple choice + retrieval; "
            "perplexity is shown, not averaged. The same table is in <code>report/table.csv</code> and "
            "<code>report/table.md</code>.</p>")


def _hierarchy_html(st: Study) -> str:
    names = [n for n in st.variants if n in st.analysis]
    if not names:
        return "<p>No analysis results are stored.</p>"
    rows = [r for r in _HIERARCHY_ROWS if any(_finite(st.analysis[n].get(r[0])) for n in names)]
    out = ['<div class="tablewrap"><table><thead><tr><th class="l">median</th>']
    out += [f"<th>{_e(n)}</th>" for n in names] + ['<th class="l">what it is</th></tr></thead><tbody>']
    for key, label, what in rows:
        vals = [st.analysis[n].get(key) for n in names]
        cells = ["—" if not _finite(v) else (pct(v) if key == "choice_flip_rate" else f"{v:.3g}") for v in vals]
        out.append(f'<tr><td class="l">{_e(label)}</td>' + "".join(f"<td>{c}</td>" for c in cells)
                   + f'<td class="l what">{_e(what)}</td></tr>')
    out.append("</tbody></table></div>")
    return "".join(out)


def _guidance_html(facts: list[VariantFacts]) -> str:
    gs = G.guidance(facts)
    out = ['<ol class="rule">'] + [f"<li>{_e(s)}</li>" for s in G.rule_text()] + ["</ol>"]
    if not gs:
        return "".join(out) + "<p>No pruned variant to judge.</p>"

    def badge(v: str) -> str:
        return f'<span class="badge {_VERDICT_CLASS.get(v, "none")}">{_e(v)}</span>'

    out.append('<div class="tablewrap"><table><thead><tr><th class="l">variant</th><th class="l">non-generative use</th>'
               '<th class="l">generative use</th><th class="l">why</th></tr></thead><tbody>')
    for g in gs:
        why = "; ".join(g.non_generative.reasons) + ". Generation: " + "; ".join(g.generative.reasons) + "."
        out.append(f'<tr><td class="l">{_e(g.name)}</td><td class="l">{badge(g.non_generative.verdict)}</td>'
                   f'<td class="l">{badge(g.generative.verdict)}</td><td class="why">Non-generative: {_e(why)}</td></tr>')
    out.append("</tbody></table></div>")
    return "".join(out)


def _case_html(st: Study) -> str:
    cs = st.case_study or {}
    prompts = cs.get("prompts") if isinstance(cs.get("prompts"), list) else []
    answers = cs.get("answers") if isinstance(cs.get("answers"), dict) else {}
    if not prompts:
        return "<p>No case study is stored.</p>"
    order = [n for n in st.variants if n in answers] + [n for n in answers if n not in st.variants]
    plural = "s" if len(prompts) != 1 else ""
    out = [f'<p class="sub">The same {len(prompts)} prompt{plural}, answered greedily by every variant.</p>']
    for i, p in enumerate(prompts):
        p = p if isinstance(p, dict) else {"prompt": p}
        title = " · ".join(_e(x) for x in (p.get("task"), p.get("id")) if x not in (None, ""))
        out.append(f'<div class="case"><h3>{title or f"prompt {i + 1}"}</h3><pre class="prompt">{_e(p.get("prompt"))}</pre>')
        if p.get("target") not in (None, ""):
            out.append(f'<p class="sub">Reference answer: <b>{_e(p.get("target"))}</b></p>')
        out.append('<div class="answers">')
        for n in order:
            a = answers.get(n)
            text = a[i] if isinstance(a, list) and i < len(a) else None
            out.append(f'<div class="ans"><div class="v">{_e(n)}</div><pre>{_e(text) if text is not None else "—"}</pre></div>')
        out.append("</div></div>")
    return "".join(out)


def _run_html(st: Study) -> str:
    import yaml

    meta = st.meta
    if not meta:
        return "<p>study.json is missing: the config, versions and timings are unknown.</p>"
    out = []
    cfg = st.config
    seed = cfg.get("seed")
    created = meta.get("created")
    t = meta.get("timings") if isinstance(meta.get("timings"), dict) else {}
    total = t.get("total_seconds")
    facts = [f"model <b>{_e(st.model)}</b>", f"seed <b>{_e(seed)}</b>"]
    if cfg.get("dtype") or cfg.get("device"):
        facts.append(f"{_e(cfg.get('dtype', ''))} on {_e(cfg.get('device', ''))}")
    if created:
        facts.append(f"created {_e(created)}")
    if _finite(total):
        facts.append(f"total time {total / 60:.1f} min ({total:.0f} s)")
    out.append("<p>" + " · ".join(facts) + "</p>")
    if cfg:
        out.append("<h3>Config</h3><pre class=\"yaml\">" + _e(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True,
                                                                          default_flow_style=None, width=100))
                   + "</pre>")
    versions = meta.get("versions")
    if isinstance(versions, dict) and versions:
        out.append('<h3>Versions</h3><table><tbody>' + "".join(
            f'<tr><td class="l">{_e(k)}</td><td class="l">{_e(v)}</td></tr>' for k, v in versions.items()) + "</tbody></table>")
    units = t.get("units") if isinstance(t.get("units"), dict) else {}
    units = {k: v for k, v in units.items() if _finite(v)}
    if units:
        out.append('<h3>Timings</h3><div class="tablewrap"><table><thead><tr><th class="l">unit</th><th>seconds</th>'
                   "<th>share</th></tr></thead><tbody>")
        tot = total if _finite(total) and total > 0 else sum(units.values())
        for k, v in sorted(units.items(), key=lambda kv: -kv[1]):
            out.append(f'<tr><td class="l">{_e(k)}</td><td>{v:.1f}</td><td>{pct(v / tot) if tot else "—"}</td></tr>')
        out.append("</tbody></table></div>")
    return "".join(out)


def _question_html(st: Study) -> str:
    return (f"<p>Does pruning <b>{_e(st.model)}</b> keep it useful, and for what? He et al. (2026), "
            "“Demystifying When Pruning Works via Representation Hierarchies”, report that pruned language models keep "
            "their non-generative scores (multiple choice, retrieval) but collapse when they generate: pruning barely "
            "moves hidden states <i>h</i> and logits <i>z</i>, but the softmax amplifies the perturbation in the "
            "probabilities <i>p</i>, and autoregressive decoding compounds it. This report measures that claim on this "
            "model: scores of every variant against the dense model, how far each variant moves <i>h</i>, <i>z</i> and "
            "<i>p</i>, and a verdict per use.</p>")


@dataclass
class _Section:
    id: str
    title: str
    body: str


def render_html(st: Study, table: dict[str, Any] | None, facts: list[VariantFacts],
                figures: list[tuple[Path, str, str]], problems: list[str] | None = None,
                flags: list[dict[str, Any]] | None = None) -> str:
    """The report page. ``figures``: ``(png, alt, caption)`` for the study figures; the analysis figures are
    taken from ``st``. Each section is built on its own: one that fails says so instead of breaking the page."""
    problems = problems if problems is not None else []
    flags = near_chance(st) if flags is None else flags
    chance = [f["task"] for f in flags]

    def guard(fn: Callable[[], str], what: str) -> str:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 — a report must never crash on odd data
            problems.append(f"the {what} section could not be built ({type(exc).__name__}: {exc})")
            return f'<p class="missing">This section could not be built: {_e(type(exc).__name__)}: {_e(exc)}</p>'

    def figs_html() -> str:
        if not figures:
            return "<p>No study figure could be drawn (no scores stored).</p>"
        return "".join(f"<figure>{_img(p, alt)}<figcaption>{_e(cap)}</figcaption></figure>" for p, alt, cap in figures)

    def analysis_figs_html() -> str:
        parts = [_hierarchy_html(st)]
        for n in st.variants:
            if st.analysis_figures.get(n):
                parts.append(f"<h3>{_e(n)}</h3>")
            for p in st.analysis_figures.get(n, []):
                cap = analysis_caption(p, n, st.analysis.get(n, {}))
                parts.append(f"<figure>{_img(p, cap)}<figcaption>{_e(cap)}</figcaption></figure>")
        return "".join(parts)

    sections = [
        _Section("question", "The question", guard(lambda: _question_html(st), "question")),
        _Section("answer", f"The answer for {st.model}",
                 guard(lambda: f'<p class="answer">{_e(G.answer_for_model(st.model, facts, chance))}</p>', "answer")),
        _Section("table", "Scores: tasks × variants", guard(lambda: _table_section(table, flags), "table")),
        _Section("figures", "Figures", guard(figs_html, "figures")),
        _Section("hierarchy", "Representation hierarchy (analysis)", guard(analysis_figs_html, "analysis")),
        _Section("case-study", "Case study: the same prompts, every variant", guard(lambda: _case_html(st), "case study")),
        _Section("guidance", "Guidance", guard(lambda: _guidance_html(facts), "guidance")),
        _Section("how-run", "How it was run", guard(lambda: _run_html(st), "how it was run")),
    ]
    missing = list(st.missing) + problems
    missing_html = ""
    if missing:
        missing_html = ('<section id="missing"><h2>What is missing</h2><ul class="missing">'
                        + "".join(f"<li>{_e(m)}</li>" for m in missing) + "</ul></section>")
    nav = "".join(f'<a href="#{s.id}">{_e(s.title.split(":")[0])}</a>' for s in sections)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "".join(f'<section id="{s.id}"><h2>{_e(s.title)}</h2>{s.body}</section>' for s in sections[:2])
    body += missing_html
    body += "".join(f'<section id="{s.id}"><h2>{_e(s.title)}</h2>{s.body}</section>' for s in sections[2:])
    from prunelens import __version__

    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>prunelens study — {_e(st.model)}</title><style>{_CSS}</style></head><body><main>"
            f"<header><h1>When does pruning work on {_e(st.model)}?</h1>"
            f'<div class="sub">prunelens study report · {len([v for v in st.variants if v != DENSE])} pruned variants · '
            f"{_e(st.root.name)}</div><nav>{nav}</nav></header>{body}"
            f"<footer>Written by prunelens {_e(__version__)} on {stamp} from the results stored in "
            f"<code>{_e(st.root.name)}/</code>.</footer></main></body></html>\n")


def build_report(study_dir: str | Path) -> Path:
    """Build ``STUDY/report/`` (tables, figures, guidance.json, report.html) and return the HTML path.

    Raises :class:`FileNotFoundError` only when ``study_dir`` is not a directory; missing or unreadable files
    inside it are listed in the report's "What is missing" section.
    """
    from prunelens.utils.io import atomic_write_json, atomic_write_text

    if not Path(study_dir).is_dir():
        raise FileNotFoundError(f"study directory {study_dir} does not exist (run `prunelens study` first)")
    st = load_study(study_dir)
    out = Path(study_dir) / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    table = None
    try:
        table = build_tables(st, out)
    except Exception as exc:  # noqa: BLE001
        problems.append(f"the table could not be built ({type(exc).__name__}: {exc})")
    flags = near_chance(st)
    facts = variant_facts(st, table, flags)
    axis = G.generative_axis(facts)
    figures: list[tuple[Path, str, str]] = []
    rho, n_rho = None, 0
    if table is not None:
        try:
            paths = story_figure(facts, out / "figures", axis)
            figures.append((paths[0], f"Retained non-generative score vs {axis.label} per variant, and median KL",
                            story_caption(facts, axis)))
        except Exception as exc:  # noqa: BLE001
            problems.append(f"the summary figure could not be drawn ({type(exc).__name__}: {exc})")
        try:
            paths, rho, n_rho = predictor_figure(facts, out / "figures", axis)
            if paths:
                figures.append((paths[0], "Predictor Var_p(dz)/(2T^2) vs generative degradation",
                                predictor_caption(facts, rho, n_rho, st.predictor, axis)))
            elif st.predictor is not None:
                problems.append("no variant has both a predictor value and a generative score or fidelity: the "
                                "predictor figure is not drawn")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"the predictor figure could not be drawn ({type(exc).__name__}: {exc})")
    try:
        atomic_write_json(out / "guidance.json", {"rule": G.rule_text(),
                                                  "answer": G.answer_for_model(st.model, facts,
                                                                               [f["task"] for f in flags]),
                                                  "near_chance": flags,
                                                  "generative_measure": {"kind": axis.kind, "reason": axis.reason},
                                                  "predictor_spearman": {"rho": rho, "variants": n_rho},
                                                  "variants": [g.to_dict() for g in G.guidance(facts)]})
    except Exception as exc:  # noqa: BLE001
        problems.append(f"guidance.json could not be written ({type(exc).__name__}: {exc})")
    page = render_html(st, table, facts, figures, problems, flags)
    path = out / "report.html"
    atomic_write_text(path, page)
    return path
