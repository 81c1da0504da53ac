"""Prompt sets for the analyses: a small fixed default, a file, or a task of :mod:`prunelens.data.tasks`.

The default set is 8 GSM8K test questions (a fixed seeded subset, when the data is at hand) followed
by 4 open questions. A prompt file is ``.txt`` (one prompt per non-empty line), ``.json`` (a list of
strings or of objects with ``prompt``/``question``/``text``) or ``.jsonl`` (one such item per line).
A task name (``gsm8k``, ``nq_open``, ``arc_easy``, ``mmlu``, …) takes its questions; multiple-choice
items are written with lettered options as in :func:`prunelens.analysis.subspace.mc_prompt`.
Prompts are wrapped in the tokenizer's chat template when it has one and encoded without adding
special tokens twice.
"""

from __future__ import annotations

import json
from pathlib import Path

from prunelens.utils.errors import InputError

__all__ = ["OPEN_QUESTIONS", "PromptError", "default_prompts", "load_prompts", "encode_prompts"]

OPEN_QUESTIONS = [
    "Explain in two sentences why the sky is blue.",
    "Write a short poem about a lighthouse keeper.",
    "What are three good habits for writing clear code?",
    "Describe how a bicycle converts pedalling into motion.",
]


class PromptError(InputError):
    """A prompt set that cannot be read."""


def _gen_text(ex) -> str:
    meta = getattr(ex, "meta", {}) or {}
    return str(meta.get("question") or ex.prompt)


def default_prompts(n_gsm8k: int = 8, seed: int = 0) -> tuple[list[tuple[str, str]], list[str]]:
    """``([(label, text)], notes)``: GSM8K questions (when available locally) and the open questions."""
    from prunelens.data.paths import DataNotFoundError
    from prunelens.data.tasks import load_task

    notes: list[str] = []
    out: list[tuple[str, str]] = []
    try:
        for ex in load_task("gsm8k", limit=n_gsm8k, seed=seed, source="local"):
            out.append((f"gsm8k/{ex.id}", _gen_text(ex)))
    except (DataNotFoundError, OSError, ValueError) as exc:
        notes.append(
            f"GSM8K not available locally ({type(exc).__name__}); default prompts are the open questions only"
        )
    out += [(f"open/{i}", q) for i, q in enumerate(OPEN_QUESTIONS)]
    return out, notes


def load_prompts(
    spec: str | None = None, *, limit: int | None = None, seed: int = 0
) -> tuple[list[tuple[str, str]], list[str]]:
    """Resolve ``--prompts``: None (default set), a file, or a task name.
    Returns ``([(label, text)], notes)``."""
    from prunelens.data.tasks import TASKS, GenExample, MCExample, load_task

    notes: list[str] = []
    if spec is None:
        prompts, notes = default_prompts(seed=seed)
    else:
        path = Path(spec).expanduser()
        if path.is_file():
            prompts = _read_file(path)
        elif spec in TASKS:
            from prunelens.analysis.subspace import mc_prompt

            data = load_task(spec, limit=limit, seed=seed)
            if not isinstance(data, list) or not data or not isinstance(data[0], (GenExample, MCExample)):
                raise PromptError(f"task {spec!r} has no questions to use as prompts")
            prompts = [
                (f"{spec}/{ex.id}", _gen_text(ex) if isinstance(ex, GenExample) else mc_prompt(ex))
                for ex in data
            ]
        else:
            raise PromptError(
                f"--prompts {spec!r} is neither a file nor a known task ({', '.join(sorted(TASKS))})"
            )
    if limit is not None:
        if limit < 1:
            raise PromptError(f"the prompt limit must be positive, got {limit}")
        prompts = prompts[:limit]
    if not prompts:
        raise PromptError(f"--prompts {spec}: the prompt set is empty" if spec else "the prompt set is empty")
    return prompts, notes


def _item_text(item, where: str) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        for key in ("prompt", "question", "text"):
            if isinstance(item.get(key), str):
                return item[key]
    raise PromptError(f"{where}: expected a string or an object with 'prompt', 'question' or 'text'")


def _read_file(path: Path) -> list[tuple[str, str]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PromptError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(data, list):
            raise PromptError(f"{path}: expected a JSON list of prompts")
        items = [_item_text(x, f"{path}[{i}]") for i, x in enumerate(data)]
    elif path.suffix == ".jsonl":
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append(_item_text(json.loads(line), f"{path}:{n}"))
                except json.JSONDecodeError as exc:
                    raise PromptError(f"{path}:{n}: not valid JSON ({exc})") from exc
    else:
        items = [line for line in text.splitlines() if line.strip()]
    items = [s.strip() for s in items if s.strip()]
    return [(f"{path.stem}/{i}", s) for i, s in enumerate(items)]


def encode_prompts(tokenizer, prompts: list[str], chat: bool = True) -> list[list[int]]:
    """Token ids of each prompt, in the chat template when the tokenizer has one."""
    from prunelens.analysis.subspace import encode_prompt

    out = [encode_prompt(tokenizer, p, chat) for p in prompts]
    empty = [i for i, ids in enumerate(out) if not ids]
    if empty:
        raise PromptError(f"prompts {empty} encode to no token")
    return out
