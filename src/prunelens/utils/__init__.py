"""The lowest layer: helpers with no model code that every other package may import.

* :mod:`~prunelens.utils.errors` — :class:`~prunelens.utils.errors.InputError`, the one base of every
  refusal a user can act on;
* :mod:`~prunelens.utils.artifacts` — cheap checks of files read from disk (plans, configs, safetensors
  headers) before any work starts;
* :mod:`~prunelens.utils.io` — atomic writes of files and directories;
* :mod:`~prunelens.utils.kl` — the one softmax KL divergence;
* :mod:`~prunelens.utils.memory` — allocator tuning for long CPU loops;
* :mod:`~prunelens.utils.progress` — progress bars that stay quiet off a terminal;
* :mod:`~prunelens.utils.cli_output` — how the command line prints a refusal.
"""
