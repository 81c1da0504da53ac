"""Per-block scores for a non-uniform sparsity allocation (:mod:`prunelens.prune.allocation`), measured on
the dense model: OWL's outlier ratio, or each block's exact KL sensitivity (the model with only that block
sparsified, by the capture engine's suffix re-runs, :func:`prunelens.models.capture.counterfactual_kl_sums`).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from prunelens.data.calibration import Calibration
from prunelens.models.adapter import Adapter
from prunelens.models.capture import blocks_in_turn, counterfactual_kl_sums
from prunelens.prune.allocation import OWL_OUTLIER_M, outlier_ratio
from prunelens.prune.block_prune import block_pruned_state, swapped_in
from prunelens.prune.linear_stats import SharedInputStats, collect_input_stats
from prunelens.prune.sparse_math import wanda_scores

__all__ = ["block_params", "block_sensitivity"]


def block_params(adapter: Adapter) -> list[int]:
    """Per block, the number of weights its linears hold (what sparsifying counts)."""
    return [
        sum(lin.weight.numel() for lin in adapter.block_linears(i).values())
        for i in range(adapter.num_layers)
    ]


@torch.no_grad()
def block_sensitivity(
    model,
    calibration: Calibration,
    *,
    rule: str,
    method: str,
    sparsity: float,
    batch_size: int = 8,
    blocksize: int = 128,
    percdamp: float = 0.01,
    device: str | torch.device | None = None,
    outlier_threshold: float = OWL_OUTLIER_M,
    windows: int | None = 8,
) -> dict[str, Any]:
    """Per-block scores of an allocation ``rule``, measured on the dense model (which is left unchanged).

    * ``owl``: each block's outlier ratio (:func:`prunelens.prune.allocation.outlier_ratio`) of its Wanda
      scores ``|W|·‖X‖``, ``‖X‖`` from the dense model's block inputs over every calibration window.
    * ``kl``: each block's exact counterfactual ``KL(p_dense ‖ p_l)``, mean per token: ``p_l`` is the model
      with *only* block ``l`` sparsified by ``method`` at ``sparsity`` (its statistics from the dense block
      inputs over every calibration window, the published procedure), on the first ``windows`` calibration
      windows (None: all). As :func:`prunelens.prune.objectives.counterfactual_kl`: one dense pass per batch
      records every block's input, and block ``l``'s candidate re-runs blocks ``l … L−1`` from it. Holds the
      ``L`` pruned states until the end (masks; SparseGPT: a copy of the block weights).

    Returns ``{"scores", "tokens", "seconds", "score"}``.
    """
    t0 = time.perf_counter()
    adapter = Adapter(model)
    L = adapter.num_layers
    states: list[dict[str, torch.Tensor]] = []
    ratios: list[float] = []
    if rule == "owl" or method != "magnitude":
        ids = calibration.input_ids
        for step in blocks_in_turn(
            model, adapter, ids, batch_size=batch_size, device=device, desc=f"{rule} scores"
        ):
            linears = adapter.block_linears(step.index)
            stats = SharedInputStats(step.device, rule == "kl" and method == "sparsegpt")
            collect_input_stats(step.block, linears, stats, step.inputs, step.kwargs, batch_size)
            if rule == "owl":
                scores = (wanda_scores(lin.weight, stats[n].sq) for n, lin in linears.items())
                ratios.append(outlier_ratio(scores, outlier_threshold))
            else:
                st = block_pruned_state(method, linears, stats, sparsity, blocksize, percdamp)
                states.append({n: t.to(step.home) for n, t in st.items()})
            del stats  # the block then runs dense: the next block's inputs
    if rule == "owl":
        return {
            "scores": ratios,
            "tokens": int(calibration.input_ids.numel()),
            "seconds": time.perf_counter() - t0,
            "score": f"outlier ratio: share of the block's Wanda scores |W|·‖X‖ above {outlier_threshold:g}× "
            "their mean (dense model, every calibration window)",
        }
    if method == "magnitude":  # no calibration statistics: the masks come from the weights alone
        states = [
            block_pruned_state(method, adapter.block_linears(i), None, sparsity, blocksize, percdamp)
            for i in range(L)
        ]
    ids = calibration.input_ids if windows is None else calibration.input_ids[:windows]
    changes = [(i, lambda i=i: swapped_in(adapter.block_linears(i), states[i])) for i in range(L)]
    measured = counterfactual_kl_sums(
        model, adapter, ids, changes, batch_size=batch_size, keep_reference=False, desc="kl scores"
    )
    tokens = measured.tokens
    return {
        "scores": [s / tokens for s in measured.sums],
        "tokens": tokens,
        "seconds": time.perf_counter() - t0,
        "score": f"exact KL(p_dense ‖ p with only this block {method}-sparsified at {sparsity:g}), "
        f"nats per token, on the first {ids.shape[0]} calibration windows",
    }
