"""Small randomly initialised models of every supported family (tests, benchmarks, examples).

``tiny_config(family)`` builds a real transformers config of that family, scaled down; the same
function with ``shape="7b"`` gives a Llama/Mistral-7B-shaped config for GPU speed benchmarks.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

_COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)

_FAMILY_EXTRA: dict[str, dict] = {
    "llama": {},
    "mistral": {"sliding_window": 8},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "phi3": {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
    "gemma": {"head_dim": 16},
    "gemma2": {
        "head_dim": 16,
        "sliding_window": 8,
        "final_logit_softcapping": 30.0,
        "attn_logit_softcapping": 50.0,
        "query_pre_attn_scalar": 16,
    },
    "gemma3_text": {
        "head_dim": 16,
        "sliding_window": 8,
        "query_pre_attn_scalar": 16,
        "final_logit_softcapping": 30.0,
    },
    "gpt_neox": {"num_key_value_heads": None, "rotary_pct": 0.5, "use_parallel_residual": True},
}

TINY_FAMILIES = tuple(_FAMILY_EXTRA)


def tiny_config(family: str, **overrides):
    """A tiny config of ``family`` (a transformers ``model_type``)."""
    if family not in _FAMILY_EXTRA:
        raise ValueError(f"no tiny config for {family!r}; known: {', '.join(TINY_FAMILIES)}")
    kw = {**_COMMON, **_FAMILY_EXTRA[family], **overrides}
    kw = {k: v for k, v in kw.items() if v is not None}
    cfg = AutoConfig.for_model(family, **kw)
    return cfg


def tiny_model(family: str, seed: int = 0, **overrides):
    """A tiny random model of ``family`` in eval mode (deterministic for a seed)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides))
    return model.eval()


def llama_7b_config(num_hidden_layers: int = 32, vocab_size: int = 32000):
    """A Llama-2-7B-shaped config (random weights are enough to time pruning). ``vocab_size``: match the
    tokenizer that will feed it (e.g. the embedded one's 49152) when real text goes through the model."""
    return AutoConfig.for_model(
        "llama",
        vocab_size=vocab_size,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
    )
