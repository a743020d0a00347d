"""Writing files so that a reader, or a crash, sees the old file or the new one.

The table's persistence file, the exported maps, the password file and the watcher's
position all go through :func:`write_atomically`: a temporary file beside the target,
``fsync``, ``rename`` over it, ``fsync`` of the directory. A process killed in between
leaves its temporary file behind: :func:`remove_stale_temps` clears them at the next start.
:func:`read_regular` reads a state file without ever blocking on a FIFO or a device.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import tempfile
from os import PathLike

__all__ = [
    "LockedError",
    "NotRegularFileError",
    "fsync_directory",
    "fsync_path",
    "lock_exclusively",
    "read_regular",
    "remove_stale_temps",
    "write_atomically",
    "write_temp",
]

# Opening never blocks (a FIFO without a writer, a terminal) and never adopts a terminal.
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)


class NotRegularFileError(OSError):
    """A state file's path names a FIFO, a device, a directory or a socket."""


def read_regular(path: str) -> bytes:
    """The content of the regular file ``path``.

    Opened with ``O_NONBLOCK`` and checked with ``fstat`` before anything is read, so a
    FIFO at the path is refused at once instead of hanging the caller until something
    writes to it. Raises :class:`FileNotFoundError` when there is no file,
    :class:`NotRegularFileError` when it is not a regular file, :class:`OSError` else.
    """
    fd = os.open(path, _READ_FLAGS)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"{path}: not a regular file ({_kind(mode)})")
        os.set_blocking(fd, True)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file"


def remove_stale_temps(path: str) -> list[str]:
    """Remove the temporary files :func:`write_temp` left beside ``path`` when its process
    was killed before the rename; the names removed.

    Only names of exactly our own pattern (``.<name>.<8 random characters>.tmp``, as
    :func:`tempfile.mkstemp` makes them) that are regular files are touched. Call it at
    start, before anything of this process writes ``path``.
    """
    directory = os.path.dirname(path) or "."
    pattern = re.compile(rf"\.{re.escape(os.path.basename(path))}\.[a-z0-9_]{{8}}\.tmp")
    removed = []
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
        for entry in entries:
            if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(entry.name)
    return removed


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


class LockedError(OSError):
    """The lock file is held by another process; :attr:`owner` is the pid it wrote, or ""."""

    def __init__(self, path: str, owner: str) -> None:
        super().__init__(f"{path}: locked by another process")
        self.owner = owner


def lock_exclusively(path: str) -> int:
    """Create or open ``path`` and take an exclusive ``flock`` on it without waiting; the
    descriptor, which holds the lock until it is closed (the kernel drops it when the
    process dies). This process's pid is written into the file, for the next one's
    message. Raises :class:`LockedError` when another process holds it, :class:`OSError`
    when the file cannot be opened."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        raise LockedError(path, owner if owner.isdigit() else "") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd
