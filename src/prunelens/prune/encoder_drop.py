"""Dropping sublayers of encoder (BERT-style) embedders, and pruning any embedder.

:func:`encoder_similarities` scores every attention / MLP unit and layer by the cosine of its input and
output stream on calibration tokens (same meaning as for decoders: higher = less important);
:func:`drop_encoder` drops the ``n`` most similar units through the shared rule of
:mod:`prunelens.prune.choose` and returns a :class:`~prunelens.plan.PrunePlan`; :func:`prune_embedder`
dispatches encoders here and decoders to :func:`prunelens.prune.drop.drop`.

Usage::

    from prunelens.data.calibration import encoder_calibration
    from prunelens.models.embedder_loading import load_embedder
    from prunelens.prune.encoder_drop import drop_encoder
    emb = load_embedder("all-minilm-l6-v2")
    plan = drop_encoder(emb.model, encoder_calibration(emb.tokenizer, "c4", nsamples=32, seqlen=128),
                        target="attn", n=2)
"""

from __future__ import annotations

import torch

from prunelens.models.adapter import block_output, param_count
from prunelens.models.capture import block_input
from prunelens.models.embedders import Embedder
from prunelens.models.encoder_adapter import (
    DROP_MODES,
    ENCODER_FAMILIES,
    EncoderAdapter,
    drop_encoder_sublayer,
)
from prunelens.plan import PrunePlan
from prunelens.prune.choose import count_dropped, drop_by_scores
from prunelens.prune.drop import drop
from prunelens.prune.scoring import Similarities, cosine_sum
from prunelens.prune.specs import PruneConfigError, check_drop_count


@torch.no_grad()
def encoder_similarities(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, batch_size: int = 8
):
    """Mean ``cos(input stream, output stream)`` of every attention / MLP unit and layer over the real
    calibration tokens (float32); ``None`` for dropped units. Returns a
    :class:`prunelens.prune.scoring.Similarities` (same meaning as for decoders: higher = less important).

    attention: ``cos(h, LN_a(h + Attn(h)))``; MLP: ``cos(g, LN_m(g + MLP(g)))`` with ``g`` the attention
    unit's output; layer: ``cos(h, layer(h))``.
    """
    ad = EncoderAdapter(model)
    n = ad.num_layers
    sums = {k: [0.0] * n for k in ("attn", "mlp", "block")}
    state: dict[str, torch.Tensor] = {}
    handles = []

    def attn_hook(mod, args, kwargs, out, i):
        x = block_input(args, kwargs)
        sums["attn"][i] += cosine_sum(x, block_output(out), state["mask"])

    def mlp_hook(mod, args, kwargs, out, i):
        x = args[1] if len(args) > 1 else kwargs["input_tensor"]
        sums["mlp"][i] += cosine_sum(x, block_output(out), state["mask"])

    def layer_hook(mod, args, kwargs, out, i):
        x = block_input(args, kwargs)
        sums["block"][i] += cosine_sum(x, block_output(out), state["mask"])

    try:
        for i in range(n):
            handles.append(
                ad.layers[i].register_forward_hook(
                    lambda m, a, k, o, i=i: layer_hook(m, a, k, o, i), with_kwargs=True
                )
            )
            for kind, hook in (("attn", attn_hook), ("mlp", mlp_hook)):
                if not ad.is_dropped(i, kind):
                    handles.append(
                        ad.unit(i, kind).register_forward_hook(
                            lambda m, a, k, o, i=i, hook=hook: hook(m, a, k, o, i), with_kwargs=True
                        )
                    )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        dev = next(model.parameters()).device
        tokens = 0
        for s in range(0, input_ids.shape[0], batch_size):
            ids, mask = input_ids[s : s + batch_size].to(dev), attention_mask[s : s + batch_size].to(dev)
            state["mask"] = mask.float()
            model(input_ids=ids, attention_mask=mask)
            tokens += int(mask.sum())
    finally:
        for h in handles:
            h.remove()

    def mean(values, kind):
        return [None if kind and ad.is_dropped(i, kind) else v / tokens for i, v in enumerate(values)]

    return Similarities(
        mean(sums["attn"], "attn"), mean(sums["mlp"], "mlp"), mean(sums["block"], None), tokens=tokens
    )


def drop_encoder(
    model,
    calibration,
    *,
    target: str,
    n: int,
    mode: str = "identity",
    iterative: bool = False,
    batch_size: int = 8,
    base_model: str = "",
):
    """Score on ``calibration``, drop the ``n`` most similar units of ``target`` (``attn``, ``mlp`` or
    ``joint``) from an encoder in place, and return the :class:`~prunelens.plan.PrunePlan`.

    ``calibration``: a :class:`~prunelens.data.calibration.Calibration` (e.g. from
    :func:`encoder_calibration`) or a tensor of token ids (no padding). ``iterative`` re-scores after
    each removal. The plan records ``options.mode`` and ``family``; :func:`apply_encoder_plan` replays it.
    """
    if target not in ("attn", "mlp", "joint"):
        raise PruneConfigError(f"encoder drop target must be attn, mlp or joint, got {target!r}")
    if mode not in DROP_MODES:
        raise PruneConfigError(f"mode must be one of {DROP_MODES}, got {mode!r}")
    ad = EncoderAdapter(model)
    site = _EncoderSite(ad, mode)
    check_drop_count(ad.num_layers, target, n, count_dropped(site, target))
    ids = calibration if isinstance(calibration, torch.Tensor) else calibration.input_ids
    calib_info = (
        {"source": "tensor", "nsamples": ids.shape[0], "seqlen": ids.shape[1]}
        if isinstance(calibration, torch.Tensor)
        else calibration.describe()
    )
    plan = PrunePlan(
        method="drop",
        base_model=base_model,
        family=ad.spec.family,
        target=target,
        calibration=calib_info,
        seed=getattr(calibration, "seed", None),
        params_before=param_count(model),
        num_layers_before=ad.num_layers,
        options={"iterative": iterative, "mode": mode, "encoder": True},
    )
    sims = encoder_similarities(model, ids, batch_size=batch_size)
    plan.scores = {
        **sims.to_dict(),
        "metric": "mean cosine(unit input stream, unit output stream) over "
        "calibration tokens (post-LN units: output after the unit's LayerNorm); higher = less important",
    }
    plan.dropped_sublayers = drop_by_scores(
        site,
        lambda: encoder_similarities(model, ids, batch_size=batch_size).by_kind(),
        target,
        n,
        iterative=iterative,
        first=sims.by_kind(),
    )
    plan.params_after = param_count(model)
    return plan


def prune_embedder(embedder: Embedder, calibration, *, target: str, n: int, **kwargs):
    """Drop ``n`` sublayers of an embedder's network in place; returns the plan.

    Encoder families (:data:`ENCODER_FAMILIES`) go through :func:`drop_encoder` (``mode=`` applies);
    anything else (decoders) through :func:`prunelens.prune.drop.drop`, which needs a
    :class:`~prunelens.data.calibration.Calibration` from the embedder's tokenizer.
    """
    model = embedder.model
    if getattr(getattr(model, "config", None), "model_type", None) in ENCODER_FAMILIES:
        return drop_encoder(model, calibration, target=target, n=n, **kwargs)
    return drop(model, calibration, target=target, n=n, **kwargs)


class _EncoderSite:
    """An encoder as a :class:`~prunelens.prune.choose.DropSite`: units dropped in one post-LN ``mode``."""

    def __init__(self, adapter: EncoderAdapter, mode: str):
        self.adapter, self.mode = adapter, mode

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers

    def is_dropped(self, layer: int, kind: str) -> bool:
        return self.adapter.is_dropped(layer, kind)

    def drop_unit(self, layer: int, kind: str) -> None:
        drop_encoder_sublayer(self.adapter, layer, kind, self.mode)
