"""Fast logit- and probability-space statistics for many (dense, pruned) pairs that share states.

:func:`prunelens.analysis.metrics.logit_space_stats` is the reference: every quantity here has the
same key, the same definition (docs/method.md §2–3) and the same degenerate-input conventions. This module
computes them for the analysis' hot loop, where one logit tensor ``z`` (a "state": the logit lens of
one residual stream point, for a chunk of tokens) takes part in up to two pairs — the residual stream
after attention at layer ``l`` is the *dense* side of the attention transition and the *pruned* side
of the MLP transition. Everything that depends on one state only (top-k, norms, ``p = softmax(z/T)``,
the Theorem-2 weights ``r ∝ p²``, log-partition) is computed once per state (:class:`LogitState`), and
each pair then needs about twenty passes over the vocabulary (:func:`pair_stats`), in place where
possible. What a transitions run costs with this module and with the reference, against its
unavoidable matrix products: benchmarks/README.md, § Measurements behind choices in the code.

How the pair quantities are obtained (``Δz = z' − z``, ``α = ⟨Δz, z⟩/‖z‖²``):

* logit geometry from ``⟨z, Δz⟩``, ``‖z‖²``, ``‖z'‖²`` and the explicit ``Δz_⊥ = Δz − αz``
  (``‖Δz‖² = ‖Δz_⊥‖² + α⟨Δz, z⟩``); the centred cosine the same way from ``z_c = z − mean(z)`` and
  ``Δz_c = Δz − mean(Δz)``, with ``Δz_c⊥`` explicit too;
* ``1 − cos(p, p')`` from ``Δp = p' − p`` and its explicit part orthogonal to ``p``
  (``sin²θ/(1 + cos θ)``, as the reference);
* ``KL(p‖p') = log Z' − log Z − E_p[Δz]/T`` and ``KL(p'‖p) = E_{p'}[Δz]/T − (log Z' − log Z)``,
  with the log-partitions ``log Z = max(z)/T + log Σ exp((z − max z)/T)`` summed and held in float64;
* variances of ``Δz`` under ``p`` and ``r`` from the first two moments of ``Δz − Δz[i*]``, ``i*`` the
  dense top-1 token (the mode of both weightings): neither a shared logit offset nor a distribution
  concentrated on one token makes ``E[x²] − E[x]²`` cancel; ``var_uniform = ‖Δz_c‖²/V``;
* the Theorem-2 split ``var_r_par = α² Var_r(z)``, ``var_r_cross = 2α⟨r(z − E_r z), Δz_⊥⟩`` and
  ``var_r_perp = Var_r(Δz_⊥)`` (explicit, so the three add up to ``var_r`` to rounding);
* ranks of the dense top-k tokens in ``z'`` from the pruned state's cached top-K (exact: a token at
  or above the K-th value has every larger token inside the top-K); tokens that fell out of it are
  counted over the vocabulary.

Precision: float32 like the reference, except that the KL divergences are differences of
``O(|Δz|)`` terms: their absolute error is ~1e-8·(1 + |Δz|) (the reference's term-wise form reaches
~1e-12). Use ``exact=True`` in the analyses (the reference metrics) when KLs below ~1e-6 matter.
``tests/test_analysis_pairstats.py`` checks every key against the reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from prunelens.analysis import metrics as M

__all__ = [
    "LogitState",
    "pair_stats",
    "logit_stats",
    "z_keys",
    "p_keys",
    "default_k",
    "DEFAULT_KS",
    "GEOMETRY_KEYS",
]

DEFAULT_KS: tuple[int, ...] = (5, 10)


def default_k(ks: Sequence[int] = DEFAULT_KS, V: int | None = None) -> int:
    """Top-K cached per state: at least 64 and twice the largest k
    (ranks beyond it cost vocabulary passes)."""
    K = max(64, 2 * max(ks, default=1))
    return K if V is None else min(K, V)


#: the per-position geometry of ``x' = x + Δx`` against ``x`` (hidden and logit space; docs/method.md §2.1)
GEOMETRY_KEYS = (
    "cos",
    "one_minus_cos",
    "rel_norm",
    "rel_par",
    "rel_perp",
    "par_perp_ratio",
    "alpha",
    "theorem1",
    "theorem1_ratio",
)


def z_keys(ks: Sequence[int] = DEFAULT_KS) -> list[str]:
    """Keys of :func:`pair_stats` that describe logit space (temperature independent)."""
    keys = [
        *GEOMETRY_KEYS,
        "centered_cos",
        "centered_one_minus_cos",
        "top1_match",
    ]
    for k in ks:
        keys += [f"top{k}_overlap", f"top{k}_rank_shift"]
    return keys


def p_keys(ks: Sequence[int] = DEFAULT_KS) -> list[str]:
    """Keys of :func:`pair_stats` that describe probability space (they depend on T)."""
    return [
        "prob_cos",
        "prob_one_minus_cos",
        "kl",
        "kl_reverse",
        "theorem2",
        "theorem2_ratio",
        "var_r",
        "var_r_par",
        "var_r_perp",
        "var_r_cross",
        "theorem3",
        "theorem3_ratio",
        "var_p",
        "var_uniform",
        *[f"var_top{k}" for k in ks],
    ]


class _Scratch:
    """Reusable temporaries: a fresh multi-megabyte tensor per operation costs page faults on CPU."""

    def __init__(self):
        self._bufs: dict[tuple, Tensor] = {}

    def get(self, name: str, like: Tensor) -> Tensor:
        key = (name, tuple(like.shape), like.dtype, like.device)
        buf = self._bufs.get(key)
        if buf is None:
            if len(self._bufs) > 32:
                self._bufs.clear()
            buf = self._bufs[key] = torch.empty_like(like, memory_format=torch.contiguous_format)
        return buf


_SCRATCH = _Scratch()


class _Pool:
    """Free lists of per-state buffers, refilled by :meth:`LogitState.release`."""

    def __init__(self, cap: int = 64):
        self._free: dict[tuple, list[Tensor]] = {}
        self.cap = cap

    def take(self, like: Tensor) -> Tensor:
        lst = self._free.get((tuple(like.shape), like.dtype, like.device))
        if lst:
            return lst.pop()
        return torch.empty_like(like, memory_format=torch.contiguous_format)

    def give(self, *bufs: Tensor) -> None:
        for b in bufs:
            lst = self._free.setdefault((tuple(b.shape), b.dtype, b.device), [])
            if len(lst) < self.cap:
                lst.append(b)

    def clear(self) -> None:
        self._free.clear()


_POOL = _Pool()


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise ``⟨a, b⟩`` (last dim) through a reused buffer (a fresh temporary costs page faults on CPU)."""
    return torch.mul(a, b, out=_SCRATCH.get("dot", a)).sum(-1)


def _sq(a: Tensor) -> Tensor:
    """Row-wise ``‖a‖²``: one read pass (a norm reduction), no product written."""
    return torch.linalg.vector_norm(a, dim=-1).square()


def _nz(d: Tensor) -> Tensor:
    return torch.where(d == 0, torch.ones_like(d), d)


class _TState:
    """Temperature-dependent caches of one state."""

    __slots__ = ("p", "r", "rzc", "lse", "np2", "var_r_z")

    def __init__(self, s: LogitState, T: float):
        z = s.z
        x = torch.sub(z, s.zmax.unsqueeze(-1), out=_POOL.take(z))
        if T != 1.0:
            x.div_(T)
        e = x.exp_()
        S = e.sum(-1, dtype=torch.float64)  # float64: rounding S to float32 would cost ~1e-7 in every KL
        self.lse = s.zmax.double() / T + S.log()  # log Σ exp(z/T), float64
        p = e.div_(S.to(e.dtype).unsqueeze(-1))
        self.p = p
        self.np2 = _sq(p)
        r = torch.mul(p, p, out=_POOL.take(z))
        r.div_(_nz(self.np2).unsqueeze(-1))  # r = p² / Σp² (the order-2 escort, Theorem 2)
        self.r = r
        zr = torch.sub(z, _dot(r, z).unsqueeze(-1), out=_SCRATCH.get("zr", z))
        self.rzc = torch.mul(r, zr, out=_POOL.take(z))  # r ⊙ (z − E_r z): Cov_r(z, ·) = ⟨rzc, ·⟩
        self.var_r_z = _dot(self.rzc, zr)

    def release(self) -> None:
        _POOL.give(self.p, self.r, self.rzc)


class LogitState:
    """One logit tensor ``z`` (``(..., V)``, vocabulary last) and its per-state caches.

    ``K`` is the size of the cached top-K (at least the largest ``k`` of the top-k metrics).
    Temperature-dependent caches are built on first use by :meth:`at` and kept.
    """

    def __init__(self, z: Tensor, K: int = 16):
        z = z.detach()
        if z.dtype not in (torch.float32, torch.float64):
            z = z.float()
        self.z = z
        V = z.shape[-1]
        self.V = V
        self.K = min(max(int(K), 1), V)
        self.top_vals, self.top_idx = z.topk(self.K, dim=-1)
        self.zmax = self.top_vals[..., 0]
        self.mean = z.sum(-1) / V
        self.zc = torch.sub(z, self.mean.unsqueeze(-1), out=_POOL.take(z))
        self.nz2 = _sq(z)
        self.nzc2 = _sq(self.zc)
        self._by_t: dict[float, _TState] = {}

    def at(self, T: float) -> _TState:
        T = float(T)
        st = self._by_t.get(T)
        if st is None:
            st = self._by_t[T] = _TState(self, T)
        return st

    def release(self) -> None:
        """Hand this state's buffers back for reuse by later states (the state is unusable afterwards)."""
        for st in self._by_t.values():
            st.release()
        self._by_t.clear()
        _POOL.give(self.zc)
        self.zc = None

    def __len__(self) -> int:
        return self.z.shape[0] if self.z.dim() > 1 else 1


def _geometry(nx2: Tensor, ny2: Tensor, xd: Tensor, nd2: Tensor, perp2: Tensor) -> dict[str, Tensor]:
    """cos and 1 − cos of ``y = x + d`` from ``‖x‖², ‖y‖², ⟨x, d⟩, ‖d‖², ‖d_⊥‖²`` (as metrics._geometry)."""
    zero = (nx2 == 0) | (ny2 == 0)
    nx = nx2.sqrt()
    alpha = xd / _nz(nx2)
    cos = ((nx2 + xd) / _nz(nx * ny2.sqrt())).clamp(-1.0, 1.0)
    omc = torch.where(cos > 0, (perp2 / _nz(ny2)) / (1.0 + cos), 1.0 - cos)
    omc = torch.where(zero, torch.ones_like(omc), omc).clamp(0.0, 2.0)
    cos = torch.where(zero, torch.zeros_like(cos), cos)
    return dict(nx=nx, alpha=alpha, perp2=perp2, cos=cos, omc=omc, nd2=nd2, nx2=nx2)


def _ranks_outside(y: Tensor, vals: Tensor, need: Tensor) -> Tensor:
    """Exact ``#{j : y_j > v}`` for every entry of the rows of ``vals``
    that have an entry flagged in ``need``."""
    out = torch.zeros(vals.shape, dtype=torch.long, device=vals.device)
    rows = need.any(-1).nonzero().flatten()
    if len(rows):
        ys, vs = y[rows], vals[rows]
        for j in range(vals.shape[-1]):  # one comparison pass per rank (k passes over the selected rows)
            out[rows, j] = (ys > vs[:, j : j + 1]).sum(-1)
    return out


def _check_pair(dense: LogitState, pruned: LogitState, ks: tuple[int, ...]) -> int:
    """Refuse states of different shapes or too small a cached top-K; returns the largest k (1 if none)."""
    if pruned.z.shape != dense.z.shape:
        raise ValueError(
            f"dense and pruned logits must have the same shape, got {tuple(dense.z.shape)} and "
            f"{tuple(pruned.z.shape)}"
        )
    kmax = max(ks) if ks else 1
    if ks and (kmax > dense.K or kmax > pruned.K):
        raise ValueError(
            f"the states cache the top-{min(dense.K, pruned.K)}; top-{kmax} metrics need K >= {kmax}"
        )
    for k in ks:
        M._check_k(k, dense.V)
    return kmax


def _var_topk(dense: LogitState, dz: Tensor, ks: tuple[int, ...], T: float) -> dict[str, Tensor]:
    """``var_top{k}``: the variance of ``Δz`` under ``p`` restricted to the dense top-k tokens."""
    out = {}
    for k in ks:
        d = dz.gather(-1, dense.top_idx[..., :k])
        wk = torch.softmax(dense.top_vals[..., :k] / T, -1)
        m = (wk * d).sum(-1, keepdim=True)
        out[f"var_top{k}"] = (wk * (d - m) ** 2).sum(-1)
    return out


def _logit_geometry(g: dict[str, Tensor], alpha: Tensor, nperp2: Tensor) -> dict[str, Tensor]:
    """The :data:`GEOMETRY_KEYS` of the logit pair from its :func:`_geometry` and ``‖Δz_⊥‖²``."""
    nx_safe = _nz(g["nx"])
    perp_n = nperp2.sqrt()
    par_n = alpha.abs() * g["nx"]
    theorem1 = nperp2 / (2.0 * _nz(g["nx2"]))
    return {
        "cos": g["cos"],
        "one_minus_cos": g["omc"],
        "rel_norm": g["nd2"].sqrt() / nx_safe,
        "rel_par": par_n / nx_safe,
        "rel_perp": perp_n / nx_safe,
        "par_perp_ratio": par_n / perp_n,
        "alpha": alpha,
        "theorem1": theorem1,
        "theorem1_ratio": theorem1 / g["omc"],
    }


def _top_tokens(dense: LogitState, pruned: LogitState, ks: tuple[int, ...], kmax: int) -> dict[str, Tensor]:
    """``top{k}_overlap`` and ``top{k}_rank_shift``: ranks in ``z'`` from the pruned state's cached top-K,
    counted over the vocabulary only for the tokens that fell out of it."""
    out: dict[str, Tensor] = {}
    if not ks:
        return out
    zd, ze = dense.z, pruned.z
    dvals = dense.top_vals[..., :kmax]
    didx = dense.top_idx[..., :kmax]
    r0 = (dvals.unsqueeze(-2) > dvals.unsqueeze(-1)).sum(-1)
    v = ze.gather(-1, didx)
    inside = v >= pruned.top_vals[..., -1:]
    r1 = (pruned.top_vals.unsqueeze(-2) > v.unsqueeze(-1)).sum(-1)
    if not bool(inside.all()):
        far = _ranks_outside(ze.reshape(-1, dense.V), v.reshape(-1, kmax), (~inside).reshape(-1, kmax))
        r1 = torch.where(inside, r1, far.reshape(r1.shape))
    shift = (r1 - r0).abs().to(zd.dtype)
    for k in ks:
        hit = (dense.top_idx[..., :k].unsqueeze(-1) == pruned.top_idx[..., :k].unsqueeze(-2)).any(-1)
        out[f"top{k}_overlap"] = hit.to(zd.dtype).mean(-1)
        out[f"top{k}_rank_shift"] = shift[..., :k].mean(-1)
    return out


def pair_stats(
    dense: LogitState,
    pruned: LogitState,
    T: float = 1.0,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    want_z: bool = True,
    want_p: bool = True,
) -> dict[str, Tensor]:
    """Every key of :func:`metrics.logit_space_stats` for ``z = dense.z``, ``z' = pruned.z``
    at temperature ``T``.

    Per position (leading shape of the states). ``want_z=False`` skips the temperature-independent
    logit-space keys (for a second temperature), ``want_p=False`` the probability-space ones.
    """
    # One function on purpose: the passes share scratch buffers in place and their order matters (A holds
    # Δz, then Δz_⊥, then Δz_⊥ centred at the top-1 token; B holds Δz_c⊥, then Δz − Δz[i*], then Δp), so
    # splitting the probability-space part off would hand a dozen live buffers across a call.
    T = M.check_temperature(T)
    ks = tuple(int(k) for k in ks)
    V = dense.V
    kmax = _check_pair(dense, pruned, ks)
    out: dict[str, Tensor] = {}
    zd, ze = dense.z, pruned.z
    A = torch.sub(ze, zd, out=_SCRATCH.get("A", zd))  # Δz
    B = _SCRATCH.get("B", zd)
    tmp = _SCRATCH.get("tmp", zd)
    mdz = A.sum(-1) / V
    zdz = _dot(zd, A)
    alpha = zdz / _nz(dense.nz2)
    top1 = dense.top_idx[..., :1]
    ref = A.gather(-1, top1)  # Δz at the dense top-1 token
    var_top = _var_topk(dense, A, ks, T) if want_p else {}
    # centred logits: x = z_c, Δ = Δz_c = Δz − mean(Δz); its part orthogonal to z_c, explicit
    zcdz = _dot(dense.zc, A)
    ac = zcdz / _nz(dense.nzc2)
    perpc = torch.sub(A, mdz.unsqueeze(-1), out=B).addcmul_(dense.zc, ac.unsqueeze(-1), value=-1.0)
    nperpc2 = _sq(perpc)
    ndzc2 = nperpc2 + ac * zcdz  # ‖Δz_c‖² = ‖Δz_c⊥‖² + α_c²‖z_c‖²: a sum of squares, no cancellation
    if want_p:
        td, te = dense.at(T), pruned.at(T)
        # moments of Δz around its value at the dense top-1 token (the mode of p and of r): no
        # cancellation from a shared offset, nor from a distribution concentrated on one token
        u = torch.sub(A, ref, out=B)
        ep1 = torch.mul(td.p, u, out=tmp).sum(-1)
        ep2 = tmp.mul_(u).sum(-1)
        er1 = torch.mul(td.r, u, out=tmp).sum(-1)
        er2 = tmp.mul_(u).sum(-1)
        eq1 = _dot(te.p, u)
    # Δz_⊥ = Δz − αz, explicit (‖Δz‖² − α⟨Δz, z⟩ would cancel when Δz is nearly parallel to z)
    perp = A.addcmul_(zd, alpha.unsqueeze(-1), value=-1.0)
    nperp2 = _sq(perp)
    g = _geometry(dense.nz2, pruned.nz2, zdz, nperp2 + alpha * zdz, perp2=nperp2)
    if want_z:
        out.update(_logit_geometry(g, alpha, nperp2))
        gc = _geometry(dense.nzc2, pruned.nzc2, zcdz, ndzc2, perp2=nperpc2)
        out["centered_cos"], out["centered_one_minus_cos"] = gc["cos"], gc["omc"]
        out["top1_match"] = (dense.top_idx[..., 0] == pruned.top_idx[..., 0]).to(zd.dtype)
        out.update(_top_tokens(dense, pruned, ks, kmax))
    if want_p:
        var_r = (er2 - er1 * er1).clamp_min(0.0)
        var_p = (ep2 - ep1 * ep1).clamp_min(0.0)
        # Theorem-2 split: Var_r(Δz_∥) = α² Var_r(z); 2·Cov_r(Δz_∥, Δz_⊥) = 2α⟨r(z − E_r z), Δz_⊥⟩;
        # Var_r(Δz_⊥) from Δz_⊥ itself (centred at its top-1 value, as above)
        w = perp.sub_(perp.gather(-1, top1))
        cross = 2.0 * alpha * _dot(td.rzc, w)
        vr1 = torch.mul(td.r, w, out=tmp).sum(-1)
        vr2 = tmp.mul_(w).sum(-1)
        var_r_perp = (vr2 - vr1 * vr1).clamp_min(0.0)
        # probability space: Δp and its part orthogonal to p, explicit
        dp = torch.sub(te.p, td.p, out=B)
        pdp = _dot(td.p, dp)
        ap = pdp / _nz(td.np2)
        perp_p = dp.addcmul_(td.p, ap.unsqueeze(-1), value=-1.0)
        nperp_p2 = _sq(perp_p)
        gp = _geometry(td.np2, te.np2, pdp, nperp_p2 + ap * pdp, perp2=nperp_p2)
        out["prob_cos"], out["prob_one_minus_cos"] = gp["cos"], gp["omc"]
        # KL(p‖p') = log Z' − log Z − E_p[Δz]/T ; KL(p'‖p) = E_p'[Δz]/T − (log Z' − log Z)
        dlse = te.lse - td.lse
        ref64 = ref.squeeze(-1).double()
        out["kl"] = (dlse - (ep1.double() + ref64) / T).clamp_min(0.0).to(zd.dtype)
        out["kl_reverse"] = ((eq1.double() + ref64) / T - dlse).clamp_min(0.0).to(zd.dtype)
        out["var_r"] = var_r
        out["var_r_par"] = alpha * alpha * td.var_r_z
        out["var_r_perp"] = var_r_perp
        out["var_r_cross"] = cross
        out["theorem2"] = var_r / (2.0 * T * T)
        out["theorem2_ratio"] = out["theorem2"] / out["prob_one_minus_cos"]
        out["theorem3"] = var_p / (2.0 * T * T)
        out["theorem3_ratio"] = out["theorem3"] / out["kl"]
        out["var_p"] = var_p
        out["var_uniform"] = ndzc2 / V
        out.update(var_top)
    return out


def logit_stats(
    z: Tensor,
    z_pert: Tensor,
    T: float | Sequence[float] = 1.0,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    exact: bool = False,
) -> dict[str, Tensor] | dict[float, dict[str, Tensor]]:
    """Convenience: the stats of one pair of logit tensors (``exact=True`` calls the metrics reference).

    With a sequence of temperatures returns ``{T: stats}``; the logit-space keys appear in every entry.
    """
    temps = [T] if isinstance(T, (int, float)) else list(T)
    if exact:
        res = {float(t): M.logit_space_stats(z, z_pert, t, ks) for t in temps}
    else:
        K = default_k(ks)
        a, b = LogitState(z, K), LogitState(z_pert, K)
        res = {float(t): pair_stats(a, b, t, ks) for t in temps}
    return res[float(temps[0])] if isinstance(T, (int, float)) else res
