"""Repair on the embedded model: Drop-8A, Drop-8M and Wanda-50 % before and after `prunelens repair`,
and the KL repair against the cross-entropy baseline at the same budget (Drop-8A).

Runs the study config ``configs/study-repair.yaml`` (resumable: run the same command again after an
interruption), then prints, per variant, on data the repair did not train on:

* the repair itself: steps, wall and CPU seconds, held-out (C4 tail) teacher-forced KL and CE before/after;
* teacher-forced and free-running KL and ``cos p`` along decoding (the study's trajectory analysis);
* fidelity of greedy generations to the dense ones (GSM8K + NQ-Open: ROUGE-L, identical outputs, tokens
  before the first divergence);
* WikiText-2 perplexity; ARC-Easy and PIQA accuracy (200 questions each); the option-subspace KL;
* paired comparisons, repaired minus unrepaired and KL minus CE: McNemar for the accuracies, the paired
  bootstrap (interval) and sign-flip test (p) for per-prompt ROUGE-L.

    python benchmarks/bench_repair.py --out runs/bench-repair [--json runs/bench-repair.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _bench_common import REPO, loadavg, machine_info, set_offline

PAIRS = [
    ("Drop-8A", "Drop-8A+KL"),
    ("Drop-8A", "Drop-8A+CE"),
    ("Drop-8A+CE", "Drop-8A+KL"),
    ("Drop-8M", "Drop-8M+KL"),
    ("Wanda-50%", "Wanda-50%+KL"),
]
MC, GEN = ("arc_easy", "piqa"), ("gsm8k", "nq_open")


def _records(root: Path, variant: str, task: str) -> dict[str, dict]:
    from prunelens.evaluation.runner import load_records

    return {str(r["id"]): r for r in load_records(root / "eval" / variant, task)}


def _rouge_per_prompt(root: Path, variant: str) -> dict[str, float]:
    """ROUGE-L of each greedy generation against the dense model's (ids prefixed by the task)."""
    from prunelens.evaluation.fidelity import fidelity
    from prunelens.evaluation.runner import load_records

    out = {}
    for task in GEN:
        dense = load_records(root / "eval" / "Full", task)
        res = fidelity(dense, load_records(root / "eval" / variant, task), task=task)
        out.update({f"{task}/{r['id']}": float(r["rouge_l"]) for r in res.records})
    return out


def _paired(a: dict[str, float], b: dict[str, float]) -> dict:
    from prunelens.evaluation.uncertainty import compare_paired, sign_flip_p_value

    ids = sorted(set(a) & set(b))
    x, y = [a[i] for i in ids], [b[i] for i in ids]
    c = compare_paired(x, y).to_dict()
    if c["test"] != "exact McNemar":
        c["p_value"] = sign_flip_p_value([q - p for p, q in zip(x, y)])
        c["test"] = "paired bootstrap interval, sign-flip p"
    return c


def summarise(root: Path) -> dict:
    names = [p.name for p in sorted((root / "variants").iterdir()) if (p / "info.json").exists()]
    fid = json.loads((root / "eval" / "fidelity.json").read_text())
    rows = {}
    for n in names:
        info = json.loads((root / "variants" / n / "info.json").read_text())
        ev = json.loads((root / "eval" / n / "summary.json").read_text())["results"]
        row: dict = {"scores": {t: {"score": r["score"], "n": r["n"]} for t, r in ev.items()}}
        rep = (info.get("plan") or {}).get("repair") or {}
        if rep:
            row["repair"] = {
                k: rep[k]
                for k in (
                    "loss",
                    "steps_run",
                    "kept_step",
                    "tokens",
                    "seconds",
                    "cpu_seconds_this_run",
                    "stopped",
                )
            } | {"heldout_before": rep["heldout_before"], "heldout_after": rep["heldout_after"]}
        if n in fid:
            row["fidelity"] = {
                t: {k: fid[n][t].get(k) for k in ("rouge_l", "exact_match", "prefix_tokens")} for t in GEN
            } | {"n": sum(len(_records(root, n, t)) for t in GEN)}
        a = root / "analysis" / n / "summary.json"
        if a.exists():
            v = json.loads(a.read_text())["variants"][n]
            tr = v.get("trajectories", {})
            row["trajectories"] = {
                mode: {
                    "median_kl": tr[mode]["median_kl"],
                    "mean_kl": tr[mode]["mean_kl"],
                    "median_cos_p": tr[mode]["median_cos"]["p"],
                    "prompts": tr[mode]["prompts"],
                    "steps": tr[mode]["steps"],
                }
                for mode in ("teacher_forced", "free_running")
                if mode in tr
            }
            sub = v.get("subspace", {})
            if sub:
                row["subspace"] = {
                    "median_kl_full": sub["median_kl"]["full"],
                    "median_kl_options": sub["median_kl"]["options"],
                    "chosen_option_changed": sub["chosen_option_changed"],
                    "questions": sub["questions"],
                }
        rows[n] = row
    pairs = {}
    for before, after in PAIRS:
        if before not in rows or after not in rows:
            continue
        entry = {}
        for t in MC:
            a = {i: float(r["score"]) for i, r in _records(root, before, t).items()}
            b = {i: float(r["score"]) for i, r in _records(root, after, t).items()}
            entry[t] = _paired(a, b)
        entry["rouge_l"] = _paired(_rouge_per_prompt(root, before), _rouge_per_prompt(root, after))
        pairs[f"{after} vs {before}"] = entry
    return {"variants": rows, "pairs": pairs}


def _print(s: dict) -> None:
    rows = s["variants"]
    head = (
        "variant | repair s (CPU s) | held-out KL before → after | TF KL | FR KL | TF cos p | ROUGE-L | "
        "identical | first div. | WT2 ppl | ARC | PIQA | option KL"
    )
    print(f"\n| {head} |")
    print("|" + "---|" * 13)
    for n, r in rows.items():
        rep = r.get("repair")
        tr = r.get("trajectories", {})
        fid = r.get("fidelity", {})
        sc = r["scores"]

        def f(x, fmt="{:.3f}"):
            return "—" if x is None else fmt.format(x)

        rouge = [fid[t]["rouge_l"] for t in GEN if t in fid and fid[t]["rouge_l"] is not None]
        ident = [fid[t]["exact_match"] for t in GEN if t in fid and fid[t]["exact_match"] is not None]
        pref = [fid[t]["prefix_tokens"] for t in GEN if t in fid and fid[t]["prefix_tokens"] is not None]
        print(
            f"| {n} | "
            + (f"{rep['seconds']:.0f} ({rep['cpu_seconds_this_run']:.0f})" if rep else "—")
            + " | "
            + (
                f"{rep['heldout_before']['heldout_kl']:.3f} → {rep['heldout_after']['heldout_kl']:.3f}"
                if rep
                else "—"
            )
            + f" | {f(tr.get('teacher_forced', {}).get('mean_kl'))}"
            + f" | {f(tr.get('free_running', {}).get('mean_kl'))}"
            + f" | {f(tr.get('teacher_forced', {}).get('median_cos_p'), '{:.4f}')}"
            + f" | {f(sum(rouge) / len(rouge) if rouge else None, '{:.2f}')}"
            + f" | {f(sum(ident) / len(ident) if ident else None, '{:.0%}')}"
            + f" | {f(sum(pref) / len(pref) if pref else None, '{:.1f}')}"
            + f" | {f(sc.get('wikitext2', {}).get('score'), '{:.1f}')}"
            + f" | {f(sc.get('arc_easy', {}).get('score'))} | {f(sc.get('piqa', {}).get('score'))}"
            + f" | {f(r.get('subspace', {}).get('median_kl_options'), '{:.4f}')} |"
        )
    print("\npaired: difference (second − first) [95% interval], p, n")
    for name, e in s["pairs"].items():
        parts = [
            f"{k}: {v['difference']:+.3f} [{v['interval'][0]:+.3f}, {v['interval'][1]:+.3f}] "
            f"p={v['p_value']:.3g} n={v['n']}"
            for k, v in e.items()
        ]
        print(f"  {name}: " + "; ".join(parts))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-repair", help="study directory (resumed if it exists)")
    ap.add_argument("--config", default=str(REPO / "configs" / "study-repair.yaml"))
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    set_offline()
    import torch
    import yaml

    from prunelens.studies.config import parse_config
    from prunelens.studies.runner import run_study

    torch.set_num_threads(args.threads)
    print("machine:", json.dumps(machine_info("cpu")), "load average at start:", loadavg())
    cfg = parse_config(yaml.safe_load(Path(args.config).read_text()))
    t0 = time.perf_counter()
    run_study(cfg, args.out)  # resumes: finished units are kept
    print(f"study: {time.perf_counter() - t0:.0f} s wall (this run); load average at end: {loadavg()}")
    s = summarise(Path(args.out))
    _print(s)
    if args.json:
        Path(args.json).write_text(json.dumps(s, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
