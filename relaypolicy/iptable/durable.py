"""A table whose every change is on disk before it is acknowledged: snapshot plus journal.

Theory of operation
-------------------
With ``persist`` set, the table's state on disk is the snapshot (``persist`` itself,
:mod:`relaypolicy.iptable.persist`) and the journal beside it (``<persist>.journal``,
:mod:`relaypolicy.iptable.journal`): every change made since the snapshot was written.
:class:`DurableTable` changes the memory table and queues a journal line under one lock,
so the journal's order is the table's; :meth:`DurableTable.sync` appends what is queued
in one write and ``fsync``s it: what ``sync`` returned from is on disk (a login the
watcher recorded, before it saves its log position; an ``add`` of the control socket,
before it answers).

At start (:meth:`DurableTable.open`) the journal is replayed over the snapshot; since
replaying is idempotent, a crash at any point of a checkpoint loses nothing.

One process at a time: :meth:`DurableTable.open` takes an exclusive ``flock`` on
``<persist>.lock`` (holding the owner's pid, for the message) and keeps it until
:meth:`DurableTable.close`. A second process given the same ``persist`` (two services
started from copies of one configuration) is refused at start, naming the path and the
owner; without the lock each would truncate the other's journal at its checkpoints and
logins acknowledged by one would be lost. The kernel drops the lock when its process dies,
so a crash never leaves a stale lock behind.

A checkpoint (:meth:`DurableTable.checkpoint`: on the sweep every ``checkpoint_interval``
when something changed, and at stop) writes a new snapshot and starts an empty journal.
The journal is renamed to ``<persist>.journal.old`` (or appended to it, when an earlier
checkpoint failed and left it) and a new journal takes new changes at once. Then the
entries are copied (a change made meanwhile is in the new journal and perhaps in the
copy too: replaying it changes nothing), the snapshot is written atomically, and
``.journal.old`` is deleted. The table's writers never wait for the snapshot, only for
the memory table's own copy of its dicts. Start-up replays ``.journal.old`` first, then
``.journal``.

The table's readers (``lookup``, ``has_client``, ``client_login``) are the memory table's
own bound methods: the policy's hot path never touches the journal.

Here: the table, its writers, ``sync`` and the checkpoint. Taking the lock and the
start-up's replay and first snapshot are in :mod:`relaypolicy.iptable.startup`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from relaypolicy._files import (
    NotRegularFileError,
    fsync_directory,
    read_regular,
    write_atomically,
)
from relaypolicy.iptable.base import IpEntry, Login
from relaypolicy.iptable.journal import (
    APPEND_FLAGS,
    HEADER_LINE,
    journal_line,
    replay_journals,
    write_all,
)
from relaypolicy.iptable.persist import write_entries
from relaypolicy.iptable.startup import lock_persist, snapshot_rows, start_journal

if TYPE_CHECKING:
    from relaypolicy.iptable.memory import ExpiringIpTable
    from relaypolicy.model import Request

__all__ = ["DurableTable", "replay_journals"]

log = logging.getLogger("relaypolicy.table")


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
        lock_fd: int = -1,
    ) -> None:
        """Use :meth:`open`: this expects the journal to exist and have been replayed,
        and ``persist``'s lock to be held on ``lock_fd``."""
        self.table = table
        self._lock_fd = lock_fd
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
        # Lines ever queued, written, and known durable: a sync whose lines another
        # one's fsync already covered returns at once (group commit).
        self._queued = self._written = self._durable = 0
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
        one-line message naming the path) when the snapshot cannot be written there (a
        missing or read-only directory is found at start, not at the first save) or when
        another process holds ``persist`` (see the module docstring).
        """
        persist = os.fspath(persist)
        lock_fd = lock_persist(persist)
        try:
            start_journal(table, persist, wall_clock)
            return cls(
                table,
                persist,
                checkpoint_interval=checkpoint_interval,
                wall_clock=wall_clock,
                lock_fd=lock_fd,
            )
        except BaseException:
            os.close(lock_fd)  # the lock goes with its descriptor
            raise

    @staticmethod
    def _open_journal(path: str) -> int:
        fd = os.open(path, APPEND_FLAGS)
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
            self._pending.append(journal_line(("r", address, expires, user)))
            self._queued += 1

    def remove(self, address: str) -> bool:
        """:meth:`ExpiringIpTable.remove`, journalled (durable after the next :meth:`sync`)."""
        with self._lock:
            removed = self.table.remove(address)
            self._pending.append(journal_line(("d", address)))
            self._queued += 1
        return removed

    def clear(self) -> None:
        """:meth:`ExpiringIpTable.clear`, journalled (durable after the next :meth:`sync`)."""
        with self._lock:
            self.table.clear()
            self._pending.append(journal_line(("c",)))
            self._queued += 1

    # --- durability -------------------------------------------------------------------

    def sync(self) -> bool:
        """Make every change made so far durable: append it to the journal and ``fsync``.

        Returns ``True``; raises :class:`OSError` when the journal cannot be written (the
        changes stay queued and are written by the next call). Callers that arrive while
        an ``fsync`` runs share the next one: whoever goes first writes and syncs what
        all of them queued, and the others find their changes durable already.
        """
        with self._lock:
            target = self._queued
        with self._sync_lock:
            if self._durable >= target:
                return True
            self._write_pending()
            if self._unsynced:
                os.fsync(self._fd)
                self._unsynced = False
            self._durable = self._written
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
            write_all(fd, data)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
        with self._lock:
            del self._pending[:count]
            self._ops += count
        self._written += count
        self._unsynced = True

    def start(self) -> None:
        """Nothing to start: :meth:`open` replayed the journal and wrote a snapshot."""

    def wait_ready(self, timeout: float) -> bool:
        """Ready when opened: ``True``."""
        return True

    def maintain(self) -> None:
        """Remove expired entries; write a snapshot when one is due (see
        :meth:`checkpoint_due`). A snapshot that cannot be written is logged and retried
        at the next one: the journal keeps every change meanwhile."""
        self.expire()
        if self.checkpoint_due():
            try:
                self.checkpoint()
            except OSError as exc:
                log.error("could not write the snapshot %s: %s", self.persist, exc)

    def stats(self) -> dict[str, object]:
        """``table-entries``, ``pop-ttl`` and ``table-checkpoints``."""
        return {**self.table.stats(), "table-checkpoints": self.checkpoints}

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
                self._rotate()
            # Copied after the rotation: a change made since is in the new journal and
            # maybe in this snapshot too, which replaying makes no difference to. The
            # writers wait only for the memory table's own copy of its dicts.
            rows = snapshot_rows(self.table, self.wall_clock)
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
            try:
                lines = read_regular(self.journal_path).split(b"\n", 1)[1]
            except FileNotFoundError:  # that one failed before the new journal existed
                lines = b""
            fd = self._open_journal(self.old_path)
            try:
                write_all(fd, lines)
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            os.rename(self.journal_path, self.old_path)
        write_atomically(self.journal_path, HEADER_LINE, mode=0o600)
        fd = self._open_journal(self.journal_path)
        if self._unsynced:  # what was written is acknowledged once durable: make it so
            os.fsync(self._fd)
            self._durable = self._written
        os.close(self._fd)
        self._fd = fd
        self._unsynced = False
        self._ops = 0

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
                if self._lock_fd >= 0:
                    os.close(self._lock_fd)  # releases persist for the next process
                    self._lock_fd = -1
