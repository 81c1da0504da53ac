"""Repair budgets for Drop-8A on the embedded model: which learning rate, step count and precision
halve the held-out KL within 10 CPU-minutes, chosen on the repair's own held-out split and then
measured on data that neither trained nor chose.

Drop-8A is the default study's (8 attention sublayers by the cosine rule on C4 32 × 256, seed 0). Each
grid cell repairs it with the KL loss, LoRA rank 8, 4 windows of 256 C4 tokens per step, the
calibration of ``configs/study-repair.yaml`` (96 windows, the last 12 held out), and records the wall
and CPU seconds of the whole repair (training, held-out evaluations, checkpoints) and its held-out KL
before and after. The cell with the lowest held-out KL among those within ``--cpu-budget`` CPU seconds
is *chosen* on that split alone. Then every cell, and the unrepaired Drop-8A, is measured on test data:
the teacher-forced KL to the dense model and the perplexity on WikiText-2 test windows, and ARC-Easy and
PIQA test questions, each paired with the unrepaired model (McNemar).

    python benchmarks/bench_repair_budget.py --out runs/bench-repair-budget [--json FILE]

Resumable: a finished cell (its checkpoint written) is not repaired again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import _bench_common as C

DEFAULT_GRID = "5e-4:40:float32,1e-3:40:float32,2e-3:40:float32,1e-3:40:bfloat16,2e-3:80:bfloat16"
MC_TASKS = ("arc_easy", "piqa")


def _cells(grid: str) -> list[dict]:
    cells = []
    for item in grid.split(","):
        lr, steps, precision = item.split(":")
        cells.append({"lr": float(lr), "steps": int(steps), "precision": precision})
    return cells


def _name(cell: dict) -> str:
    return f"kl-lr{cell['lr']:g}-s{cell['steps']}-{cell['precision']}"


def _change(after: float, before: float) -> str:
    return f"{after / before - 1:+.0%}"


def _mc_cell(r: dict) -> str:
    cmp = r["vs_unrepaired"]
    return f"{r['score']:.3f} ({cmp['difference']:+.3f}, p={cmp['p_value']:.2f})"


def main() -> None:
    ap = C.base_parser(__doc__)
    ap.add_argument("--out", default="runs/bench-repair-budget")
    ap.add_argument("--grid", default=DEFAULT_GRID, help="comma-separated lr:steps:precision cells")
    ap.add_argument("--cpu-budget", type=float, default=600.0, help="CPU seconds a chosen repair may use")
    ap.add_argument("--heldout-windows", type=int, default=16, help="WikiText-2 test windows of 256")
    ap.add_argument("--mc-limit", type=int, default=200)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    C.set_offline()

    import prunelens
    from prunelens.evaluation.runner import EvalSettings, run_task
    from prunelens.evaluation.uncertainty import compare_paired
    from prunelens.prune.objectives import dense_reference, set_kl

    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    pruned = root / "Drop-8A"
    if not (pruned / "prune_plan.json").exists():
        cmd = [sys.executable, "-m", "prunelens", "prune", "drop", "--target", "attn", "--n", "8"]
        cmd += ["--nsamples", "32", "--seqlen", "256", "--seed", "0", "--overwrite", "--out", str(pruned)]
        subprocess.run(cmd, check=True)
    print("machine:", json.dumps(C.machine_info("cpu")), "load average at start:", C.loadavg(), flush=True)

    cells = _cells(args.grid)
    for cell in cells:
        out = root / _name(cell)
        if not (out / "prune_plan.json").exists():
            la = C.loadavg()
            prunelens.repair(
                str(pruned),
                out=out,
                loss="kl",
                steps=cell["steps"],
                lr=cell["lr"],
                rank=8,
                batch_size=4,
                eval_every=10,
                nsamples=96,
                precision=cell["precision"],
                overwrite=True,
            )
            cell["loadavg_before"] = la
        rep = json.loads((out / "prune_plan.json").read_text())["repair"]
        cell.update(
            name=_name(cell),
            seconds=rep["seconds"],
            cpu_seconds=rep["cpu_seconds_this_run"],
            steps_run=rep["steps_run"],
            kept_step=rep["kept_step"],
            heldout_before=rep["heldout_before"]["heldout_kl"],
            heldout_after=rep["heldout_after"]["heldout_kl"],
            loadavg_after=C.loadavg(),
        )
        print(
            f"{cell['name']}: held-out KL {cell['heldout_before']:.3f} -> {cell['heldout_after']:.3f} "
            f"({cell['heldout_after'] / cell['heldout_before']:.0%}), {cell['seconds']:.0f} s wall, "
            f"{cell['cpu_seconds']:.0f} CPU-s, kept step {cell['kept_step']}/{cell['steps_run']}",
            flush=True,
        )

    within = [c for c in cells if c["cpu_seconds"] <= args.cpu_budget]
    chosen = min(within, key=lambda c: c["heldout_after"])["name"] if within else None
    print(f"chosen on the repair's held-out split within {args.cpu_budget:.0f} CPU-s: {chosen}", flush=True)

    # --- test data: neither trained on nor used to choose ---------------------------------------
    dense, tok = prunelens.load()
    wiki = C.wikitext_windows(tok, args.heldout_windows, 256)
    ref = dense_reference(dense, wiki, batch_size=8)

    def perplexity(m) -> float:
        return C.window_perplexity(m, wiki, 8)

    settings = EvalSettings(limit=args.mc_limit, batch_size=32)

    def measure(m, t) -> dict:
        row: dict = {"wikitext2_kl": set_kl(m, wiki, ref, batch_size=8), "wikitext2_ppl": perplexity(m)}
        for task in MC_TASKS:
            r = run_task(m, t, task, settings)
            row[task] = {
                "score": r.score,
                "n": r.n,
                "per_id": {str(x["id"]): float(x["score"]) for x in r.records},
            }
        return row

    test = {"Full": {"wikitext2_ppl": perplexity(dense)}}
    del dense
    for name in ["Drop-8A"] + [c["name"] for c in cells]:
        t0 = time.perf_counter()
        m, t = prunelens.load(str(root / name))
        test[name] = measure(m, t)
        del m
        print(
            f"{name}: WikiText-2 KL {test[name]['wikitext2_kl']:.3f}, ppl {test[name]['wikitext2_ppl']:.1f}, "
            + ", ".join(f"{k} {test[name][k]['score']:.3f}" for k in MC_TASKS)
            + f" ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    base = test["Drop-8A"]
    for c in cells:
        row = test[c["name"]]
        for task in MC_TASKS:
            ids = sorted(set(base[task]["per_id"]) & set(row[task]["per_id"]))
            cmp = compare_paired(
                [base[task]["per_id"][i] for i in ids], [row[task]["per_id"][i] for i in ids]
            )
            row[task]["vs_unrepaired"] = cmp.to_dict()

    full_ppl = test["Full"]["wikitext2_ppl"]
    header = [
        "cell",
        "wall s",
        "CPU s",
        "kept/run",
        "held-out KL (C4 tail)",
        "WikiText-2 KL",
        "ppl",
        "gap closed",
    ] + [f"{t} (Δ, p)" for t in MC_TASKS]
    rows = [
        ["Drop-8A", "", "", "", "", f"{base['wikitext2_kl']:.3f}", f"{base['wikitext2_ppl']:.1f}", ""]
        + [f"{base[t]['score']:.3f}" for t in MC_TASKS]
    ]
    for c in cells:
        r = test[c["name"]]
        gap = (base["wikitext2_ppl"] - r["wikitext2_ppl"]) / (base["wikitext2_ppl"] - full_ppl)
        mark = " (chosen)" if c["name"] == chosen else ""
        rows.append(
            [
                c["name"] + mark,
                f"{c['seconds']:.0f}",
                f"{c['cpu_seconds']:.0f}",
                f"{c['kept_step']}/{c['steps_run']}",
                f"{c['heldout_before']:.3f} → {c['heldout_after']:.3f}"
                f" ({_change(c['heldout_after'], c['heldout_before'])})",
                f"{r['wikitext2_kl']:.3f} ({_change(r['wikitext2_kl'], base['wikitext2_kl'])})",
                f"{r['wikitext2_ppl']:.1f}",
                f"{gap:.0%}",
            ]
            + [_mc_cell(r[t]) for t in MC_TASKS]
        )
    C.print_table(
        rows, header, title=f"Drop-8A repairs (dense WikiText-2 ppl {full_ppl:.1f}; n = {args.mc_limit})"
    )
    for r in test.values():
        for task in MC_TASKS:
            if task in r:
                r[task].pop("per_id")
    C.write_json(
        args.json,
        {
            "machine": C.machine_info("cpu"),
            "args": vars(args),
            "cells": cells,
            "chosen": chosen,
            "test": test,
            "loadavg_end": C.loadavg(),
        },
    )


if __name__ == "__main__":
    main()
