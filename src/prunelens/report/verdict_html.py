"""The page's verdict sections: the grid at the top (variant × use, with intervals and n), the Guidance
section (the rule, then each verdict's reasons) and the Twins section (each twin pair side by side, with
the paired differences and the sentences). Words come from :mod:`prunelens.report.guidance` and
:mod:`prunelens.report.twins`; this module lays them out."""

from __future__ import annotations

from typing import Any

from prunelens.report.guidance import Verdict, guidance, pct, pct_interval, rule_text
from prunelens.report.markup import KIND_LABEL, badge, esc, num
from prunelens.report.stats import is_finite
from prunelens.report.twins import TwinGuidance, changed_rule_words, twin_difference
from prunelens.studies import verdicts as V
from prunelens.studies.facts import TaskTest, TwinFacts, VariantFacts
from prunelens.studies.twins import SCORES

__all__ = ["verdict_cell", "grid_html", "guidance_html", "twins_html"]


def verdict_cell(v: Verdict) -> str:
    """Badge, what the paired tests found, the retained fraction with its interval and the n per task."""
    bits = [badge(v.verdict)]
    if v.finding:
        bits.append(f'<div class="finding">{esc(v.finding)}</div>')
    if v.retained is not None and v.interval is not None:
        bits.append(
            f'<div class="ci">{pct(v.retained)} {pct_interval(v.interval)}'
            + (f" · n = {', '.join(str(n) for n in v.n.values())}" if v.n else "")
            + "</div>"
        )
    return "".join(bits)


def grid_html(facts: list[VariantFacts]) -> str:
    """The verdict grid at the top of the page: variant × use, each cell with its interval and n."""
    gs = guidance(facts)
    if not gs:
        return "<p>No pruned variant to judge yet.</p>"
    rows = "".join(
        f'<tr><td class="l">{esc(g.name)}</td><td class="l">{verdict_cell(g.non_generative)}</td>'
        f'<td class="l">{verdict_cell(g.generative)}</td></tr>'
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


def guidance_html(facts: list[VariantFacts]) -> str:
    gs = guidance(facts)
    out = ['<ol class="rule">'] + [f"<li>{esc(s)}</li>" for s in rule_text()] + ["</ol>"]
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
            f'<tr><td class="l">{esc(g.name)}</td><td class="l">{badge(g.non_generative.verdict)}</td>'
            f'<td class="l">{badge(g.generative.verdict)}</td>'
            f'<td class="why">Non-generative: {esc(why)}</td></tr>'
        )
    out.append("</tbody></table></div>")
    return "".join(out)


TWIN_NUMBERS = [  # (TwinFacts.numbers key, row label, format)
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
        f'<td>{esc(twin_difference(x))}</td><td class="l">{esc(x.test)}</td>'
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
        f'<div class="twin"><h3>{esc(a)} beside its twin {esc(b)}</h3>'
        f'<p class="sub">Changed rule: {esc(changed_rule_words(t))}.</p>'
        '<div class="tablewrap"><table><thead><tr><th class="l">task · measure</th>'
        f"<th>{esc(b)}</th><th>{esc(a)}</th><th>{esc(a)} − {esc(b)} [95% interval]</th>"
        '<th class="l">paired test</th><th>p</th></tr></thead><tbody>'
    ]
    holm = {
        d["task"]: d.get("p_holm")
        for use in (g.non_generative, g.generative)
        for d in use.tests
        if isinstance(d, dict)
    }
    for x in [*t.nongen_tests, *t.gen_tests, *t.shown_tests]:
        kind = KIND_LABEL.get(kinds.get(x.task, ""), kinds.get(x.task, ""))
        if kinds.get(x.task) == "ppl":  # its paired records are windows' mean NLL per token
            kind = "mean NLL per token of the windows, lower is better"
        judged = x in t.nongen_tests or (x in t.gen_tests and g.generative.measure == SCORES)
        note = kind + ("" if judged or x in t.nongen_tests else " · shown, not judged")
        out.append(
            f'<tr><td class="l">{esc(x.task)}<span class="kind">{esc(note)}</span></td>'
            f"<td>{num(x.reference)}</td><td>{num(x.value)}</td>"
            + _twin_test_cells(x, holm.get(x.task) if judged else None)
            + "</tr>"
        )
    for x in t.fidelity_tests:
        out.append(
            f'<tr><td class="l">ROUGE-L to dense · {esc(x.task)}</td><td>{x.reference:.3f}</td>'
            f"<td>{x.value:.3f}</td>" + _twin_test_cells(x) + "</tr>"
        )
    if t.fidelity is not None and len(t.fidelity_tests) != 1:  # one task: its row is the pooled one
        f = t.fidelity
        out.append(
            '<tr class="avg"><td class="l">ROUGE-L to dense, pooled over the generative tasks</td>'
            f"<td>{f.reference:.3f}</td><td>{f.value:.3f}</td>" + _twin_test_cells(f) + "</tr>"
        )
    for key, label, fmt in TWIN_NUMBERS:
        va, vb = (t.numbers.get(n, {}).get(key) for n in (a, b))
        if key == "rouge_l" and t.fidelity is not None or not (is_finite(va) or is_finite(vb)):
            continue
        out.append(
            f'<tr><td class="l">{esc(label)}</td><td>{_twin_value(vb, fmt)}</td>'
            f'<td>{_twin_value(va, fmt)}</td><td colspan="3" class="l note">measured, not tested</td></tr>'
        )
    for use in (g.non_generative, g.generative):
        out.append(
            f'<tr><td class="l">verdict, {esc(use.use)} use</td>'
            f"<td>{badge(use.verdicts.get(b, V.NOT_MEASURED))}</td>"
            f"<td>{badge(use.verdicts.get(a, V.NOT_MEASURED))}</td>"
            f'<td colspan="3" class="l note">{esc("moved" if use.moved else "same grade")}</td></tr>'
        )
    out.append("</tbody></table></div>")
    out.append(
        '<ul class="twin-says">'
        + "".join(f"<li>{esc(u.sentence)}</li>" for u in (g.non_generative, g.generative))
        + "</ul></div>"
    )
    return "".join(out)


def twins_html(twins: list[tuple[TwinFacts, TwinGuidance]], table: dict[str, Any] | None) -> str:
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
