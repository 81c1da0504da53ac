"""The repair objectives: how far the pruned student's next-token distribution is from the teacher's.

Pure functions of logits (no model code). Every loss is computed in float32 or better whatever the
logits' dtype, averaged over the token positions that ``mask`` keeps.

The paper's mechanism says pruning's damage to generation lives in the probabilities: a small logit
perturbation is amplified by the softmax and compounded by decoding. A repair that pulls the student's
distribution ``q`` back onto the teacher's ``p`` works where the damage is; plain next-token
cross-entropy (``ce``) on the same text pulls ``q`` towards the one observed token instead — it can
lower perplexity while leaving the rest of the distribution, which greedy decoding and sampling read,
where it was. ``ce`` is kept as the baseline that comparison needs.

* ``kl``         — forward ``KL(p_T ‖ q_T)`` (the teacher-forced KL the analysis reports; mass-covering),
* ``reverse-kl`` — ``KL(q_T ‖ p_T)`` (mode-seeking),
* ``jsd``        — Jensen–Shannon divergence ``½KL(p‖m) + ½KL(q‖m)``, ``m = (p + q)/2`` (bounded by ln 2),
* ``ce``         — ``−log q(next token)`` at T = 1 (needs no teacher).

The divergences are multiplied by ``T²`` (Hinton et al.'s distillation scaling), so that their gradients
keep the same order of magnitude as the temperature changes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from prunelens.analysis.metrics import check_temperature  # pure maths: the one temperature rule
from prunelens.plan import REPAIR_LOSSES as LOSSES  # one list: the plan validates what a repair records
from prunelens.utils.kl import kl_divergence, log_probs

DIVERGENCES = ("kl", "reverse-kl", "jsd")


def _up(x: Tensor) -> Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _masked_mean(per_token: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return per_token.mean()
    m = mask.to(per_token.dtype)
    count = m.sum()
    if float(count) == 0:
        raise ValueError("the loss mask keeps no token")
    return (per_token * m).sum() / count


def check_loss(loss: str, temperature: float) -> None:
    """Refuse an unknown loss or a temperature that is not a positive finite number (ValueError)."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")
    check_temperature(temperature)


def token_divergence(student_logits: Tensor, teacher_logits: Tensor, loss: str, temperature: float) -> Tensor:
    """The divergence ``loss`` at every position (shape of the logits without the vocabulary axis).

    Not scaled by ``T²``: this is the quantity itself, for tests and held-out measurements.
    """
    check_loss(loss, temperature)
    if loss not in DIVERGENCES:
        raise ValueError(f"{loss!r} is not a divergence between two distributions")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
            f"{tuple(teacher_logits.shape)} (different vocabularies?)"
        )
    lq = log_probs(_up(student_logits), temperature)
    lp = log_probs(_up(teacher_logits).to(lq.dtype), temperature)
    if loss == "kl":
        return kl_divergence(lp, lq)
    if loss == "reverse-kl":
        return kl_divergence(lq, lp)
    lm = torch.logaddexp(lp, lq) - math.log(2.0)
    return 0.5 * (kl_divergence(lp, lm) + kl_divergence(lq, lm))


def token_cross_entropy(student_logits: Tensor, targets: Tensor) -> Tensor:
    """``−log q(target)`` at every position (T = 1)."""
    lq = log_probs(_up(student_logits))
    return -lq.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def repair_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    input_ids: Tensor,
    *,
    loss: str,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """The training loss on a batch: mean over kept positions of the chosen objective (a scalar).

    ``*_logits``: ``(batch, seq, vocab)`` from the same ``input_ids`` ``(batch, seq)``. Positions
    ``0 … seq−2`` are used (the ones with a next token), so every loss reads the same tokens; ``mask``
    ``(batch, seq)`` drops positions (e.g. padding), read at the same positions.
    """
    check_loss(loss, temperature)
    s = student_logits[:, :-1]
    keep = None if mask is None else mask[:, :-1]
    if loss == "ce":
        return _masked_mean(token_cross_entropy(s, input_ids[:, 1:]), keep)
    if teacher_logits is None:
        raise ValueError(f"the {loss!r} loss needs the teacher's logits")
    per_token = token_divergence(s, teacher_logits[:, :-1], loss, temperature)
    return _masked_mean(per_token, keep) * (temperature**2)
