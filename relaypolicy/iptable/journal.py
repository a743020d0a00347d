"""A table whose every change is on disk before it is acknowledged: snapshot plus journal.

Theory of operation
-------------------
With ``persist`` set, the table's state on disk is two files: the snapshot (``persist``
itself, :mod:`relaypolicy.iptable.persist`) and the journal beside it
(``<persist>.journal``), one line for each change made since the snapshot was written::

    9a3c01f2 {"format":"relaypolicy-iptable-journal","version":1}
    5d0e77b1 ["r","203.0.113.7",1767225600.25,"alice"]
    c2f4a611 ["d","198.51.100.1"]
    0b9e4d2c ["c"]

``r`` is a record (address as given, wall-clock expiry, login name or ``null``), ``d`` a
removal, ``c`` a clear. Each line starts with the CRC-32 (hex) of the rest of it. Lines
are appended to the file by :meth:`DurableTable.sync`, in one write, and ``fsync``
follows: what ``sync`` returned from is on disk (a login the watcher recorded, before
it saves its log position; an ``add`` of the control socket, before it answers). A crash
can only tear what was written after the last ``sync``; such a torn last line fails its
check and is dropped. A damaged line followed by intact ones is not a torn write but a
damaged file, and is refused (:class:`~relaypolicy.iptable.base.TableFileError`).

At start (:meth:`DurableTable.open`) the journal is replayed over the snapshot, through
the table's public methods, each record getting what remains of its time (never more
than the table's ttl). Replaying is idempotent: a change already in the snapshot, done
again, leaves it as it was (a record never shortens an entry; the last record or removal
of an address wins). So a crash at any point of a checkpoint loses nothing.

A checkpoint (:meth:`DurableTable.checkpoint`: on the sweep every ``checkpoint_interval``
when something changed, and at stop) writes a new snapshot and starts an empty journal.
Under the lock, the entries are copied and the journal is renamed to
``<persist>.journal.old`` (or appended to it, when an earlier checkpoint failed and left
it); a new journal takes new changes at once. Then, without holding anything the table's
writers wait for, the snapshot is written atomically, and ``.journal.old`` is deleted.
Start-up replays ``.journal.old`` first, then ``.journal``.

The table's readers (``lookup``, ``has_client``, ``client_login``) are the memory table's
own bound methods: the policy's hot path never touches the journal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import threading
import time
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from relaypolicy._files import (
    NotRegularFileError,
    fsync_directory,
    read_regular,
    remove_stale_temps,
    write_atomically,
)
from relaypolicy.iptable.base import IpEntry, Login, TableFileError
from relaypolicy.iptable.persist import Row, write_entries

if TYPE_CHECKING:
    from relaypolicy.iptable.memory import ExpiringIpTable
    from relaypolicy.model import Request

__all__ = ["JOURNAL_FORMAT", "DurableTable", "read_journal"]

log = logging.getLogger("relaypolicy.table")

JOURNAL_FORMAT = "relaypolicy-iptable-journal"
JOURNAL_VERSION = 1
_HEADER = {"format": JOURNAL_FORMAT, "version": JOURNAL_VERSION}
_APPEND_FLAGS = (
    os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | os.O_NOCTTY
)

Op = tuple[object, ...]


def _line(op: object) -> bytes:
    """One journal line: CRC-32 of the JSON, a space, the JSON, a newline."""
    text = json.dumps(op, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return b"%08x %s\n" % (zlib.crc32(text), text)


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

    The first line must be the journal's header. A torn tail (lines after the last intact one that fail their check, or the last line
    without its newline) is dropped with a warning. Raises :class:`TableFileError` for a
    file that is not a journal, a damaged line followed by intact ones, or an intact line
    that is not an operation.
    """
    try:
        data = read_regular(path)
    except FileNotFoundError:
        return []
    except NotRegularFileError as exc:
        raise TableFileError(str(exc)) from None
    except OSError as exc:
        raise TableFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
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


class DurableTable:
    """An :class:`~relaypolicy.iptable.memory.ExpiringIpTable` whose changes are journalled
    beside its snapshot ``persist`` (see the module docstring).

    Made by :meth:`open`. Writers (:meth:`record`, :meth:`remove`, :meth:`clear`) change
    the memory table and queue a journal line; :meth:`sync` makes everything queued so
    far durable; :meth:`checkpoint` writes a snapshot and empties the journal;
    :meth:`close` does a last checkpoint. Readers are the memory table's own methods.
    Safe to use from several threads (the writers never wait for an ``fsync``).
    """

    lookup: Callable[[str], IpEntry | None]
    has_client: Callable[[Request], bool]
    client_login: Callable[[Request], Login | None]

    def __init__(
        self,
        table: ExpiringIpTable,
        persist: str,
        *,
        checkpoint_interval: float = 60.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """Use :meth:`open`: this expects the journal to exist and have been replayed."""
        self.table = table
        self.persist = persist
        self.journal_path = persist + ".journal"
        self.old_path = persist + ".journal.old"
        self.checkpoint_interval = checkpoint_interval
        self.wall_clock = wall_clock
        # The hot path: the memory table's bound methods, no wrapper in between.
        self.lookup = table.lookup
        self.has_client = table.has_client
        self.client_login = table.client_login
        self.checkpoints = 0
        self._lock = threading.Lock()  # a change and its journal line, in the same order
        self._sync_lock = threading.Lock()  # the journal's descriptor: writes, fsync, rotation
        self._checkpoint_lock = threading.Lock()  # one checkpoint at a time
        self._pending: list[bytes] = []
        self._unsynced = False  # written since the last fsync
        self._ops = 0  # since the last checkpoint
        self._snapshot_failed = False
        self._last_checkpoint = time.monotonic()
        self._fd = self._open_journal(self.journal_path)

    # --- start-up ---------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        table: ExpiringIpTable,
        persist: str,
        *,
        checkpoint_interval: float = 60.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> DurableTable:
        """Replay the journal of ``persist`` over ``table`` (which holds its snapshot, as
        :meth:`ExpiringIpTable.load` read it), write a fresh snapshot and start an empty
        journal.

        Raises :class:`TableFileError` for a damaged journal and :class:`OSError` (with a
        one-line message naming the path) when the snapshot cannot be written there: a
        missing or read-only directory is found at start, not at the first save.
        """
        persist = os.fspath(persist)
        journal, old = persist + ".journal", persist + ".journal.old"
        for path in (persist, journal):
            for name in remove_stale_temps(path):
                log.info("removed %s, left by a process killed while writing", name)
        replayed = 0
        for path in (old, journal):
            replayed += _replay(table, path, read_journal(path), wall_clock)
        if replayed:
            log.info("replayed %d change(s) from the journal of %s", replayed, persist)
        try:
            _write_snapshot(table, persist, wall_clock)
            write_atomically(journal, _line(_HEADER), mode=0o600)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(old)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise OSError(f"{persist}: cannot keep the table's state here: {reason}") from None
        return cls(table, persist, checkpoint_interval=checkpoint_interval, wall_clock=wall_clock)

    @staticmethod
    def _open_journal(path: str) -> int:
        fd = os.open(path, _APPEND_FLAGS)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise NotRegularFileError(f"{path}: not a regular file")
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    # --- the memory table's configuration and reads -----------------------------------

    @property
    def ttl(self) -> float:
        return self.table.ttl

    @property
    def clock(self) -> Callable[[], float]:
        return self.table.clock

    @property
    def max_entries(self) -> int | None:
        return self.table.max_entries

    @property
    def ipv6_prefix(self) -> int:
        return self.table.ipv6_prefix

    @property
    def evictions(self) -> int:
        return self.table.evictions

    @property
    def changes(self) -> int:
        return self.table.changes

    def entries(self) -> list[IpEntry]:
        return self.table.entries()

    def expire(self) -> int:
        """Remove expired entries (not journalled: time alone expires them again)."""
        return self.table.expire()

    def __contains__(self, address: object) -> bool:
        return address in self.table

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        return f"DurableTable({self.table!r}, persist={self.persist!r})"

    # --- changes ----------------------------------------------------------------------

    def record(self, address: str, *, user: str | None = None, ttl: float | None = None) -> None:
        """:meth:`ExpiringIpTable.record`, journalled (durable after the next :meth:`sync`)."""
        with self._lock:
            self.table.record(address, user=user, ttl=ttl)
            expires = self.wall_clock() + (self.table.ttl if ttl is None else ttl)
            self._pending.append(_line(("r", address, expires, user)))

    def remove(self, address: str) -> bool:
        """:meth:`ExpiringIpTable.remove`, journalled (durable after the next :meth:`sync`)."""
        with self._lock:
            removed = self.table.remove(address)
            self._pending.append(_line(("d", address)))
        return removed

    def clear(self) -> None:
        """:meth:`ExpiringIpTable.clear`, journalled (durable after the next :meth:`sync`)."""
        with self._lock:
            self.table.clear()
            self._pending.append(_line(("c",)))

    # --- durability -------------------------------------------------------------------

    def sync(self) -> bool:
        """Make every change made so far durable: append it to the journal and ``fsync``.

        Returns ``True``; raises :class:`OSError` when the journal cannot be written (the
        changes stay queued and are written by the next call).
        """
        with self._sync_lock:
            self._write_pending()
            if self._unsynced:
                os.fsync(self._fd)
                self._unsynced = False
        return True

    def _write_pending(self) -> None:
        # With _sync_lock held. The lines leave the queue only once written whole; a
        # failed write is cut back off the file, so it never leaves a damaged line in
        # front of later ones.
        with self._lock:
            data = b"".join(self._pending)
            count = len(self._pending)
        if not data:
            return
        fd = self._fd
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            _write_all(fd, data)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
        with self._lock:
            del self._pending[:count]
            self._ops += count
        self._unsynced = True

    def checkpoint_due(self) -> bool:
        """Whether something changed since the last checkpoint, ``checkpoint_interval`` ago."""
        changed = self._ops or self._pending or self._snapshot_failed
        return bool(changed) and time.monotonic() - self._last_checkpoint >= (
            self.checkpoint_interval
        )

    def checkpoint(self) -> int:
        """Write a snapshot of the table and start an empty journal; the entries written.

        Safe while other threads record: see the module docstring. Raises
        :class:`OSError` when the snapshot cannot be written; the journal then keeps
        every change (``.journal.old`` and ``.journal``) and the next checkpoint retries.
        """
        with self._checkpoint_lock:
            with self._sync_lock:
                try:
                    self._write_pending()
                except OSError as exc:  # they stay queued for the new journal
                    log.error("cannot write the journal %s: %s", self.journal_path, exc)
                with self._lock:
                    rows = _rows(self.table, self.wall_clock)
                    self._ops = 0
                self._rotate()
            try:
                write_entries(self.persist, rows, ipv6_prefix=self.table.ipv6_prefix)
            except OSError:
                self._snapshot_failed = True  # due again at the next sweep
                raise
            self._snapshot_failed = False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.old_path)
            fsync_directory(os.path.dirname(self.persist) or ".")
            self._last_checkpoint = time.monotonic()
            self.checkpoints += 1
            return len(rows)

    def _rotate(self) -> None:
        """Move the journal's lines to ``.journal.old`` and open an empty journal."""
        if os.path.exists(self.old_path):
            # An earlier checkpoint failed: .old still holds changes the snapshot lacks.
            lines = read_regular(self.journal_path).split(b"\n", 1)[1]
            fd = self._open_journal(self.old_path)
            try:
                _write_all(fd, lines)
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            os.rename(self.journal_path, self.old_path)
        write_atomically(self.journal_path, _line(_HEADER), mode=0o600)
        fd = self._open_journal(self.journal_path)
        os.close(self._fd)
        self._fd = fd
        self._unsynced = False

    def close(self) -> int:
        """Checkpoint (a last snapshot, an empty journal) and close the journal; the
        entries written. Raises :class:`OSError` when the snapshot cannot be written:
        the changes are then still in the journal, replayed at the next start."""
        try:
            return self.checkpoint()
        finally:
            with self._sync_lock:
                if self._fd >= 0:
                    os.close(self._fd)
                    self._fd = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _rows(table: ExpiringIpTable, wall_clock: Callable[[], float]) -> list[Row]:
    """The live entries with wall-clock expiry times, as the snapshot stores them."""
    offset = wall_clock() - table.clock()
    return [(e.address, e.expires_at + offset, e.user) for e in table.entries()]


def _write_snapshot(table: ExpiringIpTable, persist: str, wall_clock: Callable[[], float]) -> None:
    write_entries(persist, _rows(table, wall_clock), ipv6_prefix=table.ipv6_prefix)


def _replay(
    table: ExpiringIpTable, path: str, ops: list[list[object]], wall_clock: Callable[[], float]
) -> int:
    """Apply journalled operations to ``table``, each record with what remains of its
    time, never more than the table's ttl; how many were applied."""
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
