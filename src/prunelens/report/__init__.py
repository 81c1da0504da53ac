"""The study report: from a study directory's stored results, tables, figures, guidance and ``report.html``.

Usage::

    from prunelens.report import build_report
    build_report("runs/study")        # → runs/study/report/report.html   (CLI: ``prunelens report DIR``)

Reads (every file optional; what is missing is listed in the report, nothing crashes)::

    STUDY/study.json                         config, versions, created, timings
    STUDY/variants/<v>/info.json             name, parameters, prune plan
    STUDY/eval/<v>/summary.json              scores per task
    STUDY/eval/fidelity.json                 pruned vs dense generations
    STUDY/analysis/<v>/summary.json          the analysis pipeline's summary (headline numbers of <v>)
    STUDY/analysis/<v>/figures/*.png         the analysis figures (embedded as they are)
    STUDY/predictor.json                     the one-pass predictor Var_p(Δz)/(2T²) per variant
    STUDY/case_study.json                    the same prompts answered by every variant

Writes ``STUDY/report/``: ``table.csv|md|json`` (the paper's Table 1/2 shape, via
:func:`prunelens.evaluation.runner.comparison_table`), ``figures/*.png|svg`` (retained scores and
probability-space divergence; predictor against measured degradation), ``guidance.json`` and one
self-contained ``report.html`` (images as base64 data URIs, inline CSS, no scripts, no network).

Modules, each one job: :mod:`~prunelens.report.stats` (ranks, Spearman), :mod:`~prunelens.report.load`
(the study directory → :class:`Study`), :mod:`~prunelens.report.analysis_results` (the analysis summary's
headline numbers, figure order and captions), :mod:`~prunelens.report.tables` (the comparison table and
per-variant facts), :mod:`~prunelens.report.figures` (the study figures and their captions),
:mod:`~prunelens.report.guidance`, :mod:`~prunelens.report.twins` and :mod:`~prunelens.report.answer` (the
verdicts, the twin comparisons and the answer in words; the rules that decide them are
:mod:`prunelens.studies.verdicts` and :mod:`prunelens.studies.twins`), :mod:`~prunelens.report.sweep` (a
sweep's seed statistics and summary) and :mod:`~prunelens.report.sweep_page` (its figure and section),
:mod:`~prunelens.report.markup`, :mod:`~prunelens.report.verdict_html` and :mod:`~prunelens.report.page`
(the HTML page, styled by ``report.css``) and :mod:`~prunelens.report.build` (the whole report).
"""

from prunelens.report.analysis_results import AnalysisHeadline, analysis_caption
from prunelens.report.build import REPORT_DIR, build_report
from prunelens.report.figures import predictor_caption, predictor_figure, story_caption, story_figure
from prunelens.report.load import Study, load_study
from prunelens.report.page import render_html
from prunelens.report.stats import rankdata, spearman
from prunelens.report.tables import build_tables, near_chance, variant_facts
from prunelens.studies.config import DENSE

__all__ = [
    "Study",
    "load_study",
    "AnalysisHeadline",
    "build_tables",
    "near_chance",
    "variant_facts",
    "rankdata",
    "spearman",
    "story_figure",
    "predictor_figure",
    "story_caption",
    "predictor_caption",
    "analysis_caption",
    "render_html",
    "build_report",
    "REPORT_DIR",
    "DENSE",
]
