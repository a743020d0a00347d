"""The socket Exim's RCPT ACL asks with ``${readsocket}``: the asyncio server around the codec.

Theory of operation
-------------------
:class:`EximServer` listens on the ``[exim] listen`` addresses (TCP or unix sockets, the
syntax of ``[serve] listen``, parsed by :func:`relaypolicy.listeners.parse_listener`)
and runs one :class:`asyncio.Protocol` per connection around
:class:`~relaypolicy.exim.codec.EximConnection`: every complete line is a request, decided
by the :class:`~relaypolicy.decisions.Decider` and answered with one line
(:func:`~relaypolicy.exim.codec.encode_answer`); when the client half-closes (readsocket's
``shutdown``), the connection is closed after the answers are written.

Fail closed, always with an answer the ACL turns into a deferral:

- a protocol error (a line the codec refuses, a line cut by the end of the stream):
  ``defer 451 4.3.0 Policy service cannot evaluate this request``, then close;
- no client address, or one that is not an IP address (``$sender_host_address`` is empty
  for a local ``exim -bs``): ``defer 451 4.3.5`` or ``defer 451 4.3.0``, not decided;
- a policy that raises, or a table that cannot be read: the Decider's deferral;
- a line not complete ``request_timeout`` seconds after the connection opened, or more
  than ``max_connections`` connections: the same deferral, then close.

And when nothing answers at all (relaypolicy stopped, too slow for readsocket's
timeout), the ACL reads an empty string and defers: see ``docs/exim.md``.

:mod:`relaypolicy.daemon.exim` runs it as a front end of the daemon runtime.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from relaypolicy.connections import TimedConnection
from relaypolicy.decisions import Decider
from relaypolicy.errors import ProtocolError
from relaypolicy.exim.codec import (
    EximConnection,
    EximProtocolError,
    EximRequest,
    encode_answer,
)
from relaypolicy.exim.settings import EximSettings
from relaypolicy.listeners import Listener, Listening
from relaypolicy.model import defer
from relaypolicy.policies import Policy
from relaypolicy.replies import CANNOT_EVALUATE, NO_CLIENT_ADDRESS

__all__ = ["EximServer"]

log = logging.getLogger("relaypolicy.exim")

CANNOT_EVALUATE_ANSWER = encode_answer(defer(*CANNOT_EVALUATE, "relaypolicy", "cannot-evaluate"))
NO_CLIENT_ADDRESS_ANSWER = encode_answer(
    defer(*NO_CLIENT_ADDRESS, "relaypolicy", "no-client-address")
)


class EximServer:
    """Answer Exim's requests with a policy, on any number of TCP and unix listeners."""

    def __init__(self, policy: Policy, settings: EximSettings, *, log_format: str = "text"):
        self.settings = settings
        self.decider = Decider(policy, log_format=log_format)
        # Shown from the start, so a reader of the stats can tell "none yet" from "unknown".
        self.counters: Counter[str] = Counter(
            dict.fromkeys(("requests", "protocol-errors", "unusable", "connections"), 0)
        )
        self._listening = Listening()
        self._connections: set[_EximProtocol] = set()
        self._closing = False

    def stats(self) -> dict[str, object]:
        """The server's counters, the decider's, and the connections open now."""
        return {
            **self.counters,
            **self.decider.stats.as_stats(),
            "connections-open": len(self._connections),
        }

    async def start(self, listeners: list[Listener]) -> list[str]:
        """Bind every listener; their addresses (with the real port for port 0)."""
        return await self._listening.start(listeners, self._protocol)

    def _protocol(self) -> _EximProtocol:
        return _EximProtocol(self)

    async def close(self, *, grace: float = 10.0) -> None:
        """Stop listening; let the answers in hand go out, then close every connection."""
        self._closing = True
        await self._listening.close(self._connections, grace)

    def answer(self, message: EximRequest, peer: str) -> bytes:
        """The answer line for one request (never raises)."""
        self.counters["requests"] += 1
        if not message.fields.get("client_address"):
            self.counters["unusable"] += 1
            log.warning("%s: request without a client address; deferring", peer)
            return NO_CLIENT_ADDRESS_ANSWER
        try:
            request = message.to_request()
        except ValueError as exc:
            self.counters["unusable"] += 1
            log.warning("%s: unusable request, deferring: %s", peer, exc)
            return CANNOT_EVALUATE_ANSWER
        return encode_answer(self.decider.decide(request, peer=peer))


class _EximProtocol(TimedConnection):
    """One connection: lines to the codec, requests to the server, answers back.

    The lifecycle is :class:`~relaypolicy.connections.TimedConnection`'s. Its unit clock
    always runs here: it starts when the connection opens and again whenever every line
    received is answered, so a connection has ``request_timeout`` to bring each whole line
    (the idle clock, the same length, never comes first).
    """

    log = log
    server: EximServer

    def __init__(self, server: EximServer) -> None:
        super().__init__(server)
        self.codec = EximConnection()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._unit_started = self._last_data

    def _timeouts(self) -> tuple[float, float]:
        timeout = self.server.settings.request_timeout
        return timeout, timeout

    def _turn_away(self, transport: asyncio.Transport, closing: bool) -> None:
        log.warning("%s: %d connections open; deferring", self.peer, len(self.server._connections))
        transport.write(CANNOT_EVALUATE_ANSWER)

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        now = self._last_data = self._loop.time()
        server = self.server
        try:
            requests = self.codec.receive_data(data)
        except EximProtocolError as exc:
            if exc.completed:  # the lines before the bad one are answered first
                transport.write(b"".join([server.answer(r, self.peer) for r in exc.completed]))
            self._refuse(str(exc))
            return
        if requests:
            transport.write(b"".join([server.answer(r, self.peer) for r in requests]))
            if not self.codec.in_request:
                self._unit_started = now  # a new line gets a new clock

    def eof_received(self) -> bool | None:
        try:
            self.codec.receive_eof()
        except ProtocolError as exc:
            self._refuse(str(exc))
        return None  # the transport closes itself after writing the answers

    def _refuse(self, why: str) -> None:
        self.server.counters["protocol-errors"] += 1
        log.warning("%s: protocol error, deferring: %s", self.peer, why)
        if self.transport is not None:
            self.transport.write(CANNOT_EVALUATE_ANSWER)
            self.transport.close()

    def _timed_out(self, now: float) -> None:
        if self.codec.in_request:
            self.server.counters["request-timeouts"] += 1
            log.warning("%s: no whole request line in time; deferring", self.peer)
            assert self.transport is not None
            self.transport.write(CANNOT_EVALUATE_ANSWER)
