"""The one base class of every refusal a user can act on.

A mistake in what the user gave — an option, a config field, a file on disk — raises a subclass of
:class:`InputError`; the command line catches that class alone, prints its message on one line and exits
with code 2, before anything is written. Anything else (a ``ValueError`` from deep inside a library, a
bug of ours) keeps its traceback: reporting a bug as "bad input" would send the user looking for a
mistake they did not make.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input; the message names the file, option or field and what is allowed.

    A ``ValueError`` so that callers of the Python API who already catch ``ValueError`` keep working.
    """
