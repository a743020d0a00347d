"""Postfix's SMTP access policy delegation protocol, sans I/O.

Theory of operation
-------------------
Postfix (``check_policy_service``, see SMTPD_POLICY_README) writes a request as
``name=value`` lines, one attribute per line, and ends it with an empty line; the policy
server answers ``action=...`` and an empty line. A connection carries many requests, one
after the other. Attribute order is free, unknown attributes are ignored, a repeated name
keeps its last value, and a missing value may be absent, empty or ``0``.

:class:`PolicyConnection` is the state of one connection. Feed it bytes with
:meth:`~PolicyConnection.receive_data`; it returns the complete requests (as
:class:`PolicyRequest`) found so far and keeps any partial line. Encode an answer with
:func:`encode_action`. It never touches a socket, so the asyncio server in
:mod:`relaypolicy.postfix.server` is a thin loop around it and the tests feed it bytes.

Bad input raises :class:`ProtocolError`; the connection is then unusable (``failed``) and
the server closes it without answering, as the protocol expects (Postfix logs the error
and applies its ``default_action``). The limits below keep one hostile or broken peer from
costing more than a bounded amount of memory.

Two parsers, one grammar. A request that arrives whole (the common case: Postfix writes
it in one piece, LF line ends) is parsed in one pass over the block up to its empty line:
decode once, split into lines, split each at its first ``=``. Anything that pass is not
sure about -- a partial request, CR, NUL, an over-long line, bytes that are not UTF-8, a
line without ``=`` or a name, too many attributes, another request type -- goes to the
line-at-a-time parser from the first line of that request. That parser is the reference:
it names the first problem in the stream, and it checks every complete line as soon as it
arrives, so a broken line is refused without waiting for the end of its request. The
one-pass parser only accepts what the line parser accepts, with the same attributes.

"First" is in stream order, whatever the chunks: a line is too long at its byte
``max_line + 1``, a request too large at its byte ``max_request + 1``, and when one line
crosses both limits the error names the one it crossed first, whether the line is
complete or still partial at the end of a chunk. Problems with a line's content (NUL,
``=``, UTF-8) are seen when its LF arrives, after the limits of that line.
"""

from __future__ import annotations

from typing import NoReturn

from relaypolicy.errors import ProtocolError
from relaypolicy.model import Decision, Request, Verdict
from relaypolicy.text import reply_safe

__all__ = [
    "MAX_ATTRIBUTES",
    "MAX_LINE",
    "MAX_REQUEST",
    "POSTFIX_ATTRIBUTES",
    "PolicyConnection",
    "PolicyRequest",
    "ProtocolError",
    "encode_action",
]

MAX_LINE = 8 * 1024
MAX_REQUEST = 64 * 1024
MAX_ATTRIBUTES = 1000

# Request fields fed from the Postfix attribute of the same name (Postfix 3.7 set).
POSTFIX_ATTRIBUTES = (
    "client_address",
    "recipient",
    "sender",
    "helo_name",
    "client_name",
    "client_port",
    "server_address",
    "server_port",
    "sasl_method",
    "sasl_username",
    "encryption_protocol",
    "encryption_cipher",
    "ccert_subject",
    "ccert_fingerprint",
    "ccert_pubkey_fingerprint",
)
# Postfix sends "unknown" or nothing when it does not know; for these fields that is empty.
_UNKNOWN = frozenset({"", "unknown"})


class PolicyRequest:
    """One complete request: its attributes, decoded, last value of a name winning."""

    __slots__ = ("attributes",)

    def __init__(self, attributes: dict[str, str]) -> None:
        self.attributes = attributes

    @property
    def protocol_state(self) -> str:
        """``RCPT``, ``MAIL``, ``DATA``, ... (upper case), ``""`` if absent."""
        return self.attributes.get("protocol_state", "").upper()

    def to_request(self) -> Request:
        """The :class:`Request` these attributes describe.

        Raises :class:`ValueError` (naming the field) for a client address that is not an
        IP address, as Postfix sends for some local submissions (``unknown``); the server
        answers such requests with its configured action for unusable requests.
        """
        get = self.attributes.get
        client_port = get("client_port", "")
        server_port = get("server_port", "")
        server_address = get("server_address", "")
        client_name = get("client_name", "")
        return Request(
            client_address=get("client_address", ""),
            recipient=get("recipient", ""),
            sender=get("sender", ""),
            helo_name=get("helo_name", ""),
            client_name="" if client_name == "unknown" else client_name,
            client_port=0 if client_port in _UNKNOWN else client_port,
            server_address="" if server_address in _UNKNOWN else server_address,
            server_port=0 if server_port in _UNKNOWN else server_port,
            sasl_method=get("sasl_method", ""),
            sasl_username=get("sasl_username", ""),
            encryption_protocol=get("encryption_protocol", ""),
            encryption_cipher=get("encryption_cipher", ""),
            ccert_subject=get("ccert_subject", ""),
            ccert_fingerprint=get("ccert_fingerprint", ""),
            ccert_pubkey_fingerprint=get("ccert_pubkey_fingerprint", ""),
        )

    def __repr__(self) -> str:
        return f"PolicyRequest({self.attributes!r})"


class PolicyConnection:
    """The protocol state of one connection; see the module docstring."""

    __slots__ = (
        "_attributes",
        "_buffer",
        "_request_size",
        "failed",
        "max_attributes",
        "max_line",
        "max_request",
    )

    def __init__(
        self,
        *,
        max_line: int = MAX_LINE,
        max_request: int = MAX_REQUEST,
        max_attributes: int = MAX_ATTRIBUTES,
    ) -> None:
        self.max_line = max_line
        self.max_request = max_request
        self.max_attributes = max_attributes
        self._buffer = bytearray()
        self._attributes: dict[str, str] = {}
        self._request_size = 0
        self.failed: str | None = None

    @property
    def in_request(self) -> bool:
        """Whether a request has started and not ended (bytes are pending)."""
        return bool(self._buffer) or bool(self._attributes) or self._request_size > 0

    def receive_data(self, data: bytes) -> list[PolicyRequest]:
        """Feed bytes; get the requests completed by them. Raises :class:`ProtocolError`."""
        if self.failed is not None:
            raise ProtocolError(f"connection already failed: {self.failed}")
        try:
            return self._receive(data)
        except ProtocolError as exc:
            self.failed = str(exc)
            raise

    def _receive(self, data: bytes) -> list[PolicyRequest]:
        buffer = self._buffer
        buffer += data
        completed: list[PolicyRequest] = []
        start = 0
        while True:
            if not self._request_size:  # at the first line of a request
                whole = self._whole_request(buffer, start)
                if whole is not None:
                    completed.append(whole[0])
                    start = whole[1]
                    continue
            end = buffer.find(b"\n", start)
            if end == -1:
                break
            line = bytes(buffer[start:end])
            start = end + 1
            request = self._line(line)
            if request is not None:
                completed.append(request)
        del buffer[:start]
        size = self._request_size + len(buffer)
        if len(buffer) > self.max_line or size > self.max_request:
            self._over_limit(len(buffer), size)  # the partial line is over a limit already
        return completed

    def _over_limit(self, length: int, size: int) -> NoReturn:
        """Raise for the limit crossed first, in stream order, by the current line (which
        is over at least one of them).

        ``length`` is the line's length so far without its LF, ``size`` the request's
        size with it (and with the LF once it has come). The line limit is crossed at the
        line's byte ``max_line + 1``, the request limit at the request's byte
        ``max_request + 1``; the one that comes first in the stream is named (the line
        limit on a tie), so the message does not depend on where the stream was cut.
        """
        if length > self.max_line and (
            size <= self.max_request or self._request_size + self.max_line <= self.max_request
        ):
            raise ProtocolError(f"line longer than {self.max_line} bytes")
        raise ProtocolError(f"request larger than {self.max_request} bytes")

    def _whole_request(self, buffer: bytearray, start: int) -> tuple[PolicyRequest, int] | None:
        """The request starting at ``start`` and where the next begins, parsed in one pass.

        ``None`` when the buffer does not hold a whole LF-only request there or when the
        request has anything the line parser would refuse or read differently: the line
        parser then takes it from its first line.
        """
        end = buffer.find(b"\n\n", start)
        if end == -1 or end - start + 2 > self.max_request:
            return None
        block = bytes(buffer[start:end])  # the attribute lines, without the last LF
        if b"\r" in block or b"\x00" in block:
            return None
        if len(block) > self.max_line and max(map(len, block.split(b"\n"))) > self.max_line:
            return None
        try:
            lines = block.decode("utf-8").split("\n")
        except UnicodeDecodeError:
            return None
        attributes: dict[str, str] = {}
        for line in lines:
            name, equals, value = line.partition("=")
            if not equals:
                return None
            attributes[name] = value
        if (
            "" in attributes
            or len(attributes) > self.max_attributes
            or attributes.get("request") != "smtpd_access_policy"
            or not (block.isascii() or all(name.isascii() for name in attributes))
        ):
            return None
        return PolicyRequest(attributes), end + 2

    def _line(self, raw: bytes) -> PolicyRequest | None:
        size = self._request_size + len(raw) + 1
        if len(raw) > self.max_line or size > self.max_request:
            self._over_limit(len(raw), size)
        self._request_size = size
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw:
            return self._end_of_request()
        if b"\x00" in raw:
            raise ProtocolError("NUL byte in attribute line")
        name_bytes, equals, value_bytes = raw.partition(b"=")
        if not equals:
            raise ProtocolError(f"attribute line without '=': {_preview(raw)}")
        if not name_bytes:
            raise ProtocolError(f"attribute line without a name: {_preview(raw)}")
        try:
            name = name_bytes.decode("ascii")
            value = value_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"attribute is not valid UTF-8: {_preview(raw)}") from None
        attributes = self._attributes
        if name not in attributes and len(attributes) >= self.max_attributes:
            raise ProtocolError(f"request has more than {self.max_attributes} attributes")
        attributes[name] = value
        return None

    def _end_of_request(self) -> PolicyRequest:
        attributes = self._attributes
        self._attributes = {}
        self._request_size = 0
        if not attributes:
            raise ProtocolError("empty request")
        kind = attributes.get("request")
        if kind != "smtpd_access_policy":
            raise ProtocolError(f"unsupported request type {kind!r}")
        return PolicyRequest(attributes)


def _preview(raw: bytes, limit: int = 60) -> str:
    text = raw[:limit].decode("utf-8", "backslashreplace")
    return repr(text + ("..." if len(raw) > limit else ""))


def encode_action(action: str) -> bytes:
    """The bytes of one reply: ``action=...`` and the empty line."""
    if "\n" in action or "\r" in action or "\x00" in action:
        raise ValueError("an action must be one line")
    return f"action={action}\n\n".encode()


def decision_action(decision: Decision, *, accept_action: str = "OK", recipient: str = "") -> str:
    """The Postfix action for a decision.

    ACCEPT -> ``OK`` (or ``DUNNO`` when relaypolicy only permits and Postfix's own
    restrictions follow); NEXT -> ``DUNNO``; REJECT and DEFER -> ``<code> <status> <text>``.
    Postfix prefixes the text of a rejection with ``<recipient>: Recipient address
    rejected:``, so a text that starts with the bracketed recipient loses that start
    rather than naming it twice.
    """
    verdict = decision.verdict
    if verdict is Verdict.ACCEPT:
        return accept_action
    if verdict is Verdict.NEXT:
        return "DUNNO"
    text = decision.text
    if recipient:
        bracketed = recipient if recipient.startswith("<") else f"<{recipient}>"
        if text.startswith(bracketed + ": "):
            text = text[len(bracketed) + 2 :]
    return f"{decision.code} {decision.status} {reply_safe(text, ascii_only=False)}"
