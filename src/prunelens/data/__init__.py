"""Data: benchmark tasks and calibration text, read from local files in their published formats (or a hub).

* :mod:`~prunelens.data.paths` — where local files are looked up (``$PRUNELENS_DATA``, ``./data``,
  ``../shared/data``) and the error that lists every place looked at;
* :mod:`~prunelens.data.calibration` — calibration sources (``c4``, ``wikitext2``, files, ``hub:``) cut
  into seeded windows of tokens;
* :mod:`~prunelens.data.tasks` — one :class:`~prunelens.data.tasks.spec.TaskSpec` per task and its reader
  (multiple choice, generation, retrieval, perplexity), as uniform records.
"""
