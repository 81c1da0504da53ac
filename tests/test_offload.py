"""Models dispatched by accelerate with their weights offloaded to disk (parameters on ``meta``): inputs go to
the execution device, evaluation and layer dropping work, and sparsifying refuses clearly."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunelens.data.calibration import Calibration
from prunelens.evaluation.perplexity import perplexity
from prunelens.models.adapter import input_device, is_offloaded
from prunelens.models.tiny import tiny_model
from prunelens.prune.drop import drop
from prunelens.prune.sparsify import sparsify

IDS = torch.randint(3, 256, (4, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture()
def offloaded(tmp_path):
    dense = tiny_model("llama")
    dense.save_pretrained(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path / "m",
        device_map="auto",
        max_memory={"cpu": "100KB"},
        offload_folder=str(tmp_path / "offload"),
    )
    return dense, model.eval()


def test_offloaded_model_runs_where_accelerate_executes_it(offloaded):
    dense, model = offloaded
    assert is_offloaded(model) and not is_offloaded(dense)
    assert input_device(model) == torch.device("cpu") == input_device(dense)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, dense(IDS).logits)
    stream = IDS.reshape(-1)
    assert perplexity(model, stream, seqlen=16).ppl == pytest.approx(perplexity(dense, stream, seqlen=16).ppl)


def test_offloaded_model_can_drop_but_not_sparsify(offloaded):
    dense, model = offloaded
    cal = Calibration(IDS, "random", 0, IDS.numel())
    plan = drop(model, cal, target="attn", n=1, batch_size=2)
    ref = drop(dense, cal, target="attn", n=1, batch_size=2)
    assert plan.dropped_sublayers == ref.dropped_sublayers
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, dense(IDS).logits)
    with pytest.raises(ValueError, match="offloaded .* device='cuda'"):
        sparsify(model, cal, method="wanda", sparsity=0.5)
