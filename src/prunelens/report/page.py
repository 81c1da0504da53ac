"""The report page: one self-contained HTML document (images as base64 data URIs, the CSS of ``report.css``
inline, no scripts, no network), built section by section."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunelens.report.analysis_results import analysis_caption, subspace_chance_note
from prunelens.report.answer import answer_for_model
from prunelens.report.guidance import pct
from prunelens.report.load import Study
from prunelens.report.markup import KIND_LABEL, VERDICT_CLASS, css, esc, img, num
from prunelens.report.stats import is_finite
from prunelens.report.tables import near_chance
from prunelens.report.twins import TwinGuidance
from prunelens.report.verdict_html import grid_html, guidance_html, twins_html
from prunelens.studies import verdicts as V
from prunelens.studies.config import DENSE
from prunelens.studies.facts import TwinFacts, VariantFacts

__all__ = ["render_html"]


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
    return VERDICT_CLASS.get(V.score_verdict(v), "")


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
    out += [f"<th>{esc(m)}</th>" for m in models]
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
        out = f'<span class="ci">[{num(iv["low"])}, {num(iv["high"])}]</span>' if iv else ""
        c = (r.get("paired") or [None] * nm)[i]
        if c is not None:
            title = esc(
                f"{c['test']} on {c['n']} shared examples: difference {c['difference']:+.4f}, "
                f"95 % interval [{c['interval'][0]:+.4f}, {c['interval'][1]:+.4f}]"
            )
            out += f'<span class="ci" title="{title}">p = {c["p_value"]:.2g}</span>'
        return out

    for r, row in zip(table["rows"], rows[2:]):
        kind = KIND_LABEL.get(r["kind"], r["kind"])
        mdd = r.get("min_detectable_difference")
        if mdd:  # what this n can tell apart, in accuracy points
            kind += f" · detects ≥ {100 * mdd['value']:.0f} pts at n = {mdd['n']}"
        out.append(
            f'<tr><td class="l">{esc(r["task"])}<span class="kind">{esc(kind)}</span></td>'
            f'<td class="l">{esc(r["metric"])}</td>'
        )
        out += [
            cell(esc(row[2 + i]), r["retained"][i], i, r["kind"] != "ppl", uncertainty(r, i))
            for i in range(nm)
        ]
        out.append("</tr>")
    av = table["averages"]
    for key, label in (
        ("non_generative", "non-generative average (mc + retrieval)"),
        ("generative", "generative average"),
    ):
        out.append(f'<tr class="avg"><td class="l" colspan="2">{esc(label)}</td>')
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
        f"guessing on {esc(items)}. Retained fractions on {which} are noise; raise the task limit or "
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
    out += [f"<th>{esc(n)}</th>" for n in names] + ['<th class="l">what it is</th></tr></thead><tbody>']
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
            f'<tr><td class="l">{esc(label)}</td>'
            + "".join(f"<td>{c}</td>" for c in cells)
            + f'<td class="l what">{esc(what)}</td></tr>'
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
        out.append(f'<p class="missing">{esc(chance)}</p>')
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
        title = " · ".join(esc(x) for x in (p.get("task"), p.get("id")) if x not in (None, ""))
        out.append(
            f'<div class="case"><h3>{title or f"prompt {i + 1}"}</h3>'
            f'<pre class="prompt">{esc(p.get("prompt"))}</pre>'
        )
        if p.get("target") not in (None, ""):
            out.append(f'<p class="sub">Reference answer: <b>{esc(p.get("target"))}</b></p>')
        out.append('<div class="answers">')
        for n in order:
            a = answers.get(n)
            text = a[i] if isinstance(a, list) and i < len(a) else None
            shown = esc(text) if text is not None else "—"
            out.append(f'<div class="ans"><div class="v">{esc(n)}</div><pre>{shown}</pre></div>')
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
    facts = [f"model <b>{esc(st.model)}</b>", f"seed <b>{esc(seed)}</b>"]
    if cfg.get("dtype") or cfg.get("device"):
        facts.append(f"{esc(cfg.get('dtype', ''))} on {esc(cfg.get('device', ''))}")
    if created:
        facts.append(f"created {esc(created)}")
    if is_finite(total):
        facts.append(f"total time {total / 60:.1f} min ({total:.0f} s)")
    out.append("<p>" + " · ".join(facts) + "</p>")
    if cfg:
        dumped = yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True, default_flow_style=None, width=100)
        out.append('<h3>Config</h3><pre class="yaml">' + esc(dumped) + "</pre>")
    versions = meta.get("versions")
    if isinstance(versions, dict) and versions:
        out.append(
            "<h3>Versions</h3><table><tbody>"
            + "".join(
                f'<tr><td class="l">{esc(k)}</td><td class="l">{esc(v)}</td></tr>'
                for k, v in versions.items()
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
            out.append(f'<tr><td class="l">{esc(k)}</td><td>{v:.1f}</td><td>{share}</td></tr>')
        out.append("</tbody></table></div>")
    return "".join(out)


def _question_html(st: Study) -> str:
    return (
        f"<p>Does pruning <b>{esc(st.model)}</b> keep it useful, and for what? He et al. (2026), "
        "“Demystifying When Pruning Works via Representation Hierarchies”, report that pruned language "
        "models keep their non-generative scores (multiple choice, retrieval) but collapse when they "
        "generate: pruning barely moves hidden states <i>h</i> and logits <i>z</i>, but the softmax "
        "amplifies the perturbation in the probabilities <i>p</i>, and autoregressive decoding compounds "
        "it. This report measures that claim on this model: scores of every variant against the dense "
        "model, how far each variant moves <i>h</i>, <i>z</i> and <i>p</i>, and a verdict per use.</p>"
    )


def _figures_html(figures: list[tuple[Path, str, str]]) -> str:
    if not figures:
        return "<p>No study figure could be drawn (no scores stored).</p>"
    return "".join(
        f"<figure>{img(p, alt)}<figcaption>{esc(cap)}</figcaption></figure>" for p, alt, cap in figures
    )


def _analysis_html(st: Study) -> str:
    """The hierarchy table, then each variant's analysis figures (twins side by side)."""
    parts = [_hierarchy_html(st)]
    for n in twin_order(st):
        if st.analysis_figures.get(n):
            parts.append(f"<h3>{esc(n)}</h3>")
        for p in st.analysis_figures.get(n, []):
            cap = analysis_caption(p, n, st.analysis.get(n))
            parts.append(f"<figure>{img(p, cap)}<figcaption>{esc(cap)}</figcaption></figure>")
    return "".join(parts)


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
            what_failed = f"{esc(type(exc).__name__)}: {esc(exc)}"
            return f'<p class="missing">This section could not be built: {what_failed}</p>'

    def answer_html() -> str:
        return f'<p class="answer">{esc(answer_for_model(st.model, facts, chance))}</p>'

    sections = [
        _Section("question", "The question", guard(lambda: _question_html(st), "question")),
        _Section("verdicts", "Verdicts at a glance", guard(lambda: grid_html(facts), "verdicts")),
        _Section("answer", f"The answer for {st.model}", guard(answer_html, "answer")),
        _Section("table", "Scores: tasks × variants", guard(lambda: _table_section(table, flags), "table")),
        _Section("figures", "Figures", guard(lambda: _figures_html(figures), "figures")),
    ]
    if sweep_section is not None:  # a sweep study: its curves and marked ratios right after the figures
        sections.append(_Section("sweep", "Sweep: ratio × calibration seeds", sweep_section))
    if twins:
        sections.append(
            _Section(
                "twins",
                "Twins: one changed rule, side by side",
                guard(lambda: twins_html(twins, table), "twins"),
            )
        )
    sections += [
        _Section(
            "hierarchy", "Representation hierarchy (analysis)", guard(lambda: _analysis_html(st), "analysis")
        ),
        _Section(
            "case-study",
            "Case study: the same prompts, every variant",
            guard(lambda: _case_html(st), "case study"),
        ),
        _Section("guidance", "Guidance", guard(lambda: guidance_html(facts), "guidance")),
        _Section("how-run", "How it was run", guard(lambda: _run_html(st), "how it was run")),
    ]
    return _document(st, sections, list(st.missing) + problems)


def _document(st: Study, sections: list[_Section], missing: list[str]) -> str:
    """The page around its sections: head, navigation, the "What is missing" list after the first three
    sections, the footer."""
    missing_html = ""
    if missing:
        missing_html = (
            '<section id="missing"><h2>What is missing</h2><ul class="missing">'
            + "".join(f"<li>{esc(m)}</li>" for m in missing)
            + "</ul></section>"
        )
    nav = "".join(f'<a href="#{s.id}">{esc(s.title.split(":")[0])}</a>' for s in sections)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "".join(f'<section id="{s.id}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections[:3])
    body += missing_html
    body += "".join(f'<section id="{s.id}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections[3:])
    pruned = len([v for v in st.variants if v != DENSE])
    from prunelens import __version__

    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>prunelens study — {esc(st.model)}</title><style>\n{css()}</style></head><body><main>"
        f"<header><h1>When does pruning work on {esc(st.model)}?</h1>"
        f'<div class="sub">prunelens study report · {pruned} pruned variants · '
        f"{esc(st.root.name)}</div><nav>{nav}</nav></header>{body}"
        f"<footer>Written by prunelens {esc(__version__)} on {stamp} from the results stored in "
        f"<code>{esc(st.root.name)}/</code>.</footer></main></body></html>\n"
    )
