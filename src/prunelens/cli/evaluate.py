"""``prunelens eval`` and ``prunelens compare``: evaluate one model on tasks; tabulate several evaluations."""

from __future__ import annotations

from pathlib import Path

import typer

from prunelens.cli.common import MODEL_HELP, CommonOptions, fail, load_model, resolve_model, set_threads
from prunelens.cli.render import out_console, print_comparison, print_eval, print_task_done


def eval_cmd(
    model: str | None = typer.Argument(None, help=MODEL_HELP),
    tasks: str = typer.Option(
        ...,
        "--tasks",
        help=(
            "Comma-separated tasks, e.g. "
            "arc_easy,boolq,piqa,gsm8k,nq_open,humaneval,mbpp,wikitext2,boolq_retrieval."
        ),
    ),
    out: Path = typer.Option(..., "--out", help="Output directory (re-running resumes finished tasks)."),
    limit: int | None = typer.Option(
        None, "--limit", help="Seeded deterministic subset of N examples per task (perplexity: N windows)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for subsets, few-shot examples and sampling."),
    batch_size: int = typer.Option(8, "--batch-size"),
    max_new_tokens: int = typer.Option(192, "--max-new-tokens", help="Generation budget per example."),
    num_fewshot: int = typer.Option(
        0, "--num-fewshot", help="Few-shot examples for generative tasks that support them (GSM8K)."
    ),
    embedder: str | None = typer.Option(
        None,
        "--embedder",
        help=(
            "Retrieval: embedding model (sentence-transformers dir/id); "
            "default: the evaluated model with last-token pooling."
        ),
    ),
    dtype: str = CommonOptions.dtype,
    device: str = CommonOptions.device,
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a directory written with other settings."
    ),
    threads: int | None = CommonOptions.threads,
):
    """Evaluate a (pruned) model on non-generative and generative tasks; per-example JSONL + summary JSON."""
    from prunelens.evaluation.runner import EvalSettings, evaluate_model, model_info

    set_threads(threads)
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    settings = EvalSettings(
        limit=limit,
        seed=seed,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        num_fewshot=num_fewshot,
        embedder=embedder,
    ).check(names)
    m, tok, plan = load_model(resolve_model(model), dtype, device)
    info = model_info(m, model, plan)
    summary = evaluate_model(
        m,
        tok,
        names,
        out,
        settings=settings,
        model_info=info,
        overwrite=overwrite,
        on_task_done=print_task_done,
    )
    print_eval(info, summary, out)


def compare(
    dirs: list[Path] = typer.Argument(
        ..., help="`prunelens eval` output directories; the first is the reference (dense)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Also write the table as CSV, Markdown and JSON (FILE without suffix)."
    ),
):
    """The paper-style table across evaluated models: tasks × models with 95 % intervals, averages, retained
    fraction of dense, and a paired test of each model against the first on the examples they share."""
    from prunelens.evaluation.compare import write_comparison
    from prunelens.evaluation.runner import comparison_table, load_all_records, load_summary

    try:
        summaries = [load_summary(d) for d in dirs]
        table = comparison_table(summaries, load_all_records(dirs, summaries))
    except FileNotFoundError as exc:  # a directory that is not a `prunelens eval` output
        fail(str(exc))
    print_comparison(table)
    if out is not None:
        for path in write_comparison(table, out):
            out_console.print(f"wrote {path}")
