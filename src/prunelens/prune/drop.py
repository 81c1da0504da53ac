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
from prunelens.plan import DROP_TARGETS, PrunePlan
from prunelens.prune.choose import best_window, choose, count_dropped, drop_by_scores, kinds_for
from prunelens.prune.objectives import (
    ESTIMATORS,
    OBJECTIVES,
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
    objective: str = "hidden",
    temperature: float = 1.0,
    choices: ChoiceSet | None = None,
    search_budget: float | None = None,
    search_evaluations: int | None = None,
    estimator: str = "exact",
    seed: int = 0,
    score_windows: int | None = None,
) -> PrunePlan:
    """Score on ``calibration``, drop ``n`` units of ``target`` from ``model`` in place, return the plan.

    ``sims``: similarities already measured on this model and calibration (reused for the first ranking).
    ``dry_run``: return the plan a one-shot drop would make and leave ``model`` untouched (the analysis
    uses it to study a variant without a second copy of the weights).
    ``objective``: ``hidden`` (cosine), ``generation`` (KL at ``temperature`` on the calibration tokens)
    or ``choice`` (option KL on ``choices``); ``search_budget``: seconds of swap search after the
    selection (KL objectives only), seeded by ``seed``; ``search_evaluations``: stop the search after
    this many set evaluations instead (or as well) — a count, unlike seconds, reproduces on any machine.
    ``estimator``: ``exact`` counterfactual KL, or ``fisher`` (the generation objective's fast second-order
    estimate, every unit from one backward pass; iterative re-estimates on the reduced model).
    ``score_windows``: score (and search) on the first this many calibration windows only (the windows are
    drawn at seeded random offsets, so these are a seeded random subset; ``None``: all of them) — how an
    exact KL objective, which costs about a forward pass per candidate, fits a time budget. The plan
    records it (``options.score_windows``, and the scored tokens).
    """
    adapter = Adapter(model)
    site = _DryRun(adapter) if dry_run else adapter
    num_layers = adapter.num_layers
    validate_drop(num_layers, target, n, count_dropped(adapter, target))
    validate_objective(
        objective,
        window=window,
        choices=choices,
        search_budget=search_budget,
        search_evaluations=search_evaluations,
        estimator=estimator,
    )
    if window and target != "block":
        raise PruneConfigError("--window (consecutive blocks) only applies to target 'block'")
    calibration = _scored_windows(calibration, score_windows, objective)
    if objective != "hidden":
        return _drop_by_objective(
            model,
            site,
            calibration,
            target=target,
            n=n,
            iterative=iterative,
            batch_size=batch_size,
            base_model=base_model,
            objective=objective,
            temperature=temperature,
            choices=choices,
            search_budget=search_budget,
            search_evaluations=search_evaluations,
            estimator=estimator,
            seed=seed,
            dry_run=dry_run,
            score_windows=score_windows,
        )
    if dry_run and iterative:
        raise PruneConfigError("an iterative drop re-scores the pruned model, so it cannot be a dry run")
    ids = calibration.input_ids
    plan = _new_plan(
        model,
        adapter,
        calibration,
        target,
        base_model,
        {"iterative": iterative, "window": window, **_windows_option(score_windows)},
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


def validate_score_windows(
    score_windows: int | None,
    objective: str,
    nsamples: int,
    *,
    option: str = "score_windows",
    objective_option: str = "objective",
    nsamples_option: str | None = None,
) -> None:
    """Refuse a ``score_windows`` that cannot apply: with the choice objective (it scores on questions), not
    a positive count, or more than the ``nsamples`` calibration windows. The ``*_option`` names are how the
    caller spells the fields (the CLI: ``--score-windows``, ``--objective``, ``--nsamples``; without
    ``nsamples_option`` the limit reads "the N calibration windows")."""
    if score_windows is None:
        return
    if objective == "choice":
        raise PruneConfigError(
            f"{option} does not apply to {objective_option} choice "
            "(it scores on multiple-choice questions, not calibration windows)"
        )
    if isinstance(score_windows, bool) or not isinstance(score_windows, int) or score_windows < 1:
        raise PruneConfigError(f"{option} must be a positive number of windows (got {score_windows!r})")
    if score_windows > nsamples:
        limit = (
            f"the {nsamples} calibration windows"
            if nsamples_option is None
            else f"{nsamples_option} {nsamples}"
        )
        raise PruneConfigError(f"{option} {score_windows} exceeds {limit}")


def _scored_windows(calibration: Calibration, score_windows: int | None, objective: str) -> Calibration:
    """The calibration windows a drop is scored on: the first ``score_windows`` (all when ``None``)."""
    validate_score_windows(score_windows, objective, calibration.nsamples)
    if score_windows is None:
        return calibration
    return dataclasses.replace(calibration, input_ids=calibration.input_ids[:score_windows])


def _windows_option(score_windows: int | None) -> dict:
    return {} if score_windows is None else {"score_windows": score_windows}


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


def validate_objective(
    objective: str,
    *,
    window: bool = False,
    choices: ChoiceSet | None = None,
    search_budget: float | None = None,
    search_evaluations: int | None = None,
    estimator: str = "exact",
    need_choices: bool = True,
) -> None:
    """Refuse an unknown objective, a choice objective without questions and a budget ≤ 0, before any work.
    ``need_choices=False``: the caller builds the questions later (it checks that it can)."""
    if objective not in OBJECTIVES:
        raise PruneConfigError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if objective != "hidden" and window:
        raise PruneConfigError("--window (the best consecutive blocks by cosine) needs --objective hidden")
    if estimator not in ESTIMATORS:
        raise PruneConfigError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    if estimator == "fisher" and objective != "generation":
        raise PruneConfigError(
            "the Fisher estimate is of the generation objective's KL: use --objective generation"
        )
    if objective == "choice" and choices is None and need_choices:
        raise PruneConfigError("the choice objective needs multiple-choice questions to score on")
    if search_budget is not None:
        if not search_budget > 0:
            raise PruneConfigError(
                f"the search budget must be a positive number of seconds (got {search_budget})"
            )
        if objective == "hidden":
            raise PruneConfigError(
                "the budgeted search improves a set by its KL: use --objective generation or choice"
            )


def _drop_by_objective(
    model,
    site,
    calibration: Calibration,
    *,
    target: str,
    n: int,
    iterative: bool,
    batch_size: int,
    base_model: str,
    objective: str,
    temperature: float,
    choices: ChoiceSet | None,
    search_budget: float | None,
    search_evaluations: int | None,
    estimator: str,
    seed: int,
    dry_run: bool,
    score_windows: int | None = None,
) -> PrunePlan:
    """Choose by a KL objective: rank (one-shot or iterative) with exact counterfactual scores while the
    model is only *temporarily* changed, optionally improve the set by swaps, then drop it for real."""
    adapter = Adapter(model)
    kinds = kinds_for(target)
    ids = calibration.input_ids
    plan = _new_plan(
        model,
        adapter,
        calibration,
        target,
        base_model,
        {
            "iterative": iterative,
            "window": False,
            "objective": objective,
            "temperature": temperature,
            "estimator": estimator,
            **_windows_option(score_windows),
        },
    )

    def score(reference):
        if objective == "generation" and estimator == "fisher":
            est = fisher_kl_estimate(
                model, ids, kinds, temperature=temperature, batch_size=batch_size, seed=seed
            )
            searching = search_budget is not None or search_evaluations is not None
            if reference is None and searching:  # the search's fitness is exact: the dense distributions
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
    chosen: list[tuple[int, str]] = []
    kl_of: dict[tuple[int, str], float] = {}
    if not iterative:
        for c in choose(first.by_kind(), target, n):
            chosen.append((c.layer, c.kind))
            kl_of[(c.layer, c.kind)] = -c.score
    else:
        steps, scores = [], first
        for step in range(n):
            c = choose(scores.by_kind(), target, 1)[0]
            chosen.append((c.layer, c.kind))
            kl_of[(c.layer, c.kind)] = -c.score
            steps.append({"step": step, "layer": c.layer, "sublayer": c.kind, "kl": -c.score})
            if step + 1 < n:
                with temporarily_dropped(adapter, chosen):
                    scores, _ = score(reference)
        plan.scores["iterative_steps"] = steps
        plan.scores["iterative_seconds"] = time.perf_counter() - t0
    if search_budget is not None or search_evaluations is not None:
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
            budget=search_budget,
            max_evaluations=search_evaluations,
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
