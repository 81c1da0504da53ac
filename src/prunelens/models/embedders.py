"""Embedding models for retrieval: one interface over encoders, decoders and sentence-transformers.

:class:`Embedder` is the interface: ``encode(texts, kind="query"|"document")`` returns a float32
``(n, d)`` tensor, L2-normalised unless told otherwise.

* :class:`TransformerEmbedder` — a bidirectional encoder (BERT, RoBERTa, ...) with a pooling rule;
  :func:`prunelens.models.embedder_loading.load_embedder` builds one natively from any
  sentence-transformers checkpoint whose modules are ``Transformer → Pooling [→ Normalize]``.
* :class:`SentenceTransformerEmbedder` — other module stacks (``Dense`` heads, ...), through the
  ``sentence-transformers`` package.
* :class:`DecoderEmbedder` — a causal LM read as an embedder, the E5-Mistral recipe: optional
  instruction prefix for queries (``"Instruct: {instruction}\\nQuery: {query}"``), EOS appended,
  last-token (or mean) pooling of the final hidden state (after the final norm), left or right padding
  (position ids follow the attention mask, so a padded sequence embeds exactly like the unpadded one).

Usage::

    import prunelens
    from prunelens.models.embedders import DecoderEmbedder
    dec = DecoderEmbedder(*prunelens.load(), pooling="last", padding_side="left")
    vecs = dec.encode(["how do vaccines work?"], kind="query")
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunelens.models.adapter import param_count

POOLINGS = ("mean", "cls", "max", "last", "mean_sqrt_len")


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

    def batches(
        self, ids: list[list[int]], batch_size: int
    ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
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
    def encode(
        self, texts: Sequence[str], *, kind: str = "document", batch_size: int | None = None
    ) -> torch.Tensor:
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
        return {
            "embedder": type(self).__name__,
            "name": self.name,
            "normalize": self.normalize,
            "params": param_count(self.model),
        }


class TransformerEmbedder(Embedder):
    """A bidirectional encoder (``AutoModel``: BERT, RoBERTa, ...) + pooling,
    as sentence-transformers runs it.

    Texts are stripped (and lower-cased with ``do_lower_case``), truncated to ``max_length`` tokens
    including the special tokens, right-padded. ``poolings`` may name several methods: their outputs are
    concatenated in that order (sentence-transformers' Pooling module does the same).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        pooling: str | Sequence[str] = "mean",
        normalize: bool = True,
        max_length: int = 512,
        do_lower_case: bool = False,
        query_prefix: str = "",
        document_prefix: str = "",
        batch_size: int = 32,
        name: str = "",
    ):
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

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        pooling: str = "last",
        padding_side: str = "left",
        query_instruction: str | None = None,
        query_template: str = "Instruct: {instruction}\nQuery: {query}",
        append_eos: bool = True,
        normalize: bool = True,
        max_length: int = 512,
        batch_size: int = 16,
        name: str = "",
    ):
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
        hidden = body(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        return pool(hidden, attention_mask, self.pooling)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "pooling": self.pooling,
            "padding_side": self.padding_side,
            "query_instruction": self.query_instruction,
            "append_eos": self.append_eos,
            "max_length": self.max_length,
        }


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
    def encode(
        self, texts: Sequence[str], *, kind: str = "document", batch_size: int | None = None
    ) -> torch.Tensor:
        texts = self.prepare(texts, kind)
        emb = self.st.encode(
            texts, batch_size=batch_size or self.batch_size, convert_to_tensor=True, show_progress_bar=False
        )
        emb = emb.float().cpu()
        return F.normalize(emb, dim=-1) if self.normalize else emb
