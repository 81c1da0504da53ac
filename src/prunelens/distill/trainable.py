"""What a repair trains, and how it is folded back into a plain model.

``settings.train == "lora"``: low-rank adapters (``peft``) on every linear layer inside the decoder blocks,
initialised from the seed; for a sparsified student each adapter's update is masked by its weight's
non-zero pattern in the forward pass, so the function trained is the one the merged, still-sparse weight
computes. ``"norms"``: the normalisation weights only. :func:`merge_trainable` folds the adapters in (masked)
and returns the model with nothing left trainable.
"""

from __future__ import annotations

import warnings
from types import MethodType
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from prunelens.distill.settings import RepairSettings, RepairSettingsError
from prunelens.models.adapter import Adapter, get_submodule
from prunelens.plan import SPARSE_METHODS, PrunePlan


def adaptable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every linear layer inside the decoder blocks, by its full module name (embeddings, unembedding
    and the no-op stand-ins of dropped sublayers are not among them)."""
    prefix = Adapter(model).spec.layers
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.startswith(prefix + ".")
    }


def norm_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights (and biases) of every normalisation module: RMSNorm and LayerNorm of any family."""
    out: dict[str, nn.Parameter] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.LayerNorm) or type(m).__name__.endswith(("RMSNorm", "LayerNorm")):
            for pname, p in m.named_parameters(recurse=False):
                out[f"{name}.{pname}"] = p
    return out


def check_rank(model: nn.Module, rank: int) -> None:
    """A LoRA rank no larger than any adapted layer's smaller side (else the update is not low-rank)."""
    for name, m in adaptable_linears(model).items():
        if rank > min(m.in_features, m.out_features):
            raise RepairSettingsError(
                "rank",
                f"is {rank}, larger than layer {name} ({m.out_features} × {m.in_features}); "
                f"use at most {min(m.in_features, m.out_features)}",
            )


def _masked_lora_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """peft LoRA linear whose update keeps the base weight's zeros: ``x (W + M ⊙ ΔW)ᵀ + b``."""
    base = self.get_base_layer()
    weight = base.weight
    if not self.disable_adapters and not self.merged:
        for name in self.active_adapters:
            if name in self.lora_A:
                weight = weight + self.get_delta_weight(name).to(weight.dtype) * self.prunelens_mask
    return F.linear(x, weight.to(x.dtype), None if base.bias is None else base.bias.to(x.dtype))


def _sparse_masks(model: nn.Module, plan: PrunePlan | None) -> dict[str, torch.Tensor]:
    """For a sparsified student, the non-zero pattern of every adapted linear (what repair must keep)."""
    if plan is None or plan.method not in SPARSE_METHODS:
        return {}
    return {name: (m.weight != 0) for name, m in adaptable_linears(model).items()}


def attach_trainable(model: nn.Module, settings: RepairSettings, plan: PrunePlan | None):
    """Make ``model`` trainable as ``settings.train`` says; returns ``(model to call, masks)``.

    LoRA is initialised from the seed (peft draws A randomly and sets B to zero, so the untrained
    adapter changes nothing).
    """
    for p in model.parameters():
        p.requires_grad_(False)
    masks = _sparse_masks(model, plan)
    if settings.train == "norms":
        for p in norm_parameters(model).values():
            p.requires_grad_(True)
        return model, masks
    from peft import LoraConfig, get_peft_model

    check_rank(model, settings.rank)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=0.0,
        bias="none",
        target_modules=sorted(adaptable_linears(model)),
    )
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        # peft asks transformers an attribute that transformers 5 renamed; not the user's concern
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        torch.manual_seed(settings.seed)  # the adapters' initialisation, without touching the caller's RNG
        wrapped = get_peft_model(model, config)
    for name, mask in masks.items():
        layer = wrapped.base_model.model.get_submodule(name)
        layer.prunelens_mask = mask
        layer.forward = MethodType(_masked_lora_forward, layer)
    return wrapped, masks


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every tensor that trains (what a checkpoint and the kept best state hold)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def merge_trainable(
    wrapped: nn.Module, masks: dict[str, torch.Tensor], settings: RepairSettings
) -> nn.Module:
    """Fold the adapters into the weights (masked for sparse layers) and return the plain model."""
    if settings.train == "norms":
        for p in wrapped.parameters():
            p.requires_grad_(False)
        return wrapped
    inner = wrapped.base_model.model
    with torch.no_grad():
        for name, mask in masks.items():
            layer = inner.get_submodule(name)
            base = layer.get_base_layer()
            for a in layer.active_adapters:
                base.weight += layer.get_delta_weight(a).to(base.weight.dtype) * mask
                layer.lora_B[a].weight.zero_()  # already folded in: peft's merge adds nothing more
    model = wrapped.merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(False)
    for name, mask in masks.items():
        w = get_submodule(model, name).weight
        if bool((w[~mask] != 0).any()):  # pragma: no cover - guarded by construction
            raise RuntimeError(f"repair changed the sparsity pattern of {name}")
    return model
