"""Weight quantization as a perturbation: quantize, then de-quantize back to the model's float dtype.

A quantized variant is held as its de-quantized weights (as the bfloat16 control is held as rounded
weights), so every evaluation, analysis and repair runs on it unchanged. Two families:

* **GGUF types** that the ``gguf`` package both quantizes and de-quantizes (:data:`GGUF_TYPES`): the
  round trip *is* the package's (it is the reference implementation beside llama.cpp's C code; its
  Q8_0 is written to be bit-exact with llama.cpp). GGUF blocks run along a weight's first GGUF
  dimension ``ne0``, which for a linear layer is its input width: the last dimension of a PyTorch
  ``(out, in)`` weight, so rows are quantized as they are stored.
* **Round to nearest** (:func:`rtn_round_trip`): ``bits`` of 8, 4 or 3, per output channel or in groups
  of ``group_size`` consecutive input columns; symmetric (an absmax grid, zero exactly representable) or
  asymmetric (a min–max grid with an integer zero point, as GPTQ's and llm-compressor's asymmetric
  quantizers lay it out).

Types with an offset (Q4_1, Q5_1, any asymmetric grid whose range does not contain 0 exactly on a level)
do not map an exact zero to zero: :func:`keep_zeros` puts a sparse model's zeros back.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from prunelens.prune.specs import GGUF_TYPES, RTN_BITS, SpecError

__all__ = ["GGUF_TYPES", "RTN_BITS", "gguf_block_size", "gguf_round_trip", "keep_zeros", "rtn_round_trip"]


def gguf_block_size(qtype: str) -> int:
    """Weights per block of a GGUF type (32 for every type in :data:`GGUF_TYPES`)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if qtype not in GGUF_TYPES:
        raise SpecError("type", f"must be one of {', '.join(GGUF_TYPES)} (got {qtype!r})")
    return GGML_QUANT_SIZES[GGMLQuantizationType[qtype]][0]


def gguf_round_trip(weight: Tensor, qtype: str) -> Tensor:
    """``weight`` (``(..., in)``) quantized to the GGUF type ``qtype`` along its last dimension and
    de-quantized by the ``gguf`` package, returned in the weight's dtype and device.

    The package works in float32 numpy; a bfloat16 or float16 weight is widened first, exactly.
    """
    from gguf import GGMLQuantizationType, quants

    block = gguf_block_size(qtype)
    if weight.shape[-1] % block:
        raise SpecError(
            "type", f"{qtype} quantizes blocks of {block} input columns; this weight has {weight.shape[-1]}"
        )
    t = GGMLQuantizationType[qtype]
    a = weight.detach().to(device="cpu", dtype=torch.float32).numpy()
    back = quants.dequantize(quants.quantize(np.ascontiguousarray(a), t), t)
    return torch.from_numpy(np.asarray(back, dtype=np.float32)).to(device=weight.device, dtype=weight.dtype)


def rtn_round_trip(
    weight: Tensor, bits: int, *, group_size: int | None = None, symmetric: bool = True
) -> Tensor:
    """Round-to-nearest quantization of a ``(out, in)`` weight, de-quantized to its dtype.

    Each output row is cut into groups of ``group_size`` consecutive input columns (``None``: the whole
    row, i.e. per channel); each group gets its own scale, computed in float32:

    * symmetric: ``s = max|w| / (2^(b−1) − 1)``, ``q = clamp(round(w / s), −2^(b−1), 2^(b−1) − 1)``,
      ``ŵ = s·q`` (zero is a level: exact zeros stay zero);
    * asymmetric: ``lo = min(min w, 0)``, ``hi = max(max w, 0)``, ``s = (hi − lo) / (2^b − 1)``, an
      integer zero point ``z = round(−lo / s)``, ``q = clamp(round(w / s) + z, 0, 2^b − 1)``,
      ``ŵ = s·(q − z)``.

    A group of all zeros keeps scale 1 (and stays zero). Rounding is half-to-even (``torch.round``).
    """
    if bits not in RTN_BITS:
        raise SpecError("bits", f"must be one of {', '.join(map(str, RTN_BITS))} (got {bits!r})")
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D (out, in) weight, got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    g = cols if group_size is None else group_size
    if not (isinstance(g, int) and g > 0 and cols % g == 0):
        raise SpecError("group_size", f"must divide the input width {cols} (got {group_size!r})")
    w = weight.detach().to(torch.float32).reshape(rows, cols // g, g)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = w.abs().amax(-1, keepdim=True) / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.clamp(torch.round(w / scale), -qmax - 1, qmax)
        back = q * scale
    else:
        qmax = 2**bits - 1
        lo = w.amin(-1, keepdim=True).clamp(max=0.0)
        hi = w.amax(-1, keepdim=True).clamp(min=0.0)
        scale = (hi - lo) / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.round(-lo / scale)
        q = torch.clamp(torch.round(w / scale) + zero, 0, qmax)
        back = (q - zero) * scale
    return back.reshape(rows, cols).to(weight.dtype)


def keep_zeros(original: Tensor, quantized: Tensor) -> Tensor:
    """``quantized`` with the exact zeros of ``original`` put back (a sparse model stays as sparse)."""
    return torch.where(original == 0, torch.zeros_like(quantized), quantized)
