"""The package's layers import only downward: a module never imports from a layer above its own.

utils < plan < data < models < prune < evaluation < analysis < distill < studies < report < api < cli.
``api`` is the Python API on the package itself (``prunelens/api.py`` and ``prunelens/__init__.py``);
``__main__`` belongs to the CLI. An import inside a function counts too (it is how cycles hide), so every
``from prunelens.X import``, ``import prunelens.X`` and ``from prunelens import X`` (X a module) in every
module is checked. A module or package that sits in no layer fails the test, so a new package has to be
placed in the order before it can land.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import prunelens

ORDER = (
    "utils",
    "plan",
    "data",
    "models",
    "prune",
    "evaluation",
    "analysis",
    "distill",
    "studies",
    "report",
    "api",
    "cli",
)
#: top-level modules that are not a layer's own name, and the layer they belong to
ALIASES = {"__init__": "api", "__main__": "cli"}
ROOT = Path(prunelens.__file__).parent


def _layer(name: str) -> str | None:
    """The layer of ``name`` (a module path relative to ``prunelens``), None if it sits in none."""
    head = name.split(".")[0]
    head = ALIASES.get(head, head)
    return head if head in ORDER else None


def _modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def _imported(node: ast.AST) -> list[str]:
    """Names (relative to ``prunelens``) of the prunelens modules that an import node reads."""
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        if node.module.startswith("prunelens."):
            return [node.module.split(".", 1)[1]]
        if node.module == "prunelens":
            # `from prunelens import X`: X's own layer when X is a module; the package's constants
            # (__version__, DEFAULT_MODEL) every layer may read; anything else is a function of the api
            return [
                alias.name if _layer(alias.name) else "api"
                for alias in node.names
                if not (alias.name.isupper() or alias.name.startswith("__"))
            ]
    if isinstance(node, ast.Import):
        return [a.name.split(".", 1)[1] for a in node.names if a.name.startswith("prunelens.")]
    return []


def test_every_module_sits_in_a_layer():
    lost = [
        str(p.relative_to(ROOT))
        for p in _modules()
        if _layer(p.relative_to(ROOT).parts[0].removesuffix(".py")) is None
    ]
    assert not lost, (
        "modules in no layer (add their package to ORDER in tests/test_layers.py):\n" + "\n".join(lost)
    )


def test_layers_import_only_downward():
    bad = []
    for path in _modules():
        rel = path.relative_to(ROOT)
        mine = _layer(rel.parts[0].removesuffix(".py"))
        if mine is None:
            continue  # reported by test_every_module_sits_in_a_layer
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for name in _imported(node):
                other = _layer(name)
                if other is None:
                    bad.append(f"{rel}:{node.lineno} ({mine}) imports prunelens.{name}, which is in no layer")
                elif ORDER.index(other) > ORDER.index(mine):
                    bad.append(f"{rel}:{node.lineno} ({mine}) imports prunelens.{name} ({other})")
    assert not bad, "imports that go up a layer:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "name, layer",
    [
        ("utils.io", "utils"),
        ("plan", "plan"),
        ("distill.trainer", "distill"),
        ("api", "api"),
        ("__init__", "api"),
        ("__main__", "cli"),
        ("cli.prune", "cli"),
        ("quantize.gptq", None),
    ],
)
def test_layer_of_a_module(name, layer):
    assert _layer(name) == layer


def test_an_unplaced_package_and_an_upward_import_are_caught():
    code = "from prunelens.studies.config import StudyConfig\nimport prunelens.quantize\n"
    found = [(name, _layer(name)) for node in ast.walk(ast.parse(code)) for name in _imported(node)]
    assert found == [("studies.config", "studies"), ("quantize", None)]
    # the package's constants are readable from every layer; modules and api functions named through it
    # are checked
    code = "from prunelens import __version__, DEFAULT_MODEL, report, load"
    names = [n for node in ast.walk(ast.parse(code)) for n in _imported(node)]
    assert names == ["report", "api"]
