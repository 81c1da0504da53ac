"""Input statistics of a block's linear layers, as layer-wise pruning needs them.

Wanda scores a weight by ``|W_ij| · ‖X_j‖`` (``Σ_t x_tj²`` per input column); SparseGPT needs the Hessian
``H = 2XᵀX/n`` of each linear's inputs. Both are accumulated in float32 from forward pre-hooks on the
linears while the block runs on its calibration inputs (:func:`collect_input_stats`, which stops the
block once every linear has seen its input). Linears that read one tensor (q/k/v, gate/up) share one
accumulator (:class:`SharedInputStats`), so the costliest statistic is computed once per tensor.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from prunelens.models.capture import StopForward, forward_until_stopped
from prunelens.prune.sparse_math import accumulate_gram, symmetric_from_lower

__all__ = ["InputStats", "SharedInputStats", "collect_input_stats", "linear_groups"]


class InputStats:
    """Running input statistics of one linear layer (float32): for Wanda ``sq = Σ_t x_tj²``; for SparseGPT
    ``XᵀX`` (one triangle, see :func:`accumulate_gram`), read as ``H = 2XᵀX/n``, whose diagonal is ``sq``."""

    def __init__(self, cols: int, device, hessian: bool):
        self.n = 0
        self._gram = torch.zeros(cols, cols, device=device, dtype=torch.float32) if hessian else None
        self._sq = None if hessian else torch.zeros(cols, device=device, dtype=torch.float32)

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        if self._gram is not None:
            accumulate_gram(self._gram, x)
        else:
            self._sq += (x * x).sum(0)
        self.n += x.shape[0]

    @property
    def sq(self) -> torch.Tensor:
        return self._sq if self._gram is None else torch.diagonal(self._gram).clone()

    @property
    def H(self) -> torch.Tensor | None:
        if self._gram is None:
            return None
        return symmetric_from_lower(self._gram) * (2.0 / max(self.n, 1))


class SharedInputStats:
    """:class:`InputStats` per linear layer, accumulated once per distinct input tensor.

    Linears that read the same tensor (q/k/v read the normed hidden states, gate/up the normed residual)
    share one accumulator, so their Hessian ``XᵀX`` — the costliest statistic — is computed once. The
    sharing is found from the tensors themselves (same storage, shape and strides within one forward call;
    the tensors are held until the call ends so no address is reused), so it needs no per-family table;
    a linear that later sees a different tensor than its partner is an error, never a silent mix.
    """

    def __init__(self, device, hessian: bool):
        self._make = lambda cols: InputStats(cols, device, hessian)
        self.stats: dict[str, InputStats] = {}
        self._owner: dict[str, str] = {}  # linear -> the linear whose accumulator it shares
        self._seen: dict[tuple, tuple[str, torch.Tensor]] = {}  # this call's inputs -> (first reader, tensor)

    def new_call(self) -> None:
        self._seen.clear()

    def add(self, name: str, x: torch.Tensor) -> None:
        key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype)
        first = self._seen.get(key)
        if name not in self._owner:  # the first call decides who shares with whom
            self._owner[name] = first[0] if first is not None else name
            if first is None:
                self.stats[name] = self._make(x.shape[-1])
        owner = self._owner[name]
        if owner == name:
            if first is not None and first[0] != name:
                raise RuntimeError(
                    f"{name} read the input of {first[0]} in a later call but not in the first"
                )
            self.stats[name].add(x)
            self._seen[key] = (name, x)
        elif first is None or first[0] != owner:
            raise RuntimeError(
                f"{name} shared its input with {owner} in the first call but not in a later one"
            )

    def __getitem__(self, name: str) -> InputStats:
        return self.stats[self._owner[name]]

    def groups(self) -> dict[str, list[str]]:
        """Owner → the linears (in first-call order) that share its accumulator."""
        out: dict[str, list[str]] = defaultdict(list)
        for name, owner in self._owner.items():
            out[owner].append(name)
        return dict(out)


def collect_input_stats(
    block: nn.Module,
    linears: dict[str, nn.Module],
    stats: SharedInputStats,
    inps: torch.Tensor,
    kwargs: dict,
    batch_size: int,
) -> None:
    """Run ``block`` over ``inps`` only as far as its linear layers need: statistics are recorded in each
    linear's forward pre-hook, and the forward stops once every linear has seen its input (the last
    linear's product and whatever follows it are never computed; the block's output is not needed here)."""
    seen: set[str] = set()

    def hook(name: str):
        def pre(mod, args):
            stats.add(name, args[0])
            seen.add(name)
            if len(seen) == len(linears):
                raise StopForward

        return pre

    handles = [lin.register_forward_pre_hook(hook(name)) for name, lin in linears.items()]
    try:
        for i in range(0, inps.shape[0], batch_size):
            seen.clear()
            stats.new_call()
            forward_until_stopped(block, inps[i : i + batch_size], **kwargs)
    finally:
        for h in handles:
            h.remove()
        stats.new_call()


def linear_groups(
    block: nn.Module, linears: dict[str, nn.Module], inps: torch.Tensor, kwargs: dict
) -> dict[str, list[str]]:
    """The block's linears grouped by the tensor they read, groups in the order the forward reaches them
    (found by running the block on one calibration window)."""
    probe = SharedInputStats(inps.device, hessian=False)
    collect_input_stats(block, linears, probe, inps[:1], kwargs, 1)
    return probe.groups()
