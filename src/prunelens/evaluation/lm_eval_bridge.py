"""Bridge to lm-evaluation-harness: evaluate an in-memory (possibly pruned) model on its tasks, offline.

Usage::

    import prunelens
    from prunelens.evaluation.lm_eval_bridge import lm_eval_tasks_for_local_data, run_lm_eval, lm_eval_records

    model, tok = prunelens.load()                 # prune it in place if you like
    with lm_eval_tasks_for_local_data(["arc_easy", "boolq", "piqa"], limit=100) as local:
        out = run_lm_eval(model, tok, local.task_names, task_paths=[local.path])
    print(out["results"]["prunelens_arc_easy"])   # {'acc,none': ..., 'acc_norm,none': ...}
    recs = lm_eval_records(out, "prunelens_arc_easy")  # per-example log-likelihoods and predictions

Needs the optional dependency ``lm-eval`` (``pip install 'lm-eval>=0.4.13'``; prunelens already brings torch,
transformers and accelerate, which is all lm-eval's ``hf`` backend needs for an in-memory model).

* :func:`run_lm_eval` wraps the model in lm-eval's ``HFLM(pretrained=model, tokenizer=tokenizer)``
  (no re-saving; HFLM puts the model in eval mode) and calls ``lm_eval.simple_evaluate`` on any of
  lm-eval's tasks, or on task YAMLs under ``task_paths`` (``TaskManager(include_path=...)``). lm-eval's
  request caches are always off: they are keyed by the request only, not by the model, so a cache
  shared between a dense and a pruned model silently returns the dense model's answers.
* :func:`lm_eval_tasks_for_local_data` writes, into a folder, task YAMLs that ``include`` lm-eval's
  own built-in task (its prompt template, choices and metrics unchanged) and replace only its data by
  a local JSON Lines file (``dataset_path: json``, ``dataset_kwargs.data_files``) converted from the
  published files that :mod:`prunelens.data.tasks` reads - field layout only, no templating, so
  lm-eval's prompts are its own. With ``limit``/``seed`` the file holds exactly the subset that
  ``load_task(name, limit=limit, seed=seed)`` returns, in the same order (doc ``i`` = example ``i``).
  Paths are generated at run time; nothing machine-specific is stored in the package.

Local tasks (prunelens name -> lm-eval task it includes): arc_easy, arc_challenge, boolq, piqa,
openbookqa, winogrande, hellaswag, rte (-> ``sglue_rte``, the SuperGLUE template prunelens uses).
MMLU is not covered (lm-eval splits it into 57 subject tasks under a group).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelens.evaluation.lm_eval_rows import (
    rows_arc,
    rows_boolq,
    rows_hellaswag,
    rows_openbookqa,
    rows_piqa,
    rows_rte,
    rows_winogrande,
)

__all__ = [
    "LOCAL_TASKS",
    "LmEvalUnavailableError",
    "LocalLmEvalTasks",
    "builtin_task_yaml",
    "lm_eval_records",
    "lm_eval_tasks_for_local_data",
    "run_lm_eval",
]


class LmEvalUnavailableError(ImportError):
    """lm-evaluation-harness is not installed."""


def _lm_eval():
    try:
        import lm_eval
    except ImportError as e:
        raise LmEvalUnavailableError("this needs lm-evaluation-harness: pip install 'lm-eval>=0.4.13'") from e
    return lm_eval


@dataclass(frozen=True)
class _LocalTask:
    builtin: str  # lm-eval task whose YAML is included
    rows: Callable[[Path], list[dict]]


#: prunelens task name -> the lm-eval built-in task it reuses and the reader of the published file.
LOCAL_TASKS: dict[str, _LocalTask] = {
    "arc_easy": _LocalTask("arc_easy", rows_arc),
    "arc_challenge": _LocalTask("arc_challenge", rows_arc),
    "boolq": _LocalTask("boolq", rows_boolq),
    "piqa": _LocalTask("piqa", rows_piqa),
    "openbookqa": _LocalTask("openbookqa", rows_openbookqa),
    "winogrande": _LocalTask("winogrande", rows_winogrande),
    "hellaswag": _LocalTask("hellaswag", rows_hellaswag),
    "rte": _LocalTask("sglue_rte", rows_rte),
}

# Where lm-eval keeps these YAMLs (relative to lm_eval/tasks); looked up in its index when moved.
_BUILTIN_YAML = {
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "boolq": "super_glue/boolq/default.yaml",
    "piqa": "piqa/piqa.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
    "winogrande": "winogrande/default.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "sglue_rte": "super_glue/rte/default.yaml",
}


def builtin_task_yaml(task: str) -> Path:
    """Path of lm-eval's installed YAML for built-in ``task`` (found in its task index if moved)."""
    _lm_eval()
    import lm_eval.tasks as lt

    root = Path(lt.__file__).parent
    rel = _BUILTIN_YAML.get(task)
    if rel is not None and (root / rel).exists():
        cand = root / rel
        text = cand.read_text(encoding="utf-8")
        if re.search(rf"^task:\s*{re.escape(task)}\s*$", text, flags=re.MULTILINE):
            return cand
    entry = lt.TaskManager().task_index.get(task)
    path = entry.get("yaml_path") if isinstance(entry, dict) else getattr(entry, "yaml_path", None)
    if path is None or path == -1:
        raise KeyError(f"lm-eval has no built-in YAML task named {task!r}")
    return Path(path)


# --------------------------------------------------------------------------------------------------
# Local task configs


@dataclass
class LocalLmEvalTasks:
    """Task YAMLs and data written by :func:`lm_eval_tasks_for_local_data`.

    ``path``: the folder (pass it in ``task_paths``); ``names``: prunelens task -> lm-eval task name;
    ``files``: prunelens task -> data file; ``n``: number of docs per task. Usable as a context
    manager: the folder is deleted on exit when it was created as a temporary folder.
    """

    path: Path
    names: dict[str, str] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    n: dict[str, int] = field(default_factory=dict)
    temporary: bool = False

    @property
    def task_names(self) -> list[str]:
        return list(self.names.values())

    def cleanup(self) -> None:
        if self.temporary:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> LocalLmEvalTasks:
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()


def _yaml_text(cfg: dict) -> str:
    import yaml

    return yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)


def lm_eval_tasks_for_local_data(
    tasks: Sequence[str] = ("arc_easy", "arc_challenge", "boolq", "piqa"),
    out_dir: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
    seed: int = 0,
    split: str | None = None,
    paths: dict[str, str | os.PathLike] | None = None,
    prefix: str = "prunelens_",
) -> LocalLmEvalTasks:
    """Write lm-eval task YAMLs (and their data) that read local benchmark files, for offline runs.

    ``tasks``: prunelens task names (keys of :data:`LOCAL_TASKS`). ``out_dir``: folder to write to
    (default: a new temporary folder, removed by ``cleanup()`` or at the end of a ``with`` block).
    ``limit``/``seed``: the same seeded subset as ``prunelens.data.tasks.load_task`` (file order kept).
    ``split``: the split to read (default: the task's default in prunelens). ``paths``: explicit data
    file or folder per task (default: found under the data roots, as ``load_task`` does).
    ``prefix``: the lm-eval task name is ``prefix + task``.

    Each ``<prefix><task>.yaml`` ``include``s lm-eval's built-in task and overrides ``task``, ``tag``,
    ``dataset_path: json``, ``dataset_kwargs.data_files`` and the splits: the docs are served as the
    test split (and are the few-shot pool too, as the local copies have no training split).
    """
    from prunelens.data.tasks import resolve_task_path, select_subset

    unknown = [t for t in tasks if t not in LOCAL_TASKS]
    if unknown:
        raise KeyError(f"no local lm-eval config for {unknown}; available: {', '.join(LOCAL_TASKS)}")
    temporary = out_dir is None
    root = Path(tempfile.mkdtemp(prefix="prunelens_lm_eval_")) if temporary else Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    out = LocalLmEvalTasks(path=root, temporary=temporary)
    try:
        for name in tasks:
            spec = LOCAL_TASKS[name]
            src = resolve_task_path(name, split, (paths or {}).get(name))
            rows = [dict(r, _row=i) for i, r in enumerate(spec.rows(src))]
            rows = select_subset(rows, limit, seed)
            data = root / f"{prefix}{name}.jsonl"
            with open(data, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            task_name = f"{prefix}{name}"
            cfg = {
                "include": str(builtin_task_yaml(spec.builtin)),
                "task": task_name,
                "tag": ["prunelens_local"],
                "dataset_path": "json",
                "dataset_name": None,
                # the datasets cache lives in the folder too: removed with it, never shared
                "dataset_kwargs": {
                    "data_files": {"test": str(data.resolve())},
                    "cache_dir": str((root / "hf_datasets_cache").resolve()),
                },
                "training_split": None,
                "validation_split": None,
                "test_split": "test",
            }
            (root / f"{task_name}.yaml").write_text(_yaml_text(cfg), encoding="utf-8")
            out.names[name] = task_name
            out.files[name] = data
            out.n[name] = len(rows)
    except BaseException:
        out.cleanup()
        raise
    return out


# --------------------------------------------------------------------------------------------------
# Running lm-eval on an in-memory model

_REFUSED = ("use_cache", "cache_requests", "rewrite_requests_cache")


def _yaml_task_names(paths: Iterable[str | os.PathLike]) -> set[str]:
    import yaml

    names: set[str] = set()
    for p in paths:
        p = Path(p)
        files = [p] if p.is_file() else list(p.rglob("*.yaml")) + list(p.rglob("*.yml"))
        for f in files:
            try:
                text = f.read_text(encoding="utf-8")
            except OSError:
                continue
            for m in re.finditer(r"^(?:task|group):\s*['\"]?([^'\"\s#]+)", text, flags=re.MULTILINE):
                names.add(m.group(1))
            try:
                cfg = yaml.load(text, Loader=yaml.BaseLoader)  # tags such as !function read as text
            except yaml.YAMLError:
                continue
            if isinstance(cfg, dict) and isinstance(cfg.get("tag"), (str, list)):
                tags = cfg["tag"] if isinstance(cfg["tag"], list) else [cfg["tag"]]
                names.update(str(t) for t in tags)
    return names


def run_lm_eval(
    model,
    tokenizer,
    tasks: list[str],
    *,
    limit: float | None = None,
    batch_size: int | str = 16,
    task_paths: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
    num_fewshot: int | None = None,
    log_samples: bool = True,
    bootstrap_iters: int = 0,
    include_defaults: bool | None = None,
    hflm_kwargs: dict[str, Any] | None = None,
    **simple_evaluate_kwargs: Any,
) -> dict:
    """Run lm-evaluation-harness ``tasks`` on the in-memory ``model`` and return its results dict.

    ``model``/``tokenizer``: a transformers causal LM (dense or pruned in place) and its tokenizer,
    wrapped in ``HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **hflm_kwargs)``
    (e.g. ``hflm_kwargs={"add_bos_token": True}``); the model is not copied or saved.
    ``limit``: lm-eval's (first N docs, or a fraction). ``task_paths``: folders or YAML files of extra
    task configs (``TaskManager(include_path=...)``), e.g. ``LocalLmEvalTasks.path``.
    ``include_defaults``: index lm-eval's ~15k built-in tasks too (slow: benchmarks/README.md,
    § Measurements behind choices in the code); default: only when a
    requested task is not defined under ``task_paths``. ``bootstrap_iters=0`` skips the bootstrap
    standard errors (lm-eval's default of 100000 is slow on CPU). Other keyword arguments go to
    ``lm_eval.simple_evaluate``; its request caches (``use_cache``, ``cache_requests``) are refused,
    because they are keyed by the request and not by the model.

    The returned dict is lm-eval's: ``results[task]`` holds ``"acc,none"``, ``"acc_norm,none"`` ...;
    ``samples[task]`` the per-doc log-likelihoods when ``log_samples`` (see :func:`lm_eval_records`).
    """
    refused = [k for k in _REFUSED if simple_evaluate_kwargs.get(k)]
    if refused:
        raise ValueError(
            f"{', '.join(refused)}: lm-eval's request cache is keyed by the request only, not the model, "
            "so it would return one model's answers for another (dense vs pruned); it is disabled here"
        )
    for k in _REFUSED:
        simple_evaluate_kwargs.pop(k, None)
    if isinstance(tasks, str):
        tasks = [tasks]
    lm_eval = _lm_eval()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    paths: list[str] = []
    if task_paths is not None:
        many = not isinstance(task_paths, (str, os.PathLike))
        paths = [str(p) for p in task_paths] if many else [str(task_paths)]
    if include_defaults is None:
        include_defaults = not paths or not set(tasks) <= _yaml_task_names(paths)
    tm = TaskManager(include_path=paths or None, include_defaults=include_defaults)

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **(hflm_kwargs or {}))
    was_training = model.training
    try:
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks),
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=tm,
            use_cache=None,
            cache_requests=False,
            log_samples=log_samples,
            bootstrap_iters=bootstrap_iters,
            **simple_evaluate_kwargs,
        )
    finally:
        model.train(was_training)
    if out is None:  # non-zero rank in a distributed run
        return {}
    return dict(out)


def lm_eval_records(results: dict, task: str, target_delimiter: str = " ") -> list[dict]:
    """Per-doc records of one task from :func:`run_lm_eval`'s output (needs ``log_samples=True``).

    Each: ``doc_id``, ``doc``, ``target`` (lm-eval's: the gold index, or the target text for tasks with
    per-choice contexts such as WinoGrande), ``logprobs`` (one per choice),
    ``is_greedy``, ``prediction`` (argmax), ``prediction_norm`` (argmax of log-prob / choice length,
    lengths as :func:`prunelens.evaluation.multiple_choice.normalisation_lengths` takes them from the
    request arguments), and lm-eval's own ``acc``/``acc_norm`` when it computed them. Sorted by doc_id.
    """
    from prunelens.evaluation.multiple_choice import mc_predictions

    samples = (results.get("samples") or {}).get(task)
    if samples is None:
        raise KeyError(
            f"no samples for {task!r}; run with log_samples=True "
            f"(tasks with samples: {sorted(results.get('samples') or {})})"
        )
    out = []
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        resps = s["filtered_resps"]
        lps = [float(r[0]) for r in resps]
        greedy = [bool(r[1]) for r in resps]
        args = [tuple(a) for a in s["arguments"]]
        contexts = [a[0] for a in args]
        if len(set(contexts)) > 1:  # per-choice contexts (WinoGrande): lm-eval's choice is the context
            texts = contexts
        else:
            d = target_delimiter
            texts = [a[1][len(d) :] if d and a[1].startswith(d) else a[1] for a in args]
        chars = [max(1, len(t)) for t in texts]
        pred, pred_norm, _ = mc_predictions(lps, chars)
        rec = {
            "doc_id": s["doc_id"],
            "doc": s.get("doc"),
            "target": s.get("target"),
            "logprobs": lps,
            "is_greedy": greedy,
            "prediction": pred,
            "prediction_norm": pred_norm,
        }
        for k in ("acc", "acc_norm"):
            if k in s:
                rec[k] = float(s[k])
        out.append(rec)
    return out
