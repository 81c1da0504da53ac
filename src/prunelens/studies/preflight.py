"""The cheap checks before a study loads or writes anything: the model exists, the calibration windows fit
its context, every drop count fits its layers, a choice objective's questions are readable (errors name the
variant or the field)."""

from __future__ import annotations

from prunelens.studies.config import StudyConfig

__all__ = ["check_variants", "preflight"]


def check_variants(cfg: StudyConfig, num_layers: int | None) -> None:
    """Refuse drop counts the model cannot satisfy before any unit runs (:class:`PruneConfigError`, naming
    the variant). ``num_layers=None`` (not known without loading the model) checks nothing."""
    from prunelens.prune.specs import CHOICE_SPLIT, DropSpec, PruneConfigError, SpecError, check_drop_count

    if not num_layers:
        return
    for v in cfg.variants:
        if v.drop is None:
            continue
        try:
            check_drop_count(int(num_layers), v.drop["target"], int(v.drop["n"]))
        except SpecError as exc:
            raise PruneConfigError(f"variant {v.name}: {exc.text()}") from None
        spec = DropSpec(**v.drop)
        if spec.objective == "choice":  # its questions must be readable before anything runs
            from prunelens.data.tasks import load_task

            task, limit = spec.questions
            try:
                load_task(task, split=CHOICE_SPLIT, limit=limit, seed=cfg.seed)
            except (OSError, ValueError) as exc:
                raise PruneConfigError(
                    f"variant {v.name}: the choice objective has no {task} {CHOICE_SPLIT} questions ({exc})"
                ) from None


def preflight(cfg: StudyConfig) -> None:
    """Files, config, plan, drop counts, lengths: nothing is loaded or written before these pass."""
    from prunelens.models.loading import check_seqlen, resolve

    src = resolve(cfg.model)
    check_seqlen(cfg.calibration.seqlen, src.config, option="calibration.seqlen")
    check_variants(cfg, src.num_layers)
