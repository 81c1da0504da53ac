"""Answer extraction, normalisation and per-example metrics (prunelens.evaluation.answers): pure functions."""

from __future__ import annotations

import pytest

from prunelens.evaluation.answers import (
    defines_function,
    exact_match,
    extract_code,
    extract_number,
    find_stop,
    first_line,
    humaneval_source,
    max_over_golds,
    normalize_answer,
    numbers_match,
    parse_number,
    strip_gsm8k_calculations,
    token_f1,
    truncate_at_stop,
)

# --------------------------------------------------------------------------------------------------
# Stop sequences


def test_truncate_at_first_stop():
    assert truncate_at_stop("Paris\nQ: next", ["\n"]) == "Paris"
    assert truncate_at_stop("abc STOP def END", ["END", "STOP"]) == "abc "  # earliest occurrence wins
    assert truncate_at_stop("no stop here", ["\n\n"]) == "no stop here"
    assert truncate_at_stop("abc", []) == "abc" and truncate_at_stop("abc", None) == "abc"
    assert find_stop("x\ny", ["\n"]) == (1, "\n")
    assert find_stop("xy", ["\n"]) == (2, None)


def test_stops_before_any_content_do_not_count():
    assert truncate_at_stop("\nParis\nmore", ["\n"]) == "\nParis"
    assert truncate_at_stop("\n\n  \n", ["\n"]) == "\n\n  \n"
    # a completion that opens by repeating the signature is not cut to nothing
    code = "\ndef f(x):\n    return x\n\ndef g():\n    pass"
    assert truncate_at_stop(code, ["\ndef "]) == "\ndef f(x):\n    return x\n"
    # HumanEval-style completion stops at the next top-level statement
    comp = "    return a + b\n\n\nprint(add(1, 2))\n"
    stops = ["\ndef ", "\nclass ", "\nif __name__", "\nprint("]
    assert truncate_at_stop(comp, stops) == "    return a + b\n\n"


# --------------------------------------------------------------------------------------------------
# GSM8K numbers


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
        ("She has 5 + 3 = 8 apples. #### 1,234", "1,234"),
        ("So she earns 10 * 2 = 20 dollars.\nThe answer is 72.", "72"),
        ("The final answer is $1,234.50", "$1,234.50"),
        ("The final answer is: 18", "18"),
        ("Answer: -5 degrees", "-5"),
        ("He pays 3 times, so the total is \\boxed{42} dollars overall, 7 each.", "42"),
        ("First 12 cookies, then 6 more, 18 in total.", "18"),
        ("It costs 0.5 per item, 3 items give 1.5", "1.5"),
        ("The answer is 72. Then we also have 3 more steps and 9.", "72"),  # the marker beats the last number
        ("There are 25% more, so 125 people.", "125"),
        ("the result is 7 apples\nThe answer is 1,000,000", "1,000,000"),
        ("#### 72\n\nQuestion: another 33", "72"),
        ("The answer is unclear, but 12 remain.", "12"),  # marker without a number: fall back to last number
        ("No numbers at all", None),
        ("", None),
    ],
)
def test_extract_number(text, expected):
    assert extract_number(text) == expected


def test_parse_and_compare_numbers():
    assert parse_number("$1,234.50") == 1234.5
    assert parse_number("72.") == 72.0
    assert parse_number("\u22125") == -5.0
    assert parse_number("18%") == 18.0
    assert parse_number("abc") is None and parse_number(None) is None
    assert numbers_match("72.0", "72") and numbers_match("$1,234", "1234") and numbers_match(72, "72")
    assert not numbers_match("72.5", "72") and not numbers_match(None, "72") and not numbers_match("x", "1")
    # end to end: extraction then numeric comparison
    assert numbers_match(extract_number("so the answer is $1,234.00 total"), "1234")


def test_strip_gsm8k_calculations():
    sol = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"
    assert strip_gsm8k_calculations(sol) == "Natalia sold 48/2 = 24 clips in May.\n#### 72"


# --------------------------------------------------------------------------------------------------
# NQ-Open: SQuAD normalisation, EM and F1


def test_normalize_answer():
    assert normalize_answer("The Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("  A  cat, an apple; the END. ") == "cat apple end"
    assert normalize_answer("Theatre") == "theatre"  # articles only as whole words
    assert normalize_answer("U.S.") == "us"


def test_exact_match_and_f1():
    assert exact_match("the Eiffel tower.", "Eiffel Tower") == 1.0
    assert exact_match("Eiffel", "Eiffel Tower") == 0.0
    # F1: pred "eiffel tower paris" vs gold "eiffel tower": P=2/3, R=1, F1=0.8
    assert token_f1("The Eiffel Tower, Paris", "Eiffel Tower") == pytest.approx(0.8)
    # tokens are a multiset: "x x y" vs "x y y" share {x, y} -> P = R = 2/3
    assert token_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert token_f1("", "") == 1.0 and token_f1("the", "") == 1.0  # both normalise to nothing
    assert token_f1("", "Paris") == 0.0 and token_f1("London", "Paris") == 0.0
    golds = ["Barack Obama", "Obama", "President Obama"]
    assert max_over_golds(exact_match, "obama", golds) == 1.0
    # vs "Obama": P = 1/2, R = 1 -> 2/3 (beats 1/2 against "Barack Obama" and "President Obama")
    assert max_over_golds(token_f1, "Michelle Obama", golds) == pytest.approx(2 / 3)
    assert max_over_golds(exact_match, "x", []) == 0.0
    assert max_over_golds(exact_match, "Paris", "paris") == 1.0


def test_first_line():
    assert first_line("\n  Paris \nThe capital of France") == "Paris"
    assert first_line("A: 1945\nQ: next?") == "1945"
    assert first_line("Answer: George Washington") == "George Washington"
    assert first_line("   \n\n") == ""


# --------------------------------------------------------------------------------------------------
# Code extraction


def test_extract_code_fenced_and_raw():
    out = "Here you go:\n```python\ndef f(x):\n    return x + 1\n```\nThis adds one."
    assert extract_code(out) == "def f(x):\n    return x + 1\n"
    two = "```text\nnot code\n```\n```py\ndef g():\n    return 2\n```"
    assert extract_code(two) == "def g():\n    return 2\n"
    pick = "```python\nimport os\n```\n```python\ndef target(a):\n    return a\n```"
    assert extract_code(pick, "target") == "def target(a):\n    return a\n"
    unclosed = "```python\ndef f():\n    return 1"  # ran out of tokens inside the block
    assert extract_code(unclosed) == "def f():\n    return 1"
    assert extract_code("    return x\n") == "    return x\n"  # raw completion
    assert extract_code("def f():\n    return 1\n[DONE]\n junk") == "def f():\n    return 1\n"
    chat = "Sure! This function works:\ndef f(x):\n    return x"
    assert extract_code(chat, prose=True) == "def f(x):\n    return x"
    assert extract_code(chat) == chat


def test_defines_function():
    assert defines_function("import math\ndef add(a, b):\n    return a + b", "add")
    assert defines_function("async def add (a):\n    pass", "add")
    assert not defines_function("    def add(a, b):\n        pass", "add")  # nested, not top level
    assert not defines_function("def add_one(a):\n    pass", "add")


PROMPT = 'from typing import List\n\n\ndef add(a: int, b: int) -> int:\n    """Add two numbers."""\n'


def test_humaneval_source_body_and_repeated_signature():
    comp, mode = humaneval_source(PROMPT, "    return a + b\n", "add")
    assert mode == "body" and comp == "    return a + b\n"
    comp, mode = humaneval_source(PROMPT, "```python\nreturn a + b\n```", "add", prose=True)
    assert mode == "body" and comp == "    return a + b\n"  # unindented body is indented
    full = "```python\nfrom typing import List\n\ndef add(a: int, b: int) -> int:\n    return a + b\n```"
    comp, mode = humaneval_source(PROMPT, full, "add", prose=True)
    assert mode == "function" and comp.startswith("\nfrom typing import List")
    # the assembled program is valid Python and the model's definition wins
    ns: dict = {}
    exec(PROMPT + comp, ns)  # noqa: S102 - our own test string
    assert ns["add"](2, 3) == 5
    comp, mode = humaneval_source(PROMPT, "def add(a, b):\n    return a + b\n", "add")  # raw repeat
    ns = {}
    exec(PROMPT + comp, ns)  # noqa: S102
    assert mode == "function" and ns["add"](1, 1) == 2
