"""Quantize a model's block linears in place (held as de-quantized weights) and record it in the plan.

The scope is the one sparsification uses: every ``nn.Linear`` inside the decoder blocks; embeddings and
the unembedding stay as they are. A pruned model is quantized after its pruning (prune, then quantize):
its plan gains a ``quantization`` record, and its exact zeros are put back after the round trip
(:func:`~prunelens.prune.quant_math.keep_zeros`), so masks and N:M groups survive types with an offset.
"""

from __future__ import annotations

import copy
import time
from importlib.metadata import PackageNotFoundError, version

import torch
from torch import nn

from prunelens.models.adapter import Adapter, is_offloaded, param_count
from prunelens.plan import QUANTIZE_METHOD, PrunePlan
from prunelens.prune.quant_math import gguf_block_size, gguf_round_trip, keep_zeros, rtn_round_trip
from prunelens.prune.specs import PruneConfigError, QuantizeSpec, SpecError

__all__ = ["block_linears", "check_config", "quantize"]

SCOPE = "all nn.Linear inside decoder blocks; embeddings and unembedding as they were"


def block_linears(adapter: Adapter) -> list[tuple[str, nn.Linear]]:
    """``(name, linear)`` for every linear inside the blocks (a dropped sublayer has none left)."""
    out = []
    for i, layer in enumerate(adapter.layers):
        for name, module in layer.named_modules():
            if isinstance(module, nn.Linear):
                out.append((f"{adapter.spec.layers}.{i}.{name}", module))
    return out


def _check_widths(linears: list[tuple[str, nn.Linear]], spec: QuantizeSpec) -> None:
    """Every input width must hold whole blocks or groups, checked before any weight changes."""
    unit = gguf_block_size(spec.type) if spec.type is not None else spec.group_size
    if unit is None:
        return
    for name, lin in linears:
        if lin.in_features % unit:
            field = "type" if spec.type is not None else "group_size"
            raise SpecError(field, f"{unit} does not divide the input width {lin.in_features} of {name}")


def check_config(config, spec: QuantizeSpec) -> None:
    """The width checks on the model a config describes, built on the meta device (no memory, no weights
    read): so a group size or type that cannot fit is refused before the model loads."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    linears = block_linears(Adapter(skeleton))
    if not linears:
        raise PruneConfigError("the model has no linear weights inside its blocks to quantize")
    _check_widths(linears, spec)


def _round_trip(weight: torch.Tensor, spec: QuantizeSpec) -> torch.Tensor:
    if spec.type is not None:
        return gguf_round_trip(weight, spec.type)
    assert spec.bits is not None  # checked by the spec
    return rtn_round_trip(weight, spec.bits, group_size=spec.group_size, symmetric=spec.symmetric)


def _versions() -> dict[str, str]:
    out = {"torch": torch.__version__}
    try:
        out["gguf"] = version("gguf")
    except PackageNotFoundError:  # pragma: no cover - a declared dependency
        pass
    return out


@torch.no_grad()
def quantize(
    model, spec: QuantizeSpec | None = None, *, plan: PrunePlan | None = None, base_model: str = "", **fields
) -> PrunePlan:
    """Quantize ``model``'s block linears in place as ``spec`` asks; return its plan.

    ``spec``: a :class:`~prunelens.prune.specs.QuantizeSpec`, or its fields as keywords (``type="Q4_0"``, or
    ``method="rtn", bits=4, group_size=128``). ``plan``: the model's prune plan when it was pruned first
    (a copy with ``quantization`` filled in is returned); without one, a ``quantize`` plan is made.
    """
    if spec is None:
        spec = QuantizeSpec(**fields)
    elif fields:
        raise TypeError(f"give a QuantizeSpec or its fields, not both (got {sorted(fields)})")
    spec.check()
    if plan is not None and plan.quantization:
        raise PruneConfigError(f"the model is already quantized ({plan.quantization['label']})")
    if is_offloaded(model):
        raise PruneConfigError("quantizing rewrites the weights in place: load the model without offloading")
    adapter = Adapter(model)
    linears = block_linears(adapter)
    if not linears:
        raise PruneConfigError("the model has no linear weights inside its blocks to quantize")
    _check_widths(linears, spec)
    t0, zeros_kept = time.perf_counter(), 0
    for _, lin in linears:
        w = lin.weight
        new = _round_trip(w, spec)
        zeros = w == 0
        if bool(zeros.any()):
            new = keep_zeros(w, new)
            zeros_kept += int(zeros.sum())
        w.copy_(new)
    record = {
        **spec.to_dict(),
        "label": spec.label,
        "scope": SCOPE,
        "tensors": len(linears),
        "weights": sum(lin.weight.numel() for _, lin in linears),
        "zeros_kept": zeros_kept,
        "dtype": str(next(iter(model.parameters())).dtype).removeprefix("torch."),
        "seconds": time.perf_counter() - t0,
        "versions": _versions(),
    }
    if plan is None:
        plan = PrunePlan(
            method=QUANTIZE_METHOD,
            base_model=base_model,
            family=adapter.spec.family,
            params_before=param_count(model),
            params_after=param_count(model),
            num_layers_before=adapter.num_layers,
        )
    else:
        plan = copy.deepcopy(plan)
    plan.quantization = record
    return plan
