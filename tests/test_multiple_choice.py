"""Multiple-choice log-likelihood scoring (tiny random models, tiny tokenizer: fast, no downloads)."""

from __future__ import annotations

import math

import pytest
import torch

from prunelens.data.tasks import MCExample
from prunelens.evaluation.multiple_choice import (
    MAIN_METRIC,
    encode_pair,
    evaluate_multiple_choice,
    main_metric_for,
    mc_predictions,
    normalisation_lengths,
)
from prunelens.models.adapter import Adapter, drop_sublayer
from prunelens.models.tiny import tiny_model

from conftest import random_text, tiny_tokenizer


def _examples(n: int = 7, task: str = "t") -> list[MCExample]:
    """Contexts of 3..33 words, 2-4 choices of 1-4 words each (so padding happens everywhere)."""
    out = []
    for i in range(n):
        ctx = random_text(3 + 5 * i, seed=i)
        choices = [" " + random_text(1 + (i + j) % 4, seed=100 + 10 * i + j) for j in range(2 + i % 3)]
        out.append(MCExample(str(i), ctx, choices, label=i % len(choices), task=task))
    return out


def _winogrande_like(n: int = 4) -> list[MCExample]:
    out = []
    for i in range(n):
        prefix = random_text(4 + i, seed=300 + i)
        opts = [random_text(1, seed=400 + 2 * i), random_text(2, seed=401 + 2 * i)]
        cont = " " + random_text(3 + i, seed=500 + i)
        out.append(
            MCExample(
                f"w{i}",
                prefix,
                [cont, cont],
                label=i % 2,
                task="winogrande",
                contexts=[prefix + " " + o for o in opts],
            )
        )
    return out


@torch.no_grad()
def _brute_force(model, tok, ex: MCExample, max_length: int | None = None) -> list[float]:
    """Σ log p(cont | ctx) from one unpadded forward over the whole sequence, one choice at a time."""
    out = []
    for ctx, cont in ex.pairs():
        c, k = encode_pair(tok, ctx, cont)
        seq = c + k
        if max_length is not None:
            seq = seq[-(max_length + 1) :]
        logp = model(torch.tensor([seq[:-1]])).logits[0].float().log_softmax(-1)
        n = len(seq) - 1
        out.append(sum(float(logp[n - len(k) + j, t]) for j, t in enumerate(k)))
    return out


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


@pytest.mark.parametrize("method", ["auto", "shared_kv", "rows"])
def test_loglikelihood_equals_brute_force(llama, tok, method):
    exs = _examples()
    res = evaluate_multiple_choice(llama, tok, exs, batch_size=5, method=method)
    for ex, rec in zip(exs, res.records):
        assert rec["logprobs"] == pytest.approx(_brute_force(llama, tok, ex), abs=1e-4)
        assert rec["n_tokens"] == [len(encode_pair(tok, c, k)[1]) for c, k in ex.pairs()]


@pytest.mark.parametrize("family", ["llama", "mistral", "gemma2", "gpt_neox"])
def test_shared_kv_equals_rows(tok, family):
    # mistral/gemma2 have an 8-token sliding window, shorter than most contexts here
    model = tiny_model(family)
    exs = _examples()
    a = evaluate_multiple_choice(model, tok, exs, batch_size=6, method="shared_kv")
    b = evaluate_multiple_choice(model, tok, exs, batch_size=4, method="rows")
    for ra, rb in zip(a.records, b.records):
        assert ra["logprobs"] == pytest.approx(rb["logprobs"], abs=1e-4)
        assert ra["is_greedy"] == rb["is_greedy"]
    assert a.metrics == b.metrics


def test_shared_kv_on_a_model_with_a_dropped_attention(tok):
    model = tiny_model("llama", seed=1)
    drop_sublayer(Adapter(model), 1, "attn")
    exs = _examples(5)
    a = evaluate_multiple_choice(model, tok, exs, batch_size=8)
    b = evaluate_multiple_choice(model, tok, exs, batch_size=8, method="rows")
    for ex, ra, rb in zip(exs, a.records, b.records):
        assert ra["logprobs"] == pytest.approx(rb["logprobs"], abs=1e-4)
        assert ra["logprobs"] == pytest.approx(_brute_force(model, tok, ex), abs=1e-4)


@pytest.mark.parametrize("method", ["auto", "shared_kv", "rows"])
def test_batching_and_padding_invariance(llama, tok, method):
    exs = _examples(9)
    ref = evaluate_multiple_choice(llama, tok, exs, batch_size=1, method=method)
    for bs in (2, 3, 64):
        res = evaluate_multiple_choice(llama, tok, exs, batch_size=bs, method=method)
        for r0, r in zip(ref.records, res.records):
            assert r["logprobs"] == pytest.approx(r0["logprobs"], abs=1e-4)
            assert (r["prediction"], r["prediction_norm"]) == (r0["prediction"], r0["prediction_norm"])
    # order of the examples does not matter either
    rev = evaluate_multiple_choice(llama, tok, exs[::-1], batch_size=4, method=method)
    for r0, r in zip(ref.records, rev.records[::-1]):
        assert r["logprobs"] == pytest.approx(r0["logprobs"], abs=1e-4)


def test_winogrande_per_choice_contexts(llama, tok):
    exs = _winogrande_like()
    for method in ("auto", "shared_kv", "rows"):
        res = evaluate_multiple_choice(llama, tok, exs, batch_size=3, method=method)
        assert res.main_metric == "acc"
        for ex, rec in zip(exs, res.records):
            assert rec["logprobs"] == pytest.approx(_brute_force(llama, tok, ex), abs=1e-4)
            assert rec["contexts"] == ex.contexts
            # the two choices share their continuation but not their context: different scores
            assert rec["logprobs"][0] != rec["logprobs"][1]
    # lm-eval's acc_norm divides by its doc_to_choice, which for WinoGrande is the per-choice context
    assert normalisation_lengths(exs[0]) == ([len(c) for c in exs[0].contexts],) * 2


def test_auto_shares_long_contexts_with_short_answers_only(tok):
    from prunelens.evaluation.loglikelihood import Request as _Req
    from prunelens.evaluation.loglikelihood import plan_requests as _plan

    def reqs(ex, lc, lks):
        return [_Req(ex, i, list(range(lc)), list(range(100, 100 + k))) for i, k in enumerate(lks)]

    arc_like = reqs(0, 30, [3, 5, 2, 4])  # shared 30 + 4*4 = 46 tokens vs rows 4*29 + 14 = 130
    piqa_like = reqs(1, 12, [25, 40])  # shared 12 + 2*39 = 90 tokens vs rows 2*11 + 65 = 87
    lone = reqs(2, 50, [3])  # a single choice has nothing to share
    rows, shared = _plan(arc_like + piqa_like + lone, "auto", max_len=1000)
    assert [rs for _, rs in shared] == [arc_like]
    assert rows == piqa_like + lone
    rows, shared = _plan(arc_like + piqa_like, "shared_kv", max_len=1000)
    assert rows == [] and len(shared) == 2
    rows, shared = _plan(arc_like, "auto", max_len=20)  # needs truncation: the row path truncates
    assert rows == arc_like and shared == []


def test_acc_and_acc_norm_definitions():
    # raw argmax vs length-normalised argmax
    assert mc_predictions([-10.0, -12.0], [2, 10]) == (0, 1, 1)
    # ties go to the first index, as numpy.argmax
    assert mc_predictions([-3.0, -3.0, -5.0], [1, 1, 1]) == (0, 0, 0)
    assert mc_predictions([-4.0, -2.0], [4, 2]) == (1, 0, 0)  # -1.0 vs -1.0 tie in the normalised score
    # bytes differ from characters for non-ASCII text
    lps, chars, nbytes = [-6.0, -4.0], [3, 3], [6, 3]
    assert mc_predictions(lps, chars, nbytes) == (1, 1, 0)
    with pytest.raises(ValueError):
        mc_predictions([], [])
    # lengths: the choice text without the target delimiter (lm-eval's doc_to_choice string)
    ex = MCExample("x", "Q:", [" no", " yes", " été"], 0, "boolq")
    assert normalisation_lengths(ex) == ([2, 3, 3], [2, 3, 5])


def test_metrics_are_means_of_record_decisions(llama, tok):
    exs = _examples(8, task="arc_easy")
    res = evaluate_multiple_choice(llama, tok, exs, batch_size=4)
    assert res.kind == "mc" and res.n == 8 and res.main_metric == "acc_norm"
    for ex, rec in zip(exs, res.records):
        chars, nbytes = normalisation_lengths(ex)
        pred, pred_norm, _ = mc_predictions(rec["logprobs"], chars, nbytes)
        assert (rec["prediction"], rec["prediction_norm"]) == (pred, pred_norm)
        assert rec["acc"] == float(pred == ex.label) and rec["acc_norm"] == float(pred_norm == ex.label)
        assert rec["score"] == rec["acc_norm"] and rec["target"] == ex.label
        assert set(rec) >= {
            "id",
            "prompt",
            "choices",
            "target",
            "prediction",
            "prediction_norm",
            "logprobs",
            "score",
        }
    assert res.metrics["acc"] == pytest.approx(sum(r["acc"] for r in res.records) / 8)
    assert res.metrics["acc_norm"] == pytest.approx(sum(r["acc_norm"] for r in res.records) / 8)
    assert res.score == res.metrics["acc_norm"]
    assert res.metrics["chance"] == pytest.approx(sum(1 / len(ex.choices) for ex in exs) / 8)


def test_main_metric_conventions():
    for t in ("arc_easy", "arc_challenge", "hellaswag", "openbookqa", "piqa"):
        assert main_metric_for(t) == "acc_norm"
    for t in ("boolq", "rte", "winogrande", "mmlu", "something_else", None):
        assert main_metric_for(t) == "acc"
    assert set(MAIN_METRIC) >= {"arc_easy", "boolq", "piqa", "winogrande", "mmlu"}


def test_left_truncation_as_lm_eval(llama, tok):
    exs = _examples(6)[3:]  # contexts of 18-28 words
    for method in ("shared_kv", "rows"):
        res = evaluate_multiple_choice(llama, tok, exs, batch_size=4, method=method, max_length=12)
        for ex, rec in zip(exs, res.records):
            assert rec["logprobs"] == pytest.approx(_brute_force(llama, tok, ex, max_length=12), abs=1e-4)


def test_errors(llama, tok):
    with pytest.raises(ValueError, match="no examples"):
        evaluate_multiple_choice(llama, tok, [])
    with pytest.raises(ValueError, match="no choices"):
        MCExample("e", "w1 w2", [], 0, "t")
    ex = MCExample("e", "w1 w2", [" w3", " w4"], 0, "t")
    ex.choices = []  # emptied after construction
    with pytest.raises(ValueError, match="no choices"):
        evaluate_multiple_choice(llama, tok, [ex])
    with pytest.raises(ValueError, match="encodes to no tokens"):
        evaluate_multiple_choice(llama, tok, [MCExample("e", "w1 w2", [" w3", ""], 0, "t")])
    with pytest.raises(ValueError, match="method"):
        evaluate_multiple_choice(llama, tok, _examples(1), method="nope")


def test_encode_pair_follows_lm_eval():
    from tokenizers import processors

    tok = tiny_tokenizer()
    # trailing whitespace of the context moves to the continuation
    assert encode_pair(tok, "w1 w2 ", "w3") == encode_pair(tok, "w1 w2", " w3")
    ids = tok.convert_tokens_to_ids
    assert encode_pair(tok, "w1 w2", " w3 w4") == (ids(["w1", "w2"]), ids(["w3", "w4"]))
    # empty context: the BOS token stands in
    assert encode_pair(tok, "", " w3") == ([tok.bos_token_id], ids(["w3"]))
    # a tokenizer that adds BOS by itself: the context carries it, the continuation does not;
    # a string that already starts with the BOS text gets no second one
    bos = tiny_tokenizer()
    bos.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos.bos_token_id)]
    )
    assert encode_pair(bos, "w1", " w2") == ([bos.bos_token_id, ids("w1")], [ids("w2")])
    assert encode_pair(bos, "<s> w1", " w2") == ([bos.bos_token_id, ids("w1")], [ids("w2")])
    # add_bos_token=True asks for the tokenizer's special tokens: this one has no template, so none
    assert encode_pair(tok, "w1", " w2", add_bos_token=True) == ([ids("w1")], [ids("w2")])
    assert encode_pair(bos, "w1", " w2", add_bos_token=False) == ([ids("w1")], [ids("w2")])


def test_scores_are_finite_and_negative(llama, tok):
    res = evaluate_multiple_choice(llama, tok, _examples(4))
    for rec in res.records:
        assert all(math.isfinite(x) and x < 0 for x in rec["logprobs"])
