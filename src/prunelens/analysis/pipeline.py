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

import pandas as pd
import torch

from prunelens.analysis import ANALYSES
from prunelens.analysis import tables as TB
from prunelens.analysis.headlines import (
    headline,
    headline_subspace,
    headline_trajectories,
    headline_transitions,
)
from prunelens.analysis.settings import AnalysisConfig
from prunelens.analysis.tracing import peak_rss_bytes, plan_counterfactuals
from prunelens.analysis.trajectories import (
    decode,
    eos_ids_of,
    teacher_forced_hidden,
    trajectories,
)
from prunelens.analysis.transitions import Sequences, transitions
from prunelens.models.adapter import Adapter, param_count

__all__ = ["ANALYSES", "AnalysisConfig", "AnalysisReport", "run_analysis", "headline"]


@dataclass
class AnalysisReport:
    summary: dict[str, Any]
    tables: dict[str, pd.DataFrame]
    out: Path | None = None
    figures: list[Path] = field(default_factory=list)

    @property
    def headline(self) -> pd.DataFrame:
        """The medians ``prunelens analyze`` prints: one column per variant, one row per number."""
        rows = headline(self.summary)
        return pd.DataFrame(rows).set_index("variant").T if rows else pd.DataFrame()


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
    from prunelens.utils.io import check_output_dir

    if out is not None:
        check_output_dir(out, overwrite)
    t_start = time.perf_counter()
    run = _Run.start(model, tokenizer, prompts, config, dense_cache, log or (lambda msg: None))
    for v in variants:
        run.measure(v, mc_examples)
    tables = _assemble_tables(run.frames, run.summaries)
    summary = _summary(run, variants, dense_name, list(notes or []), t_start)
    config_json = _config_json(run, prompts, variants, dense_name, mc_task, mc_examples, tables)
    report = AnalysisReport(summary, tables)
    if out is not None:
        _write(report, config_json, Path(out), overwrite, config, [v.name for v in variants])
    return report


@dataclass
class _Run:
    """What the steps of one :func:`run_analysis` share: the dense side, computed once, and what each
    variant adds (long-table frames, headline numbers, timings, memory)."""

    model: Any
    tokenizer: Any
    config: AnalysisConfig
    dense_cache: dict | None
    log: Any
    adapter: Adapter
    pad_id: int
    eos: set[int]
    labels: list[str]
    prompt_ids: list[list[int]]
    decode_key: tuple
    dense: Any = None  # the dense decoding (None when neither transitions nor trajectories run)
    dense_tf: Any = None  # the dense teacher-forced states, made by the first trajectories step
    timings: dict[str, float] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    frames: dict[str, list[pd.DataFrame]] = field(default_factory=dict)
    summaries: dict[str, list[pd.DataFrame]] = field(default_factory=dict)
    variants: dict[str, Any] = field(default_factory=dict)  # per variant: its headline numbers
    measured: dict[tuple, Any] = field(default_factory=dict)  # counterfactuals -> TransitionsResult

    @classmethod
    def start(cls, model, tokenizer, prompts, config: AnalysisConfig, dense_cache, log) -> _Run:
        """Encode the prompts and, when an analysis needs the analysed sequences, decode them densely."""
        from prunelens.analysis.prompts import encode_prompts

        pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        )
        eos = eos_ids_of(model, tokenizer)
        prompt_ids = encode_prompts(tokenizer, [p[1] for p in prompts], config.chat)
        decode_key = (
            "decode",
            tuple(map(tuple, prompt_ids)),
            config.max_new_tokens,
            tuple(eos),
            pad_id,
            repr(config.sampler),
            config.batch_size,
        )
        run = cls(
            model, tokenizer, config, dense_cache, log, Adapter(model), pad_id, eos,
            [p[0] for p in prompts], prompt_ids, decode_key,
        )  # fmt: skip
        if "transitions" in config.analyses or "trajectories" in config.analyses:
            run.decode_dense()
        return run

    def cached(self, key: tuple, make):
        """``make()``, or its value from the shared dense cache when an earlier call computed it."""
        if self.dense_cache is not None and key in self.dense_cache:
            return self.dense_cache[key]
        value = make()
        if self.dense_cache is not None:
            self.dense_cache[key] = value
        return value

    @property
    def sequences(self) -> Sequences | None:
        """The analysed sequences: each prompt and its dense continuation."""
        return Sequences(self.prompt_ids, self.dense.tokens, self.labels) if self.dense is not None else None

    def decode_dense(self) -> None:
        c = self.config
        t0 = time.perf_counter()
        self.dense = self.cached(
            self.decode_key,
            lambda: decode(
                self.model,
                self.prompt_ids,
                max_new_tokens=c.max_new_tokens,
                eos_ids=self.eos,
                pad_id=self.pad_id,
                sampler=c.sampler,
                batch_size=c.batch_size,
                desc="decoding (dense)",
            ),
        )
        self.timings["decode_dense"] = time.perf_counter() - t0
        self.log(
            f"decoded {len(self.prompt_ids)} prompts with the dense model "
            f"({sum(map(len, self.dense.tokens))} tokens) in {self.timings['decode_dense']:.1f} s"
        )

    def measure(self, v, mc_examples) -> None:
        """Every configured analysis of variant ``v``: its frames, timings and headline numbers."""
        vs: dict[str, Any] = {"description": v.describe()}
        if "transitions" in self.config.analyses:
            vs["transitions"] = self.transitions(v)
        if "trajectories" in self.config.analyses:
            vs["trajectories"] = self.trajectories(v)
        if "subspace" in self.config.analyses and mc_examples:
            vs["subspace"] = self.subspace(v, mc_examples)
        self.variants[v.name] = vs

    @property
    def measure_options(self) -> dict[str, Any]:
        """The settings every analysis of a variant takes alike."""
        c = self.config
        return dict(
            temperatures=c.temperatures, batch_size=c.batch_size, ks=c.ks, exact=c.exact, pad_id=self.pad_id
        )

    def add_frames(self, frames: dict[str, pd.DataFrame]) -> None:
        for name, df in frames.items():
            self.frames.setdefault(name, []).append(df)

    def transitions(self, v) -> dict[str, Any]:
        c = self.config
        t0 = time.perf_counter()
        cf_plan, _ = plan_counterfactuals(self.adapter, v, scope=c.scope, layers=c.layers)
        signature = _counterfactuals_signature(cf_plan)
        if signature in self.measured:
            res = self.measured[signature].relabel(
                v.name, {key: cf.in_variant for key, cf in cf_plan.items()}
            )
            self.log(f"{v.name}: transitions shared with an earlier variant (same counterfactuals)")
        else:
            res = self.measured[signature] = transitions(
                self.model,
                self.sequences,
                v,
                scope=c.scope,
                layers=c.layers,
                final_norm=c.final_norm,
                chunk_tokens=c.chunk_tokens,
                positions=c.positions,
                desc=f"transitions ({v.name})",
                **self.measure_options,
            )
        self.timings[f"transitions/{v.name}"] = time.perf_counter() - t0
        self.memory[f"trace_states_bytes/{v.name}"] = res.state_bytes
        self.add_frames({"transitions": res.frame()})
        self.summaries.setdefault("summary_transitions", []).append(TB.transitions_summary(res))
        self.log(
            f"{v.name}: transitions over {res.n_tokens} tokens × {len(res.entries)} sublayers "
            f"in {self.timings[f'transitions/{v.name}']:.1f} s"
        )
        return {**headline_transitions(res), "notes": res.notes, "tokens": res.n_tokens}

    def trajectories(self, v) -> dict[str, Any]:
        c = self.config
        t0 = time.perf_counter()
        if self.dense_tf is None:
            self.dense_tf = self.cached(
                ("teacher_forced", self.decode_key),
                lambda: teacher_forced_hidden(
                    self.model, self.sequences, pad_id=self.pad_id, batch_size=c.batch_size
                ),
            )
        tr = trajectories(
            self.model,
            v,
            self.prompt_ids,
            dense=self.dense,
            max_new_tokens=c.max_new_tokens,
            sampler=c.sampler,
            eos_ids=self.eos,
            labels=self.labels,
            dense_hidden_tf=self.dense_tf,
            **self.measure_options,
        )
        self.timings[f"trajectories/{v.name}"] = time.perf_counter() - t0
        self.add_frames(tr.frames())
        self.log(f"{v.name}: trajectories in {self.timings[f'trajectories/{v.name}']:.1f} s")
        return headline_trajectories(tr)

    def subspace(self, v, mc_examples) -> dict[str, Any]:
        from prunelens.analysis.subspace import DEFAULT_LABELS, option_subspace

        c = self.config
        t0 = time.perf_counter()
        sub = option_subspace(
            self.model,
            self.tokenizer,
            v,
            mc_examples,
            labels=c.option_labels or DEFAULT_LABELS,
            chat=c.chat,
            dense_cache=self.dense_cache,
            **self.measure_options,
        )
        self.timings[f"subspace/{v.name}"] = time.perf_counter() - t0
        self.add_frames(sub.frames())
        self.log(
            f"{v.name}: option subspace over {len(mc_examples)} questions "
            f"in {self.timings[f'subspace/{v.name}']:.1f} s"
        )
        return headline_subspace(sub)


def _counterfactuals_signature(cf_plan) -> tuple:
    """What makes two variants' transitions identical: the same counterfactual of every traced sublayer
    (the same override tensors, by identity) — drop plans then share the drop-each measurements."""
    return tuple(
        sorted(
            (
                key,
                cf.kind,
                tuple(
                    sorted((n, id(t)) for d in (cf.params, cf.pre_norm, cf.post_norm) for n, t in d.items())
                ),
            )
            for key, cf in cf_plan.items()
        )
    )


def _assemble_tables(
    frames: dict[str, list[pd.DataFrame]], summaries: dict[str, list[pd.DataFrame]]
) -> dict[str, pd.DataFrame]:
    """One table per name from the variants' frames, and the summary tables over them."""
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
    return tables


def _summary(run: _Run, variants, dense_name: str, notes: list[str], t_start: float) -> dict[str, Any]:
    """``summary.json``: headline numbers per variant, timings, memory, the dense generations."""
    memory = run.memory
    memory["peak_rss_bytes"] = peak_rss_bytes()
    if torch.cuda.is_available():
        memory["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    memory["override_bytes"] = {v.name: v.override_bytes for v in variants}
    memory["model_param_bytes"] = sum(p.numel() * p.element_size() for p in run.model.parameters())
    dense = run.dense
    return {
        "dense": dense_name,
        "variants": run.variants,
        "timings_s": {**run.timings, "total": time.perf_counter() - t_start},
        "memory": memory,
        "notes": notes,
        "dense_generations": (
            [
                {"prompt": lab, "text": run.tokenizer.decode(dense.tokens[i], skip_special_tokens=True)}
                for i, lab in enumerate(run.labels)
            ]
            if dense is not None
            else []
        ),
    }


def _config_json(run: _Run, prompts, variants, dense_name, mc_task, mc_examples, tables) -> dict[str, Any]:
    """``config.json``: the model, the variants (with their prune plans), the settings, the versions."""
    model, adapter, config = run.model, run.adapter, run.config
    return {
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
        "analysis": {**asdict(config), "sampler": config.sampler.describe()},
        "seed": config.seed,
        "prompts": [
            {"label": lab, "text": text, "tokens": len(ids)}
            for (lab, text), ids in zip(prompts, run.prompt_ids)
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


def _write(
    report: AnalysisReport, config_json: dict, out: Path, overwrite: bool, config: AnalysisConfig, names
) -> None:
    """Tables, figures, ``config.json`` and ``summary.json`` into ``out``, atomically."""
    from prunelens.utils.io import atomic_output_dir

    summary = report.summary
    t0 = time.perf_counter()
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        TB.write_tables(report.tables, tmp / "tables", csv=config.csv)
        figs: list[Path] = []
        if config.figures:
            figs = _figures(report.tables, tmp / "figures", names)
        summary["timings_s"]["write"] = time.perf_counter() - t0
        summary["figures"] = [str(p.relative_to(tmp)) for p in figs]
        TB.write_json(tmp / "config.json", config_json)
        TB.write_json(tmp / "summary.json", summary)
    report.out = out
    report.figures = [out / p for p in summary["figures"]]


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
