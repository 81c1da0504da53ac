"""Importance of sublayers and blocks on calibration tokens (for inter-layer pruning).

For a sublayer with input stream ``x`` and output stream ``y = x + Δ`` (the residual after it), the
similarity is the cosine ``cos(x, y)`` averaged over every calibration token; a sublayer that barely
turns the residual stream (similarity near 1) is unimportant. Importance = ``1 − similarity``.

* attention: ``x = resid_pre``, ``y = resid_pre + Δ_attn``;
* MLP: ``x = resid_mid`` (``resid_pre`` for parallel blocks), ``y = x + Δ_mlp``;
* block: ``x = resid_pre``, ``y = resid_post``;
* window of ``n`` consecutive blocks starting at ``l``: ``x = resid_pre(l)``, ``y = resid_post(l+n−1)``.

All similarities come from one forward pass over the calibration windows (hooks, no extra model),
computed in float32 whatever the model dtype.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from prunelens.models.adapter import Adapter, input_device
from prunelens.models.residual import BlockStates, record_blocks
from prunelens.utils.progress import progress_bar


def cosine_sum(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """``Σ cos(x_t, y_t)`` over token positions, in float32
    (``mask``: weight per position, e.g. padding 0)."""
    c = F.cosine_similarity(x.float(), y.float(), dim=-1)
    return float((c * mask).sum() if mask is not None else c.sum())


@dataclass
class Similarities:
    """Mean cosine similarity (input stream vs output stream) per layer; ``None`` for dropped sublayers."""

    attn: list[float | None]
    mlp: list[float | None]
    block: list[float]
    window: list[float] = field(default_factory=list)  # index l: blocks l..l+n-1
    window_size: int = 0
    tokens: int = 0

    def by_kind(self) -> dict[str, list[float | None]]:
        """Scores for :mod:`prunelens.prune.choose` (cosine similarity: higher = more droppable)."""
        return {"attn": self.attn, "mlp": self.mlp, "block": list(self.block)}

    def to_dict(self) -> dict:
        return {
            "similarity": {
                "attn": self.attn,
                "mlp": self.mlp,
                "block": self.block,
                "window": self.window,
                "window_size": self.window_size,
            },
            "tokens": self.tokens,
        }


@torch.no_grad()
def similarities(
    model, input_ids: torch.Tensor, *, batch_size: int = 8, window: int = 0, desc: str = "scoring"
) -> Similarities:
    """Cosine similarities of every sublayer, block (and window of ``window`` blocks) over ``input_ids``."""
    adapter = Adapter(model)
    n_layers = adapter.num_layers
    sums = {k: [0.0] * n_layers for k in ("attn", "mlp", "block")}
    win_sums = [0.0] * max(n_layers - window + 1, 0) if window else []
    pending: deque[tuple[int, torch.Tensor]] = deque()
    device = input_device(model)

    def on_block(s: BlockStates) -> None:
        sums["attn"][s.layer] += cosine_sum(s.pre, s.mid)
        x = s.mlp_input_stream
        sums["mlp"][s.layer] += cosine_sum(x, x + s.d_mlp)
        sums["block"][s.layer] += cosine_sum(s.pre, s.post)
        if window:
            pending.append((s.layer, s.pre))
            start = s.layer - window + 1
            if start >= 0:
                layer0, pre0 = pending.popleft()
                assert layer0 == start
                win_sums[start] += cosine_sum(pre0, s.post)

    tokens = 0
    with record_blocks(adapter, on_block), progress_bar(desc, total=input_ids.shape[0]) as bar:
        for i in range(0, input_ids.shape[0], batch_size):
            batch = input_ids[i : i + batch_size].to(device)
            pending.clear()
            model(batch, use_cache=False)
            tokens += batch.numel()
            bar.advance(batch.shape[0])

    def mean(values: list[float], kind: str | None) -> list:
        out = []
        for layer, v in enumerate(values):
            dropped = kind is not None and adapter.is_dropped(layer, kind)
            out.append(None if dropped else v / tokens)
        return out

    return Similarities(
        mean(sums["attn"], "attn"),
        mean(sums["mlp"], "mlp"),
        mean(sums["block"], None),
        [v / tokens for v in win_sums],
        window,
        tokens,
    )
