"""Writing files so that a reader, or a crash, sees the old file or the new one.

The table's persistence file, the exported maps, the password file and the watcher's
position all go through :func:`write_atomically`: a temporary file beside the target,
``fsync``, ``rename`` over it, ``fsync`` of the directory.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from os import PathLike

__all__ = ["fsync_directory", "fsync_path", "write_atomically", "write_temp"]


def write_temp(path: str, data: bytes, mode: int) -> str:
    """Write ``data`` to a new temporary file beside ``path`` (durably); its name."""
    directory = os.path.dirname(path) or "."
    fd, temporary = tempfile.mkstemp(
        dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fchmod(file.fileno(), mode)
            os.fsync(file.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return temporary


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(directory: str) -> None:
    # Makes the rename itself durable. Not every platform can open a directory; the rename
    # is still atomic there.
    with contextlib.suppress(OSError):
        fsync_path(directory)


def write_atomically(path: str | PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``: temporary file, ``fsync``, rename, ``fsync`` the
    directory. A reader sees the old file or the new one; a crash leaves one of them."""
    name = os.fspath(path)
    temporary = write_temp(name, data, mode)
    try:
        os.replace(temporary, name)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    fsync_directory(os.path.dirname(name) or ".")
