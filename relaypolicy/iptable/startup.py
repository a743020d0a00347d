"""Opening the state of a :class:`~relaypolicy.iptable.durable.DurableTable`.

Part of :mod:`relaypolicy.iptable.durable` (its docstring is the theory of operation):
what :meth:`DurableTable.open <relaypolicy.iptable.durable.DurableTable.open>` does
before the table takes changes. :func:`lock_persist` takes ``<persist>.lock`` (one
process at a time); :func:`start_journal` removes what a killed process left, replays
``.journal.old`` and ``.journal`` over the snapshot, writes a fresh snapshot and an empty
journal. :func:`snapshot_rows` is what a snapshot stores, here and at each checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from relaypolicy._files import (
    LockedError,
    lock_exclusively,
    remove_stale_temps,
    write_atomically,
)
from relaypolicy.iptable.journal import HEADER_LINE, replay_journals
from relaypolicy.iptable.persist import Row, write_entries

if TYPE_CHECKING:
    from relaypolicy.iptable.memory import ExpiringIpTable

__all__ = ["lock_persist", "snapshot_rows", "start_journal"]

log = logging.getLogger("relaypolicy.table")


def lock_persist(persist: str) -> int:
    """Take ``<persist>.lock`` for this process; its descriptor. Raises :class:`OSError`
    naming the path (and the owner's pid, when it wrote one) when another process has it."""
    try:
        return lock_exclusively(persist + ".lock")
    except LockedError as exc:
        by = f" (pid {exc.owner})" if exc.owner else ""
        raise OSError(
            f"{persist}: in use by another relaypolicy process{by}: give each process its "
            "own pop_before_smtp.persist, or share the table through Redis (state)"
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OSError(f"{persist}: cannot keep the table's state here: {reason}") from None


def start_journal(table: ExpiringIpTable, persist: str, wall_clock: Callable[[], float]) -> None:
    """With ``persist``'s lock held: remove the temporaries a killed process left, replay
    the journals over ``table`` (which holds the snapshot), write a fresh snapshot and an
    empty journal, and delete ``.journal.old``.

    Raises :class:`TableFileError` for a damaged journal and :class:`OSError` (naming the
    path) when the snapshot cannot be written there.
    """
    journal, old = persist + ".journal", persist + ".journal.old"
    for path in (persist, journal):
        for name in remove_stale_temps(path):
            log.info("removed %s, left by a process killed while writing", name)
    replayed = replay_journals(table, persist, wall_clock)
    if replayed:
        log.info("replayed %d change(s) from the journal of %s", replayed, persist)
    try:
        _write_snapshot(table, persist, wall_clock)
        write_atomically(journal, HEADER_LINE, mode=0o600)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(old)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OSError(f"{persist}: cannot keep the table's state here: {reason}") from None


def snapshot_rows(table: ExpiringIpTable, wall_clock: Callable[[], float]) -> list[Row]:
    """The live entries with wall-clock expiry times, as the snapshot stores them."""
    offset = wall_clock() - table.clock()
    return [(e.address, e.expires_at + offset, e.user) for e in table.entries()]


def _write_snapshot(table: ExpiringIpTable, persist: str, wall_clock: Callable[[], float]) -> None:
    write_entries(persist, snapshot_rows(table, wall_clock), ipv6_prefix=table.ipv6_prefix)
