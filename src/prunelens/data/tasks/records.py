"""Record types every task loader returns, and the seeded subset every ``limit=`` takes."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MCExample", "GenExample", "RetrievalData", "select_subset"]


@dataclass
class MCExample:
    """A multiple-choice item in log-likelihood scoring form.

    Score continuation ``choices[i]`` given ``contexts[i]`` when ``contexts`` is not None, else given
    ``context``; the prediction is the argmax, ``label`` the correct index. :meth:`pairs` does this.
    """

    id: str
    context: str
    choices: list[str]
    label: int
    task: str
    meta: dict = field(default_factory=dict)
    contexts: list[str] | None = None

    def __post_init__(self) -> None:
        if not self.choices:
            raise ValueError(f"{self.task}/{self.id}: no choices")
        if not 0 <= self.label < len(self.choices):
            raise ValueError(
                f"{self.task}/{self.id}: label {self.label} out of range for {len(self.choices)} choices"
            )
        if self.contexts is not None and len(self.contexts) != len(self.choices):
            raise ValueError(
                f"{self.task}/{self.id}: {len(self.contexts)} contexts for {len(self.choices)} choices"
            )

    def pairs(self) -> list[tuple[str, str]]:
        """``(context, continuation)`` per choice, the requests a log-likelihood scorer evaluates."""
        ctxs = self.contexts if self.contexts is not None else [self.context] * len(self.choices)
        return list(zip(ctxs, self.choices))


@dataclass
class GenExample:
    """A generation item: ``prompt`` to complete, reference ``target`` (a string, or a list of accepted
    answers)."""

    id: str
    prompt: str
    target: str | list[str]
    task: str
    meta: dict = field(default_factory=dict)


@dataclass
class RetrievalData:
    """A BEIR-style retrieval set.

    ``corpus``: doc id -> ``{"title": str, "text": str}``; ``queries``: query id -> text;
    ``qrels``: query id -> {doc id: relevance (int)}.
    """

    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def select_subset(items: Sequence[Any], limit: int | None, seed: int = 0) -> list[Any]:
    """Deterministic seeded subset: ``sorted(random.Random(seed).sample(range(n), limit))``, in file order.

    ``limit=None`` or ``limit >= len(items)`` returns every item.
    """
    items = list(items)
    if limit is None:
        return items
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if limit >= len(items):
        return items
    idx = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in idx]
