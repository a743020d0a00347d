"""The POP-before-SMTP table as a long-running server holds it.

``relaypolicy serve`` and ``relaypolicy smtpd`` do the same things with their table: a
Redis replica is started and follows its fleet; expired entries are swept every few
seconds (so memory is given back on a quiet server; lookups never report an expired
entry either way); at the end the table is saved to ``persist`` and a replica sends what
it still has queued. :class:`TableHost` is that, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from relaypolicy.fleet import ReplicaTable

__all__ = ["TableHost"]

log = logging.getLogger("relaypolicy.table")


class TableHost:
    """Starts, sweeps, saves and closes ``table`` (``None``: no POP-before-SMTP)."""

    def __init__(self, table: Any, *, persist: str = "", sweep_interval: float = 5.0) -> None:
        self.table = table
        self.persist = persist
        self.sweep_interval = sweep_interval
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.table is None:
            return
        if isinstance(self.table, ReplicaTable):  # a shared table: its replica follows Redis
            self.table.start()
        self._sweeper = asyncio.create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            self.table.expire()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        self.save()
        if isinstance(self.table, ReplicaTable):  # sends what is queued, then stops
            await asyncio.to_thread(self.table.close)

    def save(self) -> None:
        if self.table is None or not self.persist:
            return
        try:
            self.table.save(self.persist)
            log.info("saved the POP-before-SMTP table to %s", self.persist)
        except OSError as exc:
            log.error("could not save the table to %s: %s", self.persist, exc)

    def stats(self) -> dict[str, Any]:
        """``table-entries``, ``pop-ttl`` and a replica's ``fleet-…`` counters."""
        if self.table is None:
            return {}
        stats: dict[str, Any] = {"table-entries": len(self.table), "pop-ttl": self.table.ttl}
        if isinstance(self.table, ReplicaTable):
            stats.update({f"fleet-{key}": value for key, value in self.table.fleet_stats().items()})
        return stats
