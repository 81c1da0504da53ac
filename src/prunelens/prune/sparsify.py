"""Intra-layer pruning, block by block: magnitude, Wanda and SparseGPT, unstructured or N:M.

:func:`sparsify` checks the request (:class:`~prunelens.prune.specs.SparsifySpec`), shares the sparsity
among the blocks (uniform, or by per-block scores: :mod:`prunelens.prune.sensitivity`,
:mod:`prunelens.prune.allocation`), prunes, and writes the plan. Layer-wise calibration as in the SparseGPT
and Wanda papers (:func:`prunelens.models.capture.blocks_in_turn`): the inputs of block 0 are captured
once (a forward pre-hook keeps *all* its keyword arguments — masks, rotary embeddings, positions — and
stops the forward), then each block in turn

1. runs on the current inputs with hooks on its linear layers that accumulate the statistics the
   method needs (Wanda: ``Σ_t x_tj²``; SparseGPT: ``H = 2XᵀX/n``), in float32
   (:mod:`prunelens.prune.linear_stats`);
2. has its linear layers pruned (SparseGPT prunes the linears that read one tensor — q/k/v, gate/up —
   as one stack with one Hessian; :mod:`prunelens.prune.block_prune`);
3. runs again to produce the inputs of the next block, so each block is calibrated on the outputs of
   the already-pruned blocks before it.

With ``true_sequential=True`` steps 1–3 become one pass: the block's linears are pruned group by group
in the order the forward reaches them, each group on the inputs that the already-pruned groups before it
produce (:func:`~prunelens.prune.block_prune.true_sequential_block`, run by
:mod:`prunelens.prune.lockstep`).

Only one block's statistics and two activation buffers (``nsamples × seqlen × hidden``) are alive
at a time, plus one batch's activations inside the block (true-sequential: every batch's); with
``device=`` a block is moved to that device only while it is processed, so a model kept on the CPU can
be pruned on one GPU. Embeddings and the unembedding stay dense.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from prunelens.data.calibration import Calibration
from prunelens.models.adapter import Adapter, is_offloaded, param_count
from prunelens.plan import PrunePlan
from prunelens.prune.allocation import OWL_LAMBDA, OWL_OUTLIER_M, allocate, kl_scores
from prunelens.prune.block_prune import prune_block_by_block, prune_magnitude
from prunelens.prune.sensitivity import block_params, block_sensitivity
from prunelens.prune.specs import PruneConfigError, SparsifySpec

__all__ = ["block_sparsities", "sparsify"]


def _sparsity_report(adapter: Adapter) -> dict:
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_layer = []
    total_z = total_n = 0
    for i in range(adapter.num_layers):
        lz = ln = 0
        for name, lin in adapter.block_linears(i).items():
            z = int((lin.weight == 0).sum())
            n = lin.weight.numel()
            key = name.rsplit(".", 1)[-1]
            groups[key][0] += z
            groups[key][1] += n
            lz, ln = lz + z, ln + n
        by_layer.append(lz / ln if ln else 0.0)
        total_z, total_n = total_z + lz, total_n + ln
    return {
        "overall": total_z / total_n if total_n else 0.0,
        "by_group": {k: z / n for k, (z, n) in groups.items()},
        "by_layer": by_layer,
    }


def block_sparsities(plan: PrunePlan, num_layers: int) -> list[float | None]:
    """Per block, the sparsity a plan gave it: ``sparsity.allocation.by_block`` when the plan allocated
    per block, else the one overall ratio (``None`` for N:M)."""
    alloc = plan.sparsity.get("allocation") or {}
    if alloc.get("rule", "uniform") != "uniform":
        return [float(s) for s in alloc["by_block"]]
    if plan.sparsity.get("pattern"):
        return [None] * num_layers
    return [float(plan.sparsity.get("sparsity", 0.0))] * num_layers


def _new_plan(model, adapter: Adapter, spec: SparsifySpec, calibration: Calibration | None, base_model: str):
    """The plan of ``spec`` on ``model`` before any weight changes (what, how, from which calibration)."""
    method, nm = spec.method, spec.nm
    calibrated = method != "magnitude" or spec.allocation != "uniform"
    return PrunePlan(
        method=method,
        base_model=base_model,
        family=adapter.spec.family,
        sparsity={"sparsity": float(spec.sparsity)}  # type: ignore[arg-type]
        if nm is None
        else {"pattern": spec.pattern, "sparsity": 1 - nm[0] / nm[1]},
        calibration=calibration.describe() if (calibration is not None and calibrated) else {},
        seed=calibration.seed if calibration is not None else None,
        params_before=param_count(model),
        num_layers_before=adapter.num_layers,
        options={
            "scope": "all nn.Linear inside decoder blocks; embeddings and unembedding dense",
            "compare": "per matrix"
            if method == "magnitude"
            else ("per output row" if method == "wanda" else "per 128-column block (adaptive)"),
            **({"blocksize": spec.blocksize, "percdamp": spec.percdamp} if method == "sparsegpt" else {}),
            **({"true_sequential": spec.calibrates_true_sequentially} if method != "magnitude" else {}),
            "nm_convention": "N kept in every M" if nm else None,
        },
    )


def _allocated(
    model, adapter: Adapter, spec: SparsifySpec, calibration: Calibration, **measure: Any
) -> dict[str, Any]:
    """The plan's ``sparsity.allocation`` record of a non-uniform ``spec.allocation``: each block's score
    (:func:`~prunelens.prune.sensitivity.block_sensitivity`, with ``measure``'s batch size, device,
    outlier threshold and windows) and the sparsity it gets (``by_block``)."""
    rule, ratio = spec.allocation, float(spec.sparsity)  # type: ignore[arg-type]
    lam = OWL_LAMBDA if spec.allocation_lambda is None else float(spec.allocation_lambda)
    measured = block_sensitivity(
        model,
        calibration,
        rule=rule,
        method=spec.method,
        sparsity=ratio,
        blocksize=spec.blocksize,
        percdamp=spec.percdamp,
        **measure,
    )
    params = block_params(adapter)
    raw = measured["scores"]
    return {
        "rule": rule,
        "lambda": lam,
        "by_block": allocate(raw if rule == "owl" else kl_scores(raw), params, ratio, lam),
        "scores": raw,
        "score": measured["score"],
        "block_params": params,
        "tokens": measured["tokens"],
        "seconds": round(measured["seconds"], 3),
        **({"outlier_threshold": measure["outlier_threshold"]} if rule == "owl" else {}),
        **({"map": "linear in log KL"} if rule == "kl" else {"map": "linear in the score"}),
    }


@torch.no_grad()
def sparsify(
    model,
    calibration: Calibration | None,
    spec: SparsifySpec | None = None,
    *,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    base_model: str = "",
    outlier_threshold: float = OWL_OUTLIER_M,
    sensitivity_windows: int | None = 8,
    **fields,
) -> PrunePlan:
    """Sparsify every linear layer inside the blocks of ``model`` as ``spec`` asks, in place; return the plan.

    ``spec``: a :class:`~prunelens.prune.specs.SparsifySpec`, or its fields as keywords (``method=``,
    ``sparsity=`` or ``pattern=``, ...), checked before any work. ``magnitude`` needs no calibration
    (``calibration`` may be None); Wanda and SparseGPT do.

    What each field means (the calibration order, the per-block allocation): the spec's docstring.
    ``device``: run each block there while the model stays where it is. ``outlier_threshold`` and
    ``sensitivity_windows``: the OWL outlier threshold (× the mean Wanda score) and the windows the KL
    sensitivity is measured on. The plan's ``sparsity.allocation`` records the rule, lambda, every block's
    sparsity, score and weight count, and the seconds the scores took.
    """
    if spec is None:
        spec = SparsifySpec(**fields)
    elif fields:
        raise TypeError(f"give a SparsifySpec or its fields, not both (got {sorted(fields)})")
    spec.check()
    method, nm = spec.method, spec.nm
    if is_offloaded(model):  # how the user loaded the model: their choice to change
        raise PruneConfigError(
            "sparsifying rewrites the weights in place, so they must be in memory: this model has "
            "weights offloaded to disk or CPU by accelerate. Load it on the CPU (device='cpu') and pass "
            "device='cuda' to prune block by block on one GPU (memory: one block plus activations)"
        )
    adapter = Adapter(model)
    if method != "magnitude" and calibration is None:
        raise PruneConfigError(f"{method} needs calibration data")
    if spec.allocation != "uniform" and calibration is None:
        raise PruneConfigError(f"allocation {spec.allocation!r} needs calibration data (also for magnitude)")
    plan = _new_plan(model, adapter, spec, calibration, base_model)
    ratios: list[float | None] = [None if nm else float(spec.sparsity)] * adapter.num_layers  # type: ignore[arg-type]
    if spec.allocation != "uniform":
        assert calibration is not None  # refused above
        alloc = _allocated(
            model,
            adapter,
            spec,
            calibration,
            batch_size=batch_size,
            device=device,
            outlier_threshold=outlier_threshold,
            windows=sensitivity_windows,
        )
        plan.sparsity["allocation"] = alloc
        ratios = list(alloc["by_block"])
    if method == "magnitude":
        prune_magnitude(adapter, ratios, nm)
    else:
        assert calibration is not None  # refused above
        prune_block_by_block(
            model,
            adapter,
            calibration.input_ids,
            method,
            ratios,
            nm,
            batch_size=batch_size,
            blocksize=spec.blocksize,
            percdamp=spec.percdamp,
            device=device,
            true_sequential=spec.calibrates_true_sequentially,
        )
    plan.sparsity["achieved"] = _sparsity_report(adapter)
    plan.params_after = param_count(model)
    return plan
