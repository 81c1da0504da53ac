"""The report page: one self-contained HTML document (images as base64 data URIs, the CSS of ``report.css``
inline, no scripts, no network), built section by section."""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunelens.report.analysis_results import analysis_caption, subspace_chance_note
from prunelens.report.answer import answer_for_model
from prunelens.report.guidance import Verdict, guidance, pct, rule_text
from prunelens.report.load import Study
from prunelens.report.stats import is_finite
from prunelens.report.tables import near_chance
from prunelens.report.twins import TwinGuidance, changed_rule_words, twin_difference
from prunelens.studies import verdicts as V
from prunelens.studies.config import DENSE
from prunelens.studies.facts import TaskTest, TwinFacts, VariantFacts

__all__ = ["render_html"]

_KIND_LABEL = {"mc": "multiple choice", "retrieval": "retrieval", "gen": "generation", "ppl": "perplexity ↓"}


@functools.cache
def _css() -> str:
    """The page's style sheet, ``report.css`` next to this module (shipped as package data)."""
    return Path(__file__).with_name("report.css").read_text(encoding="utf-8")


_VERDICT_CLASS = {V.SAFE: "safe", V.CARE: "care", V.UNSAFE: "unsafe"}


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
    return _VERDICT_CLASS.get(V.score_verdict(v), "")


def _num(v: float) -> str:
    return f"{v:.2f}" if abs(v) >= 10 else f"{v:.3f}"


def _table_html(table: dict[str, Any]) -> str:
    """Tasks × variants; each pruned cell shows the score and, below it, the retained fraction (coloured by
    the guidance thresholds). Same numbers as ``table.csv``
    (:func:`prunelens.evaluation.compare.table_rows`)."""
    from prunelens.evaluation.compare import table_rows

    rows = table_rows(table)
    models = table["models"]
    nm = len(models)
    out = [
        '<div class="tablewrap"><table class="scores"><thead><tr>'
        '<th class="l">task</th><th class="l">metric</th>'
    ]
    out += [f"<th>{_e(m)}</th>" for m in models]
    out.append("</tr></thead><tbody>")
    params = table["parameters"]
    cells = []
    for i, p in enumerate(params):
        frac = (p / params[0]) if i and is_finite(p) and is_finite(params[0]) and params[0] else None
        ret = f'<span class="ret">{pct(frac, 1)}</span>' if frac is not None else ""
        cells.append(f"<td>{_params(p)}" + ret + "</td>")
    out.append('<tr class="params"><td class="l" colspan="2">parameters</td>' + "".join(cells) + "</tr>")

    def cell(score: str, retained: float | None, i: int, colour: bool = True, extra: str = "") -> str:
        if i == 0:
            return f"<td>{score or '—'}{extra}</td>"
        cls = _retained_class(retained) if colour else ""
        return f'<td class="{cls}">{score or "—"}<span class="ret">{pct(retained, 1)}</span>{extra}</td>'

    def uncertainty(r: dict[str, Any], i: int) -> str:
        """The cell's 95 % interval and, for a pruned variant, its paired test against the first column."""
        iv = (r.get("intervals") or [None] * nm)[i]
        out = f'<span class="ci">[{_num(iv["low"])}, {_num(iv["high"])}]</span>' if iv else ""
        c = (r.get("paired") or [None] * nm)[i]
        if c is not None:
            title = _e(
                f"{c['test']} on {c['n']} shared examples: difference {c['difference']:+.4f}, "
                f"95 % interval [{c['interval'][0]:+.4f}, {c['interval'][1]:+.4f}]"
            )
            out += f'<span class="ci" title="{title}">p = {c["p_value"]:.2g}</span>'
        return out

    for r, row in zip(table["rows"], rows[2:]):
        kind = _KIND_LABEL.get(r["kind"], r["kind"])
        mdd = r.get("min_detectable_difference")
        if mdd:  # what this n can tell apart, in accuracy points
            kind += f" · detects ≥ {100 * mdd['value']:.0f} pts at n = {mdd['n']}"
        out.append(
            f'<tr><td class="l">{_e(r["task"])}<span class="kind">{_e(kind)}</span></td>'
            f'<td class="l">{_e(r["metric"])}</td>'
        )
        out += [
            cell(_e(row[2 + i]), r["retained"][i], i, r["kind"] != "ppl", uncertainty(r, i))
            for i in range(nm)
        ]
        out.append("</tr>")
    av = table["averages"]
    for key, label in (
        ("non_generative", "non-generative average (mc + retrieval)"),
        ("generative", "generative average"),
    ):
        out.append(f'<tr class="avg"><td class="l" colspan="2">{_e(label)}</td>')
        out += [
            cell("" if v is None else f"{v:.4f}", av[f"{key}_retained"][i], i) for i, v in enumerate(av[key])
        ]
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


_HIERARCHY_ROWS = [  # (AnalysisHeadline field, row label, what it is)
    (
        "cos_h",
        "cos h",
        "transitions: hidden-state cosine, dense vs pruned, after the variant's own sublayers",
    ),
    ("cos_z", "cos z", "transitions: logit cosine"),
    ("cos_p", "cos p", "transitions: probability cosine"),
    ("kl_transitions", "KL", "transitions: KL(p_dense ‖ p_pruned)"),
    (
        "ratio_theorem2",
        "T2 est / real, transitions",
        "transitions: Theorem 2 estimate Var_r(Δz)/2T² over the exact 1 − cos p (1 = exact)",
    ),
    (
        "ratio_theorem3",
        "T3 est / real, transitions",
        "transitions: Theorem 3 estimate Var_p(Δz)/2T² over the exact KL",
    ),
    ("tf_cos_p", "TF cos p", "final outputs along decoding, teacher-forced"),
    ("tf_kl", "TF KL", "teacher-forced KL"),
    ("tf_ratio_theorem2", "TF T2 est / real", "teacher-forced: Theorem 2 estimate over the exact 1 − cos p"),
    ("tf_ratio_theorem3", "TF T3 est / real", "teacher-forced: Theorem 3 estimate over the exact KL"),
    ("fr_cos_p", "FR cos p", "final outputs along decoding, free-running (each model reads its own output)"),
    ("fr_kl", "FR KL", "free-running KL"),
    ("fr_ratio_theorem2", "FR T2 est / real", "free-running: Theorem 2 estimate over the exact 1 − cos p"),
    ("fr_ratio_theorem3", "FR T3 est / real", "free-running: Theorem 3 estimate over the exact KL"),
    ("first_divergence", "first divergence", "first decoding step where the greedy tokens differ"),
    (
        "mc_dense_accuracy",
        "MC dense accuracy",
        "multiple choice: the dense model's accuracy on the letter-format prompt of the option subspace",
    ),
    ("choice_flip_rate", "MC choice flips", "multiple choice: questions whose chosen option changes"),
    ("kl_options", "KL options", "multiple choice: KL over the renormalised option subspace"),
    ("kl_full", "KL full vocabulary", "multiple choice: KL over the full vocabulary at the answer position"),
]


def _chance_note(flags: list[dict[str, Any]]) -> str:
    if not flags:
        return ""
    items = "; ".join(
        f"{f['task']}: {f['score']:.2f} against chance {f['chance']:.2f} (n = {f['n']}, needs "
        f"≥ {f['bound']:.2f})"
        for f in flags
    )
    which = "this task" if len(flags) == 1 else "these tasks"
    return (
        '<p class="missing">Near chance: the dense model is within two standard errors of random '
        f"guessing on {_e(items)}. Retained fractions on {which} are noise; raise the task limit or "
        "use a stronger model.</p>"
    )


def _table_section(table: dict[str, Any] | None, flags: list[dict[str, Any]] | None = None) -> str:
    if not table:
        return "<p>No evaluation results are stored.</p>"
    return (
        _table_html(table)
        + _chance_note(flags or [])
        + '<p class="sub">Each pruned cell gives the score and, below it, the retained fraction '
        "of the dense score (pruned / dense; for perplexity dense / pruned), coloured by the guidance "
        f"thresholds ({pct(V.SAFE_RETAINED)}, {pct(V.CARE_RETAINED)}); then the score's 95 % interval "
        "(Wilson for accuracies, bootstrap over examples or perplexity windows) and the p-value of a paired "
        "test against Full on the same examples (exact McNemar for accuracies, a paired sign-flip test "
        "otherwise; "
        "hover for the difference and its interval). Under each accuracy task, the smallest difference a "
        "paired test on its n questions would detect (α = 0.05, power 0.8, errors assumed independent). "
        "Non-generative average = multiple "
        "choice + retrieval; perplexity is shown, not averaged. The same table is in "
        "<code>report/table.csv</code> and <code>report/table.md</code>.</p>"
    )


def twin_order(st: Study) -> list[str]:
    """The study's variants in config order, each twin moved right after the variant it is the twin of (so
    the hierarchy table and figures show the two side by side)."""
    from prunelens.studies.config import twin_pairs

    twin_of = {a: b for a, b in twin_pairs(st.config.get("variants") or []) if a in st.variants}
    order = [n for n in st.variants if n not in twin_of or twin_of[n] not in st.variants]
    for a in [n for n in st.variants if n not in order]:
        order.insert(order.index(twin_of[a]) + 1 if twin_of[a] in order else len(order), a)
    return order + [n for n in st.variants if n not in order]


def _hierarchy_html(st: Study) -> str:
    names = [n for n in twin_order(st) if n in st.analysis]
    if not names:
        return "<p>No analysis results are stored.</p>"
    rows = [r for r in _HIERARCHY_ROWS if any(is_finite(getattr(st.analysis[n], r[0])) for n in names)]
    out = ['<div class="tablewrap"><table><thead><tr><th class="l">median</th>']
    out += [f"<th>{_e(n)}</th>" for n in names] + ['<th class="l">what it is</th></tr></thead><tbody>']
    for key, label, what in rows:
        cells = []
        for n in names:
            a = st.analysis[n]
            v = getattr(a, key)
            if not is_finite(v):
                cells.append("—")
                continue
            c = pct(v) if key in ("choice_flip_rate", "mc_dense_accuracy") else f"{v:.3g}"
            k = a.mc_questions if key == "mc_dense_accuracy" else a.n.get(key)
            cells.append(c + (f'<span class="ci">n = {k}</span>' if k else ""))  # a median carries its n
        out.append(
            f'<tr><td class="l">{_e(label)}</td>'
            + "".join(f"<td>{c}</td>" for c in cells)
            + f'<td class="l what">{_e(what)}</td></tr>'
        )
    out.append("</tbody></table></div>")
    if any(r[0].endswith(("ratio_theorem2", "ratio_theorem3")) for r in rows):
        out.append(
            '<p class="sub">Estimate / real: the second-order estimate over the exact value, median over '
            "tokens (n under each); 1 means exact, below 1 the estimate underestimates. It is shown at "
            "sublayer transitions (one sublayer's perturbation) and along decoding (the whole pruned "
            "model's); the per-variant figure of estimate/real against the exact KL shows where it holds "
            "and where it breaks.</p>"
        )
    chance = subspace_chance_note({n: st.analysis[n] for n in names})
    if chance:
        out.append(f'<p class="missing">{_e(chance)}</p>')
    return "".join(out)


def _badge(v: str) -> str:
    return f'<span class="badge {_VERDICT_CLASS.get(v, "none")}">{_e(v)}</span>'


def _verdict_cell(v: Verdict) -> str:
    """Badge, what the paired tests found, the retained fraction with its interval and the n per task."""
    bits = [_badge(v.verdict)]
    if v.finding:
        bits.append(f'<div class="finding">{_e(v.finding)}</div>')
    if v.retained is not None and v.interval is not None:
        bits.append(
            f'<div class="ci">{pct(v.retained)} [{pct(v.interval[0])[:-1]}–{pct(v.interval[1])}]'
            + (f" · n = {', '.join(str(n) for n in v.n.values())}" if v.n else "")
            + "</div>"
        )
    return "".join(bits)


def _grid_html(facts: list[VariantFacts]) -> str:
    """The verdict grid at the top of the page: variant × use, each cell with its interval and n."""
    gs = guidance(facts)
    if not gs:
        return "<p>No pruned variant to judge yet.</p>"
    rows = "".join(
        f'<tr><td class="l">{_e(g.name)}</td><td class="l">{_verdict_cell(g.non_generative)}</td>'
        f'<td class="l">{_verdict_cell(g.generative)}</td></tr>'
        for g in gs
    )
    return (
        '<div class="tablewrap"><table class="grid"><thead><tr><th class="l">variant</th>'
        '<th class="l">non-generative use (kept of dense, 95% interval)</th>'
        '<th class="l">generative use (kept of dense, or fidelity kept of the control\'s)</th></tr></thead>'
        f"<tbody>{rows}</tbody></table></div>"
        '<p class="note">Every verdict rests on paired tests against the dense model on the same examples; '
        'the rule is spelled out under <a href="#guidance">Guidance</a>.</p>'
    )


def _guidance_html(facts: list[VariantFacts]) -> str:
    gs = guidance(facts)
    out = ['<ol class="rule">'] + [f"<li>{_e(s)}</li>" for s in rule_text()] + ["</ol>"]
    if not gs:
        return "".join(out) + "<p>No pruned variant to judge.</p>"
    out.append(
        '<div class="tablewrap"><table><thead><tr><th class="l">variant</th>'
        '<th class="l">non-generative use</th><th class="l">generative use</th><th class="l">why</th>'
        "</tr></thead><tbody>"
    )
    for g in gs:
        why = "; ".join(g.non_generative.reasons) + ". Generation: " + "; ".join(g.generative.reasons) + "."
        out.append(
            f'<tr><td class="l">{_e(g.name)}</td><td class="l">{_badge(g.non_generative.verdict)}</td>'
            f'<td class="l">{_badge(g.generative.verdict)}</td>'
            f'<td class="why">Non-generative: {_e(why)}</td></tr>'
        )
    out.append("</tbody></table></div>")
    return "".join(out)


_TWIN_NUMBERS = [  # (TwinFacts.numbers key, row label, format)
    ("rouge_l", "ROUGE-L to dense, mean over generative tasks", "{:.3f}"),
    ("exact_match", "identical to the dense output", "pct"),
    ("kl_teacher_forced", "TF KL (median, teacher-forced decoding)", "{:.3g}"),
    ("kl_transitions", "KL at the sublayer transitions (median)", "{:.3g}"),
    ("kl_free_running", "FR KL (median, free-running decoding)", "{:.3g}"),
    ("first_divergence", "first divergence step (median)", "{:.3g}"),
    ("choice_flip_rate", "MC choice flips", "pct"),
    ("predictor", "predictor Var_p(Δz)/(2T²)", "{:.3g}"),
]


def _twin_test_cells(x: TaskTest | None, p_holm: float | None = None) -> str:
    if x is None:
        return "<td>—</td><td>—</td><td>—</td>"
    p = f"p = {x.p_value:.2g}" + (f'<span class="ci">Holm {p_holm:.2g}</span>' if p_holm is not None else "")
    return (
        f'<td>{_e(twin_difference(x))}</td><td class="l">{_e(x.test)}</td>'
        f'<td>{p}<span class="ci">n = {x.n}</span></td>'
    )


def _twin_value(x: float | None, fmt: str) -> str:
    if not is_finite(x):
        return "—"
    return pct(x) if fmt == "pct" else fmt.format(x)


def _twin_html(t: TwinFacts, g: TwinGuidance, kinds: dict[str, str]) -> str:
    """One twin pair: per task both scores and the paired difference (variant − twin), the generation
    fidelity and the hierarchy numbers of both, their grades, and the guidance sentences."""
    a, b = t.name, t.twin
    out = [
        f'<div class="twin"><h3>{_e(a)} beside its twin {_e(b)}</h3>'
        f'<p class="sub">Changed rule: {_e(changed_rule_words(t))}.</p>'
        '<div class="tablewrap"><table><thead><tr><th class="l">task · measure</th>'
        f"<th>{_e(b)}</th><th>{_e(a)}</th><th>{_e(a)} − {_e(b)} [95% interval]</th>"
        '<th class="l">paired test</th><th>p</th></tr></thead><tbody>'
    ]
    holm = {
        d["task"]: d.get("p_holm")
        for use in (g.non_generative, g.generative)
        for d in use.tests
        if isinstance(d, dict)
    }
    for x in [*t.nongen_tests, *t.gen_tests, *t.shown_tests]:
        kind = _KIND_LABEL.get(kinds.get(x.task, ""), kinds.get(x.task, ""))
        if kinds.get(x.task) == "ppl":  # its paired records are windows' mean NLL per token
            kind = "mean NLL per token of the windows, lower is better"
        judged = x in t.nongen_tests or (x in t.gen_tests and g.generative.measure == "scores")
        note = kind + ("" if judged or x in t.nongen_tests else " · shown, not judged")
        out.append(
            f'<tr><td class="l">{_e(x.task)}<span class="kind">{_e(note)}</span></td>'
            f"<td>{_num(x.reference)}</td><td>{_num(x.value)}</td>"
            + _twin_test_cells(x, holm.get(x.task) if judged else None)
            + "</tr>"
        )
    for x in t.fidelity_tests:
        out.append(
            f'<tr><td class="l">ROUGE-L to dense · {_e(x.task)}</td><td>{x.reference:.3f}</td>'
            f"<td>{x.value:.3f}</td>" + _twin_test_cells(x) + "</tr>"
        )
    if t.fidelity is not None and len(t.fidelity_tests) != 1:  # one task: its row is the pooled one
        f = t.fidelity
        out.append(
            '<tr class="avg"><td class="l">ROUGE-L to dense, pooled over the generative tasks</td>'
            f"<td>{f.reference:.3f}</td><td>{f.value:.3f}</td>" + _twin_test_cells(f) + "</tr>"
        )
    for key, label, fmt in _TWIN_NUMBERS:
        va, vb = (t.numbers.get(n, {}).get(key) for n in (a, b))
        if key == "rouge_l" and t.fidelity is not None or not (is_finite(va) or is_finite(vb)):
            continue
        out.append(
            f'<tr><td class="l">{_e(label)}</td><td>{_twin_value(vb, fmt)}</td>'
            f'<td>{_twin_value(va, fmt)}</td><td colspan="3" class="l note">measured, not tested</td></tr>'
        )
    for use in (g.non_generative, g.generative):
        out.append(
            f'<tr><td class="l">verdict, {_e(use.use)} use</td>'
            f"<td>{_badge(use.verdicts.get(b, V.NOT_MEASURED))}</td>"
            f"<td>{_badge(use.verdicts.get(a, V.NOT_MEASURED))}</td>"
            f'<td colspan="3" class="l note">{_e("moved" if use.moved else "same grade")}</td></tr>'
        )
    out.append("</tbody></table></div>")
    out.append(
        '<ul class="twin-says">'
        + "".join(f"<li>{_e(u.sentence)}</li>" for u in (g.non_generative, g.generative))
        + "</ul></div>"
    )
    return "".join(out)


def _twins_html(twins: list[tuple[TwinFacts, TwinGuidance]], table: dict[str, Any] | None) -> str:
    kinds = {r["task"]: r["kind"] for r in (table or {}).get("rows", [])}
    intro = (
        '<p class="sub">A twin is the same pruning as another variant but for one changed rule (the '
        "config field <code>twin</code>). Both were evaluated on the same examples, so each task compares "
        "them pair by pair: exact McNemar for accuracies, a sign-flip test otherwise (p-values "
        "Holm-adjusted over the tasks a use judges), and the per-prompt ROUGE-L against the dense outputs "
        "pooled over the generative tasks (tasks weigh equally). Differences are variant − twin. The "
        "hierarchy numbers are medians measured once per variant, shown side by side without a test.</p>"
    )
    return intro + "".join(_twin_html(t, g, kinds) for t, g in twins)


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
        out.append(
            f'<div class="case"><h3>{title or f"prompt {i + 1}"}</h3>'
            f'<pre class="prompt">{_e(p.get("prompt"))}</pre>'
        )
        if p.get("target") not in (None, ""):
            out.append(f'<p class="sub">Reference answer: <b>{_e(p.get("target"))}</b></p>')
        out.append('<div class="answers">')
        for n in order:
            a = answers.get(n)
            text = a[i] if isinstance(a, list) and i < len(a) else None
            shown = _e(text) if text is not None else "—"
            out.append(f'<div class="ans"><div class="v">{_e(n)}</div><pre>{shown}</pre></div>')
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
    if is_finite(total):
        facts.append(f"total time {total / 60:.1f} min ({total:.0f} s)")
    out.append("<p>" + " · ".join(facts) + "</p>")
    if cfg:
        dumped = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True, default_flow_style=None, width=100)
        out.append('<h3>Config</h3><pre class="yaml">' + _e(dumped) + "</pre>")
    versions = meta.get("versions")
    if isinstance(versions, dict) and versions:
        out.append(
            "<h3>Versions</h3><table><tbody>"
            + "".join(
                f'<tr><td class="l">{_e(k)}</td><td class="l">{_e(v)}</td></tr>' for k, v in versions.items()
            )
            + "</tbody></table>"
        )
    units = t.get("units") if isinstance(t.get("units"), dict) else {}
    units = {k: v for k, v in units.items() if is_finite(v)}
    if units:
        out.append(
            '<h3>Timings</h3><div class="tablewrap"><table><thead><tr><th class="l">unit</th>'
            "<th>seconds</th><th>share</th></tr></thead><tbody>"
        )
        tot = total if is_finite(total) and total > 0 else sum(units.values())
        for k, v in sorted(units.items(), key=lambda kv: -kv[1]):
            share = pct(v / tot) if tot else "—"
            out.append(f'<tr><td class="l">{_e(k)}</td><td>{v:.1f}</td><td>{share}</td></tr>')
        out.append("</tbody></table></div>")
    return "".join(out)


def _question_html(st: Study) -> str:
    return (
        f"<p>Does pruning <b>{_e(st.model)}</b> keep it useful, and for what? He et al. (2026), "
        "“Demystifying When Pruning Works via Representation Hierarchies”, report that pruned language "
        "models keep their non-generative scores (multiple choice, retrieval) but collapse when they "
        "generate: pruning barely moves hidden states <i>h</i> and logits <i>z</i>, but the softmax "
        "amplifies the perturbation in the probabilities <i>p</i>, and autoregressive decoding compounds "
        "it. This report measures that claim on this model: scores of every variant against the dense "
        "model, how far each variant moves <i>h</i>, <i>z</i> and <i>p</i>, and a verdict per use.</p>"
    )


@dataclass
class _Section:
    id: str
    title: str
    body: str


def render_html(
    st: Study,
    table: dict[str, Any] | None,
    facts: list[VariantFacts],
    figures: list[tuple[Path, str, str]],
    problems: list[str] | None = None,
    flags: list[dict[str, Any]] | None = None,
    sweep_section: str | None = None,
    twins: list[tuple[TwinFacts, TwinGuidance]] | None = None,
) -> str:
    """The report page. ``figures``: ``(png, alt, caption)`` for the study figures; the analysis figures are
    taken from ``st``. Each section is built on its own: one that fails says so instead of breaking the
    page. ``sweep_section``: the body of the "Sweep" section (a sweep study only, see
    :mod:`prunelens.report.sweep`), placed after the figures. ``twins``: each twin pair's facts and guidance
    (the "Twins" section, after the figures; absent when the study has no twins)."""
    problems = problems if problems is not None else []
    flags = near_chance(st) if flags is None else flags
    chance = [f["task"] for f in flags]

    def guard(fn: Callable[[], str], what: str) -> str:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 — a report must never crash on odd data
            problems.append(f"the {what} section could not be built ({type(exc).__name__}: {exc})")
            return (
                f'<p class="missing">This section could not be built: {_e(type(exc).__name__)}: {_e(exc)}</p>'
            )

    def figs_html() -> str:
        if not figures:
            return "<p>No study figure could be drawn (no scores stored).</p>"
        return "".join(
            f"<figure>{_img(p, alt)}<figcaption>{_e(cap)}</figcaption></figure>" for p, alt, cap in figures
        )

    def analysis_figs_html() -> str:
        parts = [_hierarchy_html(st)]
        for n in twin_order(st):
            if st.analysis_figures.get(n):
                parts.append(f"<h3>{_e(n)}</h3>")
            for p in st.analysis_figures.get(n, []):
                cap = analysis_caption(p, n, st.analysis.get(n))
                parts.append(f"<figure>{_img(p, cap)}<figcaption>{_e(cap)}</figcaption></figure>")
        return "".join(parts)

    def answer_html() -> str:
        return f'<p class="answer">{_e(answer_for_model(st.model, facts, chance))}</p>'

    sections = [
        _Section("question", "The question", guard(lambda: _question_html(st), "question")),
        _Section("verdicts", "Verdicts at a glance", guard(lambda: _grid_html(facts), "verdicts")),
        _Section("answer", f"The answer for {st.model}", guard(answer_html, "answer")),
        _Section("table", "Scores: tasks × variants", guard(lambda: _table_section(table, flags), "table")),
        _Section("figures", "Figures", guard(figs_html, "figures")),
    ]
    if sweep_section is not None:  # a sweep study: its curves and marked ratios right after the figures
        sections.append(_Section("sweep", "Sweep: ratio × calibration seeds", sweep_section))
    if twins:
        sections.append(
            _Section(
                "twins",
                "Twins: one changed rule, side by side",
                guard(lambda: _twins_html(twins, table), "twins"),
            )
        )
    sections += [
        _Section("hierarchy", "Representation hierarchy (analysis)", guard(analysis_figs_html, "analysis")),
        _Section(
            "case-study",
            "Case study: the same prompts, every variant",
            guard(lambda: _case_html(st), "case study"),
        ),
        _Section("guidance", "Guidance", guard(lambda: _guidance_html(facts), "guidance")),
        _Section("how-run", "How it was run", guard(lambda: _run_html(st), "how it was run")),
    ]
    missing = list(st.missing) + problems
    missing_html = ""
    if missing:
        missing_html = (
            '<section id="missing"><h2>What is missing</h2><ul class="missing">'
            + "".join(f"<li>{_e(m)}</li>" for m in missing)
            + "</ul></section>"
        )
    nav = "".join(f'<a href="#{s.id}">{_e(s.title.split(":")[0])}</a>' for s in sections)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "".join(f'<section id="{s.id}"><h2>{_e(s.title)}</h2>{s.body}</section>' for s in sections[:3])
    body += missing_html
    body += "".join(f'<section id="{s.id}"><h2>{_e(s.title)}</h2>{s.body}</section>' for s in sections[3:])
    pruned = len([v for v in st.variants if v != DENSE])
    from prunelens import __version__

    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>prunelens study — {_e(st.model)}</title><style>\n{_css()}</style></head><body><main>"
        f"<header><h1>When does pruning work on {_e(st.model)}?</h1>"
        f'<div class="sub">prunelens study report · {pruned} pruned variants · '
        f"{_e(st.root.name)}</div><nav>{nav}</nav></header>{body}"
        f"<footer>Written by prunelens {_e(__version__)} on {stamp} from the results stored in "
        f"<code>{_e(st.root.name)}/</code>.</footer></main></body></html>\n"
    )
