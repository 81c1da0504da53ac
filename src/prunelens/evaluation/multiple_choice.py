"""Multiple-choice evaluation by log-likelihood, computed exactly as lm-evaluation-harness does.

Usage::

    import prunelens
    from prunelens.data.tasks import load_task
    from prunelens.evaluation.multiple_choice import evaluate_multiple_choice

    model, tok = prunelens.load()
    res = evaluate_multiple_choice(model, tok, load_task("arc_easy", limit=200))
    print(res.metrics)          # {'acc', 'acc_norm', 'acc_bytes', 'chance'}; res.score = acc_norm

For each example and choice ``i`` the model scores the continuation ``choices[i]`` after its context
(``contexts[i]`` for WinoGrande-style per-choice contexts, else ``context``)::

    ll_i = Σ_t log p(cont_t | context, cont_<t)        (log-softmax in float32)

and predicts

* ``acc``:       ``argmax_i ll_i``
* ``acc_norm``:  ``argmax_i ll_i / len(choice_i)``, with ``len`` in *characters* of the choice text
  **without** the target delimiter (lm-eval's ``doc_to_choice`` string: ``"no"`` for the continuation
  ``" no"``). For per-choice contexts (WinoGrande) lm-eval's ``doc_to_choice`` is the per-choice
  *context*, so that is what ``acc_norm`` divides by there (lm-eval's definition, kept as is).
* ``acc_bytes``: the same with UTF-8 byte lengths.

Ties go to the first index (``numpy.argmax``). These are the definitions of
``lm_eval/api/task.py`` (``ConfigurableTask.process_results``, output type ``multiple_choice``).

Tokenisation follows lm-eval's ``HFLM``: trailing whitespace of the context moves to the front of
the continuation; the context and the whole string ``context + continuation`` are encoded separately
with the tokenizer's default special tokens (so a BOS is added only if the tokenizer adds one by
itself, or when ``add_bos_token=True``; nothing is added to a string that already starts with the BOS
text); the continuation tokens are ``whole[len(context_tokens):]`` and the model reads
``context_tokens + continuation_tokens``. An empty context is replaced by the BOS token (EOS if the
tokenizer has none). Sequences longer than ``max_length + 1`` are truncated on the left.

Two ways to compute the same numbers, mixed per context by ``method="auto"`` (default):

* shared KV (``"shared_kv"``): each distinct context is encoded once (left-padded batch), its KV cache
  is copied to its choices, and only the continuation tokens are run again. One-token continuations
  (BoolQ, MMLU) need no second pass at all.
* rows (``"rows"``): every ``context + continuation`` row separately, right-padded, sorted by length,
  no attention mask - what lm-eval does.

``"auto"`` shares a context when that reads at most 70 % of the tokens the row path would, counting
padding (so WinoGrande's one-choice contexts take the single-pass row path). Shared batches are
ordered by continuation length, then context length, which keeps the padding of both passes small.
What sharing saves on ARC-Easy, BoolQ and PIQA: benchmarks/README.md, § Measurements behind choices in
the code.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from prunelens.data.tasks import TASKS
from prunelens.evaluation.loglikelihood import ContextGroup, Request, Scorer, pad_token_id, plan_requests
from prunelens.evaluation.results import TaskResult
from prunelens.utils.progress import progress_bar

__all__ = [
    "MAIN_METRIC",
    "default_max_length",
    "encode_pair",
    "evaluate_multiple_choice",
    "main_metric_for",
    "mc_predictions",
    "normalisation_lengths",
]

#: Headline metric per multiple-choice task, as the task specs set it (``TaskSpec.main_metric``, see
#: :mod:`prunelens.data.tasks.multiple_choice`): ``acc_norm`` for ARC, HellaSwag, OpenBookQA and PIQA,
#: ``acc`` for BoolQ, RTE, WinoGrande and MMLU.
MAIN_METRIC: dict[str, str] = {
    name: spec.main_metric for name, spec in TASKS.items() if spec.kind == "mc" and spec.main_metric
}

_TARGET_DELIMITER = " "  # lm-eval's default; prunelens task continuations carry it


def main_metric_for(task: str | None) -> str:
    """The headline metric of ``task`` (``acc`` when the task is unknown)."""
    return MAIN_METRIC.get(task or "", "acc")


# --------------------------------------------------------------------------------------------------
# Tokenisation (lm-eval HFLM semantics)


def _prefix_token_id(tokenizer) -> int:
    """HFLM.prefix_token_id: BOS if the tokenizer has one, else EOS."""
    if tokenizer.bos_token_id is not None:
        return tokenizer.bos_token_id
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to stand in for an empty context")
    return tokenizer.eos_token_id


def _tok_encode(tokenizer, string: str, add_bos_token: bool | None, prefix_text: str | None) -> list[int]:
    """HFLM.tok_encode with ``add_special_tokens=None``."""
    kwargs: dict[str, Any] = {}
    if add_bos_token is not None:
        kwargs["add_special_tokens"] = add_bos_token
    if prefix_text and string.startswith(prefix_text):
        kwargs["add_special_tokens"] = False
    return list(tokenizer.encode(string, **kwargs))


def encode_pair(
    tokenizer, context: str, continuation: str, *, add_bos_token: bool | None = None
) -> tuple[list[int], list[int]]:
    """``(context_tokens, continuation_tokens)`` exactly as lm-eval's ``HFLM`` builds a request.

    ``TemplateLM.loglikelihood`` + ``_encode_pair`` + ``HFLM.tok_encode``: an empty context becomes
    ``[prefix_token]`` (BOS, else EOS); otherwise trailing whitespace moves from the context to the
    continuation and ``continuation_tokens = encode(context + continuation)[len(encode(context)):]``.
    """
    prefix = _prefix_token_id(tokenizer)
    if context == "":
        cont = list(tokenizer.encode(continuation, add_special_tokens=False))
        if cont and cont[0] == prefix:
            return cont[:1], cont[1:]
        return [prefix], cont
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    prefix_text = tokenizer.decode([prefix])
    whole = _tok_encode(tokenizer, context + continuation, add_bos_token, prefix_text)
    ctx = _tok_encode(tokenizer, context, add_bos_token, prefix_text)
    return ctx, whole[len(ctx) :]


def default_max_length(model, tokenizer=None, default: int = 2048) -> int:
    """lm-eval's ``resolve_max_length``: ``n_positions``/``max_position_embeddings``/``n_ctx`` of the
    (text) config, else the tokenizer's ``model_max_length`` when set, else ``default``."""
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = getattr(cfg, attr, None)
        if v is not None:
            return int(v)
    mml = getattr(tokenizer, "model_max_length", None)
    if mml is not None and mml < 10**12:
        return int(mml)
    return default


# --------------------------------------------------------------------------------------------------
# Decisions (pure)


def normalisation_lengths(example, target_delimiter: str = _TARGET_DELIMITER) -> tuple[list[int], list[int]]:
    """Per choice, the (characters, UTF-8 bytes) lm-eval divides by for ``acc_norm`` / ``acc_bytes``.

    That is ``len(doc_to_choice(doc)[i])``: the continuation without the target delimiter; for
    per-choice contexts (WinoGrande) the per-choice context. Lengths are at least 1.
    """
    if getattr(example, "contexts", None) is not None:
        texts = list(example.contexts)
    else:
        texts = [
            c[len(target_delimiter) :] if target_delimiter and c.startswith(target_delimiter) else c
            for c in example.choices
        ]
    return [max(1, len(t)) for t in texts], [max(1, len(t.encode("utf-8"))) for t in texts]


def _argmax(values: Sequence[float]) -> int:
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def mc_predictions(
    logprobs: Sequence[float], lengths: Sequence[float], byte_lengths: Sequence[float] | None = None
) -> tuple[int, int, int]:
    """``(pred, pred_norm, pred_bytes)``: argmax of ``ll``, ``ll/len`` and ``ll/bytes`` (first on ties)."""
    if not logprobs:
        raise ValueError("no choices to decide between")
    if len(lengths) != len(logprobs):
        raise ValueError(f"{len(logprobs)} log-probs but {len(lengths)} lengths")
    byte_lengths = lengths if byte_lengths is None else byte_lengths
    pred = _argmax(list(logprobs))
    pred_norm = _argmax([lp / n for lp, n in zip(logprobs, lengths)])
    pred_bytes = _argmax([lp / n for lp, n in zip(logprobs, byte_lengths)])
    return pred, pred_norm, pred_bytes


# --------------------------------------------------------------------------------------------------
# Evaluation (the log-likelihoods: prunelens.evaluation.loglikelihood)


def _requests(
    examples: list[Any], tokenizer, name: str, add_bos_token: bool | None, max_len: int
) -> list[Request]:
    """One request per (example, choice), tokenised as lm-eval does; choices that cannot be scored refused."""
    reqs: list[Request] = []
    for ei, ex in enumerate(examples):
        pairs = ex.pairs()
        if not pairs:
            raise ValueError(f"{name}/{getattr(ex, 'id', ei)}: example has no choices")
        for ci, (ctx, cont) in enumerate(pairs):
            c_enc, k_enc = encode_pair(tokenizer, ctx, cont, add_bos_token=add_bos_token)
            if not k_enc:
                raise ValueError(
                    f"{name}/{getattr(ex, 'id', ei)}: choice {ci} ({cont!r}) encodes to no tokens"
                )
            if len(k_enc) > max_len:
                raise ValueError(
                    f"{name}/{getattr(ex, 'id', ei)}: choice {ci} is longer than max_length={max_len}"
                )
            reqs.append(Request(ei, ci, c_enc, k_enc))
    return reqs


def _score_requests(
    scorer: Scorer, reqs: list[Request], method: str, batch_size: int, label: str
) -> dict[tuple[int, int], tuple[float, bool]]:
    """``(log-prob, is greedy)`` of every request by ``(example, choice)``: the row path in batches of
    ``batch_size`` rows, then shared contexts packed whole until their choices reach ``batch_size``."""
    results: dict[tuple[int, int], tuple[float, bool]] = {}
    with progress_bar(label, total=len(reqs)) as bar:
        row_reqs, shared_groups = plan_requests(reqs, method, scorer.max_length)
        row_reqs.sort(key=lambda r: (-(len(r.ctx) + len(r.cont)), r.ctx + r.cont))
        for i in range(0, len(row_reqs), batch_size):
            chunk = row_reqs[i : i + batch_size]
            for r, res in zip(chunk, scorer.rows(chunk)):
                results[(r.example, r.choice)] = res
            bar.advance(len(chunk))
        # longest continuations first, then longest contexts: little padding in either pass
        shared_groups.sort(key=lambda g: (-max(len(r.cont) for r in g[1]), -len(g[0]), g[0]))
        batch: list[ContextGroup] = []
        n_rows = 0
        for ctx, rs in [*shared_groups, (None, [])]:
            if batch and (ctx is None or n_rows + len(rs) > batch_size):
                for (_, brs), res in zip(batch, scorer.shared(batch)):
                    for r, x in zip(brs, res):
                        results[(r.example, r.choice)] = x
                bar.advance(n_rows)
                batch, n_rows = [], 0
            if ctx is None:
                break
            batch.append((ctx, rs))
            n_rows += len(rs)
    return results


def _records(
    examples: list[Any],
    results: dict[tuple[int, int], tuple[float, bool]],
    n_tok: dict[tuple[int, int], int],
    main: str,
    target_delimiter: str,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The decisions per example (records) and the accuracies over all of them (metrics)."""
    records = []
    sums = {"acc": 0.0, "acc_norm": 0.0, "acc_bytes": 0.0}
    for ei, ex in enumerate(examples):
        n = len(ex.choices)
        lps = [results[(ei, ci)][0] for ci in range(n)]
        greedy = [results[(ei, ci)][1] for ci in range(n)]
        chars, nbytes = normalisation_lengths(ex, target_delimiter)
        pred, pred_norm, pred_bytes = mc_predictions(lps, chars, nbytes)
        label = int(ex.label)
        m = {
            "acc": float(pred == label),
            "acc_norm": float(pred_norm == label),
            "acc_bytes": float(pred_bytes == label),
        }
        for k in sums:
            sums[k] += m[k]
        contexts = getattr(ex, "contexts", None)
        records.append(
            {
                "id": str(getattr(ex, "id", ei)),
                "prompt": ex.context,
                **({"contexts": list(contexts)} if contexts is not None else {}),
                "choices": list(ex.choices),
                "target": label,
                "prediction": pred,
                "prediction_norm": pred_norm,
                "logprobs": lps,
                "is_greedy": greedy,
                "n_tokens": [n_tok[(ei, ci)] for ci in range(n)],
                "acc": m["acc"],
                "acc_norm": m["acc_norm"],
                "score": m[main],
            }
        )
    metrics = {k: v / len(examples) for k, v in sums.items()}
    # the expected accuracy of a uniform random guess: a score near it says nothing about pruning
    metrics["chance"] = sum(1.0 / len(ex.choices) for ex in examples) / len(examples)
    return records, metrics


@torch.no_grad()
def evaluate_multiple_choice(
    model,
    tokenizer,
    examples: Sequence[Any],
    *,
    batch_size: int = 16,
    task: str | None = None,
    method: str = "auto",
    add_bos_token: bool | None = None,
    max_length: int | None = None,
    target_delimiter: str = _TARGET_DELIMITER,
    desc: str | None = None,
) -> TaskResult:
    """Log-likelihood multiple-choice accuracy of ``model`` on ``examples`` (``MCExample`` objects).

    ``batch_size``: (context, continuation) rows per forward pass (shared contexts are packed whole
    until their choices reach it; a question with more choices runs alone). ``task``: name used for
    the result and the headline metric (default: the examples' ``task``). ``method``: ``"auto"``,
    ``"shared_kv"`` or ``"rows"`` (see the module docstring; the same numbers up to float rounding).
    ``add_bos_token``: as lm-eval's HFLM argument (``None`` = the tokenizer's default).
    ``max_length``: left-truncation limit (default: lm-eval's, from the model config).
    ``target_delimiter``: stripped from the front of a choice before its length is taken for
    ``acc_norm``.

    Returns a :class:`TaskResult` (kind ``"mc"``) with metrics ``acc``, ``acc_norm``, ``acc_bytes``
    and one record per example: ``id``, ``prompt``, ``choices``, ``target`` (gold index),
    ``prediction`` (argmax of the summed log-prob), ``prediction_norm``, ``logprobs``, ``is_greedy``,
    ``n_tokens`` (continuation tokens per choice), ``acc``, ``acc_norm`` and ``score`` (the headline
    metric's 0/1).
    """
    if method not in ("auto", "shared_kv", "rows"):
        raise ValueError(f"method must be 'auto', 'shared_kv' or 'rows', got {method!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    examples = list(examples)
    if not examples:
        raise ValueError("no examples to evaluate")
    name = task or getattr(examples[0], "task", None) or "mc"
    main = main_metric_for(name)
    max_len = max_length or default_max_length(model, tokenizer)
    t0 = time.perf_counter()
    reqs = _requests(examples, tokenizer, name, add_bos_token, max_len)
    n_tok = {(r.example, r.choice): len(r.cont) for r in reqs}
    scorer = Scorer(model, pad_token_id(tokenizer), max_len)
    was_training = model.training
    model.eval()
    try:
        results = _score_requests(scorer, reqs, method, batch_size, desc or f"{name} ({method})")
    finally:
        model.train(was_training)
    records, metrics = _records(examples, results, n_tok, main, target_delimiter)
    seconds = time.perf_counter() - t0
    return TaskResult(
        task=name,
        kind="mc",
        main_metric=main,
        metrics=metrics,
        records=records,
        n=len(examples),
        seconds=seconds,
        config={
            "method": method,
            "batch_size": batch_size,
            "add_bos_token": add_bos_token,
            "max_length": max_len,
            "n_requests": len(reqs),
            "n_context_tokens": sum(len(r.ctx) for r in reqs),
            "n_continuation_tokens": sum(len(r.cont) for r in reqs),
            "logsoftmax_dtype": "float32",
        },
    )
