"""How the commands show their results: rich tables on stdout, built from what the library returned.

Nothing here computes or decides; each function takes a result (a plan, a summary, a table) and prints it.
"""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from prunelens.cli.common import err_console, out_console


def print_plan(plan, out: Path, seconds: float) -> None:
    """A pruning run's plan: method, parameters, what was dropped or how sparse, calibration, time."""
    t = Table(title=f"{plan.name} saved to {out}", show_header=False)
    t.add_row("method", plan.method + (f" ({plan.target})" if plan.target else ""))
    t.add_row(
        "parameters",
        f"{plan.params_before:,} → {plan.params_after:,} "
        f"({100 * (1 - plan.params_after / plan.params_before):.1f}% fewer)",
    )
    if plan.dropped_sublayers:
        t.add_row("dropped", ", ".join(f"{d['sublayer']}@{d['layer']}" for d in plan.dropped_sublayers))
    if plan.dropped_blocks:
        t.add_row("dropped blocks", ", ".join(map(str, plan.dropped_blocks)))
    objective = (plan.options or {}).get("objective")
    if objective and objective != "hidden":
        sc = plan.scores or {}
        t.add_row(
            "objective",
            f"{objective} ({plan.options.get('estimator', 'exact')} KL at "
            f"T = {plan.options.get('temperature', 1.0):g}, {sc.get('seconds', 0.0):.1f} s)",
        )
        if "search" in sc:
            r = sc["search"]
            t.add_row(
                "search",
                f"{r['evaluations']} sets in {r['seconds']:.0f} s: "
                f"KL {r['kl_before']:.4g} → {r['kl_after']:.4g} ({len(r['accepted_swaps'])} swaps kept)",
            )
    if plan.quantization:
        q = plan.quantization
        t.add_row("quantization", f"{q['label']} on {q['tensors']} block linears ({q['weights']:,} weights)")
    if "achieved" in plan.sparsity:
        ach = plan.sparsity["achieved"]
        t.add_row(
            "sparsity",
            f"{ach['overall']:.4f} overall; " + ", ".join(f"{k} {v:.3f}" for k, v in ach["by_group"].items()),
        )
    if plan.calibration:
        c = plan.calibration
        t.add_row("calibration", f"{c['source']}: {c['nsamples']}×{c['seqlen']} tokens, seed {c['seed']}")
    t.add_row("time", f"{seconds:.1f} s")
    out_console.print(t)


def print_info(data: dict, plan) -> None:
    """``prunelens info``: the model's shape, and its prune plan (drops, sparsity, repair) when it has one."""
    t = Table(title=f"{data['model']}", show_header=False)
    for key in ("family", "class", "parameters", "layers", "hidden_size", "vocab_size", "dtype"):
        v = data[key]
        t.add_row(key, f"{v:,}" if isinstance(v, int) else str(v))
    if plan is not None:
        t.add_row("pruned", f"{plan.name} (from {plan.base_model}, {plan.params_before:,} params before)")
        if data["dropped_attention"]:
            t.add_row("dropped attention", ", ".join(map(str, data["dropped_attention"])))
        if data["dropped_mlp"]:
            t.add_row("dropped MLP", ", ".join(map(str, data["dropped_mlp"])))
        if plan.dropped_blocks:
            t.add_row("dropped blocks", ", ".join(map(str, plan.dropped_blocks)))
        if "achieved" in plan.sparsity:
            t.add_row("sparsity", f"{plan.sparsity['achieved']['overall']:.4f}")
        if plan.quantization:
            t.add_row("quantization", str(plan.quantization["label"]))
        if plan.repair:
            r = plan.repair
            before, after = r.get("heldout_before", {}), r.get("heldout_after", {})
            t.add_row(
                "repaired",
                f"{r['loss']} ({r.get('train', 'lora')}) from {r['teacher']}: {r['steps_run']} steps, "
                f"{r['tokens']:,} tokens"
                + (
                    f", held-out KL {before['heldout_kl']:.4f} → {after['heldout_kl']:.4f}"
                    if "heldout_kl" in before and "heldout_kl" in after
                    else ""
                ),
            )
    else:
        t.add_row("pruned", "no (no prune_plan.json)")
    out_console.print(t)


def print_demo(summary: dict, plan, params_before: int, before_ppl, after_ppl, before_gen, after_gen, out):
    """``prunelens demo``: dense beside pruned, and where the checkpoint and summary went."""
    t = Table(title=f"{summary['model']}: dense vs {plan.name}")
    t.add_column("")
    t.add_column("dense")
    t.add_column(plan.name)
    t.add_row("parameters", f"{params_before:,}", f"{plan.params_after:,}")
    t.add_row("layers dropped", "—", ", ".join(f"attn@{d['layer']}" for d in plan.dropped_sublayers))
    t.add_row("perplexity (held-out C4)", f"{before_ppl.ppl:.2f}", f"{after_ppl.ppl:.2f}")
    t.add_row("greedy answer", before_gen, after_gen)
    out_console.print(t)
    out_console.print(f"pruned checkpoint: {out}  (reload with prunelens.load({str(out)!r}))")
    out_console.print(f"summary: {out / 'demo_summary.json'}   time: {summary['seconds']:.0f} s")


def print_eval(info: dict, summary: dict, out: Path) -> None:
    """``prunelens eval``: one row per task (metric, score, examples, seconds)."""
    t = Table(title=f"{info['name']} ({info['parameters']:,} parameters) → {out}")
    for col in ("task", "metric", "score", "n", "seconds"):
        t.add_column(col)
    for name, r in summary["results"].items():
        t.add_row(name, r["main_metric"], f"{r['score']:.4f}", str(r["n"]), f"{r['seconds']:.0f}")
    out_console.print(t)


def print_task_done(result, cached: bool) -> None:
    """One line per finished (or cached) task while ``prunelens eval`` runs."""
    err_console.print(
        f"{'[dim]cached[/]' if cached else '[green]done[/]'}  {result.task}: "
        f"{result.main_metric} = {result.score:.4f}  (n={result.n}, {result.seconds:.0f} s)"
    )


def print_comparison(table: dict) -> None:
    """``prunelens compare``: tasks × models with intervals and retained fractions, then the paired tests."""
    t = Table(title="non-generative vs generative")
    t.add_column("task")
    t.add_column("metric")
    for name in table["models"]:
        t.add_column(name, justify="right")

    def num(v):
        return f"{v:.2f}" if abs(v) >= 10 else f"{v:.3f}"

    def fmt(v, retained=None, interval=None):
        if v is None:
            return "—"
        s = num(v) + (f" [dim][{num(interval['low'])}, {num(interval['high'])}][/]" if interval else "")
        return s + (f" [dim]({100 * retained:.0f}%)[/]" if retained is not None and retained != 1 else "")

    t.add_row("parameters", "", *[f"{p / 1e6:.1f}M" if p else "—" for p in table["parameters"]])
    for r in table["rows"]:
        t.add_row(
            r["task"],
            r["metric"],
            *[fmt(v, k, iv) for v, k, iv in zip(r["scores"], r["retained"], r["intervals"])],
        )
    av = table["averages"]
    t.add_row(
        "[bold]non-generative avg[/]",
        "",
        *[fmt(v, k) for v, k in zip(av["non_generative"], av["non_generative_retained"])],
    )
    t.add_row(
        "[bold]generative avg[/]",
        "",
        *[fmt(v, k) for v, k in zip(av["generative"], av["generative_retained"])],
    )
    out_console.print(t)
    paired = Table(
        title=f"paired against {table['models'][0]} (same examples; Δ = model − reference, 95 % interval)"
    )
    for col in ("task", "model", "n", "Δ", "interval", "p", "test"):
        paired.add_column(col, justify="left" if col in ("task", "model", "test") else "right")
    for r in table["rows"]:
        for name, c in zip(table["models"][1:], r.get("paired", [None])[1:]):
            if c is not None:
                paired.add_row(
                    r["task"],
                    name,
                    str(c["n"]),
                    f"{c['difference']:+.3f}",
                    f"[{c['interval'][0]:+.3f}, {c['interval'][1]:+.3f}]",
                    f"{c['p_value']:.3g}",
                    c["test"] + (" (NLL)" if r["kind"] == "ppl" else ""),
                )
    if paired.row_count:
        out_console.print(paired)


def print_repair(result, out: Path, seconds: float) -> None:
    """``prunelens repair``: what was trained, how long, and the held-out KL and CE before and after."""
    r = result.summary
    t = Table(title=f"{result.plan.name} saved to {out}", show_header=False)
    t.add_row("repair", f"{r['loss']} on {r['train']}, {r['trainable_parameters']:,} trainable parameters")
    t.add_row("steps", f"{r['steps_run']} of {r['steps']} ({r['stopped']}); kept step {r['kept_step']}")
    t.add_row("tokens", f"{r['tokens']:,}")
    b, a = r["heldout_before"], r["heldout_after"]
    t.add_row("held-out KL(p‖q)", f"{b['heldout_kl']:.4f} → {a['heldout_kl']:.4f}")
    t.add_row("held-out CE", f"{b['heldout_ce']:.4f} → {a['heldout_ce']:.4f}")
    t.add_row("time", f"{seconds:.1f} s (repair {r['seconds']:.1f} s)")
    out_console.print(t)


def _fmt(v) -> str:
    """A headline value: 4 decimals in the usual range, scientific outside it, a dash for none."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if v == 0:
            return "0"
        return f"{v:.4f}" if 1e-3 <= abs(v) < 1e4 else f"{v:.2e}"
    if isinstance(v, list):
        return ",".join("—" if x is None else str(x) for x in v)
    return str(v)


def print_analysis(report, dense: str, config, out: Path, seconds: float) -> None:
    """``prunelens analyze``: the headline medians per variant, the run's notes, where results went."""
    from prunelens.analysis.pipeline import headline

    rows = headline(report.summary)
    if rows:
        metrics = list(dict.fromkeys(k for r in rows for k in r if k != "variant"))
        t = Table(
            title=f"{dense}: medians (T={config.temperatures[0]:g}); transitions over each variant's own "
            "sublayers; TF = teacher-forced, FR = free-running"
        )
        t.add_column("")
        for r in rows:
            t.add_column(str(r["variant"]), overflow="fold")
        for m in metrics:
            t.add_row(m, *[_fmt(r.get(m)) for r in rows])
        out_console.print(t)
    for n in report.summary.get("notes", []):
        err_console.print(f"note: {n}")
    mem = report.summary["memory"]
    out_console.print(
        f"results: {out}  (tables/, figures/, summary.json, config.json)   "
        f"time: {seconds:.0f} s   peak memory: {mem['peak_rss_bytes'] / 2**30:.2f} GiB"
    )
