"""Generation helper and generative evaluators (prunelens.evaluation.decoding / .generative).

Structure on a tiny random Llama with the tiny word-level tokenizer; scoring on real benchmark files
(canonical solutions must pass the sandbox, wrong ones fail); one small end-to-end run on the embedded
SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import pytest
import torch

from prunelens.data.tasks import GenExample, load_task
from prunelens.evaluation.decoding import format_prompt, generate, generate_batch
from prunelens.evaluation.fidelity import fidelity
from prunelens.evaluation.generative import (
    HUMANEVAL_STOPS,
    evaluate_generative,
    fewshot_examples,
    gsm8k_prompt,
    mbpp_prompt,
    nq_prompt,
    score_outputs,
)
from prunelens.evaluation.results import TaskResult
from prunelens.models.tiny import tiny_model

from conftest import need_data, random_text, tiny_tokenizer

SIMPLE_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }} {{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant{% endif %}"
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    # a large initialisation scale keeps the logits far from ties, so padding noise cannot flip an argmax
    return tiny_model("llama", seed=0, initializer_range=0.5), tiny_tokenizer()


def _prompts(n=5):
    return [random_text(3 + 4 * i, seed=i) for i in range(n)]  # lengths 3..19 words: real left padding


# --------------------------------------------------------------------------------------------------
# The generation helper


def test_batched_equals_one_by_one(tiny):
    model, tok = tiny
    prompts = _prompts()
    batched = generate_batch(model, tok, prompts, max_new_tokens=12, chat=False, batch_size=None)
    in_twos = generate_batch(model, tok, prompts, max_new_tokens=12, chat=False, batch_size=2)
    for p, b, t in zip(prompts, batched, in_twos):
        (single,) = generate_batch(model, tok, [p], max_new_tokens=12, chat=False)
        assert b.token_ids == single.token_ids == t.token_ids
        assert b.text == single.text and b.input_text == p
        assert b.num_prompt_tokens == len(tok(p)["input_ids"])
    # and the same as a plain unpadded call of model.generate
    ids = tok(prompts[0], return_tensors="pt").input_ids
    ref = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    ref = ref[0, ids.shape[1] :].tolist()
    if tok.eos_token_id in ref:
        ref = ref[: ref.index(tok.eos_token_id)]
    assert batched[0].token_ids == ref


def test_output_order_and_padding_side_restored(tiny):
    model, tok = tiny
    prompts = _prompts(4)
    side = tok.padding_side
    gens = generate_batch(model, tok, prompts, max_new_tokens=4, chat=False, batch_size=3)
    assert [g.input_text for g in gens] == prompts
    assert tok.padding_side == side
    assert all(g.finish_reason in ("eos", "length") for g in gens)


def test_stop_strings_truncate_and_end_early(tiny):
    model, tok = tiny
    prompts = _prompts(2)
    free = generate_batch(model, tok, prompts, max_new_tokens=16, chat=False)
    words = [g.raw_text.split() for g in free]
    assert all(len(w) >= 6 for w in words), "the tiny model should not stop by itself this early"
    stops = [" " + words[0][3] + " ", " " + words[1][2] + " "]  # a word inside each output
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        cut = generate_batch(model, tok, prompts, max_new_tokens=16, chat=False, stop=stops)
    finally:
        hook.remove()
    for f, c in zip(free, cut):
        pos = min(p for p in (f.raw_text.find(s) for s in stops) if p > 0)
        assert c.finish_reason == "stop" and c.stop in stops
        assert c.text == f.raw_text[:pos]
        assert c.token_ids == f.token_ids[: len(c.token_ids)]  # a prefix of the free run
        assert tok.decode(c.token_ids).startswith(c.text) and len(c.token_ids) < len(f.token_ids)
    assert len(calls) < 16  # generation ended early: every row hit its stop string
    # the backward-compatible wrapper returns stripped strings
    texts = generate(model, tok, prompts, max_new_tokens=16, chat=False, stop=stops)
    assert texts == [c.text.strip() for c in cut]


def test_seeded_sampling_is_reproducible(tiny):
    model, tok = tiny
    prompts = _prompts(3)
    state = torch.random.get_rng_state()
    a = generate_batch(model, tok, prompts, max_new_tokens=10, chat=False, do_sample=True, seed=1)
    b = generate_batch(model, tok, prompts, max_new_tokens=10, chat=False, do_sample=True, seed=1)
    c = generate_batch(
        model, tok, prompts, max_new_tokens=10, chat=False, do_sample=True, seed=2, temperature=5.0
    )
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.token_ids for g in a] != [g.token_ids for g in c]


def test_format_prompt_with_and_without_template():
    tok = tiny_tokenizer()
    assert format_prompt(tok, "w1 w2") == "w1 w2"  # no template: raw text
    msgs = [
        {"role": "user", "content": "w1"},
        {"role": "assistant", "content": "w2"},
        {"role": "user", "content": "w3"},
    ]
    assert format_prompt(tok, msgs) == "w1\n\nw2\n\nw3"
    tok.chat_template = SIMPLE_TEMPLATE
    assert format_prompt(tok, "w1") == "<s>user w1</s>\n<s>assistant"
    assert format_prompt(tok, "w1", system="w9") == "<s>system w9</s>\n<s>user w1</s>\n<s>assistant"
    assert format_prompt(tok, msgs).count("<s>") == 4
    assert format_prompt(tok, "w1", chat=False) == "w1"


def test_chat_prompts_are_encoded_without_extra_special_tokens(tiny):
    model, _ = tiny
    tok = tiny_tokenizer()
    tok.chat_template = SIMPLE_TEMPLATE
    (g,) = generate_batch(model, tok, ["w1 w2"], max_new_tokens=2)
    assert g.input_text.startswith("<s>user") and g.num_prompt_tokens == len(tok(g.input_text)["input_ids"])


# --------------------------------------------------------------------------------------------------
# Prompt builders and few-shot


def _gsm_example():
    return GenExample(
        id="t0",
        prompt="Question: w1?\nAnswer:",
        target="3",
        task="gsm8k",
        meta={"question": "w1?", "solution": "w2 <<1+2=3>>3\n#### 3"},
    )


def test_prompt_builders():
    ex = _gsm_example()
    shot = GenExample(
        id="s0",
        prompt="Question: q?\nAnswer:",
        target="1,000",
        task="gsm8k",
        meta={"question": "q?", "solution": "x <<2*500=1000>>1000\n#### 1,000"},
    )
    msgs = gsm8k_prompt(ex, [shot], chat=True)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert msgs[1]["content"] == "x 1000\nThe final answer is 1,000" and "w1?" in msgs[2]["content"]
    plain = gsm8k_prompt(ex, [shot], chat=False)
    assert plain == "Question: q?\nAnswer: x <<2*500=1000>>1000\n#### 1,000\n\nQuestion: w1?\nAnswer:"
    nq = GenExample(
        id="n", prompt="", target=["Paris"], task="nq_open", meta={"question": "capital of france"}
    )
    assert nq_prompt(nq, [nq], chat=False) == (
        "Answer these questions:\nQ: capital of france?\nA: Paris\nQ: capital of france?\nA:"
    )
    assert nq_prompt(nq, chat=True)[-1]["content"].endswith("Question: capital of france?")


def test_specs_name_scorers_that_resolve():
    from prunelens.data.tasks import TASKS
    from prunelens.evaluation.generative import GEN_TASKS, TASK_DEFAULTS, resolve_function, score_gsm8k

    assert GEN_TASKS == ("gsm8k", "nq_open", "humaneval", "mbpp")
    assert TASK_DEFAULTS == {
        "gsm8k": {"max_new_tokens": 256},
        "nq_open": {"max_new_tokens": 32},
        "humaneval": {"max_new_tokens": 384},
        "mbpp": {"max_new_tokens": 384},
    }
    for t in GEN_TASKS:
        assert callable(resolve_function(TASKS[t].scorer))
    assert resolve_function("prunelens.evaluation.generative:score_gsm8k") is score_gsm8k
    assert resolve_function(score_gsm8k) is score_gsm8k
    assert TASKS["humaneval"].stops_for(False) == list(HUMANEVAL_STOPS)
    assert TASKS["gsm8k"].stops_for(True) == [] and TASKS["nq_open"].stops_for(True) == ["\n"]
    with pytest.raises(ValueError, match="package.module:function"):
        resolve_function("prunelens.evaluation.generative.score_gsm8k")
    with pytest.raises(ValueError, match="unknown generation task 'arc_easy'"):
        score_outputs("arc_easy", [], [])


def test_fewshot_examples_from_real_files():
    need_data("gsm8k/train.jsonl")
    shots = fewshot_examples("gsm8k", 3, seed=0)
    assert len(shots) == 3 and all(s.id.startswith("train-") for s in shots)
    assert [s.id for s in shots] == [s.id for s in fewshot_examples("gsm8k", 3, seed=0)]
    assert [s.id for s in shots] != [s.id for s in fewshot_examples("gsm8k", 3, seed=1)]
    need_data("mbpp/mbpp.jsonl")
    mb = fewshot_examples("mbpp", 2, seed=0)
    assert all(1 <= int(s.id) <= 10 for s in mb)
    msgs = mbpp_prompt(load_task("mbpp", limit=1)[0], mb, chat=True)
    assert len(msgs) == 5 and msgs[1]["content"].startswith("```python\n")
    with pytest.raises(ValueError):
        fewshot_examples("humaneval", 1)


# --------------------------------------------------------------------------------------------------
# Scoring on real data


def test_gsm8k_reference_solutions_score_one():
    need_data("gsm8k/test.jsonl")
    exs = load_task("gsm8k")
    scored = score_outputs("gsm8k", exs, [e.meta["solution"] for e in exs])
    assert all(s["score"] == 1.0 for s in scored)
    wrong = score_outputs("gsm8k", exs[:5], [f"The answer is {float(e.target) + 1}" for e in exs[:5]])
    assert all(s["score"] == 0.0 for s in wrong)
    chat_style = score_outputs(
        "gsm8k", exs[:5], [f"So...\nThe final answer is ${int(e.target):,}." for e in exs[:5]]
    )
    assert all(s["score"] == 1.0 for s in chat_style)


def test_nq_gold_answers_score_one():
    need_data("nq_open/NQ-open.dev.jsonl")
    exs = load_task("nq_open", limit=50, seed=0)
    scored = score_outputs("nq_open", exs, [f" {e.target[-1]}.\nQ: next question?" for e in exs])
    assert all(s["score"] == 1.0 and s["f1"] == 1.0 for s in scored)
    assert score_outputs("nq_open", exs[:1], ["zzzz qqqq"])[0]["score"] == 0.0


def test_humaneval_canonical_passes_wrong_fails():
    need_data("humaneval/HumanEval.jsonl")
    exs = load_task("humaneval", limit=4, seed=0)
    canon = [e.meta["canonical_solution"] for e in exs]
    assert [s["score"] for s in score_outputs("humaneval", exs, canon)] == [1.0] * 4
    # a chat answer: prose, then the whole function (signature repeated) in a fenced block
    fenced = [
        f"Here is the solution:\n```python\n{e.prompt}{e.meta['canonical_solution']}```\nDone." for e in exs
    ]
    scored = score_outputs("humaneval", exs, fenced, chat=True)
    assert [s["score"] for s in scored] == [1.0] * 4 and {s["code_mode"] for s in scored} == {"function"}
    wrong = score_outputs("humaneval", exs, ["    return None\n"] * 4)
    assert [s["score"] for s in wrong] == [0.0] * 4 and all(s["status"] in ("failed", "error") for s in wrong)
    broken = score_outputs("humaneval", exs[:1], ["    return (\n"])
    assert broken[0]["score"] == 0.0 and broken[0]["status"] == "error"
    # a completion with trailing junk is cut by the HumanEval stop strings before scoring
    from prunelens.evaluation.answers import truncate_at_stop

    junk = canon[0] + "\n\nprint(" + exs[0].meta["entry_point"] + "(1))\nraise SystemExit(1)\n"
    assert score_outputs("humaneval", exs[:1], [truncate_at_stop(junk, HUMANEVAL_STOPS)])[0]["score"] == 1.0


def test_mbpp_canonical_passes_wrong_fails():
    need_data("mbpp/mbpp.jsonl")
    exs = load_task("mbpp", limit=4, seed=0)
    setup = [e for e in load_task("mbpp") if e.meta["test_setup_code"].strip()][:1]  # setup code path too
    exs = exs + setup
    codes = [e.meta["code"] for e in exs]
    assert [s["score"] for s in score_outputs("mbpp", exs, codes)] == [1.0] * len(exs)
    fenced = [f"Sure:\n```python\n{c}\n```" for c in codes]
    assert [s["score"] for s in score_outputs("mbpp", exs, fenced, chat=True)] == [1.0] * len(exs)
    done = [c + "\n[DONE]\nmore text" for c in codes]
    assert [s["score"] for s in score_outputs("mbpp", exs, done)] == [1.0] * len(exs)
    wrong = score_outputs("mbpp", exs, ["def nothing():\n    pass\n"] * len(exs))
    assert [s["score"] for s in wrong] == [0.0] * len(exs)


# --------------------------------------------------------------------------------------------------
# The evaluator, end to end on the tiny model


def test_evaluate_generative_structure_on_tiny_model(tiny):
    model, tok = tiny
    exs = [
        GenExample(
            id=f"t{i}",
            prompt=f"Question: {random_text(5, seed=i)}\nAnswer:",
            target=str(i),
            task="gsm8k",
            meta={"question": random_text(5, seed=i), "solution": f"#### {i}"},
        )
        for i in range(3)
    ]
    res = evaluate_generative(model, tok, "gsm8k", exs, batch_size=2, max_new_tokens=8)
    assert isinstance(res, TaskResult) and res.kind == "gen" and res.n == 3
    assert res.main_metric == "exact_match"
    assert 0.0 <= res.score <= 1.0 and res.config["chat"] is False and res.config["max_new_tokens"] == 8
    for ex, r in zip(exs, res.records):
        assert {
            "id",
            "prompt",
            "target",
            "prediction",
            "score",
            "text",
            "token_ids",
            "finish_reason",
            "input_text",
        } <= set(r)
        assert r["id"] == ex.id and r["n_tokens"] <= 8
    assert "degen_rep4_mean" in res.metrics and "generation_s" in res.metrics
    same = fidelity(res, res, tok)
    assert same.metrics["exact_match"] == 1.0 and same.metrics["rouge_l_mean"] == 1.0
    with pytest.raises(ValueError, match="unknown generation task"):
        evaluate_generative(model, tok, "nope", exs)


def test_evaluate_humaneval_on_tiny_model_runs_the_sandbox(tiny):
    need_data("humaneval/HumanEval.jsonl")
    model, tok = tiny
    exs = load_task("humaneval", limit=2, seed=0)
    res = evaluate_generative(model, tok, "humaneval", exs, batch_size=2, max_new_tokens=6)
    assert res.main_metric == "pass@1" and res.score == 0.0  # random words are not code
    assert res.config["stop"] == list(HUMANEVAL_STOPS)
    assert all(r["status"] in ("failed", "error") for r in res.records)


# --------------------------------------------------------------------------------------------------
# The real model: pipeline smoke test (not answer quality)


@pytest.mark.real_model
def test_real_model_gsm8k_smoke():
    import prunelens

    need_data("gsm8k/test.jsonl")
    model, tok = prunelens.load()
    exs = load_task("gsm8k", limit=2, seed=0)
    res = evaluate_generative(model, tok, "gsm8k", exs, batch_size=2, max_new_tokens=32)
    assert res.n == 2 and res.config["chat"] is True
    for r in res.records:
        assert r["input_text"].startswith("<|im_start|>system")
        assert r["input_text"].endswith("<|im_start|>assistant\n")
        assert 0 < r["n_tokens"] <= 32 and r["text"].strip() and r["score"] in (0.0, 1.0)
        assert r["finish_reason"] in ("eos", "length")
    # the output the evaluator records is what a one-by-one call gives (left padding is right)
    one = generate_batch(model, tok, [res.records[0]["input_text"]], max_new_tokens=32, chat=False)
    assert one[0].token_ids == res.records[0]["token_ids"]
