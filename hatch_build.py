"""Hatchling build hook: generate the man pages and install them with the wheel.

The pages come from the argparse definitions (``relaypolicy/cli/manpage.py``), so they are
built, not kept in the repository. The hook runs ``python -m relaypolicy.cli.manpage`` on
the tree being built, in a subprocess (the build backend's process imports nothing of ours),
into a temporary directory, and hands the files to the wheel as shared data
(``build_data["shared_data"]``, hatchling 1.28+): pip installs them under
``<prefix>/share/man/man1`` where ``man`` finds them. The directory is removed once the
wheel is written, so a build leaves nothing in the tree. The runtime dependencies the
generator imports are the hook's ``dependencies`` in ``pyproject.toml``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

MAN_DIRECTORY = "share/man/man1"


class ManPageBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Write the man pages into a temporary directory and add them to the wheel."""

    _output: Path | None = None

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        self._output = Path(tempfile.mkdtemp(prefix="relaypolicy-man-"))
        # Prepend the tree: the build frontend's isolated environment (pip puts it on
        # PYTHONPATH) must stay importable for the dependencies.
        search_path = [self.root, *filter(None, [os.environ.get("PYTHONPATH")])]
        environment = dict(os.environ, PYTHONPATH=os.pathsep.join(search_path))
        subprocess.run(
            [sys.executable, "-m", "relaypolicy.cli.manpage", str(self._output)],
            check=True,
            cwd=self.root,
            env=environment,
            stdout=subprocess.DEVNULL,
        )
        for page in sorted(self._output.glob("*.1")):
            build_data["shared_data"][str(page)] = f"{MAN_DIRECTORY}/{page.name}"

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        if self._output is not None:
            shutil.rmtree(self._output, ignore_errors=True)
            self._output = None
