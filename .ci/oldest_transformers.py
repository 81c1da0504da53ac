"""Print the lowest transformers version that pyproject.toml accepts (its ``>=`` bound)."""

import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

deps = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"][
    "dependencies"
]
spec = next(d for d in deps if re.match(r"transformers\b", d))
low = re.search(r">=\s*([0-9][0-9.]*)", spec)
if not low:
    sys.exit(f"no lower bound for transformers in {spec!r}")
version = low.group(1)
print(version if version.count(".") >= 2 else version + ".0" * (2 - version.count(".")))
