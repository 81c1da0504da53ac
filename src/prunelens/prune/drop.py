"""Inter-layer pruning: drop the least important attention/MLP sublayers or whole blocks.

Targets: ``attn``, ``mlp``, ``joint`` (attention and MLP sublayers ranked together) and ``block``
(individual blocks, or with ``window=True`` the best window of ``n`` consecutive blocks). One-shot
scores once and drops the ``n`` most similar; iterative re-scores after every removal.
"""

from __future__ import annotations

from prunelens.data.calibration import Calibration
from prunelens.models.adapter import Adapter, drop_blocks, param_count
from prunelens.plan import DROP_TARGETS, PrunePlan
from prunelens.prune.choose import best_window, choose, count_dropped, drop_by_scores
from prunelens.prune.scoring import Similarities, similarities


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
    sims: Similarities | None = None,
    dry_run: bool = False,
) -> PrunePlan:
    """Score on ``calibration``, drop ``n`` units of ``target`` from ``model`` in place, return the plan.

    ``sims``: similarities already measured on this model and calibration (reused for the first ranking).
    ``dry_run``: return the plan a one-shot drop would make and leave ``model`` untouched (the analysis
    uses it to study a variant without a second copy of the weights).
    """
    adapter = Adapter(model)
    site = _DryRun(adapter) if dry_run else adapter
    num_layers = adapter.num_layers
    validate_drop(num_layers, target, n, count_dropped(adapter, target))
    if window and target != "block":
        raise PruneConfigError("--window (consecutive blocks) only applies to target 'block'")
    if dry_run and iterative:
        raise PruneConfigError("an iterative drop re-scores the pruned model, so it cannot be a dry run")
    ids = calibration.input_ids
    plan = PrunePlan(
        method="drop",
        base_model=base_model,
        family=adapter.spec.family,
        target=target,
        calibration=calibration.describe(),
        seed=calibration.seed,
        params_before=param_count(model),
        num_layers_before=num_layers,
        options={"iterative": iterative, "window": window},
    )
    first = (
        sims
        if sims is not None and (sims.window_size or 0) == (n if window else 0)
        else similarities(model, ids, batch_size=batch_size, window=n if window else 0)
    )
    plan.scores = {
        **first.to_dict(),
        "metric": "mean cosine(input stream, output stream) over calibration tokens; higher = less important",
    }
    rescore_step = [1]

    def rescore() -> dict:
        rescore_step[0] += 1
        return similarities(
            model, ids, batch_size=batch_size, desc=f"re-scoring ({rescore_step[0]}/{n})"
        ).by_kind()

    if target == "block":
        if window:
            start = best_window(first.window)
            chosen = list(range(start, start + n))
            plan.scores["chosen_window"] = {"start": start, "similarity": first.window[start]}
        elif not iterative:
            chosen = sorted(c.layer for c in choose(first.by_kind(), "block", n))
        else:
            original, scores, steps = list(range(num_layers)), first.by_kind(), []
            for step in range(n):
                c = choose(scores, "block", 1)[0]
                steps.append({"step": step, "block": original[c.layer], "similarity": c.score})
                drop_blocks(adapter, [c.layer])
                del original[c.layer]
                if step + 1 < n:
                    scores = rescore()
            chosen = sorted(s["block"] for s in steps)
            plan.scores["iterative_steps"] = steps
        plan.dropped_blocks = chosen
        if not iterative:
            site.drop_block_set(chosen)
    else:
        plan.dropped_sublayers = drop_by_scores(
            site, rescore, target, n, iterative=iterative, first=first.by_kind()
        )
    plan.params_after = plan.params_before - site.removed if dry_run else param_count(model)
    return plan


class _DryRun:
    """A :class:`~prunelens.prune.choose.DropSite` that records what would be dropped and its parameters."""

    def __init__(self, adapter: Adapter):
        self.adapter, self.removed, self.dropped = adapter, 0, set()

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers

    def is_dropped(self, layer: int, kind: str) -> bool:
        return (layer, kind) in self.dropped or self.adapter.is_dropped(layer, kind)

    def drop_unit(self, layer: int, kind: str) -> None:
        self.dropped.add((layer, kind))
        self.removed += sum(
            p.numel() for m in self.adapter.sublayer_modules(layer, kind) for p in m.parameters()
        )

    def drop_block_set(self, layers: list[int]) -> None:
        self.removed += sum(p.numel() for i in layers for p in self.adapter.layers[i].parameters())
