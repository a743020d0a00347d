"""What one ``RCPT TO`` becomes: a :class:`Recipient` event, and its :class:`Request`.

Part of the milter codec (:mod:`relaypolicy.milter.codec`, whose docstring is the theory
of operation): the state machine snapshots the session into a :class:`Recipient` at each
``R`` packet; :meth:`Recipient.to_request` maps it, with Sendmail's and Postfix's macros
(``{daemon_addr}``, ``{auth_authen}``, ``{tls_version}``...), to what a policy reads.
Here too: how an MTA writes an address (``IPv6:`` in front, brackets around) and an
envelope mailbox (angle brackets), cleaned the same way for CONNECT, macros and RCPT.
"""

from __future__ import annotations

from collections.abc import Mapping

from relaypolicy.model import Request

__all__ = ["Recipient"]


class Recipient:
    """One ``RCPT TO`` and the session it belongs to: what :meth:`to_request` needs.

    ``client_address`` is empty when the MTA sent no usable one (a ``U`` family at
    CONNECT and no ``{client_addr}`` macro): the caller must then refuse for now.
    """

    __slots__ = (
        "client_address",
        "client_name",
        "client_port",
        "helo",
        "macros",
        "recipient",
        "sender",
        "server_port",
    )

    def __init__(
        self,
        *,
        client_address: str,
        client_name: str,
        client_port: int,
        helo: str,
        sender: str,
        recipient: str,
        macros: Mapping[str, str],
        server_port: int,
    ) -> None:
        self.client_address = client_address
        self.client_name = client_name
        self.client_port = client_port
        self.helo = helo
        self.sender = sender
        self.recipient = recipient
        self.macros = macros
        self.server_port = server_port

    def to_request(self) -> Request:
        """The :class:`Request`; :class:`ValueError` (naming the field) for a client
        address that is missing or not an IP address, or a port out of range."""
        macro = self.macros.get
        return Request(
            client_address=self.client_address,
            client_port=self.client_port,
            client_name=self.client_name,
            server_address=_address(macro("daemon_addr", "")),
            server_port=self.server_port,
            helo_name=self.helo,
            sender=self.sender,
            recipient=self.recipient,
            sasl_username=macro("auth_authen", ""),
            sasl_method=macro("auth_type", ""),
            encryption_protocol=macro("tls_version", ""),
            encryption_cipher=macro("cipher", ""),
            ccert_subject=macro("cert_subject", ""),
        )

    def __repr__(self) -> str:
        return (
            f"Recipient(client_address={self.client_address!r}, recipient={self.recipient!r}, "
            f"sender={self.sender!r})"
        )


def _address(text: str) -> str:
    """An address as an MTA writes it: Sendmail puts ``IPv6:`` in front, some put
    brackets around."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    return text


def _mailbox(text: str) -> str:
    """An envelope address without its angle brackets (``<>`` is the null sender)."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        return text[1:-1]
    return text
