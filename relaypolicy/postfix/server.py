"""The asyncio policy server: a thin loop around :class:`PolicyConnection`.

Each connection (an :class:`asyncio.Protocol`: no task, no stream and no timer per request)
feeds the bytes it receives to the codec, asks the current policy for every complete
request and writes the answers, in order, in one write. A protocol error is logged with
the peer and what was wrong, nothing is sent, and only that connection is closed.

Two clocks per connection, one timer:

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
import socket
from collections import Counter
from collections.abc import Sequence

import attrs

from relaypolicy.decisions import Decider
from relaypolicy.listeners import Listener, bind, parse_listener, remove_unix_sockets
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
        self._servers: list[asyncio.Server] = []
        self._connections: set[_PolicyProtocol] = set()
        self._unix_listeners: list[Listener] = []
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
        bound: list[str] = []
        for listener in listeners:
            server, addresses = await bind(listener, self._protocol)
            if listener.path:
                self._unix_listeners.append(listener)
            bound.extend(addresses)
            self._servers.append(server)
        return bound

    def _protocol(self) -> _PolicyProtocol:
        return _PolicyProtocol(self)

    async def close(self, *, grace: float = 10.0) -> None:
        """Stop listening, let connections finish the request in hand, then close them.

        Every complete request received is answered as it arrives, so "in hand" means
        answers still being written: closing a transport writes its buffer out first. A
        peer that has not read them after ``grace`` seconds is cut off.
        """
        self._closing = True
        for server in self._servers:
            server.close()
        connections = list(self._connections)
        for connection in connections:
            connection.close()
        if connections:
            await asyncio.wait([c.closed for c in connections], timeout=grace)
        stalled = list(self._connections)
        for connection in stalled:
            connection.abort()
        if stalled:  # an aborted transport reports its loss on the next loop iteration
            await asyncio.wait([c.closed for c in stalled], timeout=grace)
        for server in self._servers:
            await server.wait_closed()
        remove_unix_sockets(self._unix_listeners)

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


class _PolicyProtocol(asyncio.Protocol):
    """One connection: bytes to the codec, requests to the server, answers to the peer.

    Both clocks share one timer per connection, not one per read: it fires at the
    earlier deadline it knew of when set, and sets itself again if bytes arrived since.
    Only a request that starts without completing in the same read moves it earlier.
    """

    def __init__(self, server: PolicyServer) -> None:
        self.server = server
        self.codec = PolicyConnection()
        self.peer = "?"
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self._loop.create_future()  # connection_lost
        self._last_data = 0.0
        self._last_answer = 0.0  # or when connected: the eviction order
        self._request_started: float | None = None  # first byte of an incomplete request
        self._timer: asyncio.TimerHandle | None = None
        self._writing_paused = False
        self._paused_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        server = self.server
        self.peer = _peer_name(transport)
        connections = server._connections
        if server._closing:
            server.counters["connections-refused"] += 1
            transport.close()
            return
        if len(connections) >= server.settings.max_connections:
            min(connections, key=_last_answer).evict(self.peer)
        self.transport = transport
        connections.add(self)
        server.counters["connections"] += 1
        self._last_data = self._last_answer = self._loop.time()
        self._timer = self._loop.call_at(self._deadline(), self._expire)

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        now = self._last_data = self._loop.time()
        server = self.server
        codec = self.codec
        started = self._request_started
        try:
            requests = codec.receive_data(data)
        except ProtocolError as exc:
            server.counters["protocol-errors"] += 1
            log.warning("%s: protocol error, closing without an answer: %s", self.peer, exc)
            transport.close()
            return
        if codec.in_request and (requests or started is None):
            self._start_request(now)  # rare: Postfix writes a whole request at once
        elif started is not None and not codec.in_request:
            self._request_started = None
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

    def _start_request(self, now: float) -> None:
        """A request began in this read and is not complete: its deadline may be first."""
        self._request_started = now
        deadline = now + self.server.settings.request_timeout
        timer = self._timer
        if timer is not None and timer.when() > deadline:
            timer.cancel()
            self._timer = self._loop.call_at(deadline, self._expire)

    def eof_received(self) -> bool | None:
        if self.codec.in_request:
            log.warning("%s: connection closed in the middle of a request", self.peer)
        return None  # the transport closes itself (after writing what is buffered)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._paused_at = self._loop.time()
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        # Neither clock ran while this server was not reading.
        self._writing_paused = False
        now = self._last_data = self._loop.time()
        if self._request_started is not None:
            self._start_request(self._request_started + now - self._paused_at)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.server._connections.discard(self)
            if exc is not None:
                log.info("%s: connection lost: %s", self.peer, exc)
        if not self.closed.done():
            self.closed.set_result(None)

    def _deadline(self) -> float:
        """When this connection is closed unless bytes arrive (idle) or a request ends."""
        settings = self.server.settings
        deadline = self._last_data + settings.idle_timeout
        if self._request_started is not None:
            deadline = min(deadline, self._request_started + settings.request_timeout)
        return deadline

    def _expire(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        now = self._loop.time()
        if self._writing_paused:  # back-pressure: look again later
            self._timer = self._loop.call_later(self.server.settings.idle_timeout, self._expire)
            return
        deadline = self._deadline()
        if deadline > now:
            self._timer = self._loop.call_at(deadline, self._expire)
            return
        started = self._request_started
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
        transport.close()

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

    def close(self) -> None:
        """Close after the answers already written have gone out."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _last_answer(connection: _PolicyProtocol) -> float:
    return connection._last_answer


def _peer_name(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname() or '?'}"
    return str(peer or "?")
