"""Generative task evaluators: GSM8K, NQ-Open, HumanEval, MBPP.

Usage::

    import prunelens
    from prunelens.data.tasks import load_task
    from prunelens.evaluate.generative import evaluate_generative
    from prunelens.evaluate.fidelity import fidelity

    model, tok = prunelens.load()
    gsm = load_task("gsm8k", limit=20, seed=0)
    dense = evaluate_generative(model, tok, "gsm8k", gsm, batch_size=10, max_new_tokens=192)
    dense.score, dense.metrics, dense.records[0]["text"]
    # ... prune the model, evaluate again, then:
    fid = fidelity(dense, pruned, tok)          # exact match, common prefix, ROUGE-L, degeneration

Each task builds its prompts (chat template when the model has one, unless ``chat=False``; optional
few-shot examples as earlier turns), generates greedily in batches with a KV cache
(:func:`prunelens.evaluate.generation.generate_batch`), cuts outputs at the task's stop strings and scores
them:

* **gsm8k** - exact match of the final number (:func:`~prunelens.evaluate.answers.extract_number`, compared
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
  that repeats the signature is handled (:func:`~prunelens.evaluate.answers.humaneval_source`).
* **mbpp** - pass@1 on the task's asserts (setup code included). Plain prompt: lm-eval's ``[BEGIN]``
  prompt (shots from the ``prompt`` split, task ids 1-10, ending ``[DONE]``); chat: the task and its tests
  with a request for a fenced block, stopped at the end of the first fenced block.

Every evaluator returns a :class:`~prunelens.evaluate.results.TaskResult` whose records hold ``id``,
``prompt`` (the example's prompt), ``input_text`` (what the model read), ``target``, ``prediction`` (the
extracted answer or code), ``score``, ``text`` (the output cut at the stop strings), ``token_ids``,
``finish_reason``, ``n_tokens`` and task fields; metrics add generation statistics and the output's
degeneration (``degen_*``, see :mod:`prunelens.evaluate.fidelity`).
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable, Sequence

from prunelens.data.paths import DataNotFoundError
from prunelens.data.tasks import GenExample, load_task
from prunelens.evaluate.answers import (
    exact_match,
    extract_code,
    extract_number,
    first_line,
    humaneval_source,
    max_over_golds,
    numbers_match,
    parse_number,
    strip_gsm8k_calculations,
    token_f1,
)
from prunelens.evaluate.fidelity import degeneration
from prunelens.evaluate.generation import Prompt, generate_batch, has_chat_template
from prunelens.evaluate.results import TaskResult

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
    "score_outputs",
    "gsm8k_prompt",
    "nq_prompt",
    "humaneval_prompt",
    "mbpp_prompt",
]

#: Stop strings for HumanEval completion (not chat): a new top-level statement ends the function.
HUMANEVAL_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")
#: Stop strings for MBPP completion (not chat).
MBPP_STOPS = ("[DONE]", "\n[", "\nassert ", "\nif __name__", "\nprint(", "\n```")
#: Stop strings for code in chat answers: the end of the first fenced block (a fence line after some text).
#: Caveat: an answer that opens with a sentence and then a *bare* fence (```` ``` ```` with no language tag)
#: is cut at that opening fence; SmolLM2 and most chat models tag their blocks (```` ```python ````).
CODE_CHAT_STOPS = ("\n```\n",)
GSM8K_PLAIN_STOPS = ("Question:", "</s>", "<|im_end|>")
NQ_STOPS = ("\n",)

#: Default generation budget per task (new tokens).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "gsm8k": {"max_new_tokens": 256},
    "nq_open": {"max_new_tokens": 32},
    "humaneval": {"max_new_tokens": 384},
    "mbpp": {"max_new_tokens": 384},
}

GSM8K_INSTRUCTION = (
    "Given the following problem, reason and give a final answer to the problem.\nProblem: {question}\n"
    'Your response should end with "The final answer is [answer]" where [answer] is the response to the '
    "problem."
)
NQ_INSTRUCTION = (
    "Answer the question with a short answer (a name, a date, a number or a few words) and nothing else.\n"
    "Question: {question}?"
)
HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function, imports included, in a "
    "```python code block.\n\n```python\n{prompt}```"
)
MBPP_INSTRUCTION = (
    "You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:"
    "\n\n{tests}\n\nReply with the Python code in a ```python code block."
)


# --------------------------------------------------------------------------------------------------
# Few-shot examples


def fewshot_examples(task: str, k: int, seed: int = 0, exclude: Sequence[str] = ()) -> list[GenExample]:
    """``k`` few-shot examples for ``task``, drawn with ``random.Random(seed)`` (the same shots for every
    question): GSM8K and NQ-Open from the train split (NQ-Open falls back to dev questions not in
    ``exclude`` when no train file is available), MBPP from its ``prompt`` split (task ids 1-10).
    HumanEval has no few-shot split."""
    if k <= 0:
        return []
    if task == "humaneval":
        raise ValueError("humaneval has no few-shot examples (no train split)")
    if task == "mbpp":
        pool = load_task("mbpp", split="prompt")
    elif task == "nq_open":
        try:
            pool = load_task("nq_open", split="train", source="local")
        except DataNotFoundError:
            ex = set(map(str, exclude))
            pool = [e for e in load_task("nq_open", split="validation") if e.id not in ex]
    else:
        pool = load_task(task, split="train")
    if k > len(pool):
        raise ValueError(f"{task}: asked for {k} shots, the few-shot pool has {len(pool)}")
    idx = random.Random(seed).sample(range(len(pool)), k)
    return [pool[i] for i in idx]


# --------------------------------------------------------------------------------------------------
# Prompt builders: (example, shots, chat) -> prompt (string or chat messages)


def _gsm8k_shot_answer(shot: GenExample) -> str:
    sol = strip_gsm8k_calculations(shot.meta["solution"])
    body = sol.split("####")[0].rstrip()
    return f"{body}\nThe final answer is {shot.target}"


def gsm8k_prompt(ex: GenExample, shots: Sequence[GenExample] = (), chat: bool = True) -> Prompt:
    """GSM8K prompt: chat messages (instruction per question, shots as earlier turns) or lm-eval's plain
    ``Question: ...\\nAnswer: <solution>`` shots separated by blank lines."""
    if chat:
        msgs: list[dict] = []
        for s in shots:
            msgs.append({"role": "user", "content": GSM8K_INSTRUCTION.format(question=s.meta["question"])})
            msgs.append({"role": "assistant", "content": _gsm8k_shot_answer(s)})
        msgs.append({"role": "user", "content": GSM8K_INSTRUCTION.format(question=ex.meta["question"])})
        return msgs
    head = "".join(f"{s.prompt} {s.meta['solution']}\n\n" for s in shots)
    return head + ex.prompt


def nq_prompt(ex: GenExample, shots: Sequence[GenExample] = (), chat: bool = True) -> Prompt:
    """NQ-Open prompt: chat messages asking for a short answer, or lm-eval's ``Answer these questions:`` /
    ``Q: ...?\\nA:`` form (shots answered with their first gold answer)."""
    q = ex.meta["question"]
    if chat:
        msgs: list[dict] = []
        for s in shots:
            msgs.append({"role": "user", "content": NQ_INSTRUCTION.format(question=s.meta["question"])})
            msgs.append({"role": "assistant", "content": s.target[0]})
        msgs.append({"role": "user", "content": NQ_INSTRUCTION.format(question=q)})
        return msgs
    lines = ["Answer these questions:"]
    lines += [f"Q: {s.meta['question']}?\nA: {s.target[0]}" for s in shots]
    lines.append(f"Q: {q}?\nA:")
    return "\n".join(lines)


def humaneval_prompt(ex: GenExample, shots: Sequence[GenExample] = (), chat: bool = True) -> Prompt:
    """HumanEval prompt: the function prompt itself (completion), or a chat request for the whole
    function."""
    if shots:
        raise ValueError("humaneval has no few-shot examples")
    return HUMANEVAL_INSTRUCTION.format(prompt=ex.prompt) if chat else ex.prompt


def mbpp_prompt(ex: GenExample, shots: Sequence[GenExample] = (), chat: bool = True) -> Prompt:
    """MBPP prompt: lm-eval's ``... [BEGIN]\\n`` completion form with ``code\\n[DONE]`` shots, or chat
    messages (the task and its tests; shots answered with fenced reference code)."""
    def req(e: GenExample) -> str:
        return MBPP_INSTRUCTION.format(text=e.meta["text"], tests="\n".join(e.meta["test_list"]))

    if chat:
        msgs: list[dict] = []
        for s in shots:
            msgs.append({"role": "user", "content": req(s)})
            msgs.append({"role": "assistant", "content": f"```python\n{s.meta['code'].strip()}\n```"})
        msgs.append({"role": "user", "content": req(ex)})
        return msgs
    head = "".join(f"{s.prompt}{s.meta['code'].strip()}\n[DONE]\n\n" for s in shots)
    return head + ex.prompt


# --------------------------------------------------------------------------------------------------
# Scorers: (example, generation, chat) -> record fields (prediction, score, ...)


def _score_gsm8k(ex: GenExample, text: str) -> dict[str, Any]:
    pred = extract_number(text)
    score = float(numbers_match(pred, ex.target))
    return {"prediction": pred, "pred_value": parse_number(pred), "score": score}


def _score_nq(ex: GenExample, text: str) -> dict[str, Any]:
    ans = first_line(text)
    em = max_over_golds(exact_match, ans, ex.target)
    return {"prediction": ans, "score": em, "exact_match": em, "f1": max_over_golds(token_f1, ans, ex.target)}


def _score_code(task: str, examples: Sequence[GenExample], texts: Sequence[str], chat: bool, timeout_s: float,
                workers: int | None) -> list[dict[str, Any]]:
    from prunelens.evaluate.sandbox import humaneval_program, mbpp_program, run_many

    programs, fields = [], []
    for ex, text in zip(examples, texts):
        if task == "humaneval":
            completion, mode = humaneval_source(ex.prompt, text, ex.meta["entry_point"], prose=chat)
            programs.append(humaneval_program(ex.prompt, completion, ex.meta["test"], ex.meta["entry_point"]))
            fields.append({"prediction": completion, "code_mode": mode})
        else:
            code = extract_code(text, prose=chat)
            programs.append(mbpp_program(code, ex.meta["test_list"], ex.meta.get("test_setup_code", "")))
            fields.append({"prediction": code})
    results = run_many(programs, workers=workers, timeout_s=timeout_s)
    for f, r in zip(fields, results):
        f.update({"score": float(r.passed), "status": r.status, "detail": r.detail[:300]})
    return fields


def score_outputs(task: str, examples: Sequence[GenExample], texts: Sequence[str], *, chat: bool = False,
                  timeout_s: float = 10.0, workers: int | None = 2) -> list[dict[str, Any]]:
    """Score output texts (already cut at the stop strings) against their examples, without a model.

    Returns per example the record fields: ``prediction`` (the extracted number / answer line / code),
    ``score`` (1.0 or 0.0), and ``pred_value`` (gsm8k), ``exact_match``/``f1`` (nq_open),
    ``status``/``detail`` of the sandbox run and, for HumanEval, ``code_mode`` (``"body"`` or
    ``"function"``). ``chat``: the outputs are chat answers (code may follow a sentence of prose).
    """
    task = task.lower()
    if len(examples) != len(texts):
        raise ValueError(f"{len(examples)} examples but {len(texts)} outputs")
    if task in ("humaneval", "mbpp"):
        return _score_code(task, examples, texts, chat, timeout_s, workers)
    if task == "gsm8k":
        return [_score_gsm8k(ex, t) for ex, t in zip(examples, texts)]
    if task == "nq_open":
        return [_score_nq(ex, t) for ex, t in zip(examples, texts)]
    raise ValueError(f"unknown generation task {task!r}; known: {', '.join(GEN_TASKS)}")


# --------------------------------------------------------------------------------------------------
# The evaluator

_PROMPTS: dict[str, Callable[..., Prompt]] = {
    "gsm8k": gsm8k_prompt,
    "nq_open": nq_prompt,
    "humaneval": humaneval_prompt,
    "mbpp": mbpp_prompt,
}
GEN_TASKS = tuple(_PROMPTS)


def _default_stops(task: str, chat: bool) -> list[str]:
    if task == "nq_open":
        return list(NQ_STOPS)
    if chat:
        return list(CODE_CHAT_STOPS) if task in ("humaneval", "mbpp") else []
    return list({"gsm8k": GSM8K_PLAIN_STOPS, "humaneval": HUMANEVAL_STOPS, "mbpp": MBPP_STOPS}[task])


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
    ``max_new_tokens``: token budget (None: :data:`TASK_DEFAULTS`). ``num_fewshot``: shots drawn with
    ``seed`` (:func:`fewshot_examples`). ``chat``: use the chat template (None: when the tokenizer has
    one). ``stop``: stop strings replacing the task's defaults (NQ-Open: newline; chat code: the closing
    fence; plain-prompt code and GSM8K: see the module constants; chat GSM8K: none, EOS ends).
    ``system``: a system message (None: the template's default). Greedy unless ``do_sample`` (seeded by
    ``seed``). ``timeout_s`` and ``workers``: sandbox wall-clock limit per program and parallel programs
    (code tasks).
    """
    task = task_name.lower()
    if task not in _PROMPTS:
        raise ValueError(f"unknown generation task {task_name!r}; known: {', '.join(GEN_TASKS)}")
    if examples is None:
        examples = load_task(task, limit=limit, seed=seed)
    examples = list(examples)
    use_chat = has_chat_template(tokenizer) if chat is None else bool(chat and has_chat_template(tokenizer))
    budget = int(max_new_tokens or TASK_DEFAULTS[task]["max_new_tokens"])
    stops = list(stop) if stop is not None else _default_stops(task, use_chat)
    shots = fewshot_examples(task, num_fewshot, seed, exclude=[e.id for e in examples])
    prompts = [_PROMPTS[task](ex, shots, use_chat) for ex in examples]

    t0 = time.perf_counter()
    gens = generate_batch(model, tokenizer, prompts, max_new_tokens=budget, chat=use_chat, system=system,
                          stop=stops, do_sample=do_sample, seed=seed, temperature=temperature,
                          batch_size=batch_size, progress=f"{task}" if progress else None)
    gen_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    scored = score_outputs(task, examples, [g.text for g in gens], chat=use_chat, timeout_s=timeout_s,
                           workers=workers)
    score_s = time.perf_counter() - t1

    records = []
    for ex, g, fields in zip(examples, gens, scored):
        rec = {"id": ex.id, "prompt": ex.prompt, "input_text": g.input_text, "target": ex.target}
        rec.update(fields)
        rec.update({"text": g.text, "token_ids": g.token_ids, "finish_reason": g.finish_reason,
                    "n_tokens": len(g.token_ids), "n_prompt_tokens": g.num_prompt_tokens})
        records.append(rec)

    n = len(records)
    main = {"gsm8k": "exact_match", "nq_open": "exact_match"}.get(task, "pass@1")
    metrics: dict[str, float] = {}
    if n:
        metrics[main] = sum(r["score"] for r in records) / n
        if task == "nq_open":
            metrics["f1"] = sum(r["f1"] for r in records) / n
        if task == "gsm8k":
            metrics["answer_found"] = sum(r["prediction"] is not None for r in records) / n
        if task in ("humaneval", "mbpp"):
            for status in sorted({r["status"] for r in records}):
                metrics[f"status_{status}"] = sum(r["status"] == status for r in records) / n
        metrics["gen_tokens_mean"] = sum(r["n_tokens"] for r in records) / n
        metrics["prompt_tokens_mean"] = sum(r["n_prompt_tokens"] for r in records) / n
        for reason in ("eos", "stop", "length"):
            metrics[f"finish_{reason}"] = sum(r["finish_reason"] == reason for r in records) / n
        metrics.update(degeneration(records, tokenizer, prefix="degen_"))
        metrics["generation_s"] = gen_s
        metrics["scoring_s"] = score_s
    else:
        metrics[main] = float("nan")
    config = {
        "task": task, "chat": use_chat, "num_fewshot": num_fewshot, "fewshot_ids": [s.id for s in shots],
        "max_new_tokens": budget, "batch_size": batch_size, "stop": stops, "system": system,
        "do_sample": do_sample, "temperature": temperature if do_sample else None, "seed": seed,
        "sandbox_timeout_s": timeout_s if task in ("humaneval", "mbpp") else None,
    }
    return TaskResult(task=task, kind="gen", main_metric=main, metrics=metrics, records=records, n=n,
                      seconds=time.perf_counter() - t0, config=config)


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
