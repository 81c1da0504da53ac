"""Pruning time and peak memory on one GPU for a Llama-2-7B-shaped model with random weights.

Times each pruning call alone (model building and calibration sampling are outside the timer) on a
fresh copy of the same random model: layer-drop scoring + removal (8 attention sublayers), Wanda 50 %,
SparseGPT 50 % and SparseGPT 2:4 (``-ts`` jobs: the same with ``true_sequential=True``, one pass per
block), all with the same calibration windows (C4, ``--nsamples`` ×
``--seqlen``, token ids folded into the random model's vocabulary). Also times one plain forward pass
over the calibration tokens as the floor to compare against. Random weights say nothing about
accuracy: this measures cost only.

    python benchmarks/bench_prune_gpu.py --device cuda --dtype bfloat16 [--nsamples 128 --seqlen 2048]
    # smoke test on a CPU
    python benchmarks/bench_prune_gpu.py --device cpu --dtype float32 --layers 2 --nsamples 2 --seqlen 64
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as C  # noqa: E402


def main() -> None:
    ap = C.base_parser(__doc__)
    ap.set_defaults(model="llama7b", device="cuda", dtype="bfloat16")
    ap.add_argument("--nsamples", type=int, default=128)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--tokenizer", default=None, help="tokenizer directory for random models (default: embedded)"
    )
    ap.add_argument("--jobs", default="forward,drop8a,wanda,sparsegpt,sparsegpt24,wanda-ts,sparsegpt-ts")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    C.set_offline()
    import torch

    from prunelens.data.calibration import Calibration, get_calibration
    from prunelens.prune.drop import drop
    from prunelens.prune.sparsify import sparsify

    device = C.resolve_device(args.device)
    base, tok, _ = C.build_model(
        args.model, device=device, dtype=args.dtype, layers=args.layers, tokenizer=args.tokenizer
    )
    n_params = sum(p.numel() for p in base.parameters())
    cal = get_calibration(tok, "c4", args.nsamples, args.seqlen, 0)
    cal = Calibration(C.fold_ids(cal.input_ids, base), cal.source, cal.seed, cal.num_tokens_available)
    print(
        f"{n_params / 1e9:.2f} B parameters, {args.dtype}, {device}; "
        f"calibration {args.nsamples} × {args.seqlen} "
        f"tokens; batch {args.batch_size}"
    )
    if device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(0)}")

    def forward(m):
        with torch.no_grad():
            for i in range(0, cal.input_ids.shape[0], args.batch_size):
                m.model(cal.input_ids[i : i + args.batch_size].to(device), use_cache=False)

    jobs = {
        "forward": ("one forward pass (floor)", forward),
        "drop8a": (
            "score + drop 8 attention",
            lambda m: drop(m, cal, target="attn", n=8, batch_size=args.batch_size),
        ),
        "wanda": (
            "Wanda 50 %",
            lambda m: sparsify(m, cal, method="wanda", sparsity=0.5, batch_size=args.batch_size),
        ),
        "sparsegpt": (
            "SparseGPT 50 %",
            lambda m: sparsify(m, cal, method="sparsegpt", sparsity=0.5, batch_size=args.batch_size),
        ),
        "sparsegpt24": (
            "SparseGPT 2:4",
            lambda m: sparsify(m, cal, method="sparsegpt", pattern="2:4", batch_size=args.batch_size),
        ),
        "wanda-ts": (
            "Wanda 50 %, true-sequential",
            lambda m: sparsify(
                m, cal, method="wanda", sparsity=0.5, batch_size=args.batch_size, true_sequential=True
            ),
        ),
        "sparsegpt-ts": (
            "SparseGPT 50 %, true-sequential",
            lambda m: sparsify(
                m, cal, method="sparsegpt", sparsity=0.5, batch_size=args.batch_size, true_sequential=True
            ),
        ),
    }
    rows, out = [], {"machine": C.machine_info(device), "parameters": n_params, "results": {}}
    for key in [j for j in args.jobs.split(",") if j]:
        label, fn = jobs[key]
        model = copy.deepcopy(base) if key != "forward" else base
        C.reset_peak(device)
        with C.Timer(device) as t:
            fn(model)
        peak = C.peak_bytes(device)
        if model is not base:
            del model
        if device == "cuda":
            torch.cuda.empty_cache()
        out["results"][key] = {"seconds": t.s, "peak_bytes": peak}
        rows.append([label, f"{t.s:.1f}", C.mib(peak)])
        print(f"  {label}: {t.s:.1f} s", flush=True)
    floor = out["results"].get("forward", {}).get("seconds")
    if floor:
        for r, key in zip(rows, [j for j in args.jobs.split(",") if j]):
            r.append(f"{out['results'][key]['seconds'] / floor:.1f}×")
    C.print_table(
        rows, ["job", "seconds", "peak MiB (2 copies of the model held)"] + (["× forward"] if floor else [])
    )
    C.write_json(args.json, out)


if __name__ == "__main__":
    main()
