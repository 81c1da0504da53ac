"""Where local benchmark and calibration files are looked up.

prunelens reads task and calibration data from local files in their published formats, or from the
hub when online. Local files are found under a *data root*, searched in this order:

1. the ``PRUNELENS_DATA`` environment variable (one directory, or several joined by ``os.pathsep``);
2. ``./data`` in the current working directory;
3. ``../shared/data`` relative to the current working directory (the layout this project's CI uses).

Every loader reports the places it looked when a file is missing, so a user knows where to put it.
"""

from __future__ import annotations

import os
from pathlib import Path

from prunelens.utils.errors import InputError


class DataNotFoundError(FileNotFoundError, InputError):
    """A data set was not found locally (and could not be fetched); the message says where we looked."""


def data_roots() -> list[Path]:
    """Candidate data roots in search order (existing or not)."""
    roots: list[Path] = []
    env = os.environ.get("PRUNELENS_DATA")
    if env:
        roots.extend(Path(p).expanduser() for p in env.split(os.pathsep) if p)
    cwd = Path.cwd()
    roots.append(cwd / "data")
    roots.append(cwd.parent / "shared" / "data")
    return roots


def find_data_file(*relative: str) -> Path:
    """Return the first existing ``root/relative`` among :func:`data_roots`; try each ``relative`` in turn.

    Raises :class:`DataNotFoundError` listing every path tried.
    """
    tried: list[Path] = []
    for root in data_roots():
        for rel in relative:
            cand = root / rel
            tried.append(cand)
            if cand.exists():
                return cand
    listing = "\n  ".join(str(p) for p in tried)
    raise DataNotFoundError(
        f"could not find {' or '.join(relative)}; looked in:\n  {listing}\n"
        "Set PRUNELENS_DATA to a folder holding the file, pass an explicit path, or use a hub dataset name."
    )
