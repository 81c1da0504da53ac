"""Estimate/real of Theorems 2 and 3 by perturbation size, and the option-subspace chance numbers: what the
analysis writes (summary.json, the figure) on a tiny model, checked against its own long tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from prunelens.analysis.figures import ratio_pairs
from prunelens.analysis.pipeline import AnalysisConfig, run_analysis
from prunelens.analysis.tables import SIZE_FLOOR, ratio_by_size
from prunelens.analysis.variants import Variant
from prunelens.data.tasks import MCExample
from prunelens.models.tiny import tiny_model

from conftest import random_text, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

LABELS = ("w10", "w11", "w12", "w13")


def test_ratio_by_size_bins_by_decade():
    size = [2e-4, 5e-4, 3e-3, 4e-3, 6e-3, 0.5, np.nan, 1e-13, 0.02]
    ratio = [1.0, 0.9, 0.8, 0.6, 0.7, 0.3, 1.0, 1.0, np.inf]
    bins = ratio_by_size(size, ratio)
    # NaN size, a size under the float32 floor and an infinite ratio are left out
    assert [(b["size_lo"], b["size_hi"], b["n"]) for b in bins] == [
        (1e-4, 1e-3, 2),
        (1e-3, 1e-2, 3),
        (0.1, 1.0, 1),
    ]
    assert [b["median"] for b in bins] == pytest.approx([0.95, 0.7, 0.3])
    assert (bins[1]["q25"], bins[1]["q75"]) == pytest.approx((0.65, 0.75))
    assert ratio_by_size([], []) == []
    with pytest.raises(ValueError, match="differ in length"):
        ratio_by_size([1.0], [1.0, 2.0])


def _examples():
    return [
        MCExample(
            id=f"q{i}",
            context=random_text(4, i),
            choices=[f" w{20 + j}" for j in range(k)],
            label=i % k,
            task="toy",
        )
        for i, k in enumerate((4, 4, 3, 2, 4))
    ]


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    out = tmp_path_factory.mktemp("ratios") / "run"
    v = Variant("Drop-2A", "test", drops=((0, "attn"), (1, "attn")))
    prompts = [("p0", random_text(6, 0)), ("p1", random_text(4, 1))]
    config = AnalysisConfig(max_new_tokens=6, option_labels=LABELS, batch_size=4, csv=False)
    run_analysis(
        tiny_model("llama"), tiny_tokenizer(), [v], prompts, config, out=out, mc_examples=_examples()
    )
    summary = json.loads((out / "summary.json").read_text())
    tables = {p.stem: pd.read_parquet(p) for p in (out / "tables").glob("*.parquet")}
    return out, summary["variants"]["Drop-2A"], summary, tables


def _check_against(group: dict, d: pd.DataFrame, key: list[str]) -> None:
    """The stored n, medians and per-decade bins of ``group`` are those of the long table ``d`` (space p,
    T = 1): recomputed here from the table as written."""
    d = d[(d["space"] == "p") & np.isclose(d["temperature"], 1.0)]
    kl = d[d["metric"] == "kl"].set_index(key)["value"]
    for thm in ("theorem2", "theorem3"):
        r = d[d["metric"] == f"{thm}_ratio"].set_index(key)["value"]
        assert group["n_estimate_ratio"][thm] == int(r.notna().sum()) > 0
        assert group["median_estimate_ratio"][thm] == pytest.approx(float(r.median()), rel=1e-5)
        j = pd.concat([kl.rename("kl"), r.rename("r")], axis=1, join="inner")
        j = j[np.isfinite(j["kl"]) & np.isfinite(j["r"]) & (j["kl"] > SIZE_FLOOR)]
        bins = group["estimate_ratio_by_kl"][thm]
        assert bins and sum(b["n"] for b in bins) == len(j)
        for b in bins:
            inside = j[(j["kl"] >= b["size_lo"] * (1 - 1e-9)) & (j["kl"] < b["size_hi"])]["r"]
            assert len(inside) == b["n"]
            assert b["median"] == pytest.approx(float(inside.median()), rel=1e-5)
            assert b["q25"] <= b["median"] <= b["q75"]


def test_estimate_ratios_by_size_written_and_drawn(analysed):
    out, v, summary, tables = analysed
    t = tables["transitions"]
    _check_against(
        v["transitions"]["variant_sublayers"],
        t[t["in_variant"].astype(bool)],
        ["prompt", "position", "layer", "sublayer"],
    )
    _check_against(v["transitions"]["all_sublayers"], t, ["prompt", "position", "layer", "sublayer"])
    traj = tables["trajectories"]
    for regime in ("teacher_forced", "free_running"):
        _check_against(v["trajectories"][regime], traj[traj["regime"] == regime], ["prompt", "step"])
    # existing keys are unchanged
    assert set(v["trajectories"]["teacher_forced"]["median_estimate_ratio"]) == {"theorem2", "theorem3"}
    # the figure is written beside the others, from the same pairs
    assert "figures/estimate_ratio_vs_kl_Drop-2A.png" in summary["figures"]
    assert (out / "figures" / "estimate_ratio_vs_kl_Drop-2A.png").stat().st_size > 1000
    pairs = ratio_pairs(t, traj, "Drop-2A")
    assert list(pairs) == ["sublayer transitions", "teacher-forced decoding", "free-running decoding"]
    n_fig = len(pairs["teacher-forced decoding"]["theorem3"][0])
    assert n_fig == sum(
        b["n"] for b in v["trajectories"]["teacher_forced"]["estimate_ratio_by_kl"]["theorem3"]
    )


def test_subspace_stores_what_the_chance_flag_needs(analysed):
    _, v, _, tables = analysed
    sub = v["subspace"]
    c = tables["subspace_choices"]
    c = c[np.isclose(c["temperature"], 1.0)]
    assert sub["questions"] == len(c) == 5
    assert sub["n_options"] == [2, 3, 4]
    assert sub["chance"] == pytest.approx(np.mean([1 / 4, 1 / 4, 1 / 3, 1 / 2, 1 / 4]))
    assert sub["dense_accuracy"] == pytest.approx(float(c["dense_correct"].mean()))


@pytest.mark.slow
def test_dense_cache_reuses_the_dense_side_and_changes_no_number(tmp_path, monkeypatch):
    """The study analyses one variant per call; a shared ``dense_cache`` computes the dense decoding, its
    teacher-forced states and the option-subspace dense logits once, with identical results."""
    import prunelens.analysis.pipeline as P

    model, tok = tiny_model("llama"), tiny_tokenizer()
    prompts = [("p0", random_text(6, 0)), ("p1", random_text(4, 1))]
    config = AnalysisConfig(max_new_tokens=6, option_labels=LABELS, batch_size=4, csv=False)
    variants = [
        Variant("Drop-1A", "test", drops=((0, "attn"),)),
        Variant("Drop-1M", "test", drops=((1, "mlp"),)),
    ]
    calls = {"decode": 0}
    real_decode = P.decode

    def counting_decode(*a, **k):
        calls["decode"] += 1
        return real_decode(*a, **k)

    monkeypatch.setattr(P, "decode", counting_decode)
    cache: dict = {}
    for v in variants:
        for use_cache, tag in ((cache, "cached"), (None, "fresh")):
            run_analysis(
                model,
                tok,
                [v],
                prompts,
                config,
                out=tmp_path / f"{v.name}-{tag}",
                mc_examples=_examples(),
                dense_cache=use_cache,
            )
    assert calls["decode"] == 3  # cached: once for both variants; fresh: once per call
    assert {k[0] for k in cache} == {"decode", "teacher_forced", "subspace_dense_logits"}
    for v in variants:
        a = json.loads((tmp_path / f"{v.name}-cached" / "summary.json").read_text())["variants"]
        b = json.loads((tmp_path / f"{v.name}-fresh" / "summary.json").read_text())["variants"]
        assert a == b
