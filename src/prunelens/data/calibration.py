"""Calibration text: named sources, local files or hub datasets → N seeded windows of L tokens.

Sources (``--calib``):

* ``c4`` — the C4 sample (``c4/c4_demo.json`` under the data root: a JSON array of ``{"text": ...}``),
  documents 0–249; ``c4-heldout`` is documents 250–299, kept apart for evaluation. Offline without the
  file, and with the hub reachable, the first shard of ``allenai/c4`` (``en``, validation) is used.
* ``wikitext2`` — WikiText-2 test (``wikitext2_tokens/test.txt`` under the data root, or the hub's
  ``wikitext-2-raw-v1``).
* a local ``.txt`` (one document), ``.json`` (a list of strings or of objects with ``"text"``) or
  ``.jsonl`` (one string or ``{"text": ...}`` per line) file;
* ``hub:NAME[:CONFIG[:SPLIT]]`` — any hub dataset with a ``text`` column (needs ``datasets``).

Windows are drawn from one token stream (documents joined by the tokenizer's EOS token) at offsets
drawn by ``random.Random(seed)``, so the same seed gives the same windows on every machine. Where the
tokenizer prepends a BOS token to every text (:func:`bos_prefix`: Gemma, Llama 2, ...), each window
starts with it and holds ``seqlen − 1`` stream tokens: calibration statistics are then taken on the
activations the model normally sees, BOS position included. Tokenizers that add no BOS (SmolLM2,
Llama 3 style chat tokenizers without it, GPT-NeoX) get bare slices, the papers' convention.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from prunelens.data.paths import DataNotFoundError
from prunelens.data.tasks.readers import JSONLinesError, json_lines, read_text
from prunelens.utils.errors import InputError

C4_CALIB_DOCS = 250


class CalibrationDataError(InputError):
    """Calibration data is empty, unreadable or too short."""


@dataclass(frozen=True)
class Calibration:
    """Token windows plus where they came from (recorded in prune plans)."""

    input_ids: torch.Tensor  # (nsamples, seqlen) int64
    source: str
    seed: int
    num_tokens_available: int
    bos_id: int | None = None  # the BOS token every window starts with (None: bare stream slices)

    @property
    def nsamples(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seqlen(self) -> int:
        return self.input_ids.shape[1]

    def describe(self) -> dict:
        return {
            "source": self.source,
            "nsamples": self.nsamples,
            "seqlen": self.seqlen,
            "seed": self.seed,
            "tokens_available": self.num_tokens_available,
            "bos_id": self.bos_id,
        }


def _texts_from_json_obj(obj) -> list[str]:
    if isinstance(obj, dict) and "text" in obj:
        obj = obj["text"]
        if isinstance(obj, str):
            return [obj]
    if not isinstance(obj, list):
        raise CalibrationDataError(
            "JSON calibration data must be a list of strings or of objects with 'text'"
        )
    out = []
    for item in obj:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            out.append(item["text"])
        else:
            raise CalibrationDataError(
                f"unreadable calibration record (need a string or {{'text': str}}): {str(item)[:80]}"
            )
    return out


def read_text_file(path: str | Path) -> list[str]:
    """Documents from a local ``.txt``, ``.json`` or ``.jsonl`` file (read as is: no decompression)."""
    path = Path(path)
    if not path.exists():
        raise CalibrationDataError(f"calibration file {path} does not exist")
    try:
        raw = read_text(path, decompress=False)
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationDataError(f"cannot read calibration file {path}: {exc}") from exc
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            return _texts_from_json_obj(json.loads(raw))
        if suffix == ".jsonl":
            return [doc for _, rec in json_lines(raw.splitlines()) for doc in _texts_from_json_obj([rec])]
    except json.JSONDecodeError as exc:
        raise CalibrationDataError(f"calibration file {path} is not valid JSON: {exc}") from exc
    except JSONLinesError as exc:
        raise CalibrationDataError(f"calibration file {path} is not valid JSONL: {exc.error}") from exc.error
    if suffix in (".txt", ".text", ".tokens", ""):
        return [raw]
    raise CalibrationDataError(f"unsupported calibration file type {suffix!r} (use .txt, .json or .jsonl)")


def _hub_texts(name: str, config: str | None, split: str, limit: int | None = None) -> list[str]:
    try:
        import datasets  # noqa: PLC0415
    except ImportError as exc:
        raise CalibrationDataError(
            f"loading {name!r} from the hub needs the 'datasets' package (pip install 'prunelens[hub]')"
        ) from exc
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # datasets raises many types when offline or unknown
        raise CalibrationDataError(f"could not load hub dataset {name!r} ({config}, {split}): {exc}") from exc
    if "text" not in ds.column_names:
        raise CalibrationDataError(f"hub dataset {name!r} has no 'text' column (columns: {ds.column_names})")
    texts = ds["text"] if limit is None else ds.select(range(min(limit, len(ds))))["text"]
    return [t for t in texts if t]


def load_texts(source: str) -> list[str]:
    """Documents of a calibration source (see the module docstring for the names)."""
    if source in ("c4", "c4-heldout", "wikitext2"):
        from prunelens.data.tasks import load_task  # local file first, then the hub

        try:
            data = load_task("wikitext2" if source == "wikitext2" else "c4")
        except DataNotFoundError as exc:
            raise CalibrationDataError(str(exc)) from exc
        if source == "wikitext2":
            return [data]
        return data[:C4_CALIB_DOCS] if source == "c4" else data[C4_CALIB_DOCS:]
    if source.startswith("hub:"):
        parts = source[4:].split(":")
        name, config, split = (
            parts[0],
            (parts[1] or None) if len(parts) > 1 else None,
            parts[2] if len(parts) > 2 else "train",
        )
        return _hub_texts(name, config, split)
    path = Path(source).expanduser()
    if path.exists() or path.suffix:
        return read_text_file(path)
    raise CalibrationDataError(
        f"unknown calibration source {source!r}: use c4, c4-heldout, wikitext2, a .txt/.json/.jsonl file, "
        "or hub:NAME[:CONFIG[:SPLIT]]"
    )


def token_stream(tokenizer, docs: list[str]) -> torch.Tensor:
    """Tokenise documents and join them with the EOS token into one 1-D stream."""
    docs = [d for d in docs if d and d.strip()]
    if not docs:
        raise CalibrationDataError("calibration data is empty (no non-blank document)")
    enc = tokenizer(docs, add_special_tokens=False)["input_ids"]
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    flat: list[int] = []
    for i, ids in enumerate(enc):
        if i:
            flat.extend(sep)
        flat.extend(ids)
    return torch.tensor(flat, dtype=torch.long)


def bos_prefix(tokenizer) -> int | None:
    """The BOS token id that ``tokenizer`` prepends to a plain text by itself, or None.

    Read off what the tokenizer does (``tokenizer("text")`` against ``add_special_tokens=False``), not
    off a flag, because tokenizers spell it differently (``add_bos_token``, a post-processor template).
    """
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    with_special = tokenizer("The", add_special_tokens=True)["input_ids"]
    bare = tokenizer("The", add_special_tokens=False)["input_ids"]
    if with_special and with_special[0] == bos and (not bare or bare[0] != bos):
        return int(bos)
    return None


def sample_windows(
    stream: torch.Tensor, nsamples: int, seqlen: int, seed: int, bos_id: int | None = None
) -> torch.Tensor:
    """``nsamples`` windows of ``seqlen`` tokens at seeded random offsets in ``stream``.

    With ``bos_id`` each window is that token followed by ``seqlen − 1`` stream tokens.
    """
    if nsamples <= 0 or seqlen <= 0:
        raise CalibrationDataError(f"nsamples and seqlen must be positive (got {nsamples}, {seqlen})")
    if bos_id is not None:
        if seqlen < 2:
            raise CalibrationDataError(f"seqlen must be at least 2 to hold the BOS token (got {seqlen})")
        body = sample_windows(stream, nsamples, seqlen - 1, seed)
        return torch.cat([torch.full((nsamples, 1), int(bos_id), dtype=body.dtype), body], dim=1)
    n = int(stream.numel())
    if n < seqlen:
        raise CalibrationDataError(
            f"calibration data too short: found {n} tokens, need at least seqlen={seqlen} "
            f"(and ideally nsamples×seqlen = {nsamples * seqlen})"
        )
    rng = random.Random(seed)
    starts = [rng.randint(0, n - seqlen) for _ in range(nsamples)]
    return torch.stack([stream[s : s + seqlen] for s in starts])


def get_calibration(
    tokenizer,
    source: str = "c4",
    nsamples: int = 64,
    seqlen: int = 256,
    seed: int = 0,
    texts: list[str] | None = None,
) -> Calibration:
    """Seeded calibration windows from ``source`` for ``tokenizer`` (BOS first where it prepends one).

    ``texts``: the source's documents when the caller already read them (to check the file early).
    """
    stream = token_stream(tokenizer, load_texts(source) if texts is None else texts)
    bos = bos_prefix(tokenizer)
    return Calibration(
        sample_windows(stream, nsamples, seqlen, seed, bos), source, seed, int(stream.numel()), bos
    )


def split_calibration(
    tokenizer,
    source: str = "c4",
    nsamples: int = 64,
    seqlen: int = 256,
    seed: int = 0,
    heldout: float = 0.125,
    texts: list[str] | None = None,
) -> tuple[Calibration, Calibration]:
    """Training and held-out windows from disjoint text: ``(train, held_out)``.

    The token stream is cut once, at ``1 − heldout`` of its length; ``round(heldout · nsamples)``
    windows (at least one) come from the tail and the rest from the head, so no held-out token was
    trained on (windows of one stream may overlap each other; across the cut they cannot).
    """
    if not 0 < heldout < 1:
        raise CalibrationDataError(f"the held-out fraction must be in (0, 1) (got {heldout})")
    n_held = max(1, round(heldout * nsamples))
    n_train = nsamples - n_held
    if n_train < 1:
        raise CalibrationDataError(
            f"{nsamples} calibration window(s) cannot be split into training and held-out windows; "
            "use at least 2"
        )
    stream = token_stream(tokenizer, load_texts(source) if texts is None else texts)
    cut = int(round((1 - heldout) * stream.numel()))
    bos = bos_prefix(tokenizer)
    parts = []
    for name, part, n in (("train", stream[:cut], n_train), ("held-out", stream[cut:], n_held)):
        try:
            ids = sample_windows(part, n, seqlen, seed, bos)
        except CalibrationDataError as exc:
            raise CalibrationDataError(f"{source}, {name} part: {exc}") from None
        label = f"{source}[:{1 - heldout:.3g}]" if name == "train" else f"{source}[{1 - heldout:.3g}:]"
        parts.append(Calibration(ids, label, seed, int(part.numel()), bos))
    return parts[0], parts[1]


def encoder_calibration(tokenizer, source: str = "c4", nsamples: int = 32, seqlen: int = 128, seed: int = 0):
    """Seeded calibration windows for an encoder: ``[CLS] <seqlen−2 tokens> [SEP]``.

    The documents of ``source`` (see :func:`prunelens.data.calibration.load_texts`) are tokenised
    without special tokens and joined by ``[SEP]`` into one stream; windows are drawn as for decoders
    (:func:`~prunelens.data.calibration.sample_windows`), then wrapped in the tokenizer's CLS/SEP (BOS/EOS).
    """
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if cls_id is None or sep_id is None:
        raise CalibrationDataError("the tokenizer has no CLS/SEP (or BOS/EOS) token to frame encoder windows")
    docs = [d for d in load_texts(source) if d and d.strip()]
    if not docs:
        raise CalibrationDataError(f"calibration source {source!r} is empty")
    flat: list[int] = []
    for i, ids in enumerate(tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"]):
        if i:
            flat.append(sep_id)
        flat.extend(ids)
    stream = torch.tensor(flat, dtype=torch.long)
    body = sample_windows(stream, nsamples, seqlen - 2, seed)
    ids = torch.cat([torch.full((nsamples, 1), cls_id), body, torch.full((nsamples, 1), sep_id)], dim=1)
    return Calibration(ids, source, seed, int(stream.numel()))
