"""Scoring what to drop by its effect in the space the use reads (the ``generation`` and ``choice``
objectives); the ``hidden`` objective is the cosine rule of :mod:`prunelens.prune.scoring`.

The hidden-state cosine between a sublayer's input and output stream is near 1 for every candidate, yet
the candidates differ by an order of magnitude in what they do to the next-token distribution, the
quantity that compounds during decoding (benchmarks/README.md, § What the default study's report says,
and § Choosing what to drop). So:

* ``generation`` — for each candidate unit ``u`` (an attention or MLP sublayer, or a block), the exact
  counterfactual ``KL(p_dense ‖ p_{−u})`` of the next-token distributions at temperature ``T``, averaged
  over the calibration tokens (full vocabulary, float32). With units already dropped (iterative
  re-scoring) the candidate model is the current one minus ``u``, and the reference stays the dense
  model's distribution, so interactions between removals count.
* ``choice`` — on lettered multiple-choice prompts, the KL between the dense and the candidate's option
  distributions renormalised over the option letters, and the share of questions whose argmax option
  flips: what multiple choice reads, a small subspace of ``p``.

**Exact and cheap enough.** One dense pass per batch records each block's input stream and the
arguments the model passes to it; removing a unit of block ``i`` leaves blocks ``0 … i−1`` unchanged, so
its counterfactual re-runs only blocks ``i … L−1`` from the recorded input, then the final norm and
unembedding: about half a forward pass per candidate on the blocks (the capture engine,
:mod:`prunelens.models.capture`, which also chunks the full-vocabulary KL so that no whole-batch
``positions × vocabulary`` temporary is made per candidate).

Droppability for :mod:`prunelens.prune.choose` is the negated divergence (higher = safer to remove).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from prunelens.models.adapter import (
    Adapter,
    drop_sublayer,
    get_submodule,
    input_device,
    set_submodule,
)
from prunelens.models.capture import (
    counterfactual_kl_sums,
    record_forward,
    sublayer_output_hooks,
    suffix_logits,
)
from prunelens.plan import SUBLAYERS
from prunelens.utils.kl import kl_divergence, log_probs
from prunelens.utils.progress import progress_bar

__all__ = [
    "OBJECTIVES",
    "ESTIMATORS",
    "dense_reference",
    "ObjectiveScores",
    "ChoiceSet",
    "temporarily_dropped",
    "candidates",
    "counterfactual_kl",
    "choice_divergence",
    "set_kl",
    "choice_set_kl",
    "fisher_kl_estimate",
]

#: what a drop is chosen to preserve: the hidden stream (cosine), next-token distributions, option choice
OBJECTIVES = ("hidden", "generation", "choice")
#: how a KL objective is measured: exactly (a counterfactual per unit) or by the Fisher estimate
ESTIMATORS = ("exact", "fisher")


@dataclass
class ObjectiveScores:
    """Per-unit divergence of one objective (``None``: not a candidate, e.g. already dropped)."""

    objective: str
    divergence: dict[str, list[float | None]]  # kind -> per layer: mean KL (lower = safer to drop)
    flip_rate: dict[str, list[float | None]] = field(default_factory=dict)  # choice only
    tokens: int = 0  # scored positions (generation: tokens; choice: questions)
    temperature: float = 1.0
    method: str = "exact counterfactual (suffix re-run from the recorded block input)"

    def by_kind(self) -> dict[str, list[float | None]]:
        """Droppability for :mod:`prunelens.prune.choose`: the negated divergence."""
        return {k: [None if v is None else -v for v in vs] for k, vs in self.divergence.items()}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "objective": self.objective,
            "kl": self.divergence,
            "tokens" if self.objective == "generation" else "questions": self.tokens,
            "temperature": self.temperature,
            "method": self.method,
        }
        if self.flip_rate:
            d["flip_rate"] = self.flip_rate
        return d


@dataclass(frozen=True)
class ChoiceSet:
    """Lettered multiple-choice prompts, tokenised (built by a caller that knows the prompt format):
    ``prompts[q]`` the token ids, ``options[q]`` per option the token ids that spell its letter."""

    prompts: list[list[int]]
    options: list[list[list[int]]]
    source: str = ""

    def __post_init__(self):
        if not self.prompts:
            raise ValueError("the choice objective needs at least one multiple-choice question")
        if len(self.prompts) != len(self.options):
            raise ValueError("one option list per prompt is needed")


@contextmanager
def temporarily_dropped(adapter: Adapter, units: Sequence[tuple[int, str]]) -> Iterator[None]:
    """Inside the block, the ``(layer, kind)`` units (``kind`` attn, mlp or block) are no-ops; restored after.
    A block is both of its sublayers dropped: a block contributing nothing is the identity."""
    saved: list[tuple[Any, str, Any]] = []
    try:
        for layer, kind in units:
            for k in ("attn", "mlp") if kind == "block" else (kind,):
                if adapter.is_dropped(layer, k):
                    continue
                block = adapter.layers[layer]
                for path in (adapter._path(k), *adapter.sublayer_norms(k)):
                    saved.append((block, path, get_submodule(block, path)))
                drop_sublayer(adapter, layer, k)
        yield
    finally:
        for block, path, old in reversed(saved):
            set_submodule(block, path, old)


def _kl_sum(logp_ref: torch.Tensor, z: torch.Tensor, temperature: float, mask=None) -> float:
    """``Σ_t KL(p_ref,t ‖ softmax(z_t / T))`` over positions (``mask``: weight per position)."""
    kl = kl_divergence(logp_ref, log_probs(z, temperature))
    return float((kl * mask).sum() if mask is not None else kl.sum())


def candidates(adapter: Adapter, kinds: Sequence[str]) -> list[tuple[int, str]]:
    """Every unit of ``kinds`` still in the model (a block: while either of its sublayers is)."""
    out = []
    for kind in kinds:
        for i in range(adapter.num_layers):
            if kind == "block":
                if not (adapter.is_dropped(i, "attn") and adapter.is_dropped(i, "mlp")):
                    out.append((i, kind))
            elif not adapter.is_dropped(i, kind):
                out.append((i, kind))
    return out


@torch.no_grad()
def counterfactual_kl(
    model,
    input_ids: torch.Tensor,
    kinds: Sequence[str],
    *,
    temperature: float = 1.0,
    batch_size: int = 8,
    reference: list[torch.Tensor] | None = None,
    desc: str = "scoring (KL)",
) -> tuple[ObjectiveScores, list[torch.Tensor]]:
    """The exact ``KL(p_ref ‖ p_{−u})`` per candidate unit of ``kinds`` over ``input_ids`` (module doc).

    ``reference``: the dense model's log-probabilities per batch (from an earlier call); when ``None``
    the model as it is now is the reference. Returns the scores and the reference used, so iterative
    re-scoring keeps the dense distributions while the model loses units.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    adapter = Adapter(model)
    cands = candidates(adapter, kinds)
    changes = [(layer, lambda u=(layer, kind): temporarily_dropped(adapter, [u])) for layer, kind in cands]
    measured = counterfactual_kl_sums(
        model,
        adapter,
        input_ids,
        changes,
        temperature=temperature,
        batch_size=batch_size,
        reference=reference,
        desc=desc,
    )
    div: dict[str, list[float | None]] = {k: [None] * adapter.num_layers for k in kinds}
    for (layer, kind), s in zip(cands, measured.sums):
        div[kind][layer] = s / measured.tokens
    scores = ObjectiveScores("generation", div, tokens=measured.tokens, temperature=temperature)
    return scores, measured.reference


@torch.no_grad()
def dense_reference(model, input_ids: torch.Tensor, *, temperature: float = 1.0, batch_size: int = 8):
    """The model's next-token log-probabilities at ``temperature`` per batch (float32), the reference
    that :func:`set_kl` compares a pruned set with."""
    device = input_device(model)
    out = []
    for start in range(0, input_ids.shape[0], batch_size):
        z = model(input_ids[start : start + batch_size].to(device), use_cache=False).logits.float()
        out.append(log_probs(z, temperature))
    return out


@torch.no_grad()
def set_kl(
    model,
    input_ids: torch.Tensor,
    reference: list[torch.Tensor],
    *,
    temperature: float = 1.0,
    batch_size: int = 8,
) -> float:
    """Mean ``KL(p_ref ‖ p_model)`` over ``input_ids`` for the model as it is (a whole chosen set dropped):
    the fitness of the budgeted search."""
    device = input_device(model)
    total, tokens = 0.0, 0
    for b, start in enumerate(range(0, input_ids.shape[0], batch_size)):
        batch = input_ids[start : start + batch_size].to(device)
        z = model(batch, use_cache=False).logits.float()
        total += _kl_sum(reference[b].to(z.device), z, temperature)
        tokens += batch.numel()
    return total / tokens


def _option_logprobs(last: torch.Tensor, options: list[list[int]], temperature: float) -> torch.Tensor:
    """Log-probabilities renormalised over the options (each option: the mass of its letter spellings)."""
    logp = log_probs(last, temperature)
    mass = torch.stack([torch.logsumexp(logp[ids], dim=0) for ids in options])
    return mass - torch.logsumexp(mass, dim=0)


def _left_padded(
    prompts: list[list[int]], pad_id: int, device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ids, attention mask and position ids of left-padded prompts (every prompt ends in the last column,
    positions counted from each prompt's first real token)."""
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(prompts), L), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, L - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[r, L - len(p) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


@torch.no_grad()
def choice_divergence(
    model,
    choices: ChoiceSet,
    kinds: Sequence[str],
    *,
    temperature: float = 1.0,
    reference: list[torch.Tensor] | None = None,
    batch_size: int = 16,
    pad_id: int = 0,
    desc: str = "scoring (choice)",
) -> tuple[ObjectiveScores, list[torch.Tensor]]:
    """Per candidate unit: mean KL between the reference and the candidate's renormalised option
    distributions, and the share of questions whose argmax option flips (exact; ``batch_size`` questions
    left-padded per pass, each candidate re-running only its suffix at the last position)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    adapter = Adapter(model)
    device = input_device(model)
    cands = candidates(adapter, kinds)
    kl_sum = {c: 0.0 for c in cands}
    flips = {c: 0 for c in cands}
    refs: list[torch.Tensor] = []
    n = len(choices.prompts)
    starts = list(range(0, n, batch_size))
    with progress_bar(desc, total=len(starts) * max(1, len(cands))) as bar:
        for b0 in starts:
            prompts = choices.prompts[b0 : b0 + batch_size]
            opts = choices.options[b0 : b0 + batch_size]
            ids, mask, pos = _left_padded(prompts, pad_id, device)
            rec = record_forward(model, adapter, ids, attention_mask=mask, position_ids=pos)
            batch_refs = [
                _option_logprobs(rec.logits[r, -1], o, temperature)
                if reference is None
                else reference[b0 + r].to(rec.logits.device)
                for r, o in enumerate(opts)
            ]
            refs.extend(batch_refs)
            for layer, kind in cands:
                with temporarily_dropped(adapter, [(layer, kind)]):
                    z = suffix_logits(adapter, rec, layer, last_only=True)[:, -1]
                for r, o in enumerate(opts):
                    cand = _option_logprobs(z[r], o, temperature)
                    ref = batch_refs[r]
                    kl_sum[(layer, kind)] += float(kl_divergence(ref, cand))
                    flips[(layer, kind)] += int(cand.argmax() != ref.argmax())
                bar.advance(1)
    div: dict[str, list[float | None]] = {k: [None] * adapter.num_layers for k in kinds}
    flip: dict[str, list[float | None]] = {k: [None] * adapter.num_layers for k in kinds}
    for layer, kind in cands:
        div[kind][layer] = kl_sum[(layer, kind)] / n
        flip[kind][layer] = flips[(layer, kind)] / n
    return (
        ObjectiveScores(
            "choice",
            div,
            flip,
            tokens=n,
            temperature=temperature,
            method="exact counterfactual on the last prompt position (option letters renormalised)",
        ),
        refs,
    )


@torch.no_grad()
def choice_set_kl(
    model,
    choices: ChoiceSet,
    reference: list[torch.Tensor],
    *,
    temperature: float = 1.0,
    batch_size: int = 16,
    pad_id: int = 0,
) -> float:
    """Mean option-distribution KL of the model as it is against ``reference`` (the search's fitness)."""
    device = input_device(model)
    total = 0.0
    for b0 in range(0, len(choices.prompts), batch_size):
        ids, mask, pos = _left_padded(choices.prompts[b0 : b0 + batch_size], pad_id, device)
        z = model(ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1].float()
        for r, opts in enumerate(choices.options[b0 : b0 + batch_size]):
            cand = _option_logprobs(z[r], opts, temperature)
            ref = reference[b0 + r].to(cand.device)
            total += float(kl_divergence(ref, cand))
    return total / len(choices.prompts)


@contextmanager
def _sublayer_outputs_with_grad(model, adapter: Adapter, captured: dict) -> Iterator[None]:
    """While open, each forward keeps every present sublayer's output in ``captured[(layer, kind)]``, and
    gradients reach those outputs (the embedding output becomes a leaf that requires grad) while no
    weight requires grad (only activation gradients are computed)."""
    present = [(i, k) for i in range(adapter.num_layers) for k in SUBLAYERS if not adapter.is_dropped(i, k)]

    def keep(layer: int, kind: str, out: torch.Tensor) -> None:
        captured[(layer, kind)] = out

    def embed_hook(mod, args, out):
        return out.detach().requires_grad_(True)

    handle = adapter.embed.register_forward_hook(embed_hook)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with sublayer_output_hooks(adapter, keep, present):
            yield
    finally:
        handle.remove()
        for p, flag in flags:
            p.requires_grad_(flag)


@torch.no_grad()
def _add_fisher_terms(sums: dict, captured: dict, grads: dict, num_layers: int, samples: int) -> None:
    """Add one sample's ``½·a²/samples`` per unit (module doc of :func:`fisher_kl_estimate`): ``grads``
    maps each sublayer to the gradient at its output."""
    for (i, k), g in grads.items():
        a = (g.float() * captured[(i, k)].float()).sum(dim=(-1, -2))
        sums[(i, k)] += 0.5 * float((a * a).sum()) / samples
    for i in range(num_layers):  # a block: both contributions, the gradient at its output
        parts = [(i, k) for k in SUBLAYERS if (i, k) in grads]
        if not parts:
            continue
        g_out = grads[parts[-1]]  # the last writer's gradient is the block output's
        delta = sum(captured[p].float() for p in parts)
        a = (g_out.float() * delta).sum(dim=(-1, -2))
        sums[(i, "block")] += 0.5 * float((a * a).sum()) / samples


def fisher_kl_estimate(
    model,
    input_ids: torch.Tensor,
    kinds: Sequence[str],
    *,
    temperature: float = 1.0,
    samples: int = 1,
    batch_size: int = 8,
    seed: int = 0,
    desc: str = "scoring (Fisher estimate)",
) -> ObjectiveScores:
    """A fast estimate of every unit's counterfactual KL at once: ``KL ≈ ½ δᵀ F δ`` (second order).

    Removing unit ``u`` changes the residual stream where ``u`` writes by ``δ = −Δ_u`` (its contribution);
    ``F`` is the Fisher information of the model's output distributions with respect to that stream,
    ``F = E_{y∼p_T}[∇ log p_T(y) ∇ log p_T(y)ᵀ]``, so ``δᵀFδ = E_y[(∇ log p_T(y) · δ)²]``. One backward
    pass of ``Σ_t log p_T(y_t)``, with ``y_t`` sampled from the model's own distribution at every
    position, gives that gradient at every unit's output at once; per sequence ``a_u = Σ_t g_{u,t}·Δ_{u,t}``,
    and ``½·mean(a_u²)`` over sequences and ``samples`` estimates the sequence's summed KL (the positions'
    score terms are uncorrelated, so cross terms vanish in expectation). Only activation gradients are
    computed (the weights' are not), so a sample costs about one forward pass more. A block's ``δ`` is
    both contributions with the gradient at the block's output. Seeded; an estimate, checked against
    :func:`counterfactual_kl` in ``benchmarks/bench_choose_objective.py``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    adapter = Adapter(model)
    device = input_device(model)
    L = adapter.num_layers
    want = set(kinds)
    sums = {(i, k): 0.0 for i in range(L) for k in (*SUBLAYERS, "block")}
    gen = torch.Generator(device="cpu").manual_seed(seed)
    captured: dict[tuple[int, str], torch.Tensor] = {}
    tokens = 0
    batches = list(range(0, input_ids.shape[0], batch_size))
    with (
        _sublayer_outputs_with_grad(model, adapter, captured),
        torch.enable_grad(),
        progress_bar(desc, total=len(batches) * samples) as bar,
    ):
        for start in batches:
            batch = input_ids[start : start + batch_size].to(device)
            captured.clear()
            logits = model(batch, use_cache=False).logits.float()
            logp = log_probs(logits, temperature)
            keys = list(captured)
            outs = [captured[key] for key in keys]
            with torch.no_grad():
                probs = logp.exp().reshape(-1, logp.shape[-1]).cpu()
            for s in range(samples):
                y = torch.multinomial(probs, 1, generator=gen).reshape(logp.shape[:-1]).to(logp.device)
                objective = logp.gather(-1, y.unsqueeze(-1)).sum()
                grads = torch.autograd.grad(objective, outs, retain_graph=s + 1 < samples)
                _add_fisher_terms(sums, captured, dict(zip(keys, grads)), L, samples)
                bar.advance(1)
            tokens += batch.numel()
            del logits, logp, outs, grads
            captured.clear()
    div: dict[str, list[float | None]] = {k: [None] * L for k in kinds}
    for (i, k), v in sums.items():
        if k not in want:
            continue
        if k == "block":
            gone = adapter.is_dropped(i, "attn") and adapter.is_dropped(i, "mlp")
        else:
            gone = adapter.is_dropped(i, k)
        div[k][i] = None if gone else v / tokens
    return ObjectiveScores(
        "generation",
        div,
        tokens=tokens,
        temperature=temperature,
        method=f"Fisher estimate ½·E[(∇log p · δ)²], {samples} sampled token(s) per position, seed {seed}",
    )
