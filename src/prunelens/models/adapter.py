"""One architecture adapter for every supported decoder family.

The adapter knows, per family, where a causal LM keeps its blocks, each block's attention and MLP, the
norms that belong to each sublayer, the final norm and the unembedding. Everything else in prunelens
(scoring, dropping, sparsifying, tracing) goes through it, so no modelling file is ever copied.

Adding a family is one :class:`ArchSpec` entry in :data:`FAMILIES` plus a tiny-config test in
``tests/test_adapter.py``. The spec names submodules by attribute path relative to the model (for
``layers``, ``final_norm``, ``embed``, ``unembed``) or to one block (for everything else):

* ``attn`` / ``mlp`` — the sublayer modules that are replaced by a no-op when dropped;
* ``attn_norms`` / ``mlp_norms`` — norms that only serve that sublayer (removed with it);
* ``attn_out`` / ``mlp_out`` — the module whose *output* is exactly the sublayer's contribution to
  the residual stream (the sublayer itself, or its post-norm in Gemma-style blocks). A forward hook
  there reads ``Δ_attn`` / ``Δ_mlp`` with no extra compute;
* ``parallel`` — attention and MLP both read the block input (GPT-NeoX ``use_parallel_residual``).

Residual points follow from the hooks: ``resid_pre`` = block input, ``resid_mid`` = ``resid_pre + Δ_attn``
(sequential blocks), ``resid_post`` = block output = ``resid_pre + Δ_attn + Δ_mlp``; tests check this
identity for every family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prunelens.models.compat import module_cache
from prunelens.plan import PLAN_FILE, SUBLAYERS, PlanError, PrunePlan
from prunelens.utils.errors import InputError


class UnsupportedArchitectureError(InputError):
    """The model's architecture has no entry in the adapter table."""


@dataclass(frozen=True)
class ArchSpec:
    """Where one family keeps its parts (attribute paths, dotted)."""

    family: str
    layers: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    unembed: str = "lm_head"
    attn: str = "self_attn"
    mlp: str = "mlp"
    attn_norms: tuple[str, ...] = ("input_layernorm",)
    mlp_norms: tuple[str, ...] = ("post_attention_layernorm",)
    attn_out: str = "self_attn"
    mlp_out: str = "mlp"
    # config attribute that says whether the residual is parallel (None: always sequential)
    parallel_attr: str | None = None
    # config attribute holding the final logit soft-cap, if the family has one
    softcap_attr: str | None = None
    # config attribute that gives the (stored) per-layer attention types
    layer_types_attr: str | None = "layer_types"


_LLAMA = ArchSpec("llama")
_GEMMA2 = ArchSpec(
    "gemma2",
    attn_norms=("input_layernorm", "post_attention_layernorm"),
    mlp_norms=("pre_feedforward_layernorm", "post_feedforward_layernorm"),
    attn_out="post_attention_layernorm",
    mlp_out="post_feedforward_layernorm",
    softcap_attr="final_logit_softcapping",
)

#: model_type -> spec. Families structured like Llama share its spec.
FAMILIES: dict[str, ArchSpec] = {
    "llama": _LLAMA,
    "mistral": ArchSpec("mistral"),
    "qwen2": ArchSpec("qwen2"),
    "qwen3": ArchSpec("qwen3"),
    "phi3": ArchSpec("phi3"),
    "gemma": ArchSpec("gemma"),
    "gemma2": _GEMMA2,
    "gemma3_text": ArchSpec(**{**_GEMMA2.__dict__, "family": "gemma3_text"}),
    "gpt_neox": ArchSpec(
        "gpt_neox",
        layers="gpt_neox.layers",
        embed="gpt_neox.embed_in",
        final_norm="gpt_neox.final_layer_norm",
        attn="attention",
        attn_out="attention",
        parallel_attr="use_parallel_residual",
    ),
}


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path)


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)


def spec_for(model_or_config) -> ArchSpec:
    """Return the :class:`ArchSpec` for a model or config, or raise a clear error."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    supported = ", ".join(sorted(FAMILIES))
    raise UnsupportedArchitectureError(
        f"architecture {model_type!r} is not supported by prunelens (supported: {supported}). "
        "To add a family, add an ArchSpec entry to prunelens.models.adapter.FAMILIES naming its blocks, "
        "attention, MLP, their norms, final norm and unembedding, "
        "and a tiny-config test in tests/test_adapter.py."
    )


class Adapter:
    """Uniform access to a causal LM's parts, driven by its :class:`ArchSpec`."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.spec = spec_for(model)

    # --- whole-model parts -------------------------------------------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    def layers(self) -> nn.ModuleList:
        return get_submodule(self.model, self.spec.layers)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def final_norm(self) -> nn.Module:
        return get_submodule(self.model, self.spec.final_norm)

    @property
    def embed(self) -> nn.Module:
        return get_submodule(self.model, self.spec.embed)

    @property
    def unembed(self) -> nn.Module:
        # the model's own answer first: GPT-NeoX renamed ``embed_out`` to ``lm_head`` within transformers 5
        out = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        return out if out is not None else get_submodule(self.model, self.spec.unembed)

    @property
    def parallel(self) -> bool:
        attr = self.spec.parallel_attr
        return bool(attr and getattr(self.config, attr, False))

    @property
    def logit_softcap(self) -> float | None:
        attr = self.spec.softcap_attr
        cap = getattr(self.config, attr, None) if attr else None
        return float(cap) if cap else None

    def layer_types(self) -> list[str] | None:
        attr = self.spec.layer_types_attr
        value = getattr(self.config, attr, None) if attr else None
        return list(value) if value is not None else None

    # --- per-block parts ---------------------------------------------------------------------
    def sublayer(self, layer: int, kind: str) -> nn.Module:
        return get_submodule(self.layers[layer], self._path(kind))

    def sublayer_out(self, layer: int, kind: str) -> nn.Module:
        """Module whose output is the sublayer's contribution to the residual stream."""
        path = self.spec.attn_out if kind == "attn" else self.spec.mlp_out
        return get_submodule(self.layers[layer], path)

    def sublayer_norms(self, kind: str) -> tuple[str, ...]:
        return self.spec.attn_norms if kind == "attn" else self.spec.mlp_norms

    def _path(self, kind: str) -> str:
        if kind == "attn":
            return self.spec.attn
        if kind == "mlp":
            return self.spec.mlp
        raise ValueError(f"unknown sublayer {kind!r}; expected one of {SUBLAYERS}")

    def block_linears(self, layer: int) -> dict[str, nn.Linear]:
        """Every ``nn.Linear`` inside block ``layer`` (dropped sublayers have none), by relative name."""
        return {n: m for n, m in self.layers[layer].named_modules() if isinstance(m, nn.Linear)}

    def is_dropped(self, layer: int, kind: str) -> bool:
        return isinstance(self.sublayer(layer, kind), (DroppedAttention, DroppedMLP))

    def sublayer_modules(self, layer: int, kind: str) -> list[nn.Module]:
        """The modules that dropping ``kind`` at ``layer`` removes:
        the sublayer and the norms only it uses."""
        block = self.layers[layer]
        return [self.sublayer(layer, kind)] + [get_submodule(block, p) for p in self.sublayer_norms(kind)]

    # --- the prune.choose DropSite protocol ------------------------------------------------------
    def drop_unit(self, layer: int, kind: str) -> None:
        drop_sublayer(self, layer, kind)

    def drop_block_set(self, layers: list[int]) -> None:
        drop_blocks(self, layers)

    # --- logit lens ----------------------------------------------------------------------------
    def logits_from_hidden(self, h: torch.Tensor, *, apply_final_norm: bool = True) -> torch.Tensor:
        """``z = W · N(h)`` (logit lens), with the model's own final soft-cap where it has one.

        ``apply_final_norm=False`` reproduces the convention of scripts that skip the final norm.
        """
        x = self.final_norm(h) if apply_final_norm else h
        z = self.unembed(x)
        cap = self.logit_softcap
        if cap:
            z = torch.tanh(z / cap) * cap
        return z


# --- no-op sublayers used when a sublayer is dropped -------------------------------------------------


class DroppedAttention(nn.Module):
    """Stands in for a removed attention sublayer: contributes exactly zero to the residual stream.

    It holds no parameters. It still records the step in the KV cache with a one-element-wide entry
    per token, so that the cache's sequence length and attention-mask sizes stay those of the dense
    model (transformers reads them from per-layer cache entries, the first layer by default).
    """

    def __init__(self, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, *args, **kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        cache = module_cache(kwargs)
        if cache is not None and hasattr(cache, "update"):
            b, q = hidden.shape[0], hidden.shape[1]
            stub = hidden.new_zeros(b, 1, q, 1)
            cache.update(stub, stub, self.layer_idx)
        return torch.zeros_like(hidden), None

    def extra_repr(self) -> str:
        return f"layer_idx={self.layer_idx}, dropped"


class DroppedMLP(nn.Module):
    """Stands in for a removed MLP sublayer: returns zeros, holds no parameters."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.zeros_like(x)

    def extra_repr(self) -> str:
        return "dropped"


def drop_sublayer(adapter: Adapter, layer: int, kind: str) -> None:
    """Replace sublayer ``kind`` of block ``layer`` (and the norms only it uses) by a parameter-free no-op."""
    block = adapter.layers[layer]
    if kind == "attn":
        old = adapter.sublayer(layer, "attn")
        idx = getattr(old, "layer_idx", layer)
        set_submodule(block, adapter.spec.attn, DroppedAttention(idx))
    else:
        adapter._path(kind)
        set_submodule(block, adapter.spec.mlp, DroppedMLP())
    for norm in adapter.sublayer_norms(kind):
        # Identity maps the zero contribution to zero, exactly as the removed post-norms would.
        set_submodule(block, norm, nn.Identity())


def drop_blocks(adapter: Adapter, layers: list[int]) -> None:
    """Remove whole blocks, re-index the attention layers and update the config consistently.

    ``layer_idx`` of every remaining attention is renumbered (the KV cache is indexed by it), and
    ``num_hidden_layers`` and ``layer_types`` shrink with the model, so the result is a plain
    checkpoint of the same family with fewer layers.
    """
    n = adapter.num_layers
    drop = sorted(set(layers))
    if any(i < 0 or i >= n for i in drop):
        raise ValueError(f"block indices must be in [0, {n}); got {drop}")
    if len(drop) >= n:
        raise ValueError(f"cannot drop all {n} blocks")
    keep = [i for i in range(n) if i not in drop]
    old = adapter.layers
    new = nn.ModuleList([old[i] for i in keep])
    set_submodule(adapter.model, adapter.spec.layers, new)
    for new_idx, block in enumerate(new):
        for mod in block.modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = new_idx
    cfg = adapter.config
    lt = adapter.layer_types()
    cfg.num_hidden_layers = len(keep)
    if lt is not None and len(lt) == n:
        setattr(cfg, adapter.spec.layer_types_attr, [lt[i] for i in keep])


def apply_structure(model, plan: PrunePlan) -> None:
    """Apply a drop plan's structural changes to ``model`` in place (a dense model of the same family).

    Sublayer drops replace the sublayers with parameter-free no-ops; block drops remove the blocks.
    Sparsification plans change no structure (their zeros are in the weights) and are ignored here.
    """
    if not plan.is_drop:
        return
    adapter = Adapter(model)
    if plan.num_layers_before is not None and adapter.num_layers != plan.num_layers_before:
        raise PlanError(
            PLAN_FILE,
            f"the plan was made for a model with {plan.num_layers_before} layers; "
            f"this one has {adapter.num_layers}",
            "num_layers_before",
        )
    for item in plan.dropped_sublayers:
        drop_sublayer(adapter, int(item["layer"]), item["sublayer"])
    if plan.dropped_blocks:
        drop_blocks(adapter, [int(i) for i in plan.dropped_blocks])


def input_device(model: nn.Module) -> torch.device:
    """Where a model's input ids go: the device of its embedding, or, for a model that ``accelerate``
    dispatched with offloaded weights (parameters on the ``meta`` device), the device accelerate executes
    the embedding on."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    for mod in (emb, model):
        dev = getattr(getattr(mod, "_hf_hook", None), "execution_device", None)
        if dev is not None:
            return torch.device(f"cuda:{dev}" if isinstance(dev, int) else dev)
    first = emb.weight if emb is not None else next(model.parameters(), None)
    if first is not None and first.device.type != "meta":
        return first.device
    return next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))


def is_offloaded(model: nn.Module) -> bool:
    """Whether some weights live off-device (``accelerate`` disk or CPU offload: parameters on ``meta``)."""
    return any(p.device.type == "meta" for p in model.parameters())


def param_count(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def block_output(out) -> torch.Tensor:
    """The hidden states of a block's or sublayer's output (a tensor, or the first item of a tuple)."""
    return out[0] if isinstance(out, (tuple, list)) else out
