"""The wheel and the sdist build, install in a fresh venv and run, man pages included.

The build runs the way a packager's does: ``pip wheel`` and ``python -m build --sdist`` with
build isolation (hatchling and the hook's dependencies come from the package index), then
a wheel built from the sdist must hold the same files as the one built from the tree (the
sdist ships everything the build needs, ``hatch_build.py`` included). The tree's wheel is
installed in a new venv whose ``relaypolicy`` must answer and whose
``share/man/man1`` must hold pages that ``man`` (or groff) renders.

The generator itself is checked without a build: escaping, and that every option of every
subcommand reaches its page.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from realservers import unavailable

from relaypolicy import __version__
from relaypolicy.cli import COMMANDS, _build_parser
from relaypolicy.cli.manpage import escape, main, render_pages, write_man_pages

ROOT = Path(__file__).resolve().parent.parent
# A build may take a while on a loaded machine (network, isolation venvs); it is a
# bound on a hung pip, not a timing assertion.
BUILD_TIMEOUT = 600


def _run(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run outside this test's tree: no PYTHONPATH, so the venv imports what it installed."""
    environment = {
        key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PIP_USER")
    }
    environment["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        env=environment,
        cwd=cwd,
        check=False,
    )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: {result.returncode}\n{result.stderr[-3000:]}"
    return result.stdout


def _render(page: Path) -> str:
    """The page as a reader sees it: ``man -l``, else groff, else the troff source."""
    man = shutil.which("man")
    groff = shutil.which("groff")
    if man is not None:
        command = [man, "-l", str(page)]
    elif groff is not None:
        command = [groff, "-man", "-Tutf8", str(page)]
    else:
        # No formatter: the text lines, escapes undone, as the minimal reading.
        text = page.read_text(encoding="utf-8")
        return re.sub(r"\\f[BIR]|\\&", "", text).replace("\\-", "-").replace("\\e", "\\")
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=dict(os.environ, MANPAGER="cat", PAGER="cat", MANWIDTH="100", LC_ALL="C.UTF-8"),
    )
    assert result.returncode == 0, result.stderr
    # Hyphens may come out as U+2010 or U+2212 in some locales; overstrike bold is undone.
    return re.sub(r".\x08", "", result.stdout).replace("\u2010", "-").replace("\u2212", "-")


# --- the generator, without a build ------------------------------------------------------


def test_escape_guards_backslashes_hyphens_and_control_lines() -> None:
    assert escape("a\\b") == "a\\eb"
    assert escape("--local-domain") == "\\-\\-local\\-domain"
    assert escape(".PP not a macro\n'also not") == "\\&.PP not a macro\n\\&'also not"
    assert escape("mid.line 'quote") == "mid.line 'quote"


def test_every_command_and_option_has_its_page(tmp_path: Path) -> None:
    written = write_man_pages(tmp_path / "man")
    names = sorted(path.name for path in written)
    assert names == sorted(["relaypolicy.1", *(f"relaypolicy-{c}.1" for c in COMMANDS)])
    pages = render_pages()
    parser = _build_parser()
    for action in parser._actions:
        choices = getattr(action, "choices", None)
        if not isinstance(choices, dict):
            continue
        for command, sub in choices.items():
            page = pages[f"relaypolicy-{command}.1"]
            assert page.startswith(f'.TH "RELAYPOLICY-{command.upper()}" "1"')
            for option in (s for a in sub._actions for s in a.option_strings):
                assert escape(option) in page, (command, option)
            for line in page.splitlines():
                assert not line.startswith(("'", ". ")), (command, line)
    check = pages["relaypolicy-check.1"]
    # The exit statuses of the description get their section; the example is verbatim.
    assert ".SH EXIT STATUS\n0 accept, 1 reject, 2 defer" in check
    assert "\\-\\-recipient 'user%other.example@example.org'" in check


def test_the_packager_entry_writes_pages_and_refuses_a_bad_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path)]) == 0
    assert (tmp_path / "relaypolicy-smtpd.1").is_file()
    assert main([]) == 64
    assert main(["--help"]) == 64
    assert "usage: python -m relaypolicy.cli.manpage DIR" in capsys.readouterr().err


# --- the packages ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of the tree's tracked files: the build writes ``build/`` into the tree it builds."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the sdist and wheel are built from the tracked files")
    copy = tmp_path_factory.mktemp("tree")
    listing = _ok(
        _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT)
    )
    for name in filter(None, listing.split("\0")):
        source = ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    yield copy


@pytest.mark.packaging
def test_wheel_and_sdist_install_and_run_in_a_fresh_venv(source_tree: Path, tmp_path: Path) -> None:
    try:
        builder = importlib.util.find_spec("build.__main__")
    except ModuleNotFoundError:
        builder = None
    if builder is None:
        unavailable("the 'build' package (pip install -e '.[dev]') builds the sdist")
    dist = tmp_path / "dist"
    _ok(
        _run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), "."],
            cwd=source_tree,
        )
    )
    _ok(
        _run(
            [sys.executable, "-m", "build", "--sdist", "--outdir", str(dist), "."], cwd=source_tree
        )
    )
    (wheel,) = dist.glob("relaypolicy-*.whl")
    (sdist,) = dist.glob("relaypolicy-*.tar.gz")

    with tarfile.open(sdist) as archive:
        members = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"hatch_build.py", "pyproject.toml", "relaypolicy/cli/manpage.py"} <= members
    # The sdist builds the same wheel as the tree.
    from_sdist = tmp_path / "from-sdist"
    _ok(
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(from_sdist), str(sdist)])
    )
    (wheel_from_sdist,) = from_sdist.glob("relaypolicy-*.whl")
    with zipfile.ZipFile(wheel) as first, zipfile.ZipFile(wheel_from_sdist) as second:
        files = sorted(first.namelist())
        assert files == sorted(second.namelist())
    data = f"relaypolicy-{__version__}.data/data/share/man/man1"
    assert f"{data}/relaypolicy-check.1" in files
    assert f"{data}/relaypolicy.1" in files

    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    _ok(_run([str(python), "-m", "pip", "install", "--quiet", str(wheel)]))
    command = str(environment / "bin" / "relaypolicy")

    version = _run([command, "--version"], cwd=tmp_path)
    assert _ok(version).strip() == f"relaypolicy {__version__}"
    check = _run(
        [
            command,
            "check",
            "--local-domain",
            "example.org",
            "--client-address",
            "203.0.113.7",
            "--recipient",
            "u%aho.jp@example.org",
        ],
        cwd=tmp_path,
    )
    assert check.returncode == 1, check.stderr
    assert check.stdout.startswith("554 "), check.stdout
    # The installed package is the venv's, not this tree's.
    where = _ok(
        _run([str(python), "-c", "import relaypolicy; print(relaypolicy.__file__)"], cwd=tmp_path)
    )
    assert Path(where.strip()).is_relative_to(environment)

    pages = environment / "share" / "man" / "man1"
    assert sorted(p.name for p in pages.iterdir()) == sorted(
        ["relaypolicy.1", *(f"relaypolicy-{c}.1" for c in COMMANDS)]
    )
    rendered = _render(pages / "relaypolicy-check.1")
    for option in ("--local-domain", "--client-address", "--recipient", "--config", "--json"):
        assert option in rendered, option
    assert "EXIT STATUS" in rendered
