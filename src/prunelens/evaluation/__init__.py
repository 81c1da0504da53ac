"""Evaluation: scores of a (pruned) model per task, per example, with their uncertainty.

* :mod:`~prunelens.evaluation.runner` — runs tasks on a model and stores the results (resumable, one file
  per task); :mod:`~prunelens.evaluation.results` — the shape every evaluator returns;
* :mod:`~prunelens.evaluation.multiple_choice` and :mod:`~prunelens.evaluation.loglikelihood` — multiple
  choice by log-likelihood, as lm-evaluation-harness computes it;
* :mod:`~prunelens.evaluation.perplexity` — perplexity over a token stream;
* :mod:`~prunelens.evaluation.retrieval` — dense retrieval (nDCG, recall);
* :mod:`~prunelens.evaluation.decoding` — batched decoding; :mod:`~prunelens.evaluation.generative` —
  the generative tasks (GSM8K, NQ-Open, HumanEval, MBPP); :mod:`~prunelens.evaluation.answers` — answer
  extraction and per-example metrics; :mod:`~prunelens.evaluation.fidelity` — pruned against dense
  outputs;
* :mod:`~prunelens.evaluation.sandbox`, :mod:`~prunelens.evaluation.sandbox_process`,
  :mod:`~prunelens.evaluation.sandbox_launcher` — model-written code run in a sandbox (pass@1);
* :mod:`~prunelens.evaluation.uncertainty` — intervals and paired tests;
* :mod:`~prunelens.evaluation.compare` — the comparison table; :mod:`~prunelens.evaluation.lm_eval_bridge`
  — lm-evaluation-harness on an in-memory model (the reference our scores are checked against), reading
  the local files as :mod:`~prunelens.evaluation.lm_eval_rows` lays them out.
"""
