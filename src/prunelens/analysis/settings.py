"""What one analysis run is asked to do: :class:`AnalysisConfig`, its defaults and its one check (the
rules ``prunelens analyze``, :func:`prunelens.analyze` and a study's ``analyses`` section all obey)."""

from __future__ import annotations

from dataclasses import dataclass

from prunelens.analysis import ANALYSES
from prunelens.analysis.pairstats import DEFAULT_KS
from prunelens.analysis.trajectories import Sampler

__all__ = ["AnalysisConfig"]


@dataclass
class AnalysisConfig:
    temperatures: tuple[float, ...] = (1.0,)
    max_new_tokens: int = 32
    analyses: tuple[str, ...] = ANALYSES
    scope: str = "all"
    final_norm: bool = True
    sample: bool = False
    sample_temperature: float = 1.0
    seed: int = 0
    positions: str = "all"
    batch_size: int = 4
    chunk_tokens: int = 32
    exact: bool = False
    ks: tuple[int, ...] = DEFAULT_KS
    layers: tuple[int, ...] | None = None
    chat: bool = True
    option_labels: tuple[str, ...] | None = None
    csv: bool = True
    figures: bool = True

    def __post_init__(self):
        """The one check of an analysis request (``prunelens analyze``, :func:`prunelens.analyze`, a study's
        analyses): a :class:`~prunelens.prune.specs.SpecError` naming the field."""
        from prunelens.analysis.metrics import check_temperature
        from prunelens.prune.specs import SpecError

        def temperature(name: str, t) -> float:
            try:
                return float(check_temperature(t))
            except ValueError:
                raise SpecError(name, f"must be a positive finite number (got {t!r})") from None

        bad = [a for a in self.analyses if a not in ANALYSES]
        if bad or not self.analyses:
            raise SpecError("analyses", f"must be among {', '.join(ANALYSES)} (got {list(self.analyses)})")
        if not self.temperatures:
            raise SpecError("temperature", "needs at least one value")
        self.temperatures = tuple(temperature("temperature", t) for t in self.temperatures)
        temperature("sample_temperature", self.sample_temperature)
        for name, allowed in (("scope", ("all", "variant")), ("positions", ("all", "prompt", "generated"))):
            if getattr(self, name) not in allowed:
                raise SpecError(name, f"must be one of {', '.join(allowed)} (got {getattr(self, name)!r})")
        for name in ("max_new_tokens", "batch_size", "chunk_tokens"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise SpecError(name, f"must be a positive integer (got {v!r})")

    @property
    def sampler(self) -> Sampler:
        return Sampler(greedy=not self.sample, temperature=self.sample_temperature, seed=self.seed)
