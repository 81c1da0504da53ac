"""Option subspace: option tokens, renormalised option distributions, full vocabulary versus options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunelens.analysis import figures
from prunelens.analysis.subspace import (
    OptionTokenError,
    final_logits,
    mc_prompt,
    option_logits,
    option_subspace,
    option_token_ids,
)
from prunelens.analysis.tables import TABLE_COLUMNS
from prunelens.analysis.variants import Variant
from prunelens.data.tasks import MCExample
from prunelens.models.tiny import tiny_model

from conftest import tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

LABELS = ("w10", "w11", "w12", "w13")


def _examples():
    return [
        MCExample(
            id="q0",
            context="w1 w2 w3",
            choices=[" w5", " w6", " w7"],
            label=0,
            task="toy",
            meta={"question": "w1 w2 w3"},
        ),
        MCExample(id="q1", context="w4 w8", choices=[" w9", " w20", " w21", " w22"], label=2, task="toy"),
        MCExample(id="q2", context="w30 w31 w32 w33", choices=[" w40", " w41"], label=1, task="toy"),
    ]


def test_option_tokens_and_clear_errors():
    tok = tiny_tokenizer()
    ids = option_token_ids(tok, LABELS)
    assert ids == [[tok.convert_tokens_to_ids(x)] for x in LABELS]  # "w10" and " w10" are the same token
    with pytest.raises(OptionTokenError, match="not a single token"):
        option_token_ids(tok, ("A", "B"))  # unknown to this vocabulary
    with pytest.raises(OptionTokenError, match="not a single token"):
        option_token_ids(tok, ("w1 w2", "w3"))
    prompt = mc_prompt(_examples()[1], LABELS)
    assert "w10. w9\nw11. w20\nw12. w21\nw13. w22" in prompt and prompt.startswith("w4 w8")


@pytest.mark.real_model
def test_option_tokens_on_the_embedded_tokenizer():
    from transformers import AutoTokenizer

    from prunelens.models.loading import embedded_checkpoint

    tok = AutoTokenizer.from_pretrained(embedded_checkpoint())
    ids = option_token_ids(tok, "ABCDE")
    assert all(len(x) == 2 for x in ids)  # "A" and " A" are distinct single tokens
    assert ids[0] == [
        tok.encode("A", add_special_tokens=False)[0],
        tok.encode(" A", add_special_tokens=False)[0],
    ]
    with pytest.raises(OptionTokenError):
        option_token_ids(tok, ("Option A", "Option B"))


def test_option_subspace_renormalises_and_detects_changes(tmp_path):
    model = tiny_model("llama")
    tok = tiny_tokenizer()
    ex = _examples()
    same = option_subspace(model, tok, Variant("none", "test"), ex, labels=LABELS)
    np.testing.assert_allclose(same.values[("p_full", "kl", 1.0)], 0.0, atol=1e-6)
    np.testing.assert_allclose(same.values[("p_options", "kl", 1.0)], 0.0, atol=1e-7)
    assert not any(c["changed"] for c in same.choices)

    v = Variant("Drop-2A", "test", drops=((0, "attn"), (1, "attn")))
    res = option_subspace(model, tok, v, ex, labels=LABELS, temperatures=(1.0, 0.5), top_k=5)
    # explicit: the option distribution is the full distribution restricted to the options, renormalised
    from prunelens.analysis.subspace import encode_prompt

    prompts = [encode_prompt(tok, mc_prompt(e, LABELS)) for e in ex]
    zd = final_logits(model, prompts, pad_id=tok.pad_token_id)
    with v.active(model):
        zp = final_logits(model, prompts, pad_id=tok.pad_token_id)
    for j, e in enumerate(ex):
        opts = [x[0] for x in option_token_ids(tok, LABELS[: len(e.choices)])]
        p, q = torch.softmax(zd[j].double(), -1)[opts], torch.softmax(zp[j].double(), -1)[opts]
        p, q = p / p.sum(), q / q.sum()
        kl = float((p * (p / q).log()).sum())
        assert res.values[("p_options", "kl", 1.0)][j] == pytest.approx(kl, rel=1e-3, abs=1e-7)
        ch = [c for c in res.choices if c["example"] == e.id and c["temperature"] == 1.0][0]
        assert ch["dense_choice"] == int(p.argmax()) and ch["pruned_choice"] == int(q.argmax())
        assert ch["changed"] == (int(p.argmax()) != int(q.argmax()))
        assert ch["n_options"] == len(e.choices)
    torch.testing.assert_close(
        option_logits(zd[:1], [[3], [4, 5]], 1.0)[0, 1], torch.logsumexp(zd[0, [4, 5]].double(), -1)
    )
    frames = res.frames()
    for name, df in frames.items():
        assert list(df.columns) == TABLE_COLUMNS[name], name
    assert set(frames["subspace"]["space"]) == {"p_full", "p_options"}
    assert len(frames["subspace_top_tokens"]) == len(ex) * 5
    assert len(frames["subspace_choices"]) == len(ex) * 2
    paths = figures.option_subspace(frames["subspace"], frames["subspace_choices"], tmp_path, "Drop-2A")
    paths += figures.top_tokens(frames["subspace_top_tokens"], tmp_path, "Drop-2A")
    assert sorted(p.suffix for p in paths) == [".png", ".png", ".svg", ".svg"]
    assert all(p.stat().st_size > 1000 for p in paths)
