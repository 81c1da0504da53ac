"""``prunelens cache``: list or clear the converted GGUF checkpoints."""

from __future__ import annotations

import typer

from prunelens.cli.common import fail, out_console


def cache_cmd(
    action: str = typer.Argument("list", help="list: show converted GGUF checkpoints; clear: remove them."),
):
    """The cache of converted GGUF files (each GGUF is de-quantised once, then loads as safetensors)."""
    from prunelens.models.loading import clear_gguf_cache, gguf_cache_root

    root = gguf_cache_root()
    if action == "list":
        entries = (
            sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            if root.exists()
            else []
        )
        for p in entries:
            size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            out_console.print(f"{p}  ({size / 2**20:.0f} MiB)", soft_wrap=True)
        if not entries:
            out_console.print(f"no converted GGUF files in {root}")
    elif action == "clear":
        removed = clear_gguf_cache()
        out_console.print(f"removed {len(removed)} converted checkpoint(s) from {root}")
    else:
        fail(f"unknown cache action {action!r}; choose list or clear")
