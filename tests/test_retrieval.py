"""Retrieval evaluation, embedders (pooling, padding) and encoder sublayer dropping.

Metric functions are checked against hand-computed values and against pytrec_eval (the evaluator BEIR
and MTEB call); embedders and encoder pruning run on tiny random models; the real-data tests use the
shared BoolQ file and the all-MiniLM-L6-v2 wheel.
"""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
from transformers import AutoConfig, AutoModel

from prunelens.data.calibration import encoder_calibration
from prunelens.data.tasks import RetrievalData, load_task, write_beir
from prunelens.evaluation.retrieval import (
    cosine_scores,
    dcg,
    doc_text,
    evaluate_retrieval,
    mrr_at_k,
    ndcg_at_k,
    rank_documents,
    recall_at_k,
    score_rankings,
    subsample,
)
from prunelens.models.adapter import param_count
from prunelens.models.embedders import DecoderEmbedder, SentenceTransformerEmbedder, TransformerEmbedder, pool
from prunelens.models.encoder_adapter import (
    DroppedEncoderAttention,
    DroppedEncoderOutput,
    DroppedIntermediate,
    EncoderAdapter,
    apply_encoder_plan,
    drop_encoder_sublayer,
)
from prunelens.models.tiny import tiny_model
from prunelens.plan import PrunePlan
from prunelens.prune.drop import PruneConfigError
from prunelens.prune.encoder_drop import drop_encoder, encoder_similarities, prune_embedder

from conftest import need_data, need_minilm, tiny_tokenizer

# --------------------------------------------------------------------------------------------------
# Metrics


def test_ndcg_graded_relevance_hand_computed():
    qrels = {"a": 2, "b": 1, "c": 0, "z": 1}  # z is relevant but never retrieved
    ranking = ["b", "c", "d", "a"]
    # linear gains (trec_eval): DCG = 1/log2(2) + 0 + 0 + 2/log2(5); ideal gains 2, 1, 1
    expected = (1 + 2 / math.log2(5)) / (2 + 1 / math.log2(3) + 1 / math.log2(4))
    assert ndcg_at_k(ranking, qrels, 10) == pytest.approx(expected, abs=1e-12)
    assert ndcg_at_k(ranking, qrels, 10) == pytest.approx(
        0.5945049115278096, abs=1e-12
    )  # pytrec_eval's value
    # cut at k: only rank 1 counts; ideal@1 is the top gain (2)
    assert ndcg_at_k(ranking, qrels, 1) == pytest.approx(1 / 2)
    assert ndcg_at_k(["a", "z", "b"], qrels, 3) == pytest.approx(1.0)
    assert dcg([3, 2]) == pytest.approx(3 + 2 / math.log2(3))


def test_ndcg_negative_and_missing_relevance():
    assert ndcg_at_k(["a", "b"], {"a": -1, "b": 1}, 10) == pytest.approx(
        1 / math.log2(3)
    )  # negative = gain 0
    assert ndcg_at_k(["a", "b"], {"a": 0}, 10) == 0.0  # no relevant document
    assert ndcg_at_k([f"d{i}" for i in range(20)], {"d10": 1}, 10) == 0.0  # first relevant at rank 11


def test_recall_and_mrr_hand_computed():
    qrels = {"a": 1, "b": 2, "c": 1, "n": 0}
    ranking = ["x", "b", "n", "a", "y"]
    assert recall_at_k(ranking, qrels, 1) == 0.0
    assert recall_at_k(ranking, qrels, 2) == pytest.approx(1 / 3)
    assert recall_at_k(ranking, qrels, 100) == pytest.approx(2 / 3)
    assert mrr_at_k(ranking, qrels, 10) == pytest.approx(1 / 2)
    assert mrr_at_k(ranking, qrels, 1) == 0.0
    assert mrr_at_k(["n", "x"], qrels, 10) == 0.0  # rel 0 is not relevant


def test_score_rankings_excludes_queries_without_relevant_documents():
    rankings = {"q1": ["a", "b"], "q2": ["b", "a"], "q3": ["a"]}
    qrels = {"q1": {"a": 1}, "q2": {"a": 1}, "q3": {"a": 0}}
    agg, per_query = score_rankings(rankings, qrels, k_values=(1, 10))
    assert set(per_query) == {"q1", "q2"}
    assert agg["queries"] == 2 and agg["queries_excluded"] == 1
    assert agg["ndcg@1"] == pytest.approx(0.5)
    assert agg["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert agg["mrr@10"] == pytest.approx(0.75)


def test_metrics_match_pytrec_eval_on_random_runs():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = random.Random(0)
    docs = [f"d{i}" for i in range(60)]
    qrels, run = {}, {}
    for q in range(40):
        qid = f"q{q}"
        qrels[qid] = {d: rng.choice([0, 1, 1, 2, 3]) for d in rng.sample(docs, rng.randint(1, 6))}
        # coarse scores → many ties, broken the trec_eval way
        run[qid] = {d: rng.randint(0, 8) / 8 for d in docs}
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10,100"})
    ref = ev.evaluate(run)
    for qid, scores in run.items():
        ranking = [d for d, _ in sorted(scores.items(), key=lambda t: (t[1], t[0]), reverse=True)]
        if not any(r > 0 for r in qrels[qid].values()):
            continue
        assert ndcg_at_k(ranking, qrels[qid], 10) == pytest.approx(ref[qid]["ndcg_cut_10"], abs=1e-12)
        assert recall_at_k(ranking, qrels[qid], 10) == pytest.approx(ref[qid]["recall_10"], abs=1e-12)
        assert recall_at_k(ranking, qrels[qid], 100) == pytest.approx(ref[qid]["recall_100"], abs=1e-12)


# --------------------------------------------------------------------------------------------------
# Ranking


def test_rank_by_cosine_not_dot_product():
    q = torch.tensor([[1.0, 0.0]])
    docs = torch.tensor([[10.0, 10.0], [1.0, 0.1], [0.0, 3.0]])  # the long vector has a worse angle
    ranked = rank_documents(q, docs, ["long", "close", "orth"], k=3)[0]
    assert [d for d, _ in ranked] == ["close", "long", "orth"]
    assert ranked[0][1] == pytest.approx(1 / math.sqrt(1.01), abs=1e-6)
    torch.testing.assert_close(cosine_scores(q, docs)[0, 1], torch.tensor(1 / math.sqrt(1.01)))


def test_ties_are_broken_by_doc_id_descending_also_at_the_cutoff():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    docs = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [0.0, 1.0]])  # three identical directions
    ids = ["d1", "d3", "d2", "x"]
    ranked = rank_documents(q, docs, ids, k=2)
    assert [d for d, _ in ranked[0]] == ["d3", "d2"]  # d1 loses the tie at the cut-off
    assert [d for d, _ in ranked[1]][0] == "x"
    # string order, as trec_eval: "d9" > "d10"
    ranked = rank_documents(q[:1], docs[:2], ["d10", "d9"], k=2)[0]
    assert [d for d, _ in ranked] == ["d9", "d10"]


def test_rank_documents_chunking_is_invisible():
    g = torch.Generator().manual_seed(0)
    q, d = torch.randn(9, 8, generator=g), torch.randn(30, 8, generator=g)
    ids = [f"d{i}" for i in range(30)]
    a, b = rank_documents(q, d, ids, 5, chunk=2), rank_documents(q, d, ids, 5)
    assert [[i for i, _ in r] for r in a] == [[i for i, _ in r] for r in b]  # BLAS may differ in the last bit
    assert all(abs(x[1] - y[1]) < 1e-6 for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    assert len(rank_documents(q, d, ids, 100)[0]) == 30  # k is capped by the corpus


def test_doc_text_follows_mteb():
    assert doc_text({"title": "T", "text": " body "}) == "T  body"
    assert doc_text({"title": "", "text": " body "}) == "body"


# --------------------------------------------------------------------------------------------------
# Pooling and embedders


def test_pool_hand_computed():
    h = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [9.0, 9.0]], [[9.0, 9.0], [2.0, 4.0], [4.0, 0.0]]])
    right = torch.tensor([[1, 1, 0], [0, 1, 1]])  # row 0 right-padded, row 1 left-padded
    torch.testing.assert_close(pool(h, right, "mean"), torch.tensor([[2.0, 1.0], [3.0, 2.0]]))
    torch.testing.assert_close(pool(h, right, "max"), torch.tensor([[3.0, 2.0], [4.0, 4.0]]))
    torch.testing.assert_close(pool(h, right, "last"), torch.tensor([[3.0, 2.0], [4.0, 0.0]]))
    torch.testing.assert_close(pool(h, right, "cls"), h[:, 0])
    torch.testing.assert_close(
        pool(h, right, "mean_sqrt_len"), torch.tensor([[4.0, 2.0], [6.0, 4.0]]) / math.sqrt(2)
    )
    with pytest.raises(ValueError):
        pool(h, right, "nope")


TEXTS = ["w1 w2 w3 w4 w5 w6 w7", "w8", "w9 w10 w11", "w12 w13 w14 w15 w16"]


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_decoder_embedder_padding_equals_unpadded(padding_side, pooling):
    """A batch with padding (either side) embeds each text exactly as it embeds alone."""
    emb = DecoderEmbedder(
        tiny_model("llama"), tiny_tokenizer(), pooling=pooling, padding_side=padding_side, batch_size=4
    )
    batched = emb.encode(TEXTS)
    alone = torch.cat([emb.encode([t]) for t in TEXTS])
    torch.testing.assert_close(batched, alone, rtol=0, atol=2e-6)
    torch.testing.assert_close(batched.norm(dim=-1), torch.ones(len(TEXTS)))
    # and the padded batch really had padding on that side
    _, inp, mask = next(emb.batches(emb._tokenize(TEXTS), 4))
    col = 0 if padding_side == "left" else -1
    assert mask[:, col].min() == 0 and (inp[mask == 0] == emb.pad_id).all()


def test_decoder_embedder_last_token_is_eos_and_instruction_prefix():
    tok = tiny_tokenizer()
    emb = DecoderEmbedder(tiny_model("llama"), tok, query_instruction="w100 w101")
    assert emb.prepare(["w5"], "query") == ["Instruct: w100 w101\nQuery: w5"]
    assert emb.prepare(["w5"], "document") == ["w5"]
    ids = emb._tokenize(["w5 w6"])[0]
    assert ids[-1] == tok.eos_token_id
    q, d = emb.encode(["w5"], kind="query"), emb.encode(["w5"], kind="document")
    assert not torch.allclose(q, d)
    # the embedding is the base model's last hidden state (final norm applied) at the EOS position
    with torch.no_grad():
        h = emb.model.base_model(torch.tensor([ids])).last_hidden_state[0, -1]
    torch.testing.assert_close(emb.encode(["w5 w6"])[0], torch.nn.functional.normalize(h, dim=-1))


def tiny_bert(family: str = "bert", seed: int = 0, layers: int = 4):
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(
        family,
        vocab_size=256,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=2,
    )
    return AutoModel.from_config(cfg, add_pooling_layer=False).eval()


def test_transformer_embedder_padding_invariant():
    emb = TransformerEmbedder(tiny_bert(), tiny_tokenizer(), pooling="mean", max_length=16)
    batched = emb.encode(TEXTS, batch_size=3)
    alone = torch.cat([emb.encode([t]) for t in TEXTS])
    torch.testing.assert_close(batched, alone, rtol=0, atol=2e-6)
    torch.testing.assert_close(batched.norm(dim=-1), torch.ones(len(TEXTS)))
    assert emb.prepare(["  w1 "], "query") == ["w1"]


# --------------------------------------------------------------------------------------------------
# Encoder sublayer dropping (tiny random BERT)

IDS = torch.randint(3, 256, (3, 10), generator=torch.Generator().manual_seed(1))


def _hidden(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids, output_hidden_states=True).hidden_states


def _unit_params(model, layer, kind):
    ad = EncoderAdapter(model)
    if kind == "attn":
        return sum(p.numel() for p in ad.unit(layer, "attn").parameters())
    blk = ad.layers[layer]
    return sum(p.numel() for p in blk.intermediate.parameters()) + sum(
        p.numel() for p in blk.output.parameters()
    )


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_drop_attention_identity_structure_params_and_output(family):
    dense = tiny_bert(family)
    model = copy.deepcopy(dense)
    before = param_count(model)
    removed = _unit_params(model, 1, "attn")
    drop_encoder_sublayer(model, 1, "attn")
    ad = EncoderAdapter(model)
    assert isinstance(ad.layers[1].attention, DroppedEncoderAttention) and ad.is_dropped(1, "attn")
    assert not ad.is_dropped(1, "mlp") and not ad.is_dropped(0, "attn")
    assert param_count(model) == before - removed
    # reference from the dense modules: layer 1 becomes its MLP unit applied to its input
    hd, hp = _hidden(dense), _hidden(model)
    blk = dense.encoder.layer[1]
    with torch.no_grad():
        expected = blk.output(blk.intermediate(hd[1]), hd[1])
    torch.testing.assert_close(hp[1], hd[1], rtol=0, atol=0)
    torch.testing.assert_close(hp[2], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="already dropped"):
        drop_encoder_sublayer(model, 1, "attn")


def test_drop_whole_layer_identity_equals_removing_the_layer():
    dense = tiny_bert()
    model = copy.deepcopy(dense)
    drop_encoder_sublayer(model, 2, "attn")
    drop_encoder_sublayer(model, 2, "mlp")
    ad = EncoderAdapter(model)
    assert isinstance(ad.layers[2].intermediate, DroppedIntermediate)
    assert isinstance(ad.layers[2].output, DroppedEncoderOutput)
    shorter = copy.deepcopy(dense)
    shorter.encoder.layer = torch.nn.ModuleList([m for i, m in enumerate(shorter.encoder.layer) if i != 2])
    with torch.no_grad():
        a = model(input_ids=IDS).last_hidden_state
        b = shorter(input_ids=IDS).last_hidden_state
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert param_count(model) == param_count(shorter)


@pytest.mark.parametrize("kind", ["attn", "mlp"])
def test_drop_norm_mode_equals_zeroed_sublayer_output(kind):
    """mode='norm' = the dense model with the sublayer's projection output forced to zero: h → LN(h)."""
    dense = tiny_bert()
    model = copy.deepcopy(dense)
    before = param_count(model)
    drop_encoder_sublayer(model, 1, kind, mode="norm")
    blk = dense.encoder.layer[1]
    dense_out = blk.attention.output.dense if kind == "attn" else blk.output.dense
    handle = dense_out.register_forward_hook(lambda m, a, o: torch.zeros_like(o))
    try:
        with torch.no_grad():
            ref = dense(input_ids=IDS).last_hidden_state
    finally:
        handle.remove()
    with torch.no_grad():
        got = model(input_ids=IDS).last_hidden_state
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    norm = 2 * dense.config.hidden_size  # the LayerNorm's γ and β stay
    assert param_count(model) == before - _unit_params(dense, 1, kind) + norm


def test_encoder_similarities_match_hidden_states():
    model = tiny_bert()
    sims = encoder_similarities(model, IDS, batch_size=2)
    hs = _hidden(model)
    cos = torch.nn.functional.cosine_similarity
    for layer in range(4):
        blk = model.encoder.layer[layer]
        with torch.no_grad():
            g = blk.attention(hs[layer])[0]
        assert sims.attn[layer] == pytest.approx(float(cos(hs[layer], g, dim=-1).mean()), abs=1e-5)
        assert sims.mlp[layer] == pytest.approx(float(cos(g, hs[layer + 1], dim=-1).mean()), abs=1e-5)
        assert sims.block[layer] == pytest.approx(
            float(cos(hs[layer], hs[layer + 1], dim=-1).mean()), abs=1e-5
        )
    assert sims.tokens == IDS.numel()
    drop_encoder_sublayer(model, 0, "mlp")
    again = encoder_similarities(model, IDS)
    assert again.mlp[0] is None and again.attn[0] is not None


def test_encoder_similarities_ignore_padding():
    model = tiny_bert()
    mask = torch.ones_like(IDS)
    mask[0, 6:] = 0
    padded = IDS.clone()
    padded[0, 6:] = 2
    a = encoder_similarities(model, padded, mask)
    assert a.tokens == int(mask.sum())
    # row 0 alone, unpadded, + rows 1-2: the same token-weighted mean
    s1 = encoder_similarities(model, IDS[:1, :6])
    s2 = encoder_similarities(model, IDS[1:])
    for kind in ("attn", "mlp", "block"):
        for layer in range(4):
            want = (getattr(s1, kind)[layer] * s1.tokens + getattr(s2, kind)[layer] * s2.tokens) / a.tokens
            assert getattr(a, kind)[layer] == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("target,mode", [("attn", "identity"), ("mlp", "identity"), ("joint", "norm")])
def test_drop_encoder_plan_and_replay(target, mode):
    dense = tiny_bert()
    model = copy.deepcopy(dense)
    sims = encoder_similarities(dense, IDS)
    plan = drop_encoder(model, IDS, target=target, n=2, mode=mode)
    kinds = ("attn", "mlp") if target == "joint" else (target,)
    cands = sorted(
        ((getattr(sims, k)[i], i, k) for k in kinds for i in range(4)), key=lambda c: (-c[0], c[1], c[2])
    )
    assert {(d["layer"], d["sublayer"]) for d in plan.dropped_sublayers} == {(i, k) for _, i, k in cands[:2]}
    assert plan.params_after < plan.params_before == param_count(dense)
    assert plan.params_after == param_count(model)
    assert plan.options["mode"] == mode and plan.family == "bert"
    if target != "joint":
        assert plan.name == f"Drop-2{'A' if target == 'attn' else 'M'}"
    with torch.no_grad():
        out = model(input_ids=IDS).last_hidden_state
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, dense(input_ids=IDS).last_hidden_state)
    # the plan is data: JSON round trip, replayed on a fresh dense copy gives the same network
    replay = copy.deepcopy(dense)
    apply_encoder_plan(replay, PrunePlan.from_dict(plan.to_dict()))
    with torch.no_grad():
        torch.testing.assert_close(replay(input_ids=IDS).last_hidden_state, out, rtol=0, atol=0)
    # the pruned encoder still embeds
    emb = TransformerEmbedder(model, tiny_tokenizer(), max_length=16).encode(TEXTS)
    assert emb.shape == (len(TEXTS), 32) and torch.isfinite(emb).all()


@pytest.mark.parametrize("mode", ["identity", "norm"])
def test_pruned_encoder_save_and_reload(mode, tmp_path):
    from prunelens.models.embedder_loading import load_embedder
    from prunelens.prune.save import save_pruned

    model, tok = tiny_bert(), tiny_tokenizer()
    plan = drop_encoder(model, IDS, target="joint", n=3, mode=mode)
    before = TransformerEmbedder(model, tok, max_length=16).encode(TEXTS)
    save_pruned(model, tok, plan, tmp_path / "pruned")
    emb = load_embedder(str(tmp_path / "pruned"), max_length=16)
    assert param_count(emb.model) == plan.params_after
    torch.testing.assert_close(emb.encode(TEXTS), before, rtol=0, atol=1e-6)


def test_drop_encoder_iterative_and_errors():
    model = tiny_bert()
    plan = drop_encoder(model, IDS, target="attn", n=2, iterative=True)
    assert [d["step"] for d in sorted(plan.dropped_sublayers, key=lambda d: d["step"])] == [0, 1]
    with pytest.raises(PruneConfigError):
        drop_encoder(model, IDS, target="attn", n=2)  # only 2 attention units are left
    with pytest.raises(PruneConfigError):
        drop_encoder(tiny_bert(), IDS, target="block", n=1)
    with pytest.raises(ValueError, match="not supported"):
        EncoderAdapter(tiny_model("llama"))


def test_prune_embedder_dispatches_encoder_and_decoder():
    from prunelens.data.calibration import Calibration

    enc = TransformerEmbedder(tiny_bert(), tiny_tokenizer(), max_length=16)
    plan = prune_embedder(enc, IDS, target="attn", n=1, mode="norm")
    assert plan.options["encoder"] and plan.options["mode"] == "norm"
    dec = DecoderEmbedder(tiny_model("llama"), tiny_tokenizer())
    before = dec.encode(TEXTS)
    plan = prune_embedder(dec, Calibration(IDS, "random", 0, IDS.numel()), target="attn", n=2)
    assert plan.name == "Drop-2A" and plan.family == "llama"
    after = dec.encode(TEXTS)
    assert after.shape == before.shape and torch.isfinite(after).all() and not torch.allclose(after, before)


# --------------------------------------------------------------------------------------------------
# End to end on small data


class BagOfWords:
    """A deterministic toy embedder: hashed word counts (lets evaluate_retrieval be checked exactly)."""

    def __init__(self, dim: int = 64):
        self.dim = dim
        self.calls: list[str] = []

    def encode(self, texts, *, kind="document", batch_size=None):
        self.calls.append(kind)
        out = torch.zeros(len(texts), self.dim)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, sum(map(ord, w)) % self.dim] += 1
        return out


def test_evaluate_retrieval_records_and_metrics():
    data = RetrievalData(
        corpus={
            "d1": {"title": "", "text": "red apple fruit"},
            "d2": {"title": "Car", "text": "fast engine"},
            "d3": {"title": "", "text": "green apple pie"},
            "d4": {"title": "", "text": "blue ocean"},
        },
        queries={"q1": "apple fruit", "q2": "engine car", "q3": "nothing relevant"},
        qrels={"q1": {"d1": 2, "d3": 1}, "q2": {"d2": 1}, "q3": {"d4": 0}},
    )
    emb = BagOfWords()
    res = evaluate_retrieval(emb, data, task="toy", k_values=(1, 10, 100))
    assert res.kind == "retrieval" and res.main_metric == "ndcg@10" and res.n == 2
    assert res.metrics["queries_excluded"] == 1 and res.metrics["corpus_size"] == 4
    assert emb.calls == ["document", "query"]
    r1 = {r["id"]: r for r in res.records}["q1"]
    assert r1["top10"][:2] == ["d1", "d3"] and r1["first_relevant_rank"] == 1
    assert r1["ndcg@10"] == pytest.approx(1.0) and r1["recall@100"] == 1.0
    assert r1["relevant"] == {"d1": 2, "d3": 1} and r1["target"] == ["d1", "d3"]
    assert r1["query"] == "apple fruit" and r1["score"] == r1["ndcg@10"]
    assert res.score == pytest.approx(sum(r["ndcg@10"] for r in res.records) / 2)
    assert res.metrics["recall@100"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def boolq_retrieval():
    need_data("boolq/val.jsonl")
    return load_task("boolq_retrieval")


def test_boolq_subset_through_beir_loader(boolq_retrieval, tmp_path):
    full = boolq_retrieval
    sub = subsample(full, n_queries=150, n_distractors=250, seed=0)
    assert len(sub.queries) == 150
    judged = {d for q in sub.qrels for d in sub.qrels[q]}
    assert judged <= set(sub.corpus) and len(sub.corpus) == len(judged) + 250
    assert all(sub.corpus[d] == full.corpus[d] for d in sub.corpus)
    assert subsample(full, 150, 250, seed=0) == sub and subsample(full, 150, 250, seed=1) != sub
    folder = write_beir(sub, tmp_path / "boolq_beir")
    back = load_task("beir", path=folder)
    assert back.queries == sub.queries and back.qrels == sub.qrels
    assert back.corpus == {d: {"title": "", "text": v["text"]} for d, v in sub.corpus.items()}
    # BoolQ as retrieval: each query's single relevant document is its own passage
    assert all(len(r) == 1 and list(r.values()) == [1] for r in back.qrels.values())


def test_minilm_native_loader_matches_sentence_transformers():
    path = need_minilm()
    st_mod = pytest.importorskip("sentence_transformers")
    from prunelens.models.embedder_loading import load_embedder

    emb = load_embedder("all-minilm-l6-v2")
    assert isinstance(emb, TransformerEmbedder) and emb.poolings == ["mean"] and emb.normalize
    assert emb.max_length == 256
    st = st_mod.SentenceTransformer(str(path), device="cpu", local_files_only=True)
    texts = ["is the sky blue during the day", "  Padding and   spaces ", "A longer passage. " * 40]
    ours = emb.encode(texts, batch_size=2)
    ref = st.encode(texts, convert_to_tensor=True).float()
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    # the sentence-transformers backend wraps the same network; pruning its module prunes what it encodes
    wrapped = load_embedder(str(path), backend="sentence-transformers")
    assert isinstance(wrapped, SentenceTransformerEmbedder)
    torch.testing.assert_close(wrapped.encode(texts), ref, rtol=0, atol=1e-6)
    drop_encoder_sublayer(wrapped.model, 0, "attn")
    assert wrapped.st[0].auto_model.encoder.layer[0].attention.__class__ is DroppedEncoderAttention
    assert float(wrapped.encode(texts[:1]) @ ref[0]) < 1 - 1e-4


def test_minilm_encoder_calibration_and_drop():
    need_minilm()
    need_data("c4/c4_demo.json")
    from prunelens.models.embedder_loading import load_embedder

    emb = load_embedder("all-minilm-l6-v2")
    calib = encoder_calibration(emb.tokenizer, "c4", nsamples=4, seqlen=32, seed=0)
    assert calib.input_ids.shape == (4, 32)
    assert (calib.input_ids[:, 0] == emb.tokenizer.cls_token_id).all()
    assert (calib.input_ids[:, -1] == emb.tokenizer.sep_token_id).all()
    assert torch.equal(calib.input_ids, encoder_calibration(emb.tokenizer, "c4", 4, 32, 0).input_ids)
    before = emb.encode(["is the sky blue"])
    plan = drop_encoder(emb.model, calib, target="mlp", n=2)
    assert plan.name == "Drop-2M" and plan.params_after < plan.params_before
    after = emb.encode(["is the sky blue"])
    assert after.shape == before.shape and float(after @ before.T) < 1 - 1e-4
