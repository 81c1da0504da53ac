"""Calibration sources, seeded sampling and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from prunelens.data.calibration import (
    C4_CALIB_DOCS,
    CalibrationDataError,
    get_calibration,
    load_texts,
    read_text_file,
    sample_windows,
    token_stream,
)

from conftest import need_data, random_text


def test_local_file_formats(tmp_path, tok):
    (tmp_path / "a.txt").write_text(random_text(300, 1))
    (tmp_path / "b.json").write_text(json.dumps([{"text": random_text(50, 2)}, random_text(60, 3)]))
    (tmp_path / "c.jsonl").write_text(
        "\n".join(json.dumps({"text": random_text(40, i)}) for i in range(3)) + "\n"
    )
    assert len(read_text_file(tmp_path / "a.txt")) == 1
    assert len(read_text_file(tmp_path / "b.json")) == 2
    assert len(read_text_file(tmp_path / "c.jsonl")) == 3
    cal = get_calibration(tok, str(tmp_path / "c.jsonl"), nsamples=4, seqlen=16, seed=0)
    assert cal.input_ids.shape == (4, 16) and cal.input_ids.dtype == torch.long
    # 3 docs × 40 words joined by 2 EOS separators
    assert cal.num_tokens_available == 122


def test_sampling_is_seeded(tok, tmp_path):
    (tmp_path / "a.txt").write_text(random_text(500, 7))
    a = get_calibration(tok, str(tmp_path / "a.txt"), 8, 32, seed=3)
    b = get_calibration(tok, str(tmp_path / "a.txt"), 8, 32, seed=3)
    c = get_calibration(tok, str(tmp_path / "a.txt"), 8, 32, seed=4)
    assert torch.equal(a.input_ids, b.input_ids)
    assert not torch.equal(a.input_ids, c.input_ids)
    assert a.describe() == {
        "source": str(tmp_path / "a.txt"),
        "nsamples": 8,
        "seqlen": 32,
        "seed": 3,
        "tokens_available": 500,
        "bos_id": None,
    }


def test_errors_are_clear(tok, tmp_path):
    (tmp_path / "empty.txt").write_text("  \n\n ")
    with pytest.raises(CalibrationDataError, match="empty"):
        get_calibration(tok, str(tmp_path / "empty.txt"), 2, 8)
    (tmp_path / "short.txt").write_text(random_text(10))
    with pytest.raises(CalibrationDataError, match=r"found 10 tokens, need at least seqlen=64"):
        get_calibration(tok, str(tmp_path / "short.txt"), 2, 64)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CalibrationDataError, match="not valid JSON"):
        read_text_file(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text(json.dumps([{"content": "x"}]))
    with pytest.raises(CalibrationDataError, match="unreadable calibration record"):
        read_text_file(tmp_path / "bad2.json")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(CalibrationDataError, match="unsupported"):
        read_text_file(tmp_path / "x.csv")
    with pytest.raises(CalibrationDataError, match="does not exist"):
        read_text_file(tmp_path / "missing.txt")
    with pytest.raises(CalibrationDataError, match="unknown calibration source"):
        load_texts("no-such-source")
    with pytest.raises(CalibrationDataError, match="positive"):
        sample_windows(torch.arange(100), 0, 8, 0)


def test_c4_and_wikitext_sources(tok):
    need_data("c4/c4_demo.json")
    need_data("wikitext2_tokens/test.txt")
    calib, held = load_texts("c4"), load_texts("c4-heldout")
    assert len(calib) == C4_CALIB_DOCS and len(held) == 300 - C4_CALIB_DOCS
    assert not set(calib) & set(held)
    wiki = load_texts("wikitext2")
    assert len(wiki) == 1 and "Robert <unk>" in wiki[0]
    stream = token_stream(tok, held[:3])
    assert stream.ndim == 1 and stream.numel() > 0
