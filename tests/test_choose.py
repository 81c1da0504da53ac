"""The one rule that turns per-unit scores into the units dropped (pure; plus dry runs against real drops)."""

from __future__ import annotations

import copy

import pytest
import torch

from prunelens.data.calibration import Calibration
from prunelens.models.tiny import tiny_model
from prunelens.prune.choose import (
    TARGET_KINDS,
    Candidate,
    best_window,
    choose,
    count_dropped,
    drop_by_scores,
    kinds_for,
    rank,
)
from prunelens.prune.drop import PruneConfigError, drop

SCORES = {"attn": [0.9, 0.99, None, 0.95], "mlp": [0.99, 0.5, 0.7, 0.8], "block": [0.3, 0.2, 0.2, 0.1]}


def test_rank_orders_by_score_then_layer_then_kind_and_skips_dropped():
    assert rank(SCORES, "attn") == [
        Candidate(0.99, 1, "attn"),
        Candidate(0.95, 3, "attn"),
        Candidate(0.9, 0, "attn"),
    ]
    joint = rank(SCORES, "joint")
    assert [(c.layer, c.kind) for c in joint[:3]] == [
        (0, "mlp"),
        (1, "attn"),
        (3, "attn"),
    ]  # tie: layer first
    assert [c.layer for c in choose(SCORES, "block", 2)] == [0, 1]  # tie at 0.2: the lower layer
    assert kinds_for("joint") == ("attn", "mlp") and set(TARGET_KINDS) == {"attn", "mlp", "joint", "block"}
    with pytest.raises(ValueError, match="only 3 candidates"):
        choose(SCORES, "attn", 4)
    with pytest.raises(ValueError, match="unknown drop target"):
        rank(SCORES, "heads")
    with pytest.raises(ValueError, match="positive"):
        choose(SCORES, "mlp", 0)


def test_best_window_takes_the_earliest_of_equal_windows():
    assert best_window([0.5, 0.9, 0.9, 0.1]) == 1
    with pytest.raises(ValueError):
        best_window([])


class _Site:
    """A fake model: dropping a unit raises the score of the next layer's same kind (an interaction)."""

    def __init__(self):
        self.num_layers = 4
        self.gone: list[tuple[int, str]] = []

    def is_dropped(self, layer, kind):
        return (layer, kind) in self.gone

    def drop_unit(self, layer, kind):
        self.gone.append((layer, kind))

    def scores(self):
        s = {
            k: [None if (i, k) in self.gone else v for i, v in enumerate(vals)]
            for k, vals in SCORES.items()
            if k != "block"
        }
        for layer, kind in self.gone:
            if layer + 1 < 4 and s[kind][layer + 1] is not None:
                s[kind][layer + 1] += 1.0
        return s


def test_one_shot_and_iterative_loops():
    one = _Site()
    entries = drop_by_scores(one, one.scores, "mlp", 2)
    assert [(e["layer"], e["sublayer"]) for e in entries] == [(0, "mlp"), (3, "mlp")]
    assert "step" not in entries[0] and count_dropped(one, "mlp") == 2
    it = _Site()
    entries = drop_by_scores(it, it.scores, "mlp", 2, iterative=True)
    # after mlp@0 goes, mlp@1 (0.5 + 1.0) is the most droppable: interactions count
    assert [(e["layer"], e["step"]) for e in entries] == [(0, 0), (1, 1)]


@pytest.mark.parametrize("target, n", [("attn", 2), ("mlp", 1), ("joint", 3), ("block", 2)])
def test_dry_run_plan_equals_the_real_drop(target, n):
    model = tiny_model("qwen2")
    cal = Calibration(
        torch.randint(3, 250, (4, 16), generator=torch.Generator().manual_seed(1)), "test", 0, 64
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dry = drop(model, cal, target=target, n=n, dry_run=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    real = drop(copy.deepcopy(model), cal, target=target, n=n)
    assert dry.dropped_sublayers == real.dropped_sublayers and dry.dropped_blocks == real.dropped_blocks
    assert dry.params_after == real.params_after
    with pytest.raises(PruneConfigError, match="dry run"):
        drop(model, cal, target=target, n=n, iterative=True, dry_run=True)
