"""``python -m prunelens`` is the ``prunelens`` command."""

from prunelens.cli import app

app(prog_name="prunelens")
