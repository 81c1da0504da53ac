"""Does choosing what to drop in probability space choose better? Costs, estimator agreement, and held-out
quality of the ``hidden`` (cosine), ``generation`` (exact counterfactual KL) and ``choice`` (option KL)
selections at equal budgets, on the embedded model.

    HF_HUB_OFFLINE=1 PRUNELENS_DATA=../shared/data .venv/bin/python benchmarks/bench_choose_objective.py \
        [--nsamples 16 --seqlen 256] [--mc-limit 200 --gen-limit 24] [--out choose_objective.json]

1. **Cost** (median of ``--reps``): cosine scoring of every sublayer (``similarities``, today's rule) on the
   calibration windows, the exact counterfactual KL of every attention and MLP sublayer on the same
   windows, the Fisher estimate (one sampled token per position), and the exact KL on only the first
   ``--exact-windows`` windows (the ``--score-windows`` estimate); ratios against the cosine scoring.
2. **Agreement**: Spearman's ρ of the Fisher estimate and of the fewer-window exact KL with the exact KL
   on all windows, per kind and over all 60.
3. **Quality**: for each budget (4 and 8 attention sublayers, 4 and 8 MLPs, 4 blocks, 8 sublayers of
   either kind) the three objectives choose one-shot on the calibration windows (the choice objective on
   64 ARC-Easy *validation* questions; every evaluation reads test splits); ``generation`` also iterative
   at the 8-unit budgets. Each chosen set is evaluated on data no selection saw: the teacher-forced KL to
   the dense model and the perplexity on WikiText-2 test windows, ARC-Easy and PIQA accuracy
   (``--mc-limit`` questions each, test splits), and the fidelity of greedy generations to the dense ones
   on GSM8K and NQ-Open prompts (ROUGE-L, identical outputs, first divergence step). Every comparison
   with the cosine selection is paired on the same examples (McNemar for accuracies, sign-flip test for
   ROUGE-L), with its 95 % interval. Reported whichever way it comes out.

Run it alone: other processes on the cores change the timings (the load average is printed).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench_common as C  # noqa: E402

BUDGETS = [("attn", 4), ("attn", 8), ("mlp", 4), ("mlp", 8), ("block", 4), ("joint", 8)]


def main() -> None:
    ap = C.base_parser(__doc__)
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--mc-limit", type=int, default=200)
    ap.add_argument("--gen-limit", type=int, default=24)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--heldout-windows", type=int, default=16)
    ap.add_argument("--budgets", default=None, help="e.g. attn:4,mlp:8 (default: all six)")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--fisher-samples", default="1,4", help="sampled tokens per position to time and check")
    ap.add_argument("--iterative", default="attn:8", help="budgets also chosen iteratively (generation)")
    ap.add_argument(
        "--exact-windows",
        default="1,2",
        help="also time the exact KL on only the first K calibration windows (--score-windows K) and "
        "check its ranking against the exact KL on all of them",
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    C.set_offline()

    import numpy as np
    import torch

    from prunelens.analysis.subspace import choice_set
    from prunelens.data.calibration import get_calibration
    from prunelens.evaluation.fidelity import fidelity
    from prunelens.evaluation.runner import EvalSettings, run_task
    from prunelens.evaluation.uncertainty import compare_paired
    from prunelens.models.adapter import Adapter
    from prunelens.prune.choose import choose
    from prunelens.prune.drop import drop
    from prunelens.prune.objectives import (
        choice_divergence,
        counterfactual_kl,
        dense_reference,
        fisher_kl_estimate,
        set_kl,
        temporarily_dropped,
    )
    from prunelens.prune.scoring import similarities
    from prunelens.report.stats import spearman

    device = C.resolve_device(args.device)
    spec, tok_path = C.resolve_specs(args.model)
    model, tok, _ = C.build_model(
        spec, device=device, dtype=args.dtype, layers=args.layers, seed=args.seed, tokenizer=tok_path
    )
    cal = get_calibration(tok, "c4", args.nsamples, args.seqlen, args.seed)
    ids, bs = cal.input_ids, args.batch_size
    print(
        f"model {args.model}, {model.config.num_hidden_layers} blocks, "
        f"torch threads {torch.get_num_threads()}; calibration c4 {args.nsamples} × {args.seqlen}; "
        f"load average before {C.loadavg()}"
    )
    out: dict = {"machine": C.machine_info(device), "args": vars(args)}

    # 1. cost ------------------------------------------------------------------------------------------
    def timed(fn):
        t0 = time.perf_counter()
        r = fn()
        return time.perf_counter() - t0, r

    samples_list = [int(x) for x in args.fisher_samples.split(",")]
    cos_t, exact_t = [], []
    fisher_t: dict[int, list[float]] = {k: [] for k in samples_list}
    fishers: dict[int, object] = {}
    for _ in range(args.reps):
        t, _s = timed(lambda: similarities(model, ids, batch_size=bs))
        cos_t.append(t)
        for k in samples_list:
            t, fishers[k] = timed(
                lambda k=k: fisher_kl_estimate(model, ids, ("attn", "mlp"), batch_size=bs, samples=k)
            )
            fisher_t[k].append(t)
    t, (exact, _) = timed(lambda: counterfactual_kl(model, ids, ("attn", "mlp"), batch_size=bs))
    exact_t.append(t)
    windows_list = [int(x) for x in args.exact_windows.split(",") if x]
    sub_t: dict[int, float] = {}
    subs: dict[int, object] = {}
    for k in windows_list:
        sub_t[k], (subs[k], _) = timed(
            lambda k=k: counterfactual_kl(model, ids[:k], ("attn", "mlp"), batch_size=bs)
        )
    cost = {
        "cosine_seconds": cos_t,
        "fisher_seconds": {str(k): v for k, v in fisher_t.items()},
        "exact_seconds": exact_t,
        "fisher_over_cosine": {str(k): C.median(v) / C.median(cos_t) for k, v in fisher_t.items()},
        "exact_over_cosine": C.median(exact_t) / C.median(cos_t),
        "exact_windows_seconds": {str(k): v for k, v in sub_t.items()},
        "exact_windows_over_cosine": {str(k): v / C.median(cos_t) for k, v in sub_t.items()},
        "tokens": int(ids.numel()),
    }
    C.print_table(
        [["cosine (hidden)", C.fmt(C.median(cos_t)), "1.00×"]]
        + [
            [
                f"Fisher estimate, {k} sample(s)",
                C.fmt(C.median(v)),
                f"{cost['fisher_over_cosine'][str(k)]:.2f}×",
            ]
            for k, v in fisher_t.items()
        ]
        + [["exact KL (generation)", C.fmt(C.median(exact_t)), f"{cost['exact_over_cosine']:.2f}×"]]
        + [
            [
                f"exact KL on {k} window(s) ({k * args.seqlen} tokens)",
                C.fmt(v),
                f"{cost['exact_windows_over_cosine'][str(k)]:.2f}×",
            ]
            for k, v in sub_t.items()
        ],
        ["scoring of all 60 sublayers", "seconds (median)", "vs cosine"],
        title=f"cost on {ids.numel()} calibration tokens",
    )
    # 2. agreement ---------------------------------------------------------------------------------------
    agree: dict = {}
    both_e = exact.divergence["attn"] + exact.divergence["mlp"]
    for k, fisher in fishers.items():
        a = {kind: spearman(fisher.divergence[kind], exact.divergence[kind]) for kind in ("attn", "mlp")}
        both_f = fisher.divergence["attn"] + fisher.divergence["mlp"]
        a["all"] = spearman(both_f, both_e)
        ratio = [f / e for f, e in zip(both_f, both_e) if e and e > 0]
        a["median_estimate_over_exact"] = float(np.median(ratio)) if ratio else None
        agree[str(k)] = a
        print(
            f"Spearman ρ (Fisher, {k} sample(s), vs exact): attn {a['attn']:.3f}, mlp {a['mlp']:.3f}, "
            f"all 60 {a['all']:.3f}; median estimate / exact {a['median_estimate_over_exact']:.2f}"
        )
    for k, sub in subs.items():
        a = {kind: spearman(sub.divergence[kind], exact.divergence[kind]) for kind in ("attn", "mlp")}
        a["all"] = spearman(sub.divergence["attn"] + sub.divergence["mlp"], both_e)
        agree[f"exact_{k}_windows"] = a
        print(
            f"Spearman ρ (exact on {k} window(s) vs exact on all {ids.shape[0]}): attn {a['attn']:.3f}, "
            f"mlp {a['mlp']:.3f}, all 60 {a['all']:.3f}"
        )
    out["cost"], out["agreement"] = cost, agree
    out["scores"] = {
        "exact": exact.divergence,
        **{f"fisher_{k}": f.divergence for k, f in fishers.items()},
        **{f"exact_{k}_windows": s.divergence for k, s in subs.items()},
    }
    C.write_json(args.out, out)
    if args.skip_quality:
        return

    # 3. quality ----------------------------------------------------------------------------------------
    choices = choice_set(tok, "arc_easy", limit=64, seed=args.seed)
    heldout = C.wikitext_windows(tok, args.heldout_windows, args.seqlen)
    ref = dense_reference(model, heldout, batch_size=bs)

    def heldout_numbers(m):
        return set_kl(m, heldout, ref, batch_size=bs), C.window_perplexity(m, heldout, bs)

    def evaluate(m):
        row = {}
        row["heldout_kl"], row["wikitext2_ppl"] = heldout_numbers(m)
        for task in ("arc_easy", "piqa"):
            r = run_task(m, tok, task, EvalSettings(limit=args.mc_limit, seed=args.seed, batch_size=32))
            row[task] = {"acc": r.score, "records": [float(x["score"]) for x in r.records], "n": r.n}
        for task in ("gsm8k", "nq_open"):
            r = run_task(
                m,
                tok,
                task,
                EvalSettings(
                    limit=args.gen_limit, seed=args.seed, batch_size=32, max_new_tokens=args.gen_tokens
                ),
            )
            row[task] = r.records
        return row

    t0 = time.perf_counter()
    dense = evaluate(model)
    print(f"dense evaluated in {time.perf_counter() - t0:.0f} s: held-out ppl {dense['wikitext2_ppl']:.2f}")
    budgets = BUDGETS
    if args.budgets:
        budgets = [(b.split(":")[0], int(b.split(":")[1])) for b in args.budgets.split(",")]
    selections, evaluated = [], {}
    # one exact scoring per objective serves every one-shot budget (what drop() ranks, through choose())
    t0 = time.perf_counter()
    gen_scores, _ = counterfactual_kl(model, ids, ("attn", "mlp", "block"), batch_size=bs)
    gen_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    choice_scores, _ = choice_divergence(model, choices, ("attn", "mlp", "block"))
    choice_seconds = time.perf_counter() - t0
    cos = similarities(model, ids, batch_size=bs)
    out["selection_scoring_seconds"] = {"generation": gen_seconds, "choice": choice_seconds}
    print(f"exact scores of all 90 units: generation {gen_seconds:.0f} s, choice {choice_seconds:.0f} s")
    iterative = {(b.split(":")[0], int(b.split(":")[1])) for b in args.iterative.split(",") if b}

    def units_of(cands):
        return tuple(sorted((c.layer, c.kind) for c in cands))

    for target, n in budgets:
        picks = {
            "hidden": (units_of(choose(cos.by_kind(), target, n)), 0.0),
            "generation": (units_of(choose(gen_scores.by_kind(), target, n)), gen_seconds),
            "choice": (units_of(choose(choice_scores.by_kind(), target, n)), choice_seconds),
        }
        if (target, n) in iterative:
            t0 = time.perf_counter()
            plan = drop(
                model,
                cal,
                target=target,
                n=n,
                batch_size=bs,
                dry_run=True,
                objective="generation",
                iterative=True,
            )
            its = tuple(sorted((d["layer"], d["sublayer"]) for d in plan.dropped_sublayers)) or tuple(
                (b, "block") for b in plan.dropped_blocks
            )
            picks["generation-iterative"] = (its, time.perf_counter() - t0)
        for name, (units, secs) in picks.items():
            if units not in evaluated:
                t1 = time.perf_counter()
                with temporarily_dropped(Adapter(model), list(units)):
                    evaluated[units] = evaluate(model)
                print(f"{target}-{n} {name}: {units} evaluated in {time.perf_counter() - t1:.0f} s")
            params = sum(
                p.numel()
                for layer, kind in units
                for k in (("attn", "mlp") if kind == "block" else (kind,))
                for m in Adapter(model).sublayer_modules(layer, k)
                for p in m.parameters()
            )
            selections.append(
                {
                    "budget": f"{target}-{n}",
                    "objective": name,
                    "units": [list(u) for u in units],
                    "seconds": secs,
                    "params_removed": params,
                }
            )
        if args.out:  # what is measured so far survives an interrupted run
            C.write_json(
                args.out + ".partial.json",
                {
                    "selections": selections,
                    "heldout": {
                        str(u): {
                            "kl": r["heldout_kl"],
                            "ppl": r["wikitext2_ppl"],
                            "arc_easy": r["arc_easy"]["acc"],
                            "piqa": r["piqa"]["acc"],
                        }
                        for u, r in evaluated.items()
                    },
                },
            )

    def summary(row, base):
        s = {"heldout_kl": row["heldout_kl"], "wikitext2_ppl": row["wikitext2_ppl"]}
        for task in ("arc_easy", "piqa"):
            s[task] = row[task]["acc"]
            if base is not None:
                c = compare_paired(base[task]["records"], row[task]["records"])
                s[f"{task}_vs_hidden"] = {
                    "difference": c.difference,
                    "interval": list(c.interval),
                    "p": c.p_value,
                    "n": c.n,
                }
        rouge, ident, first = [], [], []
        for task in ("gsm8k", "nq_open"):
            f = fidelity(dense[task], row[task], task=task)
            rouge += [r["rouge_l"] for r in f.records]
            ident += [r["exact"] for r in f.records]
            first += [r["prefix_tokens"] for r in f.records]
        s["rouge_l"], s["identical"], s["prefix_tokens_median"] = (
            float(np.mean(rouge)),
            float(np.mean(ident)),
            float(np.median(first)),
        )
        s["_rouge"] = rouge
        return s

    def delta(v) -> str:
        if v is None:
            return ""
        lo, hi = v["interval"]
        return f"{100 * v['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] p={v['p']:.2g}"

    table, rows = [], []
    for budget in dict.fromkeys(sel["budget"] for sel in selections):
        group = [s for s in selections if s["budget"] == budget]
        base_row = evaluated[tuple(tuple(u) for u in group[0]["units"])]
        base_sum = summary(base_row, None)
        for sel in group:
            row = evaluated[tuple(tuple(u) for u in sel["units"])]
            s = summary(row, base_row if sel["objective"] != "hidden" else None)
            if sel["objective"] != "hidden":
                c = compare_paired(base_sum["_rouge"], s["_rouge"])
                s["rouge_l_vs_hidden"] = {
                    "difference": c.difference,
                    "interval": list(c.interval),
                    "p": c.p_value,
                    "n": c.n,
                }
            s.pop("_rouge")
            sel.update(s)
            rows.append(sel)

            table.append(
                [
                    budget,
                    sel["objective"],
                    C.fmt(sel["seconds"], ".0f"),
                    f"{s['heldout_kl']:.3f}",
                    f"{s['wikitext2_ppl']:.1f}",
                    f"{100 * s['arc_easy']:.1f} {delta(s.get('arc_easy_vs_hidden'))}",
                    f"{100 * s['piqa']:.1f} {delta(s.get('piqa_vs_hidden'))}",
                    f"{s['rouge_l']:.3f} {delta(s.get('rouge_l_vs_hidden'))}",
                    f"{100 * s['identical']:.0f}%",
                    f"{s['prefix_tokens_median']:.0f}",
                ]
            )
    C.print_table(
        table,
        [
            "budget",
            "objective",
            "choose s",
            "held-out KL",
            "WT2 ppl",
            "ARC-E % (Δ vs cosine)",
            "PIQA %",
            "ROUGE-L",
            "identical",
            "prefix",
        ],
        title=(
            f"held-out quality (dense ppl {dense['wikitext2_ppl']:.2f}, "
            f"ARC-E {100 * dense['arc_easy']['acc']:.1f}, PIQA {100 * dense['piqa']['acc']:.1f})"
        ),
    )
    out["dense"] = {
        "wikitext2_ppl": dense["wikitext2_ppl"],
        "arc_easy": dense["arc_easy"]["acc"],
        "piqa": dense["piqa"]["acc"],
    }
    out["selections"] = rows
    C.write_json(args.out, out)


if __name__ == "__main__":
    main()
