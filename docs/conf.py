"""Sphinx configuration of the documentation site, built from the Markdown pages in docs/.

Build: ``pip install -e '.[docs]' && python -m sphinx -W --keep-going -n -b html docs docs/_build/html``
(.ci/run does this): ``-W`` turns every warning into a failure, so a link to a page or a heading that does
not exist fails CI. Pages are Markdown (MyST) so that they read the same on a code host as on the site.
"""

project = "prunelens"
author = "the prunelens authors"
copyright = "the prunelens authors"

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# GitHub-style anchors for headings down to level 4, so `page.md#heading` links are checked at build time
myst_heading_anchors = 4

html_theme = "furo"
html_title = "prunelens"
html_static_path: list[str] = []
