"""Pruning one block's linear layers: magnitude, Wanda and SparseGPT, unstructured or N:M.

What :func:`prunelens.prune.sparsify.sparsify` does to each block once its calibration statistics are in
(:mod:`prunelens.prune.linear_stats`): Wanda zeroes the lowest ``|W|·‖X‖`` per output row; SparseGPT
prunes the linears that read one tensor — q/k/v, gate/up — as one stack with one Hessian
(:func:`_sparsegpt_group`); magnitude needs no calibration. :func:`true_sequential_block` prunes a
block group by group in one pass (:mod:`prunelens.prune.lockstep`); :func:`prune_block_by_block` is the
layer-wise calibration loop (:func:`prunelens.models.capture.blocks_in_turn`).
:func:`block_pruned_state` / :func:`swapped_in` hold a block's pruned weights aside for the sensitivity
scores (:mod:`prunelens.prune.sensitivity`), which try each block pruned alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from prunelens.models.adapter import Adapter
from prunelens.models.capture import blocks_in_turn, replay_block
from prunelens.prune.linear_stats import InputStats, SharedInputStats, collect_input_stats, linear_groups
from prunelens.prune.lockstep import run_in_lockstep
from prunelens.prune.sparse_math import magnitude_scores, score_mask, sparsegpt_prune, wanda_scores
from prunelens.utils.errors import InputError
from prunelens.utils.progress import progress_bar

__all__ = [
    "CalibrationMemoryError",
    "block_pruned_state",
    "group_pruner",
    "magnitude_masks",
    "prune_block_by_block",
    "prune_magnitude",
    "swapped_in",
    "true_sequential_block",
]


class CalibrationMemoryError(MemoryError, InputError):
    """Calibration ran out of memory; the message says what to change."""


def _zero(weight: torch.Tensor, mask: torch.Tensor) -> None:
    """Zero ``weight`` where ``mask`` is True, in place, as a product with the kept mask (faster than
    ``masked_fill_``; weights are finite, so ``w·0`` is zero, its sign bit immaterial).

    In place on purpose: weights loaded from safetensors are memory-mapped, and the first write to each
    page copies it. Giving the weight fresh storage instead skips that copy but keeps the mapped file
    pages resident beside the new ones, which raises the peak memory of a run, so it is not done
    (both measured: benchmarks/README.md, § Measurements behind choices in the code).
    """
    weight.mul_(~mask)


def _sparsegpt_group(
    weights: list[torch.Tensor], H: torch.Tensor, ratio, nm, blocksize: int, percdamp: float
) -> None:
    """SparseGPT on linears that share one Hessian, stacked: one factorisation and one column loop for all
    (masks still chosen per matrix, see ``segments`` in :func:`sparsegpt_prune`)."""
    stacked = weights[0] if len(weights) == 1 else torch.cat(weights)
    rows = [w.shape[0] for w in weights]
    new_w, _ = sparsegpt_prune(
        stacked, H, sparsity=ratio, nm=nm, blocksize=blocksize, percdamp=percdamp, segments=rows
    )
    for w, part in zip(weights, torch.split(new_w, rows)):
        w.copy_(part)  # in place, see _zero


def group_pruner(method: str, linears: dict[str, nn.Module], ratio, nm, blocksize: int, percdamp: float):
    """``prune(names, stats)``: prune the linears ``names``,
    which read one tensor whose statistics are ``stats``."""

    def prune(names: list[str], stats: InputStats) -> None:
        if method == "wanda":
            for name in names:
                lin = linears[name]
                _zero(
                    lin.weight,
                    score_mask(wanda_scores(lin.weight, stats.sq), sparsity=ratio, nm=nm, per_row=True),
                )
        else:
            _sparsegpt_group([linears[n].weight for n in names], stats.H, ratio, nm, blocksize, percdamp)

    return prune


def true_sequential_block(
    block: nn.Module,
    linears: dict[str, nn.Module],
    prune,
    inps: torch.Tensor,
    outs: torch.Tensor,
    kwargs: dict,
    batch_size: int,
    hessian: bool,
    *,
    need_outputs: bool,
) -> None:
    """Calibrate and prune ``block`` group by group in one pass (see :mod:`prunelens.prune.lockstep`): each
    group of linears is pruned on the statistics of the inputs it receives from the already-pruned groups
    before it, and the block's outputs come from the pruned block."""
    groups = linear_groups(block, linears, inps, kwargs)
    stats: dict[str, InputStats] = {}
    starts = list(range(0, inps.shape[0], batch_size))

    def run_batch(j: int) -> None:
        sl = slice(starts[j], starts[j] + batch_size)
        outs[sl] = replay_block(block, inps[sl], (), kwargs)

    def on_arrive(owner: str, x: torch.Tensor) -> None:
        if owner not in stats:
            stats[owner] = InputStats(x.shape[-1], inps.device, hessian)
        stats[owner].add(x)

    def on_gate(owner: str) -> None:
        prune(groups[owner], stats.pop(owner))

    try:
        run_in_lockstep(
            run_batch,
            len(starts),
            {linears[o]: o for o in groups},
            on_arrive=on_arrive,
            on_gate=on_gate,
            members={linears[n]: o for o, names in groups.items() for n in names[1:]},
            finish=need_outputs,
        )
    except (
        RuntimeError
    ) as exc:  # CUDA's OutOfMemoryError is one; the CPU allocator's says "can't allocate memory"
        if not isinstance(exc, torch.cuda.OutOfMemoryError) and "allocate memory" not in str(exc):
            raise
        raise CalibrationMemoryError(
            f"true-sequential calibration holds the activations of all {inps.shape[0]} "
            "calibration windows inside "
            f"a block at once, and {inps.device} ran out of memory. Calibrate with true_sequential=False "
            "(CLI: --dense-block-stats), which holds one batch's, or with fewer windows. The model is partly "
            "pruned now: load it again before retrying."
        ) from exc


def magnitude_masks(adapter: Adapter, layer: int, ratio: float | None, nm: tuple[int, int] | None):
    """``(linear, mask)`` for every linear of block ``layer`` under magnitude pruning (``True`` = zeroed).

    Magnitude needs no calibration, so the analysis rebuilds these masks from the dense weights instead
    of storing a pruned copy; both go through here. ``ratio`` is block ``layer``'s own sparsity: with a
    non-uniform allocation, :func:`block_sparsities` of the plan.
    """
    for lin in adapter.block_linears(layer).values():
        mask = score_mask(magnitude_scores(lin.weight), sparsity=ratio, nm=nm, per_row=False)
        yield lin, mask.to(lin.weight.device)


def prune_magnitude(adapter: Adapter, ratios: list[float | None], nm: tuple[int, int] | None) -> None:
    """Magnitude pruning of every block, block ``i`` at ``ratios[i]`` (or the N:M pattern ``nm``)."""
    with progress_bar("magnitude", total=adapter.num_layers) as bar:
        for i in range(adapter.num_layers):
            for lin, mask in magnitude_masks(adapter, i, ratios[i], nm):
                _zero(lin.weight, mask)
            bar.advance()


def prune_block_by_block(
    model,
    adapter: Adapter,
    input_ids: torch.Tensor,
    method: str,
    ratios: list[float | None],
    nm: tuple[int, int] | None,
    *,
    batch_size: int,
    blocksize: int,
    percdamp: float,
    device: str | torch.device | None,
    true_sequential: bool,
) -> None:
    """Wanda or SparseGPT, layer-wise on the calibration windows ``input_ids``: each block is calibrated on
    the outputs of the already-pruned blocks before it, and pruned at ``ratios[i]`` (or the pattern ``nm``).

    ``true_sequential``: the block's linears are pruned group by group in one pass, the pruned block's
    outputs coming out of the same pass (:func:`true_sequential_block`); otherwise every linear's
    statistics come from the dense block, all are pruned, then the pruned block runs for the next
    block's inputs."""
    hessian = method == "sparsegpt"
    for step in blocks_in_turn(model, adapter, input_ids, batch_size=batch_size, device=device, desc=method):
        linears = adapter.block_linears(step.index)
        prune = group_pruner(method, linears, ratios[step.index], nm, blocksize, percdamp)
        if true_sequential:
            true_sequential_block(
                step.block,
                linears,
                prune,
                step.inputs,
                step.outputs,
                step.kwargs,
                batch_size,
                hessian,
                need_outputs=not step.last,
            )
            step.outputs_written = True
        else:
            stats = SharedInputStats(step.device, hessian)
            collect_input_stats(step.block, linears, stats, step.inputs, step.kwargs, batch_size)
            for owner, names in stats.groups().items():
                prune(names, stats[owner])
            del stats


def block_pruned_state(method, linears, stats, ratio, blocksize, percdamp) -> dict[str, torch.Tensor]:
    """What ``method`` at ``ratio`` makes of the block's linears, the block left dense: Wanda and magnitude
    as masks (``True`` = zeroed), SparseGPT as the updated weights."""
    if method == "magnitude":
        return {
            n: score_mask(magnitude_scores(lin.weight), sparsity=ratio, per_row=False).to(lin.weight.device)
            for n, lin in linears.items()
        }
    if method == "wanda":
        return {
            n: score_mask(wanda_scores(lin.weight, stats[n].sq), sparsity=ratio, per_row=True)
            for n, lin in linears.items()
        }
    dense = {n: lin.weight.detach().clone() for n, lin in linears.items()}
    prune = group_pruner(method, linears, ratio, None, blocksize, percdamp)
    for owner, names in stats.groups().items():
        prune(names, stats[owner])
    out = {}
    for n, lin in linears.items():
        out[n] = lin.weight.detach().clone()
        lin.weight.copy_(dense[n])
    return out


@contextmanager
def swapped_in(linears: dict[str, nn.Module], state: dict[str, torch.Tensor]) -> Iterator[None]:
    """Inside, the linears hold a pruned state (see :func:`block_pruned_state`); dense again after."""
    saved = {}
    for n, lin in linears.items():
        st = state[n].to(lin.weight.device)
        saved[n] = lin.weight.detach().clone()
        if st.dtype == torch.bool:
            _zero(lin.weight, st)
        else:
            lin.weight.copy_(st)
    try:
        yield
    finally:
        for n, lin in linears.items():
            lin.weight.copy_(saved[n])
