"""The watcher of ``[watch]`` as a task of a long-running command.

:class:`WatchTask` runs a :class:`~relaypolicy.watch.runner.LoginWatch` on the command's
own table, through :class:`LoopTable`: the watcher reads the log in a worker thread, and
every write is made on the event loop, where the policy reads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import TypeVar

from relaypolicy.config.metrics import MetricsSettings
from relaypolicy.daemon.metrics import start_metrics
from relaypolicy.daemon.table import TableHost
from relaypolicy.iptable.base import IpEntry, ManagedTable
from relaypolicy.watch.runner import LoginWatch
from relaypolicy.watch.settings import WatchSettings

__all__ = ["LoopTable", "WatchTask", "watch_alone", "watch_counters"]

log = logging.getLogger("relaypolicy.watch")

T = TypeVar("T")


class LoopTable:
    """A table that lives on an event loop, written from the watcher's worker thread.

    The policy service reads its table on the loop thread; the watcher polls the log in
    a worker thread (:func:`asyncio.to_thread`). Every call here is run on the loop and
    waited for, so the table is only ever touched by one thread and needs no lock on the
    decision path.
    """

    def __init__(self, table: ManagedTable, loop: asyncio.AbstractEventLoop) -> None:
        self.table = table
        self.loop = loop
        self.ttl = table.ttl

    def _on_loop(self, call: Callable[[], T]) -> T:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(call())
            except BaseException as exc:  # handed back to the calling thread
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result()

    def record(self, address: str, *, user: str | None = None, ttl: float | None = None) -> None:
        self._on_loop(lambda: self.table.record(address, user=user, ttl=ttl))

    def expire(self) -> int:
        return self._on_loop(self.table.expire)

    def sync(self) -> bool:
        """The table's ``sync``, called from this (worker) thread: every table is safe to
        sync from any thread, and an ``fsync`` then never stalls the loop."""
        return self.table.sync()

    @property
    def changes(self) -> int:
        """The table's change count (an int read: safe from any thread)."""
        return self.table.changes

    def entries(self) -> list[IpEntry]:
        return self._on_loop(self.table.entries)


class WatchTask:
    """A :class:`LoginWatch` run as a task of a server's event loop, on the server's own
    table (through :class:`LoopTable`): what ``serve`` and ``smtpd`` run for ``[watch]``.
    A watcher that fails is logged and started again after ``retry`` seconds: it never
    takes the server down."""

    def __init__(self, *, retry: float = 5.0) -> None:
        self.watch: LoginWatch | None = None
        self.retry = retry
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, settings: WatchSettings | None, table: ManagedTable | None) -> None:
        if settings is None or table is None:
            return
        self.watch = LoginWatch(settings, LoopTable(table, asyncio.get_running_loop()))
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(self.watch, self._stop))

    async def _run(self, watch: LoginWatch, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await watch.run(stop)
            except Exception:
                log.exception("watch: the watcher failed; retrying in %g s", self.retry)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.retry)

    async def stop(self) -> None:
        """Stop the watcher: its position is saved and its exported maps emptied."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        self.watch = None

    async def restart(self, settings: WatchSettings | None, table: ManagedTable | None) -> None:
        await self.stop()
        try:
            self.start(settings, table)
        except (OSError, ValueError) as exc:
            log.error("watch: cannot start with the reloaded configuration: %s", exc)
        else:
            log.info("watch: restarted with the reloaded configuration")

    def counters(self) -> dict[str, int]:
        """The watcher's counters, named ``watch-…``; empty when none runs."""
        return {} if self.watch is None else watch_counters(self.watch)


def watch_counters(watch: LoginWatch) -> dict[str, int]:
    """``watch``'s counters as the stats name them (``watch-lines``, ``watch-logins``...)."""
    return {f"watch-{key}": value for key, value in watch.counters().items()}


async def watch_alone(
    watch: LoginWatch, host: TableHost, *, metrics: MetricsSettings | None = None
) -> None:
    """``relaypolicy watch``: run ``watch`` until SIGTERM or SIGINT, with ``host``'s table
    started before and closed after (its exit status is ``host.exit_status``), and with
    ``metrics`` the table's and the watcher's counters served as ``/metrics``. Raises
    :class:`OSError` when the metrics address cannot be bound.

    SIGHUP is logged and ignored: its default would end the process without emptying the
    exported maps, whose entries then never expire (an open relay for whoever gets those
    addresses next).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(
        signal.SIGHUP,
        lambda: log.warning("watch: SIGHUP ignored (no reload; restart to apply changes)"),
    )
    await host.start()
    server = None
    try:
        if metrics is not None:
            server = start_metrics(metrics, lambda: {**host.stats(), **watch_counters(watch)}, loop)
            log.info("watch: metrics on %s", server.where)
        await watch.run(stop)
    finally:
        if server is not None:
            await asyncio.to_thread(server.close)
        await host.close()
