"""The running watcher built from the ``[watch]`` settings (:mod:`relaypolicy.watch.settings`).

``relaypolicy serve`` runs a :class:`LoginWatch` inside the service, on the table its
policy reads; ``relaypolicy watch`` runs one alone (:mod:`relaypolicy.cli.watch`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import itertools
import logging
import time
from typing import TYPE_CHECKING, Any

from relaypolicy.control import ask, ask_many
from relaypolicy.watch.follow import LogFollower
from relaypolicy.watch.parsers import DovecotParser, DovecotSessions
from relaypolicy.watch.settings import ExportSettings, WatchSettings, parse_watch
from relaypolicy.watch.watcher import LoginTable, Watcher

if TYPE_CHECKING:
    from relaypolicy.iptable.base import IpEntry

__all__ = [
    "ControlSocketTable",
    "ExportSettings",
    "LoginWatch",
    "LoopTable",
    "WatchSettings",
    "WatchTask",
    "parse_watch",
]

log = logging.getLogger("relaypolicy.watch")


BATCH = 500  # logins sent on one control connection before reading the replies


class ControlSocketTable:
    """The table of a running ``relaypolicy serve``, reached through its control socket.

    What ``relaypolicy watch --control-socket`` feeds: each login becomes an ``add`` with
    the login's remaining time; expiry is the service's own business. Calls block (the
    watcher makes them from a worker thread). Logins are queued and sent by :meth:`sync`
    (the end of each of the watcher's rounds) or :meth:`expire`, many on one connection
    (:func:`~relaypolicy.control.ask_many`): the service answers an ``add`` only once it
    is durable there, and a batch shares its fsyncs. :meth:`sync` says whether every
    login was answered, so the watcher saves its log position only then. While the
    service cannot be reached (a restart), logins wait in a bounded queue
    (``max_pending``; the oldest are dropped first and counted in ``dropped``, and read
    again from the log after a restart of the watcher, whose position has not moved) and
    are sent again at the next round, with what remains of their time: a login is never
    given more time than it had.
    """

    def __init__(self, path: str, *, timeout: float = 10.0, max_pending: int = 100_000) -> None:
        self.path = path
        self.timeout = timeout
        self.max_pending = max_pending
        self.dropped = 0
        self._pending: collections.deque[tuple[str, str | None, float]] = collections.deque()
        self._failing = False
        stats = self._ask({"command": "stats"}).get("stats", {})
        if "pop-ttl" not in stats:
            raise OSError(f"{self.path}: the service has no POP-before-SMTP table")
        self.ttl = float(stats["pop-ttl"])

    def _ask(self, message: dict[str, Any]) -> dict[str, Any]:
        reply = ask(self.path, message, timeout=self.timeout)
        if not reply.get("ok"):
            raise ValueError(str(reply.get("error", "refused")))
        return reply

    def record(self, address: str, *, user: str | None = None, ttl: float | None = None) -> None:
        deadline = time.monotonic() + (self.ttl if ttl is None else ttl)
        self._pending.append((address, user, deadline))
        while len(self._pending) > self.max_pending:
            self._pending.popleft()
            self.dropped += 1
        if len(self._pending) >= BATCH:
            self._flush()  # else at the end of the watcher's round: see sync()

    def _flush(self) -> None:
        """Send the waiting logins, up to :data:`BATCH` on one connection at a time (the
        service answers each once it is durable, and a batch shares its fsyncs)."""
        while self._pending:
            now = time.monotonic()
            while self._pending and self._pending[0][2] <= now:
                self._pending.popleft()  # its time ran out while it waited
            batch = list(itertools.islice(self._pending, BATCH))
            messages: list[dict[str, Any]] = []
            for address, user, deadline in batch:
                message: dict[str, Any] = {"command": "add", "address": address}
                message["ttl"] = max(deadline - now, 0.001)
                if user is not None:
                    message["user"] = user
                messages.append(message)
            if not messages:
                break
            try:
                replies = ask_many(self.path, messages, timeout=self.timeout)
            except OSError as exc:
                replies, problem = [], str(exc)
            else:
                problem = "the connection ended before every login was answered"
            answered = 0
            for (address, _, _), reply in zip(batch, replies, strict=False):
                if reply.get("retry"):  # taken, but not durable there: not acknowledged
                    problem = str(reply.get("error"))
                    break
                if not reply.get("ok"):  # the service refused this one: say so, go on
                    error = reply.get("error", "refused")
                    log.warning("watch: %s refused %r: %s", self.path, address, error)
                self._pending.popleft()
                answered += 1
            if answered < len(batch):
                if not self._failing:
                    log.error(
                        "watch: %s did not take every login, keeping them: %s", self.path, problem
                    )
                self._failing = True
                return
        if self._failing:
            log.info("watch: %s reachable again, logins sent", self.path)
            self._failing = False

    @property
    def pending(self) -> int:
        return len(self._pending)

    def sync(self) -> bool:
        """Send what is waiting; whether the service has acknowledged every login."""
        self._flush()
        return not self._pending

    def expire(self) -> int:
        """Sends what is waiting; the service expires its own entries (returns 0)."""
        self._flush()
        return 0

    def entries(self) -> list[IpEntry]:
        from relaypolicy.iptable.base import IpEntry

        try:
            listed = self._ask({"command": "table"}).get("entries", [])
        except (OSError, ValueError) as exc:  # exported maps fail closed: empty
            log.error("watch: cannot list the table of %s: %s", self.path, exc)
            return []
        now = time.monotonic()
        return [
            IpEntry(item["address"], now + float(item["expires_in"]), item.get("user"))
            for item in listed
        ]


class LoopTable:
    """A table that lives on an event loop, written from the watcher's worker thread.

    The policy service reads its table on the loop thread; the watcher polls the log in
    a worker thread (:func:`asyncio.to_thread`). Every call here is run on the loop and
    waited for, so the table is only ever touched by one thread and needs no lock on the
    decision path.
    """

    def __init__(self, table: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.table = table
        self.loop = loop
        self.ttl = table.ttl

    def _on_loop(self, call: Any) -> Any:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

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
        return int(self._on_loop(self.table.expire))

    def sync(self) -> bool:
        """The table's ``sync``, called from this (worker) thread: a
        :class:`~relaypolicy.iptable.durable.DurableTable` is safe to sync from any
        thread, and its ``fsync`` then never stalls the loop. ``True`` without one."""
        sync = getattr(self.table, "sync", None)
        return True if sync is None else bool(sync())

    @property
    def changes(self) -> int | None:
        """The table's change count (an int read: safe from any thread)."""
        return getattr(self.table, "changes", None)

    def entries(self) -> list[IpEntry]:
        return list(self._on_loop(self.table.entries))


class LoginWatch:
    """A follower, a parser, a watcher and its exporters, built from :class:`WatchSettings`."""

    def __init__(self, settings: WatchSettings, table: LoginTable) -> None:
        self.settings = settings
        self.table = table
        self.parser = settings.parser()
        sessions = None
        if settings.sessions and isinstance(self.parser, DovecotParser):
            sessions = DovecotSessions(programs=self.parser.programs, framing=self.parser.framing)
        self.watcher = Watcher(
            table, self.parser, sessions=sessions, max_sessions=settings.max_sessions
        )
        self.follower = self._new_follower()
        self.exporters = [export.exporter() for export in settings.exports]

    def _new_follower(self) -> LogFollower:
        settings = self.settings
        follower = LogFollower(
            settings.log, state_path=settings.position or None, start_at_end=settings.start_at_end
        )
        self.watcher.follower = follower
        return follower

    def counters(self) -> dict[str, int]:
        """What the control socket's ``stats`` shows under ``watch-…``."""
        counters = dict(self.watcher.counters)
        follower = self.follower.counters
        for key in ("rotations", "truncations", "undecodable"):
            counters[key] = follower.get(key, 0)
        counters["export-writes"] = sum(exporter.writes for exporter in self.exporters)
        counters["export-errors"] = sum(exporter.errors for exporter in self.exporters)
        return counters

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the log until ``stop`` is set; the follower is closed and the exported
        maps emptied when it returns. The position was saved after each round whose
        logins were durable; a run after a failed one starts a new follower from it, so
        lines read but not made durable are read again."""
        log.info("watch: following %s (%s)", self.settings.log, self.settings.format)
        if self.follower.closed:
            self.follower = self._new_follower()
        try:
            await self.watcher.run(
                self.follower,
                stop=stop,
                interval=self.settings.interval,
                exporters=self.exporters,
            )
        finally:
            self.follower.close()


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

    def start(self, settings: WatchSettings | None, table: Any) -> None:
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

    async def restart(self, settings: WatchSettings | None, table: Any) -> None:
        await self.stop()
        try:
            self.start(settings, table)
        except (OSError, ValueError) as exc:
            log.error("watch: cannot start with the reloaded configuration: %s", exc)
        else:
            log.info("watch: restarted with the reloaded configuration")

    def counters(self) -> dict[str, int]:
        """The watcher's counters, named ``watch-…``; empty when none runs."""
        if self.watch is None:
            return {}
        return {f"watch-{key}": value for key, value in self.watch.counters().items()}
