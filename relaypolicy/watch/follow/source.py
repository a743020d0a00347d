"""One open log file (``_Source``), and a position as the state file keeps it (``_Saved``).

The state file is one JSON line (format ``relaypolicy-follow``, version 1): the file's
device and inode, the offset after its last complete line, and a fingerprint of its
start; see the theory of operation in :mod:`relaypolicy.watch.follow`.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import NamedTuple

STATE_FORMAT = "relaypolicy-follow"
STATE_VERSION = 1
_HEAD = 1024  # bytes of the file's start fingerprinted in the state file
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)


class _Saved(NamedTuple):
    """A position as the state file keeps it (see the module docstring)."""

    device: int
    inode: int
    offset: int
    skip: bool
    head_length: int
    head: str

    @classmethod
    def from_json(cls, document: object) -> _Saved | None:
        if not isinstance(document, dict):
            return None
        if document.get("format") != STATE_FORMAT or document.get("version") != STATE_VERSION:
            return None
        numbers = [document.get(field) for field in ("device", "inode", "offset", "head_length")]
        if not all(type(number) is int and number >= 0 for number in numbers):
            return None
        skip, head = document.get("skipping"), document.get("head")
        if not isinstance(document.get("path"), str) or not isinstance(skip, bool):
            return None
        if not isinstance(head, str) or len(head) != 64:
            return None
        device, inode, offset, head_length = numbers
        return cls(device, inode, offset, skip, head_length, head)  # type: ignore[arg-type]

    def to_json(self, path: str) -> bytes:
        document = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "path": path,
            "device": self.device,
            "inode": self.inode,
            "offset": self.offset,
            "skipping": self.skip,
            "head_length": self.head_length,
            "head": self.head,
        }
        return (json.dumps(document) + "\n").encode("utf-8")


def _head(fd: int, length: int) -> str:
    """The fingerprint of a file: SHA-256 of its first ``length`` bytes."""
    try:
        data = os.pread(fd, length, 0) if length else b""
    except OSError:
        data = b"\x00unreadable"
    return hashlib.sha256(data).hexdigest()


class _Source:
    """One open log file: what was read of it, and the start of an unfinished line."""

    __slots__ = (
        "device",
        "eof",
        "fd",
        "head",
        "inode",
        "name",
        "offset",
        "pending",
        "quiet_since",
        "skip",
    )

    def __init__(self, fd: int, st: os.stat_result, name: str) -> None:
        self.fd = fd
        self.device = st.st_dev
        self.inode = st.st_ino
        self.name = name
        self.offset = 0  # bytes read: the descriptor's position
        self.pending = bytearray()  # read, but no newline yet
        self.skip = False  # inside an overlong line: drop bytes up to its newline
        self.eof = False
        self.quiet_since = 0.0
        self.head: tuple[int, str] | None = None  # (length, fingerprint), for the state

    @property
    def committed(self) -> int:
        """The offset just after the last complete line (where a restart resumes)."""
        return self.offset - len(self.pending)

    def seek(self, offset: int) -> None:
        os.lseek(self.fd, offset, os.SEEK_SET)
        self.offset = offset
        self.pending.clear()
        self.skip = False
        self.head = None


def _byte_at(fd: int, offset: int) -> bytes:
    try:
        return os.pread(fd, 1, offset)
    except OSError:
        return b""
