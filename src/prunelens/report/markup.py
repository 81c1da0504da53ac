"""HTML pieces the report's sections share: escaping, inline images, the style sheet, number formats and
the verdict badge."""

from __future__ import annotations

import base64
import functools
import html
from pathlib import Path
from typing import Any

from prunelens.studies import verdicts as V

__all__ = ["KIND_LABEL", "VERDICT_CLASS", "css", "esc", "img", "num", "badge"]

KIND_LABEL = {"mc": "multiple choice", "retrieval": "retrieval", "gen": "generation", "ppl": "perplexity ↓"}
#: the CSS class of each grade's badge and of a retained fraction judged on its point value
VERDICT_CLASS = {V.SAFE: "safe", V.CARE: "care", V.UNSAFE: "unsafe"}


@functools.cache
def css() -> str:
    """The page's style sheet, ``report.css`` next to this module (shipped as package data)."""
    return Path(__file__).with_name("report.css").read_text(encoding="utf-8")


def esc(s: Any) -> str:
    """``s`` as HTML text or attribute value (``None`` is empty)."""
    return html.escape("" if s is None else str(s), quote=True)


def img(path: Path, alt: str) -> str:
    """A PNG inlined as a data URI (the page is one self-contained file)."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'


def num(v: float) -> str:
    return f"{v:.2f}" if abs(v) >= 10 else f"{v:.3f}"


def badge(v: str) -> str:
    """A grade as a coloured badge."""
    return f'<span class="badge {VERDICT_CLASS.get(v, "none")}">{esc(v)}</span>'
