"""``build_report``: a study's stored results → ``STUDY/report/`` (tables, figures, guidance, the page)."""

from __future__ import annotations

from pathlib import Path

from prunelens.report.answer import answer_for_model
from prunelens.report.figures import predictor_caption, predictor_figure, story_caption, story_figure
from prunelens.report.guidance import axis_label, axis_reason, guidance, rule_text
from prunelens.report.load import load_study
from prunelens.report.page import render_html
from prunelens.report.tables import build_tables, near_chance, twin_facts, variant_facts
from prunelens.report.twins import TwinGuidance, twin_guidance
from prunelens.studies.facts import TwinFacts
from prunelens.studies.verdicts import generative_axis

__all__ = ["REPORT_DIR", "build_report"]

REPORT_DIR = "report"


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
    axis = generative_axis(facts)
    figures: list[tuple[Path, str, str]] = []
    rho, n_rho = None, 0
    if table is not None:
        try:
            paths = story_figure(facts, out / "figures", axis)
            alt = f"Retained non-generative score vs {axis_label(axis)} per variant, and median KL"
            figures.append((paths[0], alt, story_caption(facts, axis)))
        except Exception as exc:  # noqa: BLE001
            problems.append(f"the summary figure could not be drawn ({type(exc).__name__}: {exc})")
        try:
            paths, rho, n_rho = predictor_figure(facts, out / "figures", axis)
            if paths:
                figures.append(
                    (
                        paths[0],
                        "Predictor Var_p(dz)/(2T^2) vs generative degradation",
                        predictor_caption(facts, rho, n_rho, st.predictor, axis),
                    )
                )
            elif st.predictor is not None:
                problems.append(
                    "no variant has both a predictor value and a generative score or fidelity: "
                    "the predictor figure is not drawn"
                )
        except Exception as exc:  # noqa: BLE001
            problems.append(f"the predictor figure could not be drawn ({type(exc).__name__}: {exc})")
    twins: list[tuple[TwinFacts, TwinGuidance]] = []
    try:
        tf = twin_facts(st, table, facts, flags)
        twins = list(zip(tf, twin_guidance(tf, facts, axis)))
    except Exception as exc:  # noqa: BLE001
        problems.append(f"the twin comparisons could not be built ({type(exc).__name__}: {exc})")
    try:
        atomic_write_json(
            out / "guidance.json",
            {
                "rule": rule_text(),
                "answer": answer_for_model(st.model, facts, [f["task"] for f in flags]),
                "near_chance": flags,
                "generative_measure": {"kind": axis.kind, "reason": axis_reason(axis)},
                "predictor_spearman": {"rho": rho, "variants": n_rho},
                "variants": [g.to_dict() for g in guidance(facts)],
                "twins": [g.to_dict() for _, g in twins],
            },
        )
    except Exception as exc:  # noqa: BLE001
        problems.append(f"guidance.json could not be written ({type(exc).__name__}: {exc})")
    sweep_section = _sweep_section(st, table, facts, out, problems)
    page = render_html(
        st, table, facts, figures, problems, flags, sweep_section=sweep_section, twins=twins or None
    )
    path = out / "report.html"
    atomic_write_text(path, page)
    return path


def _sweep_section(st, table, facts, out: Path, problems: list[str]) -> str | None:
    """A sweep study's ``sweep.json|csv``, figure and page section (None for an ordinary study); a failure
    is listed in "What is missing" instead of breaking the report."""
    if not isinstance(st.meta.get("sweep"), dict):
        return None
    from prunelens.report.sweep_page import build_sweep

    try:
        built = build_sweep(st, table, facts, out)
    except Exception as exc:  # noqa: BLE001
        problems.append(f"the sweep section could not be built ({type(exc).__name__}: {exc})")
        return f'<p class="missing">The sweep section could not be built: {type(exc).__name__}.</p>'
    return built[2] if built else None
