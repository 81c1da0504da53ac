"""The shape every evaluator returns: aggregate metrics plus one record per example."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TaskResult:
    """Result of one task on one model.

    ``metrics`` maps metric names to numbers (the task's headline metric is ``main_metric``);
    ``records`` holds one JSON-serialisable dict per example with at least ``id``, ``prompt``,
    ``target``, ``prediction`` and ``score`` (generation tasks add ``text``, the raw output).
    """

    task: str
    kind: str  # "mc" | "gen" | "retrieval" | "ppl"
    main_metric: str
    metrics: dict[str, float]
    records: list[dict[str, Any]] = field(default_factory=list)
    n: int = 0
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return float(self.metrics[self.main_metric])

    def summary(self) -> dict[str, Any]:
        """Everything but the per-example records."""
        d = asdict(self)
        d.pop("records")
        return d
