"""The prune plan: what was pruned, how, and why — data, saved as ``prune_plan.json`` beside a checkpoint.

A plan is plain data at the bottom of the package (it imports nothing from models or pruning), as
human-readable JSON that is enough to recreate a *dropped* model from its dense parent without a second
copy of the weights (:func:`prunelens.models.adapter.apply_structure` applies it). For sparsified models
the plan records the method, pattern, calibration and achieved sparsity; the zeros live in the weights.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from prunelens import __version__
from prunelens.utils.artifacts import ArtifactError, read_json

PLAN_FILE = "prune_plan.json"
PLAN_FORMAT = "prunelens.plan/1"

SUBLAYERS = ("attn", "mlp")
DROP_TARGETS = ("attn", "mlp", "block", "joint")
SPARSE_METHODS = ("magnitude", "wanda", "sparsegpt")
#: the method of a plan whose model was only quantized (a pruned model quantized keeps its method)
QUANTIZE_METHOD = "quantize"
#: per-block sparsity allocation rules (:mod:`prunelens.prune.allocation`); a plan without
#: ``sparsity.allocation`` is uniform
ALLOCATIONS = ("uniform", "owl", "kl")


@dataclass
class PrunePlan:
    """Everything needed to understand (and, for drops, re-apply) a pruning."""

    method: str  # "drop" | "magnitude" | "wanda" | "sparsegpt" | "quantize"
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
    # a repair after pruning (``prunelens repair``): loss, temperature, steps, tokens, learning rate, LoRA
    # rank, teacher, held-out KL before/after; empty when the weights are as pruning left them
    repair: dict[str, Any] = field(default_factory=dict)
    # a weight quantization (after any pruning; ``prunelens quantize``): its spec, label, scope, the
    # number of tensors and the library versions; empty when the weights are not quantized
    quantization: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    params_before: int | None = None
    params_after: int | None = None
    num_layers_before: int | None = None
    prunelens_version: str = __version__
    created: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )
    format: str = PLAN_FORMAT

    @property
    def is_drop(self) -> bool:
        return self.method == "drop"

    @property
    def name(self) -> str:
        """Short label in the paper's style, e.g. ``Drop-8A``, ``Drop-4M``, ``Drop-2B``, ``Wanda-50%``;
        a quantization follows as ``+Q4_0`` (alone: ``Q4_0``)."""
        quant = str(self.quantization.get("label", "")) if self.quantization else ""
        if self.method == QUANTIZE_METHOD:
            return quant + self._repair_suffix()
        return self._pruning_name() + (f"+{quant}" if quant else "")

    def _pruning_name(self) -> str:
        if self.is_drop:
            if self.dropped_blocks:
                return f"Drop-{len(self.dropped_blocks)}B" + self._repair_suffix()
            kinds = {d["sublayer"] for d in self.dropped_sublayers}
            letter = "A" if kinds == {"attn"} else "M" if kinds == {"mlp"} else "J"
            return f"Drop-{len(self.dropped_sublayers)}{letter}" + self._repair_suffix()
        pattern = self.sparsity.get("pattern")
        label = {"magnitude": "Magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT"}.get(
            self.method, self.method
        )
        base = (
            f"{label}-{pattern}"
            if pattern
            else f"{label}-{round(100 * float(self.sparsity.get('sparsity', 0)))}%"
        )
        return base + self._repair_suffix()

    def _repair_suffix(self) -> str:
        """``+KL``, ``+CE``, ... after a repair (the loss it was repaired with)."""
        return f"+{str(self.repair['loss']).upper()}" if self.repair.get("loss") else ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / PLAN_FILE
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path = PLAN_FILE) -> PrunePlan:
        """A plan from its JSON form, every field checked (:class:`PlanError` names the first bad one)."""
        _check_fields(data, Path(source))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, path: str | Path) -> PrunePlan:
        path = Path(path)
        if path.is_dir():
            path = path / PLAN_FILE
        return cls.from_dict(read_json(path), source=path)

    def check_against(
        self, *, model_type: str | None, num_layers: int, source: str | Path = PLAN_FILE
    ) -> None:
        """Check the plan fits the checkpoint it sits beside (``config.json``'s family and layer count).

        ``num_layers`` is the layer count of the saved model: the dense count for sublayer drops and
        sparsity, fewer by the dropped blocks for block drops.
        """
        source = Path(source)
        if model_type is not None and not self.options.get("encoder") and self.family != model_type:
            raise PlanError(
                source, f"is {self.family!r} but the checkpoint's config is {model_type!r}", "family"
            )
        dense = num_layers + len(self.dropped_blocks)
        if self.num_layers_before is not None and self.num_layers_before != dense:
            raise PlanError(
                source,
                f"is {self.num_layers_before}, but the checkpoint has {num_layers} layers"
                + (f" after dropping {len(self.dropped_blocks)} blocks" if self.dropped_blocks else ""),
                "num_layers_before",
            )
        for i, item in enumerate(self.dropped_sublayers):
            if item["layer"] >= dense:
                raise PlanError(
                    source,
                    f"names layer {item['layer']} of a {dense}-layer model",
                    f"dropped_sublayers[{i}].layer",
                )
        for i, layer in enumerate(self.dropped_blocks):
            if layer >= dense:
                raise PlanError(
                    source, f"names block {layer} of a {dense}-layer model", f"dropped_blocks[{i}]"
                )


class PlanError(ArtifactError):
    """A ``prune_plan.json`` that is malformed or does not fit its checkpoint."""


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_fields(data: Any, source: Path) -> None:
    """Validate the JSON form of a plan field by field, before anything uses it."""
    if not isinstance(data, dict):
        raise PlanError(source, "a prune plan must be a JSON object")
    fmt = data.get("format", PLAN_FORMAT)
    if fmt != PLAN_FORMAT:
        raise PlanError(source, f"is {fmt!r}; this prunelens reads {PLAN_FORMAT!r}", "format")
    methods = ("drop",) + SPARSE_METHODS + (QUANTIZE_METHOD,)
    method = data.get("method")
    if method not in methods:
        raise PlanError(source, f"is {method!r}; expected one of {', '.join(methods)}", "method")
    if not isinstance(data.get("base_model"), str):
        raise PlanError(
            source, f"must be a string (the dense model's spec; got {data.get('base_model')!r})", "base_model"
        )
    if not isinstance(data.get("family"), str) or not data["family"]:
        raise PlanError(
            source, f"must be the model family, e.g. 'llama' (got {data.get('family')!r})", "family"
        )
    target = data.get("target")
    if method == "drop" and target not in DROP_TARGETS:
        raise PlanError(
            source, f"is {target!r}; a drop plan needs one of {', '.join(DROP_TARGETS)}", "target"
        )
    for key in ("num_layers_before", "params_before", "params_after"):
        v = data.get(key)
        if v is not None and not (_is_int(v) and v > 0):
            raise PlanError(source, f"must be a positive integer or null (got {v!r})", key)
    if data.get("seed") is not None and not _is_int(data["seed"]):
        raise PlanError(source, f"must be an integer or null (got {data['seed']!r})", "seed")
    for key in ("sparsity", "scores", "calibration", "options", "repair", "quantization"):
        if not isinstance(data.get(key, {}), dict):
            raise PlanError(source, "must be a JSON object", key)
    _check_repair(data.get("repair", {}), source)
    quant = data.get("quantization", {})
    if (method == QUANTIZE_METHOD or quant) and not isinstance(quant.get("label"), str):
        raise PlanError(source, "must record the quantization's label (e.g. 'Q4_0')", "quantization.label")
    _check_drops(data, method, source)
    if method in SPARSE_METHODS:
        _check_sparsity(data.get("sparsity", {}), data.get("num_layers_before"), source)


def _check_layer(layer: Any, n: Any, source: Path, where: str) -> None:
    if not _is_int(layer) or layer < 0 or (n is not None and layer >= n):
        bound = f"[0, {n})" if n is not None else "a non-negative integer"
        raise PlanError(source, f"is {layer!r}; must be in {bound}", where)


def _check_drops(data: dict[str, Any], method: Any, source: Path) -> None:
    """``dropped_sublayers`` and ``dropped_blocks``: in range, none twice, not every block."""
    n = data.get("num_layers_before")
    subs = data.get("dropped_sublayers", [])
    if not isinstance(subs, list):
        raise PlanError(
            source, 'must be a list of {"layer": int, "sublayer": "attn"|"mlp"}', "dropped_sublayers"
        )
    seen = set()
    for i, item in enumerate(subs):
        where = f"dropped_sublayers[{i}]"
        if not isinstance(item, dict):
            raise PlanError(source, "must be an object with 'layer' and 'sublayer'", where)
        layer, kind = item.get("layer"), item.get("sublayer")
        _check_layer(layer, n, source, f"{where}.layer")
        if kind not in SUBLAYERS:
            raise PlanError(
                source, f"is {kind!r}; expected one of {', '.join(SUBLAYERS)}", f"{where}.sublayer"
            )
        if (layer, kind) in seen:
            raise PlanError(source, f"names {kind}@{layer} twice", where)
        seen.add((layer, kind))
    blocks = data.get("dropped_blocks", [])
    if not isinstance(blocks, list):
        raise PlanError(source, "must be a list of block indices", "dropped_blocks")
    for i, layer in enumerate(blocks):
        _check_layer(layer, n, source, f"dropped_blocks[{i}]")
    if len(set(blocks)) != len(blocks):
        raise PlanError(source, "names a block twice", "dropped_blocks")
    if n is not None and blocks and len(blocks) >= n:
        raise PlanError(source, f"drops all {n} blocks", "dropped_blocks")
    if method == "drop" and not subs and not blocks:
        raise PlanError(
            source, "a drop plan must name at least one dropped sublayer or block", "dropped_sublayers"
        )


def _check_sparsity(sparsity: dict[str, Any], n: Any, source: Path) -> None:
    """A sparsity plan's ``sparsity``: an unstructured fraction or an N:M pattern, and its allocation."""
    if "sparsity" not in sparsity and "pattern" not in sparsity:
        raise PlanError(source, "a sparsity plan needs 'sparsity' or 'pattern'", "sparsity")
    if "sparsity" in sparsity:
        v = sparsity["sparsity"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise PlanError(source, f"is {v!r}; must be a number in [0, 1)", "sparsity.sparsity")
    if "pattern" in sparsity and sparsity["pattern"] is not None:
        pat = sparsity["pattern"]
        parts = pat.split(":") if isinstance(pat, str) else []
        if len(parts) != 2 or not all(p.isdigit() for p in parts) or not 0 < int(parts[0]) < int(parts[1]):
            raise PlanError(source, f"is {pat!r}; must be N:M with 0 < N < M (e.g. 2:4)", "sparsity.pattern")
    if "allocation" in sparsity:
        _check_allocation(sparsity, n, source)


REPAIR_LOSSES = ("kl", "reverse-kl", "jsd", "ce")


def _check_repair(repair: dict[str, Any], source: Path) -> None:
    """``repair``: empty, or the record of a repair (loss, steps, tokens, learning rate, teacher)."""
    if not repair:
        return
    if repair.get("loss") not in REPAIR_LOSSES:
        raise PlanError(
            source, f"is {repair.get('loss')!r}; expected one of {', '.join(REPAIR_LOSSES)}", "repair.loss"
        )
    for key in ("steps", "steps_run", "tokens"):
        v = repair.get(key)
        if not (_is_int(v) and v >= 0):
            raise PlanError(source, f"must be a non-negative integer (got {v!r})", f"repair.{key}")
    lr = repair.get("learning_rate")
    if lr is None or not _is_number(lr) or lr <= 0:
        raise PlanError(source, f"must be a positive number (got {lr!r})", "repair.learning_rate")
    if not isinstance(repair.get("teacher"), str) or not repair["teacher"]:
        raise PlanError(
            source, f"must name the teacher model (got {repair.get('teacher')!r})", "repair.teacher"
        )


def _is_number(v: Any) -> TypeGuard[float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_allocation(sparsity: dict[str, Any], n: int | None, source: Path) -> None:
    """``sparsity.allocation``: the rule, its lambda, and per block the sparsity, score and weight count,
    whose weighted mean must be the plan's sparsity."""
    where = "sparsity.allocation"
    alloc = sparsity["allocation"]
    if not isinstance(alloc, dict):
        raise PlanError(source, "must be a JSON object {rule, lambda, by_block, scores, block_params}", where)
    rule = alloc.get("rule")
    if rule not in ALLOCATIONS:
        raise PlanError(source, f"is {rule!r}; expected one of {', '.join(ALLOCATIONS)}", f"{where}.rule")
    if rule == "uniform":
        return
    if sparsity.get("pattern") is not None or "sparsity" not in sparsity:
        raise PlanError(source, f"{rule!r} needs an unstructured sparsity; N:M patterns stay uniform", where)
    lam = alloc.get("lambda")
    if not (_is_number(lam) and 0 <= lam < 1):
        raise PlanError(source, f"is {lam!r}; must be a number in [0, 1)", f"{where}.lambda")
    lists = {}
    for key in ("by_block", "scores", "block_params"):
        v = alloc.get(key)
        if not isinstance(v, list) or not v:
            raise PlanError(source, "must be a non-empty list with one entry per block", f"{where}.{key}")
        if n is not None and len(v) != n:
            raise PlanError(source, f"has {len(v)} entries for a {n}-block model", f"{where}.{key}")
        lists[key] = v
    if len({len(v) for v in lists.values()}) != 1:
        raise PlanError(source, "by_block, scores and block_params must have one entry per block", where)
    for i, s in enumerate(lists["by_block"]):
        if not (_is_number(s) and 0 <= s < 1):
            raise PlanError(source, f"is {s!r}; must be a number in [0, 1)", f"{where}.by_block[{i}]")
    for i, x in enumerate(lists["scores"]):
        if not _is_number(x):
            raise PlanError(source, f"is {x!r}; must be a finite number", f"{where}.scores[{i}]")
    for i, p in enumerate(lists["block_params"]):
        if not (_is_int(p) and p > 0):
            raise PlanError(source, f"is {p!r}; must be a positive integer", f"{where}.block_params[{i}]")
    for key in ("score", "map"):
        if key in alloc and not isinstance(alloc[key], str):
            raise PlanError(source, f"must be a string (got {alloc[key]!r})", f"{where}.{key}")
    if "tokens" in alloc and not (_is_int(alloc["tokens"]) and alloc["tokens"] > 0):
        raise PlanError(source, f"must be a positive integer (got {alloc['tokens']!r})", f"{where}.tokens")
    if "seconds" in alloc and not (_is_number(alloc["seconds"]) and alloc["seconds"] >= 0):
        raise PlanError(
            source, f"must be a non-negative number (got {alloc['seconds']!r})", f"{where}.seconds"
        )
    m = alloc.get("outlier_threshold")
    if m is not None and not (_is_number(m) and m > 0):
        raise PlanError(source, f"must be a positive number (got {m!r})", f"{where}.outlier_threshold")
    target = float(sparsity["sparsity"])
    mean = math.fsum(s * p for s, p in zip(lists["by_block"], lists["block_params"])) / sum(
        lists["block_params"]
    )
    if abs(mean - target) > 1e-9:
        raise PlanError(source, f"has a weighted mean of {mean!r}, not the sparsity {target!r}", where)
    if any(abs(s - target) > lam + 1e-9 for s in lists["by_block"]):
        raise PlanError(source, f"moves a block more than lambda = {lam} from {target}", f"{where}.by_block")
