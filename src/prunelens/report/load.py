"""A study directory read into a :class:`Study`: each missing or unreadable file is noted, none crashes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunelens.report.analysis_results import AnalysisHeadline, figure_order
from prunelens.studies.config import DENSE

__all__ = ["Study", "load_study"]


@dataclass
class Study:
    """Everything stored in a study directory (``None`` / empty where a file is missing)."""

    root: Path
    meta: dict[str, Any] = field(default_factory=dict)  # study.json
    variants: list[str] = field(default_factory=list)  # Full first, then config order
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    infos: dict[str, dict[str, Any]] = field(default_factory=dict)
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    fidelity: dict[str, Any] | None = None
    fidelity_vs_control: dict[str, Any] | None = None  # per variant: per-prompt ROUGE-L against the control's
    analysis: dict[str, AnalysisHeadline] = field(default_factory=dict)  # headline numbers per variant
    analysis_figures: dict[str, list[Path]] = field(default_factory=dict)
    predictor: dict[str, Any] | None = None
    case_study: dict[str, Any] | None = None
    missing: list[str] = field(default_factory=list)  # what is missing and what that means for the report

    @property
    def config(self) -> dict[str, Any]:
        c = self.meta.get("config")
        return c if isinstance(c, dict) else {}

    @property
    def model(self) -> str:
        m = self.config.get("model")
        if isinstance(m, str) and m:
            return m
        for s in self.summaries.values():
            name = (s.get("model") or {}).get("base_model") or (s.get("model") or {}).get("spec")
            if isinstance(name, str) and name:
                return name
        return "the studied model"


def _read_json(path: Path, study: Study, consequence: str) -> Any:
    rel = path.relative_to(study.root).as_posix() if path.is_relative_to(study.root) else str(path)
    if not path.exists():
        study.missing.append(f"{rel} is missing: {consequence}")
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        study.missing.append(f"{rel} could not be read ({type(exc).__name__}: {exc}): {consequence}")
        return None


def _subdirs(path: Path) -> list[str]:
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_study(study_dir: str | Path) -> Study:
    """Read whatever a study directory holds; every missing or unreadable file is noted in ``missing``."""
    root = Path(study_dir)
    st = Study(root=root)
    if not root.is_dir():
        st.missing.append(f"{root} is not a directory: there is nothing to report")
        return st
    meta = _read_json(root / "study.json", st, "the config, versions and timings are not shown")
    st.meta = meta if isinstance(meta, dict) else {}
    names: list[str] = []
    for v in st.config.get("variants") or []:
        if isinstance(v, dict) and isinstance(v.get("name"), str):
            names.append(v["name"])
            st.specs[v["name"]] = v
    for sub in ("variants", "eval", "analysis"):
        names += [n for n in _subdirs(root / sub) if n not in names]
    names = [DENSE] + [n for n in names if n != DENSE]
    st.variants = names
    for n in names:
        d = root / "variants" / n / "info.json"
        if d.exists() or n in st.specs or (root / "variants").is_dir():
            info = _read_json(
                d, st, f"the parameter count and prune plan of {n} come from its evaluation only"
            )
            if isinstance(info, dict):
                st.infos[n] = info
        s = _read_json(root / "eval" / n / "summary.json", st, f"{n} has no scores in the table")
        if isinstance(s, dict) and isinstance(s.get("results"), dict):
            st.summaries[n] = s
        elif s is not None:
            st.missing.append(
                f"eval/{n}/summary.json has no 'results' mapping: {n} has no scores in the table"
            )
        if n != DENSE:
            a = _read_json(
                root / "analysis" / n / "summary.json", st, f"{n} has no representation-hierarchy numbers"
            )
            if isinstance(a, dict):
                st.analysis[n] = AnalysisHeadline.from_summary(a, n)
            figs = sorted((root / "analysis" / n / "figures").glob("*.png"), key=figure_order)
            if figs:
                st.analysis_figures[n] = figs
    fid = _read_json(
        root / "eval" / "fidelity.json",
        st,
        "generations are not compared with the dense model's (generative verdicts rest on scores alone)",
    )
    st.fidelity = fid if isinstance(fid, dict) else None
    if st.fidelity is not None:
        vs = _read_json(
            root / "eval" / "fidelity_vs_control.json",
            st,
            "generation fidelity is not compared with the control's (fixed thresholds judge it instead)",
        )
        st.fidelity_vs_control = vs if isinstance(vs, dict) else None
    pred = _read_json(root / "predictor.json", st, "the predictor figure is not drawn")
    st.predictor = pred if isinstance(pred, dict) else None
    cs = _read_json(root / "case_study.json", st, "there is no side-by-side case study")
    st.case_study = cs if isinstance(cs, dict) else None
    return st
