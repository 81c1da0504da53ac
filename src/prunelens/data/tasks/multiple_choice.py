"""Multiple-choice tasks: ARC, BoolQ, RTE, PIQA, OpenBookQA, HellaSwag, WinoGrande, MMLU.

Each reads the published files (or the hub's rows) into :class:`MCExample` s in log-likelihood scoring
form, with the prompts of lm-evaluation-harness (``lm_eval/tasks/<task>/*.yaml``): the continuation
carries the harness's default target delimiter, a leading space. A spec's ``main_metric`` is the task's
headline metric: lm-eval's task YAMLs list ``acc`` and ``acc_norm`` for ARC, HellaSwag, OpenBookQA and
PIQA (and leaderboards quote ``acc_norm`` for them); BoolQ, RTE, WinoGrande and MMLU list ``acc`` only.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from prunelens.data.paths import DataNotFoundError
from prunelens.data.tasks.readers import read_records
from prunelens.data.tasks.records import MCExample
from prunelens.data.tasks.spec import hf_parquet, make_loader, register, row_task

__all__ = ["ai2_question", "hellaswag_preprocess", "load_boolq", "load_hellaswag", "load_winogrande"]


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


def boolq_files(split: str) -> list[str]:
    return _SUPERGLUE_NAMES[split] + hf_parquet(split)


def convert_boolq(rows: Iterable[dict], split: str) -> list[MCExample]:
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
    return _SUPERGLUE_NAMES[split] + hf_parquet(split)


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
    return [official] + hf_parquet(split)


def _read_piqa(path: Path, split: str) -> list[dict]:
    rows = read_records(path)
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
        return read_records(path)
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
    return [f"hellaswag_{official}.jsonl", f"{split}.jsonl"] + hf_parquet(split)


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
    rows = read_records(path)
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
# Specs


def _mc(*args, **kw):
    return row_task(*args, kind="mc", **kw)


_TRAIN_VAL_TEST = ("train", "validation", "test")
_MMLU_ALIASES = {"val": "validation", "valid": "validation"}  # "dev" is MMLU's own few-shot split

# fmt: off
register(
    _mc("arc_easy", ("arc",), _arc_files("ARC-Easy"), _convert_arc("arc_easy"), "test", _TRAIN_VAL_TEST,
        "allenai/ai2_arc", "ARC-Easy", description="ARC-Easy (AI2 JSONL or HF parquet)",
        main_metric="acc_norm"),
    _mc("arc_challenge", ("arc",), _arc_files("ARC-Challenge"), _convert_arc("arc_challenge"), "test",
        _TRAIN_VAL_TEST, "allenai/ai2_arc", "ARC-Challenge",
        description="ARC-Challenge (AI2 JSONL or HF parquet)", main_metric="acc_norm"),
    _mc("boolq", ("boolq",), boolq_files, convert_boolq, "validation", _TRAIN_VAL_TEST,
        "aps/super_glue", "boolq",
        description="BoolQ (SuperGLUE JSONL, original Google JSONL, or HF parquet)", main_metric="acc"),
    _mc("rte", ("rte",), _rte_files, _convert_rte, "validation", _TRAIN_VAL_TEST,
        "aps/super_glue", "rte", description="RTE (SuperGLUE JSONL or HF parquet)", main_metric="acc"),
    _mc("piqa", ("piqa",), _piqa_files, _convert_piqa, "validation", _TRAIN_VAL_TEST,
        "baber/piqa", read=_read_piqa, description="PIQA (authors' JSONL + -labels.lst, or HF parquet)",
        main_metric="acc_norm"),
    _mc("openbookqa", ("obqa", "openbookqa"), _obqa_files, _convert_obqa, "test", _TRAIN_VAL_TEST,
        "allenai/openbookqa", "main", read=_read_obqa,
        description="OpenBookQA Main (release TSV/JSONL, HF parquet)", main_metric="acc_norm"),
    _mc("hellaswag", ("hellaswag",), _hellaswag_files, _convert_hellaswag, "validation", _TRAIN_VAL_TEST,
        "Rowan/hellaswag", description="HellaSwag (official JSONL, or HF parquet/JSONL)",
        main_metric="acc_norm"),
    _mc("winogrande", ("winogrande",), _winogrande_files, _convert_winogrande, "validation",
        _TRAIN_VAL_TEST, "allenai/winogrande", "winogrande_xl", read=_read_winogrande,
        description="WinoGrande (official JSONL, HF Arrow export or parquet)", main_metric="acc"),
    _mc("mmlu", ("mmlu", "mmlu_prerelease"), _mmlu_files, _convert_mmlu, "test",
        ("test", "dev", "validation"), "cais/mmlu", "all", read=_read_mmlu, aliases=_MMLU_ALIASES,
        marker_parent=True, description="MMLU (hendrycks CSV folders test/ dev/ val/, or HF cais/mmlu)",
        main_metric="acc"),
)
# fmt: on

load_boolq = make_loader("boolq")
load_hellaswag = make_loader("hellaswag")
load_winogrande = make_loader("winogrande")
