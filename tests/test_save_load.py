"""Saving pruned models and loading them back: plain transformers where possible, exact logits always."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import prunelens
from prunelens.data.calibration import Calibration
from prunelens.models.adapter import apply_structure, param_count
from prunelens.models.loading import ModelNotFoundError, load
from prunelens.models.tiny import tiny_model
from prunelens.plan import PLAN_FILE, PrunePlan
from prunelens.prune.drop import drop
from prunelens.prune.save import save_pruned
from prunelens.prune.sparsify import sparsify
from prunelens.utils.io import OutputExistsError, atomic_output_dir

IDS = torch.randint(3, 256, (4, 16), generator=torch.Generator().manual_seed(2))
CAL = Calibration(IDS, "random", 0, IDS.numel())


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt_neox"])
@pytest.mark.parametrize("target", ["attn", "mlp", "joint"])
def test_sublayer_drop_roundtrip(tmp_path, tok, family, target):
    model = tiny_model(family, tie_word_embeddings=(family == "llama"))
    plan = drop(model, CAL, target=target, n=2, base_model="tiny")
    out = save_pruned(model, tok, plan, tmp_path / "m")
    saved = json.loads((out / PLAN_FILE).read_text())
    assert saved["method"] == "drop" and saved["target"] == target and len(saved["dropped_sublayers"]) == 2
    assert saved["params_after"] == param_count(model) < saved["params_before"]
    assert saved["scores"]["similarity"]["attn"] and saved["calibration"]["source"] == "random"
    loaded, _, lplan = load(str(out), return_plan=True)
    assert lplan.name == plan.name
    assert param_count(loaded) == param_count(model)
    assert torch.equal(_logits(loaded), _logits(model))


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3_text"])
def test_block_drop_loads_in_plain_transformers(tmp_path, tok, family):
    model = tiny_model(family)
    plan = drop(model, CAL, target="block", n=2, window=True)
    out = save_pruned(model, tok, plan, tmp_path / "m")
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    assert plain.config.num_hidden_layers == 2
    assert torch.equal(_logits(plain), _logits(model))
    assert torch.equal(_logits(prunelens.load(str(out))[0]), _logits(model))


@pytest.mark.parametrize("method,kw", [("wanda", {"sparsity": 0.5}), ("sparsegpt", {"pattern": "2:4"})])
def test_sparsified_loads_in_plain_transformers(tmp_path, tok, method, kw):
    model = tiny_model("mistral")
    plan = sparsify(model, CAL, method=method, batch_size=2, **kw)
    out = save_pruned(model, tok, plan, tmp_path / "m")
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.equal(_logits(plain), _logits(model))
    assert PrunePlan.load(out).sparsity["achieved"]["overall"] == pytest.approx(0.5, abs=1e-3)


def test_plan_reapplies_to_the_dense_parent(tmp_path):
    dense = tiny_model("qwen2")
    pruned = tiny_model("qwen2")
    plan = drop(pruned, CAL, target="mlp", n=2)
    plan.save(tmp_path)
    apply_structure(dense, PrunePlan.load(tmp_path))
    assert torch.equal(_logits(dense), _logits(pruned))
    wrong = tiny_model("qwen2", num_hidden_layers=6)
    with pytest.raises(ValueError, match="4 layers"):
        apply_structure(wrong, plan)


def test_plan_names_and_format():
    p = PrunePlan(
        method="drop",
        base_model="m",
        family="llama",
        target="attn",
        dropped_sublayers=[{"layer": i, "sublayer": "attn"} for i in range(8)],
    )
    assert p.name == "Drop-8A"
    assert (
        PrunePlan(method="wanda", base_model="m", family="llama", sparsity={"sparsity": 0.5}).name
        == "Wanda-50%"
    )
    assert PrunePlan(method="drop", base_model="m", family="llama", dropped_blocks=[3, 4]).name == "Drop-2B"
    with pytest.raises(ValueError, match="format"):
        PrunePlan.from_dict({**p.to_dict(), "format": "other/9"})


def test_existing_output_refused_and_interrupted_write_leaves_nothing(tmp_path, tok):
    model = tiny_model("llama")
    plan = drop(model, CAL, target="attn", n=1)
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(OutputExistsError):
        save_pruned(model, tok, plan, out)
    assert (out / "keep.txt").read_text() == "precious"
    target = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_dir(target) as tmp:
            (tmp / "half.bin").write_bytes(b"x" * 10)
            raise KeyboardInterrupt
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    save_pruned(model, tok, plan, out, overwrite=True)
    assert (out / PLAN_FILE).exists() and not (out / "keep.txt").exists()


def test_unknown_models_are_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such model"):
        load("./does-not-exist")
    with pytest.raises(ModelNotFoundError, match="config.json"):
        load(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        load("nobody/no-such-model-xyz")
    with pytest.raises(ValueError, match="unknown dtype"):
        load(str(tmp_path), dtype="float8")
