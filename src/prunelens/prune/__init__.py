"""Pruning: dropping sublayers or blocks, and sparsifying weights, recorded as a prune plan.

* :mod:`~prunelens.prune.specs` — one frozen spec per method (:class:`~prunelens.prune.specs.DropSpec`,
  :class:`~prunelens.prune.specs.SparsifySpec`, :class:`~prunelens.prune.specs.QuantizeSpec`) with its
  defaults and checks;
* :mod:`~prunelens.prune.drop` — inter-layer pruning: score, choose, drop (one-shot, iterative, search);
  :mod:`~prunelens.prune.scoring` — the cosine scores; :mod:`~prunelens.prune.objectives` — the KL
  objectives (``generation``, ``choice``) and the Fisher estimate; :mod:`~prunelens.prune.choose` — the
  one rule from scores to the units removed;
* :mod:`~prunelens.prune.sparsify` — magnitude, Wanda and SparseGPT block by block, unstructured or N:M:
  :mod:`~prunelens.prune.linear_stats` — the linears' input statistics; :mod:`~prunelens.prune.block_prune`
  — one block's linears pruned from them; :mod:`~prunelens.prune.sparse_math` — the pure maths (scores,
  masks, the SparseGPT update); :mod:`~prunelens.prune.allocation` — per-block
  sparsity (OWL, KL sensitivity), from the blocks' scores that :mod:`~prunelens.prune.sensitivity`
  measures; :mod:`~prunelens.prune.lockstep` — batches run in lockstep (true-sequential calibration);
* :mod:`~prunelens.prune.quantize` — a model's block linears quantized in place, recorded in the plan:
  :mod:`~prunelens.prune.quant_math` — the round trips (GGUF types through the ``gguf`` package, round to
  nearest), held as de-quantized weights;
* :mod:`~prunelens.prune.encoder_drop` — the same for encoder embedders;
* :mod:`~prunelens.prune.save` — a pruned model saved as a reloadable checkpoint.
"""
