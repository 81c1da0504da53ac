"""Batched greedy (or seeded sampling) generation with a KV cache, chat template when the model has one.

Usage::

    from prunelens.evaluation.decoding import generate, generate_batch

    texts = generate(model, tok, ["What is 2+2?"], max_new_tokens=32)            # list[str], stripped
    gens = generate_batch(model, tok, prompts, max_new_tokens=192, stop=["\\n\\n"], batch_size=8)
    gens[0].text, gens[0].token_ids, gens[0].finish_reason                        # "eos" | "stop" | "length"

Prompts are strings (a user turn when ``chat`` and the tokenizer has a chat template, else raw text) or
lists of chat messages (``[{"role": ..., "content": ...}, ...]``, e.g. few-shot turns). A templated string
already holds its special tokens, so it is encoded with ``add_special_tokens=False``; raw text gets the
tokenizer's usual special tokens. Batches are left-padded (the attention mask hides the padding; positions
are derived from the mask by ``generate``), prompts are grouped by length to waste little padding, and the
outputs come back in the order of ``prompts``.

Stop sequences: generation of a row ends at EOS or when its decoded output contains one of ``stop``
(checked after every step by :class:`StopOnStrings`, so a batch ends as soon as every row is done); the
text is then cut before the first stop string (:func:`prunelens.evaluation.answers.find_stop`: only
occurrences after some non-whitespace output count).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from prunelens.data.tasks.generative import Prompt
from prunelens.evaluation.answers import find_stop
from prunelens.models.adapter import input_device
from prunelens.utils.progress import progress_bar

__all__ = [
    "Generation",
    "Prompt",
    "StopOnStrings",
    "format_prompt",
    "has_chat_template",
    "generate",
    "generate_batch",
]


def has_chat_template(tokenizer) -> bool:
    """Whether ``tokenizer`` has a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer, prompt: Prompt, chat: bool = True, system: str | None = None) -> str:
    """The string the model reads for ``prompt``.

    With ``chat`` and a chat template: a string becomes one user turn, a message list is used as is;
    ``system`` (if given) is prepended as a system message (otherwise the template's default, if any,
    applies); the generation prompt (assistant header) is added. Without: a string is returned unchanged,
    and a message list is joined as ``"content\\n\\ncontent..."`` (system text first).
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system is not None and not (messages and messages[0].get("role") == "system"):
        messages = [{"role": "system", "content": system}] + messages
    if chat and has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, str) and system is None:
        return prompt
    return "\n\n".join(m["content"] for m in messages)


@dataclass
class Generation:
    """One generated output.

    ``text``: the output cut before the first stop string (not stripped: code keeps its indentation);
    ``raw_text``: everything decoded (special tokens skipped); ``token_ids``: the generated tokens up to
    EOS (excluded), and, when a stop string cut the text, only the shortest prefix that decodes to the
    cut text; ``finish_reason``: ``"stop"`` (a stop string), ``"eos"`` or ``"length"`` (the token budget);
    ``stop``: the stop string hit; ``input_text``: the string that was encoded; ``num_prompt_tokens``.
    """

    text: str
    raw_text: str
    token_ids: list[int]
    finish_reason: str
    stop: str | None = None
    input_text: str = ""
    num_prompt_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class StopOnStrings(StoppingCriteria):
    """Per-row stopping criterion: a row is done once its generated text (from ``prompt_len`` on, special
    tokens skipped) contains a stop string after some non-whitespace output. Returns a bool per row, so
    ``generate`` pads finished rows and ends when all rows are done (EOS is handled by ``generate``)."""

    def __init__(self, tokenizer, stops: Sequence[str], prompt_len: int):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.prompt_len = prompt_len
        self.done: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        b = input_ids.shape[0]
        if self.done is None or self.done.shape[0] != b:
            self.done = torch.zeros(b, dtype=torch.bool)
        gen = input_ids[:, self.prompt_len :].tolist()
        for i in range(b):
            if not self.done[i]:
                text = self.tokenizer.decode(gen[i], skip_special_tokens=True)
                if find_stop(text, self.stops)[1] is not None:
                    self.done[i] = True
        return self.done.to(input_ids.device)


def _eos_ids(model, tokenizer) -> list[int]:
    ids: list[int] = []
    gen_cfg = getattr(model, "generation_config", None)
    for src in (getattr(tokenizer, "eos_token_id", None), getattr(gen_cfg, "eos_token_id", None)):
        for i in src if isinstance(src, (list, tuple)) else [src]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return ids


def _prefix_for(tokenizer, ids: list[int], n_chars: int) -> list[int]:
    """Shortest prefix of ``ids`` whose decoded text has at least ``n_chars`` characters (binary search)."""
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(ids[:mid], skip_special_tokens=True)) >= n_chars:
            hi = mid
        else:
            lo = mid + 1
    return ids[:lo]


def _left_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of ``rows`` padded on the left to the longest."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        n = len(row)
        if n:
            input_ids[r, width - n :] = torch.tensor(row, dtype=torch.long)
            mask[r, width - n :] = 1
    return input_ids, mask


def _generation(
    tokenizer, ids: list[int], end_ids: set[int], stops: list[str], input_text: str, n_prompt: int
) -> Generation:
    """The record of one row's new tokens: cut at the first end token, then before the first stop string."""
    cut = next((k for k, t in enumerate(ids) if t in end_ids), None)
    hit_eos = cut is not None
    ids = ids[:cut] if hit_eos else ids
    raw = tokenizer.decode(ids, skip_special_tokens=True)
    pos, which = find_stop(raw, stops)
    if which is not None:
        text, reason, tok_ids = raw[:pos], "stop", _prefix_for(tokenizer, ids, pos)
    else:
        text, reason, tok_ids = raw, ("eos" if hit_eos else "length"), ids
    return Generation(
        text=text,
        raw_text=raw,
        token_ids=tok_ids,
        finish_reason=reason,
        stop=which,
        input_text=input_text,
        num_prompt_tokens=n_prompt,
    )


@torch.no_grad()
def generate_batch(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 64,
    chat: bool = True,
    system: str | None = None,
    stop: Sequence[str] | None = None,
    do_sample: bool = False,
    seed: int = 0,
    temperature: float = 1.0,
    top_p: float | None = None,
    top_k: int | None = None,
    batch_size: int | None = 8,
    sort_by_length: bool = True,
    progress: str | None = "generating",
) -> list[Generation]:
    """Generate for every prompt, ``batch_size`` at a time (``None``: all at once); see the module doc.

    Greedy by default. ``do_sample=True`` samples with ``temperature`` (and ``top_p``/``top_k`` if given);
    batch ``b`` (in processing order) is seeded with ``seed + b`` inside a forked RNG, so a run is
    reproducible for a given ``batch_size`` and leaves the global RNG untouched. ``progress``: the label
    of a progress bar (None: no bar).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    prompts = list(prompts)
    if not prompts:
        return []
    templated = chat and has_chat_template(tokenizer)
    texts = [format_prompt(tokenizer, p, chat, system) for p in prompts]
    encoded = [tokenizer(t, add_special_tokens=not templated)["input_ids"] for t in texts]
    pad_id = tokenizer.pad_token_id
    eos_ids = _eos_ids(model, tokenizer)
    if pad_id is None:
        if not eos_ids:
            raise ValueError("the tokenizer has neither a pad nor an EOS token")
        pad_id = eos_ids[0]
    end_ids = set(eos_ids) | {pad_id}
    stops = [s for s in (stop or []) if s]

    order = list(range(len(prompts)))
    if sort_by_length:
        order.sort(key=lambda i: -len(encoded[i]))
    bs = len(order) if not batch_size else int(batch_size)
    device = input_device(model)
    results: list[Generation | None] = [None] * len(prompts)
    with progress_bar(progress or "", total=len(prompts) if progress else None) as bar:
        for b, start in enumerate(range(0, len(order), bs)):
            idx = order[start : start + bs]
            input_ids, mask = _left_padded([encoded[i] for i in idx], pad_id)
            width = input_ids.shape[1]
            criteria = StoppingCriteriaList([StopOnStrings(tokenizer, stops, width)]) if stops else None
            kwargs = dict(
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                pad_token_id=pad_id,
                eos_token_id=eos_ids or None,
                use_cache=True,
                stopping_criteria=criteria,
                temperature=temperature if do_sample else None,
                top_p=top_p if do_sample else None,
                top_k=top_k if do_sample else None,
            )
            devices = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                if do_sample:
                    torch.manual_seed(seed + b)
                out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), **kwargs)
            new = out[:, width:].tolist()
            for r, i in enumerate(idx):
                results[i] = _generation(tokenizer, new[r], end_ids, stops, texts[i], len(encoded[i]))
            bar.advance(len(idx))
    return results  # type: ignore[return-value]


def generate(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 64,
    chat: bool = True,
    do_sample: bool = False,
    seed: int = 0,
    temperature: float = 1.0,
    stop: Sequence[str] | None = None,
    batch_size: int | None = None,
    system: str | None = None,
    return_details: bool = False,
    progress: str | None = None,
) -> list[str] | list[Generation]:
    """Generate a continuation for each prompt (left-padded batches); returns the decoded new text, cut at
    the first stop string and stripped - or, with ``return_details``, the :class:`Generation` records
    (text not stripped, token ids, finish reason). ``batch_size=None``: one batch. See
    :func:`generate_batch`."""
    gens = generate_batch(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        chat=chat,
        system=system,
        stop=stop,
        do_sample=do_sample,
        seed=seed,
        temperature=temperature,
        batch_size=batch_size,
        progress=progress,
    )
    if return_details:
        return gens
    return [g.text.strip() for g in gens]
