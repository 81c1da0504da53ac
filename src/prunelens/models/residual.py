"""Read the residual stream at every block without a second model: hooks on the adapter's modules.

For block ``l`` the recorder sees ``resid_pre`` (block input), ``Δ_attn`` and ``Δ_mlp`` (the sublayers'
contributions, read from the adapter's ``attn_out`` / ``mlp_out`` modules) and ``resid_post`` (block
output). Sequential blocks have ``resid_mid = resid_pre + Δ_attn`` and ``resid_post = resid_mid + Δ_mlp``;
parallel blocks (GPT-NeoX) have both sublayers reading ``resid_pre``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from prunelens.models.adapter import Adapter, block_output
from prunelens.models.capture import block_input_hooks, sublayer_output_hooks
from prunelens.plan import SUBLAYERS


@dataclass
class BlockStates:
    layer: int
    pre: torch.Tensor
    d_attn: torch.Tensor
    d_mlp: torch.Tensor
    post: torch.Tensor
    parallel: bool

    @property
    def mid(self) -> torch.Tensor:
        """Residual stream after attention (for parallel blocks, the MLP reads ``pre`` instead)."""
        return self.pre + self.d_attn

    @property
    def mlp_input_stream(self) -> torch.Tensor:
        return self.pre if self.parallel else self.mid


@contextmanager
def record_blocks(
    adapter: Adapter, callback: Callable[[BlockStates], None], layers: list[int] | None = None
) -> Iterator[None]:
    """Call ``callback(BlockStates)`` after each block's forward while the context is open."""
    handles = []
    parallel = adapter.parallel
    todo = list(range(adapter.num_layers) if layers is None else layers)
    stores: dict[int, dict[str, torch.Tensor]] = {i: {} for i in todo}

    def on_input(i: int, h: torch.Tensor, args: tuple, kwargs: dict) -> None:
        stores[i]["pre"] = h

    def on_output(i: int, kind: str, out: torch.Tensor) -> None:
        stores[i][kind] = out

    for i in todo:
        block = adapter.layers[i]
        store = stores[i]

        def post_hook(mod, args, kwargs, out, store=store, i=i):
            states = BlockStates(
                i, store.pop("pre"), store.pop("attn"), store.pop("mlp"), block_output(out), parallel
            )
            callback(states)

        handles.append(block.register_forward_hook(post_hook, with_kwargs=True))
    try:
        with (
            block_input_hooks(adapter, on_input, todo),
            sublayer_output_hooks(adapter, on_output, [(i, k) for i in todo for k in SUBLAYERS]),
        ):
            yield
    finally:
        for h in handles:
            h.remove()
