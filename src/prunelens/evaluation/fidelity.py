"""Fidelity of a pruned model's generations to the dense model's, and degeneration of any set of outputs.

Pure functions over token sequences (any hashable items: token ids, words), plus :func:`fidelity` and
:func:`degeneration`, which read the per-example records of two
:class:`~prunelens.evaluation.results.TaskResult` runs (dense and pruned, same prompts) and summarise them.

Definitions (``x`` a sequence of ``L`` tokens):

* **common prefix** ``cp(x, y)``: the largest ``k`` with ``x[:k] == y[:k]``; reported in tokens and as
  ``cp / max(|x|, |y|)`` (1 for two empty outputs).
* **ROUGE-L F** (Lin 2004, the F-measure with ``beta = 1`` as in Google's ``rouge-score``):
  ``P = LCS(x, y)/|x|``, ``R = LCS(x, y)/|y|``, ``F = 2PR/(P + R)`` with ``LCS`` the length of the longest
  common subsequence. ``F = 0`` when the LCS is 0; two empty outputs are identical and get ``F = 1``
  (``rouge-score`` returns 0 there). :func:`rouge_tokenize` gives the ``rouge-score`` word tokenisation
  (lowercase, runs of ``[a-z0-9]``); fidelity also reports the ROUGE-L over model tokens.
* **repeated n-gram rate** of one output: with ``M = L - n + 1`` n-gram positions, the fraction of
  positions whose n-gram already occurred at an earlier position of the same output,
  ``rep_n(x) = (M - |distinct n-grams of x|) / M`` (0 when ``M <= 0``). A text that loops one phrase
  tends to 1; ordinary prose is near 0.
* **distinct-n** of a set of outputs (Li et al. 2016): the number of distinct n-grams over all outputs
  divided by the total number of n-gram positions over all outputs (0 when there are none). Also given
  per output (``distinct_n([x], n)``).
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

from prunelens.evaluation.results import TaskResult

__all__ = [
    "common_prefix_len",
    "lcs_length",
    "rouge_l",
    "rouge_tokenize",
    "ngrams",
    "repeated_ngram_rate",
    "distinct_n",
    "record_tokens",
    "degeneration",
    "fidelity",
]

Seq = Sequence[Hashable]


def common_prefix_len(a: Seq, b: Seq) -> int:
    """Length of the longest common prefix of ``a`` and ``b``."""
    k = 0
    for x, y in zip(a, b):
        if x != y:
            break
        k += 1
    return k


def lcs_length(a: Seq, b: Seq) -> int:
    """Length of the longest common subsequence (dynamic programming, O(|a|·|b|) time, O(|b|) memory)."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else (prev[j] if prev[j] > cur[j - 1] else cur[j - 1]))
        prev = cur
    return prev[-1]


_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")


def rouge_tokenize(text: str) -> list[str]:
    """``rouge-score``'s default tokenisation (no stemming): lowercase, keep runs of ``[a-z0-9]``."""
    return _ROUGE_TOKEN.findall(text.lower())


def rouge_l(pred: str | Seq, ref: str | Seq) -> float:
    """ROUGE-L F-measure (``beta = 1``) between ``pred`` and ``ref``: ``2PR/(P+R)`` with ``P = LCS/|pred|``,
    ``R = LCS/|ref|``. Strings are tokenised by :func:`rouge_tokenize`; sequences are used as given. Two
    empty inputs give 1.0, one empty input 0.0."""
    p = rouge_tokenize(pred) if isinstance(pred, str) else list(pred)
    r = rouge_tokenize(ref) if isinstance(ref, str) else list(ref)
    if not p and not r:
        return 1.0
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    prec, rec = lcs / len(p), lcs / len(r)
    return 2 * prec * rec / (prec + rec)


def ngrams(seq: Seq, n: int) -> list[tuple]:
    """The ``len(seq) - n + 1`` n-grams of ``seq``, in order (empty if the sequence is shorter than ``n``)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seq = list(seq)
    return [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]


def repeated_ngram_rate(seq: Seq, n: int = 4) -> float:
    """Fraction of the n-gram positions of ``seq`` whose n-gram already occurred earlier in ``seq``:
    ``(M - distinct) / M`` with ``M = len(seq) - n + 1``; 0.0 when ``M <= 0``."""
    grams = ngrams(seq, n)
    if not grams:
        return 0.0
    return (len(grams) - len(set(grams))) / len(grams)


def distinct_n(seqs: Iterable[Seq], n: int) -> float:
    """Distinct-n of a set of outputs: distinct n-grams over all outputs / total n-gram positions (0.0 if
    none)."""
    total, seen = 0, set()
    for s in seqs:
        grams = ngrams(s, n)
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def record_tokens(record: dict, tokenizer=None) -> list:
    """The token sequence of a generation record: its ``token_ids`` if present, else ``text`` encoded by
    ``tokenizer`` (no special tokens), else ``text`` split on whitespace."""
    ids = record.get("token_ids")
    if ids is not None:
        return list(ids)
    text = record.get("text") or ""
    if tokenizer is not None:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return text.split()


def _stats(xs: list[float], name: str) -> dict[str, float]:
    if not xs:
        return {}
    srt = sorted(xs)
    q = lambda p: srt[min(len(srt) - 1, int(p * (len(srt) - 1) + 0.5))]  # noqa: E731 - nearest rank
    return {
        f"{name}_mean": sum(xs) / len(xs),
        f"{name}_median": statistics.median(xs),
        f"{name}_p10": q(0.1),
        f"{name}_p90": q(0.9),
    }


def degeneration(
    records: Sequence[dict] | TaskResult, tokenizer=None, *, n_rep: int = 4, prefix: str = ""
) -> dict[str, float]:
    """Degeneration metrics of a set of generation records (or a :class:`TaskResult`).

    Keys (each prefixed by ``prefix``): ``rep{n_rep}_mean``/``_median``/``_p90`` (per-output repeated
    n-gram rate), ``rep{n_rep}_frac_gt_0.5`` (outputs more than half repeats), ``distinct_1``,
    ``distinct_2`` (over the set), ``len_tokens_mean``/``_median``, ``empty_frac`` and, when the records say
    why generation ended (``finish_reason``), ``length_frac``: outputs cut by the token budget.
    """
    recs = records.records if isinstance(records, TaskResult) else list(records)
    toks = [record_tokens(r, tokenizer) for r in recs]
    if not toks:
        return {}
    reps = [repeated_ngram_rate(t, n_rep) for t in toks]
    out: dict[str, float] = {}
    out.update(_stats(reps, f"rep{n_rep}"))
    out[f"rep{n_rep}_frac_gt_0.5"] = sum(r > 0.5 for r in reps) / len(reps)
    out["distinct_1"] = distinct_n(toks, 1)
    out["distinct_2"] = distinct_n(toks, 2)
    lens = [float(len(t)) for t in toks]
    out["len_tokens_mean"] = sum(lens) / len(lens)
    out["len_tokens_median"] = statistics.median(lens)
    out["empty_frac"] = sum(not (r.get("text") or "").strip() for r in recs) / len(recs)
    if all("finish_reason" in r for r in recs):
        out["length_frac"] = sum(r["finish_reason"] == "length" for r in recs) / len(recs)
    return {prefix + k: v for k, v in out.items()}


def _pruned_by_dense_id(dense: list[dict], pruned: list[dict]) -> dict[str, dict]:
    """The pruned records by id, once both sides are known to hold the same unique ids."""
    by_id = {str(r["id"]): r for r in pruned}
    ids = [str(r["id"]) for r in dense]
    if len(by_id) != len(pruned) or len(set(ids)) != len(ids):
        raise ValueError("fidelity: record ids must be unique on each side")
    if set(ids) != set(by_id):
        missing, extra = set(ids) - set(by_id), set(by_id) - set(ids)
        raise ValueError(
            f"fidelity: the two runs hold different examples (only dense: "
            f"{sorted(missing)[:5]}, only pruned: {sorted(extra)[:5]})"
        )
    return by_id


def _compare(d: dict, p: dict, tokenizer, n_rep: int) -> dict[str, Any]:
    """The fidelity record of one example: dense record ``d`` against pruned record ``p``."""
    td, tp = record_tokens(d, tokenizer), record_tokens(p, tokenizer)
    dtext, ptext = d.get("text") or "", p.get("text") or ""
    cp = common_prefix_len(td, tp)
    longest = max(len(td), len(tp))
    row = {
        "id": d["id"],
        "prompt": d.get("prompt"),
        "target": dtext,
        "prediction": ptext,
        "exact": float(dtext == ptext),
        "prefix_tokens": cp,
        "prefix_frac": cp / longest if longest else 1.0,
        "rouge_l": rouge_l(ptext, dtext),
        "rouge_l_tokens": rouge_l(tp, td),
        "dense_len": len(td),
        "pruned_len": len(tp),
        "dense_rep": repeated_ngram_rate(td, n_rep),
        "pruned_rep": repeated_ngram_rate(tp, n_rep),
    }
    if d.get("score") is not None and p.get("score") is not None:
        row["same_score"] = float(d["score"] == p["score"])
    row["score"] = row["rouge_l"]
    return row


def fidelity(
    dense: Sequence[dict] | TaskResult,
    pruned: Sequence[dict] | TaskResult,
    tokenizer=None,
    *,
    n_rep: int = 4,
    task: str | None = None,
) -> TaskResult:
    """Compare a pruned model's generations with the dense model's on the same prompts.

    ``dense`` and ``pruned`` are the records of two generation runs (or the :class:`TaskResult` s), paired
    by ``id`` (both must hold the same ids). Tokens come from :func:`record_tokens` (``token_ids`` when
    the records carry them, else ``tokenizer``). Per example (one record each, in the dense order):
    ``exact`` (identical output text), ``prefix_tokens`` (common prefix), ``prefix_frac``
    (``prefix / max(len)``), ``rouge_l`` (ROUGE-L F on ``rouge-score`` words), ``rouge_l_tokens`` (on model
    tokens), ``dense_len``/``pruned_len`` (tokens), ``dense_rep``/``pruned_rep`` (repeated ``n_rep``-gram
    rate), ``same_score`` (the task scores agree), plus the schema fields ``prompt``, ``target`` (the dense
    text), ``prediction`` (the pruned text) and ``score`` (= ``rouge_l``).

    Metrics: ``exact_match``, ``prefix_tokens_*``, ``prefix_frac_*``, ``rouge_l_*``, ``rouge_l_tokens_mean``,
    ``score_agreement`` and the :func:`degeneration` of each side (``dense_*``, ``pruned_*``); the main metric
    is ``rouge_l_mean``.
    """
    t0 = time.perf_counter()
    name = task
    if isinstance(dense, TaskResult):
        name = name or dense.task
        dense = dense.records
    if isinstance(pruned, TaskResult):
        pruned = pruned.records
    dense, pruned = list(dense), list(pruned)
    by_id = _pruned_by_dense_id(dense, pruned)
    rows = [_compare(d, by_id[str(d["id"])], tokenizer, n_rep) for d in dense]
    metrics: dict[str, float] = {}
    if rows:
        metrics["exact_match"] = sum(r["exact"] for r in rows) / len(rows)
        metrics.update(_stats([float(r["prefix_tokens"]) for r in rows], "prefix_tokens"))
        metrics.update(_stats([r["prefix_frac"] for r in rows], "prefix_frac"))
        metrics.update(_stats([r["rouge_l"] for r in rows], "rouge_l"))
        metrics["rouge_l_tokens_mean"] = sum(r["rouge_l_tokens"] for r in rows) / len(rows)
        agree = [r["same_score"] for r in rows if "same_score" in r]
        if agree:
            metrics["score_agreement"] = sum(agree) / len(agree)
        metrics.update(degeneration(dense, tokenizer, n_rep=n_rep, prefix="dense_"))
        metrics.update(degeneration(pruned, tokenizer, n_rep=n_rep, prefix="pruned_"))
    return TaskResult(
        task=f"{name or 'generation'}:fidelity",
        kind="fidelity",
        main_metric="rouge_l_mean",
        metrics=metrics,
        records=rows,
        n=len(rows),
        seconds=time.perf_counter() - t0,
        config={"n_rep": n_rep, "pairing": "id", "tokens": "token_ids or tokenizer"},
    )
