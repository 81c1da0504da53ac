"""Trajectories: dense versus pruned final outputs ``h_L``, ``z``, ``p`` per decoding step.

Decoding (:func:`decode`) is batched with left padding and a KV cache (``use_cache=False`` recomputes
every prefix, for checking), greedy or sampled. Sampling uses the Gumbel-max trick with noise that
depends only on ``(seed, prompt, step)``: the dense and the pruned model see the *same* noise at a
step, so their samples differ only where their distributions do, and a prompt samples the same
tokens alone or in a batch.

Two regimes (docs/method.md §4.2), for step ``t = 1..n``:

* **teacher-forced** — both models read the dense trajectory (prompt + the dense model's tokens). One
  causal forward pass per model over the whole sequence gives every step at once (the state predicting
  token ``t`` is at position ``P + t − 2``); it isolates the per-step error.
* **free-running** — each model reads its own output (KV-cached decoding of the pruned model from the
  prompt, with the same sampler): error plus accumulation. Steps are compared while both trajectories
  last.

Per step: ``h`` = the final residual stream (input of the final norm) compared with
:func:`metrics.perturbation_stats`; ``z`` = the model's logits (final norm, unembedding, soft-cap) and
``p = softmax(z/T)`` with the statistics of :mod:`prunelens.analysis.transitions`. The *first
divergence step* is the first step whose tokens differ: free-running, the two generated tokens;
teacher-forced, the dense token and the pruned model's choice (argmax, or the same Gumbel-max draw)
on the dense prefix — for greedy decoding both give the same step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from prunelens.analysis import metrics as M
from prunelens.analysis.pairstats import DEFAULT_KS, LogitState, default_k
from prunelens.analysis.tracing import model_forward, position_ids
from prunelens.analysis.transitions import H_METRICS, Sequences, check_temperatures, logit_lens, stats_rows
from prunelens.models.adapter import Adapter, input_device
from prunelens.models.compat import cache_kwargs, output_cache
from prunelens.utils.progress import progress_bar

__all__ = [
    "Sampler",
    "Decoded",
    "decode",
    "teacher_forced_hidden",
    "compare_steps",
    "TrajectoriesResult",
    "trajectories",
    "eos_ids_of",
    "first_divergence",
]

REGIMES = ("teacher_forced", "free_running")


@dataclass(frozen=True)
class Sampler:
    """Greedy (``greedy=True``) or Gumbel-max sampling at ``temperature`` with noise seeded by ``seed``."""

    greedy: bool = True
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self):
        M.check_temperature(self.temperature)

    def noise(self, uid: int, step: int, V: int) -> Tensor:
        """Gumbel noise for prompt ``uid`` at ``step`` (1-based): a pure function of (seed, uid, step)."""
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + uid * 7_919 + step) % (2**63 - 1))
        u = torch.rand(V, generator=g, dtype=torch.float64).clamp_(1e-300, 1.0)
        return -torch.log(-torch.log(u))

    def choose(self, logits: Tensor, uids: list[int], step: int) -> Tensor:
        """Next token per row of ``logits`` (``(B, V)``)."""
        if self.greedy:
            return logits.argmax(-1)
        V = logits.shape[-1]
        g = torch.stack([self.noise(u, step, V) for u in uids]).to(logits.device)
        return (logits.double() / self.temperature + g).argmax(-1)

    def describe(self) -> dict:
        return {
            "decoding": "greedy"
            if self.greedy
            else "sampling (Gumbel-max, noise shared by dense and pruned)",
            "temperature": None if self.greedy else self.temperature,
            "seed": self.seed,
        }


def eos_ids_of(model, tokenizer=None) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        e = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(e, int):
            ids.add(e)
        elif isinstance(e, (list, tuple)):
            ids.update(int(x) for x in e)
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


@dataclass
class Decoded:
    """Per prompt: generated tokens (EOS included when reached) and ``h_L`` at each step, ``(n, d)``."""

    tokens: list[list[int]]
    hidden: list[Tensor]
    finished: list[bool]


@torch.no_grad()
def decode(
    model,
    prompt_ids: list[list[int]],
    *,
    max_new_tokens: int,
    eos_ids=(),
    pad_id: int = 0,
    sampler: Sampler = Sampler(),
    use_cache: bool = True,
    batch_size: int = 8,
    uids: list[int] | None = None,
    desc: str = "decoding",
) -> Decoded:
    """Batched decoding (left padding, explicit position ids, KV cache); records ``h_L`` of every step."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    adapter = Adapter(model)
    device = input_device(model)
    eos = set(int(e) for e in eos_ids)
    uids = list(range(len(prompt_ids))) if uids is None else list(uids)
    tokens: list[list[int]] = [[] for _ in prompt_ids]
    hidden: list[list[Tensor]] = [[] for _ in prompt_ids]
    finished = [False] * len(prompt_ids)
    got: dict[str, Tensor] = {}
    hook = adapter.final_norm.register_forward_pre_hook(lambda m, a: got.__setitem__("h", a[0]))
    try:
        with progress_bar(desc, total=len(prompt_ids) * max_new_tokens) as bar:
            for b0 in range(0, len(prompt_ids), batch_size):
                idx = list(range(b0, min(len(prompt_ids), b0 + batch_size)))
                seqs = [list(prompt_ids[i]) for i in idx]
                L = max(len(s) for s in seqs)
                ids = torch.full((len(idx), L), int(pad_id), dtype=torch.long)
                mask = torch.zeros((len(idx), L), dtype=torch.long)
                for r, s in enumerate(seqs):
                    ids[r, L - len(s) :] = torch.tensor(s)
                    mask[r, L - len(s) :] = 1
                ids, mask = ids.to(device), mask.to(device)
                done = torch.zeros(len(idx), dtype=torch.bool)
                past = None
                step_in = ids
                for step in range(1, max_new_tokens + 1):
                    if use_cache:
                        pos = position_ids(mask)[:, -step_in.shape[1] :]
                        out = model(
                            input_ids=step_in,
                            attention_mask=mask,
                            position_ids=pos,
                            **cache_kwargs(past),
                            use_cache=True,
                            logits_to_keep=1,
                        )
                        past = output_cache(out)
                    else:
                        out = model_forward(model, ids, mask.bool())
                    logits = out.logits[:, -1].float()
                    h_last = got["h"][:, -1]
                    nxt = sampler.choose(logits, [uids[i] for i in idx], step).to(device)
                    for r, i in enumerate(idx):
                        if not done[r]:
                            tokens[i].append(int(nxt[r]))
                            hidden[i].append(h_last[r].detach().clone())
                            if int(nxt[r]) in eos:
                                done[r] = True
                                finished[i] = True
                    nxt = torch.where(done.to(device), torch.full_like(nxt, int(pad_id)), nxt)
                    bar.advance(len(idx))
                    if bool(done.all()):
                        bar.advance(len(idx) * (max_new_tokens - step))
                        break
                    ids = torch.cat([ids, nxt[:, None]], dim=1)
                    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                    step_in = nxt[:, None]
    finally:
        hook.remove()
    d = adapter.config.hidden_size if hasattr(adapter.config, "hidden_size") else None
    hid = [torch.stack(h) if h else torch.empty(0, d or 0) for h in hidden]
    return Decoded(tokens, hid, finished)


@torch.no_grad()
def teacher_forced_hidden(
    model, sequences: Sequences, *, pad_id: int = 0, batch_size: int = 8
) -> list[Tensor]:
    """``h_L`` at every decoding step of the dense trajectories, from one causal pass per batch.

    Entry ``i`` has shape ``(n_i, d)``: row ``t − 1`` is the state that predicts generated token ``t``.
    """
    from prunelens.analysis.tracing import forward_final_hidden

    out: list[Tensor] = [None] * len(sequences)  # type: ignore[list-item]
    device = input_device(model)
    for b0 in range(0, len(sequences), batch_size):
        idx = list(range(b0, min(len(sequences), b0 + batch_size)))
        ids, mask = sequences.batch(idx, pad_id, side="right")
        h = forward_final_hidden(model, ids.to(device), mask.to(device))
        for r, i in enumerate(idx):
            P, n = len(sequences.prompt_ids[i]), len(sequences.generated_ids[i])
            out[i] = h[r, P - 1 : P - 1 + n].detach().clone()
    return out


def compare_steps(
    adapter: Adapter,
    h_dense: Tensor,
    h_pruned: Tensor,
    temps,
    *,
    ks=DEFAULT_KS,
    exact: bool = False,
    chunk: int = 32,
) -> dict[tuple[str, str, float | None], np.ndarray]:
    """Per-step statistics of dense versus pruned final states ``(n, d)`` in spaces h, z and p."""
    n = h_dense.shape[0]
    out: dict[tuple[str, str, float | None], np.ndarray] = {}
    if n == 0:
        return out
    V = adapter.unembed.weight.shape[0]
    K = default_k(ks, V)
    for c0 in range(0, n, chunk):
        hd, hp = h_dense[c0 : c0 + chunk], h_pruned[c0 : c0 + chunk]
        res: dict = {("h", m, None): v for m, v in M.perturbation_stats(hd, hp).items() if m in H_METRICS}
        zd, zp = logit_lens(adapter, hd), logit_lens(adapter, hp)
        sd, sp = LogitState(zd, K), LogitState(zp, K)
        res.update(stats_rows(sd, sp, temps, ks, exact=exact, z_dense=zd, z_pruned=zp))
        sd.release()
        sp.release()
        for key, v in res.items():
            out.setdefault(key, np.empty(n, dtype=np.float32))[c0 : c0 + chunk] = v.float().cpu().numpy()
    return out


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """1-based first step where the token lists differ (within the shorter), else None."""
    for t, (x, y) in enumerate(zip(a, b), 1):
        if x != y:
            return t
    return None


@dataclass
class TrajectoriesResult:
    """Per prompt and regime: ``values[(regime, space, metric, T)][prompt]`` = array over steps; tokens."""

    variant: str
    values: dict[tuple[str, str, str, float | None], list[np.ndarray]]
    dense_tokens: list[list[int]]
    pruned_tokens: dict[str, list[list[int]]]  # regime -> per prompt
    divergence: dict[str, list[int | None]]
    temperatures: tuple[float, ...]
    sampler: Sampler
    labels: list[str] = field(default_factory=list)

    def frames(self):
        from prunelens.analysis.tables import trajectories_frames

        return trajectories_frames(self)


@torch.no_grad()
def trajectories(
    model,
    variant,
    prompt_ids: list[list[int]],
    *,
    dense: Decoded | None = None,
    max_new_tokens: int = 32,
    temperatures=(1.0,),
    sampler: Sampler = Sampler(),
    eos_ids=(),
    pad_id: int = 0,
    batch_size: int = 8,
    ks=DEFAULT_KS,
    exact: bool = False,
    regimes=REGIMES,
    labels: list[str] | None = None,
    dense_hidden_tf: list[Tensor] | None = None,
) -> TrajectoriesResult:
    """Teacher-forced and free-running comparison of the dense model and ``variant`` along decoding.

    ``dense``: the dense model's own decoding of ``prompt_ids`` (computed if None, with the same sampler).
    ``dense_hidden_tf``: precomputed teacher-forced dense ``h_L`` (:func:`teacher_forced_hidden`).
    """
    temps = check_temperatures(temperatures)
    for r in regimes:
        if r not in REGIMES:
            raise ValueError(f"unknown regime {r!r}; expected {REGIMES}")
    adapter = Adapter(model)
    decoding = dict(
        max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id, sampler=sampler, batch_size=batch_size
    )
    if dense is None:
        dense = decode(model, prompt_ids, **decoding, desc="decoding (dense)")
    seqs = Sequences(prompt_ids, dense.tokens)
    values: dict[tuple, list[np.ndarray]] = {}
    pruned_tokens: dict[str, list[list[int]]] = {}
    divergence: dict[str, list[int | None]] = {}

    def compare(h_dense: Tensor, h_pruned: Tensor) -> dict:
        return compare_steps(adapter, h_dense, h_pruned, temps, ks=ks, exact=exact)

    if "teacher_forced" in regimes:
        if dense_hidden_tf is None:
            dense_hidden_tf = teacher_forced_hidden(model, seqs, pad_id=pad_id, batch_size=batch_size)
        with variant.active(model):
            h_pruned = teacher_forced_hidden(model, seqs, pad_id=pad_id, batch_size=batch_size)
        _put(
            values,
            "teacher_forced",
            [compare(h, hp) for h, hp in zip(dense_hidden_tf, h_pruned)],
        )
        toks = [_teacher_forced_choices(adapter, sampler, i, h) for i, h in enumerate(h_pruned)]
        pruned_tokens["teacher_forced"] = toks
        divergence["teacher_forced"] = [first_divergence(d, t) for d, t in zip(dense.tokens, toks)]
    if "free_running" in regimes:
        with variant.active(model):
            pr = decode(model, prompt_ids, **decoding, desc=f"decoding ({variant.name})")
        steps = [min(len(d), len(p)) for d, p in zip(dense.tokens, pr.tokens)]
        _put(
            values,
            "free_running",
            [compare(dense.hidden[i][:n], pr.hidden[i][:n]) for i, n in enumerate(steps)],
        )
        pruned_tokens["free_running"] = pr.tokens
        divergence["free_running"] = [first_divergence(d, p) for d, p in zip(dense.tokens, pr.tokens)]
    return TrajectoriesResult(
        variant.name,
        values,
        dense.tokens,
        pruned_tokens,
        divergence,
        temps,
        sampler,
        labels or [str(i) for i in range(len(prompt_ids))],
    )


def _put(values: dict[tuple, list[np.ndarray]], regime: str, per_prompt: list[dict]) -> None:
    """File each prompt's per-step arrays under ``(regime, space, metric, T)`` (an empty array where a
    prompt has none)."""
    for i, res in enumerate(per_prompt):
        for (space, metric, T), arr in res.items():
            values.setdefault((regime, space, metric, T), [np.empty(0, np.float32)] * len(per_prompt))[i] = (
                arr
            )


def _teacher_forced_choices(adapter: Adapter, sampler: Sampler, i: int, h_pruned: Tensor) -> list[int]:
    """The tokens the pruned model would pick at each teacher-forced step of prompt ``i`` (same sampler)."""
    if not h_pruned.shape[0]:
        return []
    z = logit_lens(adapter, h_pruned)
    if sampler.greedy:
        return z.argmax(-1).tolist()
    return [int(sampler.choose(z[t : t + 1], [i], t + 1)[0]) for t in range(z.shape[0])]
