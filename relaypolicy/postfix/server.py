"""The asyncio policy server: a thin loop around :class:`PolicyConnection`.

Each connection (an :class:`asyncio.Protocol`: no task, no stream and no timer per request)
feeds the bytes it receives to the codec, asks the current policy for every complete
request and writes the answers, in order, in one write. A protocol error is logged with
the peer and what was wrong, nothing is sent, and only that connection is closed.

Two clocks per connection, one timer (the lifecycle shared by every server,
:class:`relaypolicy.connections.TimedConnection`):

- ``idle_timeout``: a connection that sends nothing for this long is closed, between
  requests or within one (Postfix reconnects; its own ``smtpd_policy_service_max_idle``
  is 300 s, so the default here is longer).
- ``request_timeout``: a request must be complete this long after its first byte,
  however slowly the rest trickles in; further bytes do not restart this clock. Postfix
  writes a request in one piece, so only a broken or hostile peer ever meets it. Without
  it a peer sending one byte every few seconds would hold its connection for ever.

When ``max_connections`` are open, a new connection is not refused: the open connection
that has gone longest without an answer (one idle since its last request, a trickler, a
peer that does not read its answers) is closed to make room. Postfix's policy client
notices that a connection it kept was closed, waits ``smtpd_policy_service_retry_delay``
(1 s), reconnects and sends the request again (``smtpd_policy_service_try_limit``, 2
tries), and applies ``default_action`` only when that fails too: an evicted idle Postfix
connection costs one request a second. Refusing the new connection instead would let
whoever holds the slots turn every other client away.

The policy is read from ``self.policy`` for every request, so replacing it (a reload) takes
effect atomically between two requests, never within one.

Back-pressure: while a peer does not read its answers (the transport's buffer is over its
high-water mark) the connection stops reading requests, as the stream version did by
awaiting ``drain()``; the idle clock does not run meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence

import attrs

from relaypolicy.connections import TimedConnection
from relaypolicy.decisions import Decider
from relaypolicy.listeners import Listener, Listening, parse_listener
from relaypolicy.policies import Policy
from relaypolicy.postfix.codec import (
    PolicyConnection,
    PolicyRequest,
    ProtocolError,
    decision_action,
    encode_action,
)
from relaypolicy.replies import CANNOT_EVALUATE

__all__ = ["Listener", "PolicyServer", "ServerSettings", "parse_listener"]

log = logging.getLogger("relaypolicy.serve")


@attrs.frozen
class ServerSettings:
    """The ``[serve]`` section: where to listen and how the server talks to Postfix.

    ``listen`` holds listener specs (:func:`parse_listener`); ``socket_mode`` is the mode of
    the unix sockets among them; ``control_socket`` the control socket's path (empty: none).
    ``accept_action`` is what ACCEPT becomes (``OK``, or ``DUNNO`` when Postfix's own
    restrictions should still run after relaypolicy permits). ``other_states_action`` is
    the answer for requests from protocol states other than RCPT (``DUNNO``: no opinion).
    ``unusable_action`` answers a request that cannot be analysed (a client address that is
    not an IP address): closed by default, a temporary refusal. ``idle_timeout``,
    ``request_timeout`` and ``max_connections`` are explained in the module docstring;
    ``log_format`` comes from the ``[log]`` section.
    """

    listen: tuple[str, ...] = ("127.0.0.1:9998",)
    socket_mode: int = 0o666
    control_socket: str = ""
    accept_action: str = "OK"
    other_states_action: str = "DUNNO"
    unusable_action: str = str(CANNOT_EVALUATE)
    idle_timeout: float = 330.0
    request_timeout: float = 10.0
    max_connections: int = 200
    log_format: str = "text"  # or "json"


class PolicyServer:
    """Serve a policy to Postfix over any number of TCP and unix-socket listeners."""

    def __init__(self, policy: Policy, settings: ServerSettings | None = None) -> None:
        self._settings = settings or ServerSettings()
        self.decider = Decider(policy, log_format=self._settings.log_format)
        self.counters: Counter[str] = Counter()
        self._listening = Listening()
        self._connections: set[_PolicyProtocol] = set()
        self._closing = False

    @property
    def policy(self) -> Policy:
        """What decides; a reload replaces it."""
        return self.decider.policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        self.decider.policy = policy

    @property
    def settings(self) -> ServerSettings:
        """The limits and actions; a reload replaces them (the listeners stay)."""
        return self._settings

    @settings.setter
    def settings(self, settings: ServerSettings) -> None:
        self._settings = settings
        self.decider.log_format = settings.log_format

    def stats(self) -> dict[str, float]:
        """The server's counters and its decider's (see ``DecisionStats``)."""
        return {**self.counters, **self.decider.stats.as_stats()}

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start(self, listeners: Sequence[Listener]) -> list[str]:
        """Bind every listener; returns their addresses (with the real port for port 0)."""
        return await self._listening.start(listeners, self._protocol)

    def _protocol(self) -> _PolicyProtocol:
        return _PolicyProtocol(self)

    async def close(self, *, grace: float = 10.0) -> None:
        """Stop listening, let connections finish the request in hand, then close them.

        Every complete request received is answered as it arrives, so "in hand" means
        answers still being written: closing a transport writes its buffer out first. A
        peer that has not read them after ``grace`` seconds is cut off.
        """
        self._closing = True
        await self._listening.close(self._connections, grace)

    def _answer(self, message: PolicyRequest, peer: str) -> bytes:
        self.counters["requests"] += 1
        state = message.protocol_state
        if state != "RCPT":
            self.counters["other-states"] += 1
            return encode_action(self.settings.other_states_action)
        try:
            request = message.to_request()
        except ValueError as exc:
            self.counters["unusable"] += 1
            log.warning("%s: unusable request: %s", peer, exc)
            return encode_action(self.settings.unusable_action)
        decision = self.decider.decide(request, peer=peer)
        return encode_action(
            decision_action(
                decision, accept_action=self.settings.accept_action, recipient=request.recipient
            )
        )


class _PolicyProtocol(TimedConnection):
    """One connection: bytes to the codec, requests to the server, answers to the peer.

    The lifecycle (admission, the one timer, back-pressure) is
    :class:`~relaypolicy.connections.TimedConnection`'s; the unit is a request. Only a
    request that starts without completing in the same read moves the timer earlier.
    """

    log = log
    server: PolicyServer

    def __init__(self, server: PolicyServer) -> None:
        super().__init__(server)
        self.codec = PolicyConnection()
        self._last_answer = 0.0  # or when connected: the eviction order

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._last_answer = self._last_data

    def _timeouts(self) -> tuple[float, float]:
        settings = self.server.settings
        return settings.idle_timeout, settings.request_timeout

    def _make_room(self) -> bool:
        """Full: close the connection that has gone longest without an answer."""
        min(self.server._connections, key=_last_answer).evict(self.peer)
        return True

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        now = self._last_data = self._loop.time()
        server = self.server
        codec = self.codec
        started = self._unit_started
        try:
            requests = codec.receive_data(data)
        except ProtocolError as exc:
            server.counters["protocol-errors"] += 1
            log.warning("%s: protocol error, closing without an answer: %s", self.peer, exc)
            transport.close()
            return
        if codec.in_request and (requests or started is None):
            self._start_unit(now)  # rare: Postfix writes a whole request at once
        elif started is not None and not codec.in_request:
            self._unit_started = None
        if not requests:
            return
        self._last_answer = now
        peer = self.peer
        if len(requests) == 1:
            transport.write(server._answer(requests[0], peer))
        else:
            transport.write(b"".join([server._answer(request, peer) for request in requests]))
        if server._closing:
            transport.close()

    def eof_received(self) -> bool | None:
        if self.codec.in_request:
            log.warning("%s: connection closed in the middle of a request", self.peer)
        return None  # the transport closes itself (after writing what is buffered)

    def _timed_out(self, now: float) -> None:
        started = self._unit_started
        if started is not None and started + self.server.settings.request_timeout <= now:
            self.server.counters["request-timeouts"] += 1
            log.warning(
                "%s: request not complete %.0f s after its first byte; closing",
                self.peer,
                now - started,
            )
        elif self.codec.in_request:
            self.server.counters["protocol-errors"] += 1
            log.warning("%s: client stopped in the middle of a request; closing", self.peer)

    def evict(self, newcomer: str) -> None:
        """Make room for ``newcomer``: the server is full and this one waited longest."""
        server = self.server
        server._connections.discard(self)
        server.counters["connections-evicted"] += 1
        if self._writing_paused:
            state = "not reading its answers"
        else:
            state = "in the middle of a request" if self.codec.in_request else "idle"
        log.warning(
            "%s: %d connections open; closing this one (%s, no answer for %.0f s) for %s",
            self.peer,
            server.settings.max_connections,
            state,
            self._loop.time() - self._last_answer,
            newcomer,
        )
        if self.transport is not None:
            # A peer that does not read would keep a closing transport open: cut it off.
            if self._writing_paused:
                self.transport.abort()
            else:
                self.transport.close()


def _last_answer(connection: _PolicyProtocol) -> float:
    return connection._last_answer
