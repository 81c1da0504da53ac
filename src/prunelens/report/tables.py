"""The comparison table (tasks × variants) and the per-variant facts that guidance and figures judge."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from prunelens.report.analysis_results import AnalysisHeadline
from prunelens.report.load import Study
from prunelens.report.stats import finite_or_none, is_finite, pooled_paired_difference
from prunelens.studies.config import DENSE, twin_pairs
from prunelens.studies.facts import TaskTest, TwinFacts, VariantFacts

__all__ = ["build_tables", "near_chance", "variant_facts", "twin_facts", "changed_rule"]


def _summaries_for_table(st: Study) -> list[dict[str, Any]]:
    out = []
    for n in st.variants:
        s = st.summaries.get(n) or {"results": {}}
        model = dict(s.get("model") or {})
        model["name"] = n
        if model.get("parameters") is None:
            model["parameters"] = (st.infos.get(n) or {}).get("parameters")
        results = {
            t: r
            for t, r in (s.get("results") or {}).items()
            if isinstance(r, dict) and {"kind", "main_metric"} <= set(r)
        }
        out.append({"model": model, "results": results})
    return out


def build_tables(st: Study, out_dir: str | Path | None = None) -> dict[str, Any] | None:
    """The comparison table (tasks × variants, Full first); written as ``table.csv|md|json`` into
    ``out_dir``."""
    from prunelens.evaluation.compare import write_comparison
    from prunelens.evaluation.runner import comparison_table, load_records

    if not st.summaries:
        return None
    summaries = _summaries_for_table(st)
    # per-example records, for the paired tests of every variant against Full on the same examples
    records = [
        {t: load_records(st.root / "eval" / n, t) for t in s["results"]}
        for n, s in zip(st.variants, summaries)
    ]
    table = comparison_table(summaries, records)
    if out_dir is not None:
        write_comparison(table, Path(out_dir) / "table")
    return table


def _kind_average(
    table: dict[str, Any], kinds: tuple[str, ...], i: int, exclude: frozenset[str] = frozenset()
) -> float | None:
    vals = [
        r["scores"][i]
        for r in table["rows"]
        if r["kind"] in kinds and r["task"] not in exclude and is_finite(r["scores"][i])
    ]
    return sum(vals) / len(vals) if vals else None


def _group(st: Study, name: str) -> tuple[str, float | None]:
    if name == DENSE:
        return "dense", None
    spec = st.specs.get(name) or {}
    if isinstance(spec.get("control"), dict) or isinstance((st.infos.get(name) or {}).get("control"), dict):
        return "control", None
    if isinstance(spec.get("drop"), dict):
        return str(spec["drop"].get("target") or "other"), finite_or_none(spec["drop"].get("n"))
    if isinstance(spec.get("sparsify"), dict):
        return "sparse", finite_or_none(spec["sparsify"].get("sparsity"))
    plan = (st.infos.get(name) or {}).get("plan")
    if isinstance(plan, dict):
        if plan.get("method") == "drop":
            if plan.get("dropped_blocks"):
                return "block", float(len(plan["dropped_blocks"]))
            n = len(plan.get("dropped_sublayers") or []) or None
            return str(plan.get("target") or "other"), n
        if plan.get("method"):
            return "sparse", finite_or_none((plan.get("sparsity") or {}).get("sparsity"))
    m = re.fullmatch(r"Drop-(\d+)([AMBJ])", name)
    if m:
        return {"A": "attn", "M": "mlp", "B": "block", "J": "joint"}[m.group(2)], float(m.group(1))
    return "other", None


def _mean_of(d: Any, key: str) -> float | None:
    if not isinstance(d, dict):
        return None
    vals = [v[key] for v in d.values() if isinstance(v, dict) and is_finite(v.get(key))]
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
        chance = finite_or_none((r.get("metrics") or {}).get("chance"))
        score, n = finite_or_none(r.get("score")), finite_or_none(r.get("n"))
        if chance is None or score is None or not n or not 0 < chance < 1:
            continue
        bound = chance + 2 * math.sqrt(chance * (1 - chance) / n)
        if score < bound:
            out.append({"task": task, "score": score, "chance": chance, "n": int(n), "bound": bound})
    return out


def _pair(v: Any) -> tuple[float, float] | None:
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(is_finite(x) for x in v):
        return float(v[0]), float(v[1])
    return None


def _paired_evidence(
    st: Study, table: dict[str, Any], i: int, f: VariantFacts, flagged: frozenset[str]
) -> None:
    """The paired tests of column ``i`` against Full and the pooled retained intervals, per use.

    The tests are the table's (exact McNemar / paired bootstrap per task); the pooled interval resamples
    each judged task's shared examples (:func:`~prunelens.evaluation.uncertainty.pooled_retained`)."""
    from prunelens.evaluation.runner import load_records
    from prunelens.evaluation.uncertainty import pooled_retained

    def evidence(kinds: tuple[str, ...]) -> tuple[list[TaskTest], tuple[float, float] | None]:
        tests, pairs = [], []
        for r in table["rows"]:
            if r["kind"] not in kinds or r["task"] in flagged or "paired" not in r:
                continue
            t = TaskTest.from_dict(r["task"], r["paired"][i])
            if t is None:
                continue
            tests.append(t)
            dense = load_records(st.root / "eval" / DENSE, r["task"])
            mine = {str(x["id"]): x for x in load_records(st.root / "eval" / f.name, r["task"])}
            shared = [
                (float(x["score"]), float(mine[str(x["id"])]["score"])) for x in dense if str(x["id"]) in mine
            ]
            if shared:
                pairs.append(([a for a, _ in shared], [b for _, b in shared]))
        if not tests or len(pairs) != len(tests):
            return tests, None
        pooled = pooled_retained(pairs)
        return tests, (pooled[1] if pooled else None)

    f.nongen_tests, f.retained_nongen_interval = evidence(("mc", "retrieval"))
    f.gen_tests, f.retained_gen_interval = evidence(("gen",))
    # the fidelity axis: mean ROUGE-L of the greedy outputs against the dense ones, prompts resampled
    from prunelens.evaluation.fidelity import fidelity
    from prunelens.evaluation.uncertainty import pooled_mean_interval

    groups = []
    for r in table["rows"]:
        if r["kind"] != "gen":
            continue
        dense = load_records(st.root / "eval" / DENSE, r["task"])
        mine = load_records(st.root / "eval" / f.name, r["task"])
        if dense and len(mine) == len(dense):
            try:
                groups.append([row["rouge_l"] for row in fidelity(dense, mine, task=r["task"]).records])
            except ValueError:  # the two runs hold different prompts: no paired fidelity
                continue
    if groups:
        f.rouge_l_interval = pooled_mean_interval(groups)[1]


def variant_facts(
    st: Study, table: dict[str, Any] | None, flags: list[dict[str, Any]] | None = None
) -> list[VariantFacts]:
    """One :class:`VariantFacts` per variant, from the table, fidelity, analysis and predictor.

    Multiple-choice tasks on which the dense model is near chance (:func:`near_chance`) are left out of the
    judged non-generative averages (the table still shows them), unless every non-generative task is.
    """
    facts = []
    models = table["models"] if table else []
    flagged = frozenset(f["task"] for f in (near_chance(st) if flags is None else flags))
    if (
        table
        and flagged
        and not any(r["kind"] in ("mc", "retrieval") and r["task"] not in flagged for r in table["rows"])
    ):
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
                dense = _kind_average(table, (kind,), 0, flagged)
                mine = _kind_average(table, (kind,), i, flagged)
                f.retained_by_kind[kind] = mine / dense if (dense and mine is not None) else None
            ppl = [
                r["retained"][i] for r in table["rows"] if r["kind"] == "ppl" and is_finite(r["retained"][i])
            ]
            f.retained_by_kind["ppl"] = sum(ppl) / len(ppl) if ppl else None
            if n != DENSE:
                _paired_evidence(st, table, i, f, flagged)
        fid = (st.fidelity or {}).get(n)
        vs = (st.fidelity_vs_control or {}).get(n)
        if isinstance(vs, dict) and isinstance(vs.get("tasks"), dict):
            f.control = str(vs.get("control") or "") or None
            f.fidelity_tests = [t for k, d in vs["tasks"].items() if (t := TaskTest.from_dict(k, d))]
            f.fidelity_ratio = finite_or_none(vs.get("ratio"))
            f.fidelity_ratio_interval = _pair(vs.get("ratio_interval"))
            floor = [v for v in (vs.get("control_rouge_l") or {}).values() if is_finite(v)]
            f.control_rouge_l = sum(floor) / len(floor) if floor else None
        f.exact_match = _mean_of(fid, "exact_match")
        f.rouge_l = _mean_of(fid, "rouge_l")
        f.repeat_ngram_rate = _mean_of(fid, "repeat_ngram_rate")
        a = st.analysis.get(n) or AnalysisHeadline()
        f.kl_transitions, f.kl_teacher_forced, f.kl_free_running = a.kl_transitions, a.tf_kl, a.fr_kl
        f.cos_p_transitions, f.choice_flip_rate = a.cos_p, a.choice_flip_rate
        p = (st.predictor or {}).get(n)
        if isinstance(p, dict):
            f.predictor = finite_or_none(p.get("var_p_dz_over_2T2"))
        facts.append(f)
    return facts


# ----------------------------------------------------------------------------------------------------
# twins: a variant against the same pruning but for one changed rule

#: what an omitted key of a ``drop`` block means (so a changed rule reads "hidden → generation")
_DROP_DEFAULTS = {
    "objective": "hidden",
    "estimator": "exact",
    "temperature": 1.0,
    "iterative": False,
    "window": False,
}


def _show(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_show(x)}" for k, x in v.items()) + "}"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def changed_rule(twin: dict[str, Any], variant: dict[str, Any], nsamples: Any = None) -> list[str]:
    """The config fields in which ``variant``'s spec differs from its ``twin``'s, one ``field: old → new``
    each (``name`` and ``twin`` left out; an omitted ``drop`` key reads as its default; ``nsamples``: the
    study's calibration windows, what an omitted ``drop.score_windows`` scores on)."""
    defaults = dict(_DROP_DEFAULTS)
    defaults["score_windows"] = f"all {nsamples}" if nsamples else "all"
    out = []
    for key in [k for k in {**twin, **variant} if k not in ("name", "twin")]:
        a, b = twin.get(key), variant.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in {**a, **b}:
                x = a.get(sub, defaults.get(sub) if key == "drop" else None)
                y = b.get(sub, defaults.get(sub) if key == "drop" else None)
                if x != y:
                    out.append(f"{key}.{sub}: {_show('unset' if x is None else x)} → {_show(y)}")
        elif a != b:
            out.append(f"{key}: {'unset' if a is None else _show(a)} → {'unset' if b is None else _show(b)}")
    return out


def _by_id(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(x["id"]): x for x in records if isinstance(x, dict) and "id" in x}


def _rouge_by_id(dense: list[dict[str, Any]], mine: list[dict[str, Any]], task: str) -> dict[str, float]:
    """Per prompt id, the ROUGE-L of ``mine`` against the dense outputs (empty when they do not pair)."""
    from prunelens.evaluation.fidelity import fidelity

    if not dense or len(mine) != len(dense):
        return {}
    try:
        return {str(r["id"]): float(r["rouge_l"]) for r in fidelity(dense, mine, task=task).records}
    except (ValueError, KeyError):  # the two runs hold different prompts: no paired fidelity
        return {}


def twin_facts(
    st: Study,
    table: dict[str, Any] | None,
    facts: list[VariantFacts],
    flags: list[dict[str, Any]] | None = None,
) -> list[TwinFacts]:
    """One :class:`TwinFacts` per twin pair of the study config whose two variants were both evaluated.

    Per task the twins' per-example records are matched by id and compared with the table's paired test
    (:func:`prunelens.evaluation.runner._paired`: exact McNemar for 0/1 scores, else a sign-flip test), the
    twin as the reference. Generation fidelity: each twin's per-prompt ROUGE-L against the dense outputs,
    paired per prompt, per task and pooled over the generative tasks
    (:func:`~prunelens.report.stats.pooled_paired_difference`). Judged tasks are those the verdicts judge
    (near-chance multiple-choice tasks left out unless every non-generative task is)."""
    from prunelens.evaluation.runner import _paired, load_records
    from prunelens.evaluation.uncertainty import compare_paired

    pairs = [(a, b) for a, b in twin_pairs(st.config.get("variants") or []) if a in st.variants]
    if not pairs:
        return []
    by_name = {f.name: f for f in facts}
    flagged = frozenset(f["task"] for f in (near_chance(st) if flags is None else flags))
    rows = table["rows"] if table else []
    if flagged and not any(r["kind"] in ("mc", "retrieval") and r["task"] not in flagged for r in rows):
        flagged = frozenset()
    nsamples = (st.config.get("calibration") or {}).get("nsamples")
    out = []
    for name, twin in pairs:
        if twin not in st.variants:
            st.missing.append(
                f"{name} names {twin} as its twin, but {twin} has no results: no twin comparison"
            )
            continue
        t = TwinFacts(name, twin, changed_rule(st.specs.get(twin) or {}, st.specs.get(name) or {}, nsamples))
        groups: list[tuple[list[float], list[float]]] = []
        for r in rows:
            mine = load_records(st.root / "eval" / name, r["task"])
            other = load_records(st.root / "eval" / twin, r["task"])
            if not mine or not other:
                continue
            test = TaskTest.from_dict(r["task"], _paired(other, mine, r["kind"]))
            if test is not None:
                if r["kind"] in ("mc", "retrieval") and r["task"] not in flagged:
                    t.nongen_tests.append(test)
                elif r["kind"] == "gen":
                    t.gen_tests.append(test)
                else:
                    t.shown_tests.append(test)
            if r["kind"] == "gen":
                dense = load_records(st.root / "eval" / DENSE, r["task"])
                ra, rb = _rouge_by_id(dense, mine, r["task"]), _rouge_by_id(dense, other, r["task"])
                ids = [i for i in rb if i in ra]
                if ids:
                    ref, val = [rb[i] for i in ids], [ra[i] for i in ids]
                    test = TaskTest.from_dict(r["task"], compare_paired(ref, val).to_dict())
                    if test is not None:
                        t.fidelity_tests.append(test)
                        groups.append((ref, val))
        if groups:
            t.fidelity = TaskTest.from_dict("ROUGE-L to dense", pooled_paired_difference(groups))
        for n in (name, twin):
            f = by_name.get(n)
            a = st.analysis.get(n)
            t.numbers[n] = {
                "rouge_l": f.rouge_l if f else None,
                "exact_match": f.exact_match if f else None,
                "kl_transitions": a.kl_transitions if a else None,
                "kl_teacher_forced": a.tf_kl if a else None,
                "kl_free_running": a.fr_kl if a else None,
                "first_divergence": a.first_divergence if a else None,
                "choice_flip_rate": a.choice_flip_rate if a else None,
                "predictor": f.predictor if f else None,
                "parameters": f.parameters if f else None,
            }
        out.append(t)
    return out
