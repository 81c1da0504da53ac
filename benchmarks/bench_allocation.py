"""Per-block sparsity allocation: uniform against OWL's outlier-ratio rule and the KL-sensitivity rule, for
Wanda and SparseGPT at a given overall sparsity, on the embedded model.

    HF_HUB_OFFLINE=1 PRUNELENS_DATA=../shared/data .venv/bin/python benchmarks/bench_allocation.py \
        [--methods wanda,sparsegpt] [--sparsities 0.5,0.7] [--nsamples 32 --seqlen 256] \
        [--heldout-windows 16] [--out allocation.json]

For every (method, sparsity, allocation) the dense model is copied and sparsified with
``prunelens.prune.sparsify.sparsify(..., allocation=...)`` on the same C4 calibration windows (``c4``:
documents 0–249, seeded), default lambda (0.08) and OWL's outlier threshold (5); the KL rule measures its
sensitivities on the first ``--sensitivity-windows`` (8) of those windows. Each pruned model is then
measured on data that neither the pruning nor the allocation saw:

* WikiText-2 test perplexity (the first ``--heldout-windows`` × ``--seqlen`` tokens of the test stream);
* the teacher-forced KL(p_dense ‖ p_pruned) of the next-token distributions, mean per token, on those
  WikiText-2 windows and on ``--heldout-windows`` windows of ``c4-heldout`` (C4 documents 250–299, never
  used for calibration).

Costs: the seconds the allocation's scores took (recorded in the plan) and the whole pruning call. The
spread of the allocated per-block sparsities and the Spearman correlation between the two rules' scores
are printed too. Reported whichever way it comes out; timings are only meaningful on an idle machine
(the load average is printed).
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
    ap.add_argument("--methods", default="wanda,sparsegpt")
    ap.add_argument("--sparsities", default="0.5,0.7")
    ap.add_argument("--allocations", default="uniform,owl,kl")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--heldout-windows", type=int, default=16)
    ap.add_argument(
        "--sensitivity-windows", type=int, default=8, help="calibration windows the KL rule measures on"
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    C.set_offline()

    import torch

    from prunelens.data.calibration import (
        bos_prefix,
        get_calibration,
        load_texts,
        sample_windows,
        token_stream,
    )
    from prunelens.prune.objectives import dense_reference, set_kl
    from prunelens.prune.sparsify import sparsify
    from prunelens.report.stats import spearman

    device = C.resolve_device(args.device)
    spec, tok_path = C.resolve_specs(args.model)
    model, tok, _ = C.build_model(
        spec, device=device, dtype=args.dtype, layers=args.layers, seed=args.seed, tokenizer=tok_path
    )
    cal = get_calibration(tok, "c4", args.nsamples, args.seqlen, args.seed)
    bs = args.batch_size
    wiki = C.wikitext_windows(tok, args.heldout_windows, args.seqlen)
    c4h = sample_windows(
        token_stream(tok, load_texts("c4-heldout")),
        args.heldout_windows,
        args.seqlen,
        args.seed,
        bos_prefix(tok),
    )
    ref_wiki = dense_reference(model, wiki, batch_size=bs)
    ref_c4h = dense_reference(model, c4h, batch_size=bs)
    print(
        f"model {args.model}, {model.config.num_hidden_layers} blocks, "
        f"torch threads {torch.get_num_threads()}; "
        f"calibration c4 {args.nsamples} × {args.seqlen}; held-out WikiText-2 {tuple(wiki.shape)}, "
        f"c4-heldout {tuple(c4h.shape)}; load average before {C.loadavg()}",
        flush=True,
    )

    def perplexity(m) -> float:
        return C.window_perplexity(m, wiki, bs)

    out: dict = {"machine": C.machine_info(device), "args": vars(args), "dense_ppl": perplexity(model)}
    out["heldout_tokens"] = {"wikitext2": int(wiki.numel()), "c4_heldout": int(c4h.numel())}
    print(f"dense WikiText-2 perplexity {out['dense_ppl']:.2f}", flush=True)
    rows, results = [], []
    for method in args.methods.split(","):
        for sparsity in [float(x) for x in args.sparsities.split(",")]:
            scores: dict[str, list[float]] = {}
            for allocation in args.allocations.split(","):
                m = copy.deepcopy(model)
                t0 = time.perf_counter()
                plan = sparsify(
                    m, cal, method=method, sparsity=sparsity, batch_size=bs, allocation=allocation
                )
                wall = time.perf_counter() - t0
                alloc = plan.sparsity.get("allocation", {})
                if alloc:
                    scores[allocation] = alloc["scores"]
                by_block = alloc.get("by_block", [sparsity] * model.config.num_hidden_layers)
                r = {
                    "method": method,
                    "sparsity": sparsity,
                    "allocation": allocation,
                    "achieved": plan.sparsity["achieved"]["overall"],
                    "by_block": by_block,
                    "scores": alloc.get("scores"),
                    "allocation_seconds": alloc.get("seconds", 0.0),
                    "prune_seconds": wall,
                    "wikitext2_ppl": perplexity(m),
                    "kl_wikitext2": set_kl(m, wiki, ref_wiki, batch_size=bs),
                    "kl_c4_heldout": set_kl(m, c4h, ref_c4h, batch_size=bs),
                    "loadavg": C.loadavg(),
                }
                del m
                results.append(r)
                rows.append(
                    [
                        method,
                        f"{sparsity:.0%}",
                        allocation,
                        f"{r['achieved']:.4f}",
                        f"{min(by_block):.3f}–{max(by_block):.3f}",
                        C.fmt(r["wikitext2_ppl"]),
                        C.fmt(r["kl_wikitext2"], ".4f"),
                        C.fmt(r["kl_c4_heldout"], ".4f"),
                        C.fmt(r["allocation_seconds"], ".1f"),
                        C.fmt(wall, ".1f"),
                    ]
                )
                print(" | ".join(rows[-1]), flush=True)
                out["results"] = results
                C.write_json(args.out, out)
            if "owl" in scores and "kl" in scores:
                rho = spearman(scores["owl"], scores["kl"])
                out.setdefault("owl_kl_spearman", {})[f"{method}@{sparsity}"] = rho
                print(f"Spearman ρ(OWL outlier ratio, KL sensitivity) {method} {sparsity:.0%}: {rho:.3f}")
    C.print_table(
        rows,
        [
            "method",
            "sparsity",
            "allocation",
            "achieved",
            "block range",
            "WikiText-2 ppl",
            "KL wiki",
            "KL c4-heldout",
            "alloc s",
            "prune s",
        ],
        title=f"dense WikiText-2 perplexity {out['dense_ppl']:.2f}",
    )
    out["loadavg_after"] = C.loadavg()
    C.write_json(args.out, out)


if __name__ == "__main__":
    main()
