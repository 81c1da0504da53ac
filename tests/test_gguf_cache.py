"""The cache of converted GGUF files: keyed by content, reused, safe against concurrent runs, clearable;
and the header check that refuses a file that is not GGUF, or one cut short, before any conversion.

The conversion itself (de-quantising a real GGUF file) is exercised by the embedded-model tests; here a
stand-in converter counts how often it runs, so the cache logic is tested in milliseconds.
"""

from __future__ import annotations

import threading
import time

import pytest
from typer.testing import CliRunner

import prunelens.models.loading as loading
from prunelens.cli import app
from prunelens.models.tiny import tiny_model

from conftest import tiny_tokenizer


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELENS_CACHE", str(tmp_path / "cache"))
    calls = []

    def convert(path, dtype=None, *, check=True):
        calls.append(str(path))
        time.sleep(0.2)  # long enough for concurrent callers to overlap
        return tiny_model("llama"), tiny_tokenizer()

    monkeypatch.setattr(loading, "load_gguf", convert)
    f = tmp_path / "My-Model.Q4.gguf"
    _write_small_gguf(f)  # a real (tiny) GGUF file: it passes the header check before the conversion
    return f, calls


def _write_small_gguf(path):
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("weight", np.arange(4096, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_second_load_reuses_the_conversion(fake_gguf, tmp_path):
    f, calls = fake_gguf
    first = loading.resolve(str(f))
    again = loading.resolve(str(f))
    assert calls == [str(f)] and first.path == again.path
    assert first.path.parent == tmp_path / "cache" / "models"
    model, tok = loading.load(str(f))  # loads the cached safetensors, no second conversion
    assert calls == [str(f)] and model.config.model_type == "llama"
    copy = tmp_path / "elsewhere.gguf"  # same content under another name: same entry
    copy.write_bytes(f.read_bytes())
    assert loading.gguf_checkpoint(copy, name="my-model.q4") == first.path and len(calls) == 1
    f.write_bytes(f.read_bytes() + b"changed")  # edited content: converted anew
    assert loading.resolve(str(f)).path != first.path and len(calls) == 2


def test_concurrent_conversions_leave_one_complete_entry(fake_gguf):
    f, calls = fake_gguf
    results, errors = [], []

    def worker():
        try:
            results.append(loading.gguf_checkpoint(f))
        except Exception as exc:  # noqa: BLE001 — reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    root = results[0].parent
    assert [p.name for p in root.iterdir()] == [results[0].name]  # no partial directories left behind
    assert (results[0] / loading.SOURCE_FILE).exists() and (results[0] / "model.safetensors").exists()


def test_cache_command_lists_and_clears(fake_gguf):
    f, _ = fake_gguf
    entry = loading.gguf_checkpoint(f)
    runner = CliRunner()
    res = runner.invoke(app, ["cache", "list"])
    assert res.exit_code == 0 and entry.name in " ".join(res.output.split())
    res = runner.invoke(app, ["cache", "clear"])
    assert res.exit_code == 0 and "removed 1" in res.output and not entry.exists()
    assert runner.invoke(app, ["cache", "shred"]).exit_code == 2


def _refused_everywhere(path, needle):
    """``info``, ``eval`` and ``prunelens.load`` all refuse ``path`` with one line naming it."""
    import prunelens
    from prunelens.utils.errors import InputError

    runner = CliRunner()
    for args in (
        ["info", str(path)],
        ["eval", str(path), "--tasks", "wikitext2", "--out", str(path) + ".out"],
    ):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        line = " ".join(res.output.split())
        assert len(res.output.strip().splitlines()) == 1 and str(path) in line and needle in line, res.output
    with pytest.raises(InputError, match=needle):
        prunelens.load(str(path))


def test_a_file_that_is_not_gguf_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELENS_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "model.gguf"
    fake.write_bytes(bytes(range(256)) * 40)  # not GGUF at all
    _refused_everywhere(fake, "is not a GGUF file")
    assert not (tmp_path / "cache" / "models").exists()  # nothing converted, nothing cached


def test_a_truncated_gguf_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELENS_CACHE", str(tmp_path / "cache"))
    whole = loading.embedded_gguf()
    for n, needle in ((4 << 20, "its tensors need"), (64 << 10, "header runs past the end")):
        cut = tmp_path / f"cut-{n}.gguf"
        with open(whole, "rb") as src:
            cut.write_bytes(src.read(n))  # a download that stopped after n bytes
        _refused_everywhere(cut, needle)
    assert not (tmp_path / "cache" / "models").exists()
