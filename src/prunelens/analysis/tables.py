"""Tidy long tables of the analyses, and how they are written (Parquet + CSV + JSON, atomically).

Every measured value is one row; the columns say what it is. The tables and their columns
(:data:`TABLE_COLUMNS`):

``transitions``     variant, prompt, position, position_kind, token_id, layer, sublayer, counterfactual,
                    in_variant, space, metric, temperature, value
``trajectories``    variant, prompt, regime, step, space, metric, temperature, value
``trajectory_tokens``  variant, prompt, regime, step, dense_token, pruned_token, match
``divergence``      variant, prompt, regime, first_divergence_step, steps_dense, steps_pruned
``subspace``        variant, example, task, space, metric, temperature, value
``subspace_choices``   variant, example, task, label, n_options, temperature, dense_choice, pruned_choice,
                    changed, dense_correct, pruned_correct, option_mass_dense, option_mass_pruned
``subspace_top_tokens``  variant, example, task, rank, token_id, token, p_dense, p_pruned, rank_pruned
``summary_*``       the grouping columns of the table it summarises, then n, mean, std, min, q05, q25,
                    median, q75, q95, max (quantiles by linear interpolation, NaN values excluded and
                    counted in ``n_nan``)

``space`` is ``h`` (residual stream), ``z`` (logits) or ``p`` (probabilities); in the subspace tables
``p_full`` (whole vocabulary) or ``p_options`` (the answer-option tokens, renormalised).
``temperature`` is empty (NaN) for metrics that do not depend on it (spaces h and z). ``regime`` is
``teacher_forced`` or ``free_running``; ``counterfactual`` is ``drop`` or ``override``; ``in_variant``
says whether the variant itself prunes that sublayer (the other rows are the drop-each counterfactual).
Metric names are those of :mod:`prunelens.analysis.metrics` (``prob_`` prefixes dropped in space p).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prunelens.utils.io import atomic_write_json

__all__ = [
    "TABLE_COLUMNS",
    "STAT_COLUMNS",
    "transitions_frame",
    "transitions_summary",
    "trajectories_frames",
    "subspace_frames",
    "write_table",
    "write_tables",
    "summarize_frame",
    "summarize_values",
    "ratio_by_size",
    "SIZE_FLOOR",
    "write_json",
    "concat",
]

TABLE_COLUMNS: dict[str, list[str]] = {
    "transitions": [
        "variant",
        "prompt",
        "position",
        "position_kind",
        "token_id",
        "layer",
        "sublayer",
        "counterfactual",
        "in_variant",
        "space",
        "metric",
        "temperature",
        "value",
    ],
    "trajectories": ["variant", "prompt", "regime", "step", "space", "metric", "temperature", "value"],
    "trajectory_tokens": ["variant", "prompt", "regime", "step", "dense_token", "pruned_token", "match"],
    "divergence": ["variant", "prompt", "regime", "first_divergence_step", "steps_dense", "steps_pruned"],
    "subspace": ["variant", "example", "task", "space", "metric", "temperature", "value"],
    "subspace_choices": [
        "variant",
        "example",
        "task",
        "label",
        "n_options",
        "temperature",
        "dense_choice",
        "pruned_choice",
        "changed",
        "dense_correct",
        "pruned_correct",
        "option_mass_dense",
        "option_mass_pruned",
    ],
    "subspace_top_tokens": [
        "variant",
        "example",
        "task",
        "rank",
        "token_id",
        "token",
        "p_dense",
        "p_pruned",
        "rank_pruned",
    ],
}
STAT_COLUMNS = ["n", "n_nan", "mean", "std", "min", "q05", "q25", "median", "q75", "q95", "max"]
_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _cat(values) -> pd.Categorical:
    return pd.Categorical(values)


def transitions_frame(res) -> pd.DataFrame:
    """Long DataFrame of a :class:`~prunelens.analysis.transitions.TransitionsResult`."""
    n_tok = res.n_tokens
    n_ent = len(res.entries)
    keys = list(res.values)
    n_rows = len(keys) * n_ent * n_tok
    ent_layer = np.array([e.layer for e in res.entries], dtype=np.int16)
    ent_kind = np.array([e.kind for e in res.entries], dtype=object)
    ent_cf = np.array([e.counterfactual for e in res.entries], dtype=object)
    ent_in = np.array([e.in_variant for e in res.entries], dtype=bool)
    per_key = n_ent * n_tok
    tile_tok = lambda a: np.tile(a, n_ent * len(keys))  # noqa: E731
    rep_ent = lambda a: np.tile(np.repeat(a, n_tok), len(keys))  # noqa: E731
    spaces = np.repeat(np.array([k[0] for k in keys], dtype=object), per_key)
    metrics = np.repeat(np.array([k[1] for k in keys], dtype=object), per_key)
    temps = np.repeat(np.array([np.nan if k[2] is None else k[2] for k in keys], dtype=np.float32), per_key)
    values = np.concatenate([res.values[k].reshape(-1) for k in keys]) if keys else np.empty(0, np.float32)
    df = pd.DataFrame(
        {
            "variant": _cat(np.full(n_rows, res.variant, dtype=object)),
            "prompt": tile_tok(res.tokens["prompt"]).astype(np.int32),
            "position": tile_tok(res.tokens["position"]).astype(np.int32),
            "position_kind": _cat(tile_tok(res.tokens["position_kind"])),
            "token_id": tile_tok(res.tokens["token_id"]).astype(np.int32),
            "layer": rep_ent(ent_layer),
            "sublayer": _cat(rep_ent(ent_kind)),
            "counterfactual": _cat(rep_ent(ent_cf)),
            "in_variant": rep_ent(ent_in),
            "space": _cat(spaces),
            "metric": _cat(metrics),
            "temperature": temps,
            "value": values.astype(np.float32),
        }
    )
    return df[TABLE_COLUMNS["transitions"]]


def transitions_summary(res) -> pd.DataFrame:
    """``summary_transitions`` rows of a TransitionsResult: the statistics of each sublayer × metric over
    all tokens, and over the prompt and the generated tokens apart."""
    rows = []
    kinds = res.tokens["position_kind"]
    for (space, metric, T), arr in res.values.items():
        for j, (layer, kind, cf, inv) in enumerate(res.entries):
            base = {
                "variant": res.variant,
                "layer": layer,
                "sublayer": kind,
                "counterfactual": cf,
                "in_variant": inv,
                "space": space,
                "metric": metric,
                "temperature": np.nan if T is None else T,
            }
            rows.append({**base, "position_kind": "all", **summarize_values(arr[j])})
            for pk in ("prompt", "generated"):
                m = kinds == pk
                if m.any():
                    rows.append({**base, "position_kind": pk, **summarize_values(arr[j][m])})
    return pd.DataFrame(rows)


def trajectories_frames(res) -> dict[str, pd.DataFrame]:
    """``trajectories``, ``trajectory_tokens`` and ``divergence`` tables of a TrajectoriesResult."""
    cols: dict[str, list] = {c: [] for c in TABLE_COLUMNS["trajectories"]}
    for (regime, space, metric, T), per_prompt in res.values.items():
        for i, arr in enumerate(per_prompt):
            n = len(arr)
            if not n:
                continue
            cols["variant"].append(np.full(n, res.variant, dtype=object))
            cols["prompt"].append(np.full(n, i, dtype=np.int32))
            cols["regime"].append(np.full(n, regime, dtype=object))
            cols["step"].append(np.arange(1, n + 1, dtype=np.int32))
            cols["space"].append(np.full(n, space, dtype=object))
            cols["metric"].append(np.full(n, metric, dtype=object))
            cols["temperature"].append(np.full(n, np.nan if T is None else T, dtype=np.float32))
            cols["value"].append(arr.astype(np.float32))
    if cols["value"]:
        traj = pd.DataFrame({c: np.concatenate(v) for c, v in cols.items()})
        for c in ("variant", "regime", "space", "metric"):
            traj[c] = pd.Categorical(traj[c])
    else:
        traj = pd.DataFrame(columns=TABLE_COLUMNS["trajectories"])
    tok_rows, div_rows = [], []
    for regime, per_prompt in res.pruned_tokens.items():
        for i, ptoks in enumerate(per_prompt):
            dtoks = res.dense_tokens[i]
            for t in range(max(len(dtoks), len(ptoks))):
                a = dtoks[t] if t < len(dtoks) else None
                b = ptoks[t] if t < len(ptoks) else None
                tok_rows.append((res.variant, i, regime, t + 1, a, b, a is not None and a == b))
            div_rows.append((res.variant, i, regime, res.divergence[regime][i], len(dtoks), len(ptoks)))
    toks = pd.DataFrame(tok_rows, columns=TABLE_COLUMNS["trajectory_tokens"])
    for c in ("dense_token", "pruned_token"):
        toks[c] = toks[c].astype("Int64")
    div = pd.DataFrame(div_rows, columns=TABLE_COLUMNS["divergence"])
    div["first_divergence_step"] = div["first_divergence_step"].astype("Int64")
    return {"trajectories": traj[TABLE_COLUMNS["trajectories"]], "trajectory_tokens": toks, "divergence": div}


def subspace_frames(res) -> dict[str, pd.DataFrame]:
    """``subspace``, ``subspace_choices`` and ``subspace_top_tokens`` tables of a SubspaceResult."""
    rows = []
    for (space, metric, T), arr in res.values.items():
        for j, v in enumerate(arr):
            rows.append(
                (
                    res.variant,
                    res.examples[j],
                    res.tasks[j],
                    space,
                    metric,
                    np.nan if T is None else T,
                    float(v),
                )
            )
    sub = pd.DataFrame(rows, columns=TABLE_COLUMNS["subspace"])
    choices = pd.DataFrame(
        [{"variant": res.variant, **c} for c in res.choices], columns=TABLE_COLUMNS["subspace_choices"]
    )
    top = pd.DataFrame(
        [{"variant": res.variant, **t} for t in res.top_tokens], columns=TABLE_COLUMNS["subspace_top_tokens"]
    )
    return {"subspace": sub, "subspace_choices": choices, "subspace_top_tokens": top}


def summarize_values(v: np.ndarray) -> dict[str, float]:
    """``n``, ``n_nan``, mean, std, min, quantiles, median, max of the finite-or-inf (non-NaN) values."""
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    nan = np.isnan(v)
    w = v[~nan]
    out: dict[str, float] = {"n": int(w.size), "n_nan": int(nan.sum())}
    if w.size == 0:
        out.update({k: math.nan for k in STAT_COLUMNS[2:]})
        return out
    with np.errstate(invalid="ignore", over="ignore"):
        qs = np.quantile(w, (0.0, *_QUANTILES, 1.0))
        out.update(
            {
                "mean": float(np.mean(w)),
                "std": float(np.std(w)),
                "min": float(qs[0]),
                "q05": float(qs[1]),
                "q25": float(qs[2]),
                "median": float(qs[3]),
                "q75": float(qs[4]),
                "q95": float(qs[5]),
                "max": float(qs[6]),
            }
        )
    return out


SIZE_FLOOR = 1e-12  # below this an exact divergence of float32 states is rounding noise, not a perturbation


def ratio_by_size(size, ratio) -> list[dict[str, float]]:
    """Quartiles of ``ratio`` in each decade of ``size`` (one bin per power of ten), smallest first.

    Why: a median estimate/real ratio over all tokens hides *where* a second-order estimate holds. Binned by
    the perturbation size (the exact KL), it shows the estimate close to exact (ratio ≈ 1) for small
    perturbations and where it starts to under- or overestimate. Pairs where either value is not finite, or
    the size is at most :data:`SIZE_FLOOR`, are left out; each bin is ``{"size_lo", "size_hi", "n",
    "median", "q25", "q75"}`` (``size_lo ≤ size < size_hi``), empty decades are omitted.
    """
    s = np.asarray(size, dtype=np.float64).reshape(-1)
    r = np.asarray(ratio, dtype=np.float64).reshape(-1)
    if s.shape != r.shape:
        raise ValueError(f"size and ratio differ in length ({s.size} vs {r.size})")
    keep = np.isfinite(s) & np.isfinite(r) & (s > SIZE_FLOOR)
    s, r = s[keep], r[keep]
    if not s.size:
        return []
    dec = np.floor(np.log10(s)).astype(np.int64)
    out = []
    for d in np.unique(dec):
        w = r[dec == d]
        q25, med, q75 = np.quantile(w, (0.25, 0.5, 0.75))
        out.append(
            {
                "size_lo": float(10.0 ** int(d)),
                "size_hi": float(10.0 ** (int(d) + 1)),
                "n": int(w.size),
                "median": float(med),
                "q25": float(q25),
                "q75": float(q75),
            }
        )
    return out


def summarize_frame(df: pd.DataFrame, by: list[str], value: str = "value") -> pd.DataFrame:
    """Median, quantiles, mean... of ``value`` per group of ``by``
    (NaN group keys kept, NaN values counted)."""
    rows = []
    if df.empty:
        return pd.DataFrame(columns=[*by, *STAT_COLUMNS])
    for key, g in df.groupby(by, dropna=False, observed=True, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), **summarize_values(g[value].to_numpy())})
    return pd.DataFrame(rows, columns=[*by, *STAT_COLUMNS])


def _write_atomically(path: Path, write) -> Path:
    """``write(tmp)`` to a temporary sibling of ``path``, renamed into place: never a half-written file."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_table(
    df: pd.DataFrame, directory: str | Path, name: str, *, csv: bool = True, parquet: bool = True
) -> list[Path]:
    """Write ``df`` as ``name.parquet`` and ``name.csv`` under ``directory`` (each atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    if parquet:
        written.append(
            _write_atomically(directory / f"{name}.parquet", lambda p: df.to_parquet(p, index=False))
        )
    if csv:
        written.append(_write_atomically(directory / f"{name}.csv", lambda p: df.to_csv(p, index=False)))
    return written


def write_tables(tables: dict[str, pd.DataFrame], directory: str | Path, *, csv: bool = True) -> list[Path]:
    out: list[Path] = []
    for name, df in tables.items():
        out += write_table(df, directory, name, csv=csv)
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, data: Any) -> Path:
    """Atomic JSON (non-finite floats become null)."""
    atomic_write_json(path, _jsonable(data))
    return Path(path)


def concat(frames: Iterable[pd.DataFrame], name: str) -> pd.DataFrame:
    """Concatenate frames of one table, re-unifying categorical columns."""
    frames = [f for f in frames if f is not None and len(f)]
    if not frames:
        return pd.DataFrame(columns=TABLE_COLUMNS.get(name, []))
    df = pd.concat(
        [
            f.astype({c: "object" for c in f.columns if isinstance(f[c].dtype, pd.CategoricalDtype)})
            for f in frames
        ],
        ignore_index=True,
    )
    for c in df.columns:
        if df[c].dtype == object:
            try:
                df[c] = pd.Categorical(df[c])
            except TypeError:
                pass
    return df
