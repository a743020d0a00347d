"""The Exim socket protocol, sans I/O: one request line in, one answer line out.

Theory of operation
-------------------
Exim's RCPT ACL asks with ``${readsocket{SOCKET}{REQUEST}{TIMEOUT}{}{}}``: it connects,
writes the request, half-closes (readsocket's default ``shutdown``) and reads the answer
until the server closes. The request is one line::

    v1 client_address=MTI3LjAuMC4x helo_name=bWFpbC5leGFtcGxlLm9yZw== rcpt=PHVzZXJAbG9jYWwudGVzdD4=

``v1``, then ``name=value`` words separated by white space, ended by LF. Every value is
Exim's ``${str2b64:...}`` of one variable: base64 (RFC 4648 section 4, with padding), so
whatever the variable holds -- newlines, ``=``, spaces, braces, backslashes, bytes that
are not ASCII -- it can neither end the line nor start another field. This is why the
protocol is not Postfix's ``name=value`` lines: there, a user name from ``AUTH`` that
contains ``\\nclient_address=10.0.0.1`` would be a second attribute unless every value
were cleaned by the ACL, and one forgotten expansion would be an injection. Here the ACL
encodes, relaypolicy decodes, and a value cannot escape its field by construction.

The fields are :data:`FIELDS`: Postfix's policy attribute names (the fields of
:class:`~relaypolicy.model.Request`), plus ``rcpt``, the argument of ``RCPT TO`` exactly
as the client sent it (Exim's ``$smtp_command_argument``: the path in its angle brackets,
then any ESMTP parameters), from which :func:`rcpt_path` takes the path unchanged --
``"user@other"@local.test`` and ``user%other@local.test`` reach the policy as written,
not as Exim's ``$local_part@$domain`` (which drops quotes, source routes and case).

Refused (:class:`~relaypolicy.errors.ProtocolError`; the server answers a ``defer``):
a line longer than :data:`MAX_LINE`, another version, a word without ``=``, an unknown or
repeated name, a value that is not canonical base64, not UTF-8 or holds a NUL, a request
without ``rcpt``, and bytes after the last line when the client closes. A missing or
empty ``client_address`` is not a protocol error but cannot be judged: the front end
answers ``defer 451 4.3.5`` (:data:`~relaypolicy.replies.NO_CLIENT_ADDRESS`).

The answer is one line the ACL compares with ``eq`` and ``match``:

- ``accept`` -- the recipient may be accepted;
- ``deny 554 5.7.1 <text>`` -- refuse, with our code, enhanced status and text;
- ``defer 451 4.3.0 <text>`` -- refuse for now;
- ``next`` -- no opinion: the rest of the ACL decides.

Anything else the ACL reads -- an empty string (no answer in time, connection refused),
a cut or garbled line -- is a deferral: the ACL in ``docs/exim.md`` tests for the four
forms and defers otherwise.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable, Mapping

from relaypolicy.errors import ProtocolError
from relaypolicy.model import Decision, Request, Verdict
from relaypolicy.text import reply_safe

__all__ = [
    "FIELDS",
    "MAX_LINE",
    "VERSION",
    "EximConnection",
    "EximProtocolError",
    "EximRequest",
    "encode_answer",
    "encode_request",
    "rcpt_path",
]

VERSION = b"v1"
# A request from Exim is at most a few kilobytes: its SMTP command buffer is 16 KiB by
# default (smtp_cmd_buffer_size), and base64 adds a third.
MAX_LINE = 64 * 1024
# Each answer text is cut to this many characters (an SMTP reply line is 512 octets).
MAX_TEXT = 400

# Request fields taken from the field of the same name (Postfix's attribute names).
REQUEST_FIELDS = (
    "client_address",
    "client_port",
    "client_name",
    "helo_name",
    "server_address",
    "server_port",
    "sasl_method",
    "sasl_username",
    "encryption_protocol",
    "encryption_cipher",
    "ccert_subject",
    "ccert_fingerprint",
    "ccert_pubkey_fingerprint",
    "sender",
)
#: The names a request may carry: the Request fields, and ``rcpt`` (required).
FIELDS = frozenset((*REQUEST_FIELDS, "rcpt"))

# Exim says "0" for a port it does not know ($sender_host_port of a local submission),
# and "-1" for $received_port in a host-checking session (exim -bh).
_NO_PORT = frozenset({"", "0", "-1"})


class EximProtocolError(ProtocolError):
    """A :class:`ProtocolError` that also carries the requests completed before the bad
    line (in the same chunk of bytes): they are answered before the refusal."""

    def __init__(self, message: str, completed: list[EximRequest]) -> None:
        super().__init__(message)
        self.completed = completed


class EximRequest:
    """One decoded request: its fields (names from :data:`FIELDS`), ``rcpt`` among them."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields

    @property
    def recipient(self) -> str:
        """The path of the ``RCPT TO`` argument, as sent (see :func:`rcpt_path`)."""
        return rcpt_path(self.fields["rcpt"])

    def to_request(self) -> Request:
        """The :class:`Request` these fields describe.

        Raises :class:`ValueError` naming the field for a client address that is missing
        or not an IP address, or a port that is not a number: such a request is answered
        with a deferral, never decided.
        """
        get = self.fields.get
        client_port = get("client_port", "")
        server_port = get("server_port", "")
        cipher = get("encryption_cipher", "")
        # Exim's $tls_in_ver names the protocol; a cipher without it still means TLS.
        protocol = get("encryption_protocol", "") or ("TLS" if cipher else "")
        return Request(
            client_address=get("client_address", ""),
            recipient=self.recipient,
            sender=get("sender", ""),
            helo_name=get("helo_name", ""),
            client_name=get("client_name", ""),
            client_port=0 if client_port in _NO_PORT else client_port,
            server_address=get("server_address", ""),
            server_port=0 if server_port in _NO_PORT else server_port,
            sasl_method=get("sasl_method", ""),
            sasl_username=get("sasl_username", ""),
            encryption_protocol=protocol,
            encryption_cipher=cipher,
            ccert_subject=get("ccert_subject", ""),
            ccert_fingerprint=get("ccert_fingerprint", ""),
            ccert_pubkey_fingerprint=get("ccert_pubkey_fingerprint", ""),
        )

    def __repr__(self) -> str:
        return f"EximRequest({self.fields!r})"


def rcpt_path(argument: str) -> str:
    """The path of a ``RCPT TO`` argument (RFC 5321 section 4.1.1.3), unchanged.

    ``<path> PARAMS`` gives what is between the angle brackets: the first ``>`` outside
    a quoted string (where ``\\`` escapes the next character) closes it, so
    ``<"a>b"@local.test> NOTIFY=NEVER`` gives ``"a>b"@local.test``. An argument without
    the brackets (Exim takes ``RCPT TO:user@example.org``) gives its first word, quoted
    strings kept whole. An opening ``<`` that is never closed gives the argument as it
    is, which no policy accepts as an address.
    """
    text = argument.strip(" \t")
    bracketed = text.startswith("<")
    quoted = False
    escaped = False
    start = 1 if bracketed else 0
    for index in range(start, len(text)):
        char = text[index]
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif bracketed and char == ">":
            return text[1:index]
        elif not bracketed and char in " \t":
            return text[:index]
    return text


def _decode(name: str, value: bytes) -> str:
    try:
        raw = binascii.a2b_base64(value, strict_mode=True)
    except binascii.Error:
        raise ProtocolError(f"field {name}: not base64: {_preview(value)}") from None
    if b"\x00" in raw:
        raise ProtocolError(f"field {name}: NUL byte in the value")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"field {name}: the value is not UTF-8") from None


def parse_line(line: bytes) -> EximRequest:
    """One request line (without its LF); raises :class:`ProtocolError`."""
    words = line.split()
    if not words:
        raise ProtocolError("empty request line")
    if words[0] != VERSION:
        raise ProtocolError(f"unsupported request version {_preview(words[0])} (expected v1)")
    fields: dict[str, str] = {}
    for word in words[1:]:
        name_bytes, equals, value = word.partition(b"=")
        name = name_bytes.decode("ascii", "replace")
        if not equals:
            raise ProtocolError(f"word without '=': {_preview(word)}")
        if name not in FIELDS:
            raise ProtocolError(f"unknown field {_preview(name_bytes)}")
        if name in fields:
            raise ProtocolError(f"field {name} given twice")
        fields[name] = _decode(name, value)
    if "rcpt" not in fields:
        raise ProtocolError("request without rcpt")
    return EximRequest(fields)


class EximConnection:
    """The protocol state of one connection: LF-ended request lines, each parsed.

    ``readsocket`` sends one line and half-closes; a client of its own may send several,
    each answered in turn. After a :class:`ProtocolError` the connection is ``failed``:
    the server answers that one deferral and closes.
    """

    __slots__ = ("_buffer", "failed", "max_line")

    def __init__(self, *, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buffer = bytearray()
        self.failed: str | None = None

    @property
    def in_request(self) -> bool:
        """Whether part of a line has arrived without its LF."""
        return bool(self._buffer)

    def receive_data(self, data: bytes) -> list[EximRequest]:
        """Feed bytes; the requests whose lines they complete. Raises
        :class:`EximProtocolError` (with the requests completed before the bad line)."""
        if self.failed is not None:
            raise EximProtocolError(f"connection already failed: {self.failed}", [])
        completed: list[EximRequest] = []
        try:
            self._receive(data, completed)
        except ProtocolError as exc:
            self.failed = str(exc)
            raise EximProtocolError(str(exc), completed) from None
        return completed

    def receive_eof(self) -> None:
        """The client half-closed; raises :class:`ProtocolError` for a line left without LF."""
        if self.failed is None and self._buffer:
            self.failed = f"connection closed in the middle of a line ({len(self._buffer)} bytes)"
            raise ProtocolError(self.failed)

    def _receive(self, data: bytes, completed: list[EximRequest]) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        try:
            while (end := buffer.find(b"\n", start)) != -1:
                if end - start > self.max_line:
                    break
                line = bytes(buffer[start:end])
                start = end + 1
                completed.append(parse_line(line))
        finally:
            del buffer[:start]
        line_end = buffer.find(b"\n")
        if (line_end if line_end != -1 else len(buffer)) > self.max_line:
            raise ProtocolError(f"line longer than {self.max_line} bytes")


def _preview(raw: bytes, limit: int = 40) -> str:
    text = raw[:limit].decode("utf-8", "backslashreplace")
    return repr(text + ("..." if len(raw) > limit else ""))


def encode_answer(decision: Decision) -> bytes:
    """The answer line for a decision: ``accept``, ``next``, ``deny CODE STATUS TEXT`` or
    ``defer CODE STATUS TEXT`` (the text printable ASCII, at most :data:`MAX_TEXT`
    characters, so Exim can put it in its reply as it is)."""
    verdict = decision.verdict
    if verdict is Verdict.ACCEPT:
        return b"accept\n"
    if verdict is Verdict.NEXT:
        return b"next\n"
    word = "deny" if verdict is Verdict.REJECT else "defer"
    text = reply_safe(decision.text, MAX_TEXT) or "-"
    return f"{word} {decision.code} {decision.status} {text}\n".encode("ascii")


def encode_request(fields: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
    """The request line the ACL sends for ``fields`` (for clients, tests and benchmarks:
    Exim builds the same bytes with ``${str2b64:...}``)."""
    items = fields.items() if isinstance(fields, Mapping) else fields
    words = [VERSION]
    for name, value in items:
        if name not in FIELDS:
            raise ValueError(f"unknown field {name!r}")
        words.append(
            name.encode("ascii") + b"=" + binascii.b2a_base64(value.encode(), newline=False)
        )
    return b" ".join(words) + b"\n"
