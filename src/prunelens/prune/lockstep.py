"""Run a module over many batches in lockstep, every batch pausing before chosen submodules.

True-sequential calibration inside a block (each linear group is pruned on statistics of the inputs it
sees once the groups before it are pruned) needs, at each group, the statistics of *all* batches before
the group is pruned and before anything downstream of it runs. Re-running the block from its input for
every group would compute the upstream part again for each group. Here each batch runs the block in a
greenlet of its own (a coroutine that can pause anywhere in the call stack, in this same thread) and
parks before the first module of every group; once all batches are parked at the same group, the
caller's ``on_gate`` runs (it prunes the group) and the batches go on. Every product of the block is
then computed once, with the weights it will have in the pruned model.

Greenlets rather than threads: only one batch computes at any moment anyway, and in the caller's
thread the batches keep its grad mode, its OpenMP team and its malloc arena (worker threads made each
block forward slower, as fresh arenas fault their pages in again: benchmarks/README.md, § Sparsifying).
The batches run in batch order between gates, so the arithmetic and its order are those of a plain loop
over the batches. The price is memory: every batch's activations inside the block are alive at once (the
whole calibration set's, instead of one batch's).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

import greenlet
import torch
from torch import nn


class LockstepError(RuntimeError):
    """The batches did not all stop at the same place, so a group's statistics would be incomplete."""


def _check_member(mod: nn.Module, key: Hashable, first: torch.Tensor | None, x: torch.Tensor) -> None:
    """A module behind gate ``key`` must read the very tensor the gate's module read (``first``)."""
    if first is None or (
        first is not x
        and (first.data_ptr(), first.shape, first.stride()) != (x.data_ptr(), x.shape, x.stride())
    ):
        raise LockstepError(
            f"{type(mod).__name__} behind gate {key!r} does not read the tensor the gate's own "
            "module read, so it cannot be pruned on that tensor's statistics"
        )


def _diverged(keys: set, parked: int, running: int) -> LockstepError:
    return LockstepError(
        "the batches took different paths through the block "
        "(data-dependent control flow, such as "
        f"mixture-of-experts routing): {parked} of {running} stopped at "
        f"{', '.join(map(repr, sorted(keys, key=repr)))}; calibrate with true_sequential=False"
    )


def run_in_lockstep(
    run_batch: Callable[[int], None],
    n: int,
    stops: Mapping[nn.Module, Hashable],
    *,
    on_arrive: Callable[[Hashable, torch.Tensor], None],
    on_gate: Callable[[Hashable], None],
    members: Mapping[nn.Module, Hashable] | None = None,
    finish: bool = True,
) -> None:
    """Call ``run_batch(0..n-1)`` in lockstep.

    ``stops`` maps a module to the key of the gate in front of it. The first time batch ``b`` calls a
    gated module whose gate is still closed, ``on_arrive(key, input)`` runs and the batch parks. Once
    every unfinished batch is parked at the same gate, ``on_gate(key)`` runs, the gate opens for good and
    the batches go on, one after the other.

    ``members`` are further modules behind a gate (k/v behind q's, say): each must read the very tensor
    its gate's module read in the same batch, otherwise :class:`LockstepError` (``on_gate`` has already
    decided for them on that tensor's statistics). With ``finish=False`` the batches are stopped as soon
    as the last gate has opened (when nothing after it is needed). A batch that finishes while others
    are parked, or batches parked at different gates, raise :class:`LockstepError`; an exception in a
    batch stops all the others and is raised here.
    """
    members = members or {}
    caller = greenlet.getcurrent()
    opened: set = set()
    all_keys = set(stops.values())
    parked: dict[int, Hashable] = {}  # batch -> gate it waits at
    checked = set(members.values())  # gates whose input must be kept to check their members against
    read: dict[int, dict] = {b: {} for b in range(n)}  # batch -> such a gate -> the tensor its module read
    batch_of: dict[greenlet.greenlet, int] = {}

    def pre_hook(mod, args, kwargs):
        b = batch_of.get(greenlet.getcurrent())
        if b is None:  # a call outside the lockstep: not ours to gate
            return None
        x = args[0] if args else next(iter(kwargs.values()))
        if mod in stops:
            key = stops[mod]
            if key not in opened:
                if key in checked:
                    read[b][key] = x
                on_arrive(key, x)
                parked[b] = key
                caller.switch()  # back to the loop below; resumed when the gate has opened
            return None
        _check_member(mod, members[mod], read[b].get(members[mod]), x)
        return None

    def body(b: int) -> None:
        try:
            run_batch(b)
        finally:
            read[b].clear()

    runs = [greenlet.greenlet(lambda b=b: body(b), parent=caller) for b in range(n)]
    batch_of.update({g: b for b, g in enumerate(runs)})
    hooks = [m.register_forward_pre_hook(pre_hook, with_kwargs=True) for m in (*stops, *members)]
    try:
        running = list(range(n))
        while running:
            for b in running:
                runs[b].switch()  # runs until the batch parks or ends; its exception is raised here
            if not parked:
                break
            keys = set(parked.values())
            if len(keys) > 1 or len(parked) < len(running):
                raise _diverged(keys, len(parked), len(running))
            key = keys.pop()
            on_gate(key)
            opened.add(key)
            running = sorted(parked)
            parked.clear()
            if not finish and opened >= all_keys:
                break
    finally:
        for g in runs:
            if g and not g.dead:
                g.throw()  # GreenletExit unwinds the parked batch (its finally blocks run)
        for h in hooks:
            h.remove()
