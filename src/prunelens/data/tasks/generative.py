"""Generation tasks: GSM8K, NQ-Open, HumanEval, MBPP - readers, prompts, stop strings and their specs.

Readers turn the published files (or the hub's rows) into :class:`GenExample` s whose ``prompt`` is
lm-evaluation-harness's zero-shot prompt. The prompt builders (``(example, shots, chat) -> prompt``) give
what the model reads: chat messages (an instruction per question, shots as earlier turns) or the plain
lm-eval form with shots. Each spec names its scorer in :mod:`prunelens.evaluation.generative` by a
``"module:function"`` string, imported when outputs are scored (this layer imports no evaluation code).

* **gsm8k** - chat: the Llama-3 evaluation instruction (... "The final answer is [answer]"); shots are
  the train solutions without calculator annotations, ending "The final answer is N"; EOS ends an answer.
  Plain: ``Question: ...\\nAnswer:`` with the reference solutions (``#### N``) as shots, stopped at
  ``Question:``. Scored by exact match of the final number.
* **nq_open** - a short answer (chat) or lm-eval's ``Answer these questions:`` / ``Q: ...?\\nA:`` form,
  stopped at a newline; exact match (main) and token F1, max over the gold answers. Shots come from the
  train split when present locally, else from other dev questions.
* **humaneval** - the raw function prompt (plain, stopped at a new top-level statement) or a chat
  request for the whole function in a fenced block (stopped at the end of the first fenced block,
  :data:`CODE_CHAT_STOPS`); pass@1 in the code sandbox. No few-shot split.
* **mbpp** - lm-eval's ``[BEGIN]`` prompt (shots from the ``prompt`` split, task ids 1-10, ending
  ``[DONE]``) or a chat request with the task's tests; pass@1 on the task's asserts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from prunelens.data.tasks.records import GenExample
from prunelens.data.tasks.spec import TaskSpec, hf_parquet, hub_dataset, register, row_task

__all__ = [
    "HUMANEVAL_STOPS",
    "MBPP_STOPS",
    "CODE_CHAT_STOPS",
    "GSM8K_PLAIN_STOPS",
    "NQ_STOPS",
    "GSM8K_INSTRUCTION",
    "NQ_INSTRUCTION",
    "HUMANEVAL_INSTRUCTION",
    "MBPP_INSTRUCTION",
    "strip_gsm8k_calculations",
    "gsm8k_prompt",
    "nq_prompt",
    "humaneval_prompt",
    "mbpp_prompt",
]

#: A prompt: a string, or chat messages (``[{"role", "content"}, ...]``).
Prompt = str | Sequence[dict]


# --------------------------------------------------------------------------------------------------
# Readers


def _gsm8k_files(split: str) -> list[str]:
    return [f"{split}.jsonl", f"main/{split}-00000-of-00001.parquet"]


def _convert_gsm8k(rows: Iterable[dict], split: str) -> list[GenExample]:
    # lm-eval gsm8k.yaml: "Question: {{question}}\nAnswer:". Target: the number after '####' with thousands
    # separators removed (lm-eval ignores ',' and '$' when matching); meta keeps the full solution.
    out = []
    for i, r in enumerate(rows):
        final = r["answer"].split("####")[-1].strip()
        out.append(
            GenExample(
                id=f"{split}-{i}",
                prompt=f"Question: {r['question']}\nAnswer:",
                target=final.replace(",", ""),
                task="gsm8k",
                meta={"question": r["question"], "solution": r["answer"], "answer_raw": final},
            )
        )
    return out


def _nq_files(split: str) -> list[str]:
    return [{"validation": "NQ-open.dev.jsonl", "train": "NQ-open.train.jsonl"}[split]] + hf_parquet(split)


def _convert_nq(rows: Iterable[dict], split: str) -> list[GenExample]:
    # lm-eval nq_open.yaml: description "Answer these questions:\n" + "Q: {{question}}?\nA:"; any listed
    # answer counts (exact match after normalisation).
    out = []
    for i, r in enumerate(rows):
        ans = r["answer"]
        out.append(
            GenExample(
                id=f"{split}-{i}",
                prompt=f"Answer these questions:\nQ: {r['question']}?\nA:",
                target=list(ans) if not isinstance(ans, str) else [ans],
                task="nq_open",
                meta={"question": r["question"]},
            )
        )
    return out


def _humaneval_files(split: str) -> list[str]:
    hf = "openai_humaneval/test-00000-of-00001.parquet"
    return ["HumanEval.jsonl", "HumanEval.jsonl.gz", hf] + hf_parquet("test")


def _convert_humaneval(rows: Iterable[dict], split: str) -> list[GenExample]:
    return [
        GenExample(
            id=r["task_id"],
            prompt=r["prompt"],
            target=r["canonical_solution"],
            task="humaneval",
            meta={
                "test": r["test"],
                "entry_point": r["entry_point"],
                "canonical_solution": r["canonical_solution"],
            },
        )
        for r in rows
    ]


# Official MBPP README: task_ids 11-510 test, 1-10 few-shot prompts;
# the HF splits add 511-600 validation and 601-974 train.
_MBPP_RANGES = {
    "test": range(11, 511),
    "prompt": range(1, 11),
    "validation": range(511, 601),
    "train": range(601, 975),
    "full": range(1, 975),
}


def _mbpp_files(split: str) -> list[str]:
    return ["mbpp.jsonl"]


def _convert_mbpp(rows: Iterable[dict], split: str) -> list[GenExample]:
    # Prompt: lm-eval mbpp.yaml, zero-shot: "You are an expert Python programmer, and here is your task:
    # {text} Your code should pass these tests:\n\n{tests, one a line}\n[BEGIN]\n"; target: reference code.
    keep = _MBPP_RANGES[split]
    out = []
    for r in sorted(rows, key=lambda r: int(r["task_id"])):
        tid = int(r["task_id"])
        if tid not in keep:
            continue
        tests = "\n".join(r["test_list"])
        out.append(
            GenExample(
                id=str(tid),
                prompt=(
                    f"You are an expert Python programmer, and here is your task: {r['text']} "
                    f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n"
                ),
                target=r["code"],
                task="mbpp",
                meta={
                    "text": r["text"],
                    "code": r["code"],
                    "test_list": list(r["test_list"]),
                    "test_setup_code": r.get("test_setup_code", ""),
                    "challenge_test_list": list(r.get("challenge_test_list") or []),
                },
            )
        )
    return out


def _hub_mbpp(spec: TaskSpec, split: str, hub_id: str) -> list[GenExample]:
    hub_split_names = ["train", "test", "validation", "prompt"] if split == "full" else [split]
    rows: list[dict] = []
    for s in hub_split_names:
        rows.extend(hub_dataset(hub_id, spec.hub_config, s))
    return _convert_mbpp(rows, split)


# --------------------------------------------------------------------------------------------------
# Stop strings and instructions

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

_CALC = re.compile(r"<<[^<>]*>>")


def strip_gsm8k_calculations(solution: str) -> str:
    """A GSM8K reference solution without its ``<<48/2=24>>`` calculator annotations."""
    return _CALC.sub("", solution)


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
# Specs


def _gen(*args, **kw):
    return row_task(*args, kind="gen", **kw)


_SCORERS = "prunelens.evaluation.generative"  # the scorers named below live there

# fmt: off
register(
    _gen("gsm8k", ("gsm8k",), _gsm8k_files, _convert_gsm8k, "test", ("train", "test"),
         "openai/gsm8k", "main", description="GSM8K (official JSONL)",
         prompt=gsm8k_prompt, stops=GSM8K_PLAIN_STOPS, chat_stops=(), max_new_tokens=256,
         main_metric="exact_match", scorer=f"{_SCORERS}:score_gsm8k", extra_metrics=("answer_found",)),
    _gen("nq_open", ("nq_open",), _nq_files, _convert_nq, "validation", ("train", "validation"),
         "google-research-datasets/nq_open", description="NQ-Open (official JSONL)",
         prompt=nq_prompt, stops=NQ_STOPS, chat_stops=NQ_STOPS, max_new_tokens=32,
         main_metric="exact_match", scorer=f"{_SCORERS}:score_nq_open", extra_metrics=("f1",),
         fewshot_split="train", fewshot_fallback="validation"),
    _gen("humaneval", ("humaneval",), _humaneval_files, _convert_humaneval, "test", ("test",),
         "openai/openai_humaneval", description="HumanEval (official JSONL / .jsonl.gz)",
         prompt=humaneval_prompt, stops=HUMANEVAL_STOPS, chat_stops=CODE_CHAT_STOPS, max_new_tokens=384,
         main_metric="pass@1", scorer=f"{_SCORERS}:score_humaneval", sandbox=True, fewshot_split=None),
    _gen("mbpp", ("mbpp",), _mbpp_files, _convert_mbpp, "test", tuple(_MBPP_RANGES),
         "google-research-datasets/mbpp", "full", hub_loader=_hub_mbpp,
         description="MBPP full (official mbpp.jsonl; test = task ids 11-510, prompt = 1-10)",
         prompt=mbpp_prompt, stops=MBPP_STOPS, chat_stops=CODE_CHAT_STOPS, max_new_tokens=384,
         main_metric="pass@1", scorer=f"{_SCORERS}:score_mbpp", sandbox=True, fewshot_split="prompt"),
)
# fmt: on
