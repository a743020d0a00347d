"""The journal of a table's changes: one checksummed line per change, appended.

Format, one line each, after a header line::

    9a3c01f2 {"format":"relaypolicy-iptable-journal","version":1}
    5d0e77b1 ["r","203.0.113.7",1767225600.25,"alice"]
    c2f4a611 ["d","198.51.100.1"]
    0b9e4d2c ["c"]

``r`` is a record (address as given, wall-clock expiry, login name or ``null``), ``d`` a
removal, ``c`` a clear. Each line starts with the CRC-32 (hex) of the rest of it. The
header is written whole, by an atomic rename, with the file; changes are appended by
:class:`~relaypolicy.iptable.durable.DurableTable` and ``fsync``ed before they are
acknowledged. A crash can only tear what was written after the last ``fsync``: a torn
last line fails its check and is dropped (:func:`read_journal`). A damaged line followed
by intact ones is not a torn write but a damaged file, and is refused
(:class:`~relaypolicy.iptable.base.TableFileError`).

:func:`replay` applies the changes to a table through its public methods, each record
with what remains of its time and never more than the table's ttl. Replaying is
idempotent: a change already in the snapshot, done again, leaves it as it was (a record
never shortens an entry; the last record or removal of an address wins).
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from relaypolicy.iptable.base import TableFileError
from relaypolicy.iptable.persist import read_state_file

if TYPE_CHECKING:
    from relaypolicy.iptable.memory import ExpiringIpTable

__all__ = [
    "APPEND_FLAGS",
    "HEADER_LINE",
    "JOURNAL_FORMAT",
    "journal_line",
    "read_journal",
    "replay",
    "write_all",
]

log = logging.getLogger("relaypolicy.table")

JOURNAL_FORMAT = "relaypolicy-iptable-journal"
JOURNAL_VERSION = 1
_HEADER = {"format": JOURNAL_FORMAT, "version": JOURNAL_VERSION}
APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | os.O_NOCTTY


def journal_line(op: object) -> bytes:
    """One journal line: CRC-32 of the JSON, a space, the JSON, a newline."""
    text = json.dumps(op, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return b"%08x %s\n" % (zlib.crc32(text), text)


HEADER_LINE = journal_line(_HEADER)


def _parse_line(raw: bytes) -> object:
    """The JSON of an intact line; ``ValueError`` for a torn or damaged one."""
    check, space, text = raw.partition(b" ")
    if not space or len(check) != 8 or int(check, 16) != zlib.crc32(text):
        raise ValueError("checksum mismatch")
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def read_journal(path: str) -> list[list[object]]:
    """The operations of the journal at ``path`` (``[]`` when there is none).

    The first line must be the journal's header. A torn tail (lines after the last
    intact one that fail their check, or the last line without its newline) is dropped
    with a warning. Raises :class:`TableFileError` for a file that is not a journal, a
    damaged line followed by intact ones, or an intact line that is not an operation.
    """
    data = read_state_file(path)
    if not data:
        return []
    lines = data.split(b"\n")
    torn = lines.pop()  # after the last newline: b"" unless the last write was cut
    try:  # written whole, by an atomic rename, with the file: never torn
        header = _parse_line(lines[0]) if lines else None
    except ValueError:
        header = None
    if header != _HEADER:
        raise TableFileError(f"{path}: not a {JOURNAL_FORMAT} version {JOURNAL_VERSION} file")
    parsed: list[object] = []
    first_bad = None
    for number, raw in enumerate(lines, 1):
        try:
            value = _parse_line(raw)
        except ValueError:
            if first_bad is None:
                first_bad = number
            continue
        if first_bad is not None:
            raise TableFileError(
                f"{path}: line {first_bad} is damaged but line {number} after it is intact: "
                "the journal is corrupt (move it aside to start without it)"
            )
        parsed.append(value)
    dropped = len(lines) - len(parsed) + (1 if torn else 0)
    if dropped:
        log.warning("%s: dropped a torn last write (%d line(s))", path, dropped)
    ops: list[list[object]] = []
    for number, op in enumerate(parsed[1:], 2):
        if not _valid_op(op):
            raise TableFileError(f"{path}: line {number}: not a journal operation: {op!r:.200}")
        assert isinstance(op, list)
        ops.append(op)
    return ops


def _valid_op(op: object) -> bool:
    if not isinstance(op, list) or not op:
        return False
    kind = op[0]
    if kind == "r":
        return (
            len(op) == 4
            and isinstance(op[1], str)
            and isinstance(op[2], int | float)
            and not isinstance(op[2], bool)
            and (op[3] is None or (isinstance(op[3], str) and op[3] != ""))
        )
    if kind == "d":
        return len(op) == 2 and isinstance(op[1], str)
    return kind == "c" and len(op) == 1


def replay(table: ExpiringIpTable, path: str, wall_clock: Callable[[], float]) -> int:
    """Apply the changes of the journal at ``path`` to ``table``, each record with what
    remains of its time (never more than the table's ttl); how many there were. Raises
    :class:`TableFileError` as :func:`read_journal` does, and for a change the table
    refuses."""
    ops = read_journal(path)
    now = wall_clock()
    ttl = table.ttl
    for op in ops:
        kind = op[0]
        try:
            if kind == "r":
                remaining = min(float(op[2]) - now, ttl)  # type: ignore[arg-type]
                if remaining > 0:
                    table.record(op[1], user=op[3], ttl=remaining)  # type: ignore[arg-type]
            elif kind == "d":
                table.remove(op[1])  # type: ignore[arg-type]
            else:
                table.clear()
        except (ValueError, TypeError, OverflowError) as exc:
            raise TableFileError(f"{path}: operation {op!r:.200} refused: {exc}") from None
    return len(ops)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def replay_journals(
    table: ExpiringIpTable, persist: str, wall_clock: Callable[[], float] = time.time
) -> int:
    """Apply the journals of ``persist`` (``.journal.old``, then ``.journal``) to ``table``,
    which holds its snapshot; how many changes there were. Only reads: what a process that
    merely looks at the table (``relaypolicy check --config``) needs to see what the
    running service acknowledged. Raises :class:`TableFileError` for a damaged journal."""
    return replay(table, persist + ".journal.old", wall_clock) + replay(
        table, persist + ".journal", wall_clock
    )
