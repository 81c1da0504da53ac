"""Perplexity text: WikiText-2 (one string) and C4 (a list of documents).

WikiText-2 is ``"\\n\\n".join`` of the rows, exactly as the Hugging Face ``wikitext`` builder yields them -
the standard SparseGPT/Wanda evaluation.
"""

from __future__ import annotations

import os
from pathlib import Path

from prunelens.data.tasks.readers import read_records
from prunelens.data.tasks.spec import TaskSpec, hub_dataset, register

__all__ = ["read_wikitext_rows"]


_WIKI_NAMES = {"test": "test", "validation": "valid", "train": "train"}


def _wikitext_files(split: str) -> list[str]:
    s = _WIKI_NAMES[split]
    return [
        f"wiki.{s}.raw",
        f"wikitext-2-raw/wiki.{s}.raw",
        f"wiki.{s}.tokens",
        f"wikitext-2/wiki.{s}.tokens",
        f"{s}.txt",
    ]


def read_wikitext_rows(path: str | os.PathLike) -> list[str]:
    """The rows the Hugging Face ``wikitext`` builder yields for a WikiText file: each line with its
    newline, and ``""`` for whitespace-only lines."""
    with open(path, encoding="utf-8") as f:
        return [line if line.strip() else "" for line in f]


def _read_wikitext(path: Path, split: str) -> str:
    # Standard LLM perplexity evaluation (GPTQ/SparseGPT/Wanda): "\n\n".join(load_dataset(...)["text"]).
    return "\n\n".join(read_wikitext_rows(path))


_C4_SHARD = {"validation": "c4-validation.00000-of-00008.json.gz", "train": "c4-train.00000-of-01024.json.gz"}


def _c4_files(split: str) -> list[str]:
    short = {"validation": "val", "train": "train"}[split]
    return [_C4_SHARD[split], f"en/{_C4_SHARD[split]}", f"c4_{short}.json", "c4_demo.json"]


def _read_c4(path: Path, split: str) -> list[str]:
    return [r["text"] for r in read_records(path)]


def _hub_wikitext(spec: TaskSpec, split: str, hub_id: str) -> str:
    return "\n\n".join(hub_dataset(hub_id, spec.hub_config, split)["text"])


def _hub_c4(spec: TaskSpec, split: str, hub_id: str) -> list[str]:
    ds = hub_dataset(hub_id, None, split, data_files={split: f"en/{_C4_SHARD[split]}"})
    return list(ds["text"])


# --------------------------------------------------------------------------------------------------
# Specs

_WIKITEXT_FOLDERS = ("wikitext2_raw", "wikitext-2-raw", "wikitext2", "wikitext-2", "wikitext2_tokens")

# fmt: off
register(
    TaskSpec("wikitext2", "ppl", _WIKITEXT_FOLDERS, _wikitext_files, _read_wikitext, "test",
             ("train", "validation", "test"), hub_id="Salesforce/wikitext", hub_config="wikitext-2-raw-v1",
             hub_loader=_hub_wikitext,
             description="WikiText-2 text ('\\n\\n'.join of rows); raw files preferred over tokenized"),
    TaskSpec("c4", "ppl", ("c4",), _c4_files, _read_c4, "validation", ("train", "validation"),
             hub_id="allenai/c4", hub_loader=_hub_c4,
             description="C4 en documents (first shard; falls back to the c4_demo.json sample)"),
)
# fmt: on
