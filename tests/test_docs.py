"""The examples in README.md and docs/ run and print what their comments say."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
PRINTED = re.compile(r"^\s*print\(.*\)\s*# (.*)$")
PRINTS = re.compile(r"^# prints: (.*)$", re.MULTILINE)


def python_blocks() -> list[tuple[str, int, str]]:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for number, block in enumerate(BLOCK.findall(path.read_text(encoding="utf-8"))):
            found.append((path.name, number, block))
    return found


@pytest.mark.parametrize(("name", "number", "code"), python_blocks())
def test_example_runs_and_prints_what_it_says(name: str, number: int, code: str) -> None:
    wrapped = [line for line in code.splitlines() if re.match(r"^\s*\)\s*# ", line)]
    assert not wrapped, f"a print wrapped over lines hides its expected output: {wrapped}"
    expected = [m.group(1).strip() for line in code.splitlines() if (m := PRINTED.match(line))]
    for listed in PRINTS.findall(code):
        expected += [part.strip() for part in listed.split("|")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"{name}#{number}", "exec"), {})  # noqa: S102 - our own docs
    if expected:
        assert [line.strip() for line in out.getvalue().splitlines()] == expected


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "<!-- test-command -->" in readme
    assert "sed -n '/<!-- test-command -->/" in (ROOT / ".ci" / "run").read_text()


def test_the_project_cites_no_file_outside_it() -> None:
    """Code, tests, docs and CI stand alone: no design notes or paths outside the tree."""
    outside = ("DESIGN" + ".md", "../" + "shared/")
    paths = [ROOT / "README.md", ROOT / ".ci" / "run"]
    for folder in ("relaypolicy", "tests", "docs"):
        paths += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".toml")]
    citing = [
        f"{path.relative_to(ROOT)}: {word}"
        for path in paths
        for word in outside
        if word in path.read_text(encoding="utf-8", errors="replace")
    ]
    assert not citing
