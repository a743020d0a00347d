"""OpenSMTPD's filter protocol (``smtpd-filters(7)``), sans I/O.

Theory of operation
-------------------
``smtpd`` starts a ``proc-exec`` filter at start-up and talks to it in lines on the
filter's standard input and output (one socket: both are the same ``AF_UNIX`` stream). It
first sends its configuration, ``config|KEY|VALUE`` lines ending with ``config|ready``; the
filter answers with what it wants, ``register|report|smtp-in|EVENT`` and
``register|filter|smtp-in|PHASE`` lines ending with ``register|ready``
(:func:`registration`). From then on ``smtpd`` writes:

- report events, one-way, which the filter uses to follow each session::

      report|VERSION|TIME|smtp-in|EVENT|SESSION|PARAMETERS...

- filter requests, which wait for an answer before the session moves on::

      filter|VERSION|TIME|smtp-in|PHASE|SESSION|TOKEN|PARAMETERS...

  answered with ``filter-result|SESSION|TOKEN|proceed`` or
  ``filter-result|SESSION|TOKEN|reject|CODE TEXT`` (:func:`encode_result`).

relaypolicy follows ``link-connect`` (the client and server addresses),
``link-identify`` (HELO/EHLO), ``link-auth`` (the SMTP AUTH login, when ``pass``),
``link-tls`` (protocol and cipher), ``tx-begin``/``tx-mail``/``tx-reset`` (the sender)
and ``link-disconnect`` (the session is forgotten), and answers the ``rcpt-to`` filter
requests: the recipient is the parameter, the rest comes from the session (a
:class:`SessionFacts` per session, at most ``max_sessions`` of them; the oldest is dropped
when a new one would pass the bound, and a request for it then gets a temporary failure).

Protocol versions (the second field of every report and filter line), from OpenSMTPD's
``usr.sbin/smtpd/lka_filter.c`` (``PROTOCOL_VERSION``) and ``smtpd-filters.7``:

- ``0.6``: OpenSMTPD 6.7 to 7.3 (6.8.0p2 is Debian 12's). ``link-auth`` is
  ``USERNAME|RESULT``.
- ``0.7``: OpenSMTPD 7.4 and later (commit 0a125ccc, "swap link-auth filter arguments",
  2023): ``link-auth`` is ``RESULT|USERNAME`` (the field that may hold a ``|`` comes
  last). From 7.6 the handshake also carries ``config|protocol|0.7`` (commit 461475ea).

Both read a ``filter-result`` as ``filter-result|SESSION|TOKEN|...``: session first, then
token (``lka_filter_process_response`` parses the session id first in 6.7 to 7.8; only
0.4, OpenSMTPD 6.6, read the token first). A line of another version is not guessed at: a
filter request in it is answered with a temporary failure, a report in it is ignored.

Fail closed: a line that cannot be read, a request of an unknown version, a request for a
session that was never reported (or was dropped) or whose client is not an IP address
(``unix:`` local submissions) is answered with a ``451`` -- never with ``proceed``. A
malformed line whose session and token can still be read gets its answer; one whose
cannot is reported (:class:`Problem`) and left to ``smtpd``'s own timeout.

Input limits: a line longer than :data:`MAX_LINE` is dropped as it arrives (its start kept
to identify the request); ``smtpd`` itself caps an SMTP command at ``SMTP_LINE_MAX``
(65535 octets, ``smtp_session.c``). Answers are cut to fit ``smtpd``'s response buffer
(``LINE_MAX``, 2048 octets in 6.8).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from relaypolicy.errors import ProtocolError
from relaypolicy.model import Decision, Request, Verdict
from relaypolicy.opensmtpd.session import SessionFacts, parse_endpoint
from relaypolicy.replies import CANNOT_EVALUATE, NO_CLIENT_ADDRESS, Reply
from relaypolicy.text import log_safe, reply_safe

__all__ = [
    "MAX_LINE",
    "MAX_SESSIONS",
    "REPORT_EVENTS",
    "VERSIONS",
    "FilterCodec",
    "Problem",
    "ProtocolError",
    "Query",
    "SessionFacts",
    "Write",
    "encode_result",
    "parse_endpoint",
    "registration",
]

MAX_LINE = 65536 + 1024  # SMTP_LINE_MAX (65535) plus the protocol prefix
MAX_SESSIONS = 10_000
VERSIONS = ("0.6", "0.7")
# The answer must fit smtpd's response buffer (char buffer[LINE_MAX], 2048, in 6.8).
_MAX_REPLY_TEXT = 512
# What we keep of an over-long line: enough for the prefix up to the token.
_HEAD = 256
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f]")  # C0 controls but TAB, and DEL

# The report events relaypolicy follows (smtpd-filters(7) "REPORT EVENTS").
REPORT_EVENTS = (
    "link-connect",
    "link-identify",
    "link-auth",
    "link-tls",
    "link-disconnect",
    "tx-begin",
    "tx-mail",
    "tx-reset",
)
FILTER_PHASES = ("rcpt-to",)


def registration() -> bytes:
    """The filter's answer to ``config|ready``: the events and phases it wants."""
    lines = [f"register|report|smtp-in|{event}" for event in REPORT_EVENTS]
    lines += [f"register|filter|smtp-in|{phase}" for phase in FILTER_PHASES]
    lines.append("register|ready")
    return ("\n".join(lines) + "\n").encode()


def encode_result(session: str, token: str, decision: Decision | Reply) -> bytes:
    """The ``filter-result`` line for one decision.

    ACCEPT is ``proceed`` (``smtpd``'s own ``match`` rules then route the recipient);
    REJECT and DEFER (and a bare :class:`~relaypolicy.replies.Reply`, for the refusals
    the codec makes itself) are ``reject|CODE STATUS TEXT``, the text made safe for a
    reply and cut to fit ``smtpd``'s buffer. NEXT is not an answer the front end sends:
    it turns it into a refusal first (see :mod:`relaypolicy.daemon.opensmtpd`); given
    here it is a temporary failure, never a ``proceed``.
    """
    if isinstance(decision, Decision):
        if decision.verdict is Verdict.ACCEPT:
            return f"filter-result|{session}|{token}|proceed\n".encode()
        if decision.verdict is Verdict.NEXT or not 400 <= decision.code <= 599:
            code, status, text = CANNOT_EVALUATE
        else:
            code, status, text = decision.code, decision.status, decision.text
    else:
        code, status, text = decision
    safe = reply_safe(text, _MAX_REPLY_TEXT)
    return f"filter-result|{session}|{token}|reject|{code} {status} {safe}\n".encode()


class Write(NamedTuple):
    """Bytes to send to ``smtpd`` now (the registration, a refusal the codec made)."""

    data: bytes


class Query(NamedTuple):
    """A ``rcpt-to`` request to decide: answer with :func:`encode_result`."""

    session: str
    token: str
    request: Request


class Problem(NamedTuple):
    """Something wrong with the stream, for the log and the counters.

    ``kind``: ``malformed`` (a line that cannot be read), ``version`` (a protocol version
    relaypolicy does not speak), ``no-session`` (a request for a session never reported
    or dropped), ``no-client`` (no IP address for the client), ``sessions-full`` (the
    oldest session dropped to make room), ``unexpected`` (a filter phase relaypolicy did
    not register).
    """

    kind: str
    message: str


Event = Write | Query | Problem


def _is_hex_id(text: str) -> bool:
    return 0 < len(text) <= 16 and all(c in "0123456789abcdef" for c in text)


class FilterCodec:
    """The protocol state of one filter process: the handshake, the sessions, the framing.

    Feed it what ``smtpd`` wrote with :meth:`receive_data`; it returns the events found
    (:class:`Write`, :class:`Query`, :class:`Problem`) and keeps a partial line. It never
    raises on input: a bad line is a :class:`Problem` (and a refusal when it was a
    request). :attr:`config` holds the ``config|`` keys; :attr:`ready` is set once
    ``config|ready`` was answered.
    """

    __slots__ = (
        "_buffer",
        "_discarding",
        "config",
        "max_line",
        "max_sessions",
        "ready",
        "sessions",
        "versions_seen",
    )

    def __init__(self, *, max_line: int = MAX_LINE, max_sessions: int = MAX_SESSIONS) -> None:
        if max_line < _HEAD or max_sessions < 1:
            raise ValueError("max_line must be at least 256 and max_sessions at least 1")
        self.max_line = max_line
        self.max_sessions = max_sessions
        self.config: dict[str, str] = {}
        self.ready = False
        self.sessions: dict[str, SessionFacts] = {}
        self.versions_seen: set[str] = set()
        self._buffer = bytearray()
        self._discarding: bytes | None = None  # the head of an over-long line

    # --- framing ----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """The events in ``data`` (and what was kept of earlier chunks)."""
        events: list[Event] = []
        buffer = self._buffer
        buffer += data
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if self._discarding is not None:
                if end < 0:
                    break
                head, self._discarding = self._discarding, None
                start = end + 1
                self._too_long(head, events)
                continue
            if end < 0:
                if len(buffer) - start > self.max_line:
                    self._discarding = bytes(buffer[start : start + _HEAD])
                    start = len(buffer)
                break
            if end - start > self.max_line:
                self._too_long(bytes(buffer[start : start + _HEAD]), events)
            else:
                self._line(bytes(buffer[start:end]), events)
            start = end + 1
        del buffer[:start]
        return events

    def _too_long(self, head: bytes, events: list[Event]) -> None:
        message = f"line longer than {self.max_line} octets: {_preview(head, 60)}"
        self._malformed(head.decode("utf-8", "replace").split("|"), message, events)

    def _line(self, raw: bytes, events: list[Event]) -> None:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._malformed(
                raw.decode("utf-8", "replace").split("|"), "not UTF-8: " + _preview(raw), events
            )
            return
        fields = line.split("|")
        if _CONTROL.search(line) is not None:
            # smtpd's lines carry none (a CR is only ever the end of a CRLF line): one here
            # is damage or a smuggled field, never a recipient to decide on.
            self._malformed(fields, "control character in line: " + _preview(raw), events)
            return
        kind = fields[0]
        try:
            if kind == "filter":
                self._filter(fields, events)
            elif kind == "report":
                self._report(fields, events)
            elif kind == "config":
                self._config(fields, events)
            else:
                raise ProtocolError(f"unknown line type {log_safe(kind[:40])!r}")
        except ProtocolError as exc:
            self._malformed(fields, f"{exc}: {_preview(raw)}", events)

    def _malformed(self, fields: list[str], message: str, events: list[Event]) -> None:
        """Report a bad line; when it is a filter request whose session and token can be
        read, refuse it for now (``smtpd`` waits for an answer)."""
        events.append(Problem("malformed", message))
        if len(fields) >= 7 and fields[0] == "filter":
            session, token = fields[5], fields[6]
            if _is_hex_id(session) and _is_hex_id(token):
                events.append(Write(encode_result(session, token, CANNOT_EVALUATE)))

    # --- the three kinds of lines -----------------------------------------------------

    def _config(self, fields: list[str], events: list[Event]) -> None:
        if fields == ["config", "ready"]:
            if self.ready:
                raise ProtocolError("config|ready twice")
            self.ready = True
            events.append(Write(registration()))
            return
        if len(fields) < 3:
            raise ProtocolError("config line without a value")
        self.config[fields[1]] = "|".join(fields[2:])

    def _version(self, fields: list[str], events: list[Event]) -> bool:
        version = fields[1]
        if version in VERSIONS:
            self.versions_seen.add(version)
            return True
        events.append(Problem("version", f"protocol version {log_safe(version[:20])!r} unknown"))
        return False

    def _filter(self, fields: list[str], events: list[Event]) -> None:
        # filter|VERSION|TIME|smtp-in|PHASE|SESSION|TOKEN|PARAMETER (which may hold '|')
        if len(fields) < 8:
            raise ProtocolError("filter request with fewer than 8 fields")
        subsystem, phase, session, token = fields[3], fields[4], fields[5], fields[6]
        if not (_is_hex_id(session) and _is_hex_id(token)):
            raise ProtocolError("filter request without a hex session and token")
        if not self.ready:
            raise ProtocolError("filter request before the handshake")
        if subsystem != "smtp-in" or phase not in FILTER_PHASES:
            events.append(
                Problem("unexpected", f"filter request {log_safe(subsystem)}/{log_safe(phase)}")
            )
            events.append(Write(encode_result(session, token, CANNOT_EVALUATE)))
            return
        if not self._version(fields, events):
            events.append(Write(encode_result(session, token, CANNOT_EVALUATE)))
            return
        facts = self.sessions.get(session)
        if facts is None:
            events.append(Problem("no-session", f"rcpt-to for unknown session {session}"))
            events.append(Write(encode_result(session, token, NO_CLIENT_ADDRESS)))
            return
        # lka_filter.c (filter_protocol) sends what lies between the first '<' and the
        # first '>' of the RCPT TO argument: the recipient as the client wrote it.
        recipient = "|".join(fields[7:])
        try:
            request = facts.request(recipient)
        except ValueError as exc:
            events.append(Problem("no-client", f"session {session}: {exc}"))
            events.append(Write(encode_result(session, token, NO_CLIENT_ADDRESS)))
            return
        events.append(Query(session, token, request))

    def _report(self, fields: list[str], events: list[Event]) -> None:
        # report|VERSION|TIME|smtp-in|EVENT|SESSION[|PARAMETERS]
        if len(fields) < 6:
            raise ProtocolError("report with fewer than 6 fields")
        subsystem, event, session = fields[3], fields[4], fields[5]
        if not _is_hex_id(session):
            raise ProtocolError("report without a hex session id")
        if subsystem != "smtp-in" or not self._version(fields, events):
            return
        parameters = fields[6:]
        if event == "link-connect":
            self._connect(session, parameters, events)
            return
        if event == "link-disconnect":
            self.sessions.pop(session, None)
            return
        facts = self.sessions.get(session)
        if facts is None:
            return  # a session we dropped, or connected before we started
        if event == "link-identify":
            # METHOD|IDENTITY: the identity is the last field and may hold '|'.
            if len(parameters) < 2:
                raise ProtocolError("link-identify without method and identity")
            facts.helo_name = "|".join(parameters[1:])
        elif event == "link-auth":
            self._auth(facts, fields[1], parameters)
        elif event == "link-tls":
            tls = "|".join(parameters).split(":")
            facts.encryption_protocol = tls[0]
            facts.encryption_cipher = tls[1] if len(tls) > 1 else ""
        elif event in ("tx-begin", "tx-reset"):
            facts.sender = ""
        elif event == "tx-mail":
            # MSGID|RESULT|ADDRESS (0.6 and 0.7; the address last).
            if len(parameters) < 3:
                raise ProtocolError("tx-mail without message id, result and address")
            facts.sender = "|".join(parameters[2:]) if parameters[1] == "ok" else ""

    def _connect(self, session: str, parameters: list[str], events: list[Event]) -> None:
        # RDNS|FCRDNS|SRC|DEST
        if len(parameters) != 4:
            raise ProtocolError("link-connect without rdns, fcrdns, source and destination")
        rdns, fcrdns, source, destination = parameters
        client = parse_endpoint(source)
        server = parse_endpoint(destination)
        facts = SessionFacts(
            client_address=client[0] if client else "",
            client_port=client[1] if client else 0,
            server_address=server[0] if server else "",
            server_port=server[1] if server else 0,
            client_name=rdns if fcrdns == "pass" else "",
        )
        sessions = self.sessions
        sessions.pop(session, None)
        while len(sessions) >= self.max_sessions:
            oldest = next(iter(sessions))
            del sessions[oldest]
            events.append(
                Problem("sessions-full", f"{self.max_sessions} sessions open; forgot {oldest}")
            )
        sessions[session] = facts

    @staticmethod
    def _auth(facts: SessionFacts, version: str, parameters: list[str]) -> None:
        if len(parameters) < 2:
            raise ProtocolError("link-auth without result and username")
        if version == "0.6":  # USERNAME|RESULT; a '|' can only be the username's
            result, username = parameters[-1], "|".join(parameters[:-1])
        else:  # RESULT|USERNAME
            result, username = parameters[0], "|".join(parameters[1:])
        if result not in ("pass", "fail", "error"):
            raise ProtocolError(f"link-auth result {log_safe(result[:20])!r}")
        facts.sasl_username = username if result == "pass" else ""


def _preview(raw: bytes, limit: int = 80) -> str:
    return log_safe(raw[:limit].decode("utf-8", "replace")) + ("..." if len(raw) > limit else "")
