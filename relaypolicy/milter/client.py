"""The MTA side of the milter protocol, for tests, benchmarks and ``audit``-style probes.

:func:`mta_session` gives the packets Postfix sends for one SMTP session with the default
``milter_*_macros`` (and the ones ``docs/milter.md`` asks for): OPTNEG, then macros and
CONNECT, HELO, MAIL and RCPT. :class:`MilterClient` sends them over a blocking socket
and reads the answers a filter owes (OPTNEG and RCPT; CONNECT, HELO and MAIL only when
the filter did not ask for "no reply").
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Mapping

from relaypolicy.errors import ProtocolError
from relaypolicy.milter.protocol import (
    MILTER_VERSION,
    SMFIC_CONNECT,
    SMFIC_HELO,
    SMFIC_MACRO,
    SMFIC_MAIL,
    SMFIC_OPTNEG,
    SMFIC_QUIT,
    SMFIC_RCPT,
    SMFIP_NR_CONN,
    SMFIP_NR_HELO,
    SMFIP_NR_MAIL,
    encode_packet,
)

__all__ = ["POSTFIX_PROTOCOL", "MilterClient", "connect_packet", "macro_packet", "optneg"]

# What Postfix 3.7 offers: every SMFIP_* step and "no reply" bit of version 6.
POSTFIX_PROTOCOL = 0x1FFFFF
POSTFIX_ACTIONS = 0x1FF


def optneg(version: int = MILTER_VERSION, protocol: int = POSTFIX_PROTOCOL) -> bytes:
    """The MTA's ``O`` packet."""
    return encode_packet(SMFIC_OPTNEG, struct.pack(">III", version, POSTFIX_ACTIONS, protocol))


def macro_packet(stage: bytes, macros: Mapping[str, str]) -> bytes:
    """A ``D`` packet for ``stage`` (a command letter)."""
    data = b"".join(
        name.encode() + b"\0" + value.encode() + b"\0" for name, value in macros.items()
    )
    return encode_packet(SMFIC_MACRO, stage + data)


def connect_packet(address: str, port: int = 40000, host: str = "unknown") -> bytes:
    """A ``C`` packet for an IPv4 or IPv6 client (``U`` family when ``address`` is empty)."""
    if not address:
        return encode_packet(SMFIC_CONNECT, host.encode() + b"\0U")
    family = b"6" if ":" in address else b"4"
    return encode_packet(
        SMFIC_CONNECT,
        host.encode() + b"\0" + family + struct.pack(">H", port) + address.encode() + b"\0",
    )


def _string(command: bytes, *args: str) -> bytes:
    return encode_packet(command, b"".join(arg.encode() + b"\0" for arg in args))


class MilterClient:
    """A blocking milter client speaking for one SMTP session at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""
        self.sock.sendall(optneg())
        command, data = self.read()
        if command != SMFIC_OPTNEG or len(data) < 12:
            raise ProtocolError(f"expected OPTNEG, got {command!r}")
        self.version, self.actions, self.protocol = struct.unpack(">III", data[:12])

    @classmethod
    def connect(cls, host: str, port: int, timeout: float = 10.0) -> MilterClient:
        return cls(socket.create_connection((host, port), timeout=timeout))

    def read(self) -> tuple[bytes, bytes]:
        """One packet from the filter: its command letter and data."""
        while True:
            if len(self._buffer) >= 4:
                (length,) = struct.unpack(">I", self._buffer[:4])
                if len(self._buffer) >= 4 + length:
                    packet = self._buffer[4 : 4 + length]
                    self._buffer = self._buffer[4 + length :]
                    return packet[:1], packet[1:]
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the filter closed the connection")
            self._buffer += chunk

    def session(
        self,
        client: str,
        helo: str = "client.example",
        macros: Mapping[str, str] | None = None,
    ) -> None:
        """CONNECT and HELO, with the connect-stage ``macros``."""
        connect_macros = {"j": "mx.example", "{daemon_name}": "mx.example", **(macros or {})}
        self._send(
            macro_packet(SMFIC_CONNECT, connect_macros) + connect_packet(client), SMFIP_NR_CONN
        )
        self._send(_string(SMFIC_HELO, helo), SMFIP_NR_HELO)

    def mail(self, sender: str, macros: Mapping[str, str] | None = None) -> None:
        """MAIL FROM with the mail-stage ``macros``."""
        packet = macro_packet(SMFIC_MAIL, {"i": "", **(macros or {})})
        self._send(packet + _string(SMFIC_MAIL, f"<{sender}>"), SMFIP_NR_MAIL)

    def rcpt(self, recipient: str, macros: Mapping[str, str] | None = None) -> tuple[bytes, bytes]:
        """RCPT TO; the filter's answer (``c``, or ``y`` with the reply line)."""
        packet = macro_packet(SMFIC_RCPT, {"{rcpt_addr}": recipient, **(macros or {})})
        self.sock.sendall(packet + _string(SMFIC_RCPT, f"<{recipient}>"))
        return self.read()

    def _send(self, packets: bytes, no_reply: int) -> None:
        self.sock.sendall(packets)
        if not self.protocol & no_reply:
            self.read()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(encode_packet(SMFIC_QUIT))
        self.sock.close()
