"""What each decoder block receives, recorded once, and blocks run again on it.

Every method here that works block by block needs the same two things: a block's input stream and the
arguments the model passes along with it (attention mask, rotary embeddings, positions, cache position —
whatever this architecture and transformers release use, so nothing is re-derived). A forward
pre-hook with ``with_kwargs=True`` on the block sees them all; this module is the one place that
installs such hooks and replays blocks on what they recorded:

* :func:`block_input_hooks` — the hooks themselves (a callback per block call; it may raise
  :class:`StopForward` to end the forward there, caught by :func:`forward_until_stopped`), and beside
  them :func:`sublayer_output_hooks` (what each sublayer adds to the residual stream) and
  :func:`final_hidden_hook` (the last residual stream);
* :func:`record_forward` — one full forward recording every block's input and call, and the logits;
  :func:`suffix_hidden` / :func:`suffix_logits` re-run blocks ``start … L−1`` from it, and
  :func:`counterfactual_kl_sums` scores temporary changes of the model by the exact KL of such
  suffix re-runs (a change in block ``i`` leaves blocks ``0 … i−1`` as they were, so only the suffix
  runs: about half a forward per candidate);
* :func:`capture_block_inputs` and :func:`blocks_in_turn` — layer-wise calibration as in the SparseGPT
  and Wanda papers: block 0's inputs for every calibration window (forwards stopped at block 0), then
  block ``i``'s outputs become block ``i+1``'s inputs, one block on the working device at a time.

The suffix KL's unembedding and full-vocabulary terms are computed a chunk of positions at a time
(:func:`head_kl_sum`) with the reference probabilities exponentiated once per batch: no whole-batch
``positions × vocabulary`` temporary is made per candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunelens.models.adapter import Adapter, block_output, input_device
from prunelens.models.compat import CACHE_KWARGS
from prunelens.plan import SUBLAYERS
from prunelens.utils.kl import kl_divergence, log_probs
from prunelens.utils.memory import reuse_freed_memory
from prunelens.utils.progress import progress_bar

__all__ = [
    "KL_CHUNK",
    "BlockStep",
    "CounterfactualKL",
    "RecordedForward",
    "StopForward",
    "block_input",
    "block_input_hooks",
    "blocks_in_turn",
    "capture_block_inputs",
    "counterfactual_kl_sums",
    "final_hidden_hook",
    "forward_until_stopped",
    "head_kl_sum",
    "layer_kwargs",
    "record_forward",
    "replay_block",
    "run_block",
    "suffix_hidden",
    "suffix_kl_sum",
    "suffix_logits",
    "sublayer_output_hooks",
    "without_cache",
]


class StopForward(Exception):
    """Raised by a hook to end a forward once what it records has been seen."""


def forward_until_stopped(fn: Callable[..., Any], *args, **kwargs) -> Any:
    """``fn(*args, **kwargs)``, or None where a hook ended it with :class:`StopForward`."""
    try:
        return fn(*args, **kwargs)
    except StopForward:
        return None


def block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a block was called with (first positional argument, or ``hidden_states=``)."""
    return args[0] if args else kwargs["hidden_states"]


def _call_rest(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A block call without its hidden states: the other positional and keyword arguments."""
    return tuple(args[1:]), {k: v for k, v in kwargs.items() if k != "hidden_states"}


def without_cache(kwargs: dict) -> dict:
    """A call's keyword arguments for a re-run: no KV cache (a re-run must not write one), and
    ``use_cache=False`` where the call had the flag."""
    kw = {k: v for k, v in kwargs.items() if k not in CACHE_KWARGS}
    if "use_cache" in kw:
        kw["use_cache"] = False
    return kw


@contextmanager
def _removed_after(handles: list) -> Iterator[None]:
    """The hooks of ``handles`` stay while open and are removed after, whatever happens."""
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def block_input_hooks(
    adapter: Adapter,
    on_input: Callable[[int, torch.Tensor, tuple, dict], None],
    layers: Sequence[int] | None = None,
) -> Iterator[None]:
    """While open, ``on_input(layer, hidden_states, other_args, other_kwargs)`` runs before each call of
    the blocks ``layers`` (default: all); it may raise :class:`StopForward` to end the forward there."""

    def make(i: int):
        def hook(mod, args, kwargs):
            rest, kw = _call_rest(args, kwargs)
            on_input(i, block_input(args, kwargs), rest, kw)

        return hook

    todo = range(adapter.num_layers) if layers is None else layers
    with _removed_after(
        [adapter.layers[i].register_forward_pre_hook(make(i), with_kwargs=True) for i in todo]
    ):
        yield


@contextmanager
def sublayer_output_hooks(
    adapter: Adapter,
    on_output: Callable[[int, str, torch.Tensor], None],
    units: Iterable[tuple[int, str]] | None = None,
) -> Iterator[None]:
    """While open, ``on_output(layer, kind, contribution)`` runs after each call of the sublayers ``units``
    (default: attention and MLP of every block), with what the sublayer adds to the residual stream (the
    output of the adapter's ``attn_out`` / ``mlp_out`` module: after a post-norm where the family has one)."""
    todo = [(i, k) for i in range(adapter.num_layers) for k in SUBLAYERS] if units is None else units

    def make(i: int, kind: str):
        def hook(mod, args, out):
            on_output(i, kind, block_output(out))

        return hook

    with _removed_after([adapter.sublayer_out(i, k).register_forward_hook(make(i, k)) for i, k in todo]):
        yield


@contextmanager
def final_hidden_hook(adapter: Adapter, on_hidden: Callable[[torch.Tensor], None]) -> Iterator[None]:
    """While open, ``on_hidden(h_L)`` runs with the last residual stream (the final norm's input) of each
    forward."""
    with _removed_after([adapter.final_norm.register_forward_pre_hook(lambda mod, args: on_hidden(args[0]))]):
        yield


def replay_block(
    block: nn.Module, h: torch.Tensor, args: tuple = (), kwargs: dict | None = None
) -> torch.Tensor:
    """The block's output stream for input ``h`` and a recorded call's other arguments."""
    return block_output(block(h, *args, **(kwargs or {})))


# --- one forward recorded, and re-runs of its suffixes -------------------------------------------------


@dataclass
class RecordedForward:
    inputs: list[torch.Tensor]  # per block: its input stream
    calls: list[tuple[tuple, dict]]  # per block: the other positional and keyword arguments it got
    logits: torch.Tensor  # the model's output logits, float32


def record_forward(
    model, adapter: Adapter, batch: torch.Tensor, attention_mask=None, position_ids=None
) -> RecordedForward:
    """One forward of ``batch`` recording every block's input and call, and the logits (float32)."""
    L = adapter.num_layers
    inputs: list[Any] = [None] * L
    calls: list[Any] = [None] * L

    def keep(i: int, h: torch.Tensor, args: tuple, kwargs: dict) -> None:
        inputs[i] = h
        calls[i] = (args, kwargs)

    kw: dict[str, Any] = {}
    if attention_mask is not None:
        kw["attention_mask"] = attention_mask
    if position_ids is not None:
        kw["position_ids"] = position_ids
    with block_input_hooks(adapter, keep):
        logits = model(batch, use_cache=False, **kw).logits.float()
    return RecordedForward(inputs, calls, logits)


def suffix_hidden(adapter: Adapter, rec: RecordedForward, start: int) -> torch.Tensor:
    """The last residual stream with blocks ``start … L−1`` re-run from the recorded input of ``start``."""
    h = rec.inputs[start]
    for j in range(start, adapter.num_layers):
        args, kwargs = rec.calls[j]
        h = replay_block(adapter.layers[j], h, args, kwargs)
    return h


def suffix_logits(
    adapter: Adapter, rec: RecordedForward, start: int, last_only: bool = False
) -> torch.Tensor:
    """Blocks ``start … L−1`` re-run from the recorded input of ``start``, then norm and unembedding
    (``last_only``: of the last position only, all a multiple-choice prompt needs)."""
    h = suffix_hidden(adapter, rec, start)
    return adapter.logits_from_hidden(h[:, -1:] if last_only else h).float()


#: positions whose logits and KL terms are computed at once when a candidate is scored (positions ×
#: vocabulary floats per chunk, about 100 MB at a 49 152-word vocabulary: never the whole batch's)
KL_CHUNK = 512


def head_kl_sum(
    adapter: Adapter,
    h: torch.Tensor,
    logp_ref: torch.Tensor,
    p_ref: torch.Tensor,
    temperature: float,
    chunk: int = KL_CHUNK,
) -> float:
    """``Σ_t KL(p_ref,t ‖ softmax(z_t / T))`` with ``z = head(h)`` (final norm, unembedding, soft-cap).

    Computed ``chunk`` positions at a time in float32: a chunk's logits become its log-probabilities and
    then, in place, its KL terms (whole-batch temporaries — logits, log-probabilities, ``exp(log p)``,
    difference, product — would cost several passes over ``positions × vocabulary`` floats per
    candidate). ``logp_ref`` / ``p_ref``: the reference log-probabilities and probabilities flattened to
    ``(positions, vocabulary)``, computed once per batch. Per-position sums are accumulated in float64."""
    h = h.reshape(-1, h.shape[-1])
    total = 0.0
    for s in range(0, h.shape[0], chunk):
        logq = log_probs(adapter.logits_from_hidden(h[s : s + chunk]).float(), temperature)
        kl = kl_divergence(logp_ref[s : s + chunk], logq, p_ref[s : s + chunk], overwrite_log_q=True)
        total += float(kl.double().sum())
    return total


def suffix_kl_sum(
    adapter: Adapter,
    rec: RecordedForward,
    start: int,
    logp_flat: torch.Tensor,
    p_flat: torch.Tensor,
    temperature: float,
) -> float:
    """``Σ_t KL(p_ref ‖ p)`` for the model as it is now, re-run from the recorded input of block ``start``
    (the exact counterfactual of a change in blocks ``start …``: a dropped unit, a sparsified block)."""
    return head_kl_sum(adapter, suffix_hidden(adapter, rec, start), logp_flat, p_flat, temperature)


@dataclass
class CounterfactualKL:
    sums: list[float]  # per change: Σ_t KL(p_ref ‖ p_changed) over every scored position
    tokens: int  # scored positions
    reference: list[torch.Tensor] = field(default_factory=list)  # per batch: reference log-probabilities


@torch.no_grad()
def counterfactual_kl_sums(
    model,
    adapter: Adapter,
    input_ids: torch.Tensor,
    changes: Sequence[tuple[int, Callable[[], AbstractContextManager]]],
    *,
    temperature: float = 1.0,
    batch_size: int = 8,
    reference: list[torch.Tensor] | None = None,
    keep_reference: bool = True,
    desc: str = "scoring (KL)",
) -> CounterfactualKL:
    """The exact KL of each temporary change of the model over ``input_ids``, by suffix re-runs.

    ``changes``: per candidate, ``(first block it touches, context manager factory that makes the change
    and undoes it)``. Per batch one forward of the model as it is records every block's input; each
    change then re-runs only the blocks from its first one. ``reference``: log-probabilities per batch
    (at ``temperature``) to compare with; None: the model as it is. ``keep_reference``: return the
    reference used, per batch (so iterative re-scoring keeps the dense distributions while the model
    loses units); False keeps no batch's ``positions × vocabulary`` floats beyond its own scoring."""
    device = input_device(model)
    sums = [0.0] * len(changes)
    refs: list[torch.Tensor] = []
    tokens = 0
    batches = list(range(0, input_ids.shape[0], batch_size))
    with progress_bar(desc, total=len(batches) * max(1, len(changes))) as bar:
        for b, start in enumerate(batches):
            batch = input_ids[start : start + batch_size].to(device)
            rec = record_forward(model, adapter, batch)
            if reference is None:
                logp_ref = log_probs(rec.logits, temperature)
            else:
                logp_ref = reference[b].to(rec.logits.device)
            rec.logits = rec.logits.new_empty(0)  # only the reference is needed from the dense logits
            if keep_reference:
                refs.append(logp_ref)
            logp_flat = logp_ref.reshape(-1, logp_ref.shape[-1])
            p_flat = logp_flat.exp()  # once per batch, not once per candidate
            for k, (first_block, change) in enumerate(changes):
                with change():
                    sums[k] += suffix_kl_sum(adapter, rec, first_block, logp_flat, p_flat, temperature)
                bar.advance(1)
            tokens += batch.numel()
            del rec, logp_ref, logp_flat, p_flat
    return CounterfactualKL(sums, tokens, refs)


# --- layer-wise calibration: block 0's inputs, then block by block -----------------------------------


def _to(obj: Any, device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


@torch.no_grad()
def layer_kwargs(model, adapter: Adapter, input_ids: torch.Tensor) -> list[dict]:
    """The keyword arguments (masks, rotary embeddings, positions …) the model gives each block
    for ``input_ids``.

    The blocks do not need to run for this: each block's forward is swapped for one that records its
    arguments and passes the hidden states through, and the forward stops at the last block (no final
    norm, no unembedding). If a model's loop cannot run on such stand-ins, every block runs for real on
    the one sample instead, with pre-hooks recording the same arguments.
    """
    layers = adapter.layers
    n = len(layers)
    per_layer: list[dict | None] = [None] * n

    def stand_in(i: int):
        def forward(*args, **kwargs):
            per_layer[i] = _call_rest(args, kwargs)[1]
            if i == n - 1:
                raise StopForward
            return block_input(args, kwargs)

        return forward

    saved = [block.__dict__.get("forward") for block in layers]  # e.g. accelerate's device-alignment wrapper
    for i, block in enumerate(layers):
        block.forward = stand_in(i)
    try:
        forward_until_stopped(model, input_ids, use_cache=False)
    except Exception:  # noqa: BLE001 - the stand-ins are only a shortcut; the real forward below is the reference
        per_layer = [None] * n
    finally:
        for block, forward in zip(layers, saved):
            if forward is None:
                del block.forward
            else:
                block.forward = forward
    if all(kw is not None for kw in per_layer):
        return per_layer  # type: ignore[return-value]

    def keep(i: int, h: torch.Tensor, args: tuple, kwargs: dict) -> None:
        per_layer[i] = kwargs

    with block_input_hooks(adapter, keep):
        model(input_ids, use_cache=False)
    return per_layer  # type: ignore[return-value]


@torch.no_grad()
def capture_block_inputs(
    model, adapter: Adapter, input_ids: torch.Tensor, batch_size: int, device
) -> tuple[torch.Tensor, list[dict]]:
    """Inputs of block 0 for every calibration window, and every block's forward kwargs.

    The kwargs are captured from one single-sample forward (they broadcast over the batch); the
    block-0 inputs from forwards stopped at block 0, so no block runs on the whole calibration set.
    """
    embed_device = adapter.embed.weight.device
    per_layer = layer_kwargs(model, adapter, input_ids[:1].to(embed_device))
    captured: list[torch.Tensor] = []

    def stop(i: int, h: torch.Tensor, args: tuple, kwargs: dict) -> None:
        captured.append(h.to(device))
        raise StopForward

    with block_input_hooks(adapter, stop, layers=[0]):
        for i in range(0, input_ids.shape[0], batch_size):
            forward_until_stopped(model, input_ids[i : i + batch_size].to(embed_device), use_cache=False)
    kwargs = [_to(without_cache(kw), device) for kw in per_layer]
    for kw in kwargs:
        kw["use_cache"] = False
    return torch.cat(captured), kwargs


def run_block(
    block: nn.Module, inps: torch.Tensor, outs: torch.Tensor, kwargs: dict, batch_size: int
) -> None:
    """``outs`` = the block's outputs for ``inps``, ``batch_size`` windows at a time."""
    for i in range(0, inps.shape[0], batch_size):
        outs[i : i + batch_size] = replay_block(block, inps[i : i + batch_size], (), kwargs)


@dataclass
class BlockStep:
    """One block of :func:`blocks_in_turn`, on the working device while the caller has it."""

    index: int
    block: nn.Module
    inputs: torch.Tensor  # its inputs, every calibration window
    outputs: torch.Tensor  # where its outputs go (the next block's inputs)
    kwargs: dict  # the keyword arguments the model gives it
    device: torch.device  # the working device
    home: torch.device  # where the block's weights live otherwise
    last: bool  # the last block: its outputs feed nothing
    outputs_written: bool = False  # set by a caller that has written ``outputs`` itself


def blocks_in_turn(
    model,
    adapter: Adapter,
    input_ids: torch.Tensor,
    *,
    batch_size: int,
    device: str | torch.device | None = None,
    desc: str,
) -> Iterator[BlockStep]:
    """Layer-wise calibration over ``input_ids``: yields each block in order with its inputs.

    The caller works on the block (statistics, pruning) while it is yielded; then, unless the caller
    wrote ``step.outputs`` itself (``step.outputs_written``), the block runs on its inputs as it now is
    and its outputs become the next block's inputs — so each block sees the outputs of the blocks before
    it as the caller left them. Block 0's inputs come from :func:`capture_block_inputs`. ``device``: the
    working device (default: the embedding's); each block is moved there while it is yielded and back
    after, so a model kept on the CPU can be calibrated on one GPU. Only two activation buffers
    (``windows × seqlen × hidden``) are alive; freed memory is kept for reuse meanwhile
    (:func:`prunelens.utils.memory.reuse_freed_memory`: the same large activations come and go)."""
    work = torch.device(device) if device is not None else adapter.embed.weight.device
    L = adapter.num_layers
    with reuse_freed_memory():
        inps, kwargs = capture_block_inputs(model, adapter, input_ids, batch_size, work)
        outs = torch.empty_like(inps)
        with progress_bar(desc, total=L) as bar:
            for i in range(L):
                block = adapter.layers[i]
                home = next(block.parameters()).device
                block.to(work)
                try:
                    step = BlockStep(i, block, inps, outs, kwargs[i], work, home, last=i + 1 == L)
                    yield step
                    if not step.last and not step.outputs_written:
                        with torch.no_grad():
                            run_block(block, inps, outs, kwargs[i], batch_size)
                finally:
                    block.to(home)
                inps, outs = outs, inps
                bar.advance()
        del inps, outs
