"""Perplexity of a causal LM over a token stream, with non-overlapping or sliding windows.

``ppl = exp( Σ_t −log p(x_t | x_<t) / N )`` over the scored tokens. With ``stride < seqlen`` each
window re-reads ``seqlen − stride`` tokens of context and scores only the tokens not scored before
(the sliding-window evaluation of the transformers perplexity guide); ``stride = seqlen`` gives the
non-overlapping windows of the SparseGPT/Wanda papers. Log-probabilities are taken in float32.

Models whose tokenizer prepends a BOS token to every text (Gemma, Llama 2, ...) have never seen a
sequence that does not start with it; scoring them on bare slices of a stream inflates perplexity
several-fold. With ``bos_id`` every window is ``[BOS] + seqlen − 1`` stream tokens and the first of
them is scored too (predicted from BOS alone), as lm-evaluation-harness's rolling log-likelihood
scores a document's first token. :func:`prunelens.data.calibration.bos_prefix` says whether a
tokenizer wants it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from prunelens.models.adapter import input_device
from prunelens.utils.progress import progress_bar


@dataclass
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    tokens: int
    windows: int
    bos_id: int | None = None  # the BOS token each window started with (None: bare stream slices)
    window_nll: list[float] = field(default_factory=list)  # summed NLL of each window's scored tokens
    window_tokens: list[int] = field(default_factory=list)  # scored tokens per window

    def to_dict(self) -> dict:
        return {
            "ppl": self.ppl,
            "nll": self.nll,
            "tokens": self.tokens,
            "windows": self.windows,
            "bos_id": self.bos_id,
        }


def _windows(n: int, seqlen: int, stride: int, *, prefixed: bool = False) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) for each window of stream tokens over a stream of ``n``.

    ``prefixed``: each window is read after a BOS token, so its position 0 has context and is scored.
    """
    out = []
    prev_end = 0
    lowest = 0 if prefixed else 1  # without a prefix, position 0 of a window has no context
    for begin in range(0, n - 1 + int(prefixed), stride):
        end = min(begin + seqlen, n)
        first = max(prev_end, begin + lowest) - begin
        if end - begin >= 2 - int(prefixed) and first < end - begin:
            out.append((begin, end, first))
        prev_end = end
        if end == n:
            break
    return out


@torch.no_grad()
def perplexity(
    model,
    stream: torch.Tensor,
    *,
    seqlen: int = 256,
    stride: int | None = None,
    batch_size: int = 4,
    max_windows: int | None = None,
    bos_id: int | None = None,
    desc: str = "perplexity",
) -> PerplexityResult:
    """Perplexity of ``model`` on the 1-D token ``stream`` (windows of ``seqlen`` tokens, BOS included)."""
    stride = stride or seqlen
    if not 0 < stride <= seqlen:
        raise ValueError(f"stride must be in (0, seqlen={seqlen}]; got {stride}")
    prefixed = bos_id is not None
    width = seqlen - int(prefixed)  # stream tokens per window
    if width < 1:
        raise ValueError(f"seqlen must leave room for the BOS token; got {seqlen}")
    stream = stream.reshape(-1)
    wins = _windows(int(stream.numel()), width, min(stride, width), prefixed=prefixed)
    # windows of full length batch together; a shorter tail window runs on its own
    if max_windows is not None:
        wins = wins[:max_windows]
    if not wins:
        raise ValueError(f"token stream too short for perplexity: {stream.numel()} tokens")
    device = input_device(model)
    window_nll: list[float] = []
    window_tokens: list[int] = []
    groups: list[list[tuple[int, int, int]]] = []
    for w in wins:
        if groups and len(groups[-1]) < batch_size and (groups[-1][0][1] - groups[-1][0][0]) == (w[1] - w[0]):
            groups[-1].append(w)
        else:
            groups.append([w])
    with progress_bar(desc, total=len(wins)) as bar:
        for group in groups:
            ids = torch.stack([stream[b:e] for b, e, _ in group])
            if prefixed:
                ids = torch.cat([torch.full((len(group), 1), int(bos_id), dtype=ids.dtype), ids], dim=1)
            ids = ids.to(device)
            logits = model(ids, use_cache=False).logits[:, :-1].float()
            targets = ids[:, 1:]
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
            nll = nll.view(len(group), -1)
            shift = 0 if prefixed else 1  # nll[:, j] scores input token j + 1
            for row, (_, _, first) in enumerate(group):
                scored = nll[row, first - shift :]
                window_nll.append(float(scored.double().sum()))
                window_tokens.append(scored.numel())
            bar.advance(len(group))
    total_tok = sum(window_tokens)
    mean = sum(window_nll) / total_tok
    return PerplexityResult(math.exp(mean), mean, total_tok, len(wins), bos_id, window_nll, window_tokens)
