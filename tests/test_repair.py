"""Repair (prunelens.distill): the losses against float64 references and identities, the settings'
refusals, disjoint held-out text, and the training loop on tiny models of every family (masks kept,
drops kept, deterministic for a seed, resumed after an interruption), the CLI and the Python API."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from typer.testing import CliRunner

import prunelens
from prunelens.analysis import metrics
from prunelens.cli import app
from prunelens.data.calibration import Calibration, CalibrationDataError, split_calibration
from prunelens.distill.losses import repair_loss, token_cross_entropy, token_divergence
from prunelens.distill.settings import RepairSettings, RepairSettingsError
from prunelens.distill.trainable import adaptable_linears, norm_parameters
from prunelens.distill.trainer import RepairInputError, RepairStateError, _window_order, repair_model
from prunelens.models.adapter import Adapter
from prunelens.models.tiny import TINY_FAMILIES, tiny_model
from prunelens.plan import PLAN_FILE, PlanError, PrunePlan
from prunelens.prune.drop import drop
from prunelens.prune.sparsify import sparsify

from conftest import need_data, random_text, tiny_tokenizer

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


# --- losses --------------------------------------------------------------------------------------


def _logits(seed: int, shape=(2, 5, 11), scale=3.0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.mark.parametrize("T", [0.5, 1.0, 2.0])
def test_divergences_match_float64_references(T):
    s, t = _logits(0), _logits(1)
    s64, t64 = s.double(), t.double()
    assert torch.allclose(token_divergence(s, t, "kl", T).double(), metrics.kl(t64, s64, T), atol=1e-5)
    assert torch.allclose(
        token_divergence(s, t, "reverse-kl", T).double(), metrics.kl(s64, t64, T), atol=1e-5
    )
    p, q = torch.softmax(t64 / T, -1), torch.softmax(s64 / T, -1)
    m = (p + q) / 2
    jsd = 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)
    assert torch.allclose(token_divergence(s, t, "jsd", T).double(), jsd, atol=1e-6)


def test_divergence_identities():
    s, t = _logits(2), _logits(3)
    for loss in ("kl", "reverse-kl", "jsd"):
        assert token_divergence(t, t, loss, 1.0).abs().max() < 1e-6  # D(p, p) = 0
        assert (token_divergence(s, t, loss, 1.0) >= -1e-7).all()
    # JSD is symmetric and bounded by ln 2; reverse KL is KL with the roles swapped
    assert torch.allclose(token_divergence(s, t, "jsd", 1.0), token_divergence(t, s, "jsd", 1.0), atol=1e-6)
    far = torch.zeros(1, 1, 4)
    far[..., 0], far2 = 60.0, torch.zeros(1, 1, 4)
    far2[..., 1] = 60.0
    assert float(token_divergence(far, far2, "jsd", 1.0)) == pytest.approx(math.log(2), abs=1e-5)
    assert torch.allclose(token_divergence(s, t, "reverse-kl", 1.0), token_divergence(t, s, "kl", 1.0))
    # a shift of all logits changes no distribution
    assert token_divergence(s + 7.0, s, "kl", 1.0).abs().max() < 1e-5


def test_repair_loss_positions_scaling_and_dtype():
    ids = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(0))
    s, t = _logits(4), _logits(5)
    T = 2.0
    want = token_divergence(s[:, :-1], t[:, :-1], "kl", T).mean() * T**2
    assert torch.allclose(repair_loss(s, t, ids, loss="kl", temperature=T), want)
    ce = torch.nn.functional.cross_entropy(s[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1))
    assert torch.allclose(repair_loss(s, None, ids, loss="ce"), ce, atol=1e-6)
    assert torch.allclose(token_cross_entropy(s[:, :-1], ids[:, 1:]).mean(), ce, atol=1e-6)
    # bfloat16 logits are measured in float32
    out = repair_loss(s.bfloat16(), t.bfloat16(), ids, loss="jsd")
    assert out.dtype == torch.float32
    # a mask averages over the kept positions only
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1] = False
    only_first = token_divergence(s[:1, :-1], t[:1, :-1], "kl", 1.0).mean()
    assert torch.allclose(repair_loss(s, t, ids, loss="kl", mask=mask), only_first)
    with pytest.raises(ValueError, match="needs the teacher"):
        repair_loss(s, None, ids, loss="kl")
    with pytest.raises(ValueError, match="different vocabularies"):
        token_divergence(s, _logits(6, (2, 5, 12)), "kl", 1.0)


# --- settings and calibration ------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("steps", 0, "positive integer"),
        ("steps", -3, "positive integer"),
        ("rank", 0, "positive integer"),
        ("loss", "mse", "unknown loss"),
        ("temperature", 0.0, "positive finite number"),
        ("train", "all", "expected one of"),
        ("precision", "float16", "expected one of"),
        ("heldout", 1.0, "(0, 1)"),
        ("warmup", 1.0, "[0, 1)"),
        ("lr", -1e-3, "positive number"),
        ("patience", 0, "positive integer or null"),
    ],
)
def test_settings_refuse(field, value, words):
    with pytest.raises(RepairSettingsError, match=re_escape(words)) as exc:
        RepairSettings(**{field: value}).check()
    assert exc.value.field == field


def re_escape(s: str) -> str:
    import re

    return re.escape(s)


def test_settings_from_dict():
    s = RepairSettings.from_dict({"loss": "jsd", "steps": 5})
    assert (s.loss, s.steps, s.learning_rate) == ("jsd", 5, 2e-4)
    assert RepairSettings(train="norms").learning_rate == 1e-3
    with pytest.raises(RepairSettingsError, match="unknown key") as exc:
        RepairSettings.from_dict({"epochs": 3}, where="variants[2].repair")
    assert exc.value.field == "variants[2].repair.epochs"
    with pytest.raises(RepairSettingsError, match="T = 1"):
        RepairSettings(loss="ce", temperature=2.0).check()


def test_split_calibration_is_disjoint(tok):
    texts = [random_text(300, seed=i) for i in range(8)]
    train, held = split_calibration(tok, "t", 10, 16, 0, 0.2, texts=texts)
    assert (train.nsamples, held.nsamples) == (8, 2)
    stream = torch.tensor([t for t in tok(" ".join(texts))["input_ids"]])
    assert train.num_tokens_available + held.num_tokens_available >= stream.numel()

    def windows_in(part_ids, calib):
        return all(
            any(torch.equal(w, part_ids[s : s + 16]) for s in range(part_ids.numel() - 15))
            for w in calib.input_ids
        )

    from prunelens.data.calibration import token_stream

    full = token_stream(tok, texts)
    cut = int(round(0.8 * full.numel()))
    assert windows_in(full[:cut], train) and windows_in(full[cut:], held)
    assert split_calibration(tok, "t", 10, 16, 0, 0.2, texts=texts)[1].input_ids.equal(held.input_ids)
    with pytest.raises(CalibrationDataError, match="at least 2"):
        split_calibration(tok, "t", 1, 16, 0, 0.2, texts=texts)
    with pytest.raises(CalibrationDataError, match="empty"):
        split_calibration(tok, "t", 4, 16, 0, 0.2, texts=["  "])
    with pytest.raises(CalibrationDataError, match="held-out part"):
        split_calibration(tok, "t", 4, 200, 0, 0.1, texts=[random_text(800)])


def test_window_order_is_a_pure_function():
    order = _window_order(5, seed=3, count=12)
    assert sorted(order[:5]) == list(range(5)) and sorted(order[5:10]) == list(range(5))
    assert _window_order(5, seed=3, count=4, start=7) == order[7:11]
    assert _window_order(5, seed=4, count=12) != order


# --- the loop on tiny models ------------------------------------------------------------------


@pytest.fixture(scope="module")
def calib():
    tok = tiny_tokenizer()
    texts = [random_text(300, seed=i) for i in range(10)]
    return split_calibration(tok, "tiny", 12, 24, 0, 0.25, texts=texts)


def _fast(**kw) -> RepairSettings:
    return RepairSettings(**{"steps": 6, "eval_every": 2, "lr": 1e-3, "rank": 4, "batch_size": 3, **kw})


def _drop_student(dense, train, target="attn", n=2):
    student = copy.deepcopy(dense)
    plan = drop(student, train, target=target, n=n, base_model="tiny")
    return student, plan


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_repair_keeps_drops_and_masks_on_every_family(family, calib):
    train, held = calib
    dense = tiny_model(family)
    # sublayer drops stay dropped; the remaining linears move
    student, plan = _drop_student(dense, train)
    before = {n: p.clone() for n, p in student.named_parameters()}
    res = repair_model(
        student, dense, train, held, _fast(patience=None, keep="last"), plan=plan, teacher_name="tiny"
    )
    ad = Adapter(res.model)
    for d in plan.dropped_sublayers:
        assert ad.is_dropped(d["layer"], d["sublayer"])
    after = dict(res.model.named_parameters())
    assert set(after) == set(before)  # no adapter tensors left behind, nothing re-created
    moved = [n for n in before if not torch.equal(before[n], after[n])]
    assert moved and all(".layers." in n or ".h." in n or "layers" in n for n in moved)
    assert res.plan.repair["loss"] == "kl" and res.plan.name == plan.name + "+KL"
    # unstructured and N:M sparsity keep their zeros exactly
    for kw in ({"sparsity": 0.5}, {"pattern": "2:4"}):
        student = copy.deepcopy(dense)
        splan = sparsify(student, train, method="wanda", base_model="tiny", **kw)
        zeros = {n: (m.weight == 0) for n, m in adaptable_linears(student).items()}
        weights = {n: m.weight.clone() for n, m in adaptable_linears(student).items()}
        res = repair_model(
            student, dense, train, held, _fast(patience=None, keep="last"), plan=splan, teacher_name="tiny"
        )
        lin = adaptable_linears(res.model)
        assert set(lin) == set(zeros)
        for n, m in lin.items():
            assert torch.equal(m.weight == 0, zeros[n]), n
            assert not torch.equal(m.weight, weights[n]), n  # the kept weights did move
        if "pattern" in kw:
            w = next(iter(lin.values())).weight
            assert ((w.reshape(-1, 4) != 0).sum(-1) <= 2).all()
        assert res.summary["masks_kept"] == len(zeros)


def test_masked_update_trains_the_function_it_saves(calib):
    """The held-out KL measured during training (on the adapter) equals the one of the merged weights."""
    from prunelens.distill.trainer import heldout_metrics

    train, held = calib
    dense = tiny_model("llama")
    student = copy.deepcopy(dense)
    splan = sparsify(student, train, method="magnitude", sparsity=0.5, base_model="tiny")
    res = repair_model(student, dense, train, held, _fast(patience=None), plan=splan, teacher_name="tiny")
    merged = heldout_metrics(res.model, dense, held.input_ids, 3)["heldout_kl"]
    assert merged == pytest.approx(res.summary["heldout_after"]["heldout_kl"], rel=1e-4)
    assert res.summary["heldout_after"]["heldout_kl"] < res.summary["heldout_before"]["heldout_kl"]


def test_norms_train_only_norm_weights(calib):
    train, held = calib
    dense = tiny_model("qwen3")
    student, plan = _drop_student(dense, train, target="block", n=1)
    before = {n: p.clone() for n, p in student.named_parameters()}
    norms = set(norm_parameters(student))
    res = repair_model(
        student, dense, train, held, _fast(train="norms", patience=None), plan=plan, teacher_name="tiny"
    )
    for n, p in res.model.named_parameters():
        assert torch.equal(p, before[n]) or n in norms, n
    assert any(not torch.equal(p, before[n]) for n, p in res.model.named_parameters())
    assert res.summary["trainable_parameters"] == sum(before[n].numel() for n in norms)
    assert res.summary["rank"] is None


def test_deterministic_for_a_seed_and_seed_matters(calib):
    train, held = calib
    dense = tiny_model("llama")

    def run(seed):
        student, plan = _drop_student(dense, train)
        r = repair_model(student, dense, train, held, _fast(seed=seed), plan=plan, teacher_name="tiny")
        return r.model.state_dict(), r.log

    a, log_a = run(0)
    b, log_b = run(0)
    c, _ = run(1)
    assert all(torch.equal(a[k], b[k]) for k in a) and log_a == log_b
    assert any(not torch.equal(a[k], c[k]) for k in a)


class _Killed(Exception):
    pass


def test_resume_after_an_interruption_gives_the_same_weights(calib, tmp_path):
    train, held = calib
    dense = tiny_model("mistral")
    settings = _fast(steps=8, eval_every=2, patience=None, loss="jsd")
    student, plan = _drop_student(dense, train)
    straight = repair_model(copy.deepcopy(student), dense, train, held, settings, plan=plan, teacher_name="t")

    state = tmp_path / "state"

    def kill_at_5(step):
        if step == 5:
            raise _Killed

    with pytest.raises(_Killed):
        repair_model(
            copy.deepcopy(student), dense, train, held, settings, plan=plan, teacher_name="t",
            state_dir=state, on_step=kill_at_5,
        )  # fmt: skip
    saved = sorted(p.name for p in state.iterdir())
    assert saved == ["step-000004"]  # the last evaluation's checkpoint, complete
    seen = []
    resumed = repair_model(
        copy.deepcopy(student), dense, train, held, settings, plan=plan, teacher_name="t",
        state_dir=state, on_step=seen.append,
    )  # fmt: skip
    assert seen == [5, 6, 7, 8]  # steps 1-4 were not run again
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    assert [r["step"] for r in resumed.log] == [r["step"] for r in straight.log]
    # a state from other settings is refused, not silently continued
    with pytest.raises(RepairStateError, match="fingerprint"):
        repair_model(
            copy.deepcopy(student), dense, train, held, _fast(steps=9, patience=None), plan=plan,
            teacher_name="t", state_dir=state,
        )  # fmt: skip


def test_early_stopping_keeps_the_best_state(calib):
    train, held = calib
    dense = tiny_model("llama")
    student, plan = _drop_student(dense, train)
    # a learning rate far too large: the held-out KL rises, training stops, the best state is kept
    res = repair_model(
        student, dense, train, held, _fast(lr=3.0, steps=40, patience=2, warmup=0.0), plan=plan,
        teacher_name="tiny",
    )  # fmt: skip
    assert res.summary["stopped"].startswith("early stop")
    assert res.summary["steps_run"] < 40
    evals = [r["heldout_kl"] for r in res.log if "heldout_kl" in r]
    assert res.summary["heldout_after"]["heldout_kl"] == min(evals)


def test_refusals_in_the_loop(calib):
    train, held = calib
    dense = tiny_model("llama")
    student, plan = _drop_student(dense, train)
    with pytest.raises(RepairSettingsError, match="larger than layer"):
        repair_model(student, dense, train, held, _fast(rank=65), plan=plan, teacher_name="t")
    other = tiny_model("llama", vocab_size=300)
    with pytest.raises(RepairInputError, match="different vocabularies"):
        repair_model(copy.deepcopy(student), other, train, held, _fast(), plan=plan, teacher_name="t")
    empty = Calibration(torch.zeros(0, 24, dtype=torch.long), "none", 0, 0)
    with pytest.raises(RepairInputError, match="empty"):
        repair_model(copy.deepcopy(student), dense, empty, held, _fast(), plan=plan, teacher_name="t")


def test_plan_validates_the_repair_record(tmp_path):
    plan = PrunePlan(method="drop", base_model="m", family="llama", target="attn", num_layers_before=4)
    plan.dropped_sublayers = [{"layer": 1, "sublayer": "attn"}]
    good = {"loss": "kl", "steps": 5, "steps_run": 5, "tokens": 100, "learning_rate": 1e-3, "teacher": "m"}
    assert PrunePlan.from_dict({**plan.to_dict(), "repair": good}).name == "Drop-1A+KL"
    for key, value in [("loss", "mse"), ("steps", -1), ("learning_rate", 0), ("teacher", "")]:
        with pytest.raises(PlanError, match=f"repair.{key}"):
            PrunePlan.from_dict({**plan.to_dict(), "repair": {**good, key: value}})


# --- CLI and Python API ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pruned_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("repair")
    dense = base / "dense"
    tiny_model("llama").save_pretrained(dense)
    tiny_tokenizer().save_pretrained(dense)
    (base / "calib.txt").write_text(random_text(3000, 5))
    common = ["--calib", str(base / "calib.txt"), "--nsamples", "8", "--seqlen", "16"]
    out = {}
    for name, args in {
        "drop": ["prune", "drop", str(dense), "--target", "attn", "--n", "2"],
        "blocks": ["prune", "drop", str(dense), "--target", "block", "--n", "1"],
        "sparse": ["prune", "sparsify", str(dense), "--method", "wanda", "--pattern", "2:4"],
    }.items():
        res = runner.invoke(app, [*args, "--out", str(base / name), *common])
        assert res.exit_code == 0, res.output
        out[name] = base / name
    out["dense"], out["calib"] = dense, base / "calib.txt"
    return out


def _repair_args(dirs, student, out, *extra):
    return [
        "repair", str(dirs[student]), "--out", str(out), "--calib", str(dirs["calib"]), "--nsamples", "8",
        "--seqlen", "16", "--steps", "4", "--eval-every", "2", "--rank", "4", "--batch-size", "4", *extra,
    ]  # fmt: skip


def test_cli_repair_writes_a_normal_checkpoint(pruned_dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sparse-kl"
    res = runner.invoke(app, _repair_args(pruned_dirs, "sparse", out, "--lr", "1e-2"))
    assert res.exit_code == 0, res.output
    assert "Wanda-2:4+KL" in res.output and "held-out KL" in res.output
    for f in (PLAN_FILE, "repair_log.json", "repair_loss.png", "repair_config.json", "model.safetensors"):
        assert (out / f).exists(), f
    plan = json.loads((out / PLAN_FILE).read_text())
    r = plan["repair"]
    assert (
        r["loss"] == "kl" and r["rank"] == 4 and r["steps"] == 4 and r["teacher"] == str(pruned_dirs["dense"])
    )
    assert r["tokens"] == 4 * 4 * 16 and r["learning_rate"] == 1e-2
    model, _, loaded_plan = prunelens.load(str(out), return_plan=True)
    assert loaded_plan.repair == r
    plain = AutoModelForCausalLM.from_pretrained(out)  # sparsified structure: plain transformers loads it
    w = plain.model.layers[0].mlp.down_proj.weight
    assert ((w.reshape(-1, 4) != 0).sum(-1) <= 2).all()
    assert not (out.parent / f".{out.name}.repair-state").exists()  # state removed once done
    info = runner.invoke(app, ["info", str(out), "--json"])
    assert info.exit_code == 0, info.output
    assert json.loads(info.stdout)["plan"]["repair"]["loss"] == "kl"
    info = runner.invoke(app, ["info", str(out)])
    assert info.exit_code == 0 and "repaired" in info.output and "held-out KL" in info.output, info.output
    assert not list(tmp_path.glob(".*partial*"))


def test_python_api_and_drop_structure(pruned_dirs, tmp_path):
    out = tmp_path / "drop-ce"
    result = prunelens.repair(
        str(pruned_dirs["drop"]), out=out, calib=str(pruned_dirs["calib"]), nsamples=8, seqlen=16,
        loss="ce", steps=3, eval_every=3, rank=2,
    )  # fmt: skip
    assert result.plan.name == "Drop-2A+CE" and result.summary["temperature"] is None
    model, _, plan = prunelens.load(str(out), return_plan=True)
    ad = Adapter(model)
    assert sum(ad.is_dropped(i, "attn") for i in range(ad.num_layers)) == 2
    blocks = prunelens.repair(
        str(pruned_dirs["blocks"]), out=tmp_path / "blocks-norms", calib=str(pruned_dirs["calib"]),
        nsamples=8, seqlen=16, train="norms", steps=2, eval_every=2,
    )  # fmt: skip
    assert blocks.plan.dropped_blocks and Adapter(blocks.model).num_layers == 3


@pytest.mark.parametrize(
    "student, extra, words",
    [
        ("sparse", ["--steps", "0"], "--steps: must be a positive integer"),
        ("sparse", ["--rank", "1000"], "--rank: is 1000, larger than layer"),
        ("sparse", ["--loss", "mse"], "--loss: unknown loss"),
        ("dense", [], "not a prunelens checkpoint"),
        ("drop", ["--teacher", "VOCAB"], "different vocabularies"),
        ("drop", ["--calib", "EMPTY"], "empty"),
        ("drop", ["--nsamples", "1"], "--nsamples"),
    ],
)
def test_cli_refuses_bad_input_and_writes_nothing(pruned_dirs, tmp_path, student, extra, words):
    if "VOCAB" in extra:
        other = tmp_path / "other"
        tiny_model("llama", vocab_size=300).save_pretrained(other)
        tiny_tokenizer(300).save_pretrained(other)
        extra = ["--teacher", str(other)]
    if "EMPTY" in extra:
        (tmp_path / "empty.txt").write_text("   \n")
        extra = ["--calib", str(tmp_path / "empty.txt")]
    out = tmp_path / "out"
    args = _repair_args(pruned_dirs, student, out)
    res = runner.invoke(app, [*args, *extra])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], res.output
    assert not out.exists() and not (tmp_path / ".out.repair-state").exists()


# --- in a study ---------------------------------------------------------------------------------


def test_study_config_validates_repair_blocks():
    from prunelens.studies.config import StudyConfigError, parse_config

    def cfg(variant):
        return parse_config({"variants": [variant], "tasks": [{"task": "wikitext2", "limit": 1}]})

    v = cfg(
        {"name": "R", "drop": {"target": "attn", "n": 2}, "repair": {"loss": "jsd", "steps": 3}}
    ).variants[1]
    assert v.repair["loss"] == "jsd" and v.repair["steps"] == 3 and v.repair["nsamples"] == 64
    assert v.repair["rank"] == RepairSettings().rank  # defaults spelled out: they enter the fingerprint
    for bad, field in [
        ({"steps": 0}, "variants[0].repair.steps"),
        ({"loss": "mse"}, "variants[0].repair.loss"),
        ({"epochs": 2}, "variants[0].repair.epochs"),
        ({"nsamples": 1}, "variants[0].repair.nsamples"),
        ("kl", "variants[0].repair"),
    ]:
        with pytest.raises(StudyConfigError, match=re_escape(f"field '{field}'")):
            cfg({"name": "R", "drop": {"target": "attn", "n": 2}, "repair": bad})
    with pytest.raises(StudyConfigError, match="drop or sparsify"):
        cfg({"name": "R", "control": {"round_to": "auto"}, "repair": {"steps": 2}})


@pytest.mark.slow
def test_study_runs_a_repaired_twin(tmp_path):
    """A repaired variant in a study: built, saved as a checkpoint (masks kept), evaluated beside its
    unrepaired twin, and the fingerprint changes with the repair settings."""
    from conftest import need_data

    need_data("c4/c4_demo.json")
    from prunelens.studies.config import parse_config
    from prunelens.studies.runner import plan_units, run_study

    d = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    raw = {
        "model": str(d),
        "calibration": {"source": "c4", "nsamples": 4, "seqlen": 32},
        "variants": [
            {"name": "Mag-50%", "sparsify": {"method": "magnitude", "sparsity": 0.5}},
            {
                "name": "Mag-50%+KL",
                "sparsify": {"method": "magnitude", "sparsity": 0.5},
                "repair": {"steps": 2, "eval_every": 1, "rank": 2, "batch_size": 2, "nsamples": 6},
                "twin": "Mag-50%",
            },
        ],
        "tasks": [{"task": "wikitext2", "limit": 1}],
        "batch_size": 2,
        "analyses": {"prompts": {"gsm8k": 1}, "trajectories": {"max_new_tokens": 2}},
        "case_study": {"gsm8k": 1, "nq_open": 0, "max_new_tokens": 2},
    }
    cfg = parse_config(raw)
    run_study(cfg, tmp_path / "s")
    info = json.loads((tmp_path / "s/variants/Mag-50%+KL/info.json").read_text())
    assert info["plan"]["repair"]["steps_run"] == 2 and info["plan"]["repair"]["loss"] == "kl"
    assert (tmp_path / "s/variants/Mag-50%+KL/repair_loss.png").exists()
    assert not (tmp_path / "s/variants/Mag-50%+KL/repair-state").exists()
    plain, _ = prunelens.load(str(tmp_path / "s/variants/Mag-50%/checkpoint"))
    fixed, _ = prunelens.load(str(tmp_path / "s/variants/Mag-50%+KL/checkpoint"))
    for (n, a), (_, b) in zip(adaptable_linears(plain).items(), adaptable_linears(fixed).items()):
        assert torch.equal(a.weight == 0, b.weight == 0), n
    s = json.loads((tmp_path / "s/eval/Mag-50%+KL/summary.json").read_text())
    assert "wikitext2" in s["results"]
    other = parse_config(
        {**raw, "variants": [raw["variants"][0], {**raw["variants"][1], "repair": {"steps": 3}}]}
    )
    fp = {u.id: u.fingerprint for u in plan_units(cfg)}
    fp2 = {u.id: u.fingerprint for u in plan_units(other)}
    assert fp["variant/Mag-50%+KL"] != fp2["variant/Mag-50%+KL"]
    assert fp["variant/Mag-50%"] == fp2["variant/Mag-50%"]


def test_eval_and_analyze_read_a_repaired_checkpoint(pruned_dirs, tmp_path):
    out = tmp_path / "drop-kl"
    prunelens.repair(
        str(pruned_dirs["drop"]), out=out, calib=str(pruned_dirs["calib"]), nsamples=8, seqlen=16,
        steps=2, eval_every=1, rank=2, lr=1e-3, keep="last",
    )  # fmt: skip
    (tmp_path / "prompts.txt").write_text("w1 w2 w3 w4\nw5 w6\n")
    res = runner.invoke(
        app,
        [
            "analyze", str(pruned_dirs["dense"]), str(out), "--out", str(tmp_path / "an"), "--prompts",
            str(tmp_path / "prompts.txt"), "--max-new-tokens", "3", "--mc", "none", "--threads", "1",
            "--no-figures",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "Drop-2A+KL" in res.output
    # the analysis sees the repaired weights, not the plan's drops alone
    plain = runner.invoke(
        app,
        [
            "analyze", str(pruned_dirs["dense"]), str(pruned_dirs["drop"]), "--out", str(tmp_path / "an2"),
            "--prompts", str(tmp_path / "prompts.txt"), "--max-new-tokens", "3", "--mc", "none",
            "--threads", "1", "--no-figures",
        ],
    )  # fmt: skip
    assert plain.exit_code == 0, plain.output
    a = json.loads((tmp_path / "an" / "summary.json").read_text())["variants"]
    b = json.loads((tmp_path / "an2" / "summary.json").read_text())["variants"]
    ka = next(iter(a.values()))["trajectories"]["teacher_forced"]["mean_kl"]
    kb = next(iter(b.values()))["trajectories"]["teacher_forced"]["mean_kl"]
    assert ka != kb
    # and the evaluation reads it like any checkpoint
    need_data("wikitext2_tokens/test.txt")
    ev = runner.invoke(
        app, ["eval", str(out), "--tasks", "wikitext2", "--limit", "1", "--out", str(tmp_path / "ev")]
    )
    assert ev.exit_code == 0, ev.output
    assert (tmp_path / "ev" / "summary.json").exists()


def test_bfloat16_autocast_trains(calib):
    train, held = calib
    dense = tiny_model("llama")
    student, plan = _drop_student(dense, train)
    res = repair_model(
        student, dense, train, held, _fast(precision="bfloat16", patience=None, keep="last"), plan=plan,
        teacher_name="t",
    )  # fmt: skip
    losses = [r["loss"] for r in res.log if "loss" in r]
    assert all(math.isfinite(x) for x in losses)
    assert next(res.model.parameters()).dtype == torch.float32  # weights stay in the model's dtype


@pytest.mark.slow
def test_a_killed_cli_repair_resumes(pruned_dirs, tmp_path):
    """SIGKILL a running `prunelens repair` once it has checkpointed; the same command then finishes
    from the checkpoint with the weights of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    def cmd(out):
        args = _repair_args(
            pruned_dirs, "drop", out, "--steps", "400", "--eval-every", "1", "--patience", "0"
        )
        args = [a if a != "4" or i < 0 else a for i, a in enumerate(args)]
        return [sys.executable, "-m", "prunelens", *args, "--threads", "1"]

    env = {**os.environ, "PRUNELENS_QUIET": "1"}
    killed = tmp_path / "killed"
    state = tmp_path / ".killed.repair-state"
    proc = subprocess.Popen(cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(state.glob("step-*")):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not killed.exists(), "the repair finished before it could be killed"
    done = sorted(state.glob("step-*"))
    assert done and int(done[-1].name.split("-")[1]) < 400
    subprocess.run(cmd(killed), env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    straight = tmp_path / "straight"
    subprocess.run(cmd(straight), env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    a, b = load_file(str(killed / "model.safetensors")), load_file(str(straight / "model.safetensors"))
    assert set(a) == set(b)
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    assert json.loads((killed / PLAN_FILE).read_text())["repair"]["steps_run"] == 400
    assert not state.exists()
