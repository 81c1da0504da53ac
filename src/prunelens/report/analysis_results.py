"""What the report reads in ``STUDY/analysis/<v>/``: the headline numbers of ``summary.json``, the figures.

The study runs :func:`prunelens.analysis.pipeline.run_analysis` once per pruned variant, into
``analysis/<v>/``. Its ``summary.json`` is ``{"dense": …, "variants": {<v>: {...}}, "timings_s": …, …}``;
the entry of the variant holds (``prunelens.analysis.headlines.headline_transitions`` / ``_trajectories`` /
``_subspace``, each present only when that analysis ran)::

    transitions.variant_sublayers | all_sublayers
        .median_cos.{h,z,p}  .median_kl  .median_estimate_ratio.{theorem2,theorem3}
        .n_estimate_ratio.{theorem2,theorem3}  .estimate_ratio_by_kl (read by the figure, not here)
    trajectories.teacher_forced | free_running
        .median_cos.p  .median_kl  .first_divergence_steps (one step or null per prompt)
        .median_estimate_ratio.{theorem2,theorem3}  .n_estimate_ratio.{theorem2,theorem3}
    subspace.chosen_option_changed  .median_kl.{options,full}  .dense_accuracy  .questions
        .chance  .n_options

(``n_estimate_ratio``, ``chance`` and ``n_options`` are absent from older summaries: their medians are shown
without ``n``, their option subspace is not judged against chance.)

:class:`AnalysisHeadline` is the one reader of that schema.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelens.report.guidance import pct
from prunelens.report.stats import chance_bound, finite_or_none, is_finite

__all__ = [
    "AnalysisHeadline",
    "FIGURE_KINDS",
    "RATIO_CLOSE",
    "figure_order",
    "analysis_caption",
    "ratio_verdicts",
    "subspace_chance_note",
]


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
    the decoding steps teacher-forced and free-running (``tf_ratio_*`` / ``fr_ratio_*``: the Theorem 2 / 3
    estimate over the exact value along decoding, where the perturbation is larger than at one sublayer);
    ``first_divergence`` is the median first free-running step whose greedy tokens differ;
    ``choice_flip_rate``, ``kl_options`` and ``kl_full`` are the multiple-choice option-subspace numbers,
    measured on a letter-format prompt that the dense model answers with accuracy ``mc_dense_accuracy`` on
    ``mc_questions`` questions against ``mc_chance`` (the mean of 1 / number of options). ``n``: the number
    of values behind a median, by field name, where the summary stores it.
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
    tf_ratio_theorem2: float | None = None
    tf_ratio_theorem3: float | None = None
    fr_ratio_theorem2: float | None = None
    fr_ratio_theorem3: float | None = None
    first_divergence: float | None = None
    choice_flip_rate: float | None = None
    kl_options: float | None = None
    kl_full: float | None = None
    mc_dense_accuracy: float | None = None
    mc_questions: int | None = None
    mc_chance: float | None = None
    n: dict[str, int] = field(default_factory=dict)

    def subspace_near_chance(self) -> dict[str, Any] | None:
        """``{"score", "chance", "n", "bound"}`` when the dense letter-format accuracy of the option-subspace
        questions is below :func:`~prunelens.report.stats.chance_bound` (the rule of the score tables'
        near-chance flag), else ``None``; ``None`` too when accuracy, n or chance is not stored."""
        acc, n, c = self.mc_dense_accuracy, self.mc_questions, self.mc_chance
        if acc is None or not n or c is None or not 0 < c < 1:
            return None
        bound = chance_bound(c, n)
        return {"score": acc, "chance": c, "n": n, "bound": bound} if acc < bound else None

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
        n: dict[str, int] = {}
        for prefix, d in (("", t), ("tf_", tf), ("fr_", fr)):
            for thm in ("theorem2", "theorem3"):
                k = _number(d, "n_estimate_ratio", thm)
                if k is not None:
                    n[f"{prefix}ratio_{thm}"] = int(k)
        chance = _number(sub, "chance")
        opts = sub.get("n_options")
        if (
            chance is None
            and isinstance(opts, list)
            and len(opts) == 1
            and is_finite(opts[0])
            and opts[0] > 1
        ):
            chance = 1.0 / opts[0]
        questions = _number(sub, "questions")
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
            tf_ratio_theorem2=_number(tf, "median_estimate_ratio", "theorem2"),
            tf_ratio_theorem3=_number(tf, "median_estimate_ratio", "theorem3"),
            fr_ratio_theorem2=_number(fr, "median_estimate_ratio", "theorem2"),
            fr_ratio_theorem3=_number(fr, "median_estimate_ratio", "theorem3"),
            first_divergence=finite_or_none(statistics.median(steps)) if steps else None,
            choice_flip_rate=_number(sub, "chosen_option_changed"),
            kl_options=_number(sub, "median_kl", "options"),
            kl_full=_number(sub, "median_kl", "full"),
            mc_dense_accuracy=_number(sub, "dense_accuracy"),
            mc_questions=int(questions) if questions is not None else None,
            mc_chance=chance,
            n=n,
        )


def subspace_chance_note(headlines: dict[str, AnalysisHeadline]) -> str:
    """A plain sentence when the option-subspace numbers are measured on a prompt the dense model answers
    near chance (:meth:`AnalysisHeadline.subspace_near_chance`), else ``""``.

    Why: flips and KL between option distributions the dense model picks from at random describe noise,
    not choice; the score tables flag near-chance tasks by the same rule. Variants with the same dense
    numbers (the same questions) are named together.
    """
    groups: dict[tuple[float, float, int, float], list[str]] = {}
    for name, h in headlines.items():
        f = h.subspace_near_chance()
        if f:
            groups.setdefault((f["score"], f["chance"], f["n"], f["bound"]), []).append(name)
    if not groups:
        return ""
    items = "; ".join(
        f"{', '.join(vs)}: dense accuracy {score:.2f} on n = {n} questions against chance {chance:.2f}, "
        f"needs ≥ {bound:.2f}"
        for (score, chance, n, bound), vs in groups.items()
    )
    return (
        "Near chance (option subspace): the dense model is within two standard errors of random guessing on "
        f"the letter-format prompt of the option-subspace analysis ({items}). The option-subspace numbers "
        "(MC choice flips, KL options, KL full vocabulary) are measured on a prompt the model answers near "
        "chance, so they describe noise more than choice."
    )


# ----------------------------------------------------------------------------------------------------
# the analysis figures: reading order and captions (one sentence from the data)

FIGURE_KINDS = {
    "layerwise": (
        "Cosine in hidden, logit and probability space and KL per layer, attention and MLP sublayers"
    ),
    "estimate_vs_real": "Theorem 1–3 estimates against the exact values, per token",
    "estimate_ratio_vs_kl": (
        "Theorem 2 and 3 estimate/real against the perturbation size (exact KL), at sublayer transitions "
        "and along decoding"
    ),
    "decoding_steps": "Similarity and KL along decoding steps, teacher-forced and free-running",
    "option_subspace": "Multiple choice: the option subspace against the full vocabulary",
    "top_tokens": "The dense model's top tokens at the answer position, dense and pruned probabilities",
}


def figure_order(path: Path) -> tuple[int, str]:
    """The analysis figures in reading order: layer-wise, estimates, estimate/real by size, decoding, option
    subspace, top tokens, then the others."""
    kinds = list(FIGURE_KINDS)
    return next((i for i, k in enumerate(kinds) if path.stem.startswith(k)), len(kinds)), path.name


RATIO_CLOSE = (0.8, 1.25)  # estimate/real in this band (within a factor 1.25 of 1) counts as close to exact

_RATIO_WHERE = (  # (AnalysisHeadline field prefix, where it was measured)
    ("", "sublayer transitions"),
    ("tf_", "teacher-forced"),
    ("fr_", "free-running"),
)


def _places(where: list[str]) -> str:
    """``["sublayer transitions", "teacher-forced", "free-running"]`` → ``"at sublayer transitions and along
    decoding (teacher-forced and free-running)"``."""
    out = ["at sublayer transitions"] if "sublayer transitions" in where else []
    decoding = [w for w in where if w != "sublayer transitions"]
    if decoding:
        out.append(f"along decoding ({' and '.join(decoding)})")
    return " and ".join(out)


def ratio_verdicts(n: AnalysisHeadline, theorem: str) -> tuple[list[str], list[str], list[str]]:
    """Where the ``theorem`` (``"theorem2"`` / ``"theorem3"``) estimate is close to exact, underestimates
    and overestimates: three lists of :data:`_RATIO_WHERE` places, by the measured median ratio against
    :data:`RATIO_CLOSE`. Why: the caption must say in words, from the data, where the approximation holds."""
    close: list[str] = []
    under: list[str] = []
    over: list[str] = []
    for prefix, where in _RATIO_WHERE:
        v = getattr(n, f"{prefix}ratio_{theorem}")
        if is_finite(v):
            (
                close if RATIO_CLOSE[0] <= v <= RATIO_CLOSE[1] else under if v < RATIO_CLOSE[0] else over
            ).append(where)
    return close, under, over


def _ratio_caption(n: AnalysisHeadline) -> str:
    """The measured medians (with their n) of both theorems wherever they were measured, then in plain words
    where each estimate is close to exact and where it under- or overestimates."""
    parts, words = [], []
    lo, hi = RATIO_CLOSE
    for thm, label in (("theorem2", "Theorem 2"), ("theorem3", "Theorem 3")):
        vals = []
        for prefix, where in _RATIO_WHERE:
            key = f"{prefix}ratio_{thm}"
            v = getattr(n, key)
            if is_finite(v):
                k = n.n.get(key)
                vals.append(f"{where} {v:.2f}" + (f" (n = {k})" if k else ""))
        if not vals:
            continue
        parts.append(f"{label} {', '.join(vals)}")
        close, under, over = ratio_verdicts(n, thm)
        said = []
        if close:
            said.append(f"is close to exact (ratio within {lo:g}–{hi:g}) {_places(close)}")
        if under:
            said.append(f"underestimates (ratio below {lo:g}) {_places(under)}")
        if over:
            said.append(f"overestimates (ratio above {hi:g}) {_places(over)}")
        words.append(f"The {label} estimate " + "; it ".join(said))
    if not parts:
        return ""
    return "; median estimate/real: " + "; ".join(parts) + ". " + ". ".join(words)


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
            data += f", Theorem 3 estimate/real {f3('ratio_theorem3')} at these transitions"
    elif kind == "estimate_ratio_vs_kl":
        data = _ratio_caption(n)
    elif kind == "decoding_steps" and (is_finite(n.tf_kl) or is_finite(n.fr_kl)):
        data = f"; median KL teacher-forced {f3('tf_kl')}, free-running {f3('fr_kl')}"
        if is_finite(n.first_divergence):
            data += f", first greedy divergence at step {f3('first_divergence')} (median)"
    elif kind in ("option_subspace", "top_tokens") and is_finite(n.choice_flip_rate):
        data = (
            f"; the chosen option changes on {pct(n.choice_flip_rate)} of questions, median KL over the "
            f"options {f3('kl_options')} vs full vocabulary {f3('kl_full')}"
        )
        flag = n.subspace_near_chance()
        if flag:
            data += (
                f" — but the dense model answers this letter-format prompt near chance ({pct(flag['score'])} "
                f"on n = {flag['n']} against chance {pct(flag['chance'])}), so these numbers describe noise "
                "more than choice"
            )
    return f"{variant}: {what}{data}."
