"""Atomic writes: an interrupted run never leaves a half-written file or checkpoint behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prunelens.utils.errors import InputError


class OutputExistsError(FileExistsError, InputError):
    """The output directory exists and is not empty, and overwriting was not asked for."""


def check_output_dir(out: str | Path, overwrite: bool = False) -> Path:
    """Validate an output directory *before* any work:
    refuse an existing non-empty one unless ``overwrite``."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise OutputExistsError(f"output path {out} exists and is not a directory")
        if any(out.iterdir()) and not overwrite:
            raise OutputExistsError(
                f"output directory {out} exists and is not empty (pass --overwrite to replace it)"
            )
    return out


@contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``out`` in one rename.

    On an exception (or Ctrl-C) the temporary directory is removed and ``out`` is left as it was.
    """
    out = check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")
