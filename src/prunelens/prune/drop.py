"""Inter-layer pruning: drop the least important attention/MLP sublayers or whole blocks.

Targets: ``attn``, ``mlp``, ``joint`` (attention and MLP sublayers ranked together) and ``block``
(individual blocks, or with ``window=True`` the best window of ``n`` consecutive blocks). One-shot
scores once and drops the ``n`` most droppable; iterative re-scores after every removal.

Objectives (what "droppable" means): ``hidden`` — the cosine between a unit's input and output stream
(LLM-Drop's / ShortGPT's rule, unchanged); ``generation`` — the exact counterfactual KL of the
next-token distributions on the calibration tokens; ``choice`` — the KL of the option distribution on
lettered multiple-choice questions (:mod:`prunelens.prune.objectives`). With a KL objective a budgeted
search can then improve the chosen set by swaps (``search_budget`` seconds), its fitness the KL of the
whole set.
"""

from __future__ import annotations

import dataclasses
import random
import time

from prunelens.data.calibration import Calibration
from prunelens.models.adapter import Adapter, drop_blocks, param_count
from prunelens.plan import PrunePlan
from prunelens.prune.choose import best_window, choose, count_dropped, drop_by_scores, kinds_for
from prunelens.prune.objectives import (
    ChoiceSet,
    candidates,
    choice_divergence,
    choice_set_kl,
    counterfactual_kl,
    dense_reference,
    fisher_kl_estimate,
    set_kl,
    temporarily_dropped,
)
from prunelens.prune.scoring import Similarities, similarities
from prunelens.prune.specs import DropSpec, PruneConfigError

__all__ = ["PruneConfigError", "drop"]  # PruneConfigError: where callers have always imported it from


def drop(
    model,
    calibration: Calibration,
    spec: DropSpec | None = None,
    *,
    batch_size: int = 8,
    base_model: str = "",
    sims: Similarities | None = None,
    dry_run: bool = False,
    choices: ChoiceSet | None = None,
    seed: int = 0,
    **fields,
) -> PrunePlan:
    """Score on ``calibration``, drop the units ``spec`` asks for from ``model`` in place, return the plan.

    ``spec``: a :class:`~prunelens.prune.specs.DropSpec`, or its fields as keywords (``target=``, ``n=``,
    ``objective=``, ...); it is checked against the model and the calibration before any work.
    ``sims``: similarities already measured on this model and calibration (reused for the first ranking).
    ``dry_run``: return the plan a one-shot drop would make and leave ``model`` untouched (the analysis
    uses it to study a variant without a second copy of the weights).
    ``choices``: the choice objective's questions (:func:`prunelens.analysis.subspace.choice_set`).
    ``seed``: seeds the swap search. The scored windows (``score_windows``) are the first K of the
    calibration, which draws its windows at seeded random offsets: a seeded random subset.
    """
    if spec is None:
        spec = DropSpec(**fields)
    elif fields:
        raise TypeError(f"give a DropSpec or its fields, not both (got {sorted(fields)})")
    adapter = Adapter(model)
    site = _DryRun(adapter) if dry_run else adapter
    spec.check(
        nsamples=calibration.nsamples,
        num_layers=adapter.num_layers,
        already_dropped=count_dropped(adapter, spec.target),
    )
    if spec.objective == "choice" and choices is None:
        raise PruneConfigError("the choice objective needs multiple-choice questions to score on")
    if spec.score_windows is not None:
        calibration = dataclasses.replace(calibration, input_ids=calibration.input_ids[: spec.score_windows])
    if spec.objective != "hidden":
        return _drop_by_objective(
            model, site, calibration, spec, batch_size, base_model, choices, seed, dry_run
        )
    if dry_run and spec.iterative:
        raise PruneConfigError("an iterative drop re-scores the pruned model, so it cannot be a dry run")
    plan = _new_plan(model, adapter, calibration, spec.target, base_model, spec.plan_options())
    n, window = spec.n, spec.window
    first = (
        sims
        if sims is not None and (sims.window_size or 0) == (n if window else 0)
        else similarities(model, calibration.input_ids, batch_size=batch_size, window=n if window else 0)
    )
    plan.scores = {
        **first.to_dict(),
        "metric": "mean cosine(input stream, output stream) over calibration tokens; higher = less important",
    }
    rescore_step = [1]

    def rescore() -> dict:
        rescore_step[0] += 1
        return similarities(
            model, calibration.input_ids, batch_size=batch_size, desc=f"re-scoring ({rescore_step[0]}/{n})"
        ).by_kind()

    if spec.target == "block":
        _drop_blocks_by_cosine(adapter, site, plan, spec, first, rescore)
    else:
        plan.dropped_sublayers = drop_by_scores(
            site, rescore, spec.target, n, iterative=spec.iterative, first=first.by_kind()
        )
    plan.params_after = plan.params_before - site.removed if dry_run else param_count(model)
    return plan


def _drop_blocks_by_cosine(adapter: Adapter, site, plan: PrunePlan, spec: DropSpec, first, rescore) -> None:
    """Whole blocks by cosine: the best window, the ``n`` best one-shot, or one at a time re-scored."""
    n = spec.n
    if spec.window:
        start = best_window(first.window)
        chosen = list(range(start, start + n))
        plan.scores["chosen_window"] = {"start": start, "similarity": first.window[start]}
    elif not spec.iterative:
        chosen = sorted(c.layer for c in choose(first.by_kind(), "block", n))
    else:
        original, scores, steps = list(range(adapter.num_layers)), first.by_kind(), []
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
    if not spec.iterative:
        site.drop_block_set(chosen)


def _new_plan(model, adapter: Adapter, calibration: Calibration, target: str, base_model: str, options: dict):
    """The drop plan before anything is chosen: what was pruned from, on which calibration, how."""
    return PrunePlan(
        method="drop",
        base_model=base_model,
        family=adapter.spec.family,
        target=target,
        calibration=calibration.describe(),
        seed=calibration.seed,
        params_before=param_count(model),
        num_layers_before=adapter.num_layers,
        options=options,
    )


def _drop_by_objective(
    model,
    site,
    calibration: Calibration,
    spec: DropSpec,
    batch_size: int,
    base_model: str,
    choices: ChoiceSet | None,
    seed: int,
    dry_run: bool,
) -> PrunePlan:
    """Choose by a KL objective: rank (one-shot or iterative) with exact counterfactual scores while the
    model is only *temporarily* changed, optionally improve the set by swaps, then drop it for real."""
    adapter = Adapter(model)
    target, objective, temperature = spec.target, spec.objective, spec.temperature
    kinds = kinds_for(target)
    ids = calibration.input_ids
    plan = _new_plan(model, adapter, calibration, target, base_model, spec.plan_options())

    def score(reference):
        if objective == "generation" and spec.estimator == "fisher":
            est = fisher_kl_estimate(
                model, ids, kinds, temperature=temperature, batch_size=batch_size, seed=seed
            )
            if reference is None and spec.searching:  # the search's fitness is exact: the dense distributions
                reference = dense_reference(model, ids, temperature=temperature, batch_size=batch_size)
            return est, reference
        if objective == "generation":
            return counterfactual_kl(
                model, ids, kinds, temperature=temperature, batch_size=batch_size, reference=reference
            )
        assert choices is not None
        return choice_divergence(model, choices, kinds, temperature=temperature, reference=reference)

    t0 = time.perf_counter()
    first, reference = score(None)
    plan.scores = {**first.to_dict(), "seconds": time.perf_counter() - t0}
    if choices is not None and objective == "choice":
        plan.scores["choice_data"] = choices.source
    plan.scores["metric"] = (
        f"mean KL(dense ‖ without the unit) of the {'next-token' if objective == 'generation' else 'option'} "
        "distribution; lower = less important"
    )
    chosen, kl_of = _rank_by_objective(adapter, plan, spec, first, score, reference, t0)
    if spec.searching:
        chosen, record = _swap_search(
            model,
            adapter,
            chosen,
            kinds,
            target,
            reference,
            objective,
            ids,
            choices,
            temperature=temperature,
            batch_size=batch_size,
            budget=spec.search_budget,
            max_evaluations=spec.search_evaluations,
            seed=seed,
        )
        plan.scores["search"] = record
    if target == "block":
        plan.dropped_blocks = sorted(layer for layer, _ in chosen)
        site.drop_block_set(plan.dropped_blocks)
    else:
        entries = []
        for layer, kind in sorted(chosen):
            entries.append({"layer": layer, "sublayer": kind, "kl": kl_of.get((layer, kind))})
            site.drop_unit(layer, kind)
        plan.dropped_sublayers = entries
    plan.params_after = plan.params_before - site.removed if dry_run else param_count(model)
    return plan


def _rank_by_objective(adapter: Adapter, plan: PrunePlan, spec: DropSpec, first, score, reference, t0):
    """The ``n`` units with the lowest KL: at once, or one at a time re-scored with the chosen ones
    temporarily dropped. Returns the units and their KL."""
    chosen: list[tuple[int, str]] = []
    kl_of: dict[tuple[int, str], float] = {}
    if not spec.iterative:
        for c in choose(first.by_kind(), spec.target, spec.n):
            chosen.append((c.layer, c.kind))
            kl_of[(c.layer, c.kind)] = -c.score
        return chosen, kl_of
    steps, scores = [], first
    for step in range(spec.n):
        c = choose(scores.by_kind(), spec.target, 1)[0]
        chosen.append((c.layer, c.kind))
        kl_of[(c.layer, c.kind)] = -c.score
        steps.append({"step": step, "layer": c.layer, "sublayer": c.kind, "kl": -c.score})
        if step + 1 < spec.n:
            with temporarily_dropped(adapter, chosen):
                scores, _ = score(reference)
    plan.scores["iterative_steps"] = steps
    plan.scores["iterative_seconds"] = time.perf_counter() - t0
    return chosen, kl_of


def _swap_search(
    model,
    adapter: Adapter,
    chosen: list[tuple[int, str]],
    kinds: tuple[str, ...],
    target: str,
    reference,
    objective: str,
    ids,
    choices: ChoiceSet | None,
    *,
    temperature: float,
    batch_size: int,
    budget: float | None,
    max_evaluations: int | None,
    seed: int,
) -> tuple[list[tuple[int, str]], dict]:
    """Improve ``chosen`` by single swaps (one unit out, one candidate in, drawn at random with ``seed``),
    keeping a swap when the KL of the whole set drops, until ``budget`` seconds have passed. In the
    spirit of EvoPress, which searches layer-drop sets with a KL fitness; interactions between removals
    count here, which one-shot scores ignore."""

    def fitness(units: list[tuple[int, str]]) -> float:
        with temporarily_dropped(adapter, units):
            if objective == "generation":
                return set_kl(model, ids, reference, temperature=temperature, batch_size=batch_size)
            assert choices is not None
            return choice_set_kl(model, choices, reference, temperature=temperature)

    t0 = time.perf_counter()
    pool = candidates(adapter, kinds)
    rng = random.Random(seed)
    current = list(chosen)
    start = best = fitness(current)
    evaluations, accepted = 1, []
    outside = [u for u in pool if u not in current]

    def more() -> bool:
        if budget is not None and time.perf_counter() - t0 >= budget:
            return False
        return max_evaluations is None or evaluations < max_evaluations

    while outside and more():
        out_unit, in_unit = rng.choice(current), rng.choice(outside)
        trial = [u for u in current if u != out_unit] + [in_unit]
        f = fitness(trial)
        evaluations += 1
        if f < best:
            accepted.append({"out": list(out_unit), "in": list(in_unit), "kl": f, "evaluation": evaluations})
            best, current = f, trial
            outside = [u for u in pool if u not in current]
    return current, {
        "budget_seconds": budget,
        "max_evaluations": max_evaluations,
        "seconds": time.perf_counter() - t0,
        "evaluations": evaluations,
        "kl_before": start,
        "kl_after": best,
        "accepted_swaps": accepted,
        "seed": seed,
        "fitness": "mean KL(dense ‖ pruned) of the whole set on the scoring data",
    }


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
