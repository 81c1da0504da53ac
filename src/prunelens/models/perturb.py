"""Control perturbations: changes to a model that nobody would call pruning.

A study needs a noise floor. Greedy decoding of *any* slightly different model drifts from the dense
model's output sooner or later, so "4 % of the generations are identical to the dense ones" means
nothing until it is set beside what a harmless change gives. The control rounds every floating-point
weight to a lower-precision format and back (for a float32 model: bfloat16, a relative error of at most
2⁻⁹ per weight, the precision most models are served in), which leaves the model's quality untouched
by every usual measure, yet perturbs its logits by a small, known amount.

Pure tensor code; the study turns the result into an analysis ``Variant`` (``overrides``), so no second
copy of the unchanged tensors is held.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["CONTROL_ROUNDINGS", "resolve_rounding", "rounded_overrides"]

#: the formats a control may round to; ``auto`` picks one that differs from the model's own dtype
CONTROL_ROUNDINGS = ("auto", "bfloat16", "float16")

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_rounding(round_to: str, model_dtype: torch.dtype) -> str:
    """The concrete format for ``round_to`` on a model held in ``model_dtype``.

    ``auto``: bfloat16 for a float32 model, float16 for a bfloat16 one, bfloat16 for a float16 one (a
    rounding to the model's own dtype would change nothing). An explicit format equal to the model's
    dtype is refused for the same reason.
    """
    if round_to not in CONTROL_ROUNDINGS:
        raise ValueError(f"round_to must be one of {', '.join(CONTROL_ROUNDINGS)}, got {round_to!r}")
    if round_to == "auto":
        return "float16" if model_dtype == torch.bfloat16 else "bfloat16"
    if _DTYPES[round_to] == model_dtype:
        raise ValueError(
            f"round_to {round_to} is the model's own dtype: the control would be the dense model itself"
        )
    return round_to


def rounded_overrides(model: nn.Module, round_to: str) -> dict[str, Tensor]:
    """``{parameter name: weight rounded to round_to and cast back}`` for every floating parameter that
    the rounding changes (tied parameters appear once, under their first name)."""
    target = _DTYPES[round_to]
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.is_floating_point() or p.device.type == "meta":
                continue
            r = p.detach().to(target).to(p.dtype)
            if not torch.equal(r, p.detach()):
                out[name] = r
    return out
