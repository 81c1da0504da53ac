"""Inter-layer pruning: drop the least important attention/MLP sublayers or whole blocks.

Targets: ``attn``, ``mlp``, ``joint`` (attention and MLP sublayers ranked together) and ``block``
(individual blocks, or with ``window=True`` the best window of ``n`` consecutive blocks). One-shot
scores once and drops the ``n`` most similar; iterative re-scores after every removal.
"""

from __future__ import annotations

from prunelens.data.calibration import Calibration
from prunelens.models.adapter import Adapter, drop_blocks, drop_sublayer, param_count
from prunelens.plan import DROP_TARGETS, PrunePlan
from prunelens.prune.scoring import rank_candidates, similarities


class PruneConfigError(ValueError):
    """Impossible pruning request (bad target, count, sparsity or pattern)."""


def validate_drop(num_layers: int, target: str, n: int, already_dropped: int = 0) -> None:
    """Refuse targets and counts that cannot be satisfied, before any work."""
    if target not in DROP_TARGETS:
        raise PruneConfigError(f"unknown drop target {target!r}; choose one of {', '.join(DROP_TARGETS)}")
    if n <= 0:
        raise PruneConfigError(f"the number to drop must be positive (got {n})")
    available = (2 * num_layers if target == "joint" else num_layers) - already_dropped
    if n >= available:
        what = "sublayers" if target == "joint" else "layers"
        raise PruneConfigError(
            f"cannot drop {n} with target {target!r}: the model has {available} candidate {what}; "
            f"n must be between 1 and {available - 1}"
        )


def drop(
    model,
    calibration: Calibration,
    *,
    target: str,
    n: int,
    iterative: bool = False,
    window: bool = False,
    batch_size: int = 8,
    base_model: str = "",
) -> PrunePlan:
    """Score on ``calibration``, drop ``n`` units of ``target`` from ``model`` in place, return the plan."""
    adapter = Adapter(model)
    num_layers = adapter.num_layers
    kinds = {"attn": ("attn",), "mlp": ("mlp",), "joint": ("attn", "mlp")}.get(target, ())
    already = sum(adapter.is_dropped(i, k) for i in range(num_layers) for k in kinds)
    validate_drop(num_layers, target, n, already)
    if window and target != "block":
        raise PruneConfigError("--window (consecutive blocks) only applies to target 'block'")
    params_before = param_count(model)
    ids = calibration.input_ids
    plan = PrunePlan(method="drop", base_model=base_model, family=adapter.spec.family, target=target,
                     calibration=calibration.describe(), seed=calibration.seed, params_before=params_before,
                     num_layers_before=num_layers, options={"iterative": iterative, "window": window})
    first = similarities(model, ids, batch_size=batch_size, window=n if window else 0)
    plan.scores = {**first.to_dict(), "metric": "mean cosine(input stream, output stream) over calibration tokens; "
                   "higher = less important"}

    if target == "block":
        if window:
            start = max(range(len(first.window)), key=lambda i: (first.window[i], -i))
            chosen = list(range(start, start + n))
            plan.dropped_blocks = chosen
            plan.scores["chosen_window"] = {"start": start, "similarity": first.window[start]}
            drop_blocks(adapter, chosen)
        elif not iterative:
            chosen = sorted(layer for _, layer, _ in rank_candidates(first, "block")[:n])
            plan.dropped_blocks = chosen
            drop_blocks(adapter, chosen)
        else:
            original = list(range(num_layers))
            sims, steps = first, []
            for step in range(n):
                sim, layer, _ = rank_candidates(sims, "block")[0]
                steps.append({"step": step, "block": original[layer], "similarity": sim})
                drop_blocks(adapter, [layer])
                del original[layer]
                if step + 1 < n:
                    sims = similarities(model, ids, batch_size=batch_size, desc=f"re-scoring ({step + 2}/{n})")
            plan.dropped_blocks = sorted(s["block"] for s in steps)
            plan.scores["iterative_steps"] = steps
    else:
        if not iterative:
            for sim, layer, kind in rank_candidates(first, target)[:n]:
                plan.dropped_sublayers.append({"layer": layer, "sublayer": kind, "similarity": sim})
                drop_sublayer(adapter, layer, kind)
        else:
            sims = first
            for step in range(n):
                sim, layer, kind = rank_candidates(sims, target)[0]
                plan.dropped_sublayers.append({"layer": layer, "sublayer": kind, "similarity": sim, "step": step})
                drop_sublayer(adapter, layer, kind)
                if step + 1 < n:
                    sims = similarities(model, ids, batch_size=batch_size, desc=f"re-scoring ({step + 2}/{n})")
        plan.dropped_sublayers.sort(key=lambda d: (d["layer"], d["sublayer"]))
    plan.params_after = param_count(model)
    return plan
