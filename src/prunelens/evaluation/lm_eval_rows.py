"""The published local benchmark files, read into the field layout of the hub datasets that
lm-evaluation-harness's built-in tasks read (``rows_<task>(path) -> list[dict]``).

:mod:`prunelens.evaluation.lm_eval_bridge` writes these rows as JSON Lines beside task YAMLs that include
lm-eval's own task, so lm-eval's prompts run on prunelens's data. Field layout only: no templating.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from prunelens.data.tasks import ai2_question


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _read_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _labels_beside(path: Path) -> Path:
    return path.with_name(f"{path.name.split('.')[0]}-labels.lst")


def _ai2_row(r: dict, stem_field: str) -> dict:
    """An AI2 record (``question: {stem, choices: [{text, label}]}``) in the hub layout, the stem under
    ``stem_field``."""
    stem, texts, labels = ai2_question(r["question"])
    return {
        "id": r.get("id"),
        stem_field: stem,
        "choices": {"text": texts, "label": labels},
        "answerKey": r["answerKey"],
    }


def rows_arc(path: Path) -> list[dict]:
    # AI2 layout {"id", "question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}
    # -> allenai/ai2_arc {"id", "question", "choices": {"text": [...], "label": [...]}, "answerKey"}
    out = []
    for r in _read_jsonl(path):
        if isinstance(r["question"], dict):
            r = _ai2_row(r, "question")
        out.append(r)
    return out


def _bool01(v: Any) -> int:
    if isinstance(v, str):
        return int(v.strip().lower() == "true")
    return int(bool(v))


def rows_boolq(path: Path) -> list[dict]:
    # SuperGLUE {"question", "passage", "idx", "label": bool | "true"/"false"}
    # -> aps/super_glue boolq (label 0/1)
    return [
        {
            "question": r["question"],
            "passage": r["passage"],
            "idx": r.get("idx", i),
            "label": _bool01(r["label"] if "label" in r else r["answer"]),
        }
        for i, r in enumerate(_read_jsonl(path))
    ]


def rows_rte(path: Path) -> list[dict]:
    # SuperGLUE {"premise", "hypothesis", "label": "entailment"|"not_entailment"|0|1} -> label 0 = entailment
    out = []
    for i, r in enumerate(_read_jsonl(path)):
        lab = r["label"]
        lab = {"entailment": 0, "not_entailment": 1}[lab] if isinstance(lab, str) else int(lab)
        out.append(
            {"premise": r["premise"], "hypothesis": r["hypothesis"], "idx": r.get("idx", i), "label": lab}
        )
    return out


def rows_piqa(path: Path) -> list[dict]:
    # authors' release: {"goal", "sol1", "sol2"} + parallel valid-labels.lst -> baber/piqa (label 0/1)
    rows = _read_jsonl(path)
    if not all("label" in r for r in rows):
        labels = _read_lines(_labels_beside(path))
        if len(labels) != len(rows):
            raise ValueError(f"piqa: {len(rows)} rows in {path} but {len(labels)} labels")
        rows = [dict(r, label=lb) for r, lb in zip(rows, labels)]
    return [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(r["label"])} for r in rows]


_OBQA_CHOICE = re.compile(r"\(([A-Z])\)\s")


def rows_openbookqa(path: Path) -> list[dict]:
    # release TSV (ID, Question Stem, Choices "(A) .. (B) ..", Answer Key) or JSONL -> allenai/openbookqa main
    if path.suffix != ".tsv":
        out = []
        for r in _read_jsonl(path):
            if "question_stem" not in r:
                r = _ai2_row(r, "question_stem")
            out.append(r)
        return out
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        for rec in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            parts = _OBQA_CHOICE.split(rec["Choices"])
            out.append(
                {
                    "id": rec["ID"],
                    "question_stem": rec["Question Stem"],
                    "choices": {"text": [t.strip() for t in parts[2::2]], "label": parts[1::2]},
                    "answerKey": rec["Answer Key"],
                }
            )
    return out


def rows_winogrande(path: Path) -> list[dict]:
    # HF save_to_disk Arrow stream, official JSONL, or parquet -> allenai/winogrande (answer "1"/"2")
    name = path.name.lower()
    if name.endswith((".arrow", ".parquet")):
        import pyarrow as pa
        import pyarrow.ipc
        import pyarrow.parquet

        if name.endswith(".parquet"):
            rows = pa.parquet.read_table(path).to_pylist()
        else:
            data = path.read_bytes()
            try:
                rows = pa.ipc.open_stream(pa.BufferReader(data)).read_all().to_pylist()
            except pa.ArrowInvalid:
                rows = pa.ipc.open_file(pa.BufferReader(data)).read_all().to_pylist()
    else:
        rows = _read_jsonl(path)
    if not all(str(r.get("answer", "")).strip() in ("1", "2") for r in rows):
        lab = _labels_beside(path)
        if lab.exists():
            rows = [dict(r, answer=lb) for r, lb in zip(rows, _read_lines(lab))]
    return [
        {
            "sentence": r["sentence"],
            "option1": r["option1"],
            "option2": r["option2"],
            "answer": str(r["answer"]).strip(),
        }
        for r in rows
    ]


def rows_hellaswag(path: Path) -> list[dict]:
    # official JSONL already has the hub's fields (ind, activity_label, ctx_a, ctx_b, ctx, endings, label)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        rows = _read_jsonl(path)
    keep = ("ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id", "split", "split_type")
    return [{**{k: r[k] for k in keep if k in r}, "label": str(r["label"])} for r in rows]
