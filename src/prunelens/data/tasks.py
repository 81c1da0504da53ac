"""Task data loaders: real benchmark files in their published formats, as uniform records.

Every task reads its data from

* an explicit ``path`` (a file in the published format, or a folder holding it), or
* a local copy found under a data root (see :mod:`prunelens.data.paths`), in a folder named as in
  the project's shared data (``arc/``, ``boolq/``, ``mmlu_prerelease/`` ...), or
* the Hugging Face hub, by dataset id, through ``datasets.load_dataset`` (imported lazily; ``datasets``
  is an optional dependency: ``pip install 'prunelens[hub]'``).

``load_task(name, ...)`` tries local data first and falls back to the hub (``source="auto"``);
``source="local"`` or ``source="hub"`` pins one. A task whose data is missing raises
:class:`~prunelens.data.paths.DataNotFoundError`, whose message lists every path looked at and how to
provide the data.

Records
-------
* :class:`MCExample` - multiple choice, already in log-likelihood scoring form: the model scores each
  continuation ``choices[i]`` after ``contexts[i]`` if ``contexts`` is set (WinoGrande partial
  evaluation), otherwise after the shared ``context``. ``label`` is the index of the correct choice.
  Templates follow lm-evaluation-harness (``lm_eval/tasks/<task>/*.yaml``): the continuation carries the
  harness's default target delimiter, a leading space.
* :class:`GenExample` - generation tasks (prompt, reference target, extra fields in ``meta``).
* :class:`RetrievalData` - BEIR-style corpus / queries / qrels.
* Perplexity tasks return text: WikiText-2 as one string (``"\\n\\n".join`` of the rows, exactly as
  the Hugging Face ``wikitext`` builder yields them - the standard SparseGPT/Wanda evaluation), C4 as a
  list of documents.

``limit=N`` selects a deterministic, seeded subset: ``random.Random(seed).sample`` of the record
indices, sorted back into file order (for retrieval sets: a subset of the queries; the corpus is kept).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from prunelens.data.paths import DataNotFoundError, find_data_file

__all__ = [
    "MCExample",
    "GenExample",
    "RetrievalData",
    "TaskSpec",
    "TASKS",
    "HubUnavailableError",
    "load_task",
    "resolve_task_path",
    "select_subset",
    "boolq_as_retrieval",
    "write_beir",
    "read_wikitext_rows",
    "hellaswag_preprocess",
    "load_arc_easy",
    "load_arc_challenge",
    "load_boolq",
    "load_hellaswag",
    "load_openbookqa",
    "load_piqa",
    "load_winogrande",
    "load_mmlu",
    "load_rte",
    "load_gsm8k",
    "load_nq_open",
    "load_humaneval",
    "load_mbpp",
    "load_beir",
    "load_wikitext2",
    "load_c4",
]


# --------------------------------------------------------------------------------------------------
# Record types


@dataclass
class MCExample:
    """A multiple-choice item in log-likelihood scoring form.

    Score continuation ``choices[i]`` given ``contexts[i]`` when ``contexts`` is not None, else given
    ``context``; the prediction is the argmax, ``label`` the correct index. :meth:`pairs` does this.
    """

    id: str
    context: str
    choices: list[str]
    label: int
    task: str
    meta: dict = field(default_factory=dict)
    contexts: list[str] | None = None

    def __post_init__(self) -> None:
        if not self.choices:
            raise ValueError(f"{self.task}/{self.id}: no choices")
        if not 0 <= self.label < len(self.choices):
            raise ValueError(
                f"{self.task}/{self.id}: label {self.label} out of range for {len(self.choices)} choices"
            )
        if self.contexts is not None and len(self.contexts) != len(self.choices):
            raise ValueError(
                f"{self.task}/{self.id}: {len(self.contexts)} contexts for {len(self.choices)} choices"
            )

    def pairs(self) -> list[tuple[str, str]]:
        """``(context, continuation)`` per choice, the requests a log-likelihood scorer evaluates."""
        ctxs = self.contexts if self.contexts is not None else [self.context] * len(self.choices)
        return list(zip(ctxs, self.choices))


@dataclass
class GenExample:
    """A generation item: ``prompt`` to complete, reference ``target`` (a string, or a list of accepted
    answers)."""

    id: str
    prompt: str
    target: str | list[str]
    task: str
    meta: dict = field(default_factory=dict)


@dataclass
class RetrievalData:
    """A BEIR-style retrieval set.

    ``corpus``: doc id -> ``{"title": str, "text": str}``; ``queries``: query id -> text;
    ``qrels``: query id -> {doc id: relevance (int)}.
    """

    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


class HubUnavailableError(DataNotFoundError):
    """The hub could not be used: ``datasets`` not installed, offline mode, or the download failed."""


# --------------------------------------------------------------------------------------------------
# Small helpers


def select_subset(items: Sequence[Any], limit: int | None, seed: int = 0) -> list[Any]:
    """Deterministic seeded subset: ``sorted(random.Random(seed).sample(range(n), limit))``, in file order.

    ``limit=None`` or ``limit >= len(items)`` returns every item.
    """
    items = list(items)
    if limit is None:
        return items
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if limit >= len(items):
        return items
    idx = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in idx]


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with _open_text(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON Lines ({e})") from e
    return rows


def _read_json_any(path: Path) -> list[dict]:
    """A JSON array (optionally ``{"data": [...]}``) or JSON Lines, plain or gzipped."""
    with _open_text(path) as f:
        text = f.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        return json.loads(stripped)
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except json.JSONDecodeError:  # JSON Lines
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        if isinstance(obj, dict) and isinstance(obj.get("data"), list):
            return obj["data"]
        return [obj]
    return []


def _pyarrow():
    try:
        import pyarrow  # noqa: F401
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError as e:  # pragma: no cover - pyarrow is present wherever pandas is
        raise ImportError("reading .parquet/.arrow task files needs pyarrow (pip install pyarrow)") from e
    import pyarrow as pa

    return pa


def _read_table(path: Path) -> list[dict]:
    """Parquet, or an Arrow IPC stream/file (what ``datasets.save_to_disk`` writes), as row dicts."""
    pa = _pyarrow()
    if path.suffix == ".parquet":
        return pa.parquet.read_table(path).to_pylist()
    with open(path, "rb") as f:
        data = f.read()
    try:
        table = pa.ipc.open_stream(pa.BufferReader(data)).read_all()
    except pa.ArrowInvalid:
        table = pa.ipc.open_file(pa.BufferReader(data)).read_all()
    return table.to_pylist()


def _read_records(path: Path) -> list[dict]:
    """Rows of a record file by extension: .jsonl(.gz), .json(.gz), .parquet, .arrow."""
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        return _read_jsonl(path)
    if name.endswith((".json", ".json.gz")):
        return _read_json_any(path)
    if name.endswith((".parquet", ".arrow")):
        return _read_table(path)
    raise ValueError(f"{path}: unsupported file type (expected .jsonl, .json, .parquet or .arrow)")


def _hf_parquet(split: str) -> list[str]:
    """Common Hugging Face parquet shard names for ``split``."""
    return [f"{split}-00000-of-00001.parquet", f"data/{split}-00000-of-00001.parquet"]


# --------------------------------------------------------------------------------------------------
# Multiple choice: ARC, BoolQ, RTE, PIQA, OpenBookQA, HellaSwag, WinoGrande, MMLU


def _mc_index(key: Any, labels: Sequence[str], where: str) -> int:
    key = str(key).strip()
    if key not in labels:
        raise ValueError(f"{where}: answer key {key!r} not among choice labels {list(labels)}")
    return list(labels).index(key)


def _arc_files(variant: str) -> Callable[[str], list[str]]:
    cap = {"train": "Train", "validation": "Dev", "test": "Test"}

    def files(split: str) -> list[str]:
        c = cap[split]
        return [
            f"{variant}-{c}.jsonl",
            f"{variant}/{variant}-{c}.jsonl",
            f"ARC-V1-Feb2018-2/{variant}/{variant}-{c}.jsonl",
            f"{variant}/{split}-00000-of-00001.parquet",
        ]

    return files


def ai2_question(q: dict) -> tuple[str, list[str], list[str]]:
    """``(stem, choice texts, choice labels)`` of a question in AI2's own layout (ARC, OpenBookQA):
    ``{"stem", "choices": [{"text", "label"}, ...]}``."""
    return q["stem"], [c["text"] for c in q["choices"]], [c["label"] for c in q["choices"]]


def _convert_arc(task: str) -> Callable[[Iterable[dict], str], list[MCExample]]:
    # lm-eval arc_easy.yaml / arc_challenge.yaml: "Question: {{question}}\nAnswer:", choices choices.text.
    def convert(rows: Iterable[dict], split: str) -> list[MCExample]:
        out = []
        for i, r in enumerate(rows):
            q = r["question"]
            if isinstance(q, dict):  # original AI2 layout
                stem, texts, labels = ai2_question(q)
            else:  # Hugging Face allenai/ai2_arc layout
                stem = q
                texts, labels = list(r["choices"]["text"]), list(r["choices"]["label"])
            rid = str(r.get("id", f"{split}-{i}"))
            out.append(
                MCExample(
                    id=rid,
                    context=f"Question: {stem}\nAnswer:",
                    choices=[" " + t for t in texts],
                    label=_mc_index(r["answerKey"], labels, f"{task}/{rid}"),
                    task=task,
                    meta={"question": stem, "choice_labels": labels, "answer_key": r["answerKey"]},
                )
            )
        return out

    return convert


def _bool_label(v: Any, where: str) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    raise ValueError(f"{where}: cannot read boolean label {v!r}")


_SUPERGLUE_NAMES = {
    "validation": ["val.jsonl", "dev.jsonl"],
    "train": ["train.jsonl"],
    "test": ["test.jsonl"],
}


def _boolq_files(split: str) -> list[str]:
    return _SUPERGLUE_NAMES[split] + _hf_parquet(split)


def _convert_boolq(rows: Iterable[dict], split: str) -> list[MCExample]:
    # lm-eval super_glue/boolq/default.yaml: "{{passage}}\nQuestion: {{question}}?\nAnswer:", ["no", "yes"].
    # Label: SuperGLUE "label" (bool, 0/1, or the strings "true"/"false" of the OpenCompass copy) or the
    # original Google release's "answer" (bool).
    out = []
    for i, r in enumerate(rows):
        rid = str(r.get("idx", f"{split}-{i}"))
        raw = r["label"] if "label" in r else r.get("answer")
        if raw is None or raw == -1:
            raise ValueError(f"boolq/{rid}: no label (the {split} split may be unlabeled)")
        out.append(
            MCExample(
                id=rid,
                context=f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:",
                choices=[" no", " yes"],
                label=int(_bool_label(raw, f"boolq/{rid}")),
                task="boolq",
                meta={"question": r["question"], "passage": r["passage"], "idx": r.get("idx")},
            )
        )
    return out


def _rte_files(split: str) -> list[str]:
    return _SUPERGLUE_NAMES[split] + _hf_parquet(split)


_RTE_LABELS = {"entailment": 0, "not_entailment": 1}


def _convert_rte(rows: Iterable[dict], split: str) -> list[MCExample]:
    # lm-eval super_glue/rte/default.yaml: "{{premise}}\nQuestion: {{hypothesis}} True or False?\nAnswer:",
    # choices ['True', 'False'], target = label where 0 = entailment (HF super_glue ClassLabel order).
    out = []
    for i, r in enumerate(rows):
        rid = str(r.get("idx", f"{split}-{i}"))
        raw = r.get("label")
        if isinstance(raw, str):
            if raw not in _RTE_LABELS:
                raise ValueError(f"rte/{rid}: unknown label {raw!r}")
            label = _RTE_LABELS[raw]
        elif raw in (0, 1):
            label = int(raw)
        else:
            raise ValueError(f"rte/{rid}: no usable label ({raw!r}; the {split} split may be unlabeled)")
        out.append(
            MCExample(
                id=rid,
                context=f"{r['premise']}\nQuestion: {r['hypothesis']} True or False?\nAnswer:",
                choices=[" True", " False"],
                label=label,
                task="rte",
                meta={"premise": r["premise"], "hypothesis": r["hypothesis"], "entailment": label == 0},
            )
        )
    return out


def _piqa_files(split: str) -> list[str]:
    official = {"validation": "valid.jsonl", "train": "train.jsonl", "test": "tests.jsonl"}[split]
    return [official] + _hf_parquet(split)


def _read_piqa(path: Path, split: str) -> list[dict]:
    rows = _read_records(path)
    if rows and all("label" in r for r in rows):
        return rows
    # Authors' release: labels in a parallel "<name>-labels.lst" (one 0/1 per line).
    stem = path.name.split(".")[0]
    lab = path.with_name(f"{stem}-labels.lst")
    if not lab.exists():
        raise DataNotFoundError(
            f"piqa: {path} has no 'label' field and the labels file {lab} is missing "
            "(the authors' release ships labels in a parallel '-labels.lst' file; "
            "the test split is unlabeled)"
        )
    labels = [ln.strip() for ln in lab.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(labels) != len(rows):
        raise ValueError(f"piqa: {len(rows)} records in {path} but {len(labels)} labels in {lab}")
    return [dict(r, label=int(lb)) for r, lb in zip(rows, labels)]


def _convert_piqa(rows: Iterable[dict], split: str) -> list[MCExample]:
    # lm-eval piqa.yaml: "Question: {{goal}}\nAnswer:", choices [sol1, sol2].
    out = []
    for i, r in enumerate(rows):
        rid = str(r.get("id", f"{split}-{i}"))
        if r.get("label") not in (0, 1, "0", "1"):
            raise ValueError(f"piqa/{rid}: no usable label ({r.get('label')!r})")
        out.append(
            MCExample(
                id=rid,
                context=f"Question: {r['goal']}\nAnswer:",
                choices=[" " + r["sol1"], " " + r["sol2"]],
                label=int(r["label"]),
                task="piqa",
                meta={"goal": r["goal"]},
            )
        )
    return out


def _obqa_files(split: str) -> list[str]:
    base = {"validation": "dev", "test": "test", "train": "train"}[split]
    return [
        f"{base}.tsv",
        f"Main/{base}.tsv",
        f"{base}.jsonl",
        f"Main/{base}.jsonl",
        f"main/{split}-00000-of-00001.parquet",
    ]


_OBQA_CHOICE = re.compile(r"\(([A-Z])\)\s")


def _read_obqa(path: Path, split: str) -> list[dict]:
    if not path.name.endswith(".tsv"):
        return _read_records(path)
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for n, rec in enumerate(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 2):
            parts = _OBQA_CHOICE.split(rec["Choices"])
            letters, texts = parts[1::2], [t.strip() for t in parts[2::2]]
            if parts[0].strip() or letters != [chr(ord("A") + k) for k in range(len(letters))]:
                raise ValueError(f"{path}:{n}: cannot parse choices {rec['Choices']!r}")
            rows.append(
                {
                    "id": rec["ID"],
                    "question_stem": rec["Question Stem"],
                    "choices": {"text": texts, "label": letters},
                    "answerKey": rec["Answer Key"],
                }
            )
    return rows


def _convert_obqa(rows: Iterable[dict], split: str) -> list[MCExample]:
    # lm-eval openbookqa.yaml: doc_to_text question_stem, choices choices.text.
    out = []
    for i, r in enumerate(rows):
        if "question_stem" in r:  # HF / TSV layout
            stem, texts, labels = r["question_stem"], list(r["choices"]["text"]), list(r["choices"]["label"])
        else:  # official JSONL layout
            stem, texts, labels = ai2_question(r["question"])
        rid = str(r.get("id", f"{split}-{i}"))
        out.append(
            MCExample(
                id=rid,
                context=stem,
                choices=[" " + t for t in texts],
                label=_mc_index(r["answerKey"], labels, f"openbookqa/{rid}"),
                task="openbookqa",
                meta={"question_stem": stem, "answer_key": r["answerKey"]},
            )
        )
    return out


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag text clean-up (``lm_eval/tasks/hellaswag/utils.py``).

    Strip; ``" [title]"`` becomes ``". "``; remove ``[...]`` spans (WikiHow ``[header]``/``[step]``
    artifacts); collapse one level of double spaces.
    """
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag_files(split: str) -> list[str]:
    official = {"validation": "val", "train": "train", "test": "test"}[split]
    return [f"hellaswag_{official}.jsonl", f"{split}.jsonl"] + _hf_parquet(split)


def _convert_hellaswag(rows: Iterable[dict], split: str) -> list[MCExample]:
    # lm-eval hellaswag utils.process_docs: query = preprocess(activity_label + ": " + ctx_a + " " +
    # ctx_b.capitalize()); choices = [preprocess(e) for e in endings]; continuation " " + choice.
    out = []
    for i, r in enumerate(rows):
        rid = str(r.get("ind", f"{split}-{i}"))
        raw = r.get("label")
        if raw is None or raw == "":
            raise ValueError(f"hellaswag/{rid}: no label (the official test split is unlabeled)")
        ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize()
        out.append(
            MCExample(
                id=rid,
                context=hellaswag_preprocess(r["activity_label"] + ": " + ctx),
                choices=[" " + hellaswag_preprocess(e) for e in r["endings"]],
                label=int(raw),
                task="hellaswag",
                meta={
                    "activity_label": r["activity_label"],
                    "ctx": r.get("ctx"),
                    "source_id": r.get("source_id"),
                    "split_type": r.get("split_type"),
                },
            )
        )
    return out


def _winogrande_files(split: str) -> list[str]:
    hf = {"validation": "validation", "train": "train", "test": "test"}[split]
    official = {"validation": "dev.jsonl", "train": "train_xl.jsonl", "test": "test.jsonl"}[split]
    return [
        f"winogrande_xl/{hf}/data-00000-of-00001.arrow",
        official,
        f"winogrande_1.1/{official}",
        f"winogrande_xl/{hf}-00000-of-00001.parquet",
        "data-00000-of-00001.arrow",
    ]


def _read_winogrande(path: Path, split: str) -> list[dict]:
    rows = _read_records(path)
    if rows and all(str(r.get("answer", "")).strip() in ("1", "2") for r in rows):
        return rows
    # The official release ships dev/test labels also as "<split>-labels.lst"; use it if answers are absent.
    lab = path.with_name(f"{path.name.split('.')[0]}-labels.lst")
    if lab.exists():
        labels = [ln.strip() for ln in lab.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if len(labels) != len(rows):
            raise ValueError(f"winogrande: {len(rows)} records in {path} but {len(labels)} labels in {lab}")
        return [dict(r, answer=lb) for r, lb in zip(rows, labels)]
    return rows


def _convert_winogrande(rows: Iterable[dict], split: str) -> list[MCExample]:
    # lm-eval winogrande (preprocess_winogrande.py), "partial evaluation": per option a context
    # sentence[:blank] + option, one shared continuation " " + sentence[blank+1:].strip()
    # (the harness's target delimiter is a space); label = answer "1"/"2" -> 0/1.
    out = []
    for i, r in enumerate(rows):
        rid = str(r.get("qID", f"{split}-{i}"))
        ans = str(r.get("answer", "")).strip()
        if ans not in ("1", "2"):
            raise ValueError(f"winogrande/{rid}: no label ({r.get('answer')!r}; the test split is unlabeled)")
        sent = r["sentence"]
        if "_" not in sent:
            raise ValueError(f"winogrande/{rid}: sentence has no '_' blank: {sent!r}")
        blank = sent.index("_")
        cont = " " + sent[blank + 1 :].strip()
        opts = [r["option1"], r["option2"]]
        out.append(
            MCExample(
                id=rid,
                context=sent[:blank],
                choices=[cont, cont],
                label=int(ans) - 1,
                task="winogrande",
                meta={"sentence": sent, "options": opts},
                contexts=[sent[:blank] + o for o in opts],
            )
        )
    return out


_MMLU_DIR = {"test": "test", "dev": "dev", "validation": "val"}


def _mmlu_files(split: str) -> list[str]:
    d = _MMLU_DIR[split]
    # Every MMLU release has all 57 subjects, so abstract_algebra marks the split folder.
    marker = f"abstract_algebra_{d}.csv"
    return [f"{d}/{marker}", f"data/{d}/{marker}", marker]


def _read_mmlu(path: Path, split: str) -> list[dict]:
    d = _MMLU_DIR[split]
    suffix = f"_{d}.csv"
    if path.is_file():
        files = [path]
    else:
        files = sorted(path.glob(f"*{suffix}"))
        if not files:
            raise DataNotFoundError(f"mmlu: no '*{suffix}' files in {path}")
    rows = []
    for f in files:
        subject = f.name[: -len(suffix)] if f.name.endswith(suffix) else f.stem
        with open(f, encoding="utf-8", newline="") as fh:
            for n, rec in enumerate(csv.reader(fh), 1):
                if len(rec) != 6:
                    raise ValueError(
                        f"{f}:{n}: expected 6 columns (question, A, B, C, D, answer), got {len(rec)}"
                    )
                rows.append({"question": rec[0], "choices": rec[1:5], "answer": rec[5], "subject": subject})
    return rows


def _convert_mmlu(rows: Iterable[dict], split: str) -> list[MCExample]:
    # lm-eval mmlu/default: description "The following are multiple choice questions (with answers) about
    # {subject with spaces}.\n\n" + "{{question.strip()}}\nA. ..\nB. ..\nC. ..\nD. ..\nAnswer:", choices A-D.
    out = []
    count: dict[str, int] = {}
    for r in rows:
        subject = r["subject"]
        k = count.get(subject, 0)
        count[subject] = k + 1
        ch = list(r["choices"])
        if len(ch) != 4:
            raise ValueError(f"mmlu/{subject}/{k}: expected 4 choices, got {len(ch)}")
        ans = r["answer"]
        label = ans if isinstance(ans, int) else _mc_index(ans, list("ABCD"), f"mmlu/{subject}/{k}")
        body = "\n".join(f"{L}. {c}" for L, c in zip("ABCD", ch))
        topic = subject.replace("_", " ")
        ctx = (
            f"The following are multiple choice questions (with answers) about {topic}.\n\n"
            f"{r['question'].strip()}\n{body}\nAnswer:"
        )
        out.append(
            MCExample(
                id=f"{subject}/{k}",
                context=ctx,
                choices=[" A", " B", " C", " D"],
                label=int(label),
                task="mmlu",
                meta={"subject": subject, "question": r["question"], "options": ch},
            )
        )
    return out


# --------------------------------------------------------------------------------------------------
# Generation: GSM8K, NQ-Open, HumanEval, MBPP


def _gsm8k_files(split: str) -> list[str]:
    return [f"{split}.jsonl", f"main/{split}-00000-of-00001.parquet"]


def _convert_gsm8k(rows: Iterable[dict], split: str) -> list[GenExample]:
    # lm-eval gsm8k.yaml: "Question: {{question}}\nAnswer:". Target: the number after '####' with thousands
    # separators removed (lm-eval ignores ',' and '$' when matching); meta keeps the full solution.
    out = []
    for i, r in enumerate(rows):
        final = r["answer"].split("####")[-1].strip()
        out.append(
            GenExample(
                id=f"{split}-{i}",
                prompt=f"Question: {r['question']}\nAnswer:",
                target=final.replace(",", ""),
                task="gsm8k",
                meta={"question": r["question"], "solution": r["answer"], "answer_raw": final},
            )
        )
    return out


def _nq_files(split: str) -> list[str]:
    return [{"validation": "NQ-open.dev.jsonl", "train": "NQ-open.train.jsonl"}[split]] + _hf_parquet(split)


def _convert_nq(rows: Iterable[dict], split: str) -> list[GenExample]:
    # lm-eval nq_open.yaml: description "Answer these questions:\n" + "Q: {{question}}?\nA:"; any listed
    # answer counts (exact match after normalisation).
    out = []
    for i, r in enumerate(rows):
        ans = r["answer"]
        out.append(
            GenExample(
                id=f"{split}-{i}",
                prompt=f"Answer these questions:\nQ: {r['question']}?\nA:",
                target=list(ans) if not isinstance(ans, str) else [ans],
                task="nq_open",
                meta={"question": r["question"]},
            )
        )
    return out


def _humaneval_files(split: str) -> list[str]:
    hf = "openai_humaneval/test-00000-of-00001.parquet"
    return ["HumanEval.jsonl", "HumanEval.jsonl.gz", hf] + _hf_parquet("test")


def _convert_humaneval(rows: Iterable[dict], split: str) -> list[GenExample]:
    return [
        GenExample(
            id=r["task_id"],
            prompt=r["prompt"],
            target=r["canonical_solution"],
            task="humaneval",
            meta={
                "test": r["test"],
                "entry_point": r["entry_point"],
                "canonical_solution": r["canonical_solution"],
            },
        )
        for r in rows
    ]


# Official MBPP README: task_ids 11-510 test, 1-10 few-shot prompts;
# the HF splits add 511-600 validation and 601-974 train.
_MBPP_RANGES = {
    "test": range(11, 511),
    "prompt": range(1, 11),
    "validation": range(511, 601),
    "train": range(601, 975),
    "full": range(1, 975),
}


def _mbpp_files(split: str) -> list[str]:
    return ["mbpp.jsonl"]


def _convert_mbpp(rows: Iterable[dict], split: str) -> list[GenExample]:
    # Prompt: lm-eval mbpp.yaml, zero-shot: "You are an expert Python programmer, and here is your task:
    # {text} Your code should pass these tests:\n\n{tests, one a line}\n[BEGIN]\n"; target: reference code.
    keep = _MBPP_RANGES[split]
    out = []
    for r in sorted(rows, key=lambda r: int(r["task_id"])):
        tid = int(r["task_id"])
        if tid not in keep:
            continue
        tests = "\n".join(r["test_list"])
        out.append(
            GenExample(
                id=str(tid),
                prompt=(
                    f"You are an expert Python programmer, and here is your task: {r['text']} "
                    f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n"
                ),
                target=r["code"],
                task="mbpp",
                meta={
                    "text": r["text"],
                    "code": r["code"],
                    "test_list": list(r["test_list"]),
                    "test_setup_code": r.get("test_setup_code", ""),
                    "challenge_test_list": list(r.get("challenge_test_list") or []),
                },
            )
        )
    return out


# --------------------------------------------------------------------------------------------------
# Retrieval: BEIR layout, and BoolQ as a retrieval set


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
            "BEIR data set incomplete; missing:\n  " + "\n  ".join(map(str, missing))
            + "\nExpected the BEIR layout: corpus.jsonl, queries.jsonl, qrels/<split>.tsv"
        )
    corpus = {
        str(r["_id"]): {"title": r.get("title") or "", "text": r.get("text") or ""}
        for r in _read_jsonl(need[0])
    }
    all_queries = {str(r["_id"]): r["text"] for r in _read_jsonl(need[1])}
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


# --------------------------------------------------------------------------------------------------
# Perplexity text: WikiText-2, C4


_WIKI_NAMES = {"test": "test", "validation": "valid", "train": "train"}


def _wikitext_files(split: str) -> list[str]:
    s = _WIKI_NAMES[split]
    return [
        f"wiki.{s}.raw",
        f"wikitext-2-raw/wiki.{s}.raw",
        f"wiki.{s}.tokens",
        f"wikitext-2/wiki.{s}.tokens",
        f"{s}.txt",
    ]


def read_wikitext_rows(path: str | os.PathLike) -> list[str]:
    """The rows the Hugging Face ``wikitext`` builder yields for a WikiText file: each line with its
    newline, and ``""`` for whitespace-only lines."""
    with open(path, encoding="utf-8") as f:
        return [line if line.strip() else "" for line in f]


def _read_wikitext(path: Path, split: str) -> str:
    # Standard LLM perplexity evaluation (GPTQ/SparseGPT/Wanda): "\n\n".join(load_dataset(...)["text"]).
    return "\n\n".join(read_wikitext_rows(path))


_C4_SHARD = {"validation": "c4-validation.00000-of-00008.json.gz", "train": "c4-train.00000-of-01024.json.gz"}


def _c4_files(split: str) -> list[str]:
    short = {"validation": "val", "train": "train"}[split]
    return [_C4_SHARD[split], f"en/{_C4_SHARD[split]}", f"c4_{short}.json", "c4_demo.json"]


def _read_c4(path: Path, split: str) -> list[str]:
    return [r["text"] for r in _read_records(path)]


# --------------------------------------------------------------------------------------------------
# Registry


_DEFAULT_ALIASES = {"dev": "validation", "val": "validation", "valid": "validation"}


@dataclass(frozen=True)
class TaskSpec:
    """How to find and read one task.

    ``local``: folder names tried under each data root; ``files(split)``: published file names inside
    such a folder (also tried inside a folder passed as ``path``); ``loader(path, split)`` reads a local
    file/folder; ``convert(rows, split)`` turns rows in the hub's field layout into records (used for
    the hub and by most local loaders); ``hub_id``/``hub_config`` name the Hugging Face dataset, whose
    split names equal ours unless ``hub_splits`` maps them.
    """

    name: str
    kind: str  # 'mc' | 'gen' | 'retrieval' | 'ppl'
    local: tuple[str, ...]
    files: Callable[[str], list[str]]
    loader: Callable[[Path, str], Any]
    default_split: str
    splits: tuple[str, ...]
    hub_id: str | None = None
    hub_config: str | None = None
    hub_splits: Mapping[str, str] = field(default_factory=dict)
    convert: Callable[[Iterable[dict], str], Any] | None = None
    hub_loader: Callable[["TaskSpec", str, str], Any] | None = None
    aliases: Mapping[str, str] = field(default_factory=lambda: dict(_DEFAULT_ALIASES))
    description: str = ""
    marker_parent: bool = False  # files() name a marker file; the data is its folder (MMLU split, BEIR set)

    @property
    def hub_split(self) -> str:
        """Hub split of the default split."""
        return self.hub_splits.get(self.default_split, self.default_split)

    def canonical_split(self, split: str | None) -> str:
        s = self.default_split if split is None else self.aliases.get(split, split)
        if s not in self.splits:
            raise ValueError(f"{self.name}: unknown split {split!r}; available: {', '.join(self.splits)}")
        return s

    def local_paths(self, split: str | None = None) -> list[str]:
        """Candidate paths relative to a data root, in search order."""
        s = self.canonical_split(split)
        return [f"{folder}/{name}" for folder in self.local for name in self.files(s)]


def _rows_loader(read: Callable[[Path, str], list[dict]], convert: Callable[[Iterable[dict], str], Any]):
    def load(path: Path, split: str) -> Any:
        return convert(read(path, split), split)

    return load


def _plain_read(path: Path, split: str) -> list[dict]:
    return _read_records(path)


def _mc(name, local, files, convert, default_split, splits, hub_id, hub_config=None, read=_plain_read, **kw):
    return TaskSpec(
        name=name,
        kind=kw.pop("kind", "mc"),
        local=local,
        files=files,
        loader=_rows_loader(read, convert),
        convert=convert,
        default_split=default_split,
        splits=splits,
        hub_id=hub_id,
        hub_config=hub_config,
        **kw,
    )


def _hub_beir(spec: TaskSpec, split: str, hub_id: str) -> RetrievalData:
    corpus_ds = _hub_dataset(hub_id, "corpus", "corpus")
    query_ds = _hub_dataset(hub_id, "queries", "queries")
    qrel_ds = _hub_dataset(f"{hub_id}-qrels", None, spec.hub_splits.get(split, split))
    qrels: dict[str, dict[str, int]] = {}
    for r in qrel_ds:
        qrels.setdefault(str(r["query-id"]), {})[str(r["corpus-id"])] = int(r["score"])
    corpus = {str(r["_id"]): {"title": r.get("title") or "", "text": r.get("text") or ""} for r in corpus_ds}
    queries = {str(r["_id"]): r["text"] for r in query_ds if str(r["_id"]) in qrels}
    return RetrievalData(corpus=corpus, queries=queries, qrels=qrels)


def _hub_boolq_retrieval(spec: TaskSpec, split: str, hub_id: str) -> RetrievalData:
    rows = _hub_dataset(hub_id, spec.hub_config, split)
    return boolq_as_retrieval(_convert_boolq(rows, split))


def _hub_wikitext(spec: TaskSpec, split: str, hub_id: str) -> str:
    return "\n\n".join(_hub_dataset(hub_id, spec.hub_config, split)["text"])


def _hub_c4(spec: TaskSpec, split: str, hub_id: str) -> list[str]:
    ds = _hub_dataset(hub_id, None, split, data_files={split: f"en/{_C4_SHARD[split]}"})
    return list(ds["text"])


def _hub_mbpp(spec: TaskSpec, split: str, hub_id: str) -> list[GenExample]:
    hub_split_names = ["train", "test", "validation", "prompt"] if split == "full" else [split]
    rows: list[dict] = []
    for s in hub_split_names:
        rows.extend(_hub_dataset(hub_id, spec.hub_config, s))
    return _convert_mbpp(rows, split)


_TRAIN_VAL_TEST = ("train", "validation", "test")
_VAL = ("validation",)
_BEIR_SPLITS = ("test", "dev", "train")

def _boolq_retrieval_local(path: Path, split: str) -> RetrievalData:
    return boolq_as_retrieval(_convert_boolq(_read_records(path), split))


_WIKITEXT_FOLDERS = ("wikitext2_raw", "wikitext-2-raw", "wikitext2", "wikitext-2", "wikitext2_tokens")
_MMLU_ALIASES = {"val": "validation", "valid": "validation"}  # "dev" is MMLU's own few-shot split

# fmt: off
TASKS: dict[str, TaskSpec] = {s.name: s for s in [
    # multiple choice
    _mc("arc_easy", ("arc",), _arc_files("ARC-Easy"), _convert_arc("arc_easy"), "test", _TRAIN_VAL_TEST,
        "allenai/ai2_arc", "ARC-Easy", description="ARC-Easy (AI2 JSONL or HF parquet)"),
    _mc("arc_challenge", ("arc",), _arc_files("ARC-Challenge"), _convert_arc("arc_challenge"), "test",
        _TRAIN_VAL_TEST, "allenai/ai2_arc", "ARC-Challenge",
        description="ARC-Challenge (AI2 JSONL or HF parquet)"),
    _mc("boolq", ("boolq",), _boolq_files, _convert_boolq, "validation", _TRAIN_VAL_TEST,
        "aps/super_glue", "boolq",
        description="BoolQ (SuperGLUE JSONL, original Google JSONL, or HF parquet)"),
    _mc("rte", ("rte",), _rte_files, _convert_rte, "validation", _TRAIN_VAL_TEST,
        "aps/super_glue", "rte", description="RTE (SuperGLUE JSONL or HF parquet)"),
    _mc("piqa", ("piqa",), _piqa_files, _convert_piqa, "validation", _TRAIN_VAL_TEST,
        "baber/piqa", read=_read_piqa, description="PIQA (authors' JSONL + -labels.lst, or HF parquet)"),
    _mc("openbookqa", ("obqa", "openbookqa"), _obqa_files, _convert_obqa, "test", _TRAIN_VAL_TEST,
        "allenai/openbookqa", "main", read=_read_obqa,
        description="OpenBookQA Main (release TSV/JSONL, HF parquet)"),
    _mc("hellaswag", ("hellaswag",), _hellaswag_files, _convert_hellaswag, "validation", _TRAIN_VAL_TEST,
        "Rowan/hellaswag", description="HellaSwag (official JSONL, or HF parquet/JSONL)"),
    _mc("winogrande", ("winogrande",), _winogrande_files, _convert_winogrande, "validation",
        _TRAIN_VAL_TEST, "allenai/winogrande", "winogrande_xl", read=_read_winogrande,
        description="WinoGrande (official JSONL, HF Arrow export or parquet)"),
    _mc("mmlu", ("mmlu", "mmlu_prerelease"), _mmlu_files, _convert_mmlu, "test",
        ("test", "dev", "validation"), "cais/mmlu", "all", read=_read_mmlu, aliases=_MMLU_ALIASES,
        marker_parent=True, description="MMLU (hendrycks CSV folders test/ dev/ val/, or HF cais/mmlu)"),
    # generation
    _mc("gsm8k", ("gsm8k",), _gsm8k_files, _convert_gsm8k, "test", ("train", "test"),
        "openai/gsm8k", "main", kind="gen", description="GSM8K (official JSONL)"),
    _mc("nq_open", ("nq_open",), _nq_files, _convert_nq, "validation", ("train", "validation"),
        "google-research-datasets/nq_open", kind="gen", description="NQ-Open (official JSONL)"),
    _mc("humaneval", ("humaneval",), _humaneval_files, _convert_humaneval, "test", ("test",),
        "openai/openai_humaneval", kind="gen", description="HumanEval (official JSONL / .jsonl.gz)"),
    _mc("mbpp", ("mbpp",), _mbpp_files, _convert_mbpp, "test", tuple(_MBPP_RANGES),
        "google-research-datasets/mbpp", "full", kind="gen", hub_loader=_hub_mbpp,
        description="MBPP full (official mbpp.jsonl; test = task ids 11-510, prompt = 1-10)"),
    # retrieval
    TaskSpec("beir", "retrieval", ("beir",), _beir_files, _read_beir, "test", _BEIR_SPLITS,
             aliases={}, marker_parent=True, description="any BEIR-layout folder (pass path=)"),
    TaskSpec("scifact", "retrieval", ("beir/scifact", "scifact"), _beir_files, _read_beir, "test",
             ("test", "train"), hub_id="BeIR/scifact", hub_loader=_hub_beir, aliases={},
             marker_parent=True, description="BEIR SciFact"),
    TaskSpec("nfcorpus", "retrieval", ("beir/nfcorpus", "nfcorpus"), _beir_files, _read_beir, "test",
             _BEIR_SPLITS, hub_id="BeIR/nfcorpus", hub_loader=_hub_beir, aliases={},
             marker_parent=True, description="BEIR NFCorpus"),
    TaskSpec("boolq_retrieval", "retrieval", ("boolq",), _boolq_files, _boolq_retrieval_local,
             "validation", _TRAIN_VAL_TEST, hub_id="aps/super_glue", hub_config="boolq",
             hub_loader=_hub_boolq_retrieval,
             description="BoolQ questions retrieving their own passage (BEIR-style)"),
    # perplexity text
    TaskSpec("wikitext2", "ppl", _WIKITEXT_FOLDERS, _wikitext_files, _read_wikitext, "test",
             _TRAIN_VAL_TEST, hub_id="Salesforce/wikitext", hub_config="wikitext-2-raw-v1",
             hub_loader=_hub_wikitext,
             description="WikiText-2 text ('\\n\\n'.join of rows); raw files preferred over tokenized"),
    TaskSpec("c4", "ppl", ("c4",), _c4_files, _read_c4, "validation", ("train", "validation"),
             hub_id="allenai/c4", hub_loader=_hub_c4,
             description="C4 en documents (first shard; falls back to the c4_demo.json sample)"),
]}
# fmt: on


# --------------------------------------------------------------------------------------------------
# Hub access


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _hub_dataset(hub_id: str, config: str | None, split: str, **kwargs: Any):
    try:
        import datasets  # noqa: PLC0415 - optional dependency, imported lazily
    except ImportError as e:
        raise HubUnavailableError(
            f"cannot load {hub_id!r} from the Hugging Face hub: the `datasets` package is not installed "
            "(pip install 'prunelens[hub]')"
        ) from e
    if _env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE"):
        # datasets may still serve a cached copy in offline mode; say so if that fails too.
        note = " (offline mode is set: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE; only a cached copy can be used)"
    else:
        note = ""
    try:
        if config is None:
            return datasets.load_dataset(hub_id, split=split, **kwargs)
        return datasets.load_dataset(hub_id, config, split=split, **kwargs)
    except Exception as e:  # network errors, missing configs/splits, offline without cache ...
        cfg = f", config {config!r}" if config else ""
        raise HubUnavailableError(
            f"could not load {hub_id!r}{cfg}, split {split!r} from the Hugging Face hub{note}: "
            f"{type(e).__name__}: {e}"
        ) from e


def _load_from_hub(spec: TaskSpec, split: str, hub_id: str | None) -> Any:
    hid = hub_id or spec.hub_id
    if hid is None:
        raise HubUnavailableError(
            f"{spec.name}: no hub dataset is known for this task; pass path= or hub_id="
        )
    if spec.hub_loader is not None:
        return spec.hub_loader(spec, split, hid)
    assert spec.convert is not None
    rows = _hub_dataset(hid, spec.hub_config, spec.hub_splits.get(split, split))
    return spec.convert(rows, split)


# --------------------------------------------------------------------------------------------------
# Public entry points


def _get_spec(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None


def _how_to_provide(spec: TaskSpec, split: str) -> str:
    hub = (
        f"or load it from the hub ({spec.hub_id}{'/' + spec.hub_config if spec.hub_config else ''}) with "
        "source='hub' (needs `pip install 'prunelens[hub]'` and network)"
        if spec.hub_id
        else "(no hub copy is registered for this task)"
    )
    example = f"{spec.local[0]}/{spec.files(split)[0]}" if spec.local else "<folder>"
    return (
        f"To provide {spec.name} ({split}): put the published file(s) under a data root as {example} "
        f"(data roots: $PRUNELENS_DATA, ./data, ../shared/data), pass path=<file or folder>, {hub}."
    )


def resolve_task_path(name: str, split: str | None = None, path: str | os.PathLike | None = None) -> Path:
    """The local file (or folder, for MMLU and BEIR sets) a task would be read from.

    With ``path``: that file, or the first published file name found inside that folder. Without:
    the first candidate of :meth:`TaskSpec.local_paths` under the data roots. Raises
    :class:`DataNotFoundError` listing every path tried and how to provide the data.
    """
    spec = _get_spec(name)
    s = spec.canonical_split(split)
    names = spec.files(s)
    if path is not None:
        p = Path(path).expanduser()
        if p.is_file():
            return p
        tried = [p / n for n in names] if p.is_dir() else [p]
        for c in tried:
            if c.exists():
                return c.parent if spec.marker_parent else c
        listing = "\n  ".join(map(str, tried))
        raise DataNotFoundError(
            f"{spec.name} ({s}): not found; looked in:\n  {listing}\n{_how_to_provide(spec, s)}"
        )
    try:
        found = find_data_file(*spec.local_paths(s))
    except DataNotFoundError as e:
        raise DataNotFoundError(f"{spec.name} ({s}): {e}\n{_how_to_provide(spec, s)}") from None
    return found.parent if spec.marker_parent else found


def _apply_limit(spec: TaskSpec, data: Any, limit: int | None, seed: int) -> Any:
    if limit is None:
        return data
    if isinstance(data, RetrievalData):
        qids = select_subset(list(data.queries), limit, seed)
        return RetrievalData(
            corpus=data.corpus,
            queries={q: data.queries[q] for q in qids},
            qrels={q: data.qrels[q] for q in qids},
        )
    if isinstance(data, str):
        warnings.warn(
            f"{spec.name}: limit does not apply to a single perplexity text; "
            "limit the number of windows instead",
            stacklevel=3,
        )
        return data
    return select_subset(data, limit, seed)


def load_task(
    name: str,
    path: str | os.PathLike | None = None,
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    *,
    source: str = "auto",
    hub_id: str | None = None,
) -> Any:
    """Load task ``name`` (a key of :data:`TASKS`).

    Returns ``list[MCExample]`` ('mc'), ``list[GenExample]`` ('gen'), :class:`RetrievalData`
    ('retrieval'), ``str`` (WikiText-2) or ``list[str]`` (C4 documents).

    ``path``: explicit file or folder (local only). ``split``: default per task (``dev``/``val`` are
    aliases of ``validation``, except MMLU's ``dev`` few-shot split). ``limit``/``seed``: deterministic
    subset (see :func:`select_subset`). ``source``: ``"auto"`` (local, then hub), ``"local"`` or
    ``"hub"``; ``hub_id`` overrides the registered hub dataset.
    """
    spec = _get_spec(name)
    s = spec.canonical_split(split)
    if source not in ("auto", "local", "hub"):
        raise ValueError(f"source must be 'auto', 'local' or 'hub', got {source!r}")
    if source == "hub":
        if path is not None:
            raise ValueError("path= reads local data; do not combine it with source='hub'")
        data = _load_from_hub(spec, s, hub_id)
    else:
        try:
            p = resolve_task_path(name, s, path)
        except DataNotFoundError as local_err:
            if source == "local" or path is not None:
                raise
            try:
                data = _load_from_hub(spec, s, hub_id)
            except HubUnavailableError as hub_err:
                raise DataNotFoundError(f"{local_err}\nHub fallback failed: {hub_err}") from hub_err
        else:
            data = spec.loader(p, s)
    return _apply_limit(spec, data, limit, seed)


def _make_loader(name: str) -> Callable[..., Any]:
    spec = TASKS[name]

    def loader(
        path: str | os.PathLike | None = None,
        split: str | None = None,
        limit: int | None = None,
        seed: int = 0,
        *,
        source: str = "auto",
        hub_id: str | None = None,
    ) -> Any:
        return load_task(name, path=path, split=split, limit=limit, seed=seed, source=source, hub_id=hub_id)

    loader.__name__ = loader.__qualname__ = f"load_{name}"
    loader.__doc__ = (
        f"Load {spec.description or name} ({spec.kind}; default split {spec.default_split!r}). "
        f"Same arguments as :func:`load_task`."
    )
    return loader


load_arc_easy = _make_loader("arc_easy")
load_arc_challenge = _make_loader("arc_challenge")
load_boolq = _make_loader("boolq")
load_hellaswag = _make_loader("hellaswag")
load_openbookqa = _make_loader("openbookqa")
load_piqa = _make_loader("piqa")
load_winogrande = _make_loader("winogrande")
load_mmlu = _make_loader("mmlu")
load_rte = _make_loader("rte")
load_gsm8k = _make_loader("gsm8k")
load_nq_open = _make_loader("nq_open")
load_humaneval = _make_loader("humaneval")
load_mbpp = _make_loader("mbpp")
load_beir = _make_loader("beir")
load_wikitext2 = _make_loader("wikitext2")
load_c4 = _make_loader("c4")
