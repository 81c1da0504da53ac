"""Run evaluation tasks on a model and store the results: resumable, atomic, one file per task.

Layout of an evaluation directory::

    config.json            model, plan, seed, limits, versions (what the results depend on)
    summary.json           per task: main metric, all metrics, n, seconds; parameters; total time
    tasks/<task>.json      the task's TaskResult without records
    tasks/<task>.jsonl     one record per example (prompt, target, prediction, score, text …)

Every file is written atomically as soon as its task finishes; re-running the same command skips the
tasks already stored, so an interrupted run loses at most the task in progress. A directory written
with different settings is refused unless ``overwrite`` is given.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelens import DEFAULT_MODEL, __version__
from prunelens.evaluation.results import TaskResult
from prunelens.prune.specs import SpecError
from prunelens.utils.errors import InputError
from prunelens.utils.io import OutputExistsError, atomic_write_json, atomic_write_text

NON_GENERATIVE_KINDS = ("mc", "retrieval", "ppl")


@dataclass
class EvalSettings:
    """What evaluation results depend on (besides the model)."""

    limit: int | None = None
    seed: int = 0
    batch_size: int = 8
    max_new_tokens: int = 192
    num_fewshot: int = 0
    ppl_seqlen: int = 256
    ppl_stride: int | None = None
    embedder: str | None = None  # retrieval: embedding model spec (default: the evaluated model)
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self, tasks: list[str]) -> EvalSettings:
        """Refuse unknown task names and impossible counts before any model loads (the one check of
        ``prunelens eval``'s options and :func:`prunelens.evaluate`'s arguments)."""
        if not tasks:
            raise SpecError("tasks", "is empty")
        for t in tasks:
            task_kind(t)
        for name in ("limit", "batch_size", "max_new_tokens"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
                raise SpecError(name, f"must be a positive integer (got {v!r})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "max_new_tokens": self.max_new_tokens,
            "num_fewshot": self.num_fewshot,
            "ppl_seqlen": self.ppl_seqlen,
            "ppl_stride": self.ppl_stride,
            "embedder": self.embedder,
            **self.extra,
        }


def task_kind(name: str) -> str:
    from prunelens.data.tasks import TASKS

    if name not in TASKS:
        raise InputError(f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
    return TASKS[name].kind


def evaluate_perplexity(model, tokenizer, task: str, settings: EvalSettings) -> TaskResult:
    """Perplexity on WikiText-2 (test) or the C4 sample, over ``settings.limit`` windows (all if None)."""
    from prunelens.data.calibration import bos_prefix, load_texts, token_stream
    from prunelens.evaluation.perplexity import perplexity

    t0 = time.perf_counter()
    docs = load_texts("wikitext2" if task == "wikitext2" else "c4-heldout")
    stream = token_stream(tokenizer, docs)
    res = perplexity(
        model,
        stream,
        seqlen=settings.ppl_seqlen,
        stride=settings.ppl_stride,
        batch_size=settings.batch_size,
        max_windows=settings.limit,
        bos_id=bos_prefix(tokenizer),
        desc=f"{task} perplexity",
    )
    records = [
        {"id": f"window-{i}", "nll": nll, "tokens": tok, "score": nll / tok}
        for i, (nll, tok) in enumerate(zip(res.window_nll, res.window_tokens))
    ]
    return TaskResult(
        task=task,
        kind="ppl",
        main_metric="ppl",
        metrics=res.to_dict(),
        records=records,
        n=res.windows,
        seconds=time.perf_counter() - t0,
        config={
            "seqlen": settings.ppl_seqlen,
            "stride": settings.ppl_stride or settings.ppl_seqlen,
            "windows": res.windows,
            "bos_id": res.bos_id,
            "text": "c4 documents 250-299" if task == "c4" else "wikitext-2 test",
        },
    )


def evaluate_retrieval_task(model, tokenizer, task: str, settings: EvalSettings) -> TaskResult:
    """Retrieval on a BEIR-layout task with ``settings.limit`` queries (their passages plus as many
    distractors, seeded). The embedder is ``settings.embedder`` when given (a sentence-transformers
    model, not pruned), else the evaluated model itself with last-token pooling (E5-Mistral style), so a
    pruned model is evaluated as a pruned embedder."""
    from prunelens.data.tasks import load_task
    from prunelens.evaluation.retrieval import evaluate_retrieval, subsample
    from prunelens.models.embedder_loading import load_embedder
    from prunelens.models.embedders import DecoderEmbedder

    data = load_task(task)
    if settings.limit is not None:
        data = subsample(data, settings.limit, n_distractors=settings.limit, seed=settings.seed)
    if settings.embedder:
        embedder = load_embedder(settings.embedder)
    else:
        embedder = DecoderEmbedder(
            model,
            tokenizer,
            pooling="last",
            batch_size=settings.batch_size,
            max_length=256,
            name="evaluated model (last-token pooling)",
        )
    return evaluate_retrieval(embedder, data, task=task)


def run_task(model, tokenizer, name: str, settings: EvalSettings) -> TaskResult:
    """Evaluate one task (loading its data with the settings' limit and seed)."""
    from prunelens.data.tasks import load_task

    kind = task_kind(name)
    if kind == "ppl":
        return evaluate_perplexity(model, tokenizer, name, settings)
    t0 = time.perf_counter()
    if kind == "mc":
        from prunelens.evaluation.multiple_choice import evaluate_multiple_choice

        examples = load_task(name, limit=settings.limit, seed=settings.seed)
        result = evaluate_multiple_choice(
            model, tokenizer, examples, batch_size=settings.batch_size, task=name
        )
    elif kind == "gen":
        from prunelens.evaluation.generative import evaluate_generative

        examples = load_task(name, limit=settings.limit, seed=settings.seed)
        result = evaluate_generative(
            model,
            tokenizer,
            name,
            examples,
            batch_size=settings.batch_size,
            max_new_tokens=settings.max_new_tokens,
            num_fewshot=settings.num_fewshot,
            seed=settings.seed,
        )
    else:
        result = evaluate_retrieval_task(model, tokenizer, name, settings)
    if not result.seconds:
        result.seconds = time.perf_counter() - t0
    return result


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {
        "prunelens": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def score_interval_of(r: TaskResult) -> dict[str, Any] | None:
    """The 95 % interval of a task's main score, from its per-example records (None without records)."""
    from prunelens.evaluation.uncertainty import perplexity_interval, score_interval

    if not r.records:
        return None
    if r.kind == "ppl":
        return perplexity_interval([x["nll"] for x in r.records], [x["tokens"] for x in r.records])
    return score_interval([float(x["score"]) for x in r.records])


def result_dict(r: TaskResult) -> dict[str, Any]:
    return {
        "kind": r.kind,
        "main_metric": r.main_metric,
        "score": r.score,
        "metrics": r.metrics,
        "n": r.n,
        "interval": score_interval_of(r),
        "seconds": r.seconds,
    }


def evaluate_model(
    model,
    tokenizer,
    tasks: list[str],
    out: str | Path,
    *,
    settings: EvalSettings,
    model_info: dict[str, Any],
    overwrite: bool = False,
    on_task_done: Callable[[TaskResult, bool], None] | None = None,
) -> dict[str, Any]:
    """Run ``tasks`` on ``model`` and store everything under ``out`` (resuming finished tasks)."""
    for t in tasks:
        task_kind(t)  # unknown task names fail before any work
    out = Path(out)
    config = {"model": model_info, "settings": settings.to_dict()}
    cfg_path = out / "config.json"
    if out.exists() and any(out.iterdir()):
        old = json.loads(cfg_path.read_text()) if cfg_path.exists() else None
        same = (
            old is not None
            and old.get("model") == config["model"]
            and old.get("settings") == config["settings"]
        )
        if not same and not overwrite:
            raise OutputExistsError(
                f"{out} holds results of other settings or another model (pass --overwrite to replace them)"
            )
        if not same:
            import shutil

            shutil.rmtree(out)
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg_path, {**config, "versions": _versions()})
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"results": {}}
    summary.update({"model": model_info, "settings": settings.to_dict()})
    for name in tasks:
        done = out / "tasks" / f"{name}.json"
        if done.exists() and name in summary["results"]:
            if on_task_done:
                on_task_done(TaskResult(**json.loads(done.read_text())), True)
            continue
        result = run_task(model, tokenizer, name, settings)
        store_task_result(out, result, summary)
        if on_task_done:
            on_task_done(result, False)
    summary["total_seconds"] = sum(r["seconds"] for r in summary["results"].values())
    atomic_write_json(summary_path, summary)
    return summary


def model_info(model, spec: str | None, plan=None, name: str | None = None) -> dict[str, Any]:
    """How an evaluation names the model it ran on (stored in its summary; ``prunelens eval`` and
    :func:`prunelens.evaluate`): ``name``, else the plan's name, else ``dense`` for the default model, else
    the spec's last path part."""
    from prunelens.models.adapter import param_count

    label = name or (
        plan.name if plan is not None else "dense" if spec in (None, DEFAULT_MODEL) else Path(str(spec)).name
    )
    return {
        "spec": spec or DEFAULT_MODEL,
        "name": label,
        "parameters": param_count(model),
        "plan": plan.to_dict() if plan is not None else None,
    }


def store_task_result(out: str | Path, result: TaskResult, summary: dict[str, Any]) -> None:
    """Write one task's records and summary, then the updated directory summary (each atomically)."""
    out = Path(out)
    atomic_write_text(
        out / "tasks" / f"{result.task}.jsonl",
        "".join(json.dumps(r, default=str) + "\n" for r in result.records),
    )
    atomic_write_json(out / "tasks" / f"{result.task}.json", result.summary())
    summary.setdefault("results", {})[result.task] = result_dict(result)
    atomic_write_json(out / "summary.json", summary)


def load_task_results(directory: str | Path, tasks: list[str]) -> dict[str, TaskResult]:
    """The stored results of ``tasks`` (summary and records) from an evaluation directory."""
    out = Path(directory)
    results = {}
    for t in tasks:
        r = TaskResult(**json.loads((out / "tasks" / f"{t}.json").read_text()))
        r.records = load_records(out, t)
        results[t] = r
    return results


def load_summary(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "summary.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{directory} has no summary.json (is it a `prunelens eval` output directory?)"
        )
    return json.loads(path.read_text())


def load_records(directory: str | Path, task: str) -> list[dict[str, Any]]:
    path = Path(directory) / "tasks" / f"{task}.jsonl"
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )


def comparison_table(
    summaries: list[dict[str, Any]], records: list[dict[str, list]] | None = None
) -> dict[str, Any]:
    """The paper's table: rows tasks, columns models, with non-generative and generative averages.

    The first summary is the reference (dense); every other column also gets its retained fraction of
    the reference score (``pruned / dense``; for perplexity, where lower is better, ``dense / pruned``).
    Perplexity is shown but left out of the averages (it is not a score in [0, 1]). Each row carries the
    scores' 95 % intervals; with ``records`` (from :func:`load_all_records`) also a paired test of every
    model against the first on the examples they share (exact McNemar for accuracies, else a paired
    bootstrap; see :mod:`prunelens.evaluation.uncertainty`).
    """
    if not summaries:
        raise ValueError("nothing to compare")
    names = [s["model"].get("name") or s["model"].get("spec", "?") for s in summaries]
    tasks: list[str] = []
    for s in summaries:
        tasks.extend(t for t in s["results"] if t not in tasks)
    kinds = {t: next(s["results"][t]["kind"] for s in summaries if t in s["results"]) for t in tasks}
    rows = []
    for t in tasks:
        row = {
            "task": t,
            "kind": kinds[t],
            "metric": next(s["results"][t]["main_metric"] for s in summaries if t in s["results"]),
            "scores": [s["results"].get(t, {}).get("score") for s in summaries],
        }
        ref = row["scores"][0]
        row["retained"] = [
            None if (v is None or not ref) else (ref / v if kinds[t] == "ppl" else v / ref)
            for v in row["scores"]
        ]
        rows.append(row)

    def avg(kind_set, i):
        vals = [
            r["scores"][i]
            for r in rows
            if r["kind"] in kind_set and r["kind"] != "ppl" and r["scores"][i] is not None
        ]
        return sum(vals) / len(vals) if vals else None

    averages = {
        "non_generative": [avg(("mc", "retrieval"), i) for i in range(len(summaries))],
        "generative": [avg(("gen",), i) for i in range(len(summaries))],
    }
    for key, vals in list(averages.items()):
        ref = vals[0]
        averages[f"{key}_retained"] = [None if (v is None or not ref) else v / ref for v in vals]
    params = [s["model"].get("parameters") for s in summaries]
    for r in rows:
        r["intervals"] = [s["results"].get(r["task"], {}).get("interval") for s in summaries]
    if records is not None:
        for r in rows:
            r["min_detectable_difference"] = _detectable(
                records[0].get(r["task"], []), r["scores"][0], r["kind"]
            )
            r["paired"] = [None] + [
                _paired(records[0].get(r["task"], []), rec.get(r["task"], []), r["kind"])
                for rec in records[1:]
            ]
    return {"models": names, "parameters": params, "rows": rows, "averages": averages}


def _detectable(dense: list[dict[str, Any]], score: float | None, kind: str) -> dict[str, Any] | None:
    """The smallest accuracy difference a paired test on these examples would detect (accuracies only)."""
    from prunelens.evaluation.uncertainty import minimum_detectable_difference

    scores = [float(x["score"]) for x in dense]
    if kind == "ppl" or not scores or score is None or any(v not in (0.0, 1.0) for v in scores):
        return None
    value = minimum_detectable_difference(len(scores), sum(scores) / len(scores))
    return {
        "value": value,
        "n": len(scores),
        "alpha": 0.05,
        "power": 0.8,
        "assumption": "the two models' errors independent (the worst case)",
    }


def _paired(dense: list[dict[str, Any]], pruned: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    """Paired test of one task between two models, on the examples both evaluated (matched by id)."""
    from prunelens.evaluation.uncertainty import compare_paired

    by_id = {str(x["id"]): x for x in pruned}
    shared = [(x, by_id[str(x["id"])]) for x in dense if str(x["id"]) in by_id]
    if not shared:
        return None
    res = compare_paired(
        [float(a["score"]) for a, _ in shared], [float(b["score"]) for _, b in shared]
    ).to_dict()
    res["measure"] = "NLL per token, window means (lower is better)" if kind == "ppl" else "per-example score"
    return res


def load_all_records(directories: list[str | Path], summaries: list[dict[str, Any]]) -> list[dict[str, list]]:
    """Per model, per task, the stored per-example records (for paired comparisons)."""
    return [{t: load_records(d, t) for t in s["results"]} for d, s in zip(directories, summaries)]
