"""Checks on files read from disk (plans, configs, checkpoints), made before any work starts.

A bad artifact must give one line naming the file and the field, never a traceback from deep inside a
library after minutes of work. Everything here is cheap: it reads JSON and safetensors *headers*, not
weights.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from prunelens.utils.errors import InputError


class ArtifactError(InputError):
    """A file on disk is missing, malformed or inconsistent; the message names the file and the field."""

    def __init__(self, path: str | Path, message: str, field: str | None = None):
        self.path = Path(path)
        self.field = field
        where = f"{self.path}" + (f": field {field!r}" if field else "")
        super().__init__(f"{where}: {message}")


def read_json(path: str | Path) -> Any:
    """Parse a JSON file, or raise :class:`ArtifactError` saying where it is broken."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(path, "file does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(path, f"cannot be read ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArtifactError(
            path, f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None


_HEADER_LIMIT = 100 * 1024 * 1024  # the safetensors format caps its JSON header at 100 MB


def check_safetensors(path: str | Path) -> None:
    """Verify a ``.safetensors`` file is complete: a readable header whose tensors fit the file exactly.

    A download or copy that stopped early leaves a file shorter than its header promises; safetensors
    then fails on first use with an error that names neither the file nor the cause.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ArtifactError(
                    path, f"is incomplete or corrupt: {size} bytes, too short for a safetensors header"
                )
            (n,) = struct.unpack("<Q", head)
            if n > _HEADER_LIMIT or 8 + n > size:
                raise ArtifactError(
                    path, f"is incomplete or corrupt: its header claims {n:,} bytes, the file has {size:,}"
                )
            raw = fh.read(n)
    except OSError as exc:
        raise ArtifactError(path, f"cannot be read ({exc})") from None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ArtifactError(
            path, "is incomplete or corrupt: its safetensors header is not valid JSON"
        ) from None
    if not isinstance(header, dict):
        raise ArtifactError(path, "is incomplete or corrupt: its safetensors header is not a JSON object")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ArtifactError(
                path, "is incomplete or corrupt: tensor entry has no valid data_offsets", field=name
            )
        end = max(end, offsets[1])
    data = size - 8 - n
    if data != end:
        what = "incomplete (truncated)" if data < end else "corrupt (trailing bytes)"
        raise ArtifactError(path, f"is {what}: its tensors need {end:,} data bytes, the file holds {data:,}")


def check_checkpoint_files(directory: str | Path) -> None:
    """Check every safetensors file of a checkpoint directory, and its shard index when there is one."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.exists():
        data = read_json(index)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict):
            raise ArtifactError(index, "must map tensor names to shard files", field="weight_map")
        for shard in sorted(set(weight_map.values())):
            if not (directory / str(shard)).exists():
                raise ArtifactError(directory / str(shard), "is missing (named by the shard index)")
    for file in sorted(directory.glob("*.safetensors")):
        check_safetensors(file)
