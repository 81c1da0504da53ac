"""Wanda and SparseGPT at 50 %: prunelens against llm-compressor's one-shot, same calibration tokens.

Setup (once): llm-compressor lives in the benchmark's own environment, never in the project's.
llm-compressor 0.14 pins ``transformers>=5.15,<=5.17`` and ``torch>=2.10,<=2.14``, which prunelens
accepts (``transformers>=5,<6``), so one extra venv holds both tools:

    python -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.13.0 llmcompressor -e .

Run (from the repository root; the parent process can be any Python with prunelens installed):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_sparsify_vs_llmcompressor.py \
        [--nsamples 16 --seqlen 256] [--eval-windows 16 --eval-seqlen 256] [--out sparsify.json]

The defaults (16 × 256 calibration tokens, 16 × 256 evaluation tokens) finish in about a quarter of
an hour on a 2-core CPU; the issue's reference figures are for ``--nsamples 32 --seqlen 512``.

What it does: the parent draws the calibration windows once (``get_calibration(tok, "c4", ...)``)
and the WikiText-2 test tokens once, and writes them to a ``.pt`` file. Each (tool, method) then runs
in a fresh subprocess — so its peak memory is its own — which loads the model, times the pruning call
alone (``prunelens.prune.sparsify.sparsify`` or ``llmcompressor.oneshot``; model loading and building
the calibration set are outside the timer), measures the achieved sparsity of the decoder-block
linears and the perplexity on the same evaluation windows. llm-compressor gets the SAME token ids as a
``datasets.Dataset`` with an ``input_ids`` column (already tokenised, so it does no tokenising),
``shuffle_calibration_samples=False``, the same batch size, ``lm_head`` ignored (prunelens keeps the
embeddings and unembedding dense), and the same SparseGPT damping (0.01) and block size (128).

By default both tools run with the benchmark venv's interpreter (``--bench-python``), so they share
torch and transformers versions; ``--prunelens-python`` runs prunelens under another interpreter.
Without the benchmark venv, only prunelens runs and llm-compressor's rows say why.

Peak memory is the process's resident-set high-water mark over the pruning call (weights included;
``VmHWM`` after a reset just before the call) on the CPU, ``torch.cuda.max_memory_allocated`` on a GPU.

prunelens runs with its defaults: Wanda true-sequential (one pass per block), SparseGPT with the
published procedure; ``--true-sequential`` / ``--dense-block-stats`` force one or the other for both
methods. llm-compressor always runs its published procedure. Each tool's masks from the first repeat are
saved, and the summary gives the fraction of block weights on which the two tools' masks agree (the same
algorithm on the same tokens agrees to within float rounding: 99.85 % for Wanda in float32).

Other flags: ``--device cuda``, ``--model llama7b [--layers N]`` (7B-shaped random weights, no
download; perplexity then meaningless), ``--methods wanda,sparsegpt``, ``--tools prunelens,llmcompressor``,
``--threads``, ``--batch-size``, ``--repeat N`` (N timed runs of each pair, interleaved so that a slow
spell of the machine hits both tools; the summary takes each one's median time — the perplexity is the
same in every repeat, and the script says so if it is not).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as C  # noqa: E402

DEFAULT_BENCH_PYTHON = C.REPO / ".venv-bench" / "bin" / "python"


# --- child: one tool × one method in its own process ------------------------------------------------


def block_sparsity(model) -> float:
    from prunelens.models.adapter import Adapter

    ad = Adapter(model)
    z = n = 0
    for i in range(ad.num_layers):
        for lin in ad.block_linears(i).values():
            z += int((lin.weight == 0).sum())
            n += lin.weight.numel()
    return z / n if n else 0.0


def block_masks(model) -> dict:
    """Where each decoder-block linear is zero, bit-packed
    (so the parent can compare the two tools' masks)."""
    import numpy as np
    import torch

    from prunelens.models.adapter import Adapter

    ad = Adapter(model)
    return {
        f"{i}.{name}": torch.from_numpy(np.packbits((lin.weight == 0).cpu().numpy().reshape(-1)))
        for i in range(ad.num_layers)
        for name, lin in ad.block_linears(i).items()
    }


def mask_agreement(a: dict, b: dict) -> float:
    """Fraction of block weights that both tools zeroed or both kept."""
    import numpy as np

    differ = total = 0
    for k in a:
        x, y = a[k].numpy(), b[k].numpy()
        differ += int(np.unpackbits(x ^ y).sum())
        total += x.size * 8
    return 1 - differ / total


def run_child(job: dict) -> dict:
    import torch

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    device = job["device"]
    data = torch.load(job["data"])
    model, tok, is_random = C.build_model(
        job["model"],
        device=device,
        dtype=job["dtype"],
        layers=job.get("layers"),
        seed=job["seed"],
        tokenizer=job["tokenizer"],
    )
    calib_ids = C.fold_ids(data["calib_ids"], model)
    eval_ids = C.fold_ids(data["eval_ids"], model)
    C.trim_heap()
    out: dict = {
        "tool": job["tool"],
        "method": job["method"],
        "rss_after_load": C.current_bytes(device),
        "loadavg_before": C.loadavg(),
    }
    import importlib.metadata as md

    out["versions"] = {p: md.version(p) for p in ("torch", "transformers", "prunelens")}
    if job["method"] == "dense":
        prune = None
    elif job["tool"] == "prunelens":
        from prunelens.data.calibration import Calibration
        from prunelens.prune.sparsify import sparsify

        calib = Calibration(calib_ids, "c4", job["seed"], int(calib_ids.numel()))

        def prune(model):
            plan = sparsify(
                model,
                calib,
                method=job["method"],
                sparsity=job["sparsity"],
                batch_size=job["batch_size"],
                true_sequential=job.get("true_sequential"),
            )
            out["true_sequential"] = plan.options["true_sequential"]
            return model
    else:
        out["versions"]["llmcompressor"] = md.version("llmcompressor")
        from datasets import Dataset
        from llmcompressor import oneshot
        from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

        # the same token ids, already tokenised (llm-compressor then skips tokenising)
        ds = Dataset.from_dict(
            {"input_ids": calib_ids.tolist(), "attention_mask": torch.ones_like(calib_ids).tolist()}
        )
        common = dict(
            sparsity=job["sparsity"], mask_structure="0:0", targets=["Linear"], ignore=["re:.*lm_head"]
        )
        if job["method"] == "wanda":
            recipe = [WandaPruningModifier(**common)]
        else:
            recipe = [SparseGPTModifier(**common, block_size=128, dampening_frac=0.01)]

        def prune(model):
            return oneshot(
                model=model,
                tokenizer=tok,
                recipe=recipe,
                dataset=ds,
                num_calibration_samples=calib_ids.shape[0],
                max_seq_length=calib_ids.shape[1],
                batch_size=job["batch_size"],
                shuffle_calibration_samples=False,
            )

    C.trim_heap()
    how = C.reset_peak(device)
    C.sync(device)
    t0 = time.perf_counter()
    if prune is not None:
        model = prune(model)
    C.sync(device)
    out["seconds"] = time.perf_counter() - t0
    out["peak_bytes"] = C.peak_bytes(device)
    out["peak_how"] = how
    out["loadavg_after"] = C.loadavg()
    out["sparsity"] = block_sparsity(model)
    if job.get("masks_to") and job["method"] != "dense":
        torch.save(block_masks(model), job["masks_to"])
        out["masks"] = job["masks_to"]
    from prunelens.evaluation.perplexity import perplexity

    model.eval()
    t1 = time.perf_counter()
    res = perplexity(model, eval_ids, seqlen=job["eval_seqlen"], max_windows=job["eval_windows"])
    out["ppl"] = res.ppl
    out["ppl_tokens"] = res.tokens
    out["ppl_seconds"] = time.perf_counter() - t1
    out["ppl_meaningless"] = is_random
    return out


# --- parent ------------------------------------------------------------------------------------------


def has_llmcompressor(python: str) -> tuple[bool, str]:
    if not Path(python).exists():
        return False, f"{python} does not exist (create the benchmark venv: see the docstring)"
    r = subprocess.run(
        [
            python,
            "-c",
            "import llmcompressor, transformers; print(llmcompressor.__version__, transformers.__version__)",
        ],
        capture_output=True,
        text=True,
    )
    if r.returncode:
        return False, (r.stderr.strip().splitlines() or ["import failed"])[-1]
    return True, r.stdout.strip().splitlines()[-1]  # llm-compressor logs its own warnings on stdout


def spawn(python: str, job: dict, workdir: Path, log) -> dict:
    C.stderr(f"[{time.strftime('%H:%M:%S')}] {job['tool']:>13} {job['method']:<9} (python: {python}) ...")
    res, wall, output = C.run_in_child(python, __file__, job, workdir, f"{job['tool']}_{job['method']}")
    log.write(f"===== {job['tool']} {job['method']} wall={wall:.1f}s\n{output}\n")
    log.flush()
    if "error" in res:
        return {"tool": job["tool"], "method": job["method"], **res}
    res["process_wall"] = wall
    C.stderr(f"    {res['seconds']:.1f} s pruning, ppl {res['ppl']:.3f}, process {wall:.1f} s")
    return res


def main() -> None:
    ap = C.base_parser(__doc__)
    ap.add_argument("--nsamples", type=int, default=16, help="calibration windows (the issue's figures: 32)")
    ap.add_argument(
        "--seqlen", type=int, default=256, help="tokens per calibration window (the issue's: 512)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=8, help="calibration batch size, both tools")
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--eval-seqlen", type=int, default=256)
    ap.add_argument("--methods", default="wanda,sparsegpt")
    ap.add_argument("--tools", default="prunelens,llmcompressor")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense perplexity reference")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in each run (default: torch's)")
    ap.add_argument(
        "--bench-python",
        default=str(DEFAULT_BENCH_PYTHON),
        help="interpreter with llmcompressor (default .venv-bench/bin/python)",
    )
    ap.add_argument(
        "--prunelens-python",
        default=None,
        help="interpreter for the prunelens runs (default: --bench-python if usable, else this one)",
    )
    ap.add_argument("--log", default=None, help="file for the subprocesses' full output (default: temp dir)")
    order = ap.add_mutually_exclusive_group()
    order.add_argument(
        "--true-sequential",
        dest="true_sequential",
        action="store_const",
        const=True,
        default=None,
        help="prunelens: true-sequential for both methods (default: Wanda yes, SparseGPT no)",
    )
    order.add_argument(
        "--dense-block-stats",
        dest="true_sequential",
        action="store_const",
        const=False,
        help="prunelens: the published procedure for both methods, as llm-compressor runs",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="timed runs per (tool, method), interleaved; the summary uses the median time",
    )
    args = C.parse_or_serve(ap, run_child)
    if args is None:  # this process was a child: its job is done
        return

    import torch

    device = C.resolve_device(args.device)
    tools = [t for t in args.tools.split(",") if t]
    methods = [m for m in args.methods.split(",") if m]
    llmc_ok, llmc_msg = has_llmcompressor(args.bench_python)
    pl_python = args.prunelens_python or (args.bench_python if llmc_ok else sys.executable)

    from prunelens.data.calibration import get_calibration

    model_spec, tok_path = C.resolve_specs(args.model)
    tok = C.load_tokenizer(tok_path)
    calib = get_calibration(tok, "c4", args.nsamples, args.seqlen, args.seed)
    stream = C.wikitext_stream(tok)[: args.eval_windows * args.eval_seqlen]
    workdir = Path(tempfile.mkdtemp(prefix="bench_sparsify_"))
    data_file = workdir / "tokens.pt"
    torch.save({"calib_ids": calib.input_ids, "eval_ids": stream}, data_file)
    log_path = Path(args.log) if args.log else workdir / "subprocess.log"

    base = {
        "model": model_spec,
        "tokenizer": tok_path,
        "layers": args.layers,
        "device": device,
        "dtype": args.dtype,
        "seed": args.seed,
        "sparsity": args.sparsity,
        "batch_size": args.batch_size,
        "eval_windows": args.eval_windows,
        "eval_seqlen": args.eval_seqlen,
        "threads": args.threads,
        "data": str(data_file),
        "true_sequential": args.true_sequential,
    }
    print(
        f"calibration: c4, {args.nsamples} × {args.seqlen} tokens (seed {args.seed}); evaluation: WikiText-2 "
        f"test, {args.eval_windows} × {args.eval_seqlen}; sparsity {args.sparsity}; batch {args.batch_size}; "
        f"device {device}; model {args.model}"
    )
    print(
        f"llm-compressor: {'available, ' + llmc_msg + ' (llmcompressor, transformers)' if llmc_ok else 'NOT available: ' + llmc_msg}"  # noqa: E501
    )
    print(f"prunelens runs under {pl_python}; llm-compressor under {args.bench_python}")
    print(f"load average before: {C.loadavg()}")

    results: list[dict] = []
    with open(log_path, "w") as log:
        if not args.no_dense:
            results.append(spawn(pl_python, {**base, "tool": "prunelens", "method": "dense"}, workdir, log))
        for rep in range(max(1, args.repeat)):
            for method in methods:
                for tool in tools:
                    if tool == "llmcompressor" and not llmc_ok:
                        if rep == 0:
                            results.append(
                                {
                                    "tool": tool,
                                    "method": method,
                                    "error": f"llm-compressor unavailable: {llmc_msg}",
                                }
                            )
                        continue
                    py = pl_python if tool == "prunelens" else args.bench_python
                    masks = str(workdir / f"masks_{tool}_{method}.pt") if rep == 0 else None
                    results.append(
                        {
                            **spawn(
                                py, {**base, "tool": tool, "method": method, "masks_to": masks}, workdir, log
                            ),
                            "rep": rep,
                        }
                    )

    def get(tool, method):
        """The run of median time (lower median) among the repeats; its perplexity is the same in each."""
        runs = sorted(
            (r for r in results if r["tool"] == tool and r["method"] == method and "error" not in r),
            key=lambda r: r["seconds"],
        )
        if not runs:
            return None
        ppls = {round(r["ppl"], 6) for r in runs}
        return {
            **runs[(len(runs) - 1) // 2],
            "all_seconds": [r["seconds"] for r in runs],
            "ppl_varies": len(ppls) > 1,
            "masks": next((r["masks"] for r in runs if r.get("masks")), None),
        }  # saved by the first repeat

    def label(method: str, run: dict) -> str:
        return method + (" (true-seq)" if run.get("true_sequential") else "")

    def timing(run: dict) -> str:
        """Median seconds, with the range over the repeats."""
        secs = run["all_seconds"]
        return f"{run['seconds']:.1f}" + (f" ({secs[0]:.1f}–{secs[-1]:.1f})" if len(secs) > 1 else "")

    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["tool"], r["method"], "error", "", "", "", "", ""])
            continue
        rows.append(
            [
                r["tool"],
                label(r["method"], r),
                C.fmt(r["seconds"], ".1f") if r["method"] != "dense" else "—",
                C.fmt(r["ppl"], ".3f") + (" (random model)" if r.get("ppl_meaningless") else ""),
                C.mib(r["peak_bytes"]) if r["method"] != "dense" else "—",
                C.mib(r["rss_after_load"]),
                f"{100 * r['sparsity']:.2f} %",
                "/".join(f"{x:.1f}" for x in (r["loadavg_before"][0], r["loadavg_after"][0])),
            ]
        )
    C.print_table(
        rows,
        [
            "tool",
            "method",
            "prune wall s",
            "ppl",
            "peak MiB",
            "after load MiB",
            "block sparsity",
            "load 1m before/after",
        ],
        title=(
            "Per run (each in a fresh process; peak = high-water mark over the pruning call, "
            "weights included)"
        ),
    )

    summary = []
    srows = []
    for method in methods:
        pl, lc = get("prunelens", method), get("llmcompressor", method)
        if not pl or not lc:
            srows.append([method, "—", "—", "—", "—", "—", "—", "incomplete"])
            continue
        ratio = lc["seconds"] / pl["seconds"]
        dppl = pl["ppl"] / lc["ppl"] - 1
        agree = (
            mask_agreement(torch.load(pl["masks"]), torch.load(lc["masks"]))
            if pl["masks"] and lc["masks"]
            else None
        )
        met = ratio >= 2.0 and pl["ppl"] <= lc["ppl"] * 1.01
        summary.append(
            {
                "method": method,
                "prunelens_true_sequential": pl.get("true_sequential"),
                "prunelens_seconds": pl["all_seconds"],
                "llmc_seconds": lc["all_seconds"],
                "time_ratio_llmc_over_prunelens": ratio,
                "ppl_prunelens": pl["ppl"],
                "ppl_llmcompressor": lc["ppl"],
                "ppl_rel_diff": dppl,
                "peak_ratio_llmc_over_prunelens": lc["peak_bytes"] / pl["peak_bytes"],
                "mask_agreement": agree,
                "goal_met": met,
            }
        )
        srows.append(
            [
                label(method, pl),
                timing(pl),
                timing(lc),
                f"{ratio:.2f}×",
                f"{pl['ppl']:.3f} vs {lc['ppl']:.3f} ({100 * dppl:+.2f} %)",
                f"{lc['peak_bytes'] / pl['peak_bytes']:.2f}×",
                "—" if agree is None else f"{100 * agree:.2f} %",
                "yes" if met else "NO",
            ]
        )
    C.print_table(
        srows,
        [
            "method",
            "prunelens s (min–max)",
            "llm-compressor s (min–max)",
            "llmc/prunelens",
            "ppl prunelens vs llmc",
            "peak llmc/prunelens",
            "same mask",
            "goal (≥2× faster, ppl ≤ +1 %)",
        ],
        title="Summary"
        + (f" (median of {args.repeat} runs each)" if args.repeat > 1 else "")
        + {None: "", True: " — prunelens true-sequential", False: " — prunelens dense-block statistics"}[
            args.true_sequential
        ],
    )
    print(f"\nsubprocess output: {log_path}")
    C.write_json(
        args.out,
        {
            "benchmark": "sparsify_vs_llmcompressor",
            "args": vars(args),
            "machine": C.machine_info(device),
            "bench_python": args.bench_python,
            "prunelens_python": pl_python,
            "llmcompressor": llmc_msg if llmc_ok else None,
            "llmcompressor_error": None if llmc_ok else llmc_msg,
            "runs": results,
            "summary": summary,
        },
    )


if __name__ == "__main__":
    main()
