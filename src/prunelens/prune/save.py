"""Save a pruned model as a standard, reloadable directory: safetensors + config + tokenizer + plan.

Block-dropped and sparsified checkpoints are plain transformers checkpoints
(``AutoModelForCausalLM.from_pretrained`` loads them with no custom code). Sublayer-dropped ones are
not expressible in plain transformers: its modelling code builds every attention and MLP a config
names, and a config has no field for "block 7 has no attention" — loading such a directory with plain
transformers would silently re-create the removed sublayers with random weights. ``prunelens.load``
reads ``prune_plan.json``, rebuilds the dense skeleton without allocating it, replaces the dropped
sublayers and loads the saved (smaller) weights.
"""

from __future__ import annotations

from pathlib import Path

from prunelens.plan import PrunePlan
from prunelens.utils.io import atomic_output_dir


def save_pruned(model, tokenizer, plan: PrunePlan, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``model``, ``tokenizer`` and ``plan`` to ``out`` atomically (temporary directory + rename)."""
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        plan.save(tmp)
    return Path(out)
