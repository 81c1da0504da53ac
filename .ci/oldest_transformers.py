"""Print the lowest version of a dependency (default: transformers) that pyproject.toml accepts (its ``>=``
bound): ``python .ci/oldest_transformers.py [PACKAGE]``."""

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
package = sys.argv[1] if len(sys.argv) > 1 else "transformers"
spec = next(d for d in deps if re.match(rf"{re.escape(package)}\b", d))
low = re.search(r">=\s*([0-9][0-9.]*)", spec)
if not low:
    sys.exit(f"no lower bound for {package} in {spec!r}")
version = low.group(1)
print(version if version.count(".") >= 2 else version + ".0" * (2 - version.count(".")))
