"""Models: loading them, knowing where each family keeps its parts, and reading what flows through them.

* :mod:`~prunelens.models.loading` — ``(model, tokenizer)`` from an alias, hub id, directory, ``.gguf`` file
  or pruned checkpoint (its plan re-applied), with the GGUF conversion cache;
* :mod:`~prunelens.models.gguf_header` — a GGUF file's header checked before it is converted;
* :mod:`~prunelens.models.adapter` — one adapter table for every supported decoder family: blocks,
  sublayers, norms, unembedding, and applying a plan's structure;
* :mod:`~prunelens.models.compat` — how the installed transformers spells its KV-cache interface;
* :mod:`~prunelens.models.capture` — each block's input and call arguments recorded once, blocks re-run on
  them; :mod:`~prunelens.models.residual` — the residual stream at every block, read by hooks;
* :mod:`~prunelens.models.perturb` — the control (weights rounded to a lower precision);
* :mod:`~prunelens.models.tiny` — small random models of every family (tests, benchmarks);
* :mod:`~prunelens.models.embedders`, :mod:`~prunelens.models.embedder_loading`,
  :mod:`~prunelens.models.encoder_adapter` — embedding models for retrieval, and encoder families.
"""
