"""How the command line refuses bad input: one red line on stderr, exit code 2 (every command)."""

from __future__ import annotations

import typer
from rich.markup import escape

from prunelens.utils.progress import console as err_console  # the progress bars' console: one stderr stream


def one_line(message: str) -> str:
    """``message`` on one line: an exception text of several lines (a data error listing every path it
    tried, then a hint) has its lines stripped and joined, paths after a ``...:`` line by commas."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    out = ""
    for ln in lines:
        if not out:
            out = ln
        elif out.endswith(":"):
            out += " " + ln
        elif ln.startswith(("/", "./", "../", "~")):
            out += ", " + ln
        else:
            out += " " + ln
    return out


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` on one line, whatever the terminal width (soft wrap), and exit with ``code``.

    The message is escaped, so field names such as ``dropped_sublayers[0]`` are printed as given; a message
    of several lines (an exception's text) is joined into one (:func:`one_line`).
    """
    err_console.print(f"[bold red]error:[/] {escape(one_line(message))}", soft_wrap=True)
    raise typer.Exit(code)
