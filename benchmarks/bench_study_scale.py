"""Scale check: the whole ``prunelens study`` on a Llama-2-7B-shaped model with random weights, on one GPU.

The study code is the one every user runs; only the model changes. The script builds a 7B-shaped Llama
(``prunelens.models.tiny.llama_7b_config``; its vocabulary matches the embedded SmolLM2 tokenizer, so real
task text goes through it), saves it as an ordinary checkpoint, and runs ``prunelens study --model DIR
--device cuda --dtype bfloat16`` in this process, with the built-in default config unless ``--config`` is
given. It prints the wall time of every unit, the total, and the peak GPU memory (``max_memory_allocated``),
against the size of the bf16 weights.

Random weights make every score meaningless (chance level, garbage generations): this measures that the
study runs at this size and what it costs, not what pruning does to a 7B model. Units are independent
and resumable: run the same command again (same ``--out`` and ``--model-dir``) after an interruption.

    python benchmarks/bench_study_scale.py --device cuda --out /tmp/study7b --model-dir /tmp/llama7b
    # the default study on the embedded model, on this CPU (the issue's goal: under 20 minutes)
    python benchmarks/bench_study_scale.py --embedded --device cpu --dtype float32 --out /tmp/study-default
    # quick smoke test on a CPU: a 2-block, 256-wide model
    python benchmarks/bench_study_scale.py --device cpu --dtype float32 --layers 2 --hidden 256 \\
        --out /tmp/study-small --model-dir /tmp/small
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import (
    load_tokenizer,
    machine_info,
    mib,
    model_spec_path,
    peak_bytes,
    print_table,  # noqa: E402
    reset_peak,
    set_offline,
    write_json,
)


def build_checkpoint(
    model_dir: Path, *, layers: int, hidden: int | None, dtype: str, device: str, seed: int, tokenizer: str
) -> int:
    """Save a random Llama-2-7B-shaped checkpoint (or a narrower one with ``hidden``) to ``model_dir``; the
    parameter count. Skipped when ``model_dir`` already holds one (resuming)."""
    import torch
    from transformers import AutoModelForCausalLM

    from prunelens.models.loading import resolve_dtype
    from prunelens.models.tiny import llama_7b_config

    tok = load_tokenizer(tokenizer)
    cfg = llama_7b_config(num_hidden_layers=layers, vocab_size=len(tok))
    if hidden:
        cfg.hidden_size, cfg.intermediate_size = hidden, int(hidden * 11008 / 4096)
        cfg.num_attention_heads = cfg.num_key_value_heads = max(1, hidden // 128)
        cfg.head_dim = hidden // cfg.num_attention_heads
    if (model_dir / "config.json").exists():
        n = json.loads((model_dir / "params.json").read_text())["parameters"]
        print(f"re-using the checkpoint in {model_dir} ({n / 1e9:.2f} B parameters)")
        return n
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    with torch.device(device if device != "auto" else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=resolve_dtype(dtype))
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    (model_dir / "params.json").write_text(json.dumps({"parameters": n}))
    del model
    print(
        f"built and saved a random {n / 1e9:.2f} B-parameter Llama "
        f"({layers} blocks, hidden {cfg.hidden_size}) "
        f"in {time.perf_counter() - t0:.0f} s"
    )
    return n


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="study directory (re-run to resume)")
    ap.add_argument(
        "--model-dir", default=None, help="where the random checkpoint is written (re-used if present)"
    )
    ap.add_argument(
        "--embedded", action="store_true", help="study the embedded SmolLM2-135M instead of a random model"
    )
    ap.add_argument(
        "--goal-minutes", type=float, default=20.0, help="print whether the study met this wall time"
    )
    ap.add_argument("--config", default=None, help="study config YAML (default: the built-in study)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=None, help="narrower model for smoke tests (default: 4096)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the embedded model's)")
    ap.add_argument("--json", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    set_offline()
    import torch

    from prunelens.cli import app

    if args.embedded:
        model_dir = Path(model_spec_path("smollm2"))
        import math

        from safetensors import safe_open

        with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
            n = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    else:
        if not args.model_dir:
            ap.error("--model-dir is required unless --embedded")
        model_dir = Path(args.model_dir)
        n = build_checkpoint(
            model_dir,
            layers=args.layers,
            hidden=args.hidden,
            dtype=args.dtype,
            device=args.device,
            seed=args.seed,
            tokenizer=args.tokenizer or model_spec_path("smollm2"),
        )
    weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    dev = "cuda" if args.device.startswith("cuda") else args.device
    reset_peak(dev)
    spec = (
        "smollm2-135m" if args.embedded else str(model_dir)
    )  # the alias keeps machine paths out of the report
    cmd = [
        "study",
        *([args.config] if args.config else []),
        "--model",
        spec,
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--out",
        args.out,
    ]
    print("prunelens " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    try:
        app(cmd, standalone_mode=False)
    except SystemExit as exc:
        if exc.code:
            raise
    wall = time.perf_counter() - t0
    peak = peak_bytes(dev)
    meta = json.loads((Path(args.out) / "study.json").read_text())
    units = (meta.get("timings") or {}).get("units") or {}
    by_kind: dict[str, float] = {}
    for uid, s in units.items():
        by_kind[uid.split("/")[0]] = by_kind.get(uid.split("/")[0], 0.0) + float(s)
    print_table(
        [[k, f"{v:.0f}"] for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])],
        ["unit kind", "seconds"],
        title="time by unit kind (every finished unit, as recorded when it ran)",
    )
    print_table(
        [[u, f"{s:.1f}"] for u, s in sorted(units.items(), key=lambda kv: -kv[1])[:12]],
        ["slowest units", "seconds"],
    )
    print(f"\nmodel: {n / 1e9:.2f} B parameters, {mib(weights)} MiB of {args.dtype} weights on disk")
    print(
        f"study wall time: {wall:.0f} s ({wall / 60:.1f} min); peak {'GPU ' if dev == 'cuda' else ''}memory "
        f"{mib(peak)} MiB ({peak / max(weights, 1):.2f}× the weights)"
    )
    if dev == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(0)}")
    verdict = "met" if wall / 60 <= args.goal_minutes else "NOT met"
    print(
        f"goal: under {args.goal_minutes:g} min — {verdict} ({wall / 60:.1f} min; "
        "only meaningful for a fresh --out, "
        "since a resumed study skips finished units)"
    )
    write_json(
        args.json,
        {
            "machine": machine_info(dev),
            "parameters": n,
            "weights_bytes": weights,
            "wall_seconds": wall,
            "peak_bytes": peak,
            "unit_seconds": units,
            "by_kind": by_kind,
        },
    )


if __name__ == "__main__":
    main()
