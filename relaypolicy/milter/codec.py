"""The milter protocol, filter side, sans I/O: only what a relay decision at RCPT needs.

Theory of operation
-------------------
Sendmail (8.14 and later) and Postfix (2.6 and later, ``milter_protocol = 6``) speak the
milter protocol, version 6, to external filters (Sendmail's libmilter ``mfdef.h`` names
the constants; Postfix's MILTER_README describes its side). Every packet, both ways, is
a 4-byte big-endian length, then that many bytes: one command letter and its data.
Strings in the data end with NUL.

The MTA opens with ``SMFIC_OPTNEG`` (``O``: version, the actions it allows, the protocol
steps it can skip, three 32-bit integers); the filter answers with ``O`` and the subset it
wants. We ask to modify nothing (of the actions, only ``SMFIF_SETSYMLIST`` when the MTA
offers it: then the answer also names the macros we read, :data:`MACRO_REQUESTS`, which
the MTA sends instead of its configured lists) and, of what the MTA offers, to skip the body,
the headers, the end of headers, DATA and unknown commands (``SMFIP_NOBODY``,
``SMFIP_NOHDRS``, ``SMFIP_NOEOH``, ``SMFIP_NODATA``, ``SMFIP_NOUNKNOWN``), and to send no
reply to CONNECT, HELO and MAIL (``SMFIP_NR_CONN``, ``SMFIP_NR_HELO``, ``SMFIP_NR_MAIL``):
then the MTA sends, per SMTP session, ``C`` (the client: host name, family, port,
address), ``H`` (HELO), per transaction ``M`` (MAIL FROM and its ESMTP arguments) and one
``R`` per recipient, each preceded by ``D`` with the macros configured for that stage
(``D`` carries the letter of the command it belongs to, then name/value pairs). It waits
for an answer to ``R`` only. ``A`` (abort) ends a transaction, ``K`` ends a session and
keeps the connection for the next one, ``Q`` ends both. End of message (``E``) is always
sent and always answered; a step the MTA could not skip is answered ``c`` (continue).

Each ``R`` becomes a :class:`Recipient` event carrying a snapshot of the session (the
connect facts, HELO, sender, the macros in scope); the caller decides and encodes the
answer with :func:`encode_decision`: ``c`` (continue: the MTA's own rules go on) for
ACCEPT and NEXT, ``y`` (``SMFIR_REPLYCODE``: our code, enhanced status and text) for
REJECT and DEFER. Everything else the codec answers itself, as bytes, in stream order.

Macro scope follows the protocol: macros sent for CONNECT and HELO last the session;
those for MAIL are replaced by the next MAIL and dropped by ``A``; those for RCPT belong
to the one recipient. A lookup takes the latest stage that defined the name.

Bad input raises :class:`~relaypolicy.errors.ProtocolError` naming what was wrong: a
packet longer than ``max_packet`` (checked from its length field, before its data is
read), an empty packet, a command letter we do not know, a command before the option
negotiation, a packet whose data does not parse. The connection is then unusable
(``failed``); the server closes it, and the MTA applies its ``milter_default_action``
(Postfix) or the filter's ``F=`` flag (Sendmail): configured as tempfail, never accept.

Here: the state machine and the parsing of packet data. The protocol's words (command
letters, flags, the encoders) are in :mod:`relaypolicy.milter.protocol`; the
:class:`Recipient` event and its request in :mod:`relaypolicy.milter.recipient`.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from relaypolicy.errors import ProtocolError
from relaypolicy.milter.protocol import (
    _CONTINUE,
    _CONTINUE_PACKET,
    _KNOWN,
    _LENGTH,
    _LOOKUP_ORDER,
    _MAX_STRINGS,
    _NO_REPLY,
    _OPTNEG,
    _TRANSACTION_STAGES,
    MACRO_REQUESTS,
    MAX_PACKET,
    MILTER_VERSION,
    SMFIC_ABORT,
    SMFIC_CONNECT,
    SMFIC_HELO,
    SMFIC_MACRO,
    SMFIC_MAIL,
    SMFIC_OPTNEG,
    SMFIC_QUIT,
    SMFIC_QUIT_NC,
    SMFIC_RCPT,
    SMFIF_SETSYMLIST,
    SMFIP_NR_CONN,
    SMFIP_NR_HELO,
    SMFIP_NR_MAIL,
    WANTED_PROTOCOL,
    encode_decision,
    encode_packet,
    macro_name,
)
from relaypolicy.milter.recipient import Recipient, _address, _mailbox

__all__ = [
    "MAX_PACKET",
    "MILTER_VERSION",
    "WANTED_PROTOCOL",
    "MilterConnection",
    "ProtocolError",
    "Recipient",
    "encode_decision",
    "encode_packet",
    "macro_name",
]


class MilterConnection:
    """The protocol state of one connection from an MTA; see the module docstring.

    ``daemon_ports`` maps a ``{daemon_name}`` to its port, for an MTA that does not send
    ``{daemon_port}`` (Sendmail names its daemons ``MTA`` and ``MSA``). ``request_macros``:
    when the MTA offers ``SMFIF_SETSYMLIST``, ask it for the macros of
    :data:`MACRO_REQUESTS` in the answer to OPTNEG.
    """

    __slots__ = (
        "_buffer",
        "_connect",
        "_helo",
        "_macros",
        "_sender",
        "daemon_ports",
        "failed",
        "max_packet",
        "negotiated",
        "no_reply",
        "packets",
        "quit",
        "request_macros",
        "version",
    )

    def __init__(
        self,
        *,
        max_packet: int = MAX_PACKET,
        daemon_ports: Mapping[str, int] | None = None,
        request_macros: bool = True,
    ) -> None:
        self.max_packet = max_packet
        self.request_macros = request_macros
        self.daemon_ports: Mapping[str, int] = daemon_ports or {}
        self._buffer = bytearray()
        self.failed: str | None = None
        self.negotiated = False
        self.version = 0
        self.no_reply = 0  # the SMFIP_NR_* bits agreed
        self.quit = False  # QUIT received: close after writing the answers
        self.packets = 0  # complete packets received
        self._macros: dict[bytes, dict[str, str]] = {}
        self._connect: tuple[str, str, int] | None = None  # host name, address, port
        self._helo = ""
        self._sender = ""

    @property
    def in_packet(self) -> bool:
        """Whether part of a packet has arrived and the rest has not."""
        return bool(self._buffer)

    def receive_data(self, data: bytes) -> list[bytes | Recipient]:
        """Feed bytes; get, in order, the answers to write (bytes) and the recipients to
        decide (whose answers go in their place). Raises :class:`ProtocolError`."""
        if self.failed is not None:
            raise ProtocolError(f"connection already failed: {self.failed}")
        try:
            return self._receive(data)
        except ProtocolError as exc:
            self.failed = str(exc)
            raise

    def _receive(self, data: bytes) -> list[bytes | Recipient]:
        buffer = self._buffer
        buffer += data
        out: list[bytes | Recipient] = []
        start = 0
        size = len(buffer)
        while size - start >= 4 and not self.quit:
            (length,) = _LENGTH.unpack_from(buffer, start)
            if length == 0:
                raise ProtocolError("empty packet (length 0, no command)")
            if length > self.max_packet:
                raise ProtocolError(
                    f"packet of {length} bytes is larger than the limit of {self.max_packet}"
                )
            if size - start - 4 < length:
                break
            command = bytes(buffer[start + 4 : start + 5])
            payload = bytes(buffer[start + 5 : start + 4 + length])
            start += 4 + length
            self.packets += 1
            answer = self._packet(command, payload)
            if answer is not None:
                out.append(answer)
        del buffer[:start]
        if self.quit and buffer:
            raise ProtocolError("bytes after QUIT")
        return out

    def _packet(self, command: bytes, data: bytes) -> bytes | Recipient | None:
        if command not in _KNOWN:
            raise ProtocolError(f"unknown command {_show(command)}")
        if command == SMFIC_OPTNEG:
            return self._negotiate(data)
        if not self.negotiated:
            raise ProtocolError(f"command {_show(command)} before option negotiation")
        if command == SMFIC_MACRO:
            self._define(data)
            return None
        if command == SMFIC_RCPT:
            return self._recipient(data)
        if command == SMFIC_CONNECT:
            self._connect = _parse_connect(data)
            self._helo = ""
        elif command == SMFIC_HELO:
            self._helo = _decode(_strings(data, "HELO", exact=1)[0])
        elif command == SMFIC_MAIL:
            self._sender = _mailbox(_decode(_strings(data, "MAIL")[0]))
        elif command == SMFIC_ABORT:
            self._end_transaction()
            return None  # no reply to ABORT
        elif command == SMFIC_QUIT:
            self.quit = True
            return None
        elif command == SMFIC_QUIT_NC:
            self._macros.clear()
            self._connect = None
            self._helo = self._sender = ""
            return None
        elif command in _CONTINUE:
            return _CONTINUE_PACKET
        if _NO_REPLY.get(command, 0) & self.no_reply:
            return None
        return _CONTINUE_PACKET

    def _negotiate(self, data: bytes) -> bytes:
        if self.negotiated:
            raise ProtocolError("option negotiation repeated")
        if len(data) < _OPTNEG.size:
            raise ProtocolError(f"OPTNEG of {len(data)} bytes; expected at least 12")
        version, actions, offered = _OPTNEG.unpack_from(data)
        if version < 2:
            raise ProtocolError(f"milter protocol version {version}; need 2 or later")
        self.version = min(version, MILTER_VERSION)
        protocol = WANTED_PROTOCOL & offered
        if self.version < 6:  # "no reply" bits exist from version 6 on
            protocol &= ~(SMFIP_NR_CONN | SMFIP_NR_HELO | SMFIP_NR_MAIL)
        self.no_reply = protocol & (SMFIP_NR_CONN | SMFIP_NR_HELO | SMFIP_NR_MAIL)
        self.negotiated = True
        lists = b""
        if self.request_macros and self.version >= 6 and actions & SMFIF_SETSYMLIST:
            actions = SMFIF_SETSYMLIST
            lists = b"".join(
                struct.pack(">I", stage) + names.encode() + b"\0" for stage, names in MACRO_REQUESTS
            )
        else:
            actions = 0
        return encode_packet(SMFIC_OPTNEG, _OPTNEG.pack(self.version, actions, protocol) + lists)

    def _define(self, data: bytes) -> None:
        if not data:
            raise ProtocolError("macro packet without the command it is for")
        stage = data[:1]
        strings = _strings(data[1:], "macro", minimum=0) if len(data) > 1 else []
        if len(strings) % 2:
            raise ProtocolError(f"macro packet for {_show(stage)} with a name and no value")
        if stage == SMFIC_MAIL:  # a new transaction: the old one's macros go
            self._end_transaction()
        names = strings[0::2]
        values = strings[1::2]
        self._macros[stage] = {
            macro_name(_decode(name)): _decode(value)
            for name, value in zip(names, values, strict=True)
        }

    def _end_transaction(self) -> None:
        for stage in _TRANSACTION_STAGES:
            self._macros.pop(stage, None)
        self._sender = ""

    def macro(self, name: str) -> str | None:
        """The value of macro ``name`` (braces optional) in scope now, or ``None``."""
        name = macro_name(name)
        for stage in _LOOKUP_ORDER:
            values = self._macros.get(stage)
            if values is not None and name in values:
                return values[name]
        return None

    def _recipient(self, data: bytes) -> Recipient:
        recipient = _mailbox(_decode(_strings(data, "RCPT")[0]))
        macros: dict[str, str] = {}
        for stage in reversed(_LOOKUP_ORDER):  # latest stage last: it wins
            values = self._macros.get(stage)
            if values:
                macros.update(values)
        self._macros.pop(SMFIC_RCPT, None)  # they were for this recipient only
        host, address, port = self._connect or ("", "", 0)
        if not address:
            address = _address(macros.get("client_addr", ""))
            port_text = macros.get("client_port", "")
            port = int(port_text) if port_text.isdigit() else 0
        server_text = macros.get("daemon_port", "")
        if server_text.isdigit():
            server_port = int(server_text)
        else:
            server_port = self.daemon_ports.get(macros.get("daemon_name", ""), 0)
        if host.startswith("[") or host == "unknown":
            host = ""  # no verified host name
        return Recipient(
            client_address=address,
            client_name=host,
            client_port=port if 0 <= port <= 65535 else 0,
            helo=self._helo,
            sender=self._sender,
            recipient=recipient,
            macros=macros,
            server_port=server_port if server_port <= 65535 else 0,
        )


def _parse_connect(data: bytes) -> tuple[str, str, int]:
    """``C``: host name NUL, family (``4``, ``6``, ``L`` unix, ``U`` unknown), and for
    all but ``U`` a 16-bit port and the address NUL. The address is empty unless IP."""
    end = data.find(b"\0")
    if end == -1:
        raise ProtocolError("CONNECT without a NUL after the host name")
    host = _decode(data[:end])
    rest = data[end + 1 :]
    if not rest:
        raise ProtocolError("CONNECT without an address family")
    family = rest[:1]
    if family == b"U":
        return host, "", 0
    if family not in (b"4", b"6", b"L"):
        raise ProtocolError(f"CONNECT with unknown address family {_show(family)}")
    if len(rest) < 4 or not rest.endswith(b"\0"):
        raise ProtocolError("CONNECT address truncated")
    (port,) = struct.unpack_from(">H", rest, 1)
    address = rest[3:-1]
    if b"\0" in address:
        raise ProtocolError("CONNECT address with a NUL inside")
    if family == b"L":
        return host, "", 0
    return host, _address(_decode(address)), port


def _strings(data: bytes, what: str, *, minimum: int = 1, exact: int = 0) -> list[bytes]:
    """The NUL-terminated strings of a packet's data."""
    if not data.endswith(b"\0"):
        raise ProtocolError(f"{what} data does not end with NUL")
    strings = data[:-1].split(b"\0")
    if len(strings) > _MAX_STRINGS:
        raise ProtocolError(f"{what} packet with more than {_MAX_STRINGS} strings")
    if len(strings) < minimum or (exact and len(strings) != exact):
        raise ProtocolError(f"{what} packet with {len(strings)} strings")
    return strings


def _decode(raw: bytes) -> str:
    """UTF-8 as SMTPUTF8 allows; anything else becomes U+FFFD, which no domain of ours
    and no login matches (a refusal, never a relay)."""
    return raw.decode("utf-8", "replace")


def _show(command: bytes) -> str:
    if not command:
        return "''"
    value = command[0]
    return repr(chr(value)) if 0x20 < value < 0x7F else f"0x{value:02x}"
