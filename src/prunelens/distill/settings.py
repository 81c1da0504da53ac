"""The settings of one repair, checked before any model loads (plain data; no model code).

One place for every default: the command line, the Python API and a study variant's ``repair:`` block
all build a :class:`RepairSettings` and call :meth:`RepairSettings.check`, so they refuse the same
things with the same one-line message.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from prunelens.distill.losses import LOSSES, check_loss
from prunelens.utils.errors import InputError

TRAINABLE = ("lora", "norms")
PRECISIONS = ("float32", "bfloat16")
KEEP = ("best", "last")

#: learning rates used when none is given: LoRA's usual AdamW rate; norm weights are few and need more
DEFAULT_LR = {"lora": 2e-4, "norms": 1e-3}


class RepairSettingsError(InputError):
    """A repair setting that cannot be run; ``field`` names it (the CLI option or the config key)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class RepairSettings:
    """How to repair: the objective, what trains, and the training loop.

    ``steps`` counts optimiser updates; each reads ``batch_size × grad_accum`` calibration windows.
    ``heldout`` is the fraction of calibration windows kept out of training: the held-out teacher-forced
    KL is measured on them every ``eval_every`` steps, and training stops early when it has not improved
    for ``patience`` evaluations (``None``: never); ``keep`` says whether the best state seen (the
    lowest held-out KL, the default) or the last one is kept.
    """

    loss: str = "kl"
    temperature: float = 1.0
    train: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    lr: float | None = None  # None: DEFAULT_LR[train]
    steps: int = 100
    warmup: float = 0.1  # fraction of the steps with a linearly rising learning rate
    batch_size: int = 4
    grad_accum: int = 1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "float32"
    heldout: float = 0.125
    eval_every: int = 20
    patience: int | None = 3
    keep: str = "best"  # best: the state with the lowest held-out KL; last: the state training ended in
    seed: int = 0

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.train]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "repair") -> RepairSettings:
        """Settings from a mapping (a study config's ``repair:`` block), unknown keys refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RepairSettingsError(
                f"{where}.{unknown[0]}", f"unknown key; allowed: {', '.join(sorted(known))}"
            )
        settings = cls(**data)
        settings.check(prefix=f"{where}.")
        return settings

    def check(self, prefix: str = "") -> None:
        """Raise :class:`RepairSettingsError` for the first setting that cannot be run."""

        def bad(name: str, message: str) -> RepairSettingsError:
            return RepairSettingsError(prefix + name, message)

        try:
            check_loss(self.loss, self.temperature)
        except ValueError as exc:
            raise bad("loss" if self.loss not in LOSSES else "temperature", str(exc)) from None
        if self.loss == "ce" and self.temperature != 1.0:
            raise bad("temperature", "the ce loss reads the observed tokens at T = 1; leave it at 1")
        if self.train not in TRAINABLE:
            raise bad("train", f"is {self.train!r}; expected one of {', '.join(TRAINABLE)}")
        if self.keep not in KEEP:
            raise bad("keep", f"is {self.keep!r}; expected one of {', '.join(KEEP)}")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"is {self.precision!r}; expected one of {', '.join(PRECISIONS)}")
        for name in ("steps", "rank", "batch_size", "grad_accum", "eval_every"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
                raise bad(name, f"must be a positive integer (got {v!r})")
        if self.patience is not None and not (isinstance(self.patience, int) and self.patience > 0):
            raise bad("patience", f"must be a positive integer or null (got {self.patience!r})")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise bad("seed", f"must be an integer (got {self.seed!r})")

        def positive(name: str, v: Any, allow_zero: bool = False) -> None:
            ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            if not ok or v < 0 or (v == 0 and not allow_zero):
                raise bad(
                    name, f"must be a {'non-negative' if allow_zero else 'positive'} number (got {v!r})"
                )

        positive("alpha", self.alpha)
        if self.lr is not None:
            positive("lr", self.lr)
        positive("weight_decay", self.weight_decay, allow_zero=True)
        positive("max_grad_norm", self.max_grad_norm)
        if not (isinstance(self.warmup, int | float) and 0 <= self.warmup < 1):
            raise bad("warmup", f"must be a fraction of the steps in [0, 1) (got {self.warmup!r})")
        if not (isinstance(self.heldout, int | float) and 0 < self.heldout < 1):
            raise bad("heldout", f"must be a fraction in (0, 1) (got {self.heldout!r})")
