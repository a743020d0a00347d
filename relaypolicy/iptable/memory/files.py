"""Saving the memory table to a file and loading it back (:mod:`relaypolicy.iptable.persist`
is the file format; :class:`relaypolicy.iptable.durable.DurableTable` adds the journal)."""

from __future__ import annotations

import time
from collections.abc import Callable
from os import PathLike
from typing import Self

from relaypolicy.iptable.memory.state import _second, _TableState
from relaypolicy.iptable.persist import read_entries, write_entries


class _Snapshots(_TableState):
    """:meth:`save` and :meth:`load`, for :class:`~relaypolicy.iptable.memory.ExpiringIpTable`."""

    __slots__ = ()

    def save(
        self, path: str | PathLike[str], *, wall_clock: Callable[[], float] = time.time
    ) -> int:
        """Write the live entries to ``path`` atomically; how many were written.

        Expiry times are stored as wall-clock time (``wall_clock``, default
        :func:`time.time`), so a restart keeps what has not expired yet. The format is
        described in :mod:`relaypolicy.iptable.persist`.
        """
        with self._lock:
            items = list(self._expiry.items())
            users = dict(self._users)
            now = self._clock()
            offset = wall_clock() - now
        items.sort(key=_second)
        rows = [
            (self._text(key), expires + offset, users.get(key))
            for key, expires in items
            if expires > now
        ]
        write_entries(path, rows, ipv6_prefix=self._ipv6_prefix)
        return len(rows)

    @classmethod
    def load(
        cls,
        path: str | PathLike[str],
        ttl: float = 1800.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        max_entries: int | None = None,
        ipv6_prefix: int = 128,
    ) -> Self:
        """A table holding the entries saved in ``path`` that have not expired yet.

        A missing file gives an empty table. A file that is not a saved table, or is
        damaged, raises :class:`~relaypolicy.iptable.base.TableFileError` naming the path
        and the fault. No entry comes back with more than ``ttl`` seconds left, whatever
        the file says (a wall clock set back, a file edited by hand). IPv6 entries saved
        with a coarser prefix than ``ipv6_prefix`` cannot be split into addresses and are
        dropped; finer ones are grouped. The changes a running server journalled since
        this snapshot are replayed by :class:`relaypolicy.iptable.durable.DurableTable`.
        """
        table = cls(ttl, clock=clock, max_entries=max_entries, ipv6_prefix=ipv6_prefix)
        rows = read_entries(path)
        rows.sort(key=_second)  # so the FIFO takes them in order
        with table._lock:
            now = clock()
            offset = now - wall_clock()
            latest = now + table._ttl
            for address, wall_expiry, user in rows:
                expires = min(wall_expiry + offset, latest)
                if expires <= now:
                    continue
                key = table._saved_key(address)
                if key is not None:
                    table._put(key, expires, user or None, now)
        return table
