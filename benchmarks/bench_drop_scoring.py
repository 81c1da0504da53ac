"""Layer-drop scoring cost against one plain forward pass over the same calibration tokens.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_drop_scoring.py \
        [--nsamples 16 --seqlen 256 --batch-size 8 --reps 3] [--window 0] [--out drop_scoring.json]

Times ``prunelens.prune.scoring.similarities(model, ids)`` — the scoring pass behind ``drop()``: one
forward with hooks reading every block's residual stream and summing cosine similarities — against
``model(ids, use_cache=False)`` over the same windows in the same batches (both under
``torch.no_grad``, both computing the logits). The two alternate (forward, scoring, forward, …) after
one warm-up batch, ``--reps`` times each; the table shows every repetition and the medians, and the
ratio scoring / forward (the issue's limit is about 1×). ``--window N`` adds the N-block window
similarities (``drop(..., target="block", window=True)``).

Also: ``--device cuda``, ``--model llama7b [--layers N]`` (random 7B-shaped weights, no download),
``--dtype``, ``--threads``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as C  # noqa: E402


def main() -> None:
    ap = C.base_parser(__doc__)
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--window", type=int, default=0, help="also score windows of this many blocks")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="write the results as JSON to this file")
    args = ap.parse_args()
    C.set_offline()

    import torch

    from prunelens.data.calibration import get_calibration
    from prunelens.prune.scoring import similarities

    if args.threads:
        torch.set_num_threads(args.threads)
    device = C.resolve_device(args.device)
    spec, tok_path = C.resolve_specs(args.model)
    model, tok, _ = C.build_model(
        spec, device=device, dtype=args.dtype, layers=args.layers, seed=args.seed, tokenizer=tok_path
    )
    ids = C.fold_ids(get_calibration(tok, "c4", args.nsamples, args.seqlen, args.seed).input_ids, model)
    bs = args.batch_size
    print(
        f"model {args.model} ({model.config.num_hidden_layers} blocks), device {device}, {args.dtype}, "
        f"torch threads {torch.get_num_threads()}; calibration c4 {args.nsamples} × {args.seqlen} tokens, "
        f"batch {bs}; window {args.window or 'off'}; load average before {C.loadavg()}"
    )

    @torch.no_grad()
    def forward():
        for i in range(0, ids.shape[0], bs):
            model(ids[i : i + bs].to(device), use_cache=False)

    def scoring():
        return similarities(model, ids, batch_size=bs, window=args.window)

    with torch.no_grad():  # warm-up: allocator, kernels, first-call overheads
        model(ids[:bs].to(device), use_cache=False)
    C.sync(device)

    fwd, score, loads = [], [], []
    sims = None
    for r in range(args.reps):
        with C.Timer(device) as t:
            forward()
        fwd.append(t.s)
        with C.Timer(device) as t:
            sims = scoring()
        score.append(t.s)
        loads.append(C.loadavg()[0])
        C.stderr(
            f"rep {r + 1}/{args.reps}: forward {fwd[-1]:.2f} s, scoring {score[-1]:.2f} s "
            f"(load {loads[-1]:.1f})"
        )

    tokens = ids.numel()
    rows = [
        [
            str(r + 1),
            f"{f:.2f}",
            f"{s:.2f}",
            f"{s / f:.3f}",
            f"{tokens / f:,.0f}",
            f"{tokens / s:,.0f}",
            f"{ld:.1f}",
        ]
        for r, (f, s, ld) in enumerate(zip(fwd, score, loads))
    ]
    mf, ms = C.median(fwd), C.median(score)
    rows.append(
        [
            "median",
            f"{mf:.2f}",
            f"{ms:.2f}",
            f"{ms / mf:.3f}",
            f"{tokens / mf:,.0f}",
            f"{tokens / ms:,.0f}",
            "",
        ]
    )
    per_rep = [s / f for f, s in zip(fwd, score)]
    C.print_table(
        rows,
        ["rep", "forward s", "scoring s", "scoring/forward", "forward tok/s", "scoring tok/s", "load 1m"],
        title=f"Drop scoring vs one forward pass ({tokens:,} tokens)",
    )
    print(
        f"\nratio of medians: {ms / mf:.3f}×  (median of per-rep ratios {C.median(per_rep):.3f}×; "
        f"the issue's limit ≈ 1×)"
    )
    best_block = max(range(len(sims.block)), key=lambda i: sims.block[i])
    print(
        f"sanity: {sims.tokens:,} tokens scored; most droppable block {best_block} "
        f"(cos {sims.block[best_block]:.4f})"
    )
    C.write_json(
        args.out,
        {
            "benchmark": "drop_scoring",
            "args": vars(args),
            "machine": C.machine_info(device),
            "tokens": tokens,
            "forward_s": fwd,
            "scoring_s": score,
            "loadavg_1m": loads,
            "median_forward_s": mf,
            "median_scoring_s": ms,
            "ratio_of_medians": ms / mf,
            "median_ratio": C.median(per_rep),
        },
    )


if __name__ == "__main__":
    main()
