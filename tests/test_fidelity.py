"""Fidelity and degeneration metrics (prunelens.evaluation.fidelity) on hand-computed examples."""

from __future__ import annotations

import pytest

from prunelens.evaluation.fidelity import (
    common_prefix_len,
    degeneration,
    distinct_n,
    fidelity,
    lcs_length,
    ngrams,
    record_tokens,
    repeated_ngram_rate,
    rouge_l,
    rouge_tokenize,
)
from prunelens.evaluation.results import TaskResult


def test_common_prefix_and_lcs():
    assert common_prefix_len([1, 2, 3, 4], [1, 2, 5]) == 2
    assert common_prefix_len([], [1]) == 0 and common_prefix_len("abc", "abc") == 3
    assert lcs_length("ABCBDAB", "BDCABA") == 4  # CLRS example (BCBA)
    assert lcs_length([], [1, 2]) == 0
    assert lcs_length([1, 2, 3], [3, 2, 1]) == 1


def test_rouge_l_hand_example():
    # ref  = "the cat sat on the mat"      (6 tokens)
    # pred = "the cat was on the mat now"  (7 tokens)
    # LCS = "the cat on the mat" = 5 -> P = 5/7, R = 5/6, F = 2PR/(P+R) = 2*25/42 / (65/42) = 50/65 = 10/13
    f = rouge_l("The cat was on the mat now", "the cat sat on the mat")
    assert f == pytest.approx(10 / 13)
    assert rouge_l("a b c", "a b c") == 1.0
    assert rouge_l("a b c", "d e f") == 0.0
    assert rouge_l("", "") == 1.0 and rouge_l("", "x") == 0.0
    assert rouge_l([1, 2, 3], [1, 3]) == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert rouge_tokenize("Hello, World! x_y 42") == ["hello", "world", "x", "y", "42"]


def test_rouge_l_agrees_with_rouge_score_if_installed():
    rs = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rs.RougeScorer(["rougeL"], use_stemmer=False)
    for pred, ref in [
        ("the cat was on the mat now", "the cat sat on the mat"),
        ("def f(x): return x + 1", "def f(y): return y + 1"),
    ]:
        assert rouge_l(pred, ref) == pytest.approx(scorer.score(ref, pred)["rougeL"].fmeasure)


def test_repeated_ngram_rate():
    assert ngrams([1, 2, 3], 2) == [(1, 2), (2, 3)]
    with pytest.raises(ValueError):
        ngrams([1], 0)
    # "a b a b a b", n=2: bigrams ab ba ab ba ab -> 5 positions, 2 distinct -> 3/5 repeats
    assert repeated_ngram_rate("a b a b a b".split(), 2) == pytest.approx(3 / 5)
    # n=3 on the same: aba bab aba bab -> 4 positions, 2 distinct -> 1/2
    assert repeated_ngram_rate("a b a b a b".split(), 3) == pytest.approx(0.5)
    assert repeated_ngram_rate(list(range(10)), 4) == 0.0  # no repeats
    assert repeated_ngram_rate([1, 2], 4) == 0.0  # shorter than n
    loop = [7, 8, 9] * 20
    assert repeated_ngram_rate(loop, 4) > 0.9


def test_distinct_n():
    seqs = [["a", "b", "c"], ["a", "b", "d"]]
    assert distinct_n(seqs, 1) == pytest.approx(4 / 6)
    assert distinct_n(seqs, 2) == pytest.approx(3 / 4)  # ab bc ab bd
    assert distinct_n([], 1) == 0.0 and distinct_n([["x"]], 2) == 0.0


def _recs(texts, **extra):
    return [
        {"id": str(i), "prompt": f"p{i}", "text": t, "score": extra.get("scores", [1.0] * len(texts))[i]}
        for i, t in enumerate(texts)
    ]


def test_fidelity_rows_and_summary():
    dense = _recs(["the cat sat on the mat", "one two three", "same"], scores=[1.0, 0.0, 1.0])
    pruned = _recs(["the cat was on the mat now", "x x x x x x", "same"], scores=[0.0, 0.0, 1.0])
    pruned = pruned[::-1]  # pairing is by id, not order
    res = fidelity(dense, pruned, task="toy")  # no tokenizer: whitespace tokens
    assert isinstance(res, TaskResult) and res.task == "toy:fidelity" and res.n == 3
    rows = {r["id"]: r for r in res.records}
    assert rows["0"]["rouge_l"] == pytest.approx(10 / 13)
    assert rows["0"]["prefix_tokens"] == 2 and rows["0"]["prefix_frac"] == pytest.approx(2 / 7)
    assert rows["2"]["exact"] == 1.0 and rows["2"]["rouge_l"] == 1.0 and rows["2"]["prefix_frac"] == 1.0
    assert rows["1"]["rouge_l"] == 0.0
    assert rows["1"]["pruned_rep"] == pytest.approx(2 / 3)  # 3 4-grams, 1 distinct
    assert res.metrics["exact_match"] == pytest.approx(1 / 3)
    assert res.metrics["score_agreement"] == pytest.approx(2 / 3)
    assert res.score == pytest.approx((10 / 13 + 0 + 1) / 3)
    assert res.metrics["pruned_rep4_mean"] > res.metrics["dense_rep4_mean"]
    assert res.metrics["pruned_distinct_1"] < res.metrics["dense_distinct_1"]
    for r in res.records:  # the TaskResult record schema
        assert {"id", "prompt", "target", "prediction", "score"} <= set(r)


def test_fidelity_refuses_mismatched_runs():
    with pytest.raises(ValueError, match="different examples"):
        fidelity(_recs(["a", "b"]), _recs(["a"]))


def test_record_tokens_prefers_ids_then_tokenizer(tok):
    assert record_tokens({"token_ids": [5, 6], "text": "w1"}, tok) == [5, 6]
    assert record_tokens({"text": "w1 w2"}, tok) == tok("w1 w2", add_special_tokens=False)["input_ids"]
    assert record_tokens({"text": "a b"}) == ["a", "b"]


def test_degeneration_summary():
    recs = [
        {"text": "a b c d e f", "finish_reason": "eos"},
        {"text": "z z z z z z z z", "finish_reason": "length"},
        {"text": "", "finish_reason": "eos"},
    ]
    d = degeneration(recs, n_rep=4)
    # rep4: 0, (5 positions, 1 distinct -> 4/5), 0
    assert d["rep4_mean"] == pytest.approx((0 + 0.8 + 0) / 3)
    assert d["rep4_frac_gt_0.5"] == pytest.approx(1 / 3)
    assert d["distinct_1"] == pytest.approx(7 / 14)
    assert d["empty_frac"] == pytest.approx(1 / 3) and d["length_frac"] == pytest.approx(1 / 3)
    assert degeneration(recs, prefix="x_").keys() == {"x_" + k for k in d}
