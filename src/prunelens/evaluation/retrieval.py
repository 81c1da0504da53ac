"""Dense retrieval evaluation: embed corpus and queries, rank by cosine, score nDCG@k / Recall@k / MRR@k.

Usage::

    from prunelens.data.tasks import load_task
    from prunelens.models.embedder_loading import load_embedder
    from prunelens.evaluation.retrieval import evaluate_retrieval, subsample

    data = subsample(load_task("boolq_retrieval"), n_queries=150, n_distractors=250, seed=0)
    result = evaluate_retrieval(load_embedder("all-minilm-l6-v2"), data, task="boolq_retrieval")
    result.metrics["ndcg@10"], result.metrics["recall@100"], result.records[0]

Conventions — those of ``trec_eval`` / ``pytrec_eval``, which BEIR and MTEB call (checked against
``pytrec_eval`` in the tests, and against MTEB end to end in ``tests/test_mteb_agreement.py``):

* ranking: cosine similarity, descending; **ties broken by document id, descending** (string order),
  as trec_eval sorts a run;
* ``nDCG@k = DCG@k / IDCG@k`` with ``DCG@k = Σ_{i≤k} g_i / log2(i + 1)`` and **linear gain**
  ``g = max(rel, 0)`` (trec_eval's ``ndcg_cut``: the qrels value itself, not ``2^rel − 1``); the ideal
  DCG sorts *all* judged documents of the query by gain (whether retrieved or not) and cuts at ``k``;
* ``Recall@k = |{relevant} ∩ top-k| / |{relevant}|``, relevant = ``rel > 0``;
* ``MRR@k = 1 / rank`` of the first relevant document within the top ``k`` (0 if none) — MTEB's
  definition (trec_eval's ``recip_rank`` is uncut);
* queries without any relevant document are excluded (reported as ``queries_excluded``); MTEB drops only
  queries with *no* qrels entry and would score a query whose entries are all ``rel ≤ 0`` as 0;
* a document is read as ``(title + " " + text).strip()`` (``text.strip()`` when the title is empty), as
  MTEB and sentence-transformers' BEIR scripts build it.

:func:`mteb_evaluate` runs MTEB's own retrieval evaluator on a BEIR folder, offline (a local
``AbsTaskRetrieval`` whose ``dataset`` is filled from the files), for any of our embedders or a
``SentenceTransformer``: the agreement check.
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from prunelens.data.tasks import RetrievalData
from prunelens.evaluation.results import TaskResult

__all__ = [
    "DEFAULT_K",
    "dcg",
    "ndcg_at_k",
    "recall_at_k",
    "mrr_at_k",
    "doc_text",
    "cosine_scores",
    "rank_documents",
    "score_rankings",
    "evaluate_retrieval",
    "subsample",
    "mteb_task",
    "mteb_encoder",
    "mteb_evaluate",
]

DEFAULT_K = (1, 10, 100)


# --------------------------------------------------------------------------------------------------
# Metrics (pure)


def dcg(gains: Sequence[float]) -> float:
    """``Σ_i g_i / log2(i + 1)`` over 1-based ranks ``i``."""
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def ndcg_at_k(ranking: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    """nDCG@k of a ranked list of doc ids, linear gain ``max(rel, 0)``, ideal from all of ``qrels``.

    0 when the query has no document with ``rel > 0``.
    """
    ideal = dcg(sorted((max(r, 0) for r in qrels.values()), reverse=True)[:k])
    if ideal <= 0:
        return 0.0
    return dcg([max(qrels.get(d, 0), 0) for d in ranking[:k]]) / ideal


def recall_at_k(ranking: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    """``|relevant ∩ top-k| / |relevant|`` with relevant = ``rel > 0`` (0 when there is none)."""
    relevant = {d for d, r in qrels.items() if r > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def mrr_at_k(ranking: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    """``1 / rank`` of the first document with ``rel > 0`` in the top ``k``; 0 if none."""
    for i, d in enumerate(ranking[:k]):
        if qrels.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def doc_text(doc: Mapping[str, str] | str) -> str:
    """The string a model reads for a corpus entry: ``(title + " " + text).strip()`` or ``text.strip()``."""
    if isinstance(doc, str):
        return doc.strip()
    title, text = doc.get("title") or "", doc.get("text") or ""
    return (title + " " + text).strip() if title else text.strip()


# --------------------------------------------------------------------------------------------------
# Ranking


def cosine_scores(queries: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
    """``(n_q, n_d)`` cosine similarities (float32; both sides L2-normalised first)."""
    return F.normalize(queries.float(), dim=-1) @ F.normalize(docs.float(), dim=-1).T


def rank_documents(
    queries: torch.Tensor, docs: torch.Tensor, doc_ids: Sequence[str], k: int, *, chunk: int = 256
) -> list[list[tuple[str, float]]]:
    """Top ``k`` ``(doc id, cosine)`` per query, by score descending then doc id descending (trec_eval's
    order), exact also for ties at the cut-off. Query chunks of ``chunk`` rows bound the memory.
    """
    doc_ids = list(doc_ids)
    if docs.shape[0] != len(doc_ids):
        raise ValueError(f"{docs.shape[0]} document embeddings for {len(doc_ids)} ids")
    k = min(k, len(doc_ids))
    d = F.normalize(docs.float(), dim=-1)
    out: list[list[tuple[str, float]]] = []
    for s in range(0, queries.shape[0], chunk):
        scores = F.normalize(queries[s : s + chunk].float(), dim=-1) @ d.T
        kth = scores.topk(k, dim=1).values[:, -1:]
        for row, thr in zip(scores, kth):
            cand = (row >= thr).nonzero().flatten().tolist()  # ≥ k entries (more only on ties)
            vals = row[cand].tolist()
            ranked = sorted(
                ((doc_ids[j], v) for j, v in zip(cand, vals)), key=lambda t: (t[1], t[0]), reverse=True
            )
            out.append(ranked[:k])
    return out


def score_rankings(
    rankings: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, int]],
    k_values: Sequence[int] = DEFAULT_K,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Aggregate and per-query ``ndcg@k``, ``recall@k``, ``mrr@k`` for ``k`` in ``k_values``.

    Only queries of ``rankings`` with at least one ``rel > 0`` document in ``qrels`` are scored; the
    aggregate is their mean (plus ``queries`` and ``queries_excluded`` counts).
    """
    per_query: dict[str, dict[str, float]] = {}
    excluded = 0
    for qid, ranking in rankings.items():
        rel = qrels.get(qid, {})
        if not any(r > 0 for r in rel.values()):
            excluded += 1
            continue
        m: dict[str, float] = {}
        for k in k_values:
            m[f"ndcg@{k}"] = ndcg_at_k(ranking, rel, k)
            m[f"recall@{k}"] = recall_at_k(ranking, rel, k)
            m[f"mrr@{k}"] = mrr_at_k(ranking, rel, k)
        per_query[qid] = m
    if not per_query:
        raise ValueError("no query has a relevant document; nothing to score")
    names = list(next(iter(per_query.values())))
    agg = {n: sum(m[n] for m in per_query.values()) / len(per_query) for n in names}
    agg["queries"] = float(len(per_query))
    agg["queries_excluded"] = float(excluded)
    return agg, per_query


# --------------------------------------------------------------------------------------------------
# Evaluation


def evaluate_retrieval(
    embedder,
    data: RetrievalData,
    *,
    task: str = "retrieval",
    k_values: Sequence[int] = DEFAULT_K,
    batch_size: int | None = None,
    records: bool = True,
    record_top: int = 10,
) -> TaskResult:
    """Encode ``data``'s corpus (documents) and queries with ``embedder``, rank by cosine, score.

    ``embedder``: a :class:`prunelens.models.embedders.Embedder` (anything with
    ``encode(texts, kind=..., batch_size=...)``). Only queries with at least one relevant document are
    encoded. The main metric is ``ndcg@10`` (``k_values`` must contain 10). Records, one per query:
    ``id``, ``query``, ``top10`` (doc ids; ``top{record_top}``), ``top10_scores``, ``relevant``
    (``{doc id: rel}``), ``first_relevant_rank`` (1-based within the top ``max(k_values)``, else None),
    every per-query metric, and the common ``prompt``/``target``/``prediction``/``score`` fields.
    """
    if 10 not in k_values:
        raise ValueError("k_values must include 10 (the main metric is ndcg@10)")
    t0 = time.perf_counter()
    qids = [q for q in data.queries if any(r > 0 for r in data.qrels.get(q, {}).values())]
    if not qids:
        raise ValueError("no query has a relevant document in the qrels")
    doc_ids = list(data.corpus)
    kw = {} if batch_size is None else {"batch_size": batch_size}
    t_enc = time.perf_counter()
    d_emb = embedder.encode([doc_text(data.corpus[d]) for d in doc_ids], kind="document", **kw)
    q_emb = embedder.encode([data.queries[q] for q in qids], kind="query", **kw)
    t_enc = time.perf_counter() - t_enc
    kmax = max(k_values)
    ranked = rank_documents(q_emb, d_emb, doc_ids, kmax)
    rankings = {q: [d for d, _ in r] for q, r in zip(qids, ranked)}
    agg, per_query = score_rankings(rankings, data.qrels, k_values)
    agg["queries_excluded"] = float(len(data.queries) - len(qids))
    agg["corpus_size"] = float(len(doc_ids))
    recs: list[dict[str, Any]] = []
    if records:
        for q, r in zip(qids, ranked):
            rel = dict(data.qrels[q])
            top = [d for d, _ in r[:record_top]]
            first = next((i + 1 for i, (d, _) in enumerate(r) if rel.get(d, 0) > 0), None)
            recs.append(
                {
                    "id": q,
                    "query": data.queries[q],
                    f"top{record_top}": top,
                    f"top{record_top}_scores": [v for _, v in r[:record_top]],
                    "relevant": rel,
                    "first_relevant_rank": first,
                    **per_query[q],
                    "prompt": data.queries[q],
                    "target": [d for d, v in rel.items() if v > 0],
                    "prediction": top,
                    "score": per_query[q]["ndcg@10"],
                }
            )
    describe = getattr(embedder, "describe", None)
    config = {
        **(describe() if callable(describe) else {}),
        "k_values": list(k_values),
        "encode_seconds": round(t_enc, 3),
        "tie_break": "score desc, doc id desc (trec_eval)",
    }
    return TaskResult(
        task=task,
        kind="retrieval",
        main_metric="ndcg@10",
        metrics=agg,
        records=recs,
        n=len(qids),
        seconds=time.perf_counter() - t0,
        config=config,
    )


def subsample(
    data: RetrievalData, n_queries: int | None, n_distractors: int | None = None, *, seed: int = 0
) -> RetrievalData:
    """A smaller retrieval set: ``n_queries`` queries (with a relevant doc; seeded, in original order),
    every document judged for them, plus ``n_distractors`` other documents (seeded; ``None`` = all).

    ``load_task(..., limit=N)`` keeps the whole corpus; this also shrinks the corpus, for quick runs.
    """
    qids = [q for q in data.queries if any(r > 0 for r in data.qrels.get(q, {}).values())]
    if n_queries is not None and n_queries < len(qids):
        pick = set(random.Random(seed).sample(range(len(qids)), n_queries))
        qids = [q for i, q in enumerate(qids) if i in pick]
    judged = {d for q in qids for d in data.qrels[q] if d in data.corpus}
    others = [d for d in data.corpus if d not in judged]
    if n_distractors is not None and n_distractors < len(others):
        pick = set(random.Random(seed + 1).sample(range(len(others)), n_distractors))
        others = [d for i, d in enumerate(others) if i in pick]
    keep = judged | set(others)
    return RetrievalData(
        corpus={d: data.corpus[d] for d in data.corpus if d in keep},
        queries={q: data.queries[q] for q in qids},
        qrels={q: dict(data.qrels[q]) for q in qids},
    )


# --------------------------------------------------------------------------------------------------
# MTEB bridge (optional dependency: pip install mteb)


def _read_beir_for_mteb(folder: Path, split: str):
    """BEIR files → MTEB's split data (``datasets.Dataset`` corpus/queries, dict qrels), read directly
    (not through prunelens' loader, so the agreement check does not share that code)."""
    from datasets import Dataset

    def jsonl(p: Path) -> list[dict]:
        with open(p, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    corpus = [
        {"id": str(r["_id"]), "title": r.get("title") or "", "text": r.get("text") or ""}
        for r in jsonl(folder / "corpus.jsonl")
    ]
    qrels: dict[str, dict[str, int]] = {}
    with open(folder / "qrels" / f"{split}.tsv", encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)  # header
        for qid, did, score in reader:
            qrels.setdefault(qid, {})[did] = int(score)
    queries = [
        {"id": str(r["_id"]), "text": r["text"]}
        for r in jsonl(folder / "queries.jsonl")
        if str(r["_id"]) in qrels
    ]
    return {
        "corpus": Dataset.from_list(corpus),
        "queries": Dataset.from_list(queries),
        "relevant_docs": qrels,
        "top_ranked": None,
    }


def mteb_task(folder: str | Path, *, split: str = "test", name: str = "PrunelensBEIR"):
    """An MTEB ``AbsTaskRetrieval`` over a local BEIR folder (offline: ``dataset`` filled from the files,
    ``data_loaded`` set; no hub access)."""
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.task_metadata import TaskMetadata

    folder = Path(folder)
    metadata = TaskMetadata(
        name=name,
        dataset={"path": str(folder), "revision": "local"},
        description=f"Local BEIR folder {folder} (prunelens)",
        reference=None,
        type="Retrieval",
        category="t2t",
        modalities=["text"],
        eval_splits=[split],
        eval_langs=["eng-Latn"],
        main_score="ndcg_at_10",
        date=None,
        domains=None,
        task_subtypes=None,
        license=None,
        annotations_creators=None,
        dialect=None,
        sample_creation=None,
        bibtex_citation=None,
    )

    class LocalBEIRTask(AbsTaskRetrieval):
        def load_data(self, num_proc=None, **kwargs):  # noqa: ARG002 - MTEB's signature
            if self.data_loaded:
                return
            self.dataset = {"default": {split: _read_beir_for_mteb(folder, split)}}
            self.data_loaded = True

    LocalBEIRTask.metadata = metadata
    task = LocalBEIRTask()
    task.load_data()
    return task


def mteb_encoder(embedder, name: str = "prunelens/embedder"):
    """Wrap a prunelens :class:`~prunelens.models.embedders.Embedder` as an MTEB encoder (``AbsEncoder``
    with a ``mteb_model_meta``; cosine similarity; queries encoded with ``kind="query"``)."""
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta, ScoringFunction
    from mteb.types import PromptType

    class PrunelensEncoder(AbsEncoder):
        def __init__(self, emb):
            self.embedder = emb
            self.mteb_model_meta = ModelMeta.create_empty(
                overwrites=dict(
                    name=name,
                    revision="local",
                    similarity_fn_name=ScoringFunction.COSINE,
                    framework=["PyTorch"],
                )
            )

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
            texts = [t for batch in inputs for t in batch["text"]]
            kind = "query" if prompt_type == PromptType.query else "document"
            bs = kwargs.get("batch_size")
            return self.embedder.encode(texts, kind=kind, **({"batch_size": bs} if bs else {})).numpy()

    return PrunelensEncoder(embedder)


def mteb_evaluate(model, folder: str | Path, *, split: str = "test", batch_size: int = 32) -> dict[str, Any]:
    """MTEB's retrieval scores (``ndcg_at_10``, ``recall_at_100``, ``mrr_at_10``, ...) on a BEIR folder.

    ``model``: a prunelens embedder (wrapped by :func:`mteb_encoder`), a ``SentenceTransformer`` (wrapped
    by MTEB's own ``SentenceTransformerEncoderWrapper``), or any MTEB encoder.
    """
    import mteb  # noqa: F401 - fail early with a clear ImportError
    from mteb.models.abs_encoder import AbsEncoder

    if not isinstance(model, AbsEncoder):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:  # pragma: no cover
            SentenceTransformer = ()  # type: ignore[assignment]
        if SentenceTransformer and isinstance(model, SentenceTransformer):
            from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper

            model = SentenceTransformerEncoderWrapper(model)
        else:
            model = mteb_encoder(model)
    task = mteb_task(folder, split=split)
    scores = task.evaluate(model, split, encode_kwargs={"batch_size": batch_size})
    return dict(scores["default"])
