"""Analysis cost against its floor: a transitions run versus its unavoidable matrix products.

    HF_HUB_OFFLINE=1 python benchmarks/bench_analysis.py [--model smollm2-135m] [--prompts 4] [--tokens 96]
                                                        [--threads 1] [--repeats 2] [--chunk-tokens 32]
                                                        [--exact]

A fixed prompt set (the first ``--prompts`` default prompts in the chat template, cut at ``--tokens``
tokens; no decoding enters the timing) is analysed with
:func:`prunelens.analysis.transitions.transitions` — the drop-each
counterfactual of every attention and MLP sublayer, at one temperature. The *floor* is what any
implementation must compute: the forward passes over the same batches plus one logit-lens projection
``W·N(h)`` per captured state (``2L + 1`` distinct residual states per token: the input of the first
block, then after every attention and after every MLP), done in large matrix products. The script
prints both times and their ratio (goal: under 2×). Floor and analysis are timed alternately
``--repeats`` times and the fastest of each is kept, which damps noise from other processes.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PRUNELENS_QUIET", "1")

import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model spec (default: the embedded SmolLM2-135M)")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--chunk-tokens", type=int, default=32)
    ap.add_argument(
        "--exact", action="store_true", help="time the reference metrics instead of the fast path"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import prunelens
    from prunelens.analysis.prompts import encode_prompts, load_prompts
    from prunelens.analysis.tracing import model_forward
    from prunelens.analysis.transitions import Sequences, logit_lens, transitions
    from prunelens.models.adapter import Adapter

    model, tok = prunelens.load(args.model)
    adapter = Adapter(model)
    V = adapter.unembed.weight.shape[0]
    prompts, _ = load_prompts(None)
    ids = encode_prompts(tok, [p for _, p in prompts[: args.prompts]])
    seqs = Sequences([x[: args.tokens] for x in ids], [[] for _ in ids])
    n_tok = sum(len(x) for x in seqs.prompt_ids)
    n_states = 2 * adapter.num_layers + 1

    @torch.no_grad()
    def floor() -> float:
        t0 = time.perf_counter()
        for b0 in range(0, len(seqs), args.batch_size):
            idx = list(range(b0, min(len(seqs), b0 + args.batch_size)))
            ids, mask = seqs.batch(idx, 0)
            model_forward(model, ids, mask)
        h = torch.randn(256, adapter.config.hidden_size)
        rows = n_tok * n_states
        for r0 in range(0, rows, 256):
            logit_lens(adapter, h[: min(256, rows - r0)])
        return time.perf_counter() - t0

    def analysis() -> float:
        t0 = time.perf_counter()
        transitions(
            model,
            seqs,
            None,
            temperatures=(1.0,),
            batch_size=args.batch_size,
            chunk_tokens=args.chunk_tokens,
            exact=args.exact,
        )
        return time.perf_counter() - t0

    floor()  # warm-up
    tf, ta = [], []
    for _ in range(args.repeats):
        tf.append(floor())
        ta.append(analysis())
    f, a = min(tf), min(ta)
    print(
        f"model: {args.model or 'smollm2-135m'}  ({adapter.num_layers} layers, vocab {V}, "
        f"hidden {adapter.config.hidden_size}); threads {args.threads}"
    )
    print(
        f"prompt set: the first {len(ids)} default prompts (chat template), "
        f"at most {args.tokens} tokens each = "
        f"{n_tok} tokens; "
        f"{2 * adapter.num_layers} sublayer transitions; {n_states} distinct states per token"
    )
    print(
        f"floor (forward passes + {n_tok * n_states} logit-lens rows): {f:7.2f} s   (runs: "
        + ", ".join(f"{x:.2f}" for x in tf)
        + ")"
    )
    print(
        f"transitions analysis{' (exact metrics)' if args.exact else ''}: {a:7.2f} s   (runs: "
        + ", ".join(f"{x:.2f}" for x in ta)
        + ")"
    )
    print(f"ratio analysis / floor: {a / f:.2f}×   (goal: < 2×)")


if __name__ == "__main__":
    main()
