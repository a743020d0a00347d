"""The POP-before-SMTP table as a long-running command holds it.

``serve``, ``smtpd`` and ``watch`` do the same things with their table, whatever it is (a
memory table, a journalled one with ``persist``, a fleet replica: each a
:class:`~relaypolicy.iptable.base.ManagedTable`): start it, maintain it every few seconds
(expire entries, write a snapshot when due), make changes durable before they are
acknowledged, close it at the end and say whether its state was saved. Every call that
may block runs in a worker thread, never on the event loop. :class:`TableHost` is that,
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from relaypolicy.iptable.base import ManagedTable

__all__ = ["EX_IOERR", "TableHost"]

log = logging.getLogger("relaypolicy.table")

EX_IOERR = 74  # sysexits.h: the exit status when the table's state could not be saved


class TableHost:
    """Starts, maintains, syncs and closes ``table`` (``None``: no POP-before-SMTP).

    :attr:`failed` tells, after :meth:`close`, that the state could not be saved;
    :attr:`exit_status` is then :data:`EX_IOERR`.
    """

    def __init__(self, table: ManagedTable | None, *, sweep_interval: float = 5.0) -> None:
        self.table = table
        self.sweep_interval = sweep_interval
        self.failed = False
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.table is None:
            return
        await asyncio.to_thread(self.table.start)
        self._sweeper = asyncio.create_task(self._sweep(self.table))

    async def _sweep(self, table: ManagedTable) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            await asyncio.to_thread(table.maintain)

    async def sync(self) -> None:
        """Make every change made so far durable. Raises :class:`OSError` when it cannot
        be written."""
        if self.table is not None:
            await asyncio.to_thread(self.table.sync)

    async def close(self) -> None:
        """Stop maintaining, then close the table (a last snapshot; a replica sends what
        is queued). When the state cannot be saved the error is logged and :attr:`failed`
        is set."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self.table is None:
            return
        try:
            await asyncio.to_thread(self.table.close)
        except OSError as exc:
            self.failed = True
            # A journalled table keeps every change in its journal, replayed at next start.
            log.error("could not save the table: %s (its journal keeps the changes)", exc)

    @property
    def exit_status(self) -> int:
        """0, or :data:`EX_IOERR` when the state could not be saved at :meth:`close`."""
        return EX_IOERR if self.failed else 0

    def stats(self) -> dict[str, object]:
        """The table's counters (``table-entries``, ``pop-ttl``, ...); empty without one."""
        return {} if self.table is None else self.table.stats()
