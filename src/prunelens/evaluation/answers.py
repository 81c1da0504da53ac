"""Answer extraction, normalisation and per-example metrics for generation tasks (pure functions).

Nothing here touches a model: every function maps strings to strings or numbers, so each can be tested
on hand-written outputs.

* **Stop sequences** - :func:`find_stop` / :func:`truncate_at_stop`: cut an output at the first stop string
  that follows some non-whitespace text.
* **GSM8K** - :func:`extract_number` finds the final numeric answer in a free-form solution
  (``#### 72``, ``The answer is 72``, ``\\boxed{72}``, ``$1,234.50``, else the last number),
  :func:`parse_number` turns it into a float, :func:`numbers_match` compares numerically.
* **NQ-Open** - SQuAD-style :func:`normalize_answer`, :func:`exact_match`, :func:`token_f1`, each taken as
  the maximum over the gold answers (:func:`max_over_golds`); :func:`first_line` picks the answer line.
* **Code** - :func:`extract_code` (fenced blocks or the raw completion), :func:`defines_function`,
  :func:`humaneval_source` (the program text to run for a HumanEval completion, robust to a model that
  repeats the signature).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

# A GSM8K data helper: it lives with the task's prompt builders (which use it), re-exported here.
from prunelens.data.tasks.generative import strip_gsm8k_calculations

__all__ = [
    "find_stop",
    "truncate_at_stop",
    "NUMBER_RE",
    "extract_number",
    "parse_number",
    "numbers_match",
    "normalize_answer",
    "first_line",
    "exact_match",
    "token_f1",
    "max_over_golds",
    "extract_code",
    "defines_function",
    "humaneval_source",
    "strip_gsm8k_calculations",
]


# --------------------------------------------------------------------------------------------------
# Stop sequences


def find_stop(text: str, stops: Sequence[str] | None) -> tuple[int, str | None]:
    """Position and value of the first stop string in ``text`` that has non-whitespace text before it.

    A stop string only counts once the output has started: an occurrence whose preceding text is empty or
    whitespace is skipped (``"\\nParis\\n"`` with stop ``"\\n"`` stops at the *second* newline, and a code
    completion that opens with ``"\\ndef f(...)"`` is not cut to nothing by the stop ``"\\ndef "``).
    Returns ``(len(text), None)`` when no stop string counts.
    """
    best, which = len(text), None
    if not stops:
        return best, which
    lead = len(text) - len(text.lstrip())  # first non-whitespace character
    for s in stops:
        if not s:
            continue
        # the occurrence must start after the first non-whitespace character
        pos = text.find(s, lead + 1) if lead < len(text) else -1
        if pos != -1 and pos < best:
            best, which = pos, s
    return best, which


def truncate_at_stop(text: str, stops: Sequence[str] | None) -> str:
    """``text`` cut before its first stop string (see :func:`find_stop` for which occurrences count)."""
    pos, _ = find_stop(text, stops)
    return text[:pos]


# --------------------------------------------------------------------------------------------------
# GSM8K: numbers

#: One number as written in a solution: optional sign, optional ``$``, digits with optional thousands
#: separators (``1,234``), optional decimals (``.50``); or a bare decimal (``.5``). A trailing full stop
#: is not a decimal point (``72.`` reads ``72``).
NUMBER_RE = re.compile(
    r"(?<![\w.])"  # not glued to a word or another number
    r"[-\u2212]?\s?\$?\s?"
    r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
    r"|(?<![\w.])[-\u2212]?\.\d+"
)

_MARKERS = [
    re.compile(r"####\s*(.*)", re.S),
    re.compile(r"\\boxed\s*\{([^{}]*)\}"),
    re.compile(
        r"(?:final\s+answer|the\s+answer|answer)\s*(?:is|was|would\s+be|will\s+be|[:=])\s*:?\s*(.*)",
        re.I | re.S,
    ),
]


def _first_number(s: str) -> str | None:
    m = NUMBER_RE.search(s)
    return m.group(0) if m else None


def _last_number(s: str) -> str | None:
    found = NUMBER_RE.findall(s)
    return found[-1] if found else None


def extract_number(text: str) -> str | None:
    """The final numeric answer of a free-form solution, as written (``"$1,234.50"``), or None.

    Tried in order, the first that yields a number wins:

    1. ``#### <number>`` (GSM8K's own format; the last ``####`` in the text);
    2. ``\\boxed{<number>}`` (the last one);
    3. ``... answer is <number>`` / ``answer: <number>`` / ``final answer = <number>`` (the last such
       phrase that is followed by a number; the first number after it);
    4. the last number anywhere in the text.

    Units and currency around the number are ignored (``"72 dollars"``, ``"$72"``, ``"72%"``), thousands
    separators are kept in the returned string and removed by :func:`parse_number`.
    """
    if not text:
        return None
    for pat in _MARKERS:
        matches = list(pat.finditer(text))
        for m in reversed(matches):
            num = _first_number(m.group(1)[:200])
            if num is not None:
                return num.strip()
    num = _last_number(text)
    return num.strip() if num is not None else None


def parse_number(s: str | None) -> float | None:
    """A number string as a float: drops ``$``, ``,``, spaces, ``%`` and trailing dots; unicode minus; None
    if it is not a number (``parse_number("$1,234.50") == 1234.5``)."""
    if s is None:
        return None
    t = str(s).strip().replace("\u2212", "-").replace("$", "").replace(",", "").replace(" ", "")
    t = t.rstrip("%").rstrip(".")
    try:
        return float(t)
    except ValueError:
        return None


def numbers_match(pred: str | float | None, target: str | float | None, tol: float = 1e-6) -> bool:
    """Whether two answers are the same number (``|a - b| <= tol * max(1, |b|)``); False if either is not a
    number."""
    a = pred if isinstance(pred, (int, float)) else parse_number(pred)
    b = target if isinstance(target, (int, float)) else parse_number(target)
    if a is None or b is None:
        return False
    return abs(a - b) <= tol * max(1.0, abs(b))


# --------------------------------------------------------------------------------------------------
# NQ-Open: SQuAD-style normalisation and metrics

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 answer normalisation: lowercase, remove punctuation, remove the articles a/an/the,
    collapse whitespace (the order of the official ``evaluate-v1.1.py``)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


_ANSWER_LABEL = re.compile(r"^\s*(?:a|answer)\s*:\s*", re.I)


def first_line(text: str) -> str:
    """The answer line of a short-answer output: the first non-empty line, stripped, without a leading
    ``A:`` / ``Answer:`` label."""
    for line in text.splitlines():
        if line.strip():
            return _ANSWER_LABEL.sub("", line.strip(), count=1).strip()
    return ""


def exact_match(pred: str, gold: str) -> float:
    """1.0 if the normalised strings are equal, else 0.0."""
    return float(normalize_answer(pred) == normalize_answer(gold))


def token_f1(pred: str, gold: str) -> float:
    """SQuAD token F1 between normalised ``pred`` and ``gold``: with ``c`` the size of the multiset
    intersection of their tokens, ``P = c/|pred|``, ``R = c/|gold|``, ``F1 = 2PR/(P+R)`` (0 when ``c = 0``).
    If either side normalises to no tokens, F1 is 1.0 when both do and 0.0 otherwise."""
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(g)
    return 2 * prec * rec / (prec + rec)


def max_over_golds(metric: Callable[[str, str], float], pred: str, golds: str | Iterable[str]) -> float:
    """``max(metric(pred, g) for g in golds)`` (a single gold string is accepted; no golds gives 0.0)."""
    if isinstance(golds, str):
        golds = [golds]
    return max((metric(pred, g) for g in golds), default=0.0)


# --------------------------------------------------------------------------------------------------
# Code

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def extract_code(text: str, entry_point: str | None = None, *, prose: bool = False) -> str:
    """The Python code in a model output.

    With fenced blocks (```` ```python ```` / ```` ```py ```` / bare ```` ``` ````; an unclosed last fence,
    as when generation ran out of tokens, runs to the end): the first block that defines ``entry_point`` if
    given and one does, else the first block tagged python (or untagged), else the first block.

    Without fences: the text itself (a raw completion), cut at a ``[DONE]`` marker (MBPP's prompt format).
    With ``prose=True`` (a chat answer, which may open with a sentence) the text starts at its first line
    that begins, at column 0, with ``import``, ``from``, ``def``, ``async def``, ``class`` or ``@`` (if any).
    """
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]
    if not blocks:
        code = text.split("[DONE]")[0]
        if prose:
            m = _CODE_START.search(code)
            if m:
                code = code[m.start() :]
        return code
    if entry_point:
        for _, code in blocks:
            if defines_function(code, entry_point):
                return code
    for lang, code in blocks:
        if lang in ("", "python", "py", "python3"):
            return code
    return blocks[0][1]


_CODE_START = re.compile(r"^(?:import\s|from\s|def\s|async\s+def\s|class\s|@)", re.M)


def defines_function(code: str, name: str) -> bool:
    """Whether ``code`` defines ``name`` at top level (``def name(`` or ``async def name(`` at column 0)."""
    return re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.M) is not None


def humaneval_source(prompt: str, output: str, entry_point: str, *, prose: bool = False) -> tuple[str, str]:
    """The code that goes after ``prompt`` for a HumanEval output, and how it was read.

    Returns ``(completion, mode)``; the program to run is ``prompt + completion`` (then the tests), as the
    reference harness builds it. ``prose`` as in :func:`extract_code` (True for chat answers).

    * ``"function"``: the code (a fenced block or raw text) defines ``entry_point`` at top level - the model
      repeated the signature. The completion is ``"\n" + code``: the prompt's own function (its docstring
      is a valid body) is then redefined by the model's, and the prompt's imports and helpers stay.
    * ``"body"``: otherwise the code is a function body appended to the prompt. A body whose first line is
      not indented at all (as chat answers often are) is indented by four spaces, every line.
    """
    code = extract_code(output, entry_point, prose=prose)
    if defines_function(code, entry_point):
        return "\n" + code, "function"
    body = code.lstrip("\n")
    if body.strip() and not body[0].isspace():
        code = "\n".join(("    " + ln) if ln.strip() else ln for ln in body.split("\n"))
    return code, "body"
