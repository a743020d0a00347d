"""One SMTP session as OpenSMTPD's report events describe it: :class:`SessionFacts`, and
:func:`parse_endpoint` for the addresses of ``link-connect``. The codec
(:mod:`relaypolicy.opensmtpd.codec`, whose docstring explains the protocol) keeps one per
session and turns it into a :class:`~relaypolicy.model.Request` at each ``rcpt-to``.
"""

from __future__ import annotations

from relaypolicy.errors import ProtocolError
from relaypolicy.model import Request
from relaypolicy.text import log_safe

__all__ = ["SessionFacts", "parse_endpoint"]


def parse_endpoint(text: str) -> tuple[str, int] | None:
    """The address and port of a ``link-connect`` source or destination.

    ``127.0.0.1:25`` and ``[2001:db8::1]:25`` (``lka_report_smtp_link_connect``:
    ``ss_to_text`` brackets IPv6) give ``(address, port)``; ``unix:/path`` (a local
    submission through ``smtpd``'s socket) gives ``None``: it has no client address.
    Raises :class:`ProtocolError` for anything else.
    """
    if text.startswith("unix:"):
        return None
    host, colon, port = text.rpartition(":")
    if not colon or not port.isascii() or not port.isdigit() or len(port) > 5:
        raise ProtocolError(f"not an address:port: {log_safe(text)}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or int(port) > 65535:
        raise ProtocolError(f"not an address:port: {log_safe(text)}")
    return host, int(port)


class SessionFacts:
    """What the report events said about one SMTP session."""

    __slots__ = (
        "client_address",
        "client_name",
        "client_port",
        "encryption_cipher",
        "encryption_protocol",
        "helo_name",
        "sasl_username",
        "sender",
        "server_address",
        "server_port",
    )

    def __init__(
        self,
        client_address: str,
        client_port: int,
        server_address: str,
        server_port: int,
        client_name: str,
    ) -> None:
        self.client_address = client_address  # "" for a unix-socket submission
        self.client_port = client_port
        self.server_address = server_address
        self.server_port = server_port
        self.client_name = client_name
        self.helo_name = ""
        self.sasl_username = ""
        self.encryption_protocol = ""
        self.encryption_cipher = ""
        self.sender = ""

    def request(self, recipient: str) -> Request:
        """The :class:`Request` for ``recipient`` in this session; :class:`ValueError`
        when the client address is not an IP address."""
        return Request(
            client_address=self.client_address,
            client_port=self.client_port,
            server_address=self.server_address,
            server_port=self.server_port,
            client_name=self.client_name,
            helo_name=self.helo_name,
            sasl_username=self.sasl_username,
            encryption_protocol=self.encryption_protocol,
            encryption_cipher=self.encryption_cipher,
            sender=self.sender,
            recipient=recipient,
        )
