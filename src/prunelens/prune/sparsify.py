"""Intra-layer pruning, block by block: magnitude, Wanda and SparseGPT, unstructured or N:M.

Layer-wise calibration as in the SparseGPT and Wanda papers: the inputs of block 0 are captured once
(a forward pre-hook keeps *all* its keyword arguments — masks, rotary embeddings, positions — and
stops the forward), then each block in turn

1. runs on the current inputs with hooks on its linear layers that accumulate the statistics the
   method needs (Wanda: ``Σ_t x_tj²``; SparseGPT: ``H = 2XᵀX/n``), in float32;
2. has its linear layers pruned (SparseGPT prunes the linears that read one tensor — q/k/v, gate/up —
   as one stack with one Hessian, see :func:`_sparsegpt_group`);
3. runs again to produce the inputs of the next block, so each block is calibrated on the outputs of
   the already-pruned blocks before it.

With ``true_sequential=True`` steps 1–3 become one pass: the block's linears are pruned group by group
in the order the forward reaches them, each group on the inputs that the already-pruned groups before it
produce (:func:`_true_sequential_block`, run by :mod:`prunelens.prune.lockstep`).

Only one block's statistics and two activation buffers (``nsamples × seqlen × hidden``) are alive
at a time, plus one batch's activations inside the block (true-sequential: every batch's); with
``device=`` a block is moved to that device only while it is processed, so a model kept on the CPU can
be pruned on one GPU. Embeddings and the unembedding stay dense.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from prunelens.data.calibration import Calibration
from prunelens.models.adapter import Adapter, is_offloaded, param_count
from prunelens.models.capture import (
    StopForward,
    blocks_in_turn,
    counterfactual_kl_sums,
    forward_until_stopped,
    replay_block,
)
from prunelens.plan import PrunePlan
from prunelens.prune.allocation import OWL_LAMBDA, OWL_OUTLIER_M, allocate, kl_scores, outlier_ratio
from prunelens.prune.lockstep import run_in_lockstep
from prunelens.prune.sparse_math import (
    accumulate_gram,
    magnitude_scores,
    score_mask,
    sparsegpt_prune,
    symmetric_from_lower,
    wanda_scores,
)
from prunelens.prune.specs import TRUE_SEQUENTIAL_DEFAULT, SparsifySpec  # noqa: F401 - re-exported
from prunelens.utils.errors import InputError
from prunelens.utils.progress import progress_bar


class CalibrationMemoryError(MemoryError, InputError):
    """Calibration ran out of memory; the message says what to change."""


def validate_sparsity(
    method: str,
    sparsity: float | None,
    pattern: str | None,
    allocation: str = "uniform",
    allocation_lambda: float | None = None,
) -> tuple[float | None, tuple[int, int] | None]:
    """Transitional (the command line calls it until it builds a :class:`SparsifySpec`): the spec's check,
    returning ``(sparsity, (N, M))``."""
    spec = SparsifySpec(method, sparsity, pattern, allocation=allocation, allocation_lambda=allocation_lambda)
    spec.check()
    return (None, spec.nm) if spec.nm else (float(sparsity), None)  # type: ignore[arg-type]


def _collect_stats(
    block: nn.Module,
    linears: dict[str, nn.Module],
    stats: _SharedStats,
    inps: torch.Tensor,
    kwargs: dict,
    batch_size: int,
) -> None:
    """Run ``block`` over ``inps`` only as far as its linear layers need: statistics are recorded in each
    linear's forward pre-hook, and the forward stops once every linear has seen its input (the last
    linear's product and whatever follows it are never computed; the block's output is not needed here)."""
    seen: set[str] = set()

    def hook(name: str):
        def pre(mod, args):
            stats.add(name, args[0])
            seen.add(name)
            if len(seen) == len(linears):
                raise StopForward

        return pre

    handles = [lin.register_forward_pre_hook(hook(name)) for name, lin in linears.items()]
    try:
        for i in range(0, inps.shape[0], batch_size):
            seen.clear()
            stats.new_call()
            forward_until_stopped(block, inps[i : i + batch_size], **kwargs)
    finally:
        for h in handles:
            h.remove()
        stats.new_call()


class _Stats:
    """Running input statistics of one linear layer (float32): for Wanda ``sq = Σ_t x_tj²``; for SparseGPT
    ``XᵀX`` (one triangle, see :func:`accumulate_gram`), read as ``H = 2XᵀX/n``, whose diagonal is ``sq``."""

    def __init__(self, cols: int, device, hessian: bool):
        self.n = 0
        self._gram = torch.zeros(cols, cols, device=device, dtype=torch.float32) if hessian else None
        self._sq = None if hessian else torch.zeros(cols, device=device, dtype=torch.float32)

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        if self._gram is not None:
            accumulate_gram(self._gram, x)
        else:
            self._sq += (x * x).sum(0)
        self.n += x.shape[0]

    @property
    def sq(self) -> torch.Tensor:
        return self._sq if self._gram is None else torch.diagonal(self._gram).clone()

    @property
    def H(self) -> torch.Tensor | None:
        if self._gram is None:
            return None
        return symmetric_from_lower(self._gram) * (2.0 / max(self.n, 1))


class _SharedStats:
    """:class:`_Stats` per linear layer, accumulated once per distinct input tensor.

    Linears that read the same tensor (q/k/v read the normed hidden states, gate/up the normed residual)
    share one accumulator, so their Hessian ``XᵀX`` — the costliest statistic — is computed once. The
    sharing is found from the tensors themselves (same storage, shape and strides within one forward call;
    the tensors are held until the call ends so no address is reused), so it needs no per-family table;
    a linear that later sees a different tensor than its partner is an error, never a silent mix.
    """

    def __init__(self, device, hessian: bool):
        self._make = lambda cols: _Stats(cols, device, hessian)
        self.stats: dict[str, _Stats] = {}
        self._owner: dict[str, str] = {}  # linear -> the linear whose accumulator it shares
        self._seen: dict[tuple, tuple[str, torch.Tensor]] = {}  # this call's inputs -> (first reader, tensor)

    def new_call(self) -> None:
        self._seen.clear()

    def add(self, name: str, x: torch.Tensor) -> None:
        key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype)
        first = self._seen.get(key)
        if name not in self._owner:  # the first call decides who shares with whom
            self._owner[name] = first[0] if first is not None else name
            if first is None:
                self.stats[name] = self._make(x.shape[-1])
        owner = self._owner[name]
        if owner == name:
            if first is not None and first[0] != name:
                raise RuntimeError(
                    f"{name} read the input of {first[0]} in a later call but not in the first"
                )
            self.stats[name].add(x)
            self._seen[key] = (name, x)
        elif first is None or first[0] != owner:
            raise RuntimeError(
                f"{name} shared its input with {owner} in the first call but not in a later one"
            )

    def __getitem__(self, name: str) -> _Stats:
        return self.stats[self._owner[name]]

    def groups(self) -> dict[str, list[str]]:
        """Owner → the linears (in first-call order) that share its accumulator."""
        out: dict[str, list[str]] = defaultdict(list)
        for name, owner in self._owner.items():
            out[owner].append(name)
        return dict(out)


def _zero(weight: torch.Tensor, mask: torch.Tensor) -> None:
    """Zero ``weight`` where ``mask`` is True, in place, as a product with the kept mask (faster than
    ``masked_fill_``; weights are finite, so ``w·0`` is zero, its sign bit immaterial).

    In place on purpose: weights loaded from safetensors are memory-mapped, and the first write to each
    page copies it. Giving the weight fresh storage instead skips that copy but keeps the mapped file
    pages resident beside the new ones, which raises the peak memory of a run, so it is not done
    (both measured: benchmarks/README.md, § Measurements behind choices in the code).
    """
    weight.mul_(~mask)


def _sparsegpt_group(
    weights: list[torch.Tensor], H: torch.Tensor, ratio, nm, blocksize: int, percdamp: float
) -> None:
    """SparseGPT on linears that share one Hessian, stacked: one factorisation and one column loop for all
    (masks still chosen per matrix, see ``segments`` in :func:`sparsegpt_prune`)."""
    stacked = weights[0] if len(weights) == 1 else torch.cat(weights)
    rows = [w.shape[0] for w in weights]
    new_w, _ = sparsegpt_prune(
        stacked, H, sparsity=ratio, nm=nm, blocksize=blocksize, percdamp=percdamp, segments=rows
    )
    for w, part in zip(weights, torch.split(new_w, rows)):
        w.copy_(part)  # in place, see _zero


def _group_pruner(method: str, linears: dict[str, nn.Module], ratio, nm, blocksize: int, percdamp: float):
    """``prune(names, stats)``: prune the linears ``names``,
    which read one tensor whose statistics are ``stats``."""

    def prune(names: list[str], stats: _Stats) -> None:
        if method == "wanda":
            for name in names:
                lin = linears[name]
                _zero(
                    lin.weight,
                    score_mask(wanda_scores(lin.weight, stats.sq), sparsity=ratio, nm=nm, per_row=True),
                )
        else:
            _sparsegpt_group([linears[n].weight for n in names], stats.H, ratio, nm, blocksize, percdamp)

    return prune


def linear_groups(
    block: nn.Module, linears: dict[str, nn.Module], inps: torch.Tensor, kwargs: dict
) -> dict[str, list[str]]:
    """The block's linears grouped by the tensor they read, groups in the order the forward reaches them
    (found by running the block on one calibration window)."""
    probe = _SharedStats(inps.device, hessian=False)
    _collect_stats(block, linears, probe, inps[:1], kwargs, 1)
    return probe.groups()


def _true_sequential_block(
    block: nn.Module,
    linears: dict[str, nn.Module],
    prune,
    inps: torch.Tensor,
    outs: torch.Tensor,
    kwargs: dict,
    batch_size: int,
    hessian: bool,
    *,
    need_outputs: bool,
) -> None:
    """Calibrate and prune ``block`` group by group in one pass (see :mod:`prunelens.prune.lockstep`): each
    group of linears is pruned on the statistics of the inputs it receives from the already-pruned groups
    before it, and the block's outputs come from the pruned block."""
    groups = linear_groups(block, linears, inps, kwargs)
    stats: dict[str, _Stats] = {}
    starts = list(range(0, inps.shape[0], batch_size))

    def run_batch(j: int) -> None:
        sl = slice(starts[j], starts[j] + batch_size)
        outs[sl] = replay_block(block, inps[sl], (), kwargs)

    def on_arrive(owner: str, x: torch.Tensor) -> None:
        if owner not in stats:
            stats[owner] = _Stats(x.shape[-1], inps.device, hessian)
        stats[owner].add(x)

    def on_gate(owner: str) -> None:
        prune(groups[owner], stats.pop(owner))

    try:
        run_in_lockstep(
            run_batch,
            len(starts),
            {linears[o]: o for o in groups},
            on_arrive=on_arrive,
            on_gate=on_gate,
            members={linears[n]: o for o, names in groups.items() for n in names[1:]},
            finish=need_outputs,
        )
    except (
        RuntimeError
    ) as exc:  # CUDA's OutOfMemoryError is one; the CPU allocator's says "can't allocate memory"
        if not isinstance(exc, torch.cuda.OutOfMemoryError) and "allocate memory" not in str(exc):
            raise
        raise CalibrationMemoryError(
            f"true-sequential calibration holds the activations of all {inps.shape[0]} "
            "calibration windows inside "
            f"a block at once, and {inps.device} ran out of memory. Calibrate with true_sequential=False "
            "(CLI: --dense-block-stats), which holds one batch's, or with fewer windows. The model is partly "
            "pruned now: load it again before retrying."
        ) from exc


def _sparsity_report(adapter: Adapter) -> dict:
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_layer = []
    total_z = total_n = 0
    for i in range(adapter.num_layers):
        lz = ln = 0
        for name, lin in adapter.block_linears(i).items():
            z = int((lin.weight == 0).sum())
            n = lin.weight.numel()
            key = name.rsplit(".", 1)[-1]
            groups[key][0] += z
            groups[key][1] += n
            lz, ln = lz + z, ln + n
        by_layer.append(lz / ln if ln else 0.0)
        total_z, total_n = total_z + lz, total_n + ln
    return {
        "overall": total_z / total_n if total_n else 0.0,
        "by_group": {k: z / n for k, (z, n) in groups.items()},
        "by_layer": by_layer,
    }


def magnitude_masks(adapter: Adapter, layer: int, ratio: float | None, nm: tuple[int, int] | None):
    """``(linear, mask)`` for every linear of block ``layer`` under magnitude pruning (``True`` = zeroed).

    Magnitude needs no calibration, so the analysis rebuilds these masks from the dense weights instead
    of storing a pruned copy; both go through here. ``ratio`` is block ``layer``'s own sparsity: with a
    non-uniform allocation, :func:`block_sparsities` of the plan.
    """
    for lin in adapter.block_linears(layer).values():
        mask = score_mask(magnitude_scores(lin.weight), sparsity=ratio, nm=nm, per_row=False)
        yield lin, mask.to(lin.weight.device)


def block_params(adapter: Adapter) -> list[int]:
    """Per block, the number of weights its linears hold (what sparsifying counts)."""
    return [
        sum(lin.weight.numel() for lin in adapter.block_linears(i).values())
        for i in range(adapter.num_layers)
    ]


def block_sparsities(plan: PrunePlan, num_layers: int) -> list[float | None]:
    """Per block, the sparsity a plan gave it: ``sparsity.allocation.by_block`` when the plan allocated
    per block, else the one overall ratio (``None`` for N:M)."""
    alloc = plan.sparsity.get("allocation") or {}
    if alloc.get("rule", "uniform") != "uniform":
        return [float(s) for s in alloc["by_block"]]
    if plan.sparsity.get("pattern"):
        return [None] * num_layers
    return [float(plan.sparsity.get("sparsity", 0.0))] * num_layers


def _block_pruned_state(method, linears, stats, ratio, blocksize, percdamp) -> dict[str, torch.Tensor]:
    """What ``method`` at ``ratio`` makes of the block's linears, the block left dense: Wanda and magnitude
    as masks (``True`` = zeroed), SparseGPT as the updated weights."""
    if method == "magnitude":
        return {
            n: score_mask(magnitude_scores(lin.weight), sparsity=ratio, per_row=False).to(lin.weight.device)
            for n, lin in linears.items()
        }
    if method == "wanda":
        return {
            n: score_mask(wanda_scores(lin.weight, stats[n].sq), sparsity=ratio, per_row=True)
            for n, lin in linears.items()
        }
    dense = {n: lin.weight.detach().clone() for n, lin in linears.items()}
    prune = _group_pruner(method, linears, ratio, None, blocksize, percdamp)
    for owner, names in stats.groups().items():
        prune(names, stats[owner])
    out = {}
    for n, lin in linears.items():
        out[n] = lin.weight.detach().clone()
        lin.weight.copy_(dense[n])
    return out


@contextmanager
def _swapped_in(linears: dict[str, nn.Module], state: dict[str, torch.Tensor]) -> Iterator[None]:
    """Inside, the linears hold a pruned state (see :func:`_block_pruned_state`); dense again after."""
    saved = {}
    for n, lin in linears.items():
        st = state[n].to(lin.weight.device)
        saved[n] = lin.weight.detach().clone()
        if st.dtype == torch.bool:
            _zero(lin.weight, st)
        else:
            lin.weight.copy_(st)
    try:
        yield
    finally:
        for n, lin in linears.items():
            lin.weight.copy_(saved[n])


@torch.no_grad()
def block_sensitivity(
    model,
    calibration: Calibration,
    *,
    rule: str,
    method: str,
    sparsity: float,
    batch_size: int = 8,
    blocksize: int = 128,
    percdamp: float = 0.01,
    device: str | torch.device | None = None,
    outlier_threshold: float = OWL_OUTLIER_M,
    windows: int | None = 8,
) -> dict[str, Any]:
    """Per-block scores of an allocation ``rule``, measured on the dense model (which is left unchanged).

    * ``owl``: each block's outlier ratio (:func:`prunelens.prune.allocation.outlier_ratio`) of its Wanda
      scores ``|W|·‖X‖``, ``‖X‖`` from the dense model's block inputs over every calibration window.
    * ``kl``: each block's exact counterfactual ``KL(p_dense ‖ p_l)``, mean per token: ``p_l`` is the model
      with *only* block ``l`` sparsified by ``method`` at ``sparsity`` (its statistics from the dense block
      inputs over every calibration window, the published procedure), on the first ``windows`` calibration
      windows (None: all). As :func:`prunelens.prune.objectives.counterfactual_kl`: one dense pass per batch
      records every block's input, and block ``l``'s candidate re-runs blocks ``l … L−1`` from it. Holds the
      ``L`` pruned states until the end (masks; SparseGPT: a copy of the block weights).

    Returns ``{"scores", "tokens", "seconds", "score"}``.
    """
    t0 = time.perf_counter()
    adapter = Adapter(model)
    L = adapter.num_layers
    states: list[dict[str, torch.Tensor]] = []
    ratios: list[float] = []
    if rule == "owl" or method != "magnitude":
        ids = calibration.input_ids
        for step in blocks_in_turn(
            model, adapter, ids, batch_size=batch_size, device=device, desc=f"{rule} scores"
        ):
            linears = adapter.block_linears(step.index)
            stats = _SharedStats(step.device, rule == "kl" and method == "sparsegpt")
            _collect_stats(step.block, linears, stats, step.inputs, step.kwargs, batch_size)
            if rule == "owl":
                scores = (wanda_scores(lin.weight, stats[n].sq) for n, lin in linears.items())
                ratios.append(outlier_ratio(scores, outlier_threshold))
            else:
                st = _block_pruned_state(method, linears, stats, sparsity, blocksize, percdamp)
                states.append({n: t.to(step.home) for n, t in st.items()})
            del stats  # the block then runs dense: the next block's inputs
    if rule == "owl":
        return {
            "scores": ratios,
            "tokens": int(calibration.input_ids.numel()),
            "seconds": time.perf_counter() - t0,
            "score": f"outlier ratio: share of the block's Wanda scores |W|·‖X‖ above {outlier_threshold:g}× "
            "their mean (dense model, every calibration window)",
        }
    if method == "magnitude":  # no calibration statistics: the masks come from the weights alone
        states = [
            _block_pruned_state(method, adapter.block_linears(i), None, sparsity, blocksize, percdamp)
            for i in range(L)
        ]
    ids = calibration.input_ids if windows is None else calibration.input_ids[:windows]
    changes = [(i, lambda i=i: _swapped_in(adapter.block_linears(i), states[i])) for i in range(L)]
    measured = counterfactual_kl_sums(
        model, adapter, ids, changes, batch_size=batch_size, keep_reference=False, desc="kl scores"
    )
    tokens = measured.tokens
    return {
        "scores": [s / tokens for s in measured.sums],
        "tokens": tokens,
        "seconds": time.perf_counter() - t0,
        "score": f"exact KL(p_dense ‖ p with only this block {method}-sparsified at {sparsity:g}), "
        f"nats per token, on the first {ids.shape[0]} calibration windows",
    }


@torch.no_grad()
def sparsify(
    model,
    calibration: Calibration | None,
    spec: SparsifySpec | None = None,
    *,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    base_model: str = "",
    outlier_threshold: float = OWL_OUTLIER_M,
    sensitivity_windows: int | None = 8,
    **fields,
) -> PrunePlan:
    """Sparsify every linear layer inside the blocks of ``model`` as ``spec`` asks, in place; return the plan.

    ``spec``: a :class:`~prunelens.prune.specs.SparsifySpec`, or its fields as keywords (``method=``,
    ``sparsity=`` or ``pattern=``, ...), checked before any work. ``magnitude`` needs no calibration
    (``calibration`` may be None); Wanda and SparseGPT do.

    ``true_sequential``: False is the published procedure: every linear's statistics come from one pass
    over the *dense* block, all are pruned, then the pruned block runs for the next block's inputs — two
    passes. True (as GPTQ's ``--true-sequential``) prunes the block's linears group by group in the
    order the forward reaches them (q/k/v, o, gate/up, down), each on the inputs it receives from the
    already-pruned groups before it, in one pass over the block (:mod:`prunelens.prune.lockstep`); it
    holds every calibration batch's activations inside the block at once (its peak memory on a 7B model:
    benchmarks/README.md, § Pruning on one GPU). None (default) takes the method's
    default, :data:`~prunelens.prune.specs.TRUE_SEQUENTIAL_DEFAULT`: on for Wanda, off for SparseGPT.

    ``allocation``: how the overall ``sparsity`` is shared among the blocks
    (:mod:`prunelens.prune.allocation`).
    ``uniform`` (default): every block at ``sparsity``. ``owl``: by each block's outlier ratio
    (``outlier_threshold`` × the mean Wanda score); ``kl``: by each block's exact KL sensitivity, measured
    on the first ``sensitivity_windows`` calibration windows (:func:`block_sensitivity`). Both keep the
    parameter-weighted mean at ``sparsity`` and every block within ``allocation_lambda`` (default
    :data:`~prunelens.prune.allocation.OWL_LAMBDA`, 0.08) of it; both need calibration, magnitude too.
    N:M patterns stay uniform. The plan's ``sparsity.allocation`` records the rule, lambda, every block's
    sparsity, score and weight count, and the seconds the scores took.
    """
    if spec is None:
        spec = SparsifySpec(**fields)
    elif fields:
        raise TypeError(f"give a SparsifySpec or its fields, not both (got {sorted(fields)})")
    spec.check()
    method, pattern, nm = spec.method, spec.pattern, spec.nm
    true_sequential = spec.calibrates_true_sequentially
    ratio = None if nm else float(spec.sparsity)  # type: ignore[arg-type]
    allocation, allocation_lambda = spec.allocation, spec.allocation_lambda
    blocksize, percdamp = spec.blocksize, spec.percdamp
    if is_offloaded(model):
        raise ValueError(
            "sparsifying rewrites the weights in place, so they must be in memory: this model has "
            "weights offloaded to disk or CPU by accelerate. Load it on the CPU (device='cpu') and pass "
            "device='cuda' to prune block by block on one GPU (memory: one block plus activations)"
        )
    adapter = Adapter(model)
    if method != "magnitude" and calibration is None:
        raise ValueError(f"{method} needs calibration data")
    if allocation != "uniform" and calibration is None:
        raise ValueError(f"allocation {allocation!r} needs calibration data (also for magnitude)")
    plan = PrunePlan(
        method=method,
        base_model=base_model,
        family=adapter.spec.family,
        sparsity={"sparsity": ratio} if nm is None else {"pattern": pattern, "sparsity": 1 - nm[0] / nm[1]},
        calibration=calibration.describe()
        if (calibration is not None and (method != "magnitude" or allocation != "uniform"))
        else {},
        seed=calibration.seed if calibration is not None else None,
        params_before=param_count(model),
        num_layers_before=adapter.num_layers,
        options={
            "scope": "all nn.Linear inside decoder blocks; embeddings and unembedding dense",
            "compare": "per matrix"
            if method == "magnitude"
            else ("per output row" if method == "wanda" else "per 128-column block (adaptive)"),
            **({"blocksize": blocksize, "percdamp": percdamp} if method == "sparsegpt" else {}),
            **({"true_sequential": true_sequential} if method != "magnitude" else {}),
            "nm_convention": "N kept in every M" if nm else None,
        },
    )

    ratios: list[float | None] = [ratio] * adapter.num_layers
    if allocation != "uniform":
        assert ratio is not None and calibration is not None  # validated above
        lam = OWL_LAMBDA if allocation_lambda is None else float(allocation_lambda)
        measured = block_sensitivity(
            model,
            calibration,
            rule=allocation,
            method=method,
            sparsity=ratio,
            batch_size=batch_size,
            blocksize=blocksize,
            percdamp=percdamp,
            device=device,
            outlier_threshold=outlier_threshold,
            windows=sensitivity_windows,
        )
        params = block_params(adapter)
        raw = measured["scores"]
        by_block = allocate(raw if allocation == "owl" else kl_scores(raw), params, ratio, lam)
        ratios = list(by_block)
        plan.sparsity["allocation"] = {
            "rule": allocation,
            "lambda": lam,
            "by_block": by_block,
            "scores": raw,
            "score": measured["score"],
            "block_params": params,
            "tokens": measured["tokens"],
            "seconds": round(measured["seconds"], 3),
            **({"outlier_threshold": outlier_threshold} if allocation == "owl" else {}),
            **({"map": "linear in log KL"} if allocation == "kl" else {"map": "linear in the score"}),
        }

    if method == "magnitude":
        with progress_bar("magnitude", total=adapter.num_layers) as bar:
            for i in range(adapter.num_layers):
                for lin, mask in magnitude_masks(adapter, i, ratios[i], nm):
                    _zero(lin.weight, mask)
                bar.advance()
    else:
        for step in blocks_in_turn(
            model, adapter, calibration.input_ids, batch_size=batch_size, device=device, desc=method
        ):
            linears = adapter.block_linears(step.index)
            prune = _group_pruner(method, linears, ratios[step.index], nm, blocksize, percdamp)
            if true_sequential:  # the pruned block's outputs come out of the same pass
                _true_sequential_block(
                    step.block,
                    linears,
                    prune,
                    step.inputs,
                    step.outputs,
                    step.kwargs,
                    batch_size,
                    method == "sparsegpt",
                    need_outputs=not step.last,
                )
                step.outputs_written = True
            else:  # then the pruned block runs for the next block's inputs
                stats = _SharedStats(step.device, method == "sparsegpt")
                _collect_stats(step.block, linears, stats, step.inputs, step.kwargs, batch_size)
                for owner, names in stats.groups().items():
                    prune(names, stats[owner])
                del stats
    plan.sparsity["achieved"] = _sparsity_report(adapter)
    plan.params_after = param_count(model)
    return plan
