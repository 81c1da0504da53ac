"""The study directory: unit markers (fingerprints of finished units), variant and evaluation folders, and
the study record ``study.json`` (the config that wrote the directory, the versions, the time).

Every file is written atomically; a killed run loses at most the unit in progress.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from prunelens import __version__
from prunelens.studies.config import DENSE, StudyConfig
from prunelens.studies.units import Unit
from prunelens.utils.io import OutputExistsError, atomic_write_json

__all__ = ["Store", "config_for_disk", "prepare_study_dir"]


class Store:
    """The study directory: unit markers, results, and the study record."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def marker(self, unit: Unit) -> Path:
        return self.root / "units" / unit.filename

    def done(self, unit: Unit) -> bool:
        path = self.marker(unit)
        if not path.exists():
            return False
        try:
            return json.loads(path.read_text()).get("fingerprint") == unit.fingerprint
        except json.JSONDecodeError:
            return False

    def mark(self, unit: Unit, seconds: float, **extra: Any) -> None:
        atomic_write_json(
            self.marker(unit), {"unit": unit.id, "fingerprint": unit.fingerprint, "seconds": seconds, **extra}
        )

    def variant_dir(self, name: str) -> Path:
        return self.root / "variants" / name

    def eval_dir(self, name: str) -> Path:
        return self.root / "eval" / name


def config_for_disk(cfg: StudyConfig) -> dict[str, Any]:
    d = cfg.to_dict()
    d["variants"] = [v for v in d["variants"] if v["name"] != DENSE]
    return d


def prepare_study_dir(cfg: StudyConfig, out: str | Path, overwrite: bool) -> Store:
    """Create or reopen a study directory; refuse one written by another config unless ``overwrite``."""
    out = Path(out)
    record = out / "study.json"
    if out.exists() and any(out.iterdir()):
        if not record.exists():
            if not overwrite:
                raise OutputExistsError(
                    f"{out} exists, is not empty and is not a prunelens study (pass --overwrite)"
                )
        else:
            old = json.loads(record.read_text()).get("config")
            if old != config_for_disk(cfg) and not overwrite:
                raise OutputExistsError(
                    f"{out} holds a study with another config; "
                    "pass --overwrite to re-run what the new config changes "
                    "(finished units whose inputs are unchanged are kept)"
                )
    out.mkdir(parents=True, exist_ok=True)
    import torch as _torch
    import transformers

    atomic_write_json(
        record,
        {
            "config": config_for_disk(cfg),
            "versions": {
                "prunelens": __version__,
                "torch": _torch.__version__,
                "transformers": transformers.__version__,
            },
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    )
    return Store(out)
