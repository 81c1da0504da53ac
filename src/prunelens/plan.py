"""The prune plan: what was pruned, how, and why — data, saved as ``prune_plan.json`` beside a checkpoint.

A plan is human-readable JSON and is enough to recreate a *dropped* model from its dense parent
without a second copy of the weights (:func:`apply_structure`). For sparsified models the plan
records the method, pattern, calibration and achieved sparsity; the zeros live in the weights.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prunelens import __version__
from prunelens.models.adapter import Adapter, drop_blocks, drop_sublayer

PLAN_FILE = "prune_plan.json"
PLAN_FORMAT = "prunelens.plan/1"

DROP_TARGETS = ("attn", "mlp", "block", "joint")
SPARSE_METHODS = ("magnitude", "wanda", "sparsegpt")


@dataclass
class PrunePlan:
    """Everything needed to understand (and, for drops, re-apply) a pruning."""

    method: str  # "drop" | "magnitude" | "wanda" | "sparsegpt"
    base_model: str
    family: str
    target: str | None = None  # drop target: attn | mlp | block | joint
    # dropped sublayers as {"layer": i, "sublayer": "attn"|"mlp"}; indices of the *dense* model
    dropped_sublayers: list[dict[str, Any]] = field(default_factory=list)
    # dropped whole blocks (indices of the dense model)
    dropped_blocks: list[int] = field(default_factory=list)
    # sparsification: {"sparsity": 0.5} or {"pattern": "2:4"}, plus achieved sparsity per group
    sparsity: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    params_before: int | None = None
    params_after: int | None = None
    num_layers_before: int | None = None
    prunelens_version: str = __version__
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    format: str = PLAN_FORMAT

    @property
    def is_drop(self) -> bool:
        return self.method == "drop"

    @property
    def name(self) -> str:
        """Short label in the paper's style, e.g. ``Drop-8A``, ``Drop-4M``, ``Drop-2B``, ``Wanda-50%``."""
        if self.is_drop:
            if self.dropped_blocks:
                return f"Drop-{len(self.dropped_blocks)}B"
            kinds = {d["sublayer"] for d in self.dropped_sublayers}
            letter = "A" if kinds == {"attn"} else "M" if kinds == {"mlp"} else "J"
            return f"Drop-{len(self.dropped_sublayers)}{letter}"
        pattern = self.sparsity.get("pattern")
        label = {"magnitude": "Magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT"}.get(self.method, self.method)
        if pattern:
            return f"{label}-{pattern}"
        return f"{label}-{round(100 * float(self.sparsity.get('sparsity', 0)))}%"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / PLAN_FILE
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PrunePlan":
        fmt = data.get("format", PLAN_FORMAT)
        if fmt != PLAN_FORMAT:
            raise ValueError(f"unsupported prune plan format {fmt!r} (this prunelens reads {PLAN_FORMAT!r})")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, path: str | Path) -> "PrunePlan":
        path = Path(path)
        if path.is_dir():
            path = path / PLAN_FILE
        return cls.from_dict(json.loads(path.read_text()))


def apply_structure(model, plan: PrunePlan) -> None:
    """Apply a drop plan's structural changes to ``model`` in place (a dense model of the same family).

    Sublayer drops replace the sublayers with parameter-free no-ops; block drops remove the blocks.
    Sparsification plans change no structure (their zeros are in the weights) and are ignored here.
    """
    if not plan.is_drop:
        return
    adapter = Adapter(model)
    if plan.num_layers_before is not None and adapter.num_layers != plan.num_layers_before:
        raise ValueError(
            f"the plan was made for a model with {plan.num_layers_before} layers; this one has {adapter.num_layers}"
        )
    for item in plan.dropped_sublayers:
        drop_sublayer(adapter, int(item["layer"]), item["sublayer"])
    if plan.dropped_blocks:
        drop_blocks(adapter, [int(i) for i in plan.dropped_blocks])
