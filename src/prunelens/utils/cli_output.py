"""How the command line refuses bad input: one red line on stderr, exit code 2 (every command)."""

from __future__ import annotations

import typer
from rich.markup import escape

from prunelens.utils.progress import console as err_console  # the progress bars' console: one stderr stream


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` on one line, whatever the terminal width (soft wrap), and exit with ``code``.

    The message is escaped, so field names such as ``dropped_sublayers[0]`` are printed as given.
    """
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)
