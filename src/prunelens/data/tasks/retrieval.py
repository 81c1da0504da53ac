"""Retrieval tasks: any BEIR-layout folder (SciFact, NFCorpus ...), and BoolQ as a retrieval set.

Each returns a :class:`RetrievalData` (corpus, queries, qrels); :func:`write_beir` writes one back in the
BEIR layout.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from prunelens.data.paths import DataNotFoundError
from prunelens.data.tasks.multiple_choice import boolq_files, convert_boolq
from prunelens.data.tasks.readers import read_jsonl, read_records
from prunelens.data.tasks.records import MCExample, RetrievalData
from prunelens.data.tasks.spec import TaskSpec, hub_dataset, load_task, make_loader, register

__all__ = ["boolq_as_retrieval", "write_beir", "load_beir"]


def _beir_files(split: str) -> list[str]:
    return ["corpus.jsonl"]  # marks the dataset folder


def _read_beir(path: Path, split: str) -> RetrievalData:
    """BEIR layout: corpus.jsonl {_id,title,text}, queries.jsonl {_id,text}, qrels/{split}.tsv.

    As BEIR's GenericDataLoader does, only queries that have qrels in ``split`` are kept.
    """
    folder = path.parent if path.is_file() else path
    need = [folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / f"{split}.tsv"]
    missing = [p for p in need if not p.exists()]
    if missing:
        raise DataNotFoundError(
            "BEIR data set incomplete; missing:\n  "
            + "\n  ".join(map(str, missing))
            + "\nExpected the BEIR layout: corpus.jsonl, queries.jsonl, qrels/<split>.tsv"
        )
    corpus = {
        str(r["_id"]): {"title": r.get("title") or "", "text": r.get("text") or ""}
        for r in read_jsonl(need[0])
    }
    all_queries = {str(r["_id"]): r["text"] for r in read_jsonl(need[1])}
    qrels: dict[str, dict[str, int]] = {}
    with open(need[2], encoding="utf-8", newline="") as f:
        for n, rec in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not rec or (n == 1 and rec[0].strip().lower() in ("query-id", "query_id", "qid")):
                continue
            if len(rec) == 3:
                qid, did, score = rec
            elif len(rec) == 4:  # TREC style: qid iter docid rel
                qid, _, did, score = rec
            else:
                raise ValueError(f"{need[2]}:{n}: expected 3 tab-separated columns, got {rec!r}")
            qrels.setdefault(qid.strip(), {})[did.strip()] = int(float(score))
    queries = {q: t for q, t in all_queries.items() if q in qrels}
    lost = set(qrels) - set(queries)
    if lost:
        raise ValueError(
            f"{need[2]}: {len(lost)} query ids have qrels but no query text, e.g. {sorted(lost)[:3]}"
        )
    return RetrievalData(corpus=corpus, queries=queries, qrels=qrels)


def write_beir(data: RetrievalData, folder: str | os.PathLike, split: str = "test") -> Path:
    """Write ``data`` in BEIR layout (corpus.jsonl, queries.jsonl, qrels/{split}.tsv); return the folder."""
    folder = Path(folder)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    bad = re.compile(r"[\t\r\n]")
    for i in list(data.queries) + list(data.corpus):
        if bad.search(i):
            raise ValueError(f"id {i!r} contains a tab or newline, which BEIR qrels cannot hold")
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as f:
        for did, doc in data.corpus.items():
            rec = {"_id": did, "title": doc.get("title", ""), "text": doc.get("text", "")}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as f:
        for qid, text in data.queries.items():
            f.write(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n")
    with open(folder / "qrels" / f"{split}.tsv", "w", encoding="utf-8", newline="") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for qid, rel in data.qrels.items():
            for did, score in rel.items():
                f.write(f"{qid}\t{did}\t{int(score)}\n")
    return folder


def boolq_as_retrieval(
    source: str | os.PathLike | Iterable[MCExample | Mapping[str, Any]] | None = None,
    split: str = "validation",
) -> RetrievalData:
    """A BEIR-style retrieval set built from BoolQ: query = question, corpus = de-duplicated passages
    (exact text; ids ``d0, d1, ...`` in first-appearance order, empty title), relevant = its own passage
    (score 1). Query ids are ``q<idx>``.

    ``source``: BoolQ examples (:class:`MCExample` from :func:`load_boolq`, or dicts with ``question``,
    ``passage`` and optionally ``idx``), a path to a BoolQ file/folder, or None for the local default.
    """
    if source is None or isinstance(source, (str, os.PathLike)):
        items: list[Any] = load_task("boolq", path=source, split=split, source="local")
    else:
        items = list(source)
    corpus: dict[str, dict[str, str]] = {}
    doc_of: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for i, it in enumerate(items):
        if isinstance(it, MCExample):
            q, p, key = it.meta["question"], it.meta["passage"], it.id
        else:
            q, p, key = it["question"], it["passage"], it.get("idx", i)
        qid = f"q{key}"
        if qid in queries:
            raise ValueError(f"duplicate BoolQ id {key!r}")
        if p not in doc_of:
            doc_of[p] = f"d{len(doc_of)}"
            corpus[doc_of[p]] = {"title": "", "text": p}
        queries[qid] = q
        qrels[qid] = {doc_of[p]: 1}
    return RetrievalData(corpus=corpus, queries=queries, qrels=qrels)


def _boolq_retrieval_local(path: Path, split: str) -> RetrievalData:
    return boolq_as_retrieval(convert_boolq(read_records(path), split))


def _hub_beir(spec: TaskSpec, split: str, hub_id: str) -> RetrievalData:
    corpus_ds = hub_dataset(hub_id, "corpus", "corpus")
    query_ds = hub_dataset(hub_id, "queries", "queries")
    qrel_ds = hub_dataset(f"{hub_id}-qrels", None, spec.hub_splits.get(split, split))
    qrels: dict[str, dict[str, int]] = {}
    for r in qrel_ds:
        qrels.setdefault(str(r["query-id"]), {})[str(r["corpus-id"])] = int(r["score"])
    corpus = {str(r["_id"]): {"title": r.get("title") or "", "text": r.get("text") or ""} for r in corpus_ds}
    queries = {str(r["_id"]): r["text"] for r in query_ds if str(r["_id"]) in qrels}
    return RetrievalData(corpus=corpus, queries=queries, qrels=qrels)


def _hub_boolq_retrieval(spec: TaskSpec, split: str, hub_id: str) -> RetrievalData:
    rows = hub_dataset(hub_id, spec.hub_config, split)
    return boolq_as_retrieval(convert_boolq(rows, split))


# --------------------------------------------------------------------------------------------------
# Specs

_BEIR_SPLITS = ("test", "dev", "train")

# fmt: off
register(
    TaskSpec("beir", "retrieval", ("beir",), _beir_files, _read_beir, "test", _BEIR_SPLITS,
             aliases={}, marker_parent=True, description="any BEIR-layout folder (pass path=)"),
    TaskSpec("scifact", "retrieval", ("beir/scifact", "scifact"), _beir_files, _read_beir, "test",
             ("test", "train"), hub_id="BeIR/scifact", hub_loader=_hub_beir, aliases={},
             marker_parent=True, description="BEIR SciFact"),
    TaskSpec("nfcorpus", "retrieval", ("beir/nfcorpus", "nfcorpus"), _beir_files, _read_beir, "test",
             _BEIR_SPLITS, hub_id="BeIR/nfcorpus", hub_loader=_hub_beir, aliases={},
             marker_parent=True, description="BEIR NFCorpus"),
    TaskSpec("boolq_retrieval", "retrieval", ("boolq",), boolq_files, _boolq_retrieval_local,
             "validation", ("train", "validation", "test"), hub_id="aps/super_glue", hub_config="boolq",
             hub_loader=_hub_boolq_retrieval,
             description="BoolQ questions retrieving their own passage (BEIR-style)"),
)
# fmt: on

load_beir = make_loader("beir")
