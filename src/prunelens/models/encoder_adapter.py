"""Encoder (BERT-style) families: where they keep their parts, and their parameter-free dropped units.

The counterpart of :mod:`prunelens.models.adapter` for post-LN encoders: one :class:`EncoderSpec` per
``model_type`` in :data:`ENCODER_FAMILIES`, an :class:`EncoderAdapter` that locates units through it,
the no-op modules that replace a dropped unit, and replaying a saved plan
(:func:`apply_encoder_plan`, :func:`load_pruned_encoder`). Scoring and choosing what to drop live in
:mod:`prunelens.prune.encoder_drop`.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from prunelens.models.adapter import get_submodule, set_submodule
from prunelens.plan import PrunePlan


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
            raise ValueError(
                f"encoder family {model_type!r} is not supported (supported: "
                f"{', '.join(sorted(ENCODER_FAMILIES))}); add an EncoderSpec to ENCODER_FAMILIES"
            )
        self.spec = ENCODER_FAMILIES[model_type]
        self.base = getattr(model, "base_model", model)

    @property
    def layers(self) -> nn.ModuleList:
        return get_submodule(self.base, self.spec.layers)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def unit(self, layer: int, kind: str) -> nn.Module:
        """The module whose forward *output* is the unit's output stream
        (attention, or the MLP's out part)."""
        path = {"attn": self.spec.attn, "mlp": self.spec.mlp_out}.get(kind)
        if path is None:
            raise ValueError(f"unknown sublayer {kind!r}; expected 'attn' or 'mlp'")
        return get_submodule(self.layers[layer], path)

    def norm(self, layer: int, kind: str) -> nn.Module:
        return get_submodule(
            self.layers[layer], self.spec.attn_norm if kind == "attn" else self.spec.mlp_norm
        )

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
    """Drop unit ``kind`` (``attn``/``mlp``) of encoder layer ``layer`` in place
    (see the module docstring)."""
    if mode not in DROP_MODES:
        raise ValueError(f"mode must be one of {DROP_MODES}, got {mode!r}")
    ad = (
        model_or_adapter if isinstance(model_or_adapter, EncoderAdapter) else EncoderAdapter(model_or_adapter)
    )
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


def apply_encoder_plan(model, plan) -> None:
    """Re-apply an encoder drop plan (from :func:`drop_encoder`) to a dense model of the same family."""
    ad = EncoderAdapter(model)
    if plan.num_layers_before is not None and ad.num_layers != plan.num_layers_before:
        raise ValueError(
            f"the plan was made for {plan.num_layers_before} layers; this encoder has {ad.num_layers}"
        )
    if plan.dropped_blocks:
        raise ValueError("encoder plans drop sublayers only")
    mode = plan.options.get("mode", "identity")
    for item in plan.dropped_sublayers:
        drop_encoder_sublayer(ad, int(item["layer"]), item["sublayer"], mode)


def load_pruned_encoder(path: str | Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Rebuild an encoder saved by :func:`prunelens.prune.save.save_pruned` after :func:`drop_encoder`;
    returns ``(model, plan)``.

    The dense skeleton is built from the config, the plan's drops are applied (so a ``mode="norm"`` unit
    keeps its LayerNorm under the dropped module's name), then the saved ``model.safetensors`` is loaded
    with ``strict=True``: every remaining weight comes from the checkpoint, none is left initialised.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    path = Path(path)
    plan = PrunePlan.load(path)
    weights = path / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(
            f"{weights} not found (sharded or .bin encoder checkpoints are not supported)"
        )
    state = load_file(str(weights))
    config = AutoConfig.from_pretrained(path)
    model = AutoModel.from_config(config, add_pooling_layer=any(k.startswith("pooler.") for k in state))
    apply_encoder_plan(model, plan)
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval(), plan
