"""prunelens's multiple-choice scores agree with lm-evaluation-harness, example by example.

Fast part (tiny random models): our log-likelihoods equal lm-eval ``HFLM.loglikelihood`` on the same
requests, and the bridge evaluates an in-memory pruned model on local-file task configs.

Real part (``real_model``): the embedded SmolLM2-135M on a seeded subset of ARC-Easy, BoolQ and PIQA
from the shared data; lm-eval reads the same subset through task YAMLs that include its built-in
tasks (its own prompt templates) and read a local JSON Lines file. Accuracy must agree within 0.5
points and the prediction must match on every example that is not a numerical near-tie.
``PRUNELENS_AGREEMENT_N`` sets the subset size (default 40 per task; about 90 s in all on a 2-core CPU).

lm-eval is an optional dependency: these tests skip without it, and fail without it when ``CI`` is set.
"""

from __future__ import annotations

import json
import os

import pytest

from prunelens.data.tasks import MCExample, load_task
from prunelens.evaluation.multiple_choice import encode_pair, evaluate_multiple_choice
from prunelens.models.adapter import Adapter, drop_sublayer
from prunelens.models.tiny import tiny_model

from conftest import need_data, need_package, random_text, tiny_tokenizer

need_package("lm_eval", module=True)

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from prunelens.evaluation.lm_eval_bridge import (  # noqa: E402
    lm_eval_records,
    lm_eval_tasks_for_local_data,
    run_lm_eval,
)

NEAR_TIE = 1e-3  # |Δ log-prob| below which two choices count as tied (float noise may flip them)


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------------
# Fast: tiny models


def _requests(seed: int = 0) -> list[MCExample]:
    exs = []
    for i in range(6):
        ctx = random_text(2 + 4 * i, seed=seed + i) + ("  " if i == 2 else "")  # trailing spaces move
        choices = [" " + random_text(1 + (i + j) % 3, seed=seed + 50 + 7 * i + j) for j in range(2 + i % 2)]
        exs.append(MCExample(str(i), ctx, choices, 0, "t"))
    exs.append(MCExample("empty", "", [" w5 w6", " w7"], 0, "t"))  # empty context -> BOS
    exs.append(
        MCExample(
            "wino", "w1 w2", [" w9 w8", " w9 w8"], 1, "winogrande", contexts=["w1 w2 w3", "w1 w2 w4 w5"]
        )
    )
    return exs


def _hflm_loglikelihoods(lm: HFLM, exs: list[MCExample]) -> list[list[tuple[float, bool]]]:
    flat = [(i, pair) for i, ex in enumerate(exs) for pair in ex.pairs()]
    reqs = [Instance("loglikelihood", doc={}, arguments=pair, idx=k) for k, (_, pair) in enumerate(flat)]
    res = lm.loglikelihood(reqs, disable_tqdm=True)
    out: list[list[tuple[float, bool]]] = [[] for _ in exs]
    for (i, _), r in zip(flat, res):
        out[i].append((float(r[0]), bool(r[1])))
    return out


@pytest.mark.parametrize("bos", [False, True])
def test_loglikelihoods_equal_hflm_on_a_tiny_model(bos):
    from tokenizers import processors

    tok = tiny_tokenizer()
    if bos:  # a tokenizer that adds BOS by itself (Llama-2/Gemma style)
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)]
        )
    model = tiny_model("llama", seed=3)
    exs = _requests()
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=3)
    ref = _hflm_loglikelihoods(lm, exs)
    for ex in exs:
        for ctx, cont in ex.pairs():
            if ctx:
                assert encode_pair(tok, ctx, cont) == tuple(lm._encode_pair(ctx, cont))
    for method in ("shared_kv", "rows"):
        res = evaluate_multiple_choice(model, tok, exs, batch_size=4, method=method)
        for rec, r in zip(res.records, ref):
            assert rec["logprobs"] == pytest.approx([x[0] for x in r], abs=1e-4)
            assert rec["is_greedy"] == [x[1] for x in r]


def _write_arc(path, n: int = 12) -> None:
    """A small ARC file in the AI2 published layout, over the tiny tokenizer's words."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            labels = ["A", "B", "C", "D"][: 3 + i % 2]
            choices = [
                {"text": random_text(1 + (i + k) % 3, seed=1000 + 10 * i + k), "label": lab}
                for k, lab in enumerate(labels)
            ]
            stem = random_text(3 + i % 5, seed=900 + i)
            key = labels[i % len(labels)]
            row = {"id": f"q{i}", "question": {"stem": stem, "choices": choices}, "answerKey": key}
            f.write(json.dumps(row) + "\n")


def test_bridge_runs_an_in_memory_pruned_model_on_local_task_configs(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_model("llama", seed=4)
    drop_sublayer(Adapter(model), 2, "attn")  # pruned in place; the bridge must not re-load it
    data = tmp_path / "ARC-Easy-Test.jsonl"
    _write_arc(data)
    with lm_eval_tasks_for_local_data(["arc_easy"], limit=8, seed=1, paths={"arc_easy": data}) as local:
        yaml_text = (local.path / "prunelens_arc_easy.yaml").read_text()
        assert "include:" in yaml_text and "dataset_path: json" in yaml_text
        assert local.n == {"arc_easy": 8}
        out = run_lm_eval(model, tok, local.task_names, task_paths=[local.path], batch_size=4)
    assert not local.path.exists()  # temporary folder removed
    assert model.training is False
    exs = load_task("arc_easy", path=data, limit=8, seed=1)
    ours = evaluate_multiple_choice(model, tok, exs, batch_size=8)
    theirs = lm_eval_records(out, "prunelens_arc_easy")
    assert [r["doc"]["id"] for r in theirs] == [ex.id for ex in exs]  # same subset, same order
    for a, b in zip(ours.records, theirs):
        assert a["logprobs"] == pytest.approx(b["logprobs"], abs=1e-4)
        assert (a["acc"], a["acc_norm"]) == (b["acc"], b["acc_norm"])
    res = out["results"]["prunelens_arc_easy"]
    assert res["acc,none"] == pytest.approx(ours.metrics["acc"])
    assert res["acc_norm,none"] == pytest.approx(ours.metrics["acc_norm"])


def _write_fixture(name: str, path) -> None:
    """A few rows of HellaSwag (official JSONL) or WinoGrande (official dev.jsonl) over tiny-vocab words."""
    rows = []
    for i in range(6):
        if name == "hellaswag":
            rows.append(
                {
                    "ind": i,
                    "activity_label": random_text(2, seed=10 + i),
                    "ctx_a": random_text(5, seed=20 + i),
                    "ctx_b": random_text(3, seed=30 + i),
                    "ctx": "",
                    "split": "val",
                    "split_type": "indomain",
                    "source_id": f"s{i}",
                    "label": i % 4,
                    "endings": [random_text(2 + (i + k) % 4, seed=40 + 4 * i + k) for k in range(4)],
                }
            )
        else:
            sentence = f"{random_text(4, seed=50 + i)} _ {random_text(3, seed=60 + i)}"
            rows.append(
                {
                    "qID": f"q{i}",
                    "sentence": sentence,
                    "option1": random_text(1, seed=70 + i),
                    "option2": random_text(2, seed=80 + i),
                    "answer": str(1 + i % 2),
                }
            )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize(
    "name, filename", [("hellaswag", "hellaswag_val.jsonl"), ("winogrande", "dev.jsonl")]
)
def test_local_configs_for_tasks_without_shared_data(tmp_path, name, filename):
    # HellaSwag is not in the shared data and WinoGrande is there as Arrow: check their converters and
    # lm-eval's templates (HellaSwag's preprocessing, WinoGrande's per-choice contexts) on fixtures
    tok = tiny_tokenizer()
    model = tiny_model("llama", seed=5)
    data = tmp_path / filename
    _write_fixture(name, data)
    with lm_eval_tasks_for_local_data([name], paths={name: data}) as local:
        out = run_lm_eval(model, tok, local.task_names, task_paths=[local.path], batch_size=4)
    theirs = lm_eval_records(out, f"prunelens_{name}")
    ours = evaluate_multiple_choice(model, tok, load_task(name, path=data), batch_size=8)
    assert len(theirs) == ours.n == 6
    for a, b in zip(ours.records, theirs):
        assert a["logprobs"] == pytest.approx(b["logprobs"], abs=1e-4)
        assert a["acc"] == b["acc"]
        if "acc_norm" in b:
            assert a["acc_norm"] == b["acc_norm"]


def test_run_lm_eval_refuses_the_request_cache():
    with pytest.raises(ValueError, match="keyed by the request"):
        run_lm_eval(None, None, ["arc_easy"], use_cache="/tmp/lm_eval_cache")
    with pytest.raises(ValueError, match="keyed by the request"):
        run_lm_eval(None, None, ["arc_easy"], cache_requests=True)


def test_local_configs_read_the_same_subset_as_load_task():
    need_data("arc/ARC-Easy-Test.jsonl")
    need_data("piqa/valid.jsonl")
    need_data("boolq/val.jsonl")
    with lm_eval_tasks_for_local_data(["arc_easy", "piqa", "boolq"], limit=25, seed=3) as local:
        for name in ("arc_easy", "piqa", "boolq"):
            rows = [json.loads(line) for line in local.files[name].read_text().splitlines()]
            exs = load_task(name, limit=25, seed=3)
            assert len(rows) == len(exs) == 25
            for r, ex in zip(rows, exs):
                if name == "arc_easy":
                    assert r["id"] == ex.id and r["choices"]["label"].index(r["answerKey"]) == ex.label
                elif name == "piqa":
                    assert (r["goal"], r["label"]) == (ex.meta["goal"], ex.label)
                else:
                    assert (r["question"], r["label"]) == (ex.meta["question"], ex.label)
        text = (local.path / "prunelens_boolq.yaml").read_text()
        assert str(local.files["boolq"].resolve()) in text  # the data path is written at run time


# --------------------------------------------------------------------------------------------------
# Real model, real data


def _limits() -> dict[str, int]:
    n = os.environ.get("PRUNELENS_AGREEMENT_N")
    if n:
        return {"arc_easy": int(n), "boolq": int(n), "piqa": int(n)}
    return {"arc_easy": 40, "boolq": 40, "piqa": 40}


@pytest.fixture(scope="module")
def agreement():
    for rel in ("arc/ARC-Easy-Test.jsonl", "boolq/val.jsonl", "piqa/valid.jsonl"):
        need_data(rel)
    import time

    import prunelens

    model, tok = prunelens.load()
    limits = _limits()
    out: dict[str, dict] = {}
    t0 = time.perf_counter()
    lm_runs = {}
    for name, n in limits.items():  # one lm-eval call per task so each gets its own wall time
        with lm_eval_tasks_for_local_data([name], limit=n, seed=0) as local:
            t = time.perf_counter()
            res = run_lm_eval(model, tok, local.task_names, task_paths=[local.path], batch_size=16)
            lm_runs[name] = (res, time.perf_counter() - t)
    for name, n in limits.items():
        exs = load_task(name, limit=n, seed=0)
        ours = evaluate_multiple_choice(model, tok, exs, batch_size=16)
        res, secs = lm_runs[name]
        out[name] = {
            "ours": ours,
            "theirs": lm_eval_records(res, f"prunelens_{name}"),
            "theirs_metrics": res["results"][f"prunelens_{name}"],
            "theirs_seconds": secs,
        }
    print(f"\nagreement on the embedded model ({time.perf_counter() - t0:.0f} s in all)")
    for name, d in out.items():
        m, t = d["ours"].metrics, d["theirs_metrics"]
        print(
            f"  {name:9s} n={d['ours'].n:3d}  prunelens acc {m['acc']:.3f} acc_norm {m['acc_norm']:.3f} "
            f"({d['ours'].seconds:.1f} s) | lm-eval acc {t['acc,none']:.3f} "
            f"acc_norm {t.get('acc_norm,none', float('nan')):.3f} ({d['theirs_seconds']:.1f} s)"
        )
    return out


def _near_tie(logprobs: list[float], lengths: list[int] | None = None) -> bool:
    s = sorted((lp / n if lengths else lp) for lp, n in zip(logprobs, lengths or [1] * len(logprobs)))
    return len(s) > 1 and s[-1] - s[-2] < NEAR_TIE


@pytest.mark.real_model
@pytest.mark.parametrize("task", ["arc_easy", "boolq", "piqa"])
def test_accuracy_and_predictions_agree_with_lm_eval(agreement, task):
    from prunelens.evaluation.multiple_choice import normalisation_lengths

    d = agreement[task]
    ours, theirs, tm = d["ours"], d["theirs"], d["theirs_metrics"]
    assert len(theirs) == ours.n
    assert abs(ours.metrics["acc"] - tm["acc,none"]) <= 0.005
    if "acc_norm,none" in tm:
        assert abs(ours.metrics["acc_norm"] - tm["acc_norm,none"]) <= 0.005
    exs = load_task(task, limit=ours.n, seed=0)
    mismatches = []
    for ex, a, b in zip(exs, ours.records, theirs):
        assert a["logprobs"] == pytest.approx(b["logprobs"], rel=1e-4, abs=2e-3)
        if a["prediction"] != b["prediction"] and not _near_tie(b["logprobs"]):
            mismatches.append((ex.id, "acc", a["logprobs"], b["logprobs"]))
        chars, _ = normalisation_lengths(ex)
        if a["prediction_norm"] != b["prediction_norm"] and not _near_tie(b["logprobs"], chars):
            mismatches.append((ex.id, "acc_norm", a["logprobs"], b["logprobs"]))
        if "acc_norm" in b:
            assert b["acc_norm"] == float(b["prediction_norm"] == ex.label)  # our reading of lm-eval's rule
    assert not mismatches, mismatches


def test_perplexity_equals_lm_eval_rolling_loglikelihood_for_a_bos_tokenizer(tmp_path):
    """A tokenizer that prepends BOS (Gemma style): our perplexity windows start with BOS, as lm-eval's
    rolling log-likelihood does, and the summed log-likelihood of a document is the same."""
    from tokenizers import processors

    from prunelens.data.calibration import bos_prefix, get_calibration, token_stream
    from prunelens.evaluation.perplexity import perplexity

    tok = tiny_tokenizer()
    assert bos_prefix(tok) is None
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)]
    )
    assert bos_prefix(tok) == tok.bos_token_id
    model = tiny_model("gemma", seed=5)
    # add_bos_token=False: lm-eval then tokenises the document bare and prefixes BOS once; by default this
    # lm-eval version lets the tokenizer add BOS as well, so the document would start with two of them
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=2, max_length=128, add_bos_token=False)
    for seed, words in ((0, 40), (1, 97)):
        doc = random_text(words, seed=seed)
        ref = lm.loglikelihood_rolling(
            [Instance("loglikelihood_rolling", doc={}, arguments=(doc,), idx=0)], disable_tqdm=True
        )[0]
        stream = token_stream(tok, [doc])
        ours = perplexity(model, stream, seqlen=stream.numel() + 1, bos_id=bos_prefix(tok))
        assert ours.tokens == words
        assert -ours.nll * ours.tokens == pytest.approx(ref, rel=1e-5, abs=1e-4)
        bare = perplexity(model, stream, seqlen=stream.numel())  # no BOS: the first token is not scored
        assert bare.tokens == words - 1
    # calibration windows follow the tokenizer too
    doc_file = tmp_path / "c.txt"
    doc_file.write_text(random_text(400, seed=3))
    cal = get_calibration(tok, str(doc_file), nsamples=3, seqlen=16, seed=0)
    assert cal.input_ids.shape == (3, 16) and (cal.input_ids[:, 0] == tok.bos_token_id).all()
    assert cal.describe()["bos_id"] == tok.bos_token_id
