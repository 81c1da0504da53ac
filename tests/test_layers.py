"""The package's layers import only downward: a module never imports from a layer above its own.

utils < plan < data < models < prune < evaluate < analysis < study < report < cli. An import inside a
function counts too (it is how cycles hide), so every ``from prunelens.X import`` in every module is checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import prunelens

ORDER = ("utils", "plan", "data", "models", "prune", "evaluation", "analysis", "studies", "report", "cli")
ROOT = Path(prunelens.__file__).parent


def _layer(name: str) -> str | None:
    head = name.split(".")[0]
    if head in ORDER:
        return head
    return "cli" if head in ("cli", "__main__") else None


def test_layers_import_only_downward():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        mine = _layer(rel.parts[0].removesuffix(".py"))
        if mine is None:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and (node.module or "").startswith("prunelens.")
            ):
                other = _layer(node.module.split(".", 1)[1])
                if other is not None and ORDER.index(other) > ORDER.index(mine):
                    bad.append(f"{rel}:{node.lineno} ({mine}) imports {node.module} ({other})")
    assert not bad, "imports that go up a layer:\n" + "\n".join(bad)
