"""The log-likelihood engine of multiple-choice evaluation: the summed log-probability of each
(context, continuation) request, computed two ways that give the same numbers.

* :meth:`Scorer.rows`: every ``context + continuation`` row separately, right-padded, no attention mask,
  left-truncated to ``max_length + 1`` tokens - what lm-evaluation-harness does.
* :meth:`Scorer.shared`: each distinct context encoded once (left-padded), its KV cache copied to its
  continuations, and only the continuation tokens run again.

:func:`plan_requests` decides which requests take which path (see
:mod:`prunelens.evaluation.multiple_choice` for the rule and what it saves); log-softmax is in float32.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from prunelens.models.adapter import input_device
from prunelens.models.compat import cache_kwargs, output_cache


@dataclass
class Request:
    """Choice ``choice`` of example ``example``: its context tokens and its continuation tokens."""

    example: int
    choice: int
    ctx: list[int]
    cont: list[int]


def supports_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def score_positions(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob (float32 log-softmax) of ``targets`` and whether each is the argmax.

    Shapes: ``logits`` (..., V), ``targets`` (...).
    """
    logits = logits.float()
    lp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    greedy = logits.argmax(dim=-1) == targets
    return lp, greedy


class Scorer:
    """Forward passes of ``model`` that return ``(summed log-prob, every token greedy)`` per request."""

    def __init__(self, model, pad_id: int, max_length: int):
        self.model = model
        self.pad_id = pad_id
        self.max_length = max_length
        self.device = input_device(model)
        self.keep = supports_logits_to_keep(model)

    # ---- lm-eval style: one row per (context, continuation), right padding, no attention mask ----
    def rows(self, reqs: list[Request]) -> list[tuple[float, bool]]:
        inps, starts = [], []
        for r in reqs:
            inp = (r.ctx + r.cont)[-(self.max_length + 1) :][:-1]
            inps.append(inp)
            starts.append(len(inp) - len(r.cont))  # logit index predicting cont[0]
        L = max(map(len, inps))
        ids = torch.full((len(inps), L), self.pad_id, dtype=torch.long)
        for i, inp in enumerate(inps):
            ids[i, : len(inp)] = torch.tensor(inp, dtype=torch.long)
        kw: dict[str, Any] = {}
        offset = 0
        if self.keep:
            n_keep = L - min(starts)
            kw["logits_to_keep"] = n_keep
            offset = L - n_keep
        logits = self.model(input_ids=ids.to(self.device), use_cache=False, **kw).logits
        out = []
        for i, r in enumerate(reqs):
            s = starts[i] - offset
            tgt = torch.tensor(r.cont, dtype=torch.long, device=logits.device)
            lp, greedy = score_positions(logits[i, s : s + len(r.cont)], tgt)
            out.append((float(lp.sum()), bool(greedy.all())))
        return out

    # ---- shared KV: each distinct context once, its cache copied to its continuations ------------
    def shared(self, groups: list[tuple[list[int], list[Request]]]) -> list[list[tuple[float, bool]]]:
        G = len(groups)
        Lc = max(len(ctx) for ctx, _ in groups)
        ids = torch.full((G, Lc), self.pad_id, dtype=torch.long)
        mask = torch.zeros((G, Lc), dtype=torch.long)
        for g, (ctx, _) in enumerate(groups):  # left padding: every context ends at column Lc - 1
            ids[g, Lc - len(ctx) :] = torch.tensor(ctx, dtype=torch.long)
            mask[g, Lc - len(ctx) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        need_more = any(len(r.cont) > 1 for _, rs in groups for r in rs)
        kw: dict[str, Any] = {"logits_to_keep": 1} if self.keep else {}
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=pos.to(self.device),
            use_cache=need_more,
            **kw,
        )
        last = out.logits[:, -1, :]  # (G, V): predicts the first continuation token
        rows = [(g, r) for g, (_, rs) in enumerate(groups) for r in rs]
        first_tok = torch.tensor([r.cont[0] for _, r in rows], dtype=torch.long, device=last.device)
        gidx = torch.tensor([g for g, _ in rows], dtype=torch.long, device=last.device)
        lp0, greedy0 = score_positions(last[gidx], first_tok)
        lps, greedys = lp0.clone(), greedy0.clone()
        if need_more:
            cache = output_cache(out)
            cache.reorder_cache(gidx.to(self.device))
            Lk = max(len(r.cont) - 1 for _, r in rows) or 1
            R = len(rows)
            cids = torch.full((R, Lk), self.pad_id, dtype=torch.long)
            tgts = torch.full((R, Lk), 0, dtype=torch.long)
            valid = torch.zeros((R, Lk), dtype=torch.bool)
            for i, (_, r) in enumerate(rows):
                k = len(r.cont) - 1
                if k:
                    cids[i, :k] = torch.tensor(r.cont[:-1], dtype=torch.long)
                    tgts[i, :k] = torch.tensor(r.cont[1:], dtype=torch.long)
                    valid[i, :k] = True
            ctx_len = mask.sum(-1)[gidx.cpu()]
            mask2 = torch.cat([mask[gidx.cpu()], torch.ones((R, Lk), dtype=torch.long)], dim=1)
            pos2 = ctx_len[:, None] + torch.arange(Lk)[None, :]
            logits = self.model(
                input_ids=cids.to(self.device),
                attention_mask=mask2.to(self.device),
                position_ids=pos2.to(self.device),
                **cache_kwargs(cache),
                use_cache=True,
            ).logits
            lp, greedy = score_positions(logits, tgts.to(logits.device))
            valid = valid.to(logits.device)
            lps = lps + (lp * valid).sum(-1).to(lps.device)
            greedys = greedys & (greedy | ~valid).all(-1).to(greedys.device)
            del cache
        res: list[list[tuple[float, bool]]] = [[] for _ in range(G)]
        for i, (g, _) in enumerate(rows):
            res[g].append((float(lps[i]), bool(greedys[i])))
        return res


SHARE_IF = 0.7  # share a context's KV cache when that reads at most this share of the row path's tokens


ContextGroup = tuple[list[int], list[Request]]  # (context tokens, the requests that share them)


def plan_requests(reqs: list[Request], method: str, max_len: int) -> tuple[list[Request], list[ContextGroup]]:
    """Split requests into (row-path requests, shared-context groups).

    Requests that need left truncation always take the row path (lm-eval's truncation). ``auto``
    shares a context when that reads at most ``SHARE_IF`` of the tokens the row path would (counting
    the padding of the group's continuations): long contexts with short answers (ARC, BoolQ, MMLU,
    HellaSwag) share, short questions with long answers (PIQA) and one-choice groups (WinoGrande's
    per-choice contexts) do not.
    """
    rows = [r for r in reqs if len(r.ctx) + len(r.cont) > max_len + 1]
    rest = [r for r in reqs if len(r.ctx) + len(r.cont) <= max_len + 1]
    if method == "rows":
        return rows + rest, []
    groups: dict[tuple[int, ...], list[Request]] = {}
    for r in rest:
        groups.setdefault(tuple(r.ctx), []).append(r)
    shared = []
    for ctx, rs in groups.items():
        if method == "auto":
            row_cost = sum(len(ctx) + len(r.cont) - 1 for r in rs)
            shared_cost = len(ctx) + len(rs) * max(len(r.cont) - 1 for r in rs)
            if len(rs) == 1 or shared_cost > SHARE_IF * row_cost:
                rows.extend(rs)
                continue
        shared.append((list(ctx), rs))
    return rows, shared


def pad_token_id(tokenizer) -> int:
    """The id that pads a batch (pad, else EOS, else BOS, else 0): masked or past the scored positions."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
        if tid is not None:
            return int(tid)
    return 0
