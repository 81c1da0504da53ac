"""Speed and memory of the pruned models themselves: prefill and decode tokens/s, peak memory, KV cache.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_pruned_speed.py \
        [--variants dense,drop-8A,drop-8M,drop-8B,wanda-2:4] [--batch-sizes 1,8] \
        [--prompt-len 128 --new-tokens 64 --reps 2] [--out pruned_speed.json]

Each variant runs in a fresh process: load the model, prune it (``drop()`` / ``sparsify()`` on
``--calib-nsamples × --calib-seqlen`` C4 tokens — few, since only the pruned structure matters here),
give the freed memory back to the OS, then for each batch size run greedy ``model.generate`` with the
KV cache (``do_sample=False``, exactly ``--new-tokens`` new tokens) on prompts of ``--prompt-len``
WikiText-2 tokens: one short warm-up, then ``--reps`` timed runs (median shown). A stopping criterion
timestamps every generated token, so

* prefill tokens/s = batch × prompt-len / (time to the first new token),
* decode tokens/s  = batch × (new-tokens − 1) / (time from the first to the last new token).

Peak memory: ``VmHWM`` reset just before the timed runs of a batch size (CPU; weights included, and
the RSS at the reset is shown beside it) or ``torch.cuda.max_memory_allocated`` (GPU). The KV cache
size is read from the cache ``generate`` returns (prompt + new tokens). Parameter counts count tied
weights once; "nonzero" counts the non-zero weights of the decoder-block linears.

Variant names: ``dense``; ``drop-<n><A|M|B>`` drops ``n`` attention sublayers, MLP sublayers or whole
blocks (one-shot cosine scoring); ``<wanda|sparsegpt|magnitude>-<N:M or sparsity>`` e.g.
``wanda-2:4``, ``sparsegpt-0.5``.

Also: ``--device cuda``, ``--dtype bfloat16``, ``--model llama7b [--layers N]`` (random 7B-shaped
weights, no download), ``--threads``.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as C  # noqa: E402

DEFAULT_VARIANTS = "dense,drop-8A,drop-8M,drop-8B,wanda-2:4"


def parse_variant(name: str) -> dict:
    if name == "dense":
        return {"kind": "dense"}
    m = re.fullmatch(r"drop-(\d+)([AMB])", name)
    if m:
        return {
            "kind": "drop",
            "n": int(m.group(1)),
            "target": {"A": "attn", "M": "mlp", "B": "block"}[m.group(2)],
        }
    m = re.fullmatch(r"(wanda|sparsegpt|magnitude)-(\d+:\d+|0?\.\d+)", name)
    if m:
        pat = m.group(2)
        return {
            "kind": "sparsify",
            "method": m.group(1),
            **({"pattern": pat} if ":" in pat else {"sparsity": float(pat)}),
        }
    raise SystemExit(
        f"unknown variant {name!r} (dense, drop-<n><A|M|B>, <wanda|sparsegpt|magnitude>-<N:M|sparsity>)"
    )


# --- child -------------------------------------------------------------------------------------------


def kv_bytes(cache) -> int:
    import torch

    total = 0
    layers = getattr(cache, "layers", None)
    entries = layers if layers is not None else list(cache)
    for entry in entries:
        ts = (
            [getattr(entry, "keys", None), getattr(entry, "values", None)]
            if layers is not None
            else list(entry)
        )
        for t in ts:
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def run_child(job: dict) -> dict:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    from prunelens.data.calibration import get_calibration
    from prunelens.models.adapter import Adapter, param_count

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    device = job["device"]
    model, tok, _ = C.build_model(
        job["model"],
        device=device,
        dtype=job["dtype"],
        layers=job.get("layers"),
        seed=job["seed"],
        tokenizer=job["tokenizer"],
    )
    variant = parse_variant(job["variant"])
    out: dict = {"variant": job["variant"], "params_dense": param_count(model)}
    t0 = time.perf_counter()
    if variant["kind"] != "dense" and not (
        variant["kind"] == "sparsify" and variant["method"] == "magnitude"
    ):
        calib = get_calibration(tok, "c4", job["calib_nsamples"], job["calib_seqlen"], job["seed"])
        calib = type(calib)(
            C.fold_ids(calib.input_ids, model), calib.source, calib.seed, calib.num_tokens_available
        )
    else:
        calib = None
    if variant["kind"] == "drop":
        from prunelens.prune.drop import drop

        drop(model, calib, target=variant["target"], n=variant["n"])
    elif variant["kind"] == "sparsify":
        from prunelens.prune.sparsify import sparsify

        sparsify(
            model,
            calib,
            method=variant["method"],
            sparsity=variant.get("sparsity"),
            pattern=variant.get("pattern"),
        )
    out["prune_s"] = time.perf_counter() - t0
    model.eval()
    ad = Adapter(model)
    out["params"] = param_count(model)
    out["blocks"] = ad.num_layers
    out["attn_layers"] = sum(not ad.is_dropped(i, "attn") for i in range(ad.num_layers))
    out["mlp_layers"] = sum(not ad.is_dropped(i, "mlp") for i in range(ad.num_layers))
    lin = [m.weight for i in range(ad.num_layers) for m in ad.block_linears(i).values()]
    out["block_linear_params"] = sum(w.numel() for w in lin)
    out["block_linear_nonzero"] = sum(int((w != 0).sum()) for w in lin)
    out["weight_bytes"] = sum(
        p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values()
    )

    stream = C.fold_ids(C.wikitext_stream(tok), model)
    P, N = job["prompt_len"], job["new_tokens"]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    class Stamps(StoppingCriteria):
        def __init__(self):
            self.t: list[float] = []

        def __call__(self, input_ids, scores, **kwargs):
            C.sync(device)
            self.t.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def generate(ids, new):
        stamps = Stamps()
        C.sync(device)
        t_start = time.perf_counter()
        with torch.no_grad():
            res = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                use_cache=True,
                pad_token_id=pad,
                stopping_criteria=StoppingCriteriaList([stamps]),
                return_dict_in_generate=True,
            )
        return res, t_start, stamps.t

    out["by_batch"] = {}
    C.trim_heap()
    for b in job["batch_sizes"]:
        ids = torch.stack([stream[i * P : (i + 1) * P] for i in range(b)]).to(device)
        generate(ids, 2)  # warm-up
        C.trim_heap()
        rss0 = C.current_bytes(device)
        how = C.reset_peak(device)
        prefill, decode, first_tokens = [], [], None
        res = None
        for _ in range(job["reps"]):
            res, t_start, stamps = generate(ids, N)
            assert len(stamps) == N, (len(stamps), N)
            prefill.append(stamps[0] - t_start)
            decode.append(stamps[-1] - stamps[0])
            seq = res.sequences[:, P:]
            if first_tokens is None:
                first_tokens = seq
            elif not torch.equal(first_tokens, seq):
                out.setdefault("warnings", []).append(f"batch {b}: greedy outputs differ between repetitions")
        peak = C.peak_bytes(device)
        kv = kv_bytes(res.past_key_values)
        positions = P + N - 1
        out["by_batch"][str(b)] = {
            "prefill_s": prefill,
            "decode_s": decode,
            "prefill_tok_s": b * P / C.median(prefill),
            "decode_tok_s": b * (N - 1) / C.median(decode),
            "peak_bytes": peak,
            "mem_at_reset_bytes": rss0,
            "peak_how": how,
            "kv_bytes": kv,
            "kv_positions": positions,
            "kv_bytes_per_token": kv / (b * positions),
            "loadavg_1m": C.loadavg()[0],
        }
        del res
    return out


# --- parent ------------------------------------------------------------------------------------------


def main() -> None:
    ap = C.base_parser(__doc__)
    ap.add_argument("--variants", default=DEFAULT_VARIANTS)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--calib-nsamples", type=int, default=8)
    ap.add_argument("--calib-seqlen", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    args = C.parse_or_serve(ap, run_child)
    if args is None:  # this process was a child: its job is done
        return

    device = C.resolve_device(args.device)
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        parse_variant(v)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    spec, tok_path = C.resolve_specs(args.model)
    base = {
        "model": spec,
        "tokenizer": tok_path,
        "layers": args.layers,
        "device": device,
        "dtype": args.dtype,
        "seed": args.seed,
        "batch_sizes": batch_sizes,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "reps": args.reps,
        "calib_nsamples": args.calib_nsamples,
        "calib_seqlen": args.calib_seqlen,
        "threads": args.threads,
    }
    print(
        f"model {args.model}, device {device}, {args.dtype}; prompts {args.prompt_len} WikiText-2 tokens, "
        f"{args.new_tokens} new tokens (greedy, KV cache), batch {batch_sizes}, "
        f"{args.reps} timed reps (median); "
        f"pruning calibration c4 {args.calib_nsamples} × {args.calib_seqlen}; load average {C.loadavg()}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench_speed_"))
    results = []
    for v in variants:
        C.stderr(f"[{time.strftime('%H:%M:%S')}] {v} ...")
        res, wall, output = C.run_in_child(
            sys.executable, __file__, {**base, "variant": v}, workdir, str(len(results))
        )
        (workdir / f"log_{len(results)}.txt").write_text(output)
        if "error" in res:
            results.append({"variant": v, **res})
            continue
        res["process_wall"] = wall
        C.stderr(f"    done in {res['process_wall']:.0f} s (pruning {res['prune_s']:.0f} s)")
        results.append(res)

    ok = [r for r in results if "error" not in r]
    dense = next((r for r in ok if r["variant"] == "dense"), None)
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["variant"], "error"] + [""] * 6)
            continue
        rows.append(
            [
                r["variant"],
                f"{r['params'] / 1e6:.1f} M",
                f"{r['block_linear_nonzero'] / 1e6:.1f} / {r['block_linear_params'] / 1e6:.1f} M",
                C.mib(r["weight_bytes"]),
                f"{r['blocks']}",
                f"{r['attn_layers']}",
                f"{r['mlp_layers']}",
                f"{r['prune_s']:.0f}",
            ]
        )
    C.print_table(
        rows,
        [
            "variant",
            "params",
            "block-linear nonzero / stored",
            "weights MiB",
            "blocks",
            "attn",
            "mlp",
            "prune s",
        ],
        title="Structure",
    )
    for b in batch_sizes:
        rows = []
        for r in ok:
            x = r["by_batch"][str(b)]
            d = dense["by_batch"][str(b)] if dense else None
            rel = (lambda k, x=x, d=d: f" ({x[k] / d[k]:.2f}×)") if d else (lambda k: "")
            rows.append(
                [
                    r["variant"],
                    f"{x['prefill_tok_s']:,.0f}{rel('prefill_tok_s')}",
                    f"{x['decode_tok_s']:,.1f}{rel('decode_tok_s')}",
                    f"{C.mib(x['peak_bytes'])}{rel('peak_bytes')}",
                    C.mib(x["mem_at_reset_bytes"]),
                    f"{x['kv_bytes'] / 2**20:.1f}{rel('kv_bytes')}",
                    f"{x['kv_bytes_per_token'] / 1024:.1f}",
                    f"{x['loadavg_1m']:.1f}",
                ]
            )
        C.print_table(
            rows,
            [
                "variant",
                "prefill tok/s",
                "decode tok/s",
                "peak MiB",
                "MiB at start",
                "KV MiB",
                "KV KiB/token",
                "load 1m",
            ],
            title=f"batch {b}: prompt {args.prompt_len} + {args.new_tokens} new tokens "
            f"(ratios to dense in brackets; KV at {args.prompt_len + args.new_tokens - 1} positions)",
        )
    if dense:
        print("\nWhat the numbers show (ratios to dense, largest batch):")
        b = str(batch_sizes[-1])
        d = dense["by_batch"][b]
        for r in ok:
            if r is dense:
                continue
            x = r["by_batch"][b]
            print(
                f"  {r['variant']:>10}: params {r['params'] / dense['params']:.2f}×, weights "
                f"{r['weight_bytes'] / dense['weight_bytes']:.2f}×, "
                f"prefill {x['prefill_tok_s'] / d['prefill_tok_s']:.2f}×, "
                f"decode {x['decode_tok_s'] / d['decode_tok_s']:.2f}×, "
                f"peak memory {x['peak_bytes'] / d['peak_bytes']:.2f}×, "
                f"KV cache {x['kv_bytes'] / d['kv_bytes']:.2f}×"
            )
        print(
            "  Dropped sublayers and blocks remove weights and compute; "
            "attention drops (and block drops) also\n"
            "  shrink the KV cache. Sparsified weights are zeros stored densely in the same dense matrices:\n"
            "  parameters, memory and dense-kernel time stay those of the dense model until a sparse kernel\n"
            "  (e.g. 2:4 semi-structured on a GPU) or sparse storage runs them."
        )
    C.write_json(
        args.out,
        {
            "benchmark": "pruned_speed",
            "args": vars(args),
            "machine": C.machine_info(device),
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
