"""Where a pruning perturbation lives: hidden space h, logit space z, probability space p (docs/method.md §1).

Modules (import what you need; nothing heavy is imported here):

* :mod:`~prunelens.analysis.metrics` — pure tensor functions: cosines, decompositions, KL, Theorems 1–3;
  it re-exports its parts: :mod:`~prunelens.analysis.geometry` (cosines, parallel and perpendicular
  parts, Theorem 1), :mod:`~prunelens.analysis.moments` (the weighted moments of the Theorem 2 and 3
  estimates) and :mod:`~prunelens.analysis.top_tokens` (top-token agreement);
* :mod:`~prunelens.analysis.pairstats` — the same statistics streamed for many (dense, pruned) pairs
  that share states (the fast path of the analyses, checked against ``metrics``);
* :mod:`~prunelens.analysis.variants` — the pruned side as drops and parameter overrides on the dense
  weights (plans, checkpoints, ``drop-8a`` shorthands), with clear mismatch errors;
* :mod:`~prunelens.analysis.tracing` — one dense forward pass with the pruned counterfactual of every
  sublayer on the same input;
* :mod:`~prunelens.analysis.transitions` — every layer × {attn, mlp} × {h, z, p} per token;
* :mod:`~prunelens.analysis.trajectories` — decoding, teacher-forced and free-running comparisons;
* :mod:`~prunelens.analysis.subspace` — multiple-choice answer options versus the full vocabulary;
* :mod:`~prunelens.analysis.tables`, :mod:`~prunelens.analysis.figures` — tidy tables and figures;
  :mod:`~prunelens.analysis.headlines` — one variant's headline numbers (``summary.json``);
* :mod:`~prunelens.analysis.prompts`, :mod:`~prunelens.analysis.pipeline` — prompt sets and the whole
  run, asked for by :mod:`~prunelens.analysis.settings` (``AnalysisConfig``: its defaults and one check;
  the ``prunelens analyze`` command is :mod:`prunelens.cli.analyze`).

Quick start::

    import prunelens
    from prunelens.analysis.variants import resolve_variant
    from prunelens.analysis.transitions import Sequences, transitions

    model, tok = prunelens.load()
    v = resolve_variant(model, "runs/drop8a")            # or a prune_plan.json, or "drop-8a" + calibration
    res = transitions(model, Sequences([tok.encode("The sky is")], [[]]), v, temperatures=(1.0,))
    df = res.frame()                                     # one row per token × sublayer × space × metric
"""

#: the analyses prunelens runs, in the order they run (``prunelens analyze --analyses``, study configs)
ANALYSES = ("transitions", "trajectories", "subspace")
