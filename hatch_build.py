"""Hatchling build hook: generate the man pages and install them with the wheel.

The pages come from the argparse definitions (``relaypolicy/cli/manpage.py``), so they are
built, not kept in the repository. The hook runs ``python -m relaypolicy.cli.manpage`` on
the tree being built, in a subprocess (the build environment imports nothing of ours), into
a directory under the build root, and hands the files to the wheel as shared data: pip
installs them under ``<prefix>/share/man/man1`` where ``man`` finds them. The runtime
dependencies the generator imports are the hook's ``dependencies`` in ``pyproject.toml``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

MAN_DIRECTORY = "share/man/man1"


class ManPageBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Write the man pages into ``build/man`` and add them to the wheel's shared data."""

    def _output(self) -> Path:
        return Path(self.root) / "build" / "man"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        output = self._output()
        # Prepend the tree: the build frontend's isolated environment (pip puts it on
        # PYTHONPATH) must stay importable for the dependencies.
        search_path = [self.root, *filter(None, [os.environ.get("PYTHONPATH")])]
        environment = dict(os.environ, PYTHONPATH=os.pathsep.join(search_path))
        subprocess.run(
            [sys.executable, "-m", "relaypolicy.cli.manpage", str(output)],
            check=True,
            cwd=self.root,
            env=environment,
            stdout=subprocess.DEVNULL,
        )
        for page in sorted(output.glob("*.1")):
            build_data["shared_data"][str(page)] = f"{MAN_DIRECTORY}/{page.name}"

    def clean(self, versions: list[str]) -> None:
        for page in self._output().glob("*.1"):
            page.unlink()
