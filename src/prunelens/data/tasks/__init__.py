"""Task data: real benchmark files in their published formats, as uniform records, and one
:class:`TaskSpec` per task that says everything about it (data, prompts, stops, budget, metric, scorer).

Every task reads its data from

* an explicit ``path`` (a file in the published format, or a folder holding it), or
* a local copy found under a data root (see :mod:`prunelens.data.paths`), in a folder named as in
  the project's shared data (``arc/``, ``boolq/``, ``mmlu_prerelease/`` ...), or
* the Hugging Face hub, by dataset id, through ``datasets.load_dataset`` (imported lazily; ``datasets``
  is an optional dependency: ``pip install 'prunelens[hub]'``).

``load_task(name, ...)`` tries local data first and falls back to the hub (``source="auto"``);
``source="local"`` or ``source="hub"`` pins one. A task whose data is missing raises
:class:`~prunelens.data.paths.DataNotFoundError`, whose message lists every path looked at and how to
provide the data.

Records (:mod:`.records`)
-------------------------
* :class:`MCExample` - multiple choice, already in log-likelihood scoring form: the model scores each
  continuation ``choices[i]`` after ``contexts[i]`` if ``contexts`` is set (WinoGrande partial
  evaluation), otherwise after the shared ``context``. ``label`` is the index of the correct choice.
  Templates follow lm-evaluation-harness (``lm_eval/tasks/<task>/*.yaml``): the continuation carries the
  harness's default target delimiter, a leading space.
* :class:`GenExample` - generation tasks (prompt, reference target, extra fields in ``meta``).
* :class:`RetrievalData` - BEIR-style corpus / queries / qrels.
* Perplexity tasks return text: WikiText-2 as one string (``"\\n\\n".join`` of the rows, exactly as
  the Hugging Face ``wikitext`` builder yields them - the standard SparseGPT/Wanda evaluation), C4 as a
  list of documents.

``limit=N`` selects a deterministic, seeded subset: ``random.Random(seed).sample`` of the record
indices, sorted back into file order (for retrieval sets: a subset of the queries; the corpus is kept).

Modules
-------
:mod:`.spec` (the :class:`TaskSpec` registry :data:`TASKS`, :func:`load_task`, hub access),
:mod:`.readers` (JSON / JSON Lines / Parquet / Arrow / gzipped text), and one module per kind holding its
tasks' readers and specs: :mod:`.multiple_choice`, :mod:`.generative`, :mod:`.retrieval`,
:mod:`.perplexity`. Adding a task is one ``register(...)`` entry in its kind's module.
"""

from __future__ import annotations

# Each kind module registers its tasks when imported (TASKS is kept ordered by kind, see spec.KIND_ORDER).
from prunelens.data.tasks import generative  # noqa: F401 - registers the generation tasks
from prunelens.data.tasks.multiple_choice import (
    ai2_question,
    hellaswag_preprocess,
    load_boolq,
    load_hellaswag,
    load_winogrande,
)
from prunelens.data.tasks.perplexity import read_wikitext_rows
from prunelens.data.tasks.records import GenExample, MCExample, RetrievalData, select_subset
from prunelens.data.tasks.retrieval import boolq_as_retrieval, load_beir, write_beir
from prunelens.data.tasks.spec import (
    TASKS,
    HubUnavailableError,
    TaskSpec,
    load_task,
    resolve_task_path,
    tasks_of_kind,
)

__all__ = [
    "MCExample",
    "GenExample",
    "RetrievalData",
    "TaskSpec",
    "TASKS",
    "HubUnavailableError",
    "load_task",
    "tasks_of_kind",
    "resolve_task_path",
    "select_subset",
    "ai2_question",
    "boolq_as_retrieval",
    "write_beir",
    "read_wikitext_rows",
    "hellaswag_preprocess",
    "load_boolq",
    "load_hellaswag",
    "load_winogrande",
    "load_beir",
]
