"""The cheap checks before a study loads or writes anything: the model exists, the calibration windows fit
its context, every drop count fits its layers, a choice objective's questions are readable (errors name the
variant or the field)."""

from __future__ import annotations

from prunelens.studies.config import StudyConfig

__all__ = ["check_variants", "preflight"]


def check_variants(cfg: StudyConfig, num_layers: int | None) -> None:
    """Refuse drop counts the model cannot satisfy before any unit runs (:class:`PruneConfigError`, naming
    the variant). ``num_layers=None`` (not known without loading the model) checks nothing."""
    from prunelens.prune.drop import PruneConfigError, validate_drop

    if not num_layers:
        return
    for v in cfg.variants:
        if v.drop is not None:
            try:
                validate_drop(int(num_layers), v.drop["target"], int(v.drop["n"]))
            except PruneConfigError as exc:
                raise PruneConfigError(f"variant {v.name}: {exc}") from None
            if v.drop.get("objective") == "choice":  # its questions must be readable before anything runs
                from prunelens.analysis.subspace import CHOICE_LIMIT, CHOICE_SPLIT, CHOICE_TASK
                from prunelens.data.tasks import load_task

                task = v.drop.get("choice_task", CHOICE_TASK)
                try:
                    load_task(
                        task,
                        split=CHOICE_SPLIT,
                        limit=v.drop.get("choice_limit", CHOICE_LIMIT),
                        seed=cfg.seed,
                    )
                except (OSError, ValueError) as exc:
                    raise PruneConfigError(
                        f"variant {v.name}: the choice objective has no {task} {CHOICE_SPLIT} "
                        f"questions ({exc})"
                    ) from None


def preflight(cfg: StudyConfig) -> None:
    """Files, config, plan, drop counts, lengths: nothing is loaded or written before these pass."""
    from prunelens.models.loading import check_seqlen, resolve

    src = resolve(cfg.model)
    check_seqlen(cfg.calibration.seqlen, src.config, option="calibration.seqlen")
    check_variants(cfg, src.num_layers)
