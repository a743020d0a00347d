"""The asyncio milter server: a thin loop around :class:`MilterConnection`.

Each connection (an :class:`asyncio.Protocol`) feeds what it receives to its own codec,
writes the codec's answers and, for each recipient, the answer to the decision of the
shared :class:`~relaypolicy.decisions.Decider`, in stream order, in one write. The
session (connect facts, HELO, sender, macros) lives in the codec, one per connection.

Fail closed, per recipient: a recipient without a client address is answered
``451 4.3.5`` (:data:`~relaypolicy.replies.NO_CLIENT_ADDRESS`), one that cannot become a
request (an address that is not IP, a port out of range) ``451 4.3.0``
(:data:`~relaypolicy.replies.CANNOT_EVALUATE`). Never a continue.

Bad input (see the codec: an oversized or malformed packet, an unknown command) is
logged with the peer and what was wrong, and that connection alone is closed; the MTA
then applies its default action (configure it as tempfail: ``docs/milter.md``). One
timer per connection closes it when it sends nothing for ``idle_timeout`` seconds, or
when a packet is not complete ``packet_timeout`` seconds after its first byte. At
``max_connections`` a new connection is closed at once and counted. While the MTA does
not read its answers, the connection is not read either, and neither clock runs (the
lifecycle shared by every server: :class:`relaypolicy.connections.TimedConnection`).

The decider's policy is read for every recipient, so a reload takes effect between two
recipients, never within one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence

from relaypolicy.connections import TimedConnection
from relaypolicy.decisions import Decider
from relaypolicy.listeners import Listener, Listening
from relaypolicy.milter.codec import MilterConnection, ProtocolError, Recipient
from relaypolicy.milter.protocol import encode_decision, encode_reply
from relaypolicy.milter.settings import MilterSettings
from relaypolicy.policies import Policy
from relaypolicy.replies import CANNOT_EVALUATE, NO_CLIENT_ADDRESS

__all__ = ["MilterServer"]

log = logging.getLogger("relaypolicy.milter")

_NO_CLIENT = encode_reply(*NO_CLIENT_ADDRESS)
_UNUSABLE = encode_reply(*CANNOT_EVALUATE)


class MilterServer:
    """Answer milter connections with a policy, over TCP and unix-socket listeners."""

    def __init__(self, policy: Policy, settings: MilterSettings | None = None) -> None:
        self._settings = settings or MilterSettings()
        self.decider = Decider(policy, log_format=self._settings.log_format)
        self.counters: Counter[str] = Counter()
        self._listening = Listening()
        self._connections: set[_MilterProtocol] = set()
        self._closing = False
        self._daemon_ports = dict(self._settings.daemon_ports)

    @property
    def policy(self) -> Policy:
        """What decides; a reload replaces it."""
        return self.decider.policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        self.decider.policy = policy

    @property
    def settings(self) -> MilterSettings:
        """The limits; a reload replaces them (the listeners stay)."""
        return self._settings

    @settings.setter
    def settings(self, settings: MilterSettings) -> None:
        self._settings = settings
        self._daemon_ports = dict(settings.daemon_ports)
        self.decider.log_format = settings.log_format

    @property
    def connections(self) -> int:
        return len(self._connections)

    def stats(self) -> dict[str, float]:
        """The server's counters and its decider's (see ``DecisionStats``)."""
        return {**self.counters, **self.decider.stats.as_stats()}

    async def start(self, listeners: Sequence[Listener]) -> list[str]:
        """Bind every listener; their addresses (with the real port for port 0)."""
        return await self._listening.start(listeners, self._protocol)

    def _protocol(self) -> _MilterProtocol:
        return _MilterProtocol(self)

    async def close(self, *, grace: float = 10.0) -> None:
        """Stop listening and close every connection (answers already written go out
        first; a peer that does not take them within ``grace`` seconds is cut off)."""
        self._closing = True
        await self._listening.close(self._connections, grace)

    def answer(self, recipient: Recipient, peer: str) -> bytes:
        """The answer to one ``RCPT``: the decision's, or a temporary refusal."""
        self.counters["recipients"] += 1
        if not recipient.client_address:
            self.counters["no-client-address"] += 1
            log.warning(
                "%s: no client address for <%s> (send {client_addr} or CONNECT); "
                "answering with a temporary refusal",
                peer,
                recipient.recipient,
            )
            return _NO_CLIENT
        try:
            request = recipient.to_request()
        except ValueError as exc:
            self.counters["unusable"] += 1
            log.warning("%s: unusable recipient: %s", peer, exc)
            return _UNUSABLE
        return encode_decision(self.decider.decide(request, peer=peer))


class _MilterProtocol(TimedConnection):
    """One MTA connection: bytes to the codec, recipients to the server, answers back.

    The lifecycle is :class:`~relaypolicy.connections.TimedConnection`'s; the unit is a
    packet.
    """

    log = log
    server: MilterServer

    def __init__(self, server: MilterServer) -> None:
        super().__init__(server)
        settings = server.settings
        self.codec = MilterConnection(
            max_packet=settings.max_packet,
            daemon_ports=server._daemon_ports,
            request_macros=settings.request_macros,
        )

    def _timeouts(self) -> tuple[float, float]:
        settings = self.server.settings
        return settings.idle_timeout, settings.packet_timeout

    def _turn_away(self, transport: asyncio.Transport, closing: bool) -> None:
        if not closing:
            log.warning(
                "%s: %d connections open; closing the new one (the MTA applies its default "
                "action to this session)",
                self.peer,
                self.server.settings.max_connections,
            )

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        now = self._last_data = self._loop.time()
        server = self.server
        codec = self.codec
        packets = codec.packets
        try:
            items = codec.receive_data(data)
        except ProtocolError as exc:
            server.counters["protocol-errors"] += 1
            log.warning("%s: milter protocol error, closing the connection: %s", self.peer, exc)
            transport.close()
            return
        if not codec.in_packet:
            self._unit_started = None
        elif self._unit_started is None or codec.packets != packets:
            self._start_unit(now)  # a packet began in this read and is not complete
        if items:
            peer = self.peer
            transport.write(
                b"".join(
                    item if isinstance(item, bytes) else server.answer(item, peer) for item in items
                )
            )
        if codec.quit or server._closing:
            transport.close()

    def eof_received(self) -> bool | None:
        if self.codec.in_packet:
            log.warning("%s: connection closed in the middle of a packet", self.peer)
        return None

    def _timed_out(self, now: float) -> None:
        counters = self.server.counters
        if self._unit_started is not None:
            counters["packet-timeouts"] += 1
            log.warning(
                "%s: packet not complete %.0f s after its first byte; closing",
                self.peer,
                now - self._unit_started,
            )
        else:
            counters["idle-timeouts"] += 1
            log.warning(
                "%s: nothing received for %.0f s; closing", self.peer, now - self._last_data
            )
