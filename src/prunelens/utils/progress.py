"""Progress bars (rich) that stay quiet when not on a terminal or when PRUNELENS_QUIET is set."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


class _Bar:
    def __init__(self, progress: Progress | None, task):
        self._p, self._t = progress, task

    def advance(self, n: int = 1) -> None:
        if self._p is not None:
            self._p.advance(self._t, n)

    def update(self, **kw) -> None:
        if self._p is not None:
            self._p.update(self._t, **kw)


def _enabled() -> bool:
    return not os.environ.get("PRUNELENS_QUIET") and sys.stderr.isatty()


def bar_columns() -> list:
    """The columns of every prunelens bar: description, bar, done/total, elapsed, time remaining."""
    return [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]


@contextmanager
def progress_bar(desc: str, total: int | None) -> Iterator[_Bar]:
    """A rich progress bar with ETA on stderr (no-op when stderr is not a terminal)."""
    if not _enabled():
        yield _Bar(None, None)
        return
    with Progress(*bar_columns(), console=console, transient=True) as p:
        yield _Bar(p, p.add_task(desc, total=total))
