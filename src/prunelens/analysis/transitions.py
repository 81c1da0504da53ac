"""Sublayer transitions: every layer × {attn, mlp} × {h, z, p}, per analysed token.

For each traced sublayer (:mod:`prunelens.analysis.tracing`) and each valid token the dense and the
pruned residual stream after the sublayer are compared in the three spaces of docs/method.md §1 (see §4.1):

* ``h``: :func:`metrics.perturbation_stats` of ``h' = h + Δh`` — ``cos``, ``one_minus_cos``,
  ``rel_norm``, ``rel_par``, ``rel_perp``, ``par_perp_ratio``, ``alpha`` and Theorem 1
  ``theorem1 = ‖Δh_⊥‖²/(2‖h‖²)`` with ``theorem1_ratio = theorem1 / (1 − cos)``;
* ``z``: the logit lens ``z = W·N(h)`` (final norm ``N``, unembedding ``W``, the model's own logit
  soft-cap; ``final_norm=False`` gives the seed scripts' ``z = W·h``): the same geometry, the centred
  cosine (``cos(z − z̄, z' − z̄')``), top-1 agreement, top-k overlap and rank shift;
* ``p = softmax(z/T)`` for each temperature: ``cos``/``one_minus_cos`` of ``p``, ``kl = KL(p‖p')``,
  ``kl_reverse``, Theorem 2 ``theorem2 = Var_r(Δz)/(2T²)`` (``r ∝ p²``) with its ratio to
  ``1 − cos(p, p')`` and the split ``var_r_par``/``var_r_perp``/``var_r_cross``, Theorem 3
  ``theorem3 = Var_p(Δz)/(2T²)`` with its ratio to the KL, and ``var_p``/``var_uniform``/``var_top{k}``.

Memory: probabilities are never materialised for more than one chunk of tokens × a few states. Each
distinct residual state is unembedded once per chunk (``resid_pre`` of a block is ``resid_post`` of the
previous one) and only per-token scalars are kept. The z/p statistics come from
:mod:`prunelens.analysis.pairstats` (same definitions as :func:`metrics.logit_space_stats`, which
``exact=True`` uses instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from prunelens.analysis import metrics as M
from prunelens.analysis.pairstats import (
    DEFAULT_KS,
    GEOMETRY_KEYS,
    LogitState,
    default_k,
    p_keys,
    pair_stats,
    z_keys,
)
from prunelens.analysis.tracing import plan_counterfactuals, trace
from prunelens.models.adapter import Adapter, input_device
from prunelens.utils.progress import progress_bar

__all__ = ["H_METRICS", "TransitionsResult", "transitions", "logit_lens", "Sequences", "stats_rows"]

H_METRICS = list(GEOMETRY_KEYS)  # hidden space: the geometry only (no logits, no probabilities)

#: metric names in the tables: probability-space keys lose their ``prob_`` prefix (space is a column)
P_RENAME = {"prob_cos": "cos", "prob_one_minus_cos": "one_minus_cos"}


def logit_lens(adapter: Adapter, h: Tensor, final_norm: bool = True) -> Tensor:
    """``z = W · N(h)`` (or ``W · h`` with ``final_norm=False``), soft-capped as the model does, float32."""
    z = adapter.logits_from_hidden(h, apply_final_norm=final_norm)
    return z if z.dtype in (torch.float32, torch.float64) else z.float()


@dataclass
class Sequences:
    """Token sequences to analyse: ``prompt`` tokens followed by ``generated`` tokens, per prompt."""

    prompt_ids: list[list[int]]
    generated_ids: list[list[int]]
    labels: list[str] | None = None  # a name per prompt (defaults to its index)

    def __post_init__(self):
        if len(self.prompt_ids) != len(self.generated_ids):
            raise ValueError("prompt_ids and generated_ids must have one entry per prompt")
        if any(len(p) == 0 for p in self.prompt_ids):
            raise ValueError("every prompt needs at least one token")

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def full(self, i: int) -> list[int]:
        return list(self.prompt_ids[i]) + list(self.generated_ids[i])

    def batch(self, idx: list[int], pad_id: int, side: str = "right") -> tuple[Tensor, Tensor]:
        """``(input_ids, mask)`` of prompts ``idx`` padded to a common length (mask True on tokens)."""
        seqs = [self.full(i) for i in idx]
        L = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), L), int(pad_id), dtype=torch.long)
        mask = torch.zeros((len(seqs), L), dtype=torch.bool)
        for r, s in enumerate(seqs):
            if side == "right":
                ids[r, : len(s)] = torch.tensor(s)
                mask[r, : len(s)] = True
            else:
                ids[r, L - len(s) :] = torch.tensor(s)
                mask[r, L - len(s) :] = True
        return ids, mask


class TracedSublayer(NamedTuple):
    """One sublayer a transitions run traced: where it is, how it was perturbed,
    and whether the variant prunes it."""

    layer: int
    kind: str  # attn | mlp
    counterfactual: str  # drop | override
    in_variant: bool


@dataclass
class TransitionsResult:
    """Per-token transition statistics of one variant.

    ``tokens``: per analysed token ``prompt`` (index), ``position`` (0-based in its sequence),
    ``position_kind`` ("prompt" | "generated"), ``token_id``. ``entries``: per traced sublayer
    ``(layer, sublayer, counterfactual, in_variant)``. ``values[(space, metric, T)]``: float32 array
    ``(n_entries, n_tokens)``; ``T`` is None for the temperature-independent spaces h and z.
    """

    variant: str
    tokens: dict[str, np.ndarray]
    entries: list[TracedSublayer]
    values: dict[tuple[str, str, float | None], np.ndarray]
    temperatures: tuple[float, ...]
    final_norm: bool
    notes: list[str] = field(default_factory=list)
    state_bytes: int = 0
    unembeddings: int = 0  # logit-lens projections computed (distinct states × tokens / tokens)

    @property
    def n_tokens(self) -> int:
        return len(self.tokens["prompt"])

    def frame(self):
        """The long table: one row per token × sublayer × space × metric (× temperature)."""
        from prunelens.analysis.tables import transitions_frame

        return transitions_frame(self)

    def relabel(self, variant: str, in_variant: dict[tuple[int, str], bool]) -> TransitionsResult:
        """The same measurements under another variant name and ``in_variant`` flags (no copy of values)."""
        entries = [
            e._replace(in_variant=in_variant.get((e.layer, e.kind), e.in_variant)) for e in self.entries
        ]
        return TransitionsResult(
            variant,
            self.tokens,
            entries,
            self.values,
            self.temperatures,
            self.final_norm,
            list(self.notes),
            self.state_bytes,
            self.unembeddings,
        )

    def select(
        self,
        space: str,
        metric: str,
        T: float | None = None,
        *,
        in_variant: bool | None = None,
        kind: str | None = None,
    ) -> np.ndarray:
        """Values of one metric, rows = entries (filtered), columns = tokens."""
        if space == "p" and T is None:
            T = self.temperatures[0]
        v = self.values[(space, metric, T if space == "p" else None)]
        keep = [
            j
            for j, e in enumerate(self.entries)
            if (in_variant is None or e.in_variant == in_variant) and (kind is None or e.kind == kind)
        ]
        return v[keep]


def stats_rows(
    dense: LogitState,
    pruned: LogitState,
    temps,
    ks,
    *,
    exact: bool = False,
    z_dense: Tensor | None = None,
    z_pruned: Tensor | None = None,
) -> dict[tuple[str, str, float | None], Tensor]:
    """z- and p-space statistics of one pair for all temperatures, keyed ``(space, metric, T)``."""
    out: dict[tuple[str, str, float | None], Tensor] = {}
    zk, pk = z_keys(ks), p_keys(ks)
    for j, T in enumerate(temps):
        if exact:
            st = M.logit_space_stats(
                dense.z if z_dense is None else z_dense, pruned.z if z_pruned is None else z_pruned, T, ks
            )
        else:
            st = pair_stats(dense, pruned, T, ks, want_z=(j == 0))
        if j == 0:
            for k in zk:
                out[("z", k, None)] = st[k]
        for k in pk:
            out[("p", P_RENAME.get(k, k), float(T))] = st[k]
    return out


def check_temperatures(temperatures) -> tuple[float, ...]:
    seq = temperatures if isinstance(temperatures, (list, tuple)) else [temperatures]
    temps = tuple(float(M.check_temperature(t)) for t in seq)
    if not temps:
        raise ValueError("at least one temperature is needed")
    return temps


@dataclass(frozen=True)
class _ChunkSettings:
    """How one batch's traced states are measured: temperatures, top-k, and the logit-lens chunking."""

    temps: tuple[float, ...]
    ks: tuple[int, ...]
    K: int  # top-K each LogitState caches
    exact: bool
    final_norm: bool
    chunk_tokens: int
    unembed_rows: int


@torch.no_grad()
def transitions(
    model,
    sequences: Sequences,
    variant=None,
    *,
    temperatures=(1.0,),
    scope: str = "all",
    layers=None,
    final_norm: bool = True,
    batch_size: int = 4,
    chunk_tokens: int = 32,
    ks=DEFAULT_KS,
    exact: bool = False,
    positions: str = "all",
    pad_id: int = 0,
    unembed_rows: int = 256,
    desc: str = "transitions",
) -> TransitionsResult:
    """Trace ``sequences`` through the dense model and measure every planned sublayer transition.

    ``variant``: a :class:`~prunelens.analysis.variants.Variant` (None: drop-each of the dense model);
    ``scope``: see :func:`~prunelens.analysis.tracing.plan_counterfactuals`; ``positions``: ``all``,
    ``prompt`` or ``generated`` tokens; ``chunk_tokens``: tokens per logit-lens chunk (memory ~
    ``chunk_tokens × vocab × 4 B`` × a dozen buffers); ``unembed_rows``: rows per logit-lens matrix
    product (several states of a chunk are projected together).
    """
    temps = check_temperatures(temperatures)
    if positions not in ("all", "prompt", "generated"):
        raise ValueError(f"positions must be all, prompt or generated, got {positions!r}")
    if batch_size < 1 or chunk_tokens < 1:
        raise ValueError("batch_size and chunk_tokens must be positive")
    adapter = Adapter(model)
    plan, notes = plan_counterfactuals(adapter, variant, scope=scope, layers=layers)
    if not plan:
        raise ValueError("nothing to analyse: the variant prunes no sublayer in the selected layers")
    entries = _traced_sublayers(plan)
    V = adapter.unembed.weight.shape[0]
    for k in ks:
        M._check_k(k, V)
    settings = _ChunkSettings(temps, ks, default_k(ks, V), exact, final_norm, chunk_tokens, unembed_rows)

    chunks_vals: dict[tuple, list[np.ndarray]] = {}
    tok_cols: dict[str, list[np.ndarray]] = {
        "prompt": [],
        "position": [],
        "position_kind": [],
        "token_id": [],
    }
    state_bytes = 0
    n_unembed = 0
    with progress_bar(desc, total=len(sequences)) as bar:
        for b0 in range(0, len(sequences), batch_size):
            idx = list(range(b0, min(b0 + batch_size, len(sequences))))
            ids, mask = sequences.batch(idx, pad_id, side="right")
            ids = ids.to(input_device(model))
            mask = mask.to(ids.device)
            tr = trace(model, ids, mask, counterfactuals=plan)
            notes = list(dict.fromkeys(notes + tr.notes))
            state_bytes = max(state_bytes, tr.state_bytes)
            flat = _analysed_positions(sequences, idx, mask, positions)
            if flat.numel() > 0:
                _append_tokens(tok_cols, sequences, idx, ids, flat)
                buf, n = _measure_batch(adapter, tr, flat, entries, settings)
                n_unembed += n
                # entries not traced in this batch cannot happen (same plan for every batch)
                for key, arr in buf.items():
                    chunks_vals.setdefault(key, []).append(arr)
            del tr
            bar.advance(len(idx))
    if not tok_cols["prompt"]:
        raise ValueError("no token to analyse (empty sequences or positions filter)")
    tokens = {k: np.concatenate(v) for k, v in tok_cols.items()}
    values = {k: np.concatenate(v, axis=1) for k, v in chunks_vals.items()}
    name = variant.name if variant is not None else "drop-each"
    return TransitionsResult(name, tokens, entries, values, temps, final_norm, notes, state_bytes, n_unembed)


def _traced_sublayers(plan) -> list[TracedSublayer]:
    """The planned sublayers in model order (attention before the MLP of each layer)."""
    keys = sorted(plan, key=lambda k: (k[0], 0 if k[1] == "attn" else 1))
    return [TracedSublayer(layer, k, plan[(layer, k)].kind, plan[(layer, k)].in_variant) for layer, k in keys]


def _analysed_positions(sequences: Sequences, idx: list[int], mask: Tensor, positions: str) -> Tensor:
    """Flat indices (into the batch's ``rows × length``) of the tokens the ``positions`` filter keeps."""
    sel = mask.clone()
    for r, i in enumerate(idx):
        P = len(sequences.prompt_ids[i])
        n = len(sequences.full(i))
        if positions == "prompt":
            sel[r, P:n] = False
        elif positions == "generated":
            sel[r, :P] = False
    return sel.flatten().nonzero().flatten()


def _append_tokens(
    tok_cols: dict[str, list[np.ndarray]], sequences: Sequences, idx, ids: Tensor, flat
) -> None:
    """Add the batch's analysed tokens (prompt index, position, prompt/generated, token id) to the columns."""
    rows, cols = flat // ids.shape[1], flat % ids.shape[1]
    pidx = torch.tensor(idx)[rows.cpu()]
    plen = torch.tensor([len(sequences.prompt_ids[i]) for i in idx])[rows.cpu()]
    tok_cols["prompt"].append(pidx.numpy().astype(np.int32))
    tok_cols["position"].append(cols.cpu().numpy().astype(np.int32))
    tok_cols["position_kind"].append(np.where(cols.cpu().numpy() < plen.numpy(), "prompt", "generated"))
    tok_cols["token_id"].append(ids[rows, cols].cpu().numpy().astype(np.int32))


def _measure_batch(
    adapter: Adapter, tr, flat: Tensor, entries: list[TracedSublayer], s: _ChunkSettings
) -> tuple[dict[tuple, np.ndarray], int]:
    """Every metric of every traced sublayer at the batch's analysed tokens, chunk by chunk of tokens.

    Returns ``{(space, metric, T): (n_entries, n_tokens) array}`` and how many states were unembedded."""
    batch = _BatchMeasure(adapter, tr, flat, {(e.layer, e.kind): j for j, e in enumerate(entries)}, s)
    n_unembed = 0
    for c0 in range(0, batch.n_tok, s.chunk_tokens):
        n_unembed += batch.chunk(c0, min(batch.n_tok, c0 + s.chunk_tokens))
    return batch.buf, n_unembed


class _BatchMeasure:
    """One traced batch: its states flattened to the analysed tokens, the order in which the sublayers use
    them, and the ``(n_entries, n_tokens)`` buffers the chunks fill."""

    def __init__(
        self, adapter: Adapter, tr, flat: Tensor, index: dict[tuple[int, str], int], s: _ChunkSettings
    ):
        self.adapter, self.tr, self.flat, self.index, self.s = adapter, tr, flat, index, s
        self.n_tok = flat.numel()
        self.flat_states: dict[int, Tensor] = {}
        self.buf = {("h", m, None): self.new_buffer() for m in H_METRICS}
        # distinct states in first-use order, and the last sublayer that needs each
        self.state_order: list[Tensor] = []
        self.last_use: dict[int, int] = {}
        for si, st in enumerate(tr.sublayers):
            for t in (st.dense, st.pruned):
                if id(t) not in self.last_use:
                    self.state_order.append(t)
                self.last_use[id(t)] = si

    def new_buffer(self) -> np.ndarray:
        return np.empty((len(self.index), self.n_tok), dtype=np.float32)

    def rows_of(self, t: Tensor, c0: int, c1: int) -> Tensor:
        """Analysed tokens ``c0:c1`` of state ``t`` (``(rows, length, d)``), as ``(c1 − c0, d)``."""
        ft = self.flat_states.get(id(t))
        if ft is None:
            ft = self.flat_states[id(t)] = t.reshape(-1, t.shape[-1])
        return ft.index_select(0, self.flat[c0:c1])

    def chunk(self, c0: int, c1: int) -> int:
        """Tokens ``c0:c1``: each distinct state unembedded once (a few states per matrix product) and
        released after the last sublayer that needs it. Returns how many states were unembedded."""
        s, buf = self.s, self.buf
        cache: dict[int, LogitState] = {}
        zraw: dict[int, Tensor] = {}
        nxt = 0
        group = max(1, s.unembed_rows // s.chunk_tokens)
        for si, st in enumerate(self.tr.sublayers):
            j = self.index[(st.layer, st.kind)]
            hs = M.perturbation_stats(self.rows_of(st.dense, c0, c1), self.rows_of(st.pruned, c0, c1))
            for m in H_METRICS:
                buf[("h", m, None)][j, c0:c1] = hs[m].float().cpu().numpy()
            for t in (st.dense, st.pruned):
                if id(t) not in cache:
                    # unembed the next few states in one matrix product (small products are slow)
                    todo = self.state_order[nxt : nxt + group]
                    nxt += len(todo)
                    H = torch.cat([self.rows_of(u, c0, c1) for u in todo])
                    Z = logit_lens(self.adapter, H, s.final_norm)
                    c = c1 - c0
                    for g, u in enumerate(todo):
                        z = Z[g * c : (g + 1) * c]
                        cache[id(u)] = LogitState(z, s.K)
                        if s.exact:
                            zraw[id(u)] = z
            res = stats_rows(
                cache[id(st.dense)],
                cache[id(st.pruned)],
                s.temps,
                s.ks,
                exact=s.exact,
                z_dense=zraw.get(id(st.dense)),
                z_pruned=zraw.get(id(st.pruned)),
            )
            for key, v in res.items():
                arr = buf.get(key)
                if arr is None:
                    arr = buf[key] = self.new_buffer()
                arr[j, c0:c1] = v.float().cpu().numpy()
            for t in (st.dense, st.pruned):
                if self.last_use[id(t)] == si and id(t) in cache:
                    cache.pop(id(t)).release()
                    zraw.pop(id(t), None)
        for s_ in cache.values():
            s_.release()
        return nxt
