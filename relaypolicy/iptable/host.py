"""The POP-before-SMTP table as a long-running server holds it.

``relaypolicy serve``, ``relaypolicy smtpd`` and ``relaypolicy watch`` do the same things
with their table: a Redis replica is started and follows its fleet; expired entries are
swept every few seconds (so memory is given back on a quiet server; lookups never report
an expired entry either way); with ``persist``, every change is journalled
(:class:`~relaypolicy.iptable.durable.DurableTable`), a snapshot is written on the sweep
every ``checkpoint_interval`` and at the end; and a replica sends what it still has
queued when it stops. :class:`TableHost` is that, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from relaypolicy.fleet import ReplicaTable
from relaypolicy.iptable.durable import DurableTable

__all__ = ["EX_IOERR", "TableHost"]

log = logging.getLogger("relaypolicy.table")

EX_IOERR = 74  # sysexits.h: the exit status when the table's state could not be saved


class TableHost:
    """Starts, sweeps, checkpoints and closes ``table`` (``None``: no POP-before-SMTP).

    With ``persist`` (a memory table loaded from that snapshot), :attr:`table` is the
    :class:`~relaypolicy.iptable.durable.DurableTable` around it: use that one, so that
    every change is journalled. Opening it replays the journal and writes a snapshot, so
    an unusable ``persist`` (a missing or read-only directory, a damaged journal) raises
    here, at start: :class:`OSError` or :class:`~relaypolicy.iptable.TableFileError`.
    :attr:`failed` tells, after :meth:`close`, that the state could not be saved.
    """

    def __init__(
        self,
        table: Any,
        *,
        persist: str = "",
        sweep_interval: float = 5.0,
        checkpoint_interval: float = 60.0,
    ) -> None:
        self.persist = persist
        self.durable: DurableTable | None = None
        if table is not None and persist and not isinstance(table, ReplicaTable):
            self.durable = DurableTable.open(
                table, persist, checkpoint_interval=checkpoint_interval
            )
            table = self.durable
        self.table = table
        self.sweep_interval = sweep_interval
        self.failed = False
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
            durable = self.durable
            if durable is not None and durable.checkpoint_due():
                try:
                    await asyncio.to_thread(durable.checkpoint)
                except OSError as exc:
                    log.error("could not write the snapshot %s: %s", self.persist, exc)

    async def sync(self) -> None:
        """Make every change made so far durable (a no-op without ``persist``). Raises
        :class:`OSError` when the journal cannot be written."""
        if self.durable is not None:
            await asyncio.to_thread(self.durable.sync)

    async def close(self) -> None:
        """Stop sweeping, save the state (a last snapshot) and stop a replica. When the
        state cannot be saved the error is logged and :attr:`failed` is set."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self.durable is not None:
            try:
                written = await asyncio.to_thread(self.durable.close)
            except OSError as exc:
                self.failed = True
                log.error(
                    "could not save the table to %s: %s (the journal %s keeps what it holds)",
                    self.persist,
                    exc,
                    self.durable.journal_path,
                )
            else:
                log.info(
                    "saved the POP-before-SMTP table to %s (%d entries)", self.persist, written
                )
        if isinstance(self.table, ReplicaTable):  # sends what is queued, then stops
            await asyncio.to_thread(self.table.close)

    @property
    def exit_status(self) -> int:
        """0, or :data:`EX_IOERR` when the state could not be saved at :meth:`close`."""
        return EX_IOERR if self.failed else 0

    def stats(self) -> dict[str, Any]:
        """``table-entries``, ``pop-ttl`` and a replica's ``fleet-…`` counters."""
        if self.table is None:
            return {}
        stats: dict[str, Any] = {"table-entries": len(self.table), "pop-ttl": self.table.ttl}
        if self.durable is not None:
            stats["table-checkpoints"] = self.durable.checkpoints
        if isinstance(self.table, ReplicaTable):
            stats.update({f"fleet-{key}": value for key, value in self.table.fleet_stats().items()})
        return stats
