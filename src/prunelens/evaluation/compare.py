"""Write the comparison table (tasks × models) as CSV, Markdown and JSON."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from prunelens.utils.io import atomic_write_text


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def table_rows(table: dict[str, Any]) -> list[list[str]]:
    """Flat rows: header, parameters, one row per task (score and retained fraction), then the averages."""
    models = table["models"]
    pruned = models[1:]
    header = (
        ["task", "metric"]
        + [f"{m}" for m in models]
        + [f"{m} retained" for m in pruned]
        + [f"{m} 95% interval" for m in models]
        + [f"{m} {c}" for m in pruned for c in ("paired diff", "p")]
    )
    blank = [""] * (2 * len(models) + 2 * len(pruned) - 1)
    rows = [header, ["parameters", ""] + [str(p or "") for p in table["parameters"]] + blank]
    for r in table["rows"]:
        intervals = [
            f"[{_fmt(iv['low'])}, {_fmt(iv['high'])}]" if iv else "" for iv in r.get("intervals", [])
        ]
        intervals += [""] * (len(models) - len(intervals))
        paired = []
        for c in r.get("paired", [None] * len(models))[1:]:
            paired += ["", ""] if c is None else [_fmt(c["difference"]), f"{c['p_value']:.3g}"]
        paired += [""] * (2 * len(pruned) - len(paired))
        rows.append(
            [r["task"], r["metric"]]
            + [_fmt(v) for v in r["scores"]]
            + [_fmt(v) for v in r["retained"][1:]]
            + intervals
            + paired
        )
    av = table["averages"]
    for key in ("non_generative", "generative"):
        rows.append(
            [f"{key} average", "mean"]
            + [_fmt(v) for v in av[key]]
            + [_fmt(v) for v in av[f"{key}_retained"][1:]]
            + [""] * (len(models) + 2 * len(pruned))
        )
    return rows


def render_markdown(table: dict[str, Any]) -> str:
    rows = table_rows(table)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines) + "\n"


def write_comparison(table: dict[str, Any], stem: str | Path) -> list[Path]:
    stem = Path(stem)
    buf = io.StringIO()
    csv.writer(buf).writerows(table_rows(table))
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".json")]
    atomic_write_text(paths[0], buf.getvalue())
    atomic_write_text(paths[1], render_markdown(table))
    atomic_write_text(paths[2], json.dumps(table, indent=2) + "\n")
    return paths
