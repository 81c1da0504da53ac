"""The README and docs/ stay true: CI runs the README's test command, and every command they show exists
with the options it is shown with (checked against the command line itself, not against its help text)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.M | re.S)


def _shown_commands(path: Path) -> list[str]:
    """Every `prunelens ...` command line in the page's bash blocks and inline code."""
    text = path.read_text(encoding="utf-8")
    lines = [line for block in _code_blocks(text, "bash") for line in block.splitlines()]
    lines += re.findall(r"`((?:\.venv/bin/)?prunelens [^`]+)`", text.replace("\\|", "|"))
    shown = []
    for line in lines:
        line = line.split(" #", 1)[0].split(">", 1)[0].strip()
        match = re.match(r"(?:\.venv/bin/)?prunelens( .*|$)", line)
        if match:
            shown.append(match.group(1).strip())
    return shown


def _cli():
    import typer

    from prunelens.cli import app

    return typer.main.get_command(app)


def _resolve(group, words: list[str]):
    """The command the words name, and the words left over (its arguments and options)."""
    command, rest = group, list(words)
    while rest and hasattr(command, "commands") and rest[0] in command.commands:
        command = command.commands[rest.pop(0)]
    return command, rest


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = [
        line for block in _code_blocks(setup, "bash") for line in block.splitlines() if "pytest" in line
    ]
    assert len(commands) == 1, "the README's set-up shows one test command"
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[0].strip() in ci, ".ci/run must run the README's test command verbatim"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_shown_commands_exist_with_their_options(page):
    cli = _cli()
    wrong = []
    for shown in _shown_commands(page):
        command, rest = _resolve(cli, shlex.split(shown))
        if command is cli and rest and not rest[0].startswith("-"):
            wrong.append(f"{shown!r}: no such command")
            continue
        options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        options.add("--help")
        for word in rest:
            name = word.split("=", 1)[0]
            if name.startswith("--") and name not in options:
                wrong.append(f"{shown!r}: `prunelens {command.name}` has no option {name}")
    assert not wrong, f"{page.name} shows commands the command line does not have:\n" + "\n".join(wrong)


def test_the_check_catches_a_wrong_command_and_option(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```bash\nprunelens prune drop --target attn --no-such-option 1  # comment\n```\n")
    cli = _cli()
    [shown] = _shown_commands(page)
    command, rest = _resolve(cli, shlex.split(shown))
    assert command.name == "drop" and "--no-such-option" in rest
    assert "--no-such-option" not in {o for p in command.params for o in p.opts}
    assert _resolve(cli, ["frobnicate"])[0] is cli


def test_every_package_says_which_module_does_what():
    """Each package's ``__init__`` docstring names every module and subpackage in it (``__main__`` aside),
    so a newcomer can find where a job lives; a new module has to be placed there too."""
    import ast

    import prunelens

    root = Path(prunelens.__file__).parent
    unnamed = []
    for init in sorted(root.rglob("__init__.py")):
        package = init.parent
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        parts = [p.stem for p in package.glob("*.py") if not p.stem.startswith("__")]
        parts += [p.name for p in package.iterdir() if (p / "__init__.py").is_file()]
        unnamed += [
            f"{init.relative_to(root)}: {part}" for part in parts if not re.search(rf"\b{part}\b", doc)
        ]
    assert not unnamed, "modules their package's docstring does not name:\n" + "\n".join(sorted(unnamed))
