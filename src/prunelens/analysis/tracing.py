"""Counterfactual tracing: one forward pass of the dense model, dense *and* pruned sublayer outputs.

At block ``l`` and for each sublayer ``s ∈ {attn, mlp}`` the trace holds three residual stream states
(docs/method.md §4.1):

* ``before`` — the residual stream the sublayer adds to: ``resid_pre`` for attention, ``resid_mid =
  resid_pre + Δ_attn`` for the MLP;
* ``dense``  — after the dense sublayer: ``before + Δ_s``;
* ``pruned`` — after the pruned sublayer applied to the *same* input: ``before + Δ'_s``.

``Δ'`` is the counterfactual contribution:

* ``"drop"`` — the sublayer is removed, ``Δ' = 0``, so ``pruned = before``: no extra compute, no weights;
* ``"override"`` — the sublayer with other parameters (a sparsified or otherwise different checkpoint):
  the sublayer module is re-run on the very arguments the dense forward passed it (captured by a forward
  hook with ``with_kwargs=True``: hidden states, attention mask, rotary embeddings, ...) through
  :func:`torch.func.functional_call` with the pruned parameters — only those tensors are held twice;
  embeddings, unembedding and every unchanged parameter are shared. When the pruned checkpoint also
  changes the sublayer's own norms, the pre-norm is re-applied to ``before`` and the post-norm (Gemma's
  ``post_*_layernorm``, through which the contribution reaches the residual) to the output.

Parallel blocks (GPT-NeoX ``use_parallel_residual``): both sublayers read ``resid_pre``; their
contributions are accounted in the order attention then MLP (``before`` of the MLP is ``resid_pre +
Δ_attn``), so that ``pruned`` of the MLP is exactly the block output with the MLP removed.

States are kept as references to the tensors the model computed (no copies); ``resid_pre`` of block
``l`` is the very tensor ``resid_post`` of block ``l − 1``, which the analyses use to unembed each
distinct state once. Padding: pass the attention mask; the trace keeps it, and analyses read valid
positions only. The forward uses ``use_cache=False`` and explicit position ids (``cumsum(mask) − 1``),
so a left-padded prompt gives the same states as the prompt alone.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from prunelens.models.adapter import SUBLAYERS, Adapter, block_output
from prunelens.models.capture import (
    block_input_hooks,
    final_hidden_hook,
    sublayer_output_hooks,
    without_cache,
)

__all__ = [
    "SublayerTrace",
    "Trace",
    "Counterfactual",
    "plan_counterfactuals",
    "trace",
    "position_ids",
    "forward_final_hidden",
    "peak_rss_bytes",
]


@dataclass
class Counterfactual:
    """How the pruned side of one sublayer is obtained: ``kind`` is ``"drop"`` or ``"override"``.

    ``params`` / ``pre_norm`` / ``post_norm``: overriding parameters relative to the sublayer module, its
    pre-norm and its post-norm (only for ``"override"``). ``in_variant``: the variant itself prunes this
    sublayer (False for the *drop-each* counterfactual of a sublayer the variant leaves intact).
    """

    kind: str
    in_variant: bool = True
    params: dict[str, Tensor] = field(default_factory=dict)
    pre_norm: dict[str, Tensor] = field(default_factory=dict)
    post_norm: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class SublayerTrace:
    layer: int
    kind: str  # "attn" | "mlp"
    counterfactual: str  # "drop" | "override"
    in_variant: bool
    before: Tensor  # (B, S, d)
    dense: Tensor
    pruned: Tensor


@dataclass
class Trace:
    """Result of :func:`trace`: per-sublayer states, the attention mask
    and the final hidden states ``h_L``."""

    sublayers: list[SublayerTrace]
    attention_mask: Tensor  # (B, S) bool
    final_hidden: Tensor  # (B, S, d): input of the final norm
    notes: list[str] = field(default_factory=list)

    def get(self, layer: int, kind: str) -> SublayerTrace:
        for s in self.sublayers:
            if s.layer == layer and s.kind == kind:
                return s
        raise KeyError((layer, kind))

    def unique_states(self) -> list[Tensor]:
        """Distinct state tensors in first-use order (each unembedded once by the analyses)."""
        seen: dict[int, Tensor] = {}
        for s in self.sublayers:
            for t in (s.before, s.dense, s.pruned):
                seen.setdefault(id(t), t)
        return list(seen.values())

    @property
    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.unique_states())


def position_ids(mask: Tensor) -> Tensor:
    """Positions of the valid tokens, ``cumsum(mask) − 1`` (0 at padding); left or right padding."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux ``ru_maxrss``), in bytes."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _split_overrides(adapter: Adapter, overrides: dict[str, Tensor]) -> tuple[dict, list[str]]:
    """Partition override names by ``(layer, kind)`` → (sublayer, pre-norm, post-norm) relative params."""
    spec = adapter.spec
    out: dict[tuple[int, str], Counterfactual] = {}
    left: list[str] = []
    prefix = spec.layers + "."
    for name, t in overrides.items():
        if not name.startswith(prefix):
            left.append(name)
            continue
        idx, _, rel = name[len(prefix) :].partition(".")
        if not idx.isdigit():
            left.append(name)
            continue
        layer = int(idx)
        placed = False
        for kind in SUBLAYERS:
            sub = adapter._path(kind) + "."
            out_path = spec.attn_out if kind == "attn" else spec.mlp_out
            norms = adapter.sublayer_norms(kind)
            pre = norms[0] + "." if norms and norms[0] != out_path else None
            cf = out.setdefault((layer, kind), Counterfactual("override"))
            if rel.startswith(sub):
                cf.params[rel[len(sub) :]] = t
                placed = True
            elif pre and rel.startswith(pre):
                cf.pre_norm[rel[len(pre) :]] = t
                placed = True
            elif out_path != adapter._path(kind) and rel.startswith(out_path + "."):
                cf.post_norm[rel[len(out_path) + 1 :]] = t
                placed = True
            if placed:
                break
        if not placed:
            left.append(name)
    out = {k: v for k, v in out.items() if v.params or v.pre_norm or v.post_norm}
    return out, left


def plan_counterfactuals(
    adapter: Adapter, variant=None, *, scope: str = "all", layers=None, kinds=SUBLAYERS
) -> tuple[dict[tuple[int, str], Counterfactual], list[str]]:
    """Which counterfactual to trace at each ``(layer, kind)``; returns ``(plan, notes)``.

    ``scope="variant"``: only the sublayers the variant prunes. ``scope="all"``: every layer × kind; the
    sublayers the variant leaves intact get the *drop* counterfactual ("what if this sublayer alone were
    removed?"), flagged ``in_variant=False`` — the paper's layer-wise picture, for any plan.
    ``variant=None`` is the drop-each analysis of the dense model.
    """
    if scope not in ("all", "variant"):
        raise ValueError(f"scope must be 'all' or 'variant', got {scope!r}")
    n = adapter.num_layers
    todo = list(range(n)) if layers is None else sorted(set(int(i) for i in layers))
    bad = [i for i in todo if not 0 <= i < n]
    if bad:
        raise ValueError(f"layers {bad} out of range for a model with {n} layers")
    notes: list[str] = []
    by_sub: dict[tuple[int, str], Counterfactual] = {}
    if variant is not None:
        by_sub, left = _split_overrides(adapter, variant.overrides)
        if left:
            notes.append(
                f"{len(left)} overridden tensors outside the attention/MLP sublayers and their norms "
                f"(e.g. {left[:3]}) are shared with the dense model in the counterfactual transitions "
                "(they are included in the trajectories and the option subspace)"
            )
        for d in variant.drops:
            by_sub[d] = Counterfactual("drop")
    plan: dict[tuple[int, str], Counterfactual] = {}
    for layer in todo:
        for kind in kinds:
            if adapter.is_dropped(layer, kind):
                continue  # nothing to compare: the dense model has no such sublayer
            cf = by_sub.get((layer, kind))
            if cf is not None:
                plan[(layer, kind)] = cf
            elif scope == "all":
                plan[(layer, kind)] = Counterfactual("drop", in_variant=variant is None)
    return plan, notes


def model_forward(model, input_ids: Tensor, mask: Tensor, **kw):
    pos = position_ids(mask)
    try:
        return model(
            input_ids=input_ids,
            attention_mask=mask.long(),
            position_ids=pos,
            use_cache=False,
            logits_to_keep=1,
            **kw,
        )
    except TypeError:
        return model(input_ids=input_ids, attention_mask=mask.long(), position_ids=pos, use_cache=False, **kw)


class _Tracer:
    """The hooks of one :func:`trace` and what they record. ``busy``: a counterfactual re-run is under way,
    whose module calls are not the dense forward's and record nothing."""

    def __init__(self, adapter: Adapter, counterfactuals: dict[tuple[int, str], Counterfactual]):
        self.adapter, self.counterfactuals = adapter, counterfactuals
        self.busy = False
        self.store: dict[int, dict[str, Any]] = {}  # per traced block: what its forward has produced so far
        self.entries: list[SublayerTrace] = []
        self.final: dict[str, Tensor] = {}

    def rerun(self, layer: int, kind: str, module: nn.Module, args, kwargs) -> Tensor:
        """The overridden sublayer's contribution on the very arguments the dense forward passed it."""
        adapter, cf = self.adapter, self.counterfactuals[(layer, kind)]
        kw = without_cache(kwargs)
        args = list(args)
        if cf.pre_norm:
            st = self.store[layer]
            x_in = st["pre"] if (kind == "attn" or adapter.parallel) else st["pre"] + st["d_attn"]
            norm_mod = adapter.layers[layer].get_submodule(adapter.sublayer_norms(kind)[0])
            normed = functional_call(norm_mod, cf.pre_norm, (x_in,), strict=False)
            if args:
                args[0] = normed
            else:
                kw["hidden_states"] = normed
        self.busy = True
        try:
            out = block_output(functional_call(module, cf.params, tuple(args), kw, strict=False))
            out_mod = adapter.sublayer_out(layer, kind)
            if out_mod is not module:
                out = functional_call(out_mod, cf.post_norm, (out,), strict=False)
        finally:
            self.busy = False
        return out

    def on_input(self, i: int, h: Tensor, args: tuple, kwargs: dict) -> None:
        if not self.busy:
            self.store[i]["pre"] = h

    def on_sublayer_out(self, i: int, kind: str, out: Tensor) -> None:
        if not self.busy:
            self.store[i]["d_" + kind] = out

    def on_sublayer(self, i: int, kind: str, module: nn.Module, args, kwargs) -> None:
        if not self.busy:
            self.store[i]["cf_" + kind] = self.rerun(i, kind, module, args, kwargs)

    def on_block_out(self, i: int, out) -> None:
        if self.busy:
            return
        st = self.store[i]
        pre = st.pop("pre")
        d_attn = st.pop("d_attn")
        st.pop("d_mlp", None)  # the MLP's own output is not needed: post − mid is its effect
        post = block_output(out)
        mid = pre + d_attn
        for kind, before, dense in (("attn", pre, mid), ("mlp", mid, post)):
            cf = self.counterfactuals.get((i, kind))
            if cf is None:
                continue
            pruned = before if cf.kind == "drop" else before + st.pop("cf_" + kind)
            self.entries.append(SublayerTrace(i, kind, cf.kind, cf.in_variant, before, dense, pruned))
        st.clear()

    def on_final(self, h: Tensor) -> None:
        if not self.busy:
            self.final["h"] = h

    @contextmanager
    def hooks(self) -> Iterator[None]:
        """The hooks on every block with a planned sublayer, its sublayers and the final norm."""
        adapter, handles = self.adapter, []
        for i in range(adapter.num_layers):
            if not any((i, k) in self.counterfactuals for k in SUBLAYERS):
                continue
            self.store[i] = {}
            for kind in SUBLAYERS:
                cf = self.counterfactuals.get((i, kind))
                if cf is not None and cf.kind == "override":
                    handles.append(
                        adapter.sublayer(i, kind).register_forward_hook(
                            lambda m, a, k, o, i=i, kind=kind: self.on_sublayer(i, kind, m, a, k),
                            with_kwargs=True,
                        )
                    )
            handles.append(
                adapter.layers[i].register_forward_hook(
                    lambda m, a, k, o, i=i: self.on_block_out(i, o), with_kwargs=True
                )
            )
        traced = list(self.store)
        try:
            with (
                block_input_hooks(adapter, self.on_input, traced),
                sublayer_output_hooks(
                    adapter, self.on_sublayer_out, [(i, k) for i in traced for k in SUBLAYERS]
                ),
                final_hidden_hook(adapter, self.on_final),
            ):
                yield
        finally:
            for h in handles:
                h.remove()


@torch.no_grad()
def trace(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    counterfactuals: dict[tuple[int, str], Counterfactual] | None = None,
) -> Trace:
    """One dense forward pass recording, per planned sublayer, ``before`` / ``dense`` / ``pruned`` states.

    ``counterfactuals``: from :func:`plan_counterfactuals` (default: drop-each for every sublayer).
    """
    adapter = Adapter(model)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
    mask = attention_mask.bool()
    if counterfactuals is None:
        counterfactuals, _ = plan_counterfactuals(adapter)
    tracer = _Tracer(adapter, counterfactuals)
    with tracer.hooks():
        model_forward(model, input_ids, mask)
    tracer.entries.sort(key=lambda e: (e.layer, SUBLAYERS.index(e.kind)))
    return Trace(tracer.entries, mask, tracer.final["h"])


@torch.no_grad()
def forward_final_hidden(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """``h_L`` (the input of the final norm) at every position, from one causal forward pass."""
    adapter = Adapter(model)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
    got: dict[str, Tensor] = {}
    with final_hidden_hook(adapter, lambda h: got.__setitem__("h", h)):
        model_forward(model, input_ids, attention_mask.bool())
    return got["h"]
