"""Shared fixtures. Tests never reach a hub: HF_HUB_OFFLINE is set before transformers is imported."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PRUNELENS_QUIET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def tiny_tokenizer(vocab_size: int = 256):
    """A real (fast) Hugging Face tokenizer over a word-level vocabulary ``w0 … wN``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for i in range(vocab_size - len(specials)):
        vocab[f"w{i}"] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


@pytest.fixture
def tok():
    return tiny_tokenizer()


def random_text(n_words: int, seed: int = 0, vocab: int = 250) -> str:
    g = torch.Generator().manual_seed(seed)
    return " ".join(f"w{int(i)}" for i in torch.randint(0, vocab, (n_words,), generator=g))


def missing(reason: str, *, module: bool = False):
    """Something a test needs is absent:
    fail under CI (where everything must be installed), skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason, allow_module_level=module)


def need_data(rel: str):
    """Path of a shared data file (see :func:`missing`)."""
    from prunelens.data.paths import DataNotFoundError, find_data_file

    try:
        return find_data_file(rel)
    except DataNotFoundError as exc:
        missing(f"data: {exc}")


def need_minilm():
    """Folder of the all-MiniLM-L6-v2 wheel (see :func:`missing`)."""
    from prunelens.models.embedder_loading import embedder_path

    try:
        return embedder_path("all-minilm-l6-v2")
    except FileNotFoundError as exc:
        missing(f"model: {exc}")


def need_package(name: str, *, module: bool = False):
    """Import ``name`` (see :func:`missing`)."""
    try:
        return __import__(name)
    except ImportError as exc:
        missing(f"package: {exc}", module=module)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``): on a
    machine whose cores are shared, oversubscribed torch threads make small forward passes far slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
