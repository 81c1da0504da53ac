"""Task data loaders on the real benchmark files (found under the data roots) and on tiny fixtures.

The shared data is found through ``prunelens.data.paths`` (``../shared/data`` relative to the repository
root, where pytest runs). A missing data folder skips the test locally and fails it under CI.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from prunelens.data.paths import DataNotFoundError
from prunelens.data.tasks import (
    TASKS,
    GenExample,
    HubUnavailableError,
    MCExample,
    RetrievalData,
    boolq_as_retrieval,
    hellaswag_preprocess,
    load_beir,
    load_boolq,
    load_hellaswag,
    load_task,
    load_winogrande,
    read_wikitext_rows,
    resolve_task_path,
    select_subset,
    write_beir,
)

from conftest import missing


def need(name: str, split: str | None = None) -> Path:
    """The local path of a task's data, or skip (fail under CI) when it is missing."""
    try:
        return resolve_task_path(name, split)
    except DataNotFoundError as e:
        missing(f"data for {name} ({split or 'default split'}) not found: {e}")


def local(name: str, split: str | None = None, **kw):
    need(name, split)
    return load_task(name, split=split, source="local", **kw)


# --------------------------------------------------------------------------------------------------
# Record counts (shared data README) and label ranges

COUNTS = [
    ("arc_easy", "test", 2376),
    ("arc_easy", "validation", 570),
    ("arc_challenge", "test", 1172),
    ("arc_challenge", "validation", 299),
    ("boolq", "validation", 3270),
    ("rte", "validation", 277),
    ("piqa", "validation", 1838),
    ("openbookqa", "test", 500),
    ("openbookqa", "validation", 500),
    ("mmlu", "test", 14079),  # Sep-2020 pre-release (final release: 14,042)
    ("mmlu", "dev", 285),
    ("winogrande", "validation", 1267),
    ("gsm8k", "test", 1319),
    ("gsm8k", "train", 7473),
    ("nq_open", "validation", 3610),
    ("humaneval", "test", 164),
    ("mbpp", "full", 974),
    ("mbpp", "test", 500),
    ("c4", "validation", 300),
]


@pytest.mark.parametrize("name,split,n", COUNTS, ids=[f"{a}-{b}" for a, b, _ in COUNTS])
def test_record_counts_and_labels(name, split, n):
    data = local(name, split)
    assert len(data) == n
    kind = TASKS[name].kind
    if kind == "mc":
        assert all(isinstance(e, MCExample) for e in data)
        assert all(0 <= e.label < len(e.choices) for e in data)
        assert len({e.id for e in data}) == n, "ids are unique"
    elif kind == "gen":
        assert all(isinstance(e, GenExample) and e.prompt for e in data)
        assert len({e.id for e in data}) == n
    else:
        assert all(isinstance(t, str) and t for t in data)


def test_label_distributions_match_readme():
    boolq = local("boolq")
    assert sum(e.label for e in boolq) == 2033  # "true" -> " yes" (index 1)
    rte = local("rte")
    assert sum(e.label == 0 for e in rte) == 146  # entailment -> " True" (index 0)
    wg = local("winogrande")
    assert sum(e.label == 1 for e in wg) == 639
    labels_file = need("winogrande").parents[2] / "dev-labels.lst"
    if labels_file.exists():
        assert [str(e.label + 1) for e in wg] == labels_file.read_text().split()


def test_mmlu_prerelease_subject_counts():
    mmlu = local("mmlu", "test")
    by_subject: dict[str, int] = {}
    for e in mmlu:
        by_subject[e.meta["subject"]] = by_subject.get(e.meta["subject"], 0) + 1
    assert len(by_subject) == 57
    if "prerelease" in str(need("mmlu", "test")):
        # README caveat: pre-release counts differ from the final release for ten subjects
        assert by_subject["machine_learning"] == 105 and by_subject["miscellaneous"] == 791


# --------------------------------------------------------------------------------------------------
# Spot checks: exact text of one record per task


def test_arc_spot_check():
    ex = local("arc_challenge", "test")[0]
    assert ex.id == "Mercury_7175875"
    assert ex.context == (
        "Question: An astronomer observes that a planet rotates faster after a meteorite impact. "
        "Which is the most likely effect of this increase in rotation?\nAnswer:"
    )
    assert ex.choices[ex.label] == " Planetary days will become shorter."
    assert len(ex.choices) == 4
    # numeric answer keys ("1".."4") are mapped by label position
    numeric = [e for e in local("arc_easy", "test") if e.meta["answer_key"].isdigit()]
    assert numeric and all(e.meta["choice_labels"][e.label] == e.meta["answer_key"] for e in numeric)


def test_boolq_spot_check():
    ex = local("boolq")[0]
    assert ex.context.startswith("Ethanol fuel -- All biomass goes through at least some of these steps")
    assert ex.context.endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert ex.choices == [" no", " yes"] and ex.label == 0


def test_rte_spot_check():
    ex = local("rte")[0]
    assert ex.context == (
        "Dana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44, "
        "according to the Christopher Reeve Foundation.\n"
        "Question: Christopher Reeve had an accident. True or False?\nAnswer:"
    )
    assert ex.choices == [" True", " False"] and ex.label == 1  # not_entailment


def test_piqa_spot_check():
    ex = local("piqa")[0]
    assert ex.context == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    assert ex.choices[0].startswith(" Provide the guinea pig with a cage full of a few inches of bedding")
    assert "ripped paper strips" in ex.choices[0] and "ripped jeans material" in ex.choices[1]
    assert ex.label == 0


def test_openbookqa_spot_check():
    ex = local("openbookqa", "test")[0]
    assert ex.id == "8-343"
    assert ex.context.endswith("they decide the best way to save money is to")
    assert ex.choices == [
        " make more phone calls",
        " quit eating lunch out",
        " buy less with monopoly money",
        " have lunch with friends",
    ]
    assert ex.label == 1


def test_winogrande_spot_check_partial_evaluation():
    ex = local("winogrande")[0]
    assert ex.contexts == [
        "Sarah was a much better surgeon than Maria so Sarah",
        "Sarah was a much better surgeon than Maria so Maria",
    ]
    assert ex.choices == [" always got the easier cases."] * 2
    assert ex.label == 1
    assert ex.pairs()[1] == (
        "Sarah was a much better surgeon than Maria so Maria",
        " always got the easier cases.",
    )


def test_mmlu_spot_check():
    ex = local("mmlu", "test")[0]
    assert ex.id == "abstract_algebra/0"
    assert ex.context == (
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
        "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:"
    )
    assert ex.choices == [" A", " B", " C", " D"] and ex.label == 1


def test_gsm8k_spot_check():
    data = local("gsm8k", "test")
    ex = data[0]
    assert ex.prompt.startswith("Question: Janet\u2019s ducks lay 16 eggs per day.")
    assert ex.prompt.endswith("\nAnswer:")
    assert ex.target == "18"
    assert ex.meta["solution"].endswith("#### 18")
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", e.target) for e in data)
    assert sum("," in e.meta["answer_raw"] for e in data) == 14  # e.g. "1,450,000" -> "1450000"


def test_nq_open_spot_check():
    ex = local("nq_open")[0]
    assert ex.prompt == "Answer these questions:\nQ: when was the last time anyone was on the moon?\nA:"
    assert ex.target == ["14 December 1972 UTC", "December 1972"]


def test_humaneval_spot_check():
    ex = local("humaneval")[0]
    assert ex.id == "HumanEval/0"
    assert ex.prompt.startswith("from typing import List\n\n\ndef has_close_elements(numbers: List[float]")
    assert ex.meta["entry_point"] == "has_close_elements"
    assert "def check(candidate)" in ex.meta["test"]
    assert ex.target == ex.meta["canonical_solution"]


def test_mbpp_splits_and_spot_check():
    test = local("mbpp", "test")
    assert [e.id for e in test] == [str(i) for i in range(11, 511)]
    assert [e.id for e in local("mbpp", "prompt")] == [str(i) for i in range(1, 11)]
    ex = test[0]
    assert ex.prompt == (
        "You are an expert Python programmer, and here is your task: Write a python function to remove "
        "first and last occurrence of a given character from the string. "
        "Your code should pass these tests:\n\n"
        'assert remove_Occ("hello","l") == "heo"\nassert remove_Occ("abcda","a") == "bcd"\n'
        'assert remove_Occ("PHP","P") == "H"\n[BEGIN]\n'
    )
    assert ex.target.startswith("def remove_Occ(s,ch):")
    assert ex.meta["test_setup_code"] == "" and len(ex.meta["test_list"]) == 3


def test_wikitext2_text():
    path = need("wikitext2")
    rows = read_wikitext_rows(path)
    assert len(rows) == 4358
    text = local("wikitext2")
    assert text == "\n\n".join(rows)
    assert text.startswith("\n\n = Robert <unk> = \n\n\n\n\n Robert <unk> is an English film , television")


def test_c4_documents():
    docs = local("c4")
    assert docs[0].startswith("Don\u2019t think you need all the bells and whistles? No problem.")


# --------------------------------------------------------------------------------------------------
# limit: deterministic and seeded


def test_limit_is_deterministic_and_seeded():
    full = local("boolq")
    a = local("boolq", limit=50, seed=0)
    b = local("boolq", limit=50, seed=0)
    c = local("boolq", limit=50, seed=1)
    assert [e.id for e in a] == [e.id for e in b]
    assert [e.id for e in a] != [e.id for e in c]
    assert len(a) == len(c) == 50
    pos = {e.id: i for i, e in enumerate(full)}
    assert [pos[e.id] for e in a] == sorted(pos[e.id] for e in a), "subset keeps file order"
    assert len(local("boolq", limit=10**6)) == len(full)
    assert select_subset(range(10), 3, seed=7) == select_subset(list(range(10)), 3, seed=7)
    with pytest.raises(ValueError):
        select_subset(range(3), -1)


def test_limit_on_retrieval_subsets_queries():
    r = local("boolq_retrieval", limit=20, seed=3)
    assert len(r.queries) == 20 and set(r.qrels) == set(r.queries)
    assert len(r.corpus) == len(local("boolq_retrieval").corpus), "corpus (distractors) kept whole"


# --------------------------------------------------------------------------------------------------
# Missing data and hub errors


def test_missing_data_error_lists_paths(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("PRUNELENS_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError) as info:
        load_task("arc_easy", source="local")
    msg = str(info.value)
    assert str(tmp_path / "nowhere" / "arc" / "ARC-Easy-Test.jsonl") in msg
    assert str(work / "data" / "arc" / "ARC-Easy-Test.jsonl") in msg
    assert str(tmp_path / "shared" / "data" / "arc" / "ARC-Easy-Test.jsonl") in msg
    assert "PRUNELENS_DATA" in msg and "path=" in msg

    with pytest.raises(DataNotFoundError) as info:
        load_task("gsm8k", path=tmp_path / "nope.jsonl")
    assert str(tmp_path / "nope.jsonl") in str(info.value)
    with pytest.raises(DataNotFoundError) as info:
        load_task("gsm8k", path=tmp_path)  # a folder without the published file
    assert str(tmp_path / "test.jsonl") in str(info.value)


def test_hub_without_datasets_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(HubUnavailableError, match="`datasets` package is not installed"):
        load_task("boolq", source="hub")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRUNELENS_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError) as info:
        load_task("hellaswag")  # auto: local missing, then hub
    msg = str(info.value)
    assert str(tmp_path / "nowhere" / "hellaswag" / "hellaswag_val.jsonl") in msg
    assert "Hub fallback failed" in msg and "datasets" in msg


def test_unknown_task_and_split():
    with pytest.raises(KeyError, match="known tasks"):
        load_task("nope")
    with pytest.raises(ValueError, match="unknown split"):
        load_task("boolq", split="bogus")


# --------------------------------------------------------------------------------------------------
# HellaSwag (not shipped): official JSONL and HF parquet fixtures

HELLASWAG_ROWS = [
    {
        "ind": 24,
        "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.",
        "ctx_b": "he",
        "ctx": "A man is sitting on a roof. he",
        "split": "val",
        "split_type": "indomain",
        "label": 3,
        "endings": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        "source_id": "activitynet~v_-JhWjGDPHMY",
    },
    {
        "ind": 101,
        "activity_label": "Home and Garden",
        "ctx_a": "[header] How to clean a glass shower door [title] Mix vinegar and water.",
        "ctx_b": "[step] Fill a spray bottle with equal parts.",
        "ctx": "[header] How to clean a glass shower door [title] Mix vinegar and water. "
        "[step] Fill a spray bottle with equal parts.",
        "split": "val",
        "split_type": "zeroshot",
        "label": 0,
        "endings": [
            "[substeps] Spray the door and wipe it  down.",
            "Paint the door.",
            "Throw the bottle away.",
            "Eat the vinegar.",
        ],
        "source_id": "wikihow~0",
    },
]


def _check_hellaswag(data):
    assert [e.id for e in data] == ["24", "101"]
    a, b = data
    assert a.context == "Roof shingle removal: A man is sitting on a roof. He"
    assert a.choices[a.label] == " starts pulling up roofing on a roof."
    # lm-eval preprocessing: " [title]" -> ". ", [brackets] removed, double spaces collapsed;
    # ctx_b.capitalize() lower-cases the rest of ctx_b
    assert b.context == (
        "Home and Garden: How to clean a glass shower door. Mix vinegar and water. "
        "fill a spray bottle with equal parts."
    )
    # stripped before the bracket removal (as lm-eval does), so a space survives, plus the delimiter
    assert b.choices[0] == "  Spray the door and wipe it down."
    assert b.label == 0


def test_hellaswag_official_jsonl(tmp_path, monkeypatch):
    folder = tmp_path / "root" / "hellaswag"
    folder.mkdir(parents=True)
    (folder / "hellaswag_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in HELLASWAG_ROWS))
    _check_hellaswag(load_hellaswag(path=folder / "hellaswag_val.jsonl"))
    _check_hellaswag(load_hellaswag(path=folder))
    monkeypatch.setenv("PRUNELENS_DATA", str(tmp_path / "root"))
    _check_hellaswag(load_hellaswag(source="local"))
    assert load_hellaswag(source="local", limit=1, seed=0) == load_hellaswag(source="local", limit=1, seed=0)
    unlabeled = dict(HELLASWAG_ROWS[0])
    del unlabeled["label"]
    (folder / "hellaswag_test.jsonl").write_text(json.dumps(unlabeled) + "\n")
    with pytest.raises(ValueError, match="no label"):
        load_hellaswag(path=folder, split="test")


def test_hellaswag_hf_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [dict(r, label=str(r["label"])) for r in HELLASWAG_ROWS]  # HF stores label as a string
    folder = tmp_path / "hellaswag" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "validation-00000-of-00001.parquet")
    _check_hellaswag(load_hellaswag(path=tmp_path / "hellaswag"))


def test_hellaswag_preprocess():
    assert hellaswag_preprocess(" A [title] B [step] C ") == "A. B C"


# --------------------------------------------------------------------------------------------------
# WinoGrande official JSONL (fixture) with labels in a parallel file


def test_winogrande_official_jsonl(tmp_path):
    rows = [
        {
            "qID": "q1",
            "sentence": "The trophy doesn't fit in the suitcase because _ is too big.",
            "option1": "the trophy",
            "option2": "the suitcase",
        },
        {
            "qID": "q2",
            "sentence": "The cat chased the dog until _ got tired.",
            "option1": "the cat",
            "option2": "the dog",
            "answer": "2",
        },
    ]
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "dev-labels.lst").write_text("1\n2\n")
    data = load_winogrande(path=tmp_path)
    assert [e.id for e in data] == ["q1", "q2"] and [e.label for e in data] == [0, 1]
    assert data[0].contexts[0] == "The trophy doesn't fit in the suitcase because the trophy"
    assert data[0].choices[0] == " is too big."


# --------------------------------------------------------------------------------------------------
# BEIR (not shipped): fixture in BEIR layout, and BoolQ as a retrieval set round trip


def _write_beir_fixture(folder: Path) -> None:
    (folder / "qrels").mkdir(parents=True)
    corpus = [
        {
            "_id": "4983",
            "title": "Microstructural development of human newborn cerebral white matter",
            "text": "Alterations of the architecture of cerebral white matter in the developing human brain.",
        },
        {
            "_id": "5836",
            "title": "",
            "text": "Induction of myelodysplasia by myeloid-derived suppressor cells.",
        },
        {"_id": "7912", "text": "A document with no title field."},
    ]
    queries = [
        {"_id": "1", "text": "0-dimensional biomaterials show inductive properties.", "metadata": {}},
        {"_id": "3", "text": "1,000 genomes project enables mapping of genetic sequence variation."},
        {"_id": "5", "text": "A query without relevance judgements."},
    ]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n1\t4983\t1\n3\t5836\t2\n3\t7912\t1\n"
    )


def test_beir_fixture_parses(tmp_path):
    _write_beir_fixture(tmp_path / "scifact")
    data = load_beir(path=tmp_path / "scifact")
    assert isinstance(data, RetrievalData)
    assert data.corpus["4983"]["title"].startswith("Microstructural")
    assert data.corpus["7912"] == {"title": "", "text": "A document with no title field."}
    assert data.queries == {
        "1": "0-dimensional biomaterials show inductive properties.",
        "3": "1,000 genomes project enables mapping of genetic sequence variation.",
    }  # like BEIR's loader, queries without qrels are dropped
    assert data.qrels == {"1": {"4983": 1}, "3": {"5836": 2, "7912": 1}}
    assert load_task("beir", path=tmp_path / "scifact" / "corpus.jsonl") == data
    one = load_task("scifact", path=tmp_path / "scifact", limit=1, seed=0)
    assert len(one.queries) == 1 and one.queries.keys() <= data.queries.keys() and one.corpus == data.corpus
    with pytest.raises(DataNotFoundError, match="dev.tsv"):
        load_beir(path=tmp_path / "scifact", split="dev")


def test_boolq_as_retrieval_round_trip(tmp_path):
    need("boolq")
    examples = load_boolq(source="local")
    data = boolq_as_retrieval(examples)
    assert len(data.queries) == 3270
    assert 0 < len(data.corpus) < 3270  # passages shared by several questions are de-duplicated
    ex = examples[0]
    (doc,) = data.qrels[f"q{ex.id}"]
    assert data.corpus[doc]["text"] == ex.meta["passage"]
    assert data.queries[f"q{ex.id}"] == ex.meta["question"]
    assert boolq_as_retrieval(need("boolq")) == data  # from a path too

    folder = write_beir(data, tmp_path / "boolq_beir")
    assert (folder / "qrels" / "test.tsv").read_text().splitlines()[0] == "query-id\tcorpus-id\tscore"
    back = load_beir(path=folder)
    assert back == data
    assert load_task("boolq_retrieval", source="local") == data


# --------------------------------------------------------------------------------------------------
# Hub path, with a stand-in `datasets` module returning rows in the hub's field layout (no network)


def test_hub_rows_convert(monkeypatch):
    import types

    calls = []
    hub_rows = {
        ("allenai/ai2_arc", "ARC-Easy", "test"): [
            {
                "id": "x1",
                "question": "Which is a gas?",
                "answerKey": "2",
                "choices": {"text": ["rock", "steam", "ice"], "label": ["1", "2", "3"]},
            }
        ],
        ("cais/mmlu", "all", "test"): [
            {
                "question": " What is 2+2? ",
                "subject": "elementary_mathematics",
                "choices": ["3", "4", "5", "6"],
                "answer": 1,
            }
        ],
        ("aps/super_glue", "rte", "validation"): [
            {"premise": "P.", "hypothesis": "H.", "idx": 7, "label": 0}
        ],
        ("BeIR/scifact", "corpus", "corpus"): [{"_id": "d1", "title": "T", "text": "doc"}],
        ("BeIR/scifact", "queries", "queries"): [
            {"_id": "q1", "text": "query"},
            {"_id": "q2", "text": "none"},
        ],
        ("BeIR/scifact-qrels", None, "test"): [{"query-id": "q1", "corpus-id": "d1", "score": 1}],
    }

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return hub_rows[(path, name, split)]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    (arc,) = load_task("arc_easy", source="hub")
    assert arc.context == "Question: Which is a gas?\nAnswer:" and arc.choices[arc.label] == " steam"
    (mmlu,) = load_task("mmlu", source="hub")
    assert mmlu.context.endswith("elementary mathematics.\n\nWhat is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:")
    assert mmlu.label == 1
    (rte,) = load_task("rte", source="hub")
    assert rte.label == 0 and rte.choices[rte.label] == " True"
    sci = load_task("scifact", source="hub")
    assert sci.queries == {"q1": "query"} and sci.qrels == {"q1": {"d1": 1}}
    with pytest.raises(HubUnavailableError, match="KeyError"):
        load_task("piqa", source="hub")  # the stand-in has no such dataset: the failure is reported
    assert ("baber/piqa", None, "validation") in calls


# --------------------------------------------------------------------------------------------------
# One spec per task: what evaluation reads from it, and the shared readers


def test_every_task_is_one_complete_spec():
    from prunelens.data.tasks.spec import register

    kinds = [s.kind for s in TASKS.values()]
    assert kinds == sorted(kinds, key=["mc", "gen", "retrieval", "ppl"].index), "registered kind by kind"
    for name, s in TASKS.items():
        assert s.name == name and s.description
        if s.kind == "mc":
            assert s.main_metric in ("acc", "acc_norm") and s.prompt is None and s.scorer is None
        elif s.kind == "gen":
            assert s.main_metric and callable(s.prompt) and isinstance(s.max_new_tokens, int)
            assert isinstance(s.stops, tuple) and isinstance(s.chat_stops, tuple)
            assert re.fullmatch(r"prunelens\.evaluation\.[\w.]+:\w+", s.scorer), s.scorer
            assert s.fewshot_split is None or s.fewshot_split in s.splits
        else:
            assert s.main_metric is None and s.scorer is None
    with pytest.raises(ValueError, match="registered twice"):
        register(TASKS["boolq"])


def test_json_lines_reader_reports_the_bad_line(tmp_path):
    from prunelens.data.tasks.readers import JSONLinesError, json_lines, read_jsonl

    assert list(json_lines(['{"a": 1}', "  ", "[2]"])) == [(1, {"a": 1}), (3, [2])]
    with pytest.raises(JSONLinesError) as err:
        list(json_lines(['{"a": 1}', "", "{bad"]))
    assert err.value.line == 3 and isinstance(err.value.error, json.JSONDecodeError)
    (tmp_path / "x.jsonl").write_text('{"a": 1}\n{bad\n')
    with pytest.raises(ValueError, match=r"x\.jsonl:2: not valid JSON Lines"):
        read_jsonl(tmp_path / "x.jsonl")
