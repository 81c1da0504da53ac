"""The headline numbers of one analysed variant: what ``summary.json`` holds per variant and the CLI prints.

:func:`headline_transitions`, :func:`headline_trajectories` and :func:`headline_subspace` reduce one
analysis result to medians (its long table keeps every value); :func:`headline` flattens a whole summary
into one row per variant. The report reads these keys (``prunelens.report.analysis_results`` names the
schema), so a key renamed here is a format change.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from prunelens.analysis import tables as TB
from prunelens.analysis.trajectories import REGIMES

__all__ = ["headline", "headline_subspace", "headline_trajectories", "headline_transitions"]


def _s(v, q: float = 0.5) -> float | None:
    """Quantile ``q`` (median by default) of the non-NaN values, None if there are none."""
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    v = v[~np.isnan(v)]
    return float(np.quantile(v, q)) if v.size else None


def _n(v) -> int:
    """How many values :func:`_s` takes its quantile over (the non-NaN ones): the ``n`` of a median."""
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    return int((~np.isnan(v)).sum())


def _ratio_detail(kl, ratio2, ratio3) -> dict[str, Any]:
    """The ``n`` of the Theorem 2 / 3 estimate-ratio medians and the ratios per decade of the exact KL.

    Why: the second-order estimates are near exact at small perturbations (sublayer transitions) and
    underestimate at larger ones (along decoding); one median per group cannot show that, the ratio against
    the perturbation size can (the report draws and quotes it). ``kl`` and the ratios are aligned arrays.
    """
    return {
        "n_estimate_ratio": {"theorem2": _n(ratio2), "theorem3": _n(ratio3)},
        "estimate_ratio_by_kl": {
            "theorem2": TB.ratio_by_size(kl, ratio2),
            "theorem3": TB.ratio_by_size(kl, ratio3),
        },
    }


def _mean(v) -> float | None:
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else None


def headline_transitions(res) -> dict[str, Any]:
    """Medians over tokens × the variant's own sublayers (and over every sublayer, drop-each)."""
    T0 = res.temperatures[0]
    out: dict[str, Any] = {}
    groups = {"variant_sublayers": True, "all_sublayers": None}
    for label, inv in groups.items():
        if inv and not any(e.in_variant for e in res.entries):
            continue

        def sel(s, m, T=None, inv=inv):
            return res.select(s, m, T, in_variant=inv)

        d = {
            "n_sublayers": sum(1 for e in res.entries if inv is None or e.in_variant == inv),
            "median_cos": {
                "h": _s(sel("h", "cos")),
                "z": _s(sel("z", "cos")),
                "z_centered": _s(sel("z", "centered_cos")),
                "p": _s(sel("p", "cos", T0)),
            },
            "median_one_minus_cos": {
                "h": _s(sel("h", "one_minus_cos")),
                "z": _s(sel("z", "one_minus_cos")),
                "p": _s(sel("p", "one_minus_cos", T0)),
            },
            "median_kl": _s(sel("p", "kl", T0)),
            "median_kl_reverse": _s(sel("p", "kl_reverse", T0)),
            "median_estimate_ratio": {
                "theorem1_h": _s(sel("h", "theorem1_ratio")),
                "theorem1_z": _s(sel("z", "theorem1_ratio")),
                "theorem2": _s(sel("p", "theorem2_ratio", T0)),
                "theorem3": _s(sel("p", "theorem3_ratio", T0)),
            },
            "top1_agreement": _mean(sel("z", "top1_match")),
            **_ratio_detail(
                sel("p", "kl", T0), sel("p", "theorem2_ratio", T0), sel("p", "theorem3_ratio", T0)
            ),
        }
        for kind in ("attn", "mlp"):
            ent = [e for e in res.entries if e.kind == kind and (inv is None or e.in_variant == inv)]
            if ent:
                d[f"median_cos_{kind}"] = {
                    "h": _s(res.select("h", "cos", in_variant=inv, kind=kind)),
                    "z": _s(res.select("z", "cos", in_variant=inv, kind=kind)),
                    "p": _s(res.select("p", "cos", T0, in_variant=inv, kind=kind)),
                    "kl": _s(res.select("p", "kl", T0, in_variant=inv, kind=kind)),
                }
        out[label] = d
    out["temperature"] = T0
    return out


def headline_trajectories(res) -> dict[str, Any]:
    T0 = res.temperatures[0]
    out: dict[str, Any] = {"temperature": T0}
    for regime in REGIMES:
        keys = [k for k in res.values if k[0] == regime]
        if not keys:
            continue

        def cat(space, metric, T=None, regime=regime):
            arrs = res.values.get((regime, space, metric, T if space == "p" else None), [])
            return np.concatenate(arrs) if arrs else np.empty(0)

        kl_steps = res.values.get((regime, "p", "kl", T0), [])
        early, late = [], []
        for a in kl_steps:
            n = len(a)
            if n >= 4:
                early.append(a[: n // 4])
                late.append(a[-(n // 4) :])
        div = res.divergence.get(regime, [])
        out[regime] = {
            "steps": int(sum(len(a) for a in kl_steps)),
            "median_cos": {
                "h": _s(cat("h", "cos")),
                "z": _s(cat("z", "cos")),
                "z_centered": _s(cat("z", "centered_cos")),
                "p": _s(cat("p", "cos", T0)),
            },
            "median_kl": _s(cat("p", "kl", T0)),
            "mean_kl": _mean(cat("p", "kl", T0)),
            "q90_kl": _s(cat("p", "kl", T0), 0.9),
            "top1_agreement": _mean(cat("z", "top1_match")),
            "median_estimate_ratio": {
                "theorem2": _s(cat("p", "theorem2_ratio", T0)),
                "theorem3": _s(cat("p", "theorem3_ratio", T0)),
            },
            **_ratio_detail(
                cat("p", "kl", T0), cat("p", "theorem2_ratio", T0), cat("p", "theorem3_ratio", T0)
            ),
            "median_kl_first_quarter": _s(np.concatenate(early)) if early else None,
            "median_kl_last_quarter": _s(np.concatenate(late)) if late else None,
            "first_divergence_steps": div,
            "diverged": int(sum(d is not None for d in div)),
            "prompts": len(div),
        }
    return out


def headline_subspace(res) -> dict[str, Any]:
    T0 = res.temperatures[0]
    ch = [c for c in res.choices if c["temperature"] == T0]
    get = lambda space, metric: res.values.get((space, metric, T0))  # noqa: E731
    return {
        "temperature": T0,
        "questions": len(ch),
        "chosen_option_changed": float(np.mean([c["changed"] for c in ch])) if ch else None,
        "dense_accuracy": float(np.mean([c["dense_correct"] for c in ch])) if ch else None,
        # what a uniform guess scores on these questions: the report flags a dense accuracy within two
        # binomial standard errors of it (the letter-format prompt can be near chance for a small model)
        "n_options": sorted({int(c["n_options"]) for c in ch}),
        "chance": float(np.mean([1.0 / c["n_options"] for c in ch])) if ch else None,
        "pruned_accuracy": float(np.mean([c["pruned_correct"] for c in ch])) if ch else None,
        "median_option_mass_dense": _s([c["option_mass_dense"] for c in ch]),
        "median_kl": {"full": _s(get("p_full", "kl")), "options": _s(get("p_options", "kl"))},
        "median_cos_p": {"full": _s(get("p_full", "cos")), "options": _s(get("p_options", "cos"))},
        "median_estimate_ratio_theorem3": {
            "full": _s(get("p_full", "theorem3_ratio")),
            "options": _s(get("p_options", "theorem3_ratio")),
        },
    }


def headline(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat rows (one per variant) of the numbers the CLI prints."""
    rows = []
    for name, v in summary.get("variants", {}).items():
        t = v.get("transitions", {})
        tv = t.get("variant_sublayers") or t.get("all_sublayers") or {}
        row: dict[str, Any] = {"variant": name}
        if tv:
            row.update(
                {
                    "cos h": tv["median_cos"]["h"],
                    "cos z": tv["median_cos"]["z"],
                    "cos z (centred)": tv["median_cos"]["z_centered"],
                    "cos p": tv["median_cos"]["p"],
                    "KL(p‖p')": tv["median_kl"],
                    "Thm 1 est/real (h)": tv["median_estimate_ratio"]["theorem1_h"],
                    "Thm 1 est/real (z)": tv["median_estimate_ratio"]["theorem1_z"],
                    "Thm 2 est/real": tv["median_estimate_ratio"]["theorem2"],
                    "Thm 3 est/real": tv["median_estimate_ratio"]["theorem3"],
                }
            )
        tr = v.get("trajectories", {})
        for regime, short in (("teacher_forced", "TF"), ("free_running", "FR")):
            if regime in tr:
                row[f"{short} cos h / z / p"] = " / ".join(
                    "—" if tr[regime]["median_cos"][s] is None else f"{tr[regime]['median_cos'][s]:.4f}"
                    for s in ("h", "z", "p")
                )
                row[f"{short} KL median / q90"] = " / ".join(
                    "—" if x is None else f"{x:.3g}" for x in (tr[regime]["median_kl"], tr[regime]["q90_kl"])
                )
        if "free_running" in tr:
            row["first divergence step"] = tr["free_running"]["first_divergence_steps"]
        sub = v.get("subspace")
        if sub:
            row["MC option changed"] = sub["chosen_option_changed"]
            row["MC KL full / options"] = " / ".join(
                "—" if x is None else f"{x:.3g}"
                for x in (sub["median_kl"]["full"], sub["median_kl"]["options"])
            )
        rows.append(row)
    return rows
