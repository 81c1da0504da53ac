"""Choosing what to drop: one pure rule from per-unit scores to the units removed.

Every way of dropping (decoder sublayers and blocks, encoder sublayers, the analysis's "what would be
dropped" plans) goes through :func:`choose`, so the ranking, its tie-break and the meaning of a target
are defined once. Scores are *droppability*: higher means safer to remove (the cosine between a unit's
input and output stream is one; an objective where lower is better is negated before it gets here).

A site that can be pruned (the decoder :class:`~prunelens.models.adapter.Adapter`, the encoder
adapter) implements :class:`DropSite`; :func:`drop_by_scores` runs the one-shot or iterative loop on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

#: target -> the unit kinds it ranks (joint ranks attention and MLP sublayers together)
TARGET_KINDS: dict[str, tuple[str, ...]] = {
    "attn": ("attn",),
    "mlp": ("mlp",),
    "joint": ("attn", "mlp"),
    "block": ("block",),
}

Scores = Mapping[str, Sequence[float | None]]  # kind -> per-layer droppability (None: not a candidate)


@dataclass(frozen=True)
class Candidate:
    """One unit that could be dropped, with its score (higher = more droppable)."""

    score: float
    layer: int
    kind: str


def kinds_for(target: str) -> tuple[str, ...]:
    """The unit kinds a drop target ranks; a clear error for an unknown target."""
    if target not in TARGET_KINDS:
        raise ValueError(f"unknown drop target {target!r}; choose one of {', '.join(TARGET_KINDS)}")
    return TARGET_KINDS[target]


def rank(scores: Scores, target: str) -> list[Candidate]:
    """Every candidate of ``target``, most droppable first;
    ties broken by layer, then kind (deterministic)."""
    cands = [
        Candidate(float(v), layer, kind)
        for kind in kinds_for(target)
        for layer, v in enumerate(scores[kind])
        if v is not None
    ]
    return sorted(cands, key=lambda c: (-c.score, c.layer, c.kind))


def choose(scores: Scores, target: str, n: int) -> list[Candidate]:
    """The ``n`` most droppable units of ``target`` (in rank order)."""
    if n <= 0:
        raise ValueError(f"the number to drop must be positive (got {n})")
    ranked = rank(scores, target)
    if n > len(ranked):
        raise ValueError(f"cannot choose {n} units of {target!r}: only {len(ranked)} candidates")
    return ranked[:n]


def best_window(window_scores: Sequence[float]) -> int:
    """Start of the most droppable window of consecutive blocks (the earliest one on a tie)."""
    if not window_scores:
        raise ValueError("no window of that many consecutive blocks fits the model")
    return max(range(len(window_scores)), key=lambda i: (window_scores[i], -i))


class DropSite(Protocol):
    """What :func:`drop_by_scores` needs of a model:
    its layers, which units are gone, and a way to drop one."""

    @property
    def num_layers(self) -> int: ...

    def is_dropped(self, layer: int, kind: str) -> bool: ...

    def drop_unit(self, layer: int, kind: str) -> None: ...


def count_dropped(site: DropSite, target: str) -> int:
    """How many units of ``target``'s kinds are already dropped (blocks count none: they are removed)."""
    kinds = tuple(k for k in kinds_for(target) if k != "block")
    return sum(site.is_dropped(i, k) for i in range(site.num_layers) for k in kinds)


def drop_by_scores(
    site: DropSite,
    score: Callable[[], Scores],
    target: str,
    n: int,
    *,
    iterative: bool = False,
    first: Scores | None = None,
    on_rescore: Callable[[int], None] | None = None,
) -> list[dict]:
    """Drop ``n`` sublayers of ``target`` from ``site`` in place; returns the plan entries, sorted by layer.

    One-shot ranks ``first`` (or ``score()``) once and drops the top ``n``; iterative drops the top one,
    calls ``score()`` again on the changed model, and repeats, so interactions between removals count.
    Each entry is ``{"layer", "sublayer", "similarity"[, "step"]}``, the plan's published form.
    """
    scores = first if first is not None else score()
    entries: list[dict] = []
    for step in range(n if iterative else 1):
        for c in choose(scores, target, 1 if iterative else n):
            entry = {"layer": c.layer, "sublayer": c.kind, "similarity": c.score}
            if iterative:
                entry["step"] = step
            entries.append(entry)
            site.drop_unit(c.layer, c.kind)
        if iterative and step + 1 < n:
            if on_rescore is not None:
                on_rescore(step + 2)
            scores = score()
    return sorted(entries, key=lambda d: (d["layer"], d["sublayer"]))
