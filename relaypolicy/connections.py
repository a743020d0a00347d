"""One MTA connection's lifecycle, shared by every asyncio server: :class:`TimedConnection`.

The Postfix policy server, the milter server and Exim's socket each run one
:class:`asyncio.Protocol` per connection (no task, no stream, no timer per request). What
they have in common is here; what each server's protocol keeps is its own: feeding bytes
to its codec, answering, and what it says when it turns a connection away or times it out.

Admission (:meth:`TimedConnection.connection_made`): a server that is closing refuses new
connections; at ``max_connections`` the subclass may make room (the Postfix server evicts
the connection that has waited longest) or refuses. A refusal is counted as
``connections-refused``; the subclass says it its own way (a log line, Exim's ``defer``
line) before the transport closes. An admitted connection is counted as ``connections``
and joins the server's live set, which :meth:`relaypolicy.listeners.Listening.close`
closes.

Two clocks, one timer:

- the idle clock: closed when the peer sends nothing for ``idle_timeout`` seconds;
- the unit clock: a unit (a Postfix request, a milter packet, an Exim line) must be
  complete this long after it started, however slowly the rest trickles in. The subclass
  starts it with :meth:`TimedConnection._start_unit` and stops it by setting
  ``_unit_started`` to ``None``.

The timer fires at the earliest deadline it knew of when it was set; if bytes arrived
since, it sets itself again for the new deadline instead of being moved on every read.
Only a unit that starts without completing moves it earlier.

Back-pressure: while the peer does not read its answers (the transport's buffer is over
its high-water mark, :meth:`asyncio.BaseProtocol.pause_writing`) the connection stops
reading, so a peer that sends without reading cannot make the server buffer answers
without bound; neither clock runs meanwhile (the peer cannot finish a unit the server does
not read).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Protocol, Self, TypeVar

from relaypolicy.listeners import peer_name

__all__ = ["ConnectionLimits", "Host", "TimedConnection"]


class ConnectionLimits(Protocol):
    """What :class:`TimedConnection` reads of its server's settings (the timeouts come from
    :meth:`TimedConnection._timeouts`: their names differ per server)."""

    @property
    def max_connections(self) -> int: ...


C = TypeVar("C")


class Host(Protocol[C]):
    """What :class:`TimedConnection` needs of its server: ``C`` is the connection type."""

    counters: Counter[str]
    _closing: bool
    _connections: set[C]

    @property
    def settings(self) -> ConnectionLimits: ...


class TimedConnection(asyncio.Protocol):
    """One connection's admission, clocks, back-pressure and closing (see the module).

    A subclass sets ``log`` (its server's logger), implements :meth:`_timeouts`,
    ``data_received`` and :meth:`_timed_out`, and may override :meth:`_make_room` and
    :meth:`_turn_away`.
    """

    log: logging.Logger

    def __init__(self, server: Host[Self]) -> None:
        self.server = server
        self.peer = "?"
        self.transport: asyncio.Transport | None = None  # set when admitted
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self._loop.create_future()  # connection_lost
        self._last_data = 0.0
        self._unit_started: float | None = None  # when the unit in hand started, or None
        self._timer: asyncio.TimerHandle | None = None
        self._writing_paused = False
        self._paused_at = 0.0

    # What a subclass says.

    def _timeouts(self) -> tuple[float, float]:
        """``(idle_timeout, unit_timeout)`` from the server's current settings."""
        raise NotImplementedError

    def _timed_out(self, now: float) -> None:
        """The deadline passed: count and log why (and write a last answer); the
        transport is closed after."""
        raise NotImplementedError

    def _make_room(self) -> bool:
        """The server is full: make room for this newcomer (True), or refuse it (False)."""
        return False

    def _turn_away(self, transport: asyncio.Transport, closing: bool) -> None:
        """Say why this newcomer is refused (``closing``: the server is shutting down;
        else it is full); counted already, and the transport is closed after."""

    # The lifecycle.

    def connection_made(self: Self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        server = self.server
        self.peer = peer_name(transport)
        closing = server._closing
        if closing or (
            len(server._connections) >= server.settings.max_connections and not self._make_room()
        ):
            server.counters["connections-refused"] += 1
            self._turn_away(transport, closing)
            transport.close()
            return
        self.transport = transport
        server._connections.add(self)
        server.counters["connections"] += 1
        self._last_data = self._loop.time()
        self._timer = self._loop.call_at(self._deadline(), self._expire)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.server._connections.discard(self)
            if exc is not None:
                self.log.info("%s: connection lost: %s", self.peer, exc)
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        """Close after the answers already written have gone out."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close now, dropping what is not sent."""
        if self.transport is not None:
            self.transport.abort()

    # Back-pressure.

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._paused_at = self._loop.time()
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        # Neither clock ran while this server was not reading.
        self._writing_paused = False
        now = self._last_data = self._loop.time()
        if self._unit_started is not None:
            self._start_unit(self._unit_started + now - self._paused_at)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # The clocks.

    def _start_unit(self, now: float) -> None:
        """A unit began at ``now`` and is not complete: its deadline may be the first."""
        self._unit_started = now
        deadline = now + self._timeouts()[1]
        timer = self._timer
        if timer is not None and timer.when() > deadline:
            timer.cancel()
            self._timer = self._loop.call_at(deadline, self._expire)

    def _deadline(self) -> float:
        """When this connection is closed unless bytes arrive (idle) or its unit ends."""
        idle_timeout, unit_timeout = self._timeouts()
        deadline = self._last_data + idle_timeout
        if self._unit_started is not None:
            deadline = min(deadline, self._unit_started + unit_timeout)
        return deadline

    def _expire(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._writing_paused:  # back-pressure: look again later
            self._timer = self._loop.call_later(self._timeouts()[0], self._expire)
            return
        now = self._loop.time()
        deadline = self._deadline()
        if deadline > now:
            self._timer = self._loop.call_at(deadline, self._expire)
            return
        self._timed_out(now)
        transport.close()
