"""The one place that knows how the installed transformers spells its KV-cache interface.

transformers renamed the cache argument of every model, decoder layer and attention module from
``past_key_values`` to ``cache`` (and the output field likewise); the old names keep working for a while
but print a ``FutureWarning`` on every forward and are announced for removal. prunelens supports the
whole accepted range, so every call that passes or reads a cache goes through these helpers instead of
spelling either name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers.modeling_outputs import CausalLMOutputWithPast

#: Whether this transformers names the cache ``cache`` (newer releases) or ``past_key_values``.
_NEW_NAME = "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)}

#: The keyword under which a model forward takes its KV cache in the installed transformers.
CACHE_KW = "cache" if _NEW_NAME else "past_key_values"

#: Every keyword under which some release passes a KV cache to a submodule (attention, decoder layer).
CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for a model forward, under the installed transformers' own name."""
    return {CACHE_KW: cache}


def output_cache(out: Any) -> Any:
    """The KV cache a model forward returned
    (``out.cache`` or, on older releases, ``out.past_key_values``)."""
    return getattr(out, CACHE_KW)


def module_cache(kwargs: dict[str, Any]) -> Any:
    """The KV cache a submodule was called with, whatever keyword the calling release used (else None)."""
    for key in CACHE_KWARGS:
        if kwargs.get(key) is not None:
            return kwargs[key]
    return None
