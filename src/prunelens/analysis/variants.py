"""The pruned side of an analysis, expressed on the dense model's own weights.

A :class:`Variant` says how a pruned model differs from its dense parent:

* ``drops`` — sublayers removed (``(layer, "attn"|"mlp")``, dense indices). A dropped *block* is
  both of its sublayers: with zero contribution from attention and MLP a block is the identity, so
  this is numerically the same model as one with the block removed, and needs no re-indexing;
* ``overrides`` — parameter tensors whose pruned value differs from the dense one (``{dense param
  name: tensor}``): the pruned linear weights of a sparsified model, or every differing tensor of any
  other checkpoint with the same architecture and vocabulary.

So no second copy of the unchanged weights is ever held: for a drop plan none at all, for a sparsified
model only its pruned linear weights. :meth:`Variant.active` turns the dense model into the pruned
one in place for the duration of a ``with`` block (sublayers swapped for the parameter-free no-ops of
:mod:`prunelens.models.adapter`, parameters swapped for the overrides) and restores it afterwards.

:func:`resolve_variant` builds a variant from whatever the user has: a :class:`PrunePlan` or its JSON
file, a prunelens checkpoint directory, any other checkpoint directory / hub id / GGUF file, an
already loaded model, or a shorthand such as ``drop-8a`` (score the dense model on calibration text
and drop the 8 most redundant attention sublayers, as ``prunelens prune drop`` would, without
touching the weights). Mismatched architectures or vocabularies raise :class:`VariantMismatchError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prunelens.models.adapter import SUBLAYERS, Adapter, drop_sublayer, get_submodule, set_submodule, spec_for
from prunelens.plan import PrunePlan
from prunelens.utils.errors import InputError

__all__ = [
    "Variant",
    "VariantMismatchError",
    "resolve_variant",
    "variant_from_plan",
    "variant_from_state",
    "SHORTHAND",
    "check_compatible",
]

#: ``drop-8a`` / ``drop-4m`` / ``drop-6j`` / ``drop-2b``: drop N attention / MLP / joint / blocks
SHORTHAND = re.compile(r"^drop-(\d+)([amjb])$", re.IGNORECASE)
_TARGETS = {"a": "attn", "m": "mlp", "j": "joint", "b": "block"}

# config fields that fix the computation; a pruned side that differs in any of them is another model
_STRUCTURAL = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "hidden_activation",
    "rms_norm_eps",
    "layer_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "partial_rotary_factor",
    "rotary_pct",
    "sliding_window",
    "final_logit_softcapping",
    "attn_logit_softcapping",
    "query_pre_attn_scalar",
    "use_parallel_residual",
    "tie_word_embeddings",
)


class VariantMismatchError(InputError):
    """The pruned side is not a variant of the dense model (architecture, shapes or vocabulary differ)."""


@dataclass
class Variant:
    """How the pruned model differs from the dense one (see the module docstring)."""

    name: str
    source: str
    drops: tuple[tuple[int, str], ...] = ()
    overrides: dict[str, Tensor] = field(default_factory=dict)
    plan: PrunePlan | None = None

    def __post_init__(self):
        self.drops = tuple(sorted({(int(layer), str(kind)) for layer, kind in self.drops}))
        for _, kind in self.drops:
            if kind not in SUBLAYERS:
                raise ValueError(f"unknown sublayer {kind!r} in drops; expected one of {SUBLAYERS}")

    @property
    def override_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.overrides.values())

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "dropped_sublayers": [{"layer": layer, "sublayer": kind} for layer, kind in self.drops],
            "override_tensors": len(self.overrides),
            "override_bytes": self.override_bytes,
            "override_names": sorted(self.overrides)[:50],
            "plan": self.plan.to_dict() if self.plan is not None else None,
        }

    def check(self, adapter: Adapter) -> None:
        n = adapter.num_layers
        bad = [d for d in self.drops if not 0 <= d[0] < n]
        if bad:
            raise VariantMismatchError(f"variant {self.name!r} drops layers {bad} of a model with {n} layers")
        params = dict(adapter.model.named_parameters())
        buffers = dict(adapter.model.named_buffers())
        for name, t in self.overrides.items():
            ref = params.get(name, buffers.get(name))
            if ref is None:
                raise VariantMismatchError(
                    f"variant {self.name!r} overrides {name!r}, which the dense model lacks"
                )
            if tuple(ref.shape) != tuple(t.shape):
                raise VariantMismatchError(
                    f"variant {self.name!r}: {name} has shape {tuple(t.shape)}, "
                    f"the dense model {tuple(ref.shape)}"
                )

    @contextmanager
    def active(self, model: nn.Module) -> Iterator[nn.Module]:
        """Make ``model`` (the dense model) behave as the pruned one inside the ``with`` block;
        restore it after."""
        adapter = Adapter(model)
        self.check(adapter)
        saved_modules: list[tuple[nn.Module, str, nn.Module]] = []
        saved_tensors: list[tuple[nn.Module, str, str, Any]] = []
        try:
            for layer, kind in self.drops:
                if adapter.is_dropped(layer, kind):
                    continue
                block = adapter.layers[layer]
                paths = [adapter._path(kind), *adapter.sublayer_norms(kind)]
                for path in paths:
                    saved_modules.append((block, path, get_submodule(block, path)))
                drop_sublayer(adapter, layer, kind)
            aliases = _aliases(model)
            for name, t in self.overrides.items():
                for alias in aliases.get(name, [name]):
                    mod_path, _, attr = alias.rpartition(".")
                    mod = model.get_submodule(mod_path) if mod_path else model
                    if attr in mod._parameters:
                        saved_tensors.append((mod, attr, "_parameters", mod._parameters[attr]))
                        mod._parameters[attr] = nn.Parameter(t, requires_grad=False)
                    else:
                        saved_tensors.append((mod, attr, "_buffers", mod._buffers[attr]))
                        mod._buffers[attr] = t
            yield model
        finally:
            for mod, attr, where, old in reversed(saved_tensors):
                getattr(mod, where)[attr] = old
            for block, path, old in reversed(saved_modules):
                set_submodule(block, path, old)


def _aliases(model: nn.Module) -> dict[str, list[str]]:
    """Every name of each (possibly tied) parameter: ``{name: [all names of the same tensor]}``."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    out: dict[str, list[str]] = {}
    for names in by_id.values():
        for n in names:
            out[n] = names
    return out


# --------------------------------------------------------------------------------------------------
# compatibility checks
# --------------------------------------------------------------------------------------------------


def check_compatible(
    dense_config, other_config, *, num_layers: int | None = None, what: str = "pruned model"
) -> None:
    """Raise :class:`VariantMismatchError` unless ``other_config`` describes the same architecture.

    ``num_layers``: the number of layers expected in ``other_config`` (block-dropped checkpoints have fewer).
    """
    d = dense_config.to_dict() if hasattr(dense_config, "to_dict") else dict(dense_config)
    o = other_config.to_dict() if hasattr(other_config, "to_dict") else dict(other_config)
    if d.get("model_type") != o.get("model_type"):
        raise VariantMismatchError(
            f"architecture mismatch: the dense model is {d.get('model_type')!r}, "
            f"the {what} is {o.get('model_type')!r}"
        )
    if d.get("vocab_size") != o.get("vocab_size"):
        raise VariantMismatchError(
            f"vocabulary mismatch: the dense model has {d.get('vocab_size')} tokens, "
            f"the {what} {o.get('vocab_size')}"
        )
    diffs = [k for k in _STRUCTURAL if k in d or k in o if _norm(d.get(k)) != _norm(o.get(k))]
    want_layers = d.get("num_hidden_layers") if num_layers is None else num_layers
    if o.get("num_hidden_layers") != want_layers:
        diffs.append(f"num_hidden_layers ({o.get('num_hidden_layers')} vs {want_layers} expected)")
    if diffs:
        raise VariantMismatchError(
            f"architecture mismatch between the dense model and the {what}: {', '.join(diffs)}"
        )


def _norm(v):
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items() if x is not None}
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def check_tokenizers(dense_tok, other_tok, what: str = "pruned model") -> None:
    if dense_tok is None or other_tok is None:
        return
    if dense_tok.get_vocab() != other_tok.get_vocab():
        raise VariantMismatchError(
            f"vocabulary mismatch: the tokenizer of the {what} differs from the dense model's"
        )


# --------------------------------------------------------------------------------------------------
# building variants
# --------------------------------------------------------------------------------------------------


def _plan_drops(plan: PrunePlan) -> list[tuple[int, str]]:
    drops = [(int(d["layer"]), d["sublayer"]) for d in plan.dropped_sublayers]
    for b in plan.dropped_blocks:
        drops += [(int(b), "attn"), (int(b), "mlp")]
    return drops


def variant_from_plan(model: nn.Module, plan: PrunePlan, *, source: str = "plan") -> Variant:
    """A drop plan (or a magnitude plan, whose masks follow from the dense weights alone) on ``model``."""
    adapter = Adapter(model)
    if plan.family and plan.family != adapter.spec.family:
        raise VariantMismatchError(
            f"the plan is for a {plan.family!r} model, the dense model is {adapter.spec.family!r}"
        )
    if plan.num_layers_before is not None and plan.num_layers_before != adapter.num_layers:
        raise VariantMismatchError(
            f"the plan was made for a model with {plan.num_layers_before} layers; "
            f"the dense model has {adapter.num_layers}"
        )
    if plan.quantization or not (plan.is_drop or plan.method == "magnitude"):
        why = "quantized" if plan.quantization else "they depend on calibration activations"
        raise VariantMismatchError(
            f"a {plan.name} plan does not hold its weights ({why}); "
            "pass the pruned checkpoint directory instead of the plan file"
        )
    if plan.is_drop:
        v = Variant(plan.name, source, tuple(_plan_drops(plan)), {}, plan)
    else:
        v = Variant(plan.name, source, (), _magnitude_overrides(model, adapter, plan), plan)
    v.check(adapter)
    return v


@torch.no_grad()
def _magnitude_overrides(model, adapter: Adapter, plan: PrunePlan) -> dict[str, Tensor]:
    from prunelens.prune.block_prune import magnitude_masks
    from prunelens.prune.sparse_math import parse_pattern
    from prunelens.prune.sparsify import block_sparsities

    pattern = plan.sparsity.get("pattern")
    nm = parse_pattern(pattern) if pattern else None
    ratios = block_sparsities(plan, adapter.num_layers)  # per block: a non-uniform allocation is kept
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, Tensor] = {}
    for i in range(adapter.num_layers):
        for lin, mask in magnitude_masks(adapter, i, None if nm else ratios[i], nm):
            out[names[id(lin.weight)]] = lin.weight.detach().masked_fill(mask, 0)
    return out


def _layer_map(adapter: Adapter, dropped_blocks: list[int]) -> dict[int, int]:
    keep = [i for i in range(adapter.num_layers) if i not in set(dropped_blocks)]
    return dict(enumerate(keep))


def _rename(name: str, prefix: str, layer_map: dict[int, int] | None) -> str:
    if not layer_map or not name.startswith(prefix):
        return name
    rest = name[len(prefix) :]
    idx, _, tail = rest.partition(".")
    if not idx.isdigit():
        return name
    return f"{prefix}{layer_map[int(idx)]}.{tail}"


@torch.no_grad()
def variant_from_state(
    model: nn.Module,
    tensors,
    *,
    name: str,
    source: str,
    plan: PrunePlan | None = None,
    dropped_blocks: list[int] | None = None,
    drops: list[tuple[int, str]] | None = None,
) -> Variant:
    """Compare ``tensors`` (an iterable of ``(name, tensor)`` from the pruned checkpoint)
    with the dense model.

    Tensors equal to the dense ones are shared (not kept); differing ones become overrides. A tensor the
    dense model lacks, or of another shape, is an architecture mismatch. ``dropped_blocks``: the
    checkpoint's layers are renumbered (block-dropped checkpoints); names are mapped back to dense indices.
    """
    adapter = Adapter(model)
    dense = dict(model.state_dict(keep_vars=False))
    prefix = adapter.spec.layers + "."
    lmap = _layer_map(adapter, dropped_blocks) if dropped_blocks else None
    overrides: dict[str, Tensor] = {}
    seen: set[str] = set()
    for key, t in tensors:
        dname = _rename(key, prefix, lmap)
        ref = dense.get(dname)
        if ref is None:
            raise VariantMismatchError(
                f"the pruned checkpoint has a weight {key!r} that the dense model lacks "
                "(different architecture?)"
            )
        if tuple(ref.shape) != tuple(t.shape):
            raise VariantMismatchError(
                f"shape mismatch for {key}: pruned {tuple(t.shape)}, dense {tuple(ref.shape)}"
            )
        seen.add(dname)
        t = t.to(dtype=ref.dtype, device=ref.device)
        if not torch.equal(ref, t):
            overrides[dname] = t
    drops = list(drops or []) + (_plan_drops(plan) if plan is not None else [])
    dropped_prefixes = []
    for layer, kind in drops:
        dropped_prefixes.append(f"{prefix}{layer}.{adapter._path(kind)}.")
        dropped_prefixes += [f"{prefix}{layer}.{n}." for n in adapter.sublayer_norms(kind)]
    aliases = _aliases(model)
    missing = [
        n
        for n in aliases
        if not any(a in seen for a in aliases[n]) and not any(n.startswith(p) for p in dropped_prefixes)
    ]
    if missing:
        raise VariantMismatchError(
            f"the pruned checkpoint lacks {len(missing)} weights the dense model has "
            f"(e.g. {sorted(missing)[:3]}) "
            "that no prune plan explains"
        )
    v = Variant(name, source, tuple(drops), overrides, plan)
    v.check(adapter)
    return v


def _checkpoint_tensors(path: Path):
    """Yield ``(name, tensor)`` from a checkpoint directory's safetensors files, one tensor at a time."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
    if not files:
        return None

    def gen():
        for fname in files:
            with safe_open(str(path / fname), framework="pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)

    return gen()


def resolve_variant(
    model: nn.Module,
    spec,
    *,
    tokenizer=None,
    base_model: str = "",
    calibration=None,
    calibration_factory=None,
    sims_cache: dict | None = None,
    name: str | None = None,
) -> Variant:
    """Build a :class:`Variant` of ``model`` from ``spec`` (see the module docstring for the accepted forms).

    ``calibration`` / ``calibration_factory()``: calibration windows for the ``drop-N{a,m,j,b}`` shorthands;
    ``sims_cache``: a dict shared between calls so several shorthands score the model once.
    """
    if isinstance(spec, Variant):
        spec.check(Adapter(model))
        return spec
    if isinstance(spec, PrunePlan):
        return variant_from_plan(model, spec)
    if isinstance(spec, nn.Module):
        spec_for(spec)
        check_compatible(model.config, spec.config)
        other = Adapter(spec)
        drops = [(i, k) for i in range(other.num_layers) for k in SUBLAYERS if other.is_dropped(i, k)]
        return variant_from_state(
            model, spec.state_dict().items(), name=name or "pruned", source="model object", drops=drops
        )
    spec = str(spec)
    m = SHORTHAND.match(spec)
    if m:
        if calibration is None:
            if calibration_factory is None:
                raise InputError(f"{spec!r} needs calibration data to choose what to drop")
            calibration = calibration_factory()
        n, target = int(m.group(1)), _TARGETS[m.group(2).lower()]
        return _shorthand_variant(model, spec, n, target, calibration, sims_cache, base_model)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".json":
        plan = PrunePlan.load(path)
        return variant_from_plan(model, plan, source=str(path))
    if path.is_dir():
        return _checkpoint_variant(model, path, tokenizer, name)
    return _loaded_variant(model, spec, tokenizer, name)


def _shorthand_variant(model, spec: str, n: int, target: str, calibration, sims_cache, base_model) -> Variant:
    """``drop-N{a,m,j,b}``: the drop the library would choose on ``calibration``, as a plan (dry run)."""
    sims = None
    key = tuple(calibration.describe().items())
    if sims_cache is not None and key in sims_cache:
        sims = sims_cache[key]
    if sims is None:
        from prunelens.prune.scoring import similarities

        sims = similarities(model, calibration.input_ids)
        if sims_cache is not None:
            sims_cache[key] = sims
    from prunelens.prune.drop import drop

    plan = drop(model, calibration, target=target, n=n, base_model=base_model, sims=sims, dry_run=True)
    return variant_from_plan(model, plan, source=f"shorthand {spec} (scored on {calibration.source})")


def _checkpoint_variant(model: nn.Module, path: Path, tokenizer, name: str | None) -> Variant:
    """A checkpoint directory (a prunelens output or any Hugging Face checkpoint), checked against the
    dense model (architecture, layer count, tokenizer) before its weights are compared."""
    from transformers import AutoConfig

    from prunelens.models.loading import is_prunelens_dir

    plan = PrunePlan.load(path) if is_prunelens_dir(path) else None
    if not (path / "config.json").exists():
        if plan is not None:
            return variant_from_plan(model, plan, source=str(path))
        raise VariantMismatchError(f"{path} has no config.json: not a checkpoint directory")
    cfg = AutoConfig.from_pretrained(path)
    blocks = list(plan.dropped_blocks) if plan is not None else []
    check_compatible(
        model.config, cfg, num_layers=Adapter(model).num_layers - len(blocks), what=f"checkpoint {path}"
    )
    if plan is not None and plan.num_layers_before not in (None, Adapter(model).num_layers):
        raise VariantMismatchError(
            f"{path} was pruned from a model with {plan.num_layers_before} layers; "
            f"the dense model has {Adapter(model).num_layers}"
        )
    if (path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists():
        if tokenizer is not None:
            from transformers import AutoTokenizer

            check_tokenizers(tokenizer, AutoTokenizer.from_pretrained(path), f"checkpoint {path}")
    tensors = _checkpoint_tensors(path)
    if tensors is None:
        from prunelens.models.loading import load

        other, _ = load(str(path), dtype=next(model.parameters()).dtype, device="cpu")
        tensors = other.state_dict().items()
    vname = name or (plan.name if plan is not None else path.name)
    return variant_from_state(model, tensors, name=vname, source=str(path), plan=plan, dropped_blocks=blocks)


def _loaded_variant(model: nn.Module, spec: str, tokenizer, name: str | None) -> Variant:
    """A hub id or a ``.gguf`` file: load it whole, then compare."""
    from prunelens.models.adapter import UnsupportedArchitectureError
    from prunelens.models.loading import load

    try:
        other, other_tok = load(spec, dtype=next(model.parameters()).dtype, device="cpu")
    except UnsupportedArchitectureError as exc:
        raise VariantMismatchError(str(exc)) from exc
    check_compatible(model.config, other.config, what=f"model {spec}")
    check_tokenizers(tokenizer, other_tok, f"model {spec}")
    return variant_from_state(model, other.state_dict().items(), name=name or Path(spec).name, source=spec)
