"""The budgeted swap search's cost and what it buys, on the embedded model.

For each budget (default: 8 attention sublayers), choose one-shot by the exact generation KL on C4
calibration windows, then improve the set by ``--evaluations`` swap-search evaluations (each one KL of the
whole set on the same windows). Prints the search's seconds per evaluation, the accepted swaps, its fitness
(the calibration-set KL) before and after, and, on data neither step saw, the teacher-forced KL to the
dense model and the perplexity on WikiText-2 test windows of the one-shot and the searched sets.

    python benchmarks/bench_search.py [--budgets attn:8] [--evaluations 40] [--out search.json]

Run it alone: other processes on the cores change the timings (the load average is printed).
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as C  # noqa: E402


def main() -> None:
    ap = C.base_parser(__doc__)
    ap.add_argument("--budgets", default="attn:8", help="comma-separated target:n")
    ap.add_argument("--evaluations", type=int, default=40, help="swap-search set evaluations")
    ap.add_argument("--nsamples", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--heldout-windows", type=int, default=16)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    C.set_offline()

    import torch

    from prunelens.data.calibration import get_calibration
    from prunelens.models.adapter import Adapter
    from prunelens.prune.drop import drop
    from prunelens.prune.objectives import dense_reference, set_kl, temporarily_dropped

    device = C.resolve_device(args.device)
    spec, tok_path = C.resolve_specs(args.model)
    model, tok, _ = C.build_model(
        spec, device=device, dtype=args.dtype, layers=args.layers, seed=args.seed, tokenizer=tok_path
    )
    cal = get_calibration(tok, "c4", args.nsamples, args.seqlen, args.seed)
    bs = args.batch_size
    wiki = C.wikitext_windows(tok, args.heldout_windows, args.seqlen)
    ref = dense_reference(model, wiki, batch_size=bs)
    print(
        f"model {args.model}, torch threads {torch.get_num_threads()}; calibration c4 {args.nsamples} × "
        f"{args.seqlen}; held-out WikiText-2 {tuple(wiki.shape)}; load average before {C.loadavg()}",
        flush=True,
    )

    def perplexity(m) -> float:
        return C.window_perplexity(m, wiki, bs)

    def units(plan) -> list[tuple[int, str]]:
        return [(d["layer"], d["sublayer"]) for d in plan.dropped_sublayers] + [
            (b, "block") for b in plan.dropped_blocks
        ]

    def names(us) -> list[str]:
        return sorted(f"{kind}{layer}" for layer, kind in us)

    def measured(m, us, seconds: float) -> dict:
        kl, ppl = set_kl(m, wiki, ref, batch_size=bs), perplexity(m)
        return {"seconds": seconds, "units": names(us), "heldout_kl": kl, "wikitext2_ppl": ppl}

    out: dict = {"machine": C.machine_info(device), "args": vars(args), "dense_ppl": perplexity(model)}
    rows, results = [], []
    for item in args.budgets.split(","):
        target, n = item.split(":")
        r: dict = {"target": target, "n": int(n)}
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        plan = drop(
            m,
            cal,
            target=target,
            n=int(n),
            batch_size=bs,
            objective="generation",
            search_evaluations=args.evaluations,
            seed=args.seed,
        )
        total = time.perf_counter() - t0
        search = plan.scores["search"]
        searched = units(plan)
        # the one-shot set the search started from: its accepted swaps undone, last first (no second scoring)
        oneshot = list(searched)
        for swap in reversed(search["accepted_swaps"]):
            oneshot = [u for u in oneshot if u != tuple(swap["in"])] + [tuple(swap["out"])]
        with temporarily_dropped(Adapter(model), oneshot):
            r["one-shot"] = measured(model, oneshot, total - search["seconds"])
        r["search"] = measured(m, searched, total)
        r["search"]["search"] = {k: search[k] for k in ("seconds", "evaluations", "kl_before", "kl_after")}
        r["search"]["accepted_swaps"] = len(search["accepted_swaps"])
        del m
        s = r["search"]["search"]
        rows.append(
            [
                item,
                f"{s['seconds']:.0f} ({s['seconds'] / s['evaluations']:.2f} per evaluation)",
                f"{s['evaluations']} / {r['search']['accepted_swaps']}",
                f"{s['kl_before']:.4f} → {s['kl_after']:.4f}",
                f"{r['one-shot']['heldout_kl']:.4f} → {r['search']['heldout_kl']:.4f}",
                f"{r['one-shot']['wikitext2_ppl']:.2f} → {r['search']['wikitext2_ppl']:.2f}",
                " ".join(r["one-shot"]["units"]) + "  →  " + " ".join(r["search"]["units"]),
            ]
        )
        results.append(r)
        print(r, flush=True)
    C.print_table(
        rows,
        [
            "budget",
            "search s",
            "evaluations / accepted",
            "calibration KL",
            "WikiText-2 KL",
            "WikiText-2 ppl",
            "one-shot → searched set",
        ],
        title=f"swap search, generation objective (dense WikiText-2 ppl {out['dense_ppl']:.2f})",
    )
    out["results"], out["loadavg_after"] = results, C.loadavg()
    C.write_json(args.out, out)


if __name__ == "__main__":
    main()
