"""One analysis run: dense model × variants × {transitions, trajectories, option subspace} → tables, figures.

:func:`run_analysis` is what ``prunelens analyze`` calls. It decodes the prompts once with the dense
model (the analysed sequences are prompt + dense continuation), then for every variant measures the
sublayer transitions, the trajectories and the option subspace, and writes

    OUT/config.json        the configuration, model and variants (with their prune plans), seed, versions
    OUT/summary.json       headline numbers per variant (also printed by the CLI), timings, peak memory
    OUT/tables/*.parquet   the long tables of prunelens.analysis.tables, and the same as *.csv
    OUT/figures/*.png|svg  the figures of prunelens.analysis.figures

atomically (a temporary sibling directory renamed into place at the end).
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from prunelens.analysis import ANALYSES
from prunelens.analysis import tables as TB
from prunelens.analysis.pairstats import DEFAULT_KS
from prunelens.analysis.tracing import peak_rss_bytes, plan_counterfactuals
from prunelens.analysis.trajectories import (
    REGIMES,
    Sampler,
    decode,
    eos_ids_of,
    teacher_forced_hidden,
    trajectories,
)
from prunelens.analysis.transitions import Sequences, transitions
from prunelens.models.adapter import Adapter, param_count

__all__ = ["ANALYSES", "AnalysisConfig", "AnalysisReport", "run_analysis", "headline"]


@dataclass
class AnalysisConfig:
    temperatures: tuple[float, ...] = (1.0,)
    max_new_tokens: int = 32
    analyses: tuple[str, ...] = ANALYSES
    scope: str = "all"
    final_norm: bool = True
    sample: bool = False
    sample_temperature: float = 1.0
    seed: int = 0
    positions: str = "all"
    batch_size: int = 4
    chunk_tokens: int = 32
    exact: bool = False
    ks: tuple[int, ...] = DEFAULT_KS
    layers: tuple[int, ...] | None = None
    chat: bool = True
    option_labels: tuple[str, ...] | None = None
    csv: bool = True
    figures: bool = True

    def __post_init__(self):
        bad = [a for a in self.analyses if a not in ANALYSES]
        if bad:
            raise ValueError(f"unknown analyses {bad}; choose from {', '.join(ANALYSES)}")
        from prunelens.analysis.metrics import check_temperature

        self.temperatures = tuple(float(check_temperature(t)) for t in self.temperatures)
        if not self.temperatures:
            raise ValueError("at least one temperature is needed")
        check_temperature(self.sample_temperature)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.batch_size < 1 or self.chunk_tokens < 1:
            raise ValueError("batch_size and chunk_tokens must be positive")

    @property
    def sampler(self) -> Sampler:
        return Sampler(greedy=not self.sample, temperature=self.sample_temperature, seed=self.seed)


@dataclass
class AnalysisReport:
    summary: dict[str, Any]
    tables: dict[str, pd.DataFrame]
    out: Path | None = None
    figures: list[Path] = field(default_factory=list)


def _s(v, q: float = 0.5) -> float | None:
    """Quantile ``q`` (median by default) of the non-NaN values, None if there are none."""
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    v = v[~np.isnan(v)]
    return float(np.quantile(v, q)) if v.size else None


def _n(v) -> int:
    """How many values :func:`_s` takes its quantile over (the non-NaN ones): the ``n`` of a median."""
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    return int((~np.isnan(v)).sum())


def _ratio_detail(kl, ratio2, ratio3) -> dict[str, Any]:
    """The ``n`` of the Theorem 2 / 3 estimate-ratio medians and the ratios per decade of the exact KL.

    Why: the second-order estimates are near exact at small perturbations (sublayer transitions) and
    underestimate at larger ones (along decoding); one median per group cannot show that, the ratio against
    the perturbation size can (the report draws and quotes it). ``kl`` and the ratios are aligned arrays.
    """
    return {
        "n_estimate_ratio": {"theorem2": _n(ratio2), "theorem3": _n(ratio3)},
        "estimate_ratio_by_kl": {
            "theorem2": TB.ratio_by_size(kl, ratio2),
            "theorem3": TB.ratio_by_size(kl, ratio3),
        },
    }


def _mean(v) -> float | None:
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else None


def _transition_summary(res) -> pd.DataFrame:
    rows = []
    kinds = res.tokens["position_kind"]
    for (space, metric, T), arr in res.values.items():
        for j, (layer, kind, cf, inv) in enumerate(res.entries):
            base = {
                "variant": res.variant,
                "layer": layer,
                "sublayer": kind,
                "counterfactual": cf,
                "in_variant": inv,
                "space": space,
                "metric": metric,
                "temperature": np.nan if T is None else T,
            }
            rows.append({**base, "position_kind": "all", **TB.summarize_values(arr[j])})
            for pk in ("prompt", "generated"):
                m = kinds == pk
                if m.any():
                    rows.append({**base, "position_kind": pk, **TB.summarize_values(arr[j][m])})
    return pd.DataFrame(rows)


def headline_transitions(res) -> dict[str, Any]:
    """Medians over tokens × the variant's own sublayers (and over every sublayer, drop-each)."""
    T0 = res.temperatures[0]
    out: dict[str, Any] = {}
    groups = {"variant_sublayers": True, "all_sublayers": None}
    for label, inv in groups.items():
        if inv and not any(e.in_variant for e in res.entries):
            continue

        def sel(s, m, T=None, inv=inv):
            return res.select(s, m, T, in_variant=inv)

        d = {
            "n_sublayers": sum(1 for e in res.entries if inv is None or e.in_variant == inv),
            "median_cos": {
                "h": _s(sel("h", "cos")),
                "z": _s(sel("z", "cos")),
                "z_centered": _s(sel("z", "centered_cos")),
                "p": _s(sel("p", "cos", T0)),
            },
            "median_one_minus_cos": {
                "h": _s(sel("h", "one_minus_cos")),
                "z": _s(sel("z", "one_minus_cos")),
                "p": _s(sel("p", "one_minus_cos", T0)),
            },
            "median_kl": _s(sel("p", "kl", T0)),
            "median_kl_reverse": _s(sel("p", "kl_reverse", T0)),
            "median_estimate_ratio": {
                "theorem1_h": _s(sel("h", "theorem1_ratio")),
                "theorem1_z": _s(sel("z", "theorem1_ratio")),
                "theorem2": _s(sel("p", "theorem2_ratio", T0)),
                "theorem3": _s(sel("p", "theorem3_ratio", T0)),
            },
            "top1_agreement": _mean(sel("z", "top1_match")),
            **_ratio_detail(
                sel("p", "kl", T0), sel("p", "theorem2_ratio", T0), sel("p", "theorem3_ratio", T0)
            ),
        }
        for kind in ("attn", "mlp"):
            ent = [e for e in res.entries if e.kind == kind and (inv is None or e.in_variant == inv)]
            if ent:
                d[f"median_cos_{kind}"] = {
                    "h": _s(res.select("h", "cos", in_variant=inv, kind=kind)),
                    "z": _s(res.select("z", "cos", in_variant=inv, kind=kind)),
                    "p": _s(res.select("p", "cos", T0, in_variant=inv, kind=kind)),
                    "kl": _s(res.select("p", "kl", T0, in_variant=inv, kind=kind)),
                }
        out[label] = d
    out["temperature"] = T0
    return out


def headline_trajectories(res) -> dict[str, Any]:
    T0 = res.temperatures[0]
    out: dict[str, Any] = {"temperature": T0}
    for regime in REGIMES:
        keys = [k for k in res.values if k[0] == regime]
        if not keys:
            continue

        def cat(space, metric, T=None, regime=regime):
            arrs = res.values.get((regime, space, metric, T if space == "p" else None), [])
            return np.concatenate(arrs) if arrs else np.empty(0)

        kl_steps = res.values.get((regime, "p", "kl", T0), [])
        early, late = [], []
        for a in kl_steps:
            n = len(a)
            if n >= 4:
                early.append(a[: n // 4])
                late.append(a[-(n // 4) :])
        div = res.divergence.get(regime, [])
        out[regime] = {
            "steps": int(sum(len(a) for a in kl_steps)),
            "median_cos": {
                "h": _s(cat("h", "cos")),
                "z": _s(cat("z", "cos")),
                "z_centered": _s(cat("z", "centered_cos")),
                "p": _s(cat("p", "cos", T0)),
            },
            "median_kl": _s(cat("p", "kl", T0)),
            "mean_kl": _mean(cat("p", "kl", T0)),
            "q90_kl": _s(cat("p", "kl", T0), 0.9),
            "top1_agreement": _mean(cat("z", "top1_match")),
            "median_estimate_ratio": {
                "theorem2": _s(cat("p", "theorem2_ratio", T0)),
                "theorem3": _s(cat("p", "theorem3_ratio", T0)),
            },
            **_ratio_detail(
                cat("p", "kl", T0), cat("p", "theorem2_ratio", T0), cat("p", "theorem3_ratio", T0)
            ),
            "median_kl_first_quarter": _s(np.concatenate(early)) if early else None,
            "median_kl_last_quarter": _s(np.concatenate(late)) if late else None,
            "first_divergence_steps": div,
            "diverged": int(sum(d is not None for d in div)),
            "prompts": len(div),
        }
    return out


def headline_subspace(res) -> dict[str, Any]:
    T0 = res.temperatures[0]
    ch = [c for c in res.choices if c["temperature"] == T0]
    get = lambda space, metric: res.values.get((space, metric, T0))  # noqa: E731
    return {
        "temperature": T0,
        "questions": len(ch),
        "chosen_option_changed": float(np.mean([c["changed"] for c in ch])) if ch else None,
        "dense_accuracy": float(np.mean([c["dense_correct"] for c in ch])) if ch else None,
        # what a uniform guess scores on these questions: the report flags a dense accuracy within two
        # binomial standard errors of it (the letter-format prompt can be near chance for a small model)
        "n_options": sorted({int(c["n_options"]) for c in ch}),
        "chance": float(np.mean([1.0 / c["n_options"] for c in ch])) if ch else None,
        "pruned_accuracy": float(np.mean([c["pruned_correct"] for c in ch])) if ch else None,
        "median_option_mass_dense": _s([c["option_mass_dense"] for c in ch]),
        "median_kl": {"full": _s(get("p_full", "kl")), "options": _s(get("p_options", "kl"))},
        "median_cos_p": {"full": _s(get("p_full", "cos")), "options": _s(get("p_options", "cos"))},
        "median_estimate_ratio_theorem3": {
            "full": _s(get("p_full", "theorem3_ratio")),
            "options": _s(get("p_options", "theorem3_ratio")),
        },
    }


def headline(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat rows (one per variant) of the numbers the CLI prints."""
    rows = []
    for name, v in summary.get("variants", {}).items():
        t = v.get("transitions", {})
        tv = t.get("variant_sublayers") or t.get("all_sublayers") or {}
        row: dict[str, Any] = {"variant": name}
        if tv:
            row.update(
                {
                    "cos h": tv["median_cos"]["h"],
                    "cos z": tv["median_cos"]["z"],
                    "cos z (centred)": tv["median_cos"]["z_centered"],
                    "cos p": tv["median_cos"]["p"],
                    "KL(p‖p')": tv["median_kl"],
                    "Thm 1 est/real (h)": tv["median_estimate_ratio"]["theorem1_h"],
                    "Thm 1 est/real (z)": tv["median_estimate_ratio"]["theorem1_z"],
                    "Thm 2 est/real": tv["median_estimate_ratio"]["theorem2"],
                    "Thm 3 est/real": tv["median_estimate_ratio"]["theorem3"],
                }
            )
        tr = v.get("trajectories", {})
        for regime, short in (("teacher_forced", "TF"), ("free_running", "FR")):
            if regime in tr:
                row[f"{short} cos h / z / p"] = " / ".join(
                    "—" if tr[regime]["median_cos"][s] is None else f"{tr[regime]['median_cos'][s]:.4f}"
                    for s in ("h", "z", "p")
                )
                row[f"{short} KL median / q90"] = " / ".join(
                    "—" if x is None else f"{x:.3g}" for x in (tr[regime]["median_kl"], tr[regime]["q90_kl"])
                )
        if "free_running" in tr:
            row["first divergence step"] = tr["free_running"]["first_divergence_steps"]
        sub = v.get("subspace")
        if sub:
            row["MC option changed"] = sub["chosen_option_changed"]
            row["MC KL full / options"] = " / ".join(
                "—" if x is None else f"{x:.3g}"
                for x in (sub["median_kl"]["full"], sub["median_kl"]["options"])
            )
        rows.append(row)
    return rows


def run_analysis(
    model,
    tokenizer,
    variants,
    prompts: list[tuple[str, str]],
    config: AnalysisConfig,
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    dense_name: str = "",
    mc_examples=None,
    mc_task: str | None = None,
    notes: list[str] | None = None,
    log=None,
    dense_cache: dict | None = None,
) -> AnalysisReport:
    """Run the configured analyses of ``variants`` of ``model`` (see the module docstring).

    ``dense_cache``: a dict shared between calls on the same (unchanged) dense model: the dense decoding,
    its teacher-forced states and the option-subspace dense logits are then computed once for every
    call with the same prompts and settings — the study analyses one variant per call."""
    from prunelens.analysis.prompts import encode_prompts
    from prunelens.utils.io import atomic_output_dir, check_output_dir

    if out is not None:
        check_output_dir(out, overwrite)
    log = log or (lambda msg: None)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    notes = list(notes or [])
    adapter = Adapter(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    eos = eos_ids_of(model, tokenizer)
    labels = [p[0] for p in prompts]
    prompt_ids = encode_prompts(tokenizer, [p[1] for p in prompts], config.chat)
    sampler = config.sampler
    need_decode = "transitions" in config.analyses or "trajectories" in config.analyses
    dense = None
    decode_key = (
        "decode",
        tuple(map(tuple, prompt_ids)),
        config.max_new_tokens,
        tuple(eos),
        pad_id,
        repr(sampler),
        config.batch_size,
    )
    if need_decode:
        t0 = time.perf_counter()
        if dense_cache is not None and decode_key in dense_cache:
            dense = dense_cache[decode_key]
        else:
            dense = decode(
                model,
                prompt_ids,
                max_new_tokens=config.max_new_tokens,
                eos_ids=eos,
                pad_id=pad_id,
                sampler=sampler,
                batch_size=config.batch_size,
                desc="decoding (dense)",
            )
            if dense_cache is not None:
                dense_cache[decode_key] = dense
        timings["decode_dense"] = time.perf_counter() - t0
        log(
            f"decoded {len(prompt_ids)} prompts with the dense model "
            f"({sum(map(len, dense.tokens))} tokens) in {timings['decode_dense']:.1f} s"
        )
    seqs = Sequences(prompt_ids, dense.tokens, labels) if dense is not None else None
    frames: dict[str, list[pd.DataFrame]] = {}
    summaries: dict[str, list[pd.DataFrame]] = {}
    summary_variants: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    dense_tf = None
    measured: dict[tuple, Any] = {}  # counterfactual plan -> TransitionsResult (drop plans share drop-each)
    for v in variants:
        vs: dict[str, Any] = {"description": v.describe()}
        if "transitions" in config.analyses:
            t0 = time.perf_counter()
            cf_plan, _ = plan_counterfactuals(adapter, v, scope=config.scope, layers=config.layers)
            signature = tuple(
                sorted(
                    (
                        key,
                        cf.kind,
                        tuple(
                            sorted(
                                (n, id(t))
                                for d in (cf.params, cf.pre_norm, cf.post_norm)
                                for n, t in d.items()
                            )
                        ),
                    )
                    for key, cf in cf_plan.items()
                )
            )
            if signature in measured:
                res = measured[signature].relabel(v.name, {key: cf.in_variant for key, cf in cf_plan.items()})
                log(f"{v.name}: transitions shared with an earlier variant (same counterfactuals)")
            else:
                res = transitions(
                    model,
                    seqs,
                    v,
                    temperatures=config.temperatures,
                    scope=config.scope,
                    layers=config.layers,
                    final_norm=config.final_norm,
                    batch_size=config.batch_size,
                    chunk_tokens=config.chunk_tokens,
                    ks=config.ks,
                    exact=config.exact,
                    positions=config.positions,
                    pad_id=pad_id,
                    desc=f"transitions ({v.name})",
                )
                measured[signature] = res
            timings[f"transitions/{v.name}"] = time.perf_counter() - t0
            memory[f"trace_states_bytes/{v.name}"] = res.state_bytes
            frames.setdefault("transitions", []).append(res.frame())
            summaries.setdefault("summary_transitions", []).append(_transition_summary(res))
            vs["transitions"] = headline_transitions(res)
            vs["transitions"]["notes"] = res.notes
            vs["transitions"]["tokens"] = res.n_tokens
            log(
                f"{v.name}: transitions over {res.n_tokens} tokens × {len(res.entries)} sublayers "
                f"in {timings[f'transitions/{v.name}']:.1f} s"
            )
        if "trajectories" in config.analyses:
            t0 = time.perf_counter()
            if dense_tf is None:
                tf_key = ("teacher_forced", decode_key)
                if dense_cache is not None and tf_key in dense_cache:
                    dense_tf = dense_cache[tf_key]
                else:
                    dense_tf = teacher_forced_hidden(model, seqs, pad_id=pad_id, batch_size=config.batch_size)
                    if dense_cache is not None:
                        dense_cache[tf_key] = dense_tf
            tr = trajectories(
                model,
                v,
                prompt_ids,
                dense=dense,
                max_new_tokens=config.max_new_tokens,
                temperatures=config.temperatures,
                sampler=sampler,
                eos_ids=eos,
                pad_id=pad_id,
                batch_size=config.batch_size,
                ks=config.ks,
                exact=config.exact,
                labels=labels,
                dense_hidden_tf=dense_tf,
            )
            timings[f"trajectories/{v.name}"] = time.perf_counter() - t0
            for name, df in tr.frames().items():
                frames.setdefault(name, []).append(df)
            vs["trajectories"] = headline_trajectories(tr)
            log(f"{v.name}: trajectories in {timings[f'trajectories/{v.name}']:.1f} s")
        if "subspace" in config.analyses and mc_examples:
            from prunelens.analysis.subspace import DEFAULT_LABELS, option_subspace

            t0 = time.perf_counter()
            sub = option_subspace(
                model,
                tokenizer,
                v,
                mc_examples,
                temperatures=config.temperatures,
                labels=config.option_labels or DEFAULT_LABELS,
                batch_size=config.batch_size,
                chat=config.chat,
                exact=config.exact,
                ks=config.ks,
                pad_id=pad_id,
                dense_cache=dense_cache,
            )
            timings[f"subspace/{v.name}"] = time.perf_counter() - t0
            for name, df in sub.frames().items():
                frames.setdefault(name, []).append(df)
            vs["subspace"] = headline_subspace(sub)
            log(
                f"{v.name}: option subspace over {len(mc_examples)} questions "
                f"in {timings[f'subspace/{v.name}']:.1f} s"
            )
        summary_variants[v.name] = vs
    tables = {name: TB.concat(fs, name) for name, fs in frames.items()}
    for name, fs in summaries.items():
        tables[name] = pd.concat(fs, ignore_index=True)
    if "trajectories" in tables and len(tables["trajectories"]):
        t = tables["trajectories"]
        tables["summary_trajectory_steps"] = TB.summarize_frame(
            t, ["variant", "regime", "space", "metric", "temperature", "step"]
        )
        tables["summary_trajectories"] = TB.summarize_frame(
            t, ["variant", "regime", "space", "metric", "temperature"]
        )
    if "subspace" in tables and len(tables["subspace"]):
        tables["summary_subspace"] = TB.summarize_frame(
            tables["subspace"], ["variant", "space", "metric", "temperature"]
        )
    memory["peak_rss_bytes"] = peak_rss_bytes()
    if torch.cuda.is_available():
        memory["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    memory["override_bytes"] = {v.name: v.override_bytes for v in variants}
    memory["model_param_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    summary = {
        "dense": dense_name,
        "variants": summary_variants,
        "timings_s": {**timings, "total": time.perf_counter() - t_start},
        "memory": memory,
        "notes": notes,
        "dense_generations": (
            [
                {"prompt": labels[i], "text": tokenizer.decode(dense.tokens[i], skip_special_tokens=True)}
                for i in range(len(labels))
            ]
            if dense is not None
            else []
        ),
    }
    config_json = {
        "dense_model": dense_name,
        "model": {
            "family": adapter.spec.family,
            "class": type(model).__name__,
            "layers": adapter.num_layers,
            "hidden_size": getattr(model.config, "hidden_size", None),
            "vocab_size": adapter.unembed.weight.shape[0],
            "parameters": param_count(model),
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "logit_softcap": adapter.logit_softcap,
        },
        "variants": [v.describe() for v in variants],
        "analysis": {**asdict(config), "sampler": sampler.describe()},
        "seed": config.seed,
        "prompts": [
            {"label": lab, "text": text, "tokens": len(ids)} for (lab, text), ids in zip(prompts, prompt_ids)
        ],
        "mc_task": mc_task,
        "mc_questions": len(mc_examples or []),
        "versions": {
            "prunelens": _version(),
            "torch": torch.__version__,
            "transformers": _tf_version(),
            "python": platform.python_version(),
        },
        "tables": {name: TB.TABLE_COLUMNS.get(name, list(df.columns)) for name, df in tables.items()},
    }
    report = AnalysisReport(summary, tables)
    if out is None:
        return report
    t0 = time.perf_counter()
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        TB.write_tables(tables, tmp / "tables", csv=config.csv)
        figs: list[Path] = []
        if config.figures:
            figs = _figures(tables, tmp / "figures", [v.name for v in variants])
        summary["timings_s"]["write"] = time.perf_counter() - t0
        summary["figures"] = [str(p.relative_to(tmp)) for p in figs]
        TB.write_json(tmp / "config.json", config_json)
        TB.write_json(tmp / "summary.json", summary)
    report.out = Path(out)
    report.figures = [Path(out) / p for p in summary["figures"]]
    return report


def _figures(tables: dict[str, pd.DataFrame], directory: Path, names: list[str]) -> list[Path]:
    from prunelens.analysis import figures as F

    paths: list[Path] = []
    for name in names:
        if "summary_transitions" in tables:
            st = tables["summary_transitions"]
            paths += F.layerwise(st[st["position_kind"] == "all"], directory, name)
        if "transitions" in tables:
            t = tables["transitions"]
            keep = t["metric"].isin(["theorem1", "one_minus_cos", "theorem2", "theorem3", "kl"])
            paths += F.estimate_vs_real(t[keep & (t["variant"] == name)], directory, name)
        if "transitions" in tables or "trajectories" in tables:
            ratio_metrics = ["kl", "theorem2_ratio", "theorem3_ratio"]
            pick = {
                k: tables[k][(tables[k]["variant"] == name) & tables[k]["metric"].isin(ratio_metrics)]
                for k in ("transitions", "trajectories")
                if k in tables
            }
            paths += F.estimate_ratio_vs_kl(
                pick.get("transitions"), pick.get("trajectories"), directory, name
            )
        if "summary_trajectory_steps" in tables:
            paths += F.decoding_steps(
                tables["summary_trajectory_steps"], tables["divergence"], directory, name
            )
        if "subspace" in tables and len(tables["subspace"]):
            paths += F.option_subspace(tables["subspace"], tables["subspace_choices"], directory, name)
            paths += F.top_tokens(tables["subspace_top_tokens"], directory, name)
    return paths


def _version() -> str:
    from prunelens import __version__

    return __version__


def _tf_version() -> str:
    import transformers

    return transformers.__version__
