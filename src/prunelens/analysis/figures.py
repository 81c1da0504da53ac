"""Figures that tell the representation-hierarchy story for one analysed model (matplotlib, PNG + SVG).

Each function takes the tidy tables of :mod:`prunelens.analysis.tables` and writes ``name.png`` and
``name.svg`` into a directory, returning the paths:

* :func:`layerwise` — per layer, for attention and MLP: median cosine of dense vs pruned in ``h``, ``z``
  (raw and centred) and ``p`` (interquartile band), and the KL divergence; the variant's own sublayers
  are marked (the other layers show the drop-each counterfactual);
* :func:`estimate_vs_real` — Theorem 1 (h and z), Theorem 2 (``1 − cos p``) and Theorem 3 (KL): estimate
  against the exact value per token, log–log, with the ``y = x`` line;
* :func:`estimate_ratio_vs_kl` — Theorem 2 and Theorem 3 estimate/real against the exact KL (log–log), at
  the sublayer transitions and along decoding (teacher-forced, free-running): per-token points and the
  median per decade of KL, with the ``ratio = 1`` line, so one sees where the estimate holds and where not;
* :func:`decoding_steps` — cosine per space and KL along decoding steps, teacher-forced and free-running
  (median over prompts with interquartile band), first divergence steps marked;
* :func:`option_subspace` — option subspace versus full vocabulary: KL and ``1 − cos p`` per question,
  and how often the chosen option changes;
* :func:`top_tokens` — the dense model's top tokens at the answer position with their dense and pruned
  probabilities, for a few questions.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "layerwise",
    "estimate_vs_real",
    "estimate_ratio_vs_kl",
    "decoding_steps",
    "option_subspace",
    "top_tokens",
    "save",
    "slug",
]

_SPACE_STYLE = {
    "h": ("#1f77b4", "h (hidden)"),
    "z": ("#2ca02c", "z (logits)"),
    "zc": ("#98df8a", "z centred"),
    "p": ("#d62728", "p (probabilities)"),
}


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "variant"


def save(fig, directory: str | Path, name: str) -> list[Path]:
    """Write ``fig`` as PNG and SVG; close it."""
    plt = pyplot()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    fig.set_layout_engine("tight")  # laid out once; bbox_inches="tight" would redraw for every format
    for ext in ("png", "svg"):
        p = directory / f"{name}.{ext}"
        fig.savefig(p, dpi=110 if ext == "png" else None)
        paths.append(p)
    plt.close(fig)
    return paths


def _t0(df: pd.DataFrame) -> float | None:
    t = df["temperature"].dropna().unique() if "temperature" in df else []
    return float(sorted(t)[0]) if len(t) else None


def layerwise(summary: pd.DataFrame, directory, variant: str, T: float | None = None) -> list[Path]:
    """``summary``: the ``summary_transitions`` table
    (one row per variant × layer × sublayer × space × metric)."""
    plt = pyplot()
    s = summary[summary["variant"] == variant]
    T = _t0(s) if T is None else T
    fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharex=True)
    for col, kind in enumerate(("attn", "mlp")):
        k = s[s["sublayer"] == kind]
        ax = axes[0, col]
        for space, metric in (("h", "cos"), ("z", "cos"), ("zc", "centered_cos"), ("p", "cos")):
            sp = "z" if space == "zc" else space
            g = k[(k["space"] == sp) & (k["metric"] == metric)]
            if sp == "p":
                g = g[np.isclose(g["temperature"], T)]
            g = g.sort_values("layer")
            if g.empty:
                continue
            color, label = _SPACE_STYLE[space]
            ax.plot(g["layer"], g["median"], "-o", ms=3, color=color, label=label)
            ax.fill_between(g["layer"], g["q25"], g["q75"], color=color, alpha=0.15)
            inv = g[g["in_variant"].astype(bool)]
            if len(inv) and len(inv) < len(g):
                ax.scatter(inv["layer"], inv["median"], s=60, facecolors="none", edgecolors="k", zorder=5)
        ax.set_title(f"{'attention' if kind == 'attn' else 'MLP'}: dense vs pruned after the sublayer")
        ax.set_ylabel("cosine (median, IQR band)")
        ax.grid(alpha=0.3)
        ax = axes[1, col]
        for metric, color, label in (
            ("kl", "#d62728", "KL(p‖p′)"),
            ("theorem3", "#ff9896", "Theorem 3 estimate"),
        ):
            g = k[
                (k["space"] == "p") & (k["metric"] == metric) & np.isclose(k["temperature"], T)
            ].sort_values("layer")
            if g.empty:
                continue
            ax.plot(g["layer"], g["median"].clip(lower=1e-12), "-o", ms=3, color=color, label=label)
            ax.fill_between(
                g["layer"], g["q25"].clip(lower=1e-12), g["q75"].clip(lower=1e-12), color=color, alpha=0.15
            )
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel(f"KL at T={T:g} (median, IQR)")
        ax.grid(alpha=0.3)
    for row, loc in ((0, "lower left"), (1, "upper left")):  # the first panel of each row that has curves
        ax = next((a for a in axes[row] if a.get_legend_handles_labels()[0]), None)
        if ax is not None:
            ax.legend(fontsize=8, loc=loc)
    fig.suptitle(
        f"{variant}: similarity in hidden, logit and probability space per layer "
        "(circles: sublayers the variant prunes; others: drop-each)",
        fontsize=10,
    )
    return save(fig, directory, f"layerwise_{slug(variant)}")


def _pairs(df: pd.DataFrame, space: str, est: str, real: str, T, max_points: int, seed: int = 0):
    d = df[df["space"] == space]
    if space == "p":
        d = d[np.isclose(d["temperature"], T)]
    key = (
        ["prompt", "position", "layer", "sublayer"] if "layer" in d.columns else ["prompt", "step", "regime"]
    )
    a = d[d["metric"] == est].set_index(key)["value"]
    b = d[d["metric"] == real].set_index(key)["value"]
    j = pd.concat([a.rename("est"), b.rename("real")], axis=1, join="inner").dropna()
    # below ~1e-12 float32 values are rounding noise: keep the axes to the meaningful decades
    j = j[(j["est"] > 1e-12) & (j["real"] > 1e-12) & np.isfinite(j["est"]) & np.isfinite(j["real"])]
    if len(j) > max_points:
        j = j.sample(max_points, random_state=seed)
    return j["real"].to_numpy(), j["est"].to_numpy()


def estimate_vs_real(
    transitions: pd.DataFrame, directory, variant: str, T: float | None = None, max_points: int = 4000
) -> list[Path]:
    """Per-token estimates against exact values (``transitions`` long table, or ``trajectories``)."""
    plt = pyplot()
    d = transitions[transitions["variant"] == variant]
    T = _t0(d) if T is None else T
    panels = [
        ("h", "theorem1", "one_minus_cos", "Theorem 1, h: ‖Δh⊥‖²/2‖h‖² vs 1 − cos"),
        ("z", "theorem1", "one_minus_cos", "Theorem 1, z: ‖Δz⊥‖²/2‖z‖² vs 1 − cos"),
        ("p", "theorem2", "one_minus_cos", f"Theorem 2: Var_r(Δz)/2T² vs 1 − cos(p) (T={T:g})"),
        ("p", "theorem3", "kl", f"Theorem 3: Var_p(Δz)/2T² vs KL(p‖p′) (T={T:g})"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.5))
    for ax, (space, est, real, title) in zip(axes, panels):
        x, y = _pairs(d, space, est, real, T, max_points)
        if len(x):
            ax.scatter(x, y, s=4, alpha=0.3, rasterized=True)
            lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
            ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ratio = np.median(y / x)
            ax.legend(title=f"median est/real {ratio:.3g}", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("exact")
        ax.set_ylabel("estimate")
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"{variant}: second-order estimates against exact values (per token and sublayer)", fontsize=10
    )
    return save(fig, directory, f"estimate_vs_real_{slug(variant)}")


_RATIO_SOURCES = (  # (label, colour) per source of (exact KL, estimate/real) pairs
    ("sublayer transitions", "#1f77b4"),
    ("teacher-forced decoding", "#ff7f0e"),
    ("free-running decoding", "#2ca02c"),
)


def ratio_pairs(transitions: pd.DataFrame | None, trajectories: pd.DataFrame | None, variant: str, T=None):
    """``{source label: {"theorem2"|"theorem3": (exact KL, estimate/real)}}`` of one variant, per token.

    Transitions: the variant's own sublayers when the table marks any, else every sublayer (the selection
    of the summary's headline medians); trajectories: every decoding step of each regime.
    """
    from prunelens.analysis.tables import SIZE_FLOOR

    groups: list[tuple[str, pd.DataFrame, list[str]]] = []
    if transitions is not None and len(transitions):
        t = transitions[transitions["variant"] == variant]
        own = t["in_variant"].astype(bool)
        groups.append(
            (_RATIO_SOURCES[0][0], t[own] if own.any() else t, ["prompt", "position", "layer", "sublayer"])
        )
    if trajectories is not None and len(trajectories):
        tr = trajectories[trajectories["variant"] == variant]
        for regime, label in (
            ("teacher_forced", _RATIO_SOURCES[1][0]),
            ("free_running", _RATIO_SOURCES[2][0]),
        ):
            groups.append((label, tr[tr["regime"] == regime], ["prompt", "step"]))
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for label, d, key in groups:
        d = d[d["space"] == "p"]
        T0 = _t0(d) if T is None else T
        if T0 is None:
            continue
        d = d[np.isclose(d["temperature"], T0)]
        kl = d[d["metric"] == "kl"].set_index(key)["value"].rename("kl")
        pairs = {}
        for thm in ("theorem2", "theorem3"):
            r = d[d["metric"] == f"{thm}_ratio"].set_index(key)["value"].rename("ratio")
            j = pd.concat([kl, r], axis=1, join="inner")
            j = j[np.isfinite(j["kl"]) & np.isfinite(j["ratio"]) & (j["kl"] > SIZE_FLOOR)]
            if len(j):
                pairs[thm] = (j["kl"].to_numpy(np.float64), j["ratio"].to_numpy(np.float64))
        if pairs:
            out[label] = pairs
    return out


def estimate_ratio_vs_kl(
    transitions: pd.DataFrame | None,
    trajectories: pd.DataFrame | None,
    directory,
    variant: str,
    T: float | None = None,
    max_points: int = 3000,
) -> list[Path]:
    """Estimate/real of Theorems 2 and 3 against the exact KL(p‖p′), transitions and decoding in one view.

    Why: the headline medians say the estimates are near exact at sublayer transitions, but along decoding
    the perturbation is larger and the second-order expansion underestimates; this figure puts both on the
    same perturbation-size axis. Points: per token (sampled to ``max_points`` per source); lines: the median
    per decade of KL with its interquartile band (:func:`prunelens.analysis.tables.ratio_by_size`).
    Nothing is written when neither table has pairs for ``variant``.
    """
    from prunelens.analysis.tables import ratio_by_size

    pairs = ratio_pairs(transitions, trajectories, variant, T)
    if not pairs:
        return []
    plt = pyplot()
    colour = dict(_RATIO_SOURCES)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    rng = np.random.default_rng(0)
    titles = {
        "theorem2": "Theorem 2: Var_r(Δz)/2T² over 1 − cos(p, p′)",
        "theorem3": "Theorem 3: Var_p(Δz)/2T² over KL(p‖p′)",
    }
    for ax, thm in zip(axes, ("theorem2", "theorem3")):
        for label, by_thm in pairs.items():
            if thm not in by_thm:
                continue
            x, y = by_thm[thm]
            pick = rng.choice(len(x), max_points, replace=False) if len(x) > max_points else slice(None)
            xs, ys_ = x[pick], y[pick]
            pos = ys_ > 0  # a zero ratio has no place on the log axis (it still counts in the medians)
            ax.scatter(xs[pos], ys_[pos], s=3, alpha=0.2, color=colour[label], rasterized=True)
            bins = ratio_by_size(x, y)
            mid = [np.sqrt(b["size_lo"] * b["size_hi"]) for b in bins]
            ax.plot(
                mid,
                [b["median"] for b in bins],
                "-o",
                ms=4,
                color=colour[label],
                label=f"{label}: median {np.median(y):.2f} (n = {len(y)})",
            )
            ax.fill_between(
                mid, [b["q25"] for b in bins], [b["q75"] for b in bins], color=colour[label], alpha=0.15
            )
        ax.axhline(1.0, color="k", ls="--", lw=1, label="estimate = exact")
        ax.set_xscale("log")
        ax.set_yscale("log")
        # at least 0.5–2 on the y axis: a ratio of 0.98 should look close to 1, not fill the panel
        ys = np.concatenate([b[thm][1] for b in pairs.values() if thm in b] or [np.ones(1)])
        ys = ys[ys > 0] if (ys > 0).any() else np.ones(1)
        lo, hi = min(0.5, float(np.quantile(ys, 0.005))), max(2.0, float(np.quantile(ys, 0.995)))
        ax.set_ylim(lo / 1.1, hi * 1.1)
        decades = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
        steps = (1, 2, 5) if len(decades) <= 4 else (1,)  # 1-2-5 ticks while they fit, else decades
        ticks = [m * 10.0**e for e in decades for m in steps if lo <= m * 10.0**e <= hi]
        ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
        ax.yaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlabel("exact KL(p‖p′) (perturbation size)")
        ax.set_ylabel("estimate / real")
        ax.set_title(titles[thm], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(
        f"{variant}: where the second-order estimates hold (ratio ≈ 1) and where they underestimate (< 1); "
        "lines: median per decade of KL, IQR band",
        fontsize=10,
    )
    return save(fig, directory, f"estimate_ratio_vs_kl_{slug(variant)}")


def decoding_steps(
    summary_steps: pd.DataFrame, divergence: pd.DataFrame, directory, variant: str, T: float | None = None
) -> list[Path]:
    """``summary_steps``: ``summary_trajectory_steps`` (per variant × regime × step × space × metric)."""
    plt = pyplot()
    s = summary_steps[summary_steps["variant"] == variant]
    T = _t0(s) if T is None else T
    regimes = [r for r in ("teacher_forced", "free_running") if r in set(s["regime"])]
    fig, axes = plt.subplots(2, max(1, len(regimes)), figsize=(6 * max(1, len(regimes)), 7), squeeze=False)
    for col, regime in enumerate(regimes):
        g = s[s["regime"] == regime]
        ax = axes[0, col]
        for space in ("h", "z", "p"):
            d = g[(g["space"] == space) & (g["metric"] == "cos")]
            if space == "p":
                d = d[np.isclose(d["temperature"], T)]
            d = d.sort_values("step")
            if d.empty:
                continue
            color, label = _SPACE_STYLE[space]
            ax.plot(d["step"], d["median"], color=color, label=label)
            ax.fill_between(d["step"], d["q25"], d["q75"], color=color, alpha=0.15)
        ax.set_title(f"{regime.replace('_', '-')}: dense vs pruned final outputs")
        ax.set_ylabel("cosine (median over prompts, IQR)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
        ax = axes[1, col]
        d = g[(g["space"] == "p") & (g["metric"] == "kl") & np.isclose(g["temperature"], T)].sort_values(
            "step"
        )
        if not d.empty:
            ax.plot(d["step"], d["median"].clip(lower=1e-12), color="#d62728", label="KL median")
            ax.fill_between(
                d["step"], d["q25"].clip(lower=1e-12), d["q75"].clip(lower=1e-12), color="#d62728", alpha=0.15
            )
            ax.plot(d["step"], d["q95"].clip(lower=1e-12), ":", color="#d62728", label="KL q95")
        ax.set_yscale("log")
        ax.set_xlabel("decoding step")
        ax.set_ylabel(f"KL(p‖p′) at T={T:g}")
        ax.grid(alpha=0.3)
        dv = divergence[(divergence["variant"] == variant) & (divergence["regime"] == regime)]
        steps = dv["first_divergence_step"].dropna().astype(int).tolist()
        for st in steps:
            for r in (0, 1):
                axes[r, col].axvline(st, color="grey", lw=0.6, alpha=0.5)
        if steps:
            ax.legend(title=f"first divergence (grey lines): median step {np.median(steps):g}", fontsize=8)
        else:
            ax.legend(fontsize=8)
    fig.suptitle(f"{variant}: the gap along decoding", fontsize=10)
    return save(fig, directory, f"decoding_steps_{slug(variant)}")


def option_subspace(
    subspace: pd.DataFrame, choices: pd.DataFrame, directory, variant: str, T: float | None = None
) -> list[Path]:
    plt = pyplot()
    d = subspace[subspace["variant"] == variant]
    T = _t0(d) if T is None else T
    d = d[np.isclose(d["temperature"], T)]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, metric, label in ((axes[0], "kl", "KL(p‖p′)"), (axes[1], "one_minus_cos", "1 − cos(p, p′)")):
        w = d[d["metric"] == metric].pivot_table(
            index="example", columns="space", values="value", observed=True
        )
        if {"p_full", "p_options"} <= set(w.columns):
            x, y = w["p_full"].clip(lower=1e-12), w["p_options"].clip(lower=1e-12)
            ax.scatter(x, y, s=10, alpha=0.6, rasterized=True)
            lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
            ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.legend(fontsize=8, title=f"medians: full {x.median():.3g}, options {y.median():.3g}")
        ax.set_xlabel(f"full vocabulary {label}")
        ax.set_ylabel(f"option subspace {label}")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    c = choices[(choices["variant"] == variant) & np.isclose(choices["temperature"], T)]
    ax = axes[2]
    if len(c):
        vals = [c["changed"].mean(), c["dense_correct"].mean(), c["pruned_correct"].mean()]
        ax.bar(
            ["chosen option\nchanged", "dense\naccuracy", "pruned\naccuracy"],
            vals,
            color=["#d62728", "#1f77b4", "#ff7f0e"],
        )
        for i, v in enumerate(vals):
            ax.text(i, v + 0.01, f"{v:.2f}", ha="center", fontsize=9)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{len(c)} questions", fontsize=9)
    fig.suptitle(f"{variant}: answer-option subspace versus full vocabulary (T={T:g})", fontsize=10)
    return save(fig, directory, f"option_subspace_{slug(variant)}")


def top_tokens(top: pd.DataFrame, directory, variant: str, n_examples: int = 4) -> list[Path]:
    plt = pyplot()
    t = top[top["variant"] == variant]
    examples = list(dict.fromkeys(t["example"]))[:n_examples]
    fig, axes = plt.subplots(
        1, max(1, len(examples)), figsize=(5 * max(1, len(examples)), 4.5), squeeze=False
    )
    for ax, ex in zip(axes[0], examples):
        g = t[t["example"] == ex].sort_values("rank")
        x = np.arange(len(g))
        ax.bar(x - 0.2, g["p_dense"], 0.4, label="dense")
        ax.bar(x + 0.2, g["p_pruned"], 0.4, label="pruned")
        ax.set_xticks(x)
        ax.set_xticklabels([repr(s)[1:-1][:12] for s in g["token"]], rotation=60, fontsize=7)
        ax.set_title(str(ex)[:40], fontsize=9)
        ax.set_ylabel("probability")
        ax.legend(fontsize=8)
    fig.suptitle(
        f"{variant}: dense top tokens at the answer position, dense vs pruned probability", fontsize=10
    )
    return save(fig, directory, f"top_tokens_{slug(variant)}")
