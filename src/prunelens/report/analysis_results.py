"""What the report reads in ``STUDY/analysis/<v>/``: the headline numbers of ``summary.json``, the figures.

The study runs :func:`prunelens.analysis.pipeline.run_analysis` once per pruned variant, into
``analysis/<v>/``. Its ``summary.json`` is ``{"dense": …, "variants": {<v>: {...}}, "timings_s": …, …}``;
the entry of the variant holds (``prunelens.analysis.pipeline.headline_transitions`` / ``_trajectories`` /
``_subspace``, each present only when that analysis ran)::

    transitions.variant_sublayers | all_sublayers
        .median_cos.{h,z,p}  .median_kl  .median_estimate_ratio.{theorem2,theorem3}
    trajectories.teacher_forced | free_running
        .median_cos.p  .median_kl  .first_divergence_steps (one step or null per prompt)
    subspace.chosen_option_changed  .median_kl.{options,full}

:class:`AnalysisHeadline` is the one reader of that schema.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunelens.report.stats import finite_or_none, is_finite
from prunelens.study.guidance import pct

__all__ = ["AnalysisHeadline", "FIGURE_KINDS", "figure_order", "analysis_caption"]


def _section(d: Any, key: str) -> dict[str, Any]:
    v = d.get(key) if isinstance(d, dict) else None
    return v if isinstance(v, dict) else {}


def _number(d: dict[str, Any], *keys: str) -> float | None:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return finite_or_none(d)


@dataclass(frozen=True)
class AnalysisHeadline:
    """One variant's headline numbers from the analysis ``summary.json`` (``None`` where not measured).

    Medians over tokens: ``cos_*`` / ``kl_transitions`` / ``ratio_*`` over the variant's own sublayers
    (every sublayer when the variant has none of its own, e.g. a sparsified one), ``tf_*`` / ``fr_*`` over
    the decoding steps teacher-forced and free-running; ``first_divergence`` is the median first
    free-running step whose greedy tokens differ; ``choice_flip_rate``, ``kl_options`` and ``kl_full`` are
    the multiple-choice option-subspace numbers.
    """

    cos_h: float | None = None
    cos_z: float | None = None
    cos_p: float | None = None
    kl_transitions: float | None = None
    ratio_theorem2: float | None = None
    ratio_theorem3: float | None = None
    tf_cos_p: float | None = None
    tf_kl: float | None = None
    fr_cos_p: float | None = None
    fr_kl: float | None = None
    first_divergence: float | None = None
    choice_flip_rate: float | None = None
    kl_options: float | None = None
    kl_full: float | None = None

    @classmethod
    def from_summary(cls, summary: Any, variant: str) -> AnalysisHeadline:
        """The numbers of ``variant`` in a whole ``summary.json``: its entry under ``variants``, or the only
        entry there is; empty when there is none."""
        vs = summary.get("variants") if isinstance(summary, dict) else None
        if not isinstance(vs, dict):
            return cls()
        entry = vs.get(variant) if variant in vs else (next(iter(vs.values())) if len(vs) == 1 else None)
        return cls.from_variant(entry)

    @classmethod
    def from_variant(cls, entry: Any) -> AnalysisHeadline:
        """The numbers of one ``summary["variants"][<v>]`` entry; sections that are absent or malformed give
        ``None``."""
        if not isinstance(entry, dict):
            return cls()
        tr = _section(entry, "transitions")
        t = tr.get("variant_sublayers") or tr.get("all_sublayers") or {}
        traj = _section(entry, "trajectories")
        tf, fr = _section(traj, "teacher_forced"), _section(traj, "free_running")
        steps = fr.get("first_divergence_steps")
        steps = [s for s in steps if is_finite(s)] if isinstance(steps, list) else []
        sub = _section(entry, "subspace")
        return cls(
            cos_h=_number(t, "median_cos", "h"),
            cos_z=_number(t, "median_cos", "z"),
            cos_p=_number(t, "median_cos", "p"),
            kl_transitions=_number(t, "median_kl"),
            ratio_theorem2=_number(t, "median_estimate_ratio", "theorem2"),
            ratio_theorem3=_number(t, "median_estimate_ratio", "theorem3"),
            tf_cos_p=_number(tf, "median_cos", "p"),
            tf_kl=_number(tf, "median_kl"),
            fr_cos_p=_number(fr, "median_cos", "p"),
            fr_kl=_number(fr, "median_kl"),
            first_divergence=finite_or_none(statistics.median(steps)) if steps else None,
            choice_flip_rate=_number(sub, "chosen_option_changed"),
            kl_options=_number(sub, "median_kl", "options"),
            kl_full=_number(sub, "median_kl", "full"),
        )


# ----------------------------------------------------------------------------------------------------
# the analysis figures: reading order and captions (one sentence from the data)

FIGURE_KINDS = {
    "layerwise": (
        "Cosine in hidden, logit and probability space and KL per layer, attention and MLP sublayers"
    ),
    "estimate_vs_real": "Theorem 1–3 estimates against the exact values, per token",
    "decoding_steps": "Similarity and KL along decoding steps, teacher-forced and free-running",
    "option_subspace": "Multiple choice: the option subspace against the full vocabulary",
    "top_tokens": "The dense model's top tokens at the answer position, dense and pruned probabilities",
}


def figure_order(path: Path) -> tuple[int, str]:
    """The analysis figures in reading order: layer-wise, estimates, decoding, option subspace, top tokens,
    then the others."""
    kinds = list(FIGURE_KINDS)
    return next((i for i, k in enumerate(kinds) if path.stem.startswith(k)), len(kinds)), path.name


def analysis_caption(path: Path, variant: str, numbers: AnalysisHeadline | None) -> str:
    stem = path.stem
    kind = next((k for k in FIGURE_KINDS if stem.startswith(k)), None)
    what = FIGURE_KINDS[kind] if kind else stem.replace("_", " ").capitalize()
    n = numbers or AnalysisHeadline()

    def f3(k: str) -> str:
        v = getattr(n, k)
        return f"{v:.3g}" if is_finite(v) else "—"

    data = ""
    if kind in ("layerwise", "estimate_vs_real", None) and is_finite(n.cos_p):
        data = (
            f"; median cosine over its own sublayers: h {f3('cos_h')}, z {f3('cos_z')}, p {f3('cos_p')}, "
            f"KL {f3('kl_transitions')}"
        )
        if kind == "estimate_vs_real" and is_finite(n.ratio_theorem3):
            data += f", Theorem 3 estimate/real {f3('ratio_theorem3')}"
    elif kind == "decoding_steps" and (is_finite(n.tf_kl) or is_finite(n.fr_kl)):
        data = f"; median KL teacher-forced {f3('tf_kl')}, free-running {f3('fr_kl')}"
        if is_finite(n.first_divergence):
            data += f", first greedy divergence at step {f3('first_divergence')} (median)"
    elif kind in ("option_subspace", "top_tokens") and is_finite(n.choice_flip_rate):
        data = (
            f"; the chosen option changes on {pct(n.choice_flip_rate)} of questions, median KL over the "
            f"options {f3('kl_options')} vs full vocabulary {f3('kl_full')}"
        )
    return f"{variant}: {what}{data}."
