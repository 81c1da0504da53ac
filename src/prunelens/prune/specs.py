"""What a pruning run is asked to do: one frozen spec per method, holding its defaults and its checks.

The command line (``prunelens prune drop|sparsify``), a study or sweep variant (``drop:`` / ``sparsify:``
blocks) and the Python API (``prunelens.drop`` / ``prunelens.sparsify``) all build a :class:`DropSpec` or a
:class:`SparsifySpec` and call its ``check()``; nothing else defaults or validates these fields, so the
three refuse the same requests with the same reason.

A refusal is a :class:`SpecError` naming the field. Its message may name other fields as ``{field}``
placeholders, so that each front end spells them its own way (``--score-windows`` on the command line,
``variants[2].drop.score_windows`` in a study config, ``score_windows`` in Python):
:meth:`SpecError.render`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from prunelens.plan import ALLOCATIONS, DROP_TARGETS, SPARSE_METHODS
from prunelens.prune.allocation import OWL_LAMBDA
from prunelens.prune.sparse_math import parse_pattern
from prunelens.utils.errors import InputError

#: the drop objectives: what "droppable" is measured on (see :mod:`prunelens.prune.objectives`)
OBJECTIVES = ("hidden", "generation", "choice")
#: how a KL objective is measured: exactly (a counterfactual per unit) or by the Fisher estimate
ESTIMATORS = ("exact", "fisher")
#: the choice objective's questions: a multiple-choice task, the split it reads, and how many questions
CHOICE_TASK, CHOICE_SPLIT, CHOICE_LIMIT = "arc_easy", "validation", 64
#: GGUF types with a quantizer in the ``gguf`` package (it can only de-quantize the K-quants)
GGUF_TYPES = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")
#: quantization methods besides the GGUF types, and their bit widths
QUANT_METHODS = ("rtn",)
RTN_BITS = (8, 4, 3)
#: per method, whether a sparsify calibrates true-sequentially unless told otherwise (the measurement
#: behind these choices: benchmarks/README.md, § true-sequential calibration)
TRUE_SEQUENTIAL_DEFAULT = {"wanda": True, "sparsegpt": False}


class PruneConfigError(InputError):
    """A pruning request that cannot be run (on this model, with this data, or as given)."""


class SpecError(PruneConfigError):
    """A spec field that cannot be run. ``field`` names it; ``message`` reads after the field's name and
    may name other fields as ``{name}`` placeholders."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(self.render())

    def text(self, spell: Callable[[str], str] = str) -> str:
        """The message alone, other fields spelled by ``spell``."""
        return self.message.format_map({f: spell(f) for f in _FIELD_NAMES})

    def render(self, spell: Callable[[str], str] = str) -> str:
        """``field: message``, every field spelled by ``spell`` (``score_windows`` → ``--score-windows``)."""
        return f"{spell(self.field)}: {self.text(spell)}"


def option_name(field: str) -> str:
    """A spec field as the command line spells it: ``score_windows`` → ``--score-windows``."""
    return "--" + field.replace("_", "-")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _positive_int(name: str, v: Any) -> None:
    if not (_is_int(v) and v > 0):
        raise SpecError(name, f"must be a positive integer (got {v!r})")


def _flag(name: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise SpecError(name, f"must be true or false (got {v!r})")


def _choose(name: str, v: Any, allowed: tuple[str, ...]) -> None:
    if v not in allowed:
        raise SpecError(name, f"must be one of {', '.join(allowed)} (got {v!r})")


class _Spec:
    """What the specs share: their field names and a plain dict."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))  # type: ignore[arg-type]


@dataclass(frozen=True)
class DropSpec(_Spec):
    """Drop ``n`` units of ``target`` (attention or MLP sublayers, both ranked together, or blocks).

    ``objective`` says what "droppable" is measured on: ``hidden`` (the cosine between a unit's input and
    output stream), ``generation`` (the KL of the next-token distributions at ``temperature`` on the
    calibration tokens, ``exact`` or by the ``fisher`` estimate) or ``choice`` (the KL of the option
    distribution on ``choice_limit`` questions of ``choice_task``'s validation split). ``iterative``
    re-scores after every removal; ``window`` drops the best run of ``n`` consecutive blocks. A KL
    objective can then improve the chosen set by swaps for ``search_budget`` seconds or
    ``search_evaluations`` set evaluations. ``score_windows`` scores on the first K calibration windows.
    """

    target: str
    n: int
    iterative: bool = False
    window: bool = False
    objective: str = "hidden"
    estimator: str = "exact"
    temperature: float = 1.0
    search_budget: float | None = None
    search_evaluations: int | None = None
    choice_task: str | None = None  # None: CHOICE_TASK when the objective is choice
    choice_limit: int | None = None  # None: CHOICE_LIMIT when the objective is choice
    score_windows: int | None = None

    @property
    def questions(self) -> tuple[str, int]:
        """The choice objective's task and number of questions, defaults filled in."""
        task = CHOICE_TASK if self.choice_task is None else self.choice_task
        return task, CHOICE_LIMIT if self.choice_limit is None else self.choice_limit

    @property
    def searching(self) -> bool:
        return self.search_budget is not None or self.search_evaluations is not None

    def check(self, nsamples: int | None = None, num_layers: int | None = None, already_dropped: int = 0):
        """Raise :class:`SpecError` for the first field that cannot be run. With ``nsamples`` (calibration
        windows) and ``num_layers`` the checks that need them run too."""
        _choose("target", self.target, DROP_TARGETS)
        _positive_int("n", self.n)
        _flag("iterative", self.iterative)
        _flag("window", self.window)
        if self.window and self.target != "block":
            raise SpecError("window", "only applies to {target} block")
        self._check_objective()
        self._check_search()
        self._check_choice()
        self._check_windows(nsamples)
        if num_layers is not None:
            check_drop_count(num_layers, self.target, self.n, already_dropped)
        return self

    def _check_objective(self) -> None:
        _choose("objective", self.objective, OBJECTIVES)
        if self.window and self.objective != "hidden":
            raise SpecError(
                "window", "picks the best consecutive blocks by cosine: it needs {objective} hidden"
            )
        _choose("estimator", self.estimator, ESTIMATORS)
        if self.estimator == "fisher" and self.objective != "generation":
            raise SpecError(
                "estimator",
                "the Fisher estimate is of the generation objective's KL: use {objective} generation",
            )
        if not (_is_number(self.temperature) and self.temperature > 0):
            raise SpecError("temperature", f"must be a positive number (got {self.temperature!r})")

    def _check_search(self) -> None:
        b = self.search_budget
        if b is not None and not (_is_number(b) and b > 0):
            raise SpecError("search_budget", f"must be a positive number of seconds (got {b!r})")
        if self.search_evaluations is not None:
            _positive_int("search_evaluations", self.search_evaluations)
        if self.searching and self.objective == "hidden":
            raise SpecError(
                "search_budget" if b is not None else "search_evaluations",
                "improves a set by its KL: use {objective} generation or choice",
            )

    def _check_choice(self) -> None:
        from prunelens.data.tasks import tasks_of_kind

        if self.objective != "choice":
            given = [f for f in ("choice_task", "choice_limit") if getattr(self, f) is not None]
            if given:
                raise SpecError(given[0], "belongs to {objective} choice")
            return
        task, limit = self.questions
        mc = tasks_of_kind("mc")
        if task not in mc:
            raise SpecError("choice_task", f"must be a multiple-choice task ({', '.join(mc)}), got {task!r}")
        _positive_int("choice_limit", limit)

    def _check_windows(self, nsamples: int | None) -> None:
        k = self.score_windows
        if k is None:
            return
        if self.objective == "choice":
            raise SpecError(
                "score_windows",
                "does not apply to {objective} choice (it scores on multiple-choice questions, "
                "not calibration windows: use {choice_limit})",
            )
        _positive_int("score_windows", k)
        if nsamples is not None and k > nsamples:
            raise SpecError("score_windows", f"{k} exceeds {{nsamples}} {nsamples}")

    def plan_options(self) -> dict[str, Any]:
        """The fields a drop plan records under ``options`` (as earlier plans did: only what applies)."""
        out: dict[str, Any] = {"iterative": self.iterative, "window": self.window}
        if self.objective != "hidden":
            out.update(objective=self.objective, temperature=self.temperature, estimator=self.estimator)
        if self.score_windows is not None:
            out["score_windows"] = self.score_windows
        return out


def check_drop_count(num_layers: int, target: str, n: int, already_dropped: int = 0) -> None:
    """Refuse a count the model cannot satisfy: at least one candidate unit must remain."""
    _choose("target", target, DROP_TARGETS)
    _positive_int("n", n)
    available = (2 * num_layers if target == "joint" else num_layers) - already_dropped
    if n >= available:
        what = "sublayers" if target == "joint" else "layers"
        raise SpecError(
            "n",
            f"cannot drop {n} with {{target}} {target}: the model has {available} candidate {what}; "
            f"{{n}} must be between 1 and {available - 1}",
        )


@dataclass(frozen=True)
class SparsifySpec(_Spec):
    """Zero weights inside every block's linears by ``method`` (magnitude, Wanda or SparseGPT), either an
    unstructured ``sparsity`` or an N:M ``pattern``.

    ``true_sequential``: False is the published procedure: every linear's statistics come from one pass
    over the *dense* block, all are pruned, then the pruned block runs for the next block's inputs — two
    passes. True (as GPTQ's ``--true-sequential``) prunes the block's linears group by group in the order
    the forward reaches them (q/k/v, o, gate/up, down), each on the inputs the already-pruned groups give
    it, in one pass (:mod:`prunelens.prune.lockstep`), holding every calibration batch's activations inside
    the block at once (its peak memory on a 7B model: benchmarks/README.md, § Pruning on one GPU).
    ``None``: the method's default, :data:`TRUE_SEQUENTIAL_DEFAULT`.

    ``allocation``: how the overall ``sparsity`` is shared among the blocks
    (:mod:`prunelens.prune.allocation`): ``uniform`` (every block alike), ``owl`` (by each block's outlier
    ratio) or ``kl`` (by each block's exact KL sensitivity). Both keep the parameter-weighted mean at
    ``sparsity`` and every block within ``allocation_lambda`` (default :data:`OWL_LAMBDA`) of it; both need
    calibration, magnitude too; N:M patterns stay uniform. ``blocksize`` and ``percdamp`` are SparseGPT's
    column block and Hessian dampening.
    """

    method: str
    sparsity: float | None = None
    pattern: str | None = None
    true_sequential: bool | None = None
    allocation: str = "uniform"
    allocation_lambda: float | None = None
    blocksize: int = 128
    percdamp: float = 0.01

    @property
    def nm(self) -> tuple[int, int] | None:
        """The pattern as ``(N, M)``, or ``None`` for an unstructured sparsity."""
        return None if self.pattern is None else parse_nm(self.pattern)

    @property
    def calibrates_true_sequentially(self) -> bool:
        if self.true_sequential is not None:
            return self.true_sequential
        return TRUE_SEQUENTIAL_DEFAULT.get(self.method, False)

    @property
    def spread(self) -> float | None:
        """The allocation's lambda, its default filled in (``None`` for a uniform allocation)."""
        if self.allocation == "uniform":
            return None
        return OWL_LAMBDA if self.allocation_lambda is None else float(self.allocation_lambda)

    def check(self):
        """Raise :class:`SpecError` for the first field that cannot be run."""
        _choose("method", self.method, SPARSE_METHODS)
        self._check_allocation()
        if (self.sparsity is None) == (self.pattern is None):
            raise SpecError("sparsity", "give exactly one of {sparsity} (unstructured) or {pattern} (N:M)")
        if self.pattern is not None:
            self.nm  # noqa: B018 - parses, raising SpecError for a bad pattern
        elif not (_is_number(self.sparsity) and 0.0 <= float(self.sparsity) < 1.0):
            raise SpecError("sparsity", f"must be in [0, 1); got {self.sparsity!r}")
        if self.true_sequential is not None:
            _flag("true_sequential", self.true_sequential)
        _positive_int("blocksize", self.blocksize)
        if not (_is_number(self.percdamp) and self.percdamp > 0):
            raise SpecError("percdamp", f"must be a positive number (got {self.percdamp!r})")
        return self

    def _check_allocation(self) -> None:
        _choose("allocation", self.allocation, ALLOCATIONS)
        lam = self.allocation_lambda
        if self.allocation == "uniform":
            if lam is not None:
                raise SpecError("allocation_lambda", "only applies to a non-uniform allocation (owl or kl)")
            return
        if self.pattern is not None:
            raise SpecError(
                "allocation", f"{self.allocation} needs {{sparsity}}: N:M patterns ({{pattern}}) stay uniform"
            )
        if lam is not None and not (_is_number(lam) and 0.0 <= float(lam) < 1.0):
            raise SpecError("allocation_lambda", f"must be a number in [0, 1); got {lam!r}")


@dataclass(frozen=True)
class CalibrationSpec(_Spec):
    """The calibration text a pruning is scored on: ``nsamples`` windows of ``seqlen`` tokens drawn at
    seeded random offsets from ``source`` (``c4``, ``c4-heldout``, ``wikitext2``, a ``.txt`` / ``.json`` /
    ``.jsonl`` file, or ``hub:NAME[:CONFIG[:SPLIT]]``). The defaults of ``prune drop|sparsify`` and of
    :func:`prunelens.drop` / :func:`prunelens.sparsify` (a study has its own, in its config)."""

    source: str = "c4"
    nsamples: int = 64
    seqlen: int = 256
    seed: int = 0

    def check(self):
        _positive_int("nsamples", self.nsamples)
        _positive_int("seqlen", self.seqlen)
        if not _is_int(self.seed):
            raise SpecError("seed", f"must be an integer (got {self.seed!r})")
        return self


@dataclass(frozen=True)
class QuantizeSpec(_Spec):
    """Quantize every linear weight inside the blocks, held as the de-quantized weights in the model's
    float dtype: either a GGUF ``type`` (:data:`GGUF_TYPES`, blocks of 32 along the input width, as
    llama.cpp stores them) or ``method`` ``rtn`` (round to nearest) at ``bits`` per weight, per output
    channel or in groups of ``group_size`` input columns, ``symmetric`` (absmax) or not (min–max with a
    zero point). A sparse model's exact zeros are put back after the round trip."""

    type: str | None = None
    method: str | None = None
    bits: int | None = None
    group_size: int | None = None
    symmetric: bool = True

    @property
    def label(self) -> str:
        """``Q4_0``, ``RTN-W4-g128``, ``RTN-W8`` (per channel), ``RTN-W4-g128-asym``."""
        if self.type is not None:
            return self.type
        group = "" if self.group_size is None else f"-g{self.group_size}"
        return f"RTN-W{self.bits}{group}" + ("" if self.symmetric else "-asym")

    def check(self):
        if (self.type is None) == (self.method is None):
            raise SpecError("type", "give exactly one of {type} (a GGUF type) or {method} (rtn)")
        if self.type is not None:
            _choose("type", self.type, GGUF_TYPES)
            for name in ("bits", "group_size"):
                if getattr(self, name) is not None:
                    raise SpecError(name, "belongs to {method} rtn (a GGUF type fixes its own)")
            if not self.symmetric:
                raise SpecError("symmetric", "belongs to {method} rtn (a GGUF type fixes its own)")
            return self
        _choose("method", self.method, QUANT_METHODS)
        if self.bits not in RTN_BITS or isinstance(self.bits, bool):
            raise SpecError("bits", f"must be one of {', '.join(map(str, RTN_BITS))} (got {self.bits!r})")
        if self.group_size is not None:
            _positive_int("group_size", self.group_size)
        _flag("symmetric", self.symmetric)
        return self


def parse_nm(pattern: Any) -> tuple[int, int]:
    """``"2:4"`` → ``(2, 4)`` (:func:`~prunelens.prune.sparse_math.parse_pattern`), refused as a field."""
    try:
        return parse_pattern(str(pattern))
    except ValueError as exc:
        raise SpecError("pattern", str(exc).removeprefix("pattern ")) from None


_FIELD_NAMES = tuple(
    dict.fromkeys(
        f.name for spec in (DropSpec, SparsifySpec, CalibrationSpec, QuantizeSpec) for f in fields(spec)
    )
)
