"""Quantizing whole models: every tiny family through the Python API, pruned then quantized (zeros kept),
the command line end to end (the checkpoint loads back with the same weights), and refusals."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

import prunelens
from prunelens.cli import app
from prunelens.models.adapter import Adapter
from prunelens.models.tiny import TINY_FAMILIES, tiny_model
from prunelens.plan import PrunePlan
from prunelens.prune.quant_math import gguf_round_trip, rtn_round_trip
from prunelens.prune.quantize import block_linears
from prunelens.prune.specs import SpecError

from conftest import tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize(
    "fields,label",
    [({"type": "Q4_1"}, "Q4_1"), ({"method": "rtn", "bits": 4, "group_size": 32}, "RTN-W4-g32")],
)
def test_every_block_linear_is_its_round_trip(family, fields, label):
    model = tiny_model(family)
    dense = copy.deepcopy(model)
    q = prunelens.quantize(model, tiny_tokenizer(), **fields)
    assert q.plan.method == "quantize" and q.plan.name == label and q.plan.quantization["label"] == label
    before = dict(block_linears(Adapter(dense)))
    for name, lin in block_linears(Adapter(model)):
        w = before[name].weight
        want = gguf_round_trip(w, "Q4_1") if "type" in fields else rtn_round_trip(w, 4, group_size=32)
        assert torch.equal(lin.weight, want), name
    assert q.plan.quantization["tensors"] == len(before)
    # embeddings and the unembedding are left as they were
    assert torch.equal(model.get_input_embeddings().weight, dense.get_input_embeddings().weight)
    assert torch.equal(model.get_output_embeddings().weight, dense.get_output_embeddings().weight)


def test_pruned_then_quantized_keeps_zeros_and_drops(tmp_path):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    calib = tmp_path / "c.txt"
    calib.write_text(" ".join(f"w{i % 200}" for i in range(3000)))
    pruned = prunelens.sparsify(model, tok, method="magnitude", sparsity=0.5)
    zeros = {n: (lin.weight == 0).clone() for n, lin in block_linears(Adapter(model))}
    q = prunelens.quantize(pruned, type="Q4_1")  # an offset type: without the mask, zeros would move
    assert q.plan.method == "magnitude" and q.plan.name == "Magnitude-50%+Q4_1"
    for name, lin in block_linears(Adapter(model)):
        assert bool((lin.weight[zeros[name]] == 0).all()), name
    assert q.plan.quantization["zeros_kept"] == sum(int(z.sum()) for z in zeros.values())
    dropped = prunelens.drop(
        tiny_model("llama"), tok, target="attn", n=1, calib=str(calib), nsamples=2, seqlen=16
    )
    qd = prunelens.quantize(dropped, method="rtn", bits=8)
    assert qd.plan.dropped_sublayers == dropped.plan.dropped_sublayers and qd.plan.name.endswith("+RTN-W8")
    with pytest.raises(prunelens.utils.errors.InputError, match="already quantized"):
        prunelens.quantize(qd, type="Q8_0")


def test_the_command_writes_a_checkpoint_that_loads_back(tmp_path):
    d = tmp_path / "dense"
    tiny_model("qwen2").save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    out = tmp_path / "q"
    res = runner.invoke(app, ["quantize", str(d), "--type", "Q5_0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    plan = PrunePlan.load(out)
    assert plan.name == "Q5_0" and plan.quantization["versions"]["gguf"]
    loaded, _ = prunelens.load(str(out))
    ref = tiny_model("qwen2")
    for (name, lin), (_, want) in zip(block_linears(Adapter(loaded)), block_linears(Adapter(ref))):
        assert torch.equal(lin.weight, gguf_round_trip(want.weight, "Q5_0")), name
    info = runner.invoke(app, ["info", str(out)])
    assert info.exit_code == 0 and "Q5_0" in info.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["--type", "Q4_K"], "--type: must be one of Q8_0, Q5_1, Q5_0, Q4_1, Q4_0"),
        (["--method", "rtn", "--bits", "5"], "--bits: must be one of 8, 4, 3"),
        (["--type", "Q8_0", "--method", "rtn"], "give exactly one of --type"),
        ([], "give exactly one of --type (a GGUF type) or --method (rtn)"),
        (["--type", "Q8_0", "--bits", "4"], "--bits: belongs to --method rtn"),
        (["--method", "rtn", "--bits", "4", "--group-size", "48"], "48 does not divide the input width 64"),
    ],
)
def test_refusals_exit_2_and_write_nothing(tmp_path, args, message):
    d = tmp_path / "dense"
    tiny_model("llama").save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    out = tmp_path / "q"
    res = runner.invoke(app, ["quantize", str(d), *args, "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.output.split()) and len(res.output.strip().splitlines()) == 1
    assert not out.exists()


def test_a_quantized_model_is_not_repaired_off_its_grid(tmp_path):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    calib = tmp_path / "c.txt"
    calib.write_text(" ".join(f"w{i % 200}" for i in range(3000)))
    dense = copy.deepcopy(model)
    pruned = prunelens.drop(model, tok, target="attn", n=1, calib=str(calib), nsamples=2, seqlen=16)
    q = prunelens.quantize(pruned, type="Q8_0")
    with pytest.raises(prunelens.utils.errors.InputError, match="grid"):
        prunelens.repair(q, teacher=dense, steps=1, calib=str(calib), nsamples=4, seqlen=16)


def test_quantize_spec_refusals_name_the_field():
    from prunelens.prune.specs import QuantizeSpec

    with pytest.raises(SpecError) as err:
        QuantizeSpec(method="rtn", bits=4, group_size=0).check()
    assert err.value.field == "group_size"
    assert QuantizeSpec(method="rtn", bits=4, group_size=128, symmetric=False).check().label == (
        "RTN-W4-g128-asym"
    )


def test_a_quantized_checkpoint_is_analysed_against_its_dense_model(tmp_path):
    d = tmp_path / "dense"
    tiny_model("llama").save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    (tmp_path / "p.txt").write_text("w1 w2 w3 w4\nw5 w6 w7\n")
    q = tmp_path / "q"
    made = runner.invoke(app, ["quantize", str(d), "--method", "rtn", "--bits", "3", "--out", str(q)])
    assert made.exit_code == 0, made.output
    res = runner.invoke(
        app,
        ["analyze", str(d), str(q), "--out", str(tmp_path / "a"), "--prompts", str(tmp_path / "p.txt"),
         "--mc", "none", "--analyses", "transitions,trajectories", "--max-new-tokens", "3"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert list(summary["variants"]) == ["RTN-W3"]
