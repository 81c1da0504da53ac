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
figure, the page and the files (:mod:`prunelens.report.sweep_page`).
"""

from __future__ import annotations

import csv
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
    "sweep_csv",
]

#: (key, label, log-y) of the aggregated measures, in the figure's panel order
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("retained_nongen", "retained non-generative score (pruned / dense)", False),
    ("rouge_l", "generation fidelity: ROUGE-L F1 to the dense outputs", False),
    ("kl_teacher_forced", "teacher-forced KL(p_dense ‖ p_pruned), median", True),
    ("predictor", "predictor Var_p(Δz)/(2T²), median", True),
)
SHORT_LABELS = {
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
