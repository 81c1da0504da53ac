"""Studies: one command prunes a model several ways, evaluates and analyses every variant, and judges them.

* :mod:`~prunelens.studies.schema` — what a study config holds, every default once, and the printed
  default; :mod:`~prunelens.studies.config` — reading and checking a config (errors name the field);
* :mod:`~prunelens.studies.runner` — running a study: :mod:`~prunelens.studies.units` (the units and what
  each depends on), :mod:`~prunelens.studies.preflight` (the cheap checks before anything loads),
  :mod:`~prunelens.studies.store` (the study directory and its unit markers),
  :mod:`~prunelens.studies.workbench` (the dense model, calibration and variants of one process),
  :mod:`~prunelens.studies.steps` (what each kind of unit does), :mod:`~prunelens.studies.engines` (local
  or Ray) and :mod:`~prunelens.studies.collect` (the study-level files the report reads);
* :mod:`~prunelens.studies.sweep` — a sweep: one pruning family over ratios × seeds, run as a study;
* :mod:`~prunelens.studies.facts` — the measured numbers the verdicts are judged on;
  :mod:`~prunelens.studies.verdicts` and :mod:`~prunelens.studies.twins` — the rules that judge them,
  returning structured outcomes (the sentences are the report's, :mod:`prunelens.report`).
"""
