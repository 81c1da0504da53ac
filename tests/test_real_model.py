"""Behaviour on the embedded SmolLM2-135M-Instruct (real weights, real tokenizer, real data).

Kept few and small: calibration 16×128 tokens, perplexity on 4 windows of 256 WikiText-2 tokens.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import prunelens
from prunelens.data.calibration import get_calibration, load_texts, token_stream
from prunelens.evaluation.perplexity import perplexity
from prunelens.models.adapter import Adapter, param_count
from prunelens.models.loading import embedded_gguf
from prunelens.prune.drop import drop
from prunelens.prune.save import save_pruned
from prunelens.prune.sparsify import sparsify

from conftest import need_data

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def dense():
    model, tok = prunelens.load()
    return model, tok


@pytest.fixture(scope="module")
def calib(dense):
    need_data("c4/c4_demo.json")
    return get_calibration(dense[1], "c4", nsamples=16, seqlen=128, seed=0)


@pytest.fixture(scope="module")
def wiki(dense):
    need_data("wikitext2_tokens/test.txt")
    return token_stream(dense[1], load_texts("wikitext2"))


def _ppl(model, wiki):
    return perplexity(model, wiki, seqlen=256, max_windows=4, batch_size=4).ppl


def test_cached_checkpoint_matches_the_gguf(dense):
    from transformers import AutoModelForCausalLM

    gguf = embedded_gguf()
    raw = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    model, tok = dense
    ids = tok("The capital of France is Paris. The capital of Italy is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(raw(ids).logits, model(ids).logits)
    assert model.config.num_hidden_layers == 30 and type(model).__name__ == "LlamaForCausalLM"


def test_sparsity_orderings_at_half(dense, calib, wiki):
    """Known orderings at 50% unstructured: magnitude > Wanda, SparseGPT > dense; all finite."""
    model, _ = dense
    ppl = {"dense": _ppl(model, wiki)}
    for method in ("magnitude", "wanda", "sparsegpt"):
        pruned = copy.deepcopy(model)
        plan = sparsify(pruned, calib, method=method, sparsity=0.5, batch_size=8)
        assert abs(plan.sparsity["achieved"]["overall"] - 0.5) < 1e-3
        ppl[method] = _ppl(pruned, wiki)
        del pruned
    print("perplexity at 50%:", {k: round(v, 2) for k, v in ppl.items()})
    assert all(math.isfinite(v) for v in ppl.values())
    assert ppl["magnitude"] > ppl["wanda"] > ppl["dense"]
    assert ppl["magnitude"] > ppl["sparsegpt"] > ppl["dense"]


def test_drop_8_attention_real(dense, calib, tmp_path):
    model, tok = dense
    pruned = copy.deepcopy(model)
    adapter = Adapter(pruned)
    attn_params = sum(p.numel() for p in adapter.sublayer(0, "attn").parameters()) + model.config.hidden_size
    plan = drop(pruned, calib, target="attn", n=8, base_model="smollm2-135m")
    assert plan.name == "Drop-8A"
    assert param_count(pruned) == param_count(model) - 8 * attn_params
    sims = plan.scores["similarity"]["attn"]
    chosen = {d["layer"] for d in plan.dropped_sublayers}
    assert min(sims[i] for i in chosen) >= max(s for i, s in enumerate(sims) if i not in chosen)
    out = save_pruned(pruned, tok, plan, tmp_path / "drop8a")
    loaded, _ = prunelens.load(str(out))
    ids = tok("Question: what is 12 plus 30?\nAnswer:", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, pruned(ids).logits)
        cached = loaded.generate(
            ids, max_new_tokens=16, do_sample=False, use_cache=True, pad_token_id=tok.pad_token_id
        )
        uncached = loaded.generate(
            ids, max_new_tokens=16, do_sample=False, use_cache=False, pad_token_id=tok.pad_token_id
        )
    assert torch.equal(cached, uncached)


def test_generation_objective_on_the_real_model(dense, calib):
    """On the embedded model: the generation objective's plan drops the sublayers with the smallest exact
    counterfactual KLs, records them, and the cosine-chosen set has no smaller KL sum."""
    import dataclasses

    from prunelens.prune.objectives import counterfactual_kl

    model, _ = dense
    cal2 = dataclasses.replace(calib, input_ids=calib.input_ids[:2])
    scores, _ = counterfactual_kl(model, cal2.input_ids, ("attn",), batch_size=2)
    kl = scores.divergence["attn"]
    assert all(v is not None and v > 0 for v in kl)
    by_kl = drop(model, cal2, target="attn", n=4, objective="generation", batch_size=2, dry_run=True)
    by_cos = drop(model, cal2, target="attn", n=4, dry_run=True)
    chosen = sorted(d["layer"] for d in by_kl.dropped_sublayers)
    assert chosen == sorted(sorted(range(30), key=lambda i: kl[i])[:4])
    assert sum(kl[i] for i in chosen) <= sum(kl[d["layer"]] for d in by_cos.dropped_sublayers)
    assert [d["kl"] for d in by_kl.dropped_sublayers] == pytest.approx([kl[i] for i in chosen], rel=1e-4)
