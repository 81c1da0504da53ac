"""Generative task evaluators: GSM8K, NQ-Open, HumanEval, MBPP.

Usage::

    import prunelens
    from prunelens.data.tasks import load_task
    from prunelens.evaluation.generative import evaluate_generative
    from prunelens.evaluation.fidelity import fidelity

    model, tok = prunelens.load()
    gsm = load_task("gsm8k", limit=20, seed=0)
    dense = evaluate_generative(model, tok, "gsm8k", gsm, batch_size=10, max_new_tokens=192)
    dense.score, dense.metrics, dense.records[0]["text"]
    # ... prune the model, evaluate again, then:
    fid = fidelity(dense, pruned, tok)          # exact match, common prefix, ROUGE-L, degeneration

Each task builds its prompts (chat template when the model has one, unless ``chat=False``; optional
few-shot examples as earlier turns), generates greedily in batches with a KV cache
(:func:`prunelens.evaluation.decoding.generate_batch`), cuts outputs at the task's stop strings and scores
them:

* **gsm8k** - exact match of the final number (:func:`~prunelens.evaluation.answers.extract_number`, compared
  numerically). Chat prompt: the Llama-3 evaluation instruction ("... Your response should end with "The
  final answer is [answer]" ..."); few-shot answers are the train solutions without calculator
  annotations, ending "The final answer is N". Plain prompt: lm-eval's ``Question: ...\\nAnswer:`` with
  the reference solutions (``#### N``) as shots, stopped at ``Question:``.
* **nq_open** - exact match (main) and token F1 after SQuAD normalisation, max over the gold answers; the
  answer is the first line of the output. Shots come from the train split when present, else from other
  dev questions (never the evaluated ones).
* **humaneval** - pass@1 (greedy, one sample) by running ``prompt + completion`` and the tests in the
  sandbox. Plain prompt: the raw function prompt, stopped at ``\\ndef ``, ``\\nclass ``, ``\\nif __name__``,
  ``\\nprint(``, ``\\n#``, ``\\nassert``; chat prompt: the function in a fenced block with a request for
  the whole function, stopped at the end of the first fenced block (:data:`CODE_CHAT_STOPS`). A model
  that repeats the signature is handled (:func:`~prunelens.evaluation.answers.humaneval_source`).
* **mbpp** - pass@1 on the task's asserts (setup code included). Plain prompt: lm-eval's ``[BEGIN]``
  prompt (shots from the ``prompt`` split, task ids 1-10, ending ``[DONE]``); chat: the task and its tests
  with a request for a fenced block, stopped at the end of the first fenced block.

What each task uses - prompt builder, stop strings (plain and chat), token budget, main metric, scorer,
few-shot split - is read from its :class:`~prunelens.data.tasks.TaskSpec`
(:mod:`prunelens.data.tasks.generative`); the scorers themselves are the ``score_<task>`` functions
here, which the specs name as ``"prunelens.evaluation.generative:score_<task>"`` (:func:`resolve_function`).

Every evaluator returns a :class:`~prunelens.evaluation.results.TaskResult` whose records hold ``id``,
``prompt`` (the example's prompt), ``input_text`` (what the model read), ``target``, ``prediction`` (the
extracted answer or code), ``score``, ``text`` (the output cut at the stop strings), ``token_ids``,
``finish_reason``, ``n_tokens`` and task fields; metrics add generation statistics and the output's
degeneration (``degen_*``, see :mod:`prunelens.evaluation.fidelity`).
"""

from __future__ import annotations

import importlib
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from prunelens.data.paths import DataNotFoundError
from prunelens.data.tasks import TASKS, GenExample, TaskSpec, load_task

# The stop strings, instructions and prompt builders live with the task specs; re-exported here.
from prunelens.data.tasks.generative import (  # noqa: F401
    CODE_CHAT_STOPS,
    GSM8K_INSTRUCTION,
    GSM8K_PLAIN_STOPS,
    HUMANEVAL_INSTRUCTION,
    HUMANEVAL_STOPS,
    MBPP_INSTRUCTION,
    MBPP_STOPS,
    NQ_INSTRUCTION,
    NQ_STOPS,
    gsm8k_prompt,
    humaneval_prompt,
    mbpp_prompt,
    nq_prompt,
)
from prunelens.data.tasks.spec import get_spec
from prunelens.evaluation.answers import (
    exact_match,
    extract_code,
    extract_number,
    first_line,
    humaneval_source,
    max_over_golds,
    numbers_match,
    parse_number,
    token_f1,
)
from prunelens.evaluation.decoding import Generation, generate_batch, has_chat_template
from prunelens.evaluation.fidelity import degeneration
from prunelens.evaluation.results import TaskResult

__all__ = [
    "GEN_TASKS",
    "TASK_DEFAULTS",
    "HUMANEVAL_STOPS",
    "CODE_CHAT_STOPS",
    "MBPP_STOPS",
    "evaluate_generative",
    "evaluate_gsm8k",
    "evaluate_nq_open",
    "evaluate_humaneval",
    "evaluate_mbpp",
    "fewshot_examples",
    "resolve_function",
    "score_outputs",
    "score_gsm8k",
    "score_nq_open",
    "score_humaneval",
    "score_mbpp",
    "gsm8k_prompt",
    "nq_prompt",
    "humaneval_prompt",
    "mbpp_prompt",
]

#: The generation tasks (``kind == "gen"`` in :data:`prunelens.data.tasks.TASKS`), in registry order.
GEN_TASKS = tuple(name for name, spec in TASKS.items() if spec.kind == "gen")
#: Default generation budget per task (new tokens), as the task specs set it.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {t: {"max_new_tokens": TASKS[t].max_new_tokens} for t in GEN_TASKS}


def _gen_spec(task: str, shown: str | None = None) -> TaskSpec:
    spec = TASKS.get(task)
    if spec is None or spec.kind != "gen":
        raise ValueError(f"unknown generation task {shown or task!r}; known: {', '.join(GEN_TASKS)}")
    return spec


def resolve_function(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    """The function a task spec names: ``"package.module:attr"`` is imported now (``attr`` may be
    dotted); a callable is returned as it is."""
    if callable(ref):
        return ref
    module, sep, attr = str(ref).partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"expected 'package.module:function', got {ref!r}")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{ref!r} is not callable")
    return obj


# --------------------------------------------------------------------------------------------------
# Few-shot examples


def fewshot_examples(task: str, k: int, seed: int = 0, exclude: Sequence[str] = ()) -> list[GenExample]:
    """``k`` few-shot examples for ``task``, drawn with ``random.Random(seed)`` (the same shots for every
    question) from the spec's ``fewshot_split``: GSM8K and NQ-Open from the train split (NQ-Open falls
    back to dev questions not in ``exclude`` when no train file is available locally), MBPP from its
    ``prompt`` split (task ids 1-10). HumanEval has no few-shot split."""
    if k <= 0:
        return []
    spec = get_spec(task)
    split = spec.fewshot_split
    if split is None:
        raise ValueError(f"{task} has no few-shot examples (no train split)")
    if spec.fewshot_fallback is not None:
        try:
            pool = load_task(task, split=split, source="local")
        except DataNotFoundError:
            ex = set(map(str, exclude))
            pool = [e for e in load_task(task, split=spec.fewshot_fallback) if e.id not in ex]
    else:
        pool = load_task(task, split=split)
    if k > len(pool):
        raise ValueError(f"{task}: asked for {k} shots, the few-shot pool has {len(pool)}")
    idx = random.Random(seed).sample(range(len(pool)), k)
    return [pool[i] for i in idx]


# --------------------------------------------------------------------------------------------------
# Scorers, named by the task specs: (example, output text, chat) -> record fields (prediction, score ...);
# a sandbox task's scorer returns (program, fields) and the program's run adds score, status, detail.


def score_gsm8k(ex: GenExample, text: str, chat: bool = False) -> dict[str, Any]:
    """GSM8K: the final number of the output, compared numerically with the target."""
    pred = extract_number(text)
    score = float(numbers_match(pred, ex.target))
    return {"prediction": pred, "pred_value": parse_number(pred), "score": score}


def score_nq_open(ex: GenExample, text: str, chat: bool = False) -> dict[str, Any]:
    """NQ-Open: the first line of the output; exact match (the score) and token F1, max over the golds."""
    ans = first_line(text)
    em = max_over_golds(exact_match, ans, ex.target)
    return {"prediction": ans, "score": em, "exact_match": em, "f1": max_over_golds(token_f1, ans, ex.target)}


def score_humaneval(ex: GenExample, text: str, chat: bool = False) -> tuple[str, dict[str, Any]]:
    """HumanEval: the program ``prompt + completion`` + the task's tests (a repeated signature is
    handled, :func:`~prunelens.evaluation.answers.humaneval_source`)."""
    from prunelens.evaluation.sandbox import humaneval_program

    completion, mode = humaneval_source(ex.prompt, text, ex.meta["entry_point"], prose=chat)
    program = humaneval_program(ex.prompt, completion, ex.meta["test"], ex.meta["entry_point"])
    return program, {"prediction": completion, "code_mode": mode}


def score_mbpp(ex: GenExample, text: str, chat: bool = False) -> tuple[str, dict[str, Any]]:
    """MBPP: the extracted code + the task's setup code and asserts."""
    from prunelens.evaluation.sandbox import mbpp_program

    code = extract_code(text, prose=chat)
    return mbpp_program(code, ex.meta["test_list"], ex.meta.get("test_setup_code", "")), {"prediction": code}


def _run_in_sandbox(
    built: Sequence[tuple[str, dict[str, Any]]], timeout_s: float, workers: int | None
) -> list[dict[str, Any]]:
    from prunelens.evaluation.sandbox import run_many

    fields = [f for _, f in built]
    results = run_many([p for p, _ in built], workers=workers, timeout_s=timeout_s)
    for f, r in zip(fields, results):
        f.update({"score": float(r.passed), "status": r.status, "detail": r.detail[:300]})
    return fields


def score_outputs(
    task: str,
    examples: Sequence[GenExample],
    texts: Sequence[str],
    *,
    chat: bool = False,
    timeout_s: float = 10.0,
    workers: int | None = 2,
) -> list[dict[str, Any]]:
    """Score output texts (already cut at the stop strings) against their examples, without a model.

    Returns per example the record fields: ``prediction`` (the extracted number / answer line / code),
    ``score`` (1.0 or 0.0), and ``pred_value`` (gsm8k), ``exact_match``/``f1`` (nq_open),
    ``status``/``detail`` of the sandbox run and, for HumanEval, ``code_mode`` (``"body"`` or
    ``"function"``). ``chat``: the outputs are chat answers (code may follow a sentence of prose).
    The scorer is the one the task's spec names (``TaskSpec.scorer``).
    """
    task = task.lower()
    if len(examples) != len(texts):
        raise ValueError(f"{len(examples)} examples but {len(texts)} outputs")
    spec = _gen_spec(task)
    scorer = resolve_function(spec.scorer)
    scored = [scorer(ex, t, chat) for ex, t in zip(examples, texts)]
    return _run_in_sandbox(scored, timeout_s, workers) if spec.sandbox else scored


#: Averages a spec may ask for in ``extra_metrics``, beside the main metric (the mean score).
EXTRA_METRICS: dict[str, Callable[[Sequence[dict[str, Any]]], float]] = {
    "f1": lambda records: sum(r["f1"] for r in records) / len(records),
    "answer_found": lambda records: sum(r["prediction"] is not None for r in records) / len(records),
}


def _records(
    examples: Sequence[GenExample], gens: Sequence[Generation], scored: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One record per example: what was asked, the scorer's fields, then what was generated."""
    records = []
    for ex, g, fields in zip(examples, gens, scored):
        rec = {"id": ex.id, "prompt": ex.prompt, "input_text": g.input_text, "target": ex.target}
        rec.update(fields)
        rec.update(
            {
                "text": g.text,
                "token_ids": g.token_ids,
                "finish_reason": g.finish_reason,
                "n_tokens": len(g.token_ids),
                "n_prompt_tokens": g.num_prompt_tokens,
            }
        )
        records.append(rec)
    return records


def _metrics(
    records: list[dict[str, Any]], spec: TaskSpec, tokenizer, gen_s: float, score_s: float
) -> dict[str, float]:
    """The main metric (mean score), the spec's extra averages, sandbox statuses, generation statistics
    and degeneration, and the two timings (the main metric alone, NaN, when there is no record)."""
    n = len(records)
    main = spec.main_metric
    metrics: dict[str, float] = {}
    if not n:
        metrics[main] = float("nan")
        return metrics
    metrics[main] = sum(r["score"] for r in records) / n
    for name in spec.extra_metrics:
        metrics[name] = EXTRA_METRICS[name](records)
    if spec.sandbox:
        for status in sorted({r["status"] for r in records}):
            metrics[f"status_{status}"] = sum(r["status"] == status for r in records) / n
    metrics["gen_tokens_mean"] = sum(r["n_tokens"] for r in records) / n
    metrics["prompt_tokens_mean"] = sum(r["n_prompt_tokens"] for r in records) / n
    for reason in ("eos", "stop", "length"):
        metrics[f"finish_{reason}"] = sum(r["finish_reason"] == reason for r in records) / n
    metrics.update(degeneration(records, tokenizer, prefix="degen_"))
    metrics["generation_s"] = gen_s
    metrics["scoring_s"] = score_s
    return metrics


# --------------------------------------------------------------------------------------------------
# The evaluator


def evaluate_generative(
    model,
    tokenizer,
    task_name: str,
    examples: Sequence[GenExample] | None = None,
    *,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    num_fewshot: int = 0,
    seed: int = 0,
    chat: bool | None = None,
    limit: int | None = None,
    stop: Sequence[str] | None = None,
    system: str | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    timeout_s: float = 10.0,
    workers: int | None = 2,
    progress: bool = True,
) -> TaskResult:
    """Evaluate ``model`` on a generation task; returns a :class:`TaskResult` (see the module doc).

    ``examples``: the task's :class:`GenExample` s (None: ``load_task(task_name, limit=limit, seed=seed)``).
    ``max_new_tokens``: token budget (None: the spec's ``max_new_tokens``, see :data:`TASK_DEFAULTS`).
    ``num_fewshot``: shots drawn with ``seed`` (:func:`fewshot_examples`). ``chat``: use the chat
    template (None: when the tokenizer has one). ``stop``: stop strings replacing the spec's ``stops`` /
    ``chat_stops`` (NQ-Open: newline; chat code: the closing fence; plain-prompt code and GSM8K: see the
    module constants; chat GSM8K: none, EOS ends). ``system``: a system message (None: the template's
    default). Greedy unless ``do_sample`` (seeded by ``seed``). ``timeout_s`` and ``workers``: sandbox
    wall-clock limit per program and parallel programs (code tasks).
    """
    # Over ~80 lines only by its sixteen documented options: the body is the steps (prompts, generation,
    # scoring, records and metrics, the result with its config), each a call.
    task = task_name.lower()
    spec = _gen_spec(task, task_name)
    if examples is None:
        examples = load_task(task, limit=limit, seed=seed)
    examples = list(examples)
    use_chat = has_chat_template(tokenizer) if chat is None else bool(chat and has_chat_template(tokenizer))
    budget = int(max_new_tokens or spec.max_new_tokens)
    stops = list(stop) if stop is not None else spec.stops_for(use_chat)
    shots = fewshot_examples(task, num_fewshot, seed, exclude=[e.id for e in examples])
    prompts = [spec.prompt(ex, shots, use_chat) for ex in examples]

    t0 = time.perf_counter()
    gens = generate_batch(
        model,
        tokenizer,
        prompts,
        max_new_tokens=budget,
        chat=use_chat,
        system=system,
        stop=stops,
        do_sample=do_sample,
        seed=seed,
        temperature=temperature,
        batch_size=batch_size,
        progress=f"{task}" if progress else None,
    )
    gen_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    scored = score_outputs(
        task, examples, [g.text for g in gens], chat=use_chat, timeout_s=timeout_s, workers=workers
    )
    score_s = time.perf_counter() - t1

    records = _records(examples, gens, scored)
    n = len(records)
    main = spec.main_metric
    metrics = _metrics(records, spec, tokenizer, gen_s, score_s)
    config = {
        "task": task,
        "chat": use_chat,
        "num_fewshot": num_fewshot,
        "fewshot_ids": [s.id for s in shots],
        "max_new_tokens": budget,
        "batch_size": batch_size,
        "stop": stops,
        "system": system,
        "do_sample": do_sample,
        "temperature": temperature if do_sample else None,
        "seed": seed,
        "sandbox_timeout_s": timeout_s if spec.sandbox else None,
    }
    return TaskResult(
        task=task,
        kind="gen",
        main_metric=main,
        metrics=metrics,
        records=records,
        n=n,
        seconds=time.perf_counter() - t0,
        config=config,
    )


def evaluate_gsm8k(model, tokenizer, examples=None, **kw) -> TaskResult:
    """:func:`evaluate_generative` on GSM8K."""
    return evaluate_generative(model, tokenizer, "gsm8k", examples, **kw)


def evaluate_nq_open(model, tokenizer, examples=None, **kw) -> TaskResult:
    """:func:`evaluate_generative` on NQ-Open."""
    return evaluate_generative(model, tokenizer, "nq_open", examples, **kw)


def evaluate_humaneval(model, tokenizer, examples=None, **kw) -> TaskResult:
    """:func:`evaluate_generative` on HumanEval."""
    return evaluate_generative(model, tokenizer, "humaneval", examples, **kw)


def evaluate_mbpp(model, tokenizer, examples=None, **kw) -> TaskResult:
    """:func:`evaluate_generative` on MBPP."""
    return evaluate_generative(model, tokenizer, "mbpp", examples, **kw)
