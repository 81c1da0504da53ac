"""prunelens command line: thin wrappers that parse arguments, call the library and say where results went.

    prunelens demo --out runs/demo                 # the main job on the embedded model
    prunelens prune drop [MODEL] --target attn --n 8 --out DIR
    prunelens prune sparsify [MODEL] --method wanda --sparsity 0.5 --out DIR
    prunelens info MODEL_OR_DIR

Bad input (unknown model, impossible counts or sparsities, an existing output directory) exits with
code 2 and a one-line reason, before anything is written.

What lives where: this module builds the typer app and registers every command (:data:`COMMANDS`).
:mod:`.common` holds the shared options, the steps before the library runs (threads, model resolve and
load, calibration and output-directory checks) and :func:`~.common.refusals_exit_2`, the one place where
an :class:`~prunelens.utils.errors.InputError` becomes one line and exit code 2; :mod:`.render` holds the
tables that show results. One module per command group: :mod:`.prune` (prune drop, prune sparsify),
:mod:`.evaluate` (eval, compare), :mod:`.study` (study, sweep, report), :mod:`.quantize`, :mod:`.repair`,
:mod:`.analyze`,
:mod:`.info` (info, demo) and :mod:`.cache`.
"""

from __future__ import annotations

import os

import typer

from prunelens.cli import analyze, cache, evaluate, info, prune, quantize, repair, study
from prunelens.cli.common import refusals_exit_2

app = typer.Typer(
    help=(
        "prunelens: prune LLMs and measure when pruning works, and why (hidden → logit → probability space)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
prune_app = typer.Typer(
    help="Prune a model: drop sublayers/blocks, or sparsify weights.", no_args_is_help=True
)
app.add_typer(prune_app, name="prune")

#: every command, as (group, name, function); each is wrapped by refusals_exit_2, the one place where bad
#: input (an InputError from anywhere below) becomes one line on stderr and exit code 2
COMMANDS = (
    (prune_app, "drop", prune.prune_drop),
    (prune_app, "sparsify", prune.prune_sparsify),
    (app, "info", info.info),
    (app, "demo", info.demo),
    (app, "eval", evaluate.eval_cmd),
    (app, "compare", evaluate.compare),
    (app, "study", study.study),
    (app, "report", study.report),
    (app, "sweep", study.sweep),
    (app, "quantize", quantize.quantize),
    (app, "repair", repair.repair),
    (app, "cache", cache.cache_cmd),
    (app, "analyze", analyze.analyze),
)
for group, name, command in COMMANDS:
    group.command(name)(refusals_exit_2(command))


def main() -> None:  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
