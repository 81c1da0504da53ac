"""File readers shared by the task loaders and the calibration sources.

* :func:`open_text` / :func:`read_text` - UTF-8 text, gunzipped on the fly for ``*.gz`` names;
* :func:`json_lines` - the values of the non-blank lines of a JSON Lines text, with the line number of a
  line that does not parse (:class:`JSONLinesError`), so each caller words its own error;
* :func:`read_jsonl`, :func:`read_json_any`, :func:`read_table` (Parquet / Arrow IPC) and
  :func:`read_records` (any of them, by extension) - record files as lists of row dicts.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prunelens.utils.errors import InputError

__all__ = [
    "JSONLinesError",
    "open_text",
    "read_text",
    "json_lines",
    "read_jsonl",
    "read_json_any",
    "read_table",
    "read_records",
]


class JSONLinesError(InputError):
    """Line ``line`` (1-based) of a JSON Lines text is not JSON; ``error`` is the decoder's error."""

    def __init__(self, line: int, error: json.JSONDecodeError) -> None:
        super().__init__(f"line {line}: {error}")
        self.line = line
        self.error = error


def open_text(path: str | os.PathLike, *, decompress: bool = True) -> io.TextIOBase:
    """``path`` opened as UTF-8 text; a ``.gz`` file is gunzipped unless ``decompress=False``."""
    path = Path(path)
    if decompress and path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_text(path: str | os.PathLike, *, decompress: bool = True) -> str:
    """The whole text of ``path`` (see :func:`open_text`)."""
    with open_text(path, decompress=decompress) as f:
        return f.read()


def json_lines(lines: Iterable[str]) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for each non-blank line, lazily; :class:`JSONLinesError` on a bad line."""
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise JSONLinesError(n, e) from e
            yield n, value


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON Lines file, plain or gzipped; ``ValueError`` names the file and line of a bad row."""
    with open_text(path) as f:
        try:
            return [row for _, row in json_lines(f)]
        except JSONLinesError as e:
            raise ValueError(f"{path}:{e.line}: not valid JSON Lines ({e.error})") from e.error


def read_json_any(path: Path) -> list[dict]:
    """A JSON array (optionally ``{"data": [...]}``) or JSON Lines, plain or gzipped."""
    text = read_text(path)
    stripped = text.lstrip()
    if stripped.startswith("["):
        return json.loads(stripped)
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except json.JSONDecodeError:  # JSON Lines
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        if isinstance(obj, dict) and isinstance(obj.get("data"), list):
            return obj["data"]
        return [obj]
    return []


def _pyarrow():
    try:
        import pyarrow  # noqa: F401
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError as e:  # pragma: no cover - pyarrow is present wherever pandas is
        raise ImportError("reading .parquet/.arrow task files needs pyarrow (pip install pyarrow)") from e
    import pyarrow as pa

    return pa


def read_table(path: Path) -> list[dict]:
    """Parquet, or an Arrow IPC stream/file (what ``datasets.save_to_disk`` writes), as row dicts."""
    pa = _pyarrow()
    if path.suffix == ".parquet":
        return pa.parquet.read_table(path).to_pylist()
    with open(path, "rb") as f:
        data = f.read()
    try:
        table = pa.ipc.open_stream(pa.BufferReader(data)).read_all()
    except pa.ArrowInvalid:
        table = pa.ipc.open_file(pa.BufferReader(data)).read_all()
    return table.to_pylist()


def read_records(path: Path) -> list[dict]:
    """Rows of a record file by extension: .jsonl(.gz), .json(.gz), .parquet, .arrow."""
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        return read_jsonl(path)
    if name.endswith((".json", ".json.gz")):
        return read_json_any(path)
    if name.endswith((".parquet", ".arrow")):
        return read_table(path)
    raise ValueError(f"{path}: unsupported file type (expected .jsonl, .json, .parquet or .arrow)")
