"""Batched greedy (or seeded sampling) generation with a KV cache, chat template when the model has one."""

from __future__ import annotations

import torch


def format_prompt(tokenizer, prompt: str, chat: bool = True) -> str:
    """Wrap ``prompt`` in the tokenizer's chat template (as a user turn) when it has one and ``chat``."""
    if chat and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 64, chat: bool = True,
             do_sample: bool = False, seed: int = 0, temperature: float = 1.0) -> list[str]:
    """Generate a continuation for each prompt (left-padded batch); returns the decoded new text."""
    texts = [format_prompt(tokenizer, p, chat) for p in prompts]
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        # a templated string already holds its special tokens
        enc = tokenizer(texts, return_tensors="pt", padding=True,
                        add_special_tokens=not (chat and getattr(tokenizer, "chat_template", None)))
    finally:
        tokenizer.padding_side = old_side
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    if do_sample:
        torch.manual_seed(seed)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=do_sample,
                         temperature=temperature if do_sample else None, top_p=None, top_k=None,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    new = out[:, enc["input_ids"].shape[1]:]
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
