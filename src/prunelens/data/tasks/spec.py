"""The task registry: :class:`TaskSpec` (everything about one task), :data:`TASKS`, and the entry points
:func:`load_task` / :func:`resolve_task_path` with the Hugging Face hub fallback.

The specs themselves live with their readers, one module per kind (:mod:`.multiple_choice`,
:mod:`.generative`, :mod:`.retrieval`, :mod:`.perplexity`), each of which :func:`register` s its entries;
importing :mod:`prunelens.data.tasks` imports them all, in that order.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelens.data.paths import DataNotFoundError, find_data_file
from prunelens.data.tasks.readers import read_records
from prunelens.data.tasks.records import RetrievalData, select_subset

__all__ = [
    "TaskSpec",
    "TASKS",
    "HubUnavailableError",
    "register",
    "get_spec",
    "tasks_of_kind",
    "row_task",
    "hf_parquet",
    "hub_dataset",
    "load_task",
    "resolve_task_path",
    "make_loader",
]


class HubUnavailableError(DataNotFoundError):
    """The hub could not be used: ``datasets`` not installed, offline mode, or the download failed."""


_DEFAULT_ALIASES = {"dev": "validation", "val": "validation", "valid": "validation"}


@dataclass(frozen=True)
class TaskSpec:
    """Everything about one task: where its data is, how to read it, and how it is evaluated.

    Data: ``local``: folder names tried under each data root; ``files(split)``: published file names
    inside such a folder (also tried inside a folder passed as ``path``); ``loader(path, split)`` reads a
    local file/folder; ``convert(rows, split)`` turns rows in the hub's field layout into records (used
    for the hub and by most local loaders); ``hub_id``/``hub_config`` name the Hugging Face dataset, whose
    split names equal ours unless ``hub_splits`` maps them.

    Evaluation (read by :mod:`prunelens.evaluation`): ``main_metric`` is the headline metric
    (multiple-choice and generation tasks). Generation tasks add ``prompt(example, shots, chat)`` (a
    string, or chat messages), the stop strings of plain prompts (``stops``) and of chat answers
    (``chat_stops``), the default budget ``max_new_tokens``, and ``scorer``: ``"module:function"``, a
    function of :mod:`prunelens.evaluation` named here and imported when scoring (this layer does not
    import evaluation code). The scorer maps ``(example, output text, chat)`` to record fields
    (``prediction``, ``score`` ...); with ``sandbox`` it returns ``(program, fields)`` and the program's
    run in the code sandbox gives the score. ``extra_metrics`` names further averages of the records
    (defined in :mod:`prunelens.evaluation.generative`). Few-shot examples come from ``fewshot_split``
    (None: the task has none); with ``fewshot_fallback`` that split is read locally only, and when it is
    missing the shots come from the ``fewshot_fallback`` split, never from the evaluated examples.
    """

    name: str
    kind: str  # 'mc' | 'gen' | 'retrieval' | 'ppl'
    local: tuple[str, ...]
    files: Callable[[str], list[str]]
    loader: Callable[[Path, str], Any]
    default_split: str
    splits: tuple[str, ...]
    hub_id: str | None = None
    hub_config: str | None = None
    hub_splits: Mapping[str, str] = field(default_factory=dict)
    convert: Callable[[Iterable[dict], str], Any] | None = None
    hub_loader: Callable[[TaskSpec, str, str], Any] | None = None
    aliases: Mapping[str, str] = field(default_factory=lambda: dict(_DEFAULT_ALIASES))
    description: str = ""
    marker_parent: bool = False  # files() name a marker file; the data is its folder (MMLU split, BEIR set)
    # evaluation
    main_metric: str | None = None
    prompt: Callable[..., Any] | None = None  # (example, shots, chat) -> str | list[dict]
    stops: tuple[str, ...] = ()
    chat_stops: tuple[str, ...] = ()
    max_new_tokens: int | None = None
    scorer: str | None = None  # "package.module:function", resolved by prunelens.evaluation
    sandbox: bool = False
    extra_metrics: tuple[str, ...] = ()
    fewshot_split: str | None = "train"
    fewshot_fallback: str | None = None

    @property
    def hub_split(self) -> str:
        """Hub split of the default split."""
        return self.hub_splits.get(self.default_split, self.default_split)

    def canonical_split(self, split: str | None) -> str:
        s = self.default_split if split is None else self.aliases.get(split, split)
        if s not in self.splits:
            raise ValueError(f"{self.name}: unknown split {split!r}; available: {', '.join(self.splits)}")
        return s

    def local_paths(self, split: str | None = None) -> list[str]:
        """Candidate paths relative to a data root, in search order."""
        s = self.canonical_split(split)
        return [f"{folder}/{name}" for folder in self.local for name in self.files(s)]

    def stops_for(self, chat: bool) -> list[str]:
        """The default stop strings of a chat answer (``chat``) or of a plain-prompt completion."""
        return list(self.chat_stops if chat else self.stops)


#: Every task by name, in registration order (multiple choice, generation, retrieval, perplexity).
TASKS: dict[str, TaskSpec] = {}


#: the order of :data:`TASKS` by kind, whatever order the kind modules happen to be imported in
KIND_ORDER = ("mc", "gen", "retrieval", "ppl")


def register(*specs: TaskSpec) -> None:
    """Add tasks to :data:`TASKS` (a name may be registered once), keeping TASKS ordered by kind."""
    for s in specs:
        if s.name in TASKS:
            raise ValueError(f"task {s.name!r} is registered twice")
        TASKS[s.name] = s
    ordered = sorted(TASKS.values(), key=lambda t: KIND_ORDER.index(t.kind))  # stable: file order per kind
    TASKS.clear()
    TASKS.update((t.name, t) for t in ordered)


def get_spec(name: str) -> TaskSpec:
    """The :class:`TaskSpec` of ``name``; ``KeyError`` listing the known tasks otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None


def tasks_of_kind(kind: str) -> list[str]:
    """The registered task names of one kind (``mc``, ``gen``, ``retrieval``, ``ppl``), sorted: what a
    refusal lists when an option needs, say, a multiple-choice task."""
    return sorted(name for name, spec in TASKS.items() if spec.kind == kind)


# --------------------------------------------------------------------------------------------------
# Building specs


def hf_parquet(split: str) -> list[str]:
    """Common Hugging Face parquet shard names for ``split``."""
    return [f"{split}-00000-of-00001.parquet", f"data/{split}-00000-of-00001.parquet"]


def _rows_loader(read: Callable[[Path, str], list[dict]], convert: Callable[[Iterable[dict], str], Any]):
    def load(path: Path, split: str) -> Any:
        return convert(read(path, split), split)

    return load


def _plain_read(path: Path, split: str) -> list[dict]:
    return read_records(path)


def row_task(
    name,
    local,
    files,
    convert,
    default_split,
    splits,
    hub_id,
    hub_config=None,
    read=_plain_read,
    *,
    kind: str,
    **kw,
) -> TaskSpec:
    """A task whose local loader is ``convert(read(path, split), split)`` (by default ``read`` reads the
    record file by extension) and whose hub rows go through the same ``convert``."""
    return TaskSpec(
        name=name,
        kind=kind,
        local=local,
        files=files,
        loader=_rows_loader(read, convert),
        convert=convert,
        default_split=default_split,
        splits=splits,
        hub_id=hub_id,
        hub_config=hub_config,
        **kw,
    )


# --------------------------------------------------------------------------------------------------
# Hub access


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_dataset(hub_id: str, config: str | None, split: str, **kwargs: Any):
    """``datasets.load_dataset(hub_id, config, split=split)``; :class:`HubUnavailableError` if it fails."""
    try:
        import datasets  # noqa: PLC0415 - optional dependency, imported lazily
    except ImportError as e:
        raise HubUnavailableError(
            f"cannot load {hub_id!r} from the Hugging Face hub: the `datasets` package is not installed "
            "(pip install 'prunelens[hub]')"
        ) from e
    if _env_true("HF_HUB_OFFLINE") or _env_true("HF_DATASETS_OFFLINE"):
        # datasets may still serve a cached copy in offline mode; say so if that fails too.
        note = " (offline mode is set: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE; only a cached copy can be used)"
    else:
        note = ""
    try:
        if config is None:
            return datasets.load_dataset(hub_id, split=split, **kwargs)
        return datasets.load_dataset(hub_id, config, split=split, **kwargs)
    except Exception as e:  # network errors, missing configs/splits, offline without cache ...
        cfg = f", config {config!r}" if config else ""
        raise HubUnavailableError(
            f"could not load {hub_id!r}{cfg}, split {split!r} from the Hugging Face hub{note}: "
            f"{type(e).__name__}: {e}"
        ) from e


def _load_from_hub(spec: TaskSpec, split: str, hub_id: str | None) -> Any:
    hid = hub_id or spec.hub_id
    if hid is None:
        raise HubUnavailableError(
            f"{spec.name}: no hub dataset is known for this task; pass path= or hub_id="
        )
    if spec.hub_loader is not None:
        return spec.hub_loader(spec, split, hid)
    assert spec.convert is not None
    rows = hub_dataset(hid, spec.hub_config, spec.hub_splits.get(split, split))
    return spec.convert(rows, split)


# --------------------------------------------------------------------------------------------------
# Public entry points


def _how_to_provide(spec: TaskSpec, split: str) -> str:
    hub = (
        f"or load it from the hub ({spec.hub_id}{'/' + spec.hub_config if spec.hub_config else ''}) with "
        "source='hub' (needs `pip install 'prunelens[hub]'` and network)"
        if spec.hub_id
        else "(no hub copy is registered for this task)"
    )
    example = f"{spec.local[0]}/{spec.files(split)[0]}" if spec.local else "<folder>"
    return (
        f"To provide {spec.name} ({split}): put the published file(s) under a data root as {example} "
        f"(data roots: $PRUNELENS_DATA, ./data, ../shared/data), pass path=<file or folder>, {hub}."
    )


def resolve_task_path(name: str, split: str | None = None, path: str | os.PathLike | None = None) -> Path:
    """The local file (or folder, for MMLU and BEIR sets) a task would be read from.

    With ``path``: that file, or the first published file name found inside that folder. Without:
    the first candidate of :meth:`TaskSpec.local_paths` under the data roots. Raises
    :class:`DataNotFoundError` listing every path tried and how to provide the data.
    """
    spec = get_spec(name)
    s = spec.canonical_split(split)
    names = spec.files(s)
    if path is not None:
        p = Path(path).expanduser()
        if p.is_file():
            return p
        tried = [p / n for n in names] if p.is_dir() else [p]
        for c in tried:
            if c.exists():
                return c.parent if spec.marker_parent else c
        listing = "\n  ".join(map(str, tried))
        raise DataNotFoundError(
            f"{spec.name} ({s}): not found; looked in:\n  {listing}\n{_how_to_provide(spec, s)}"
        )
    try:
        found = find_data_file(*spec.local_paths(s))
    except DataNotFoundError as e:
        raise DataNotFoundError(f"{spec.name} ({s}): {e}\n{_how_to_provide(spec, s)}") from None
    return found.parent if spec.marker_parent else found


def _apply_limit(spec: TaskSpec, data: Any, limit: int | None, seed: int) -> Any:
    if limit is None:
        return data
    if isinstance(data, RetrievalData):
        qids = select_subset(list(data.queries), limit, seed)
        return RetrievalData(
            corpus=data.corpus,
            queries={q: data.queries[q] for q in qids},
            qrels={q: data.qrels[q] for q in qids},
        )
    if isinstance(data, str):
        warnings.warn(
            f"{spec.name}: limit does not apply to a single perplexity text; "
            "limit the number of windows instead",
            stacklevel=3,
        )
        return data
    return select_subset(data, limit, seed)


def load_task(
    name: str,
    path: str | os.PathLike | None = None,
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    *,
    source: str = "auto",
    hub_id: str | None = None,
) -> Any:
    """Load task ``name`` (a key of :data:`TASKS`).

    Returns ``list[MCExample]`` ('mc'), ``list[GenExample]`` ('gen'), :class:`RetrievalData`
    ('retrieval'), ``str`` (WikiText-2) or ``list[str]`` (C4 documents).

    ``path``: explicit file or folder (local only). ``split``: default per task (``dev``/``val`` are
    aliases of ``validation``, except MMLU's ``dev`` few-shot split). ``limit``/``seed``: deterministic
    subset (see :func:`select_subset`). ``source``: ``"auto"`` (local, then hub), ``"local"`` or
    ``"hub"``; ``hub_id`` overrides the registered hub dataset.
    """
    spec = get_spec(name)
    s = spec.canonical_split(split)
    if source not in ("auto", "local", "hub"):
        raise ValueError(f"source must be 'auto', 'local' or 'hub', got {source!r}")
    if source == "hub":
        if path is not None:
            raise ValueError("path= reads local data; do not combine it with source='hub'")
        data = _load_from_hub(spec, s, hub_id)
    else:
        try:
            p = resolve_task_path(name, s, path)
        except DataNotFoundError as local_err:
            if source == "local" or path is not None:
                raise
            try:
                data = _load_from_hub(spec, s, hub_id)
            except HubUnavailableError as hub_err:
                raise DataNotFoundError(f"{local_err}\nHub fallback failed: {hub_err}") from hub_err
        else:
            data = spec.loader(p, s)
    return _apply_limit(spec, data, limit, seed)


def make_loader(name: str) -> Callable[..., Any]:
    """``load_<name>(path=None, split=None, limit=None, seed=0, *, source="auto", hub_id=None)``:
    :func:`load_task` bound to one task."""
    spec = TASKS[name]

    def loader(
        path: str | os.PathLike | None = None,
        split: str | None = None,
        limit: int | None = None,
        seed: int = 0,
        *,
        source: str = "auto",
        hub_id: str | None = None,
    ) -> Any:
        return load_task(name, path=path, split=split, limit=limit, seed=seed, source=source, hub_id=hub_id)

    loader.__name__ = loader.__qualname__ = f"load_{name}"
    loader.__doc__ = (
        f"Load {spec.description or name} ({spec.kind}; default split {spec.default_split!r}). "
        f"Same arguments as :func:`load_task`."
    )
    return loader
