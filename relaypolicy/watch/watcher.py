"""The watcher: log lines in, table entries out, for what remains of each login's time.

:class:`Watcher` parses lines (from a :class:`~relaypolicy.watch.follow.LogFollower`, or
any iterable) and records the logins in a table; :meth:`Watcher.run` follows a log until
told to stop, sweeping expired entries once a second whether or not lines arrive, and
keeping exported maps (:mod:`relaypolicy.watch.export`) in step. With Dovecot's session
lines it can hold an address while its session is open (see :class:`Watcher`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from relaypolicy.watch.follow import LogFollower, follow
from relaypolicy.watch.parsers import LoginEvent, LoginParser

if TYPE_CHECKING:
    from relaypolicy.iptable.base import IpEntry
    from relaypolicy.watch.export import Exporter

__all__ = [
    "LoginTable",
    "SessionEndLike",
    "SessionLineReader",
    "Watcher",
]

log = logging.getLogger("relaypolicy.watch")


class SessionEndLike(Protocol):
    """What the watcher reads of the end of a session (a ``SessionEnd`` has it)."""

    @property
    def time(self) -> float: ...
    @property
    def session(self) -> str: ...


class SessionLineReader(Protocol):
    """Session ids in a server's log (:class:`~relaypolicy.watch.parsers.DovecotSessions`):
    ``opened`` reads the id of a line the parser took for a login, ``closed`` the end
    of a session from any other line."""

    def opened(self, line: str) -> str | None: ...
    def closed(self, line: str) -> SessionEndLike | None: ...


class _Hold:
    """An address with open sessions: how many, the latest login name, and when its
    entry is next renewed (wall clock)."""

    __slots__ = ("count", "renew_at", "user")

    def __init__(self, user: str, renew_at: float) -> None:
        self.count = 1
        self.user = user
        self.renew_at = renew_at


class LoginTable(Protocol):
    """What the watcher needs of a table (:class:`~relaypolicy.iptable.ExpiringIpTable`)."""

    def record(
        self, address: str, *, user: str | None = None, ttl: float | None = None
    ) -> None: ...
    def expire(self) -> int: ...
    def entries(self) -> list[IpEntry]: ...

    # Optional: ``changes``, a count that grows whenever an entry changes
    # (:attr:`ExpiringIpTable.changes`); without it exported maps are refreshed after
    # every sweep. ``sync()``, which makes what was recorded durable and returns whether
    # it is (:meth:`DurableTable.sync <relaypolicy.iptable.durable.DurableTable.sync>`);
    # without it a table is taken to keep what it records (it lives in memory, or in
    # Redis through a replica's queue).


class Watcher:
    """Records the logins of log lines in a table, each for what remains of its time.

    A login at time ``t`` (wall-clock, from the line) read at ``wall_clock()`` gets
    ``ttl - (now - t)`` seconds: an old one only its remaining time, an expired one none
    (counted in ``stale``). A login dated in the future is taken as happening now (beyond
    ``future_skew`` seconds it is counted in ``future``: a clock or a year is wrong), so
    no entry lasts longer than ``ttl`` (default: the table's). Counters: ``lines``,
    ``logins``, ``stale``, ``future``, ``expired`` (removed by sweeps) and
    ``malformed``: overlong or unfinished lines from the follower, lines the parser
    refused (its own ``malformed`` count, when it keeps one), and events whose address
    the table refused.

    Sessions (optional). With ``sessions`` (a :class:`SessionLineReader`, e.g.
    :class:`~relaypolicy.watch.parsers.DovecotSessions`), a login that names its session
    holds its address: while the address has an open session its entry is renewed to a
    full ``ttl`` (at each :meth:`sweep` once half of it has passed), and when its last
    session closes the entry gets ``ttl`` from the time of the closing line. A client
    that keeps an IMAP connection for hours (IDLE, Thunderbird's cache) keeps its
    allowance; one that logs out has it for ``ttl`` more, as with POP3. The open
    sessions are bounded: at most ``max_sessions`` (the oldest is dropped to make room)
    and none older than ``max_session_age`` seconds by its login time (a session whose
    end was never logged, e.g. a killed process, holds no longer than that). A dropped
    session stops renewing its address, whose entry then runs out within ``ttl``.
    Sessions live in memory: after a restart, sessions opened before the saved position
    are not known, and their addresses keep what their login gave them. Counters:
    ``sessions`` (open now), ``sessions_dropped``.
    """

    def __init__(
        self,
        table: LoginTable,
        parser: LoginParser,
        *,
        ttl: float | None = None,
        wall_clock: Callable[[], float] = time.time,
        future_skew: float = 60.0,
        sessions: SessionLineReader | None = None,
        max_sessions: int = 65536,
        max_session_age: float = 86400.0,
    ) -> None:
        if ttl is None:
            ttl = getattr(table, "ttl", None)
            if ttl is None:
                raise TypeError("ttl: the table has no ttl attribute; pass ttl=")
        if not (0 < ttl < math.inf):
            raise ValueError(f"ttl: must be positive and finite, not {ttl!r}")
        if max_sessions < 1:
            raise ValueError(f"max_sessions: must be positive, not {max_sessions!r}")
        if not (0 < max_session_age < math.inf):
            raise ValueError(
                f"max_session_age: must be positive and finite, not {max_session_age!r}"
            )
        self.table = table
        self.parser = parser
        self.ttl = float(ttl)
        self.wall_clock = wall_clock
        self.future_skew = future_skew
        self.follower: LogFollower | None = None  # set by run(), for the counters
        self.lines = self.logins = self.stale = self.future = self.expired = 0
        self._refused = 0
        self.sessions = sessions
        self.max_sessions = max_sessions
        self.max_session_age = float(max_session_age)
        self.sessions_dropped = 0
        # session id -> (address, login time); insertion order is roughly login order.
        self._open: dict[str, tuple[str, float]] = {}
        self._held: dict[str, _Hold] = {}  # address -> its open sessions

    @property
    def malformed(self) -> int:
        count = self._refused
        parsed = getattr(self.parser, "malformed", 0)
        if isinstance(parsed, int):
            count += parsed
        if self.follower is not None:
            count += self.follower.overlong + self.follower.incomplete
        return count

    @property
    def counters(self) -> dict[str, int]:
        counters = {
            "lines": self.lines,
            "logins": self.logins,
            "stale": self.stale,
            "future": self.future,
            "expired": self.expired,
            "malformed": self.malformed,
        }
        if self.sessions is not None:
            counters["sessions"] = len(self._open)
            counters["sessions_dropped"] = self.sessions_dropped
        return counters

    def held(self) -> dict[str, int]:
        """The addresses held by open sessions, with how many each has."""
        return {address: hold.count for address, hold in self._held.items()}

    def feed(self, lines: Iterable[str]) -> int:
        """Parse ``lines`` (whole lines, without their newlines) and record their logins;
        how many were recorded. Without sessions, a parser that has ``parse_block`` reads
        them all at once (the same events, much faster: see ``docs/watcher.md``)."""
        now = self.wall_clock()
        sessions = self.sessions
        parse_block = getattr(self.parser, "parse_block", None)
        if sessions is None and parse_block is not None:
            lines = lines if isinstance(lines, list) else list(lines)
            self.lines += len(lines)
            recorded = 0
            for event in parse_block("\n".join(lines)):
                recorded += self._record(event, now)
            self.logins += recorded
            return recorded
        parse = self.parser.parse
        closed = None if sessions is None else sessions.closed
        recorded = 0
        for line in lines:
            self.lines += 1
            event = parse(line)
            if event is None:
                if closed is not None:
                    end = closed(line)
                    if end is not None:
                        self._close(end, now)
                continue
            session = None
            age = now - event.time
            if sessions is not None and math.isfinite(age) and age < self.max_session_age:
                session = sessions.opened(line)
            if session is not None:
                # Held from now on; an old login (read late) gets its full ttl at the
                # next sweep only if its end was not read by then.
                self._hold(session, event.address, event.user, min(event.time, now))
                if age >= self.ttl:  # its time is over, but it is still open
                    recorded += 1
                    continue
            if self._record(event, now):
                recorded += 1
            elif session is not None:
                self._release(session)
        self.logins += recorded
        return recorded

    def _record(self, event: LoginEvent, now: float) -> bool:
        """Record one login with what remains of its time; whether it was."""
        when = event.time
        if not math.isfinite(when):
            self._refused += 1
            return False
        age = now - when
        if age < -self.future_skew:
            self.future += 1
        remaining = self.ttl - age if age > 0 else self.ttl
        if remaining <= 0:
            self.stale += 1
            return False
        try:
            self.table.record(event.address, user=event.user or None, ttl=remaining)
        except (ValueError, TypeError) as exc:
            self._refused += 1
            log.warning("watcher: the table refused %r: %s", event.address, exc)
            return False
        return True

    def sync(self) -> bool:
        """Make what was recorded durable (the table's ``sync``, when it has one);
        whether it is. Only then may the log position move past the lines read."""
        sync = getattr(self.table, "sync", None)
        if sync is None:
            return True
        try:
            return bool(sync())
        except OSError as exc:
            log.error("watcher: cannot make the logins durable, keeping the position: %s", exc)
            return False

    def sweep(self) -> int:
        """Renew the addresses held by open sessions, then remove the expired entries
        from the table; how many were removed."""
        if self._open:
            self._renew(self.wall_clock())
        removed = self.table.expire()
        self.expired += removed
        return removed

    # --- sessions (see the class docstring) -------------------------------------------

    def _hold(self, session: str, address: str, user: str, when: float) -> None:
        self._release(session)  # an id seen again replaces its session
        if len(self._open) >= self.max_sessions:
            self._release(next(iter(self._open)))
            self.sessions_dropped += 1
        self._open[session] = (address, when)
        hold = self._held.get(address)
        if hold is None:
            # Renewed once half of what the login line gave has passed.
            self._held[address] = _Hold(user, when + self.ttl / 2)
        else:
            hold.count += 1
            hold.user = user

    def _release(self, session: str) -> tuple[str, _Hold] | None:
        """Forget an open session; its address and hold if that was its last one."""
        found = self._open.pop(session, None)
        if found is None:
            return None
        address = found[0]
        hold = self._held[address]
        hold.count -= 1
        if hold.count:
            return None
        del self._held[address]
        return address, hold

    def _close(self, end: SessionEndLike, now: float) -> None:
        released = self._release(end.session)
        if released is None:
            return  # not a session we saw open, or not the address's last one
        address, hold = released
        when = end.time
        age = now - when if math.isfinite(when) else 0.0
        remaining = self.ttl - age if age > 0 else self.ttl
        if remaining <= 0:
            return  # its entry runs out by itself, within ttl of its last renewal
        try:
            self.table.record(address, user=hold.user or None, ttl=remaining)
        except (ValueError, TypeError) as exc:
            log.warning("watcher: the table refused %r: %s", address, exc)

    def _renew(self, now: float) -> None:
        cutoff = now - self.max_session_age
        for session, (_, when) in list(self._open.items()):
            if when >= cutoff:
                break  # the rest are younger (the log is in time order)
            self._release(session)
            self.sessions_dropped += 1
        record, ttl = self.table.record, self.ttl
        for address, hold in self._held.items():
            if hold.renew_at <= now:
                hold.renew_at = now + ttl / 2
                try:
                    record(address, user=hold.user or None, ttl=ttl)
                except (ValueError, TypeError) as exc:
                    log.warning("watcher: the table refused %r: %s", address, exc)

    async def run(
        self,
        follower: LogFollower,
        *,
        stop: asyncio.Event,
        interval: float = 0.25,
        sweep_interval: float = 1.0,
        exporters: Sequence[Exporter] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Follow the log until ``stop`` is set: lines are recorded within ``interval``
        of being written, the table is swept every ``sweep_interval`` (on ``clock``)
        even when no line arrives, and ``exporters`` are updated after every change of the
        table (its ``changes`` count, so also changes made by others) and
        cleared when the watcher stops (see :meth:`Exporter.close`). The log position
        is saved only after :meth:`sync` says the logins read are durable."""
        self.follower = follower
        next_sweep = -math.inf
        seen: object = object()  # forces a first export

        def on_tick() -> None:
            nonlocal next_sweep, seen
            now = clock()
            swept = False
            if now >= next_sweep:
                self.sweep()
                swept = True
                next_sweep = now + sweep_interval
            if not exporters:
                return
            # The table's change count catches what happens outside this watcher too:
            # the service's own expiry sweep, `ctl add/remove`, a fleet's changes. A table
            # without one is listed again after every sweep.
            changes = getattr(self.table, "changes", None)
            state = (self.logins, changes)
            if state != seen or (changes is None and swept):
                seen = state
                entries = self.table.entries()
                for exporter in exporters:
                    exporter.update(entries)
            for exporter in exporters:
                exporter.maybe_write()

        try:
            await follow(
                follower,
                self.feed,
                stop=stop,
                interval=interval,
                on_tick=on_tick,
                sync=self.sync,
            )
        finally:
            for exporter in exporters:
                exporter.close()
