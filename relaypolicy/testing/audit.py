"""The relay audit: the relay-abuse battery against a policy, or over SMTP against a server.

Theory of operation
-------------------
In process (:func:`audit_policy`), each probe becomes a :class:`~relaypolicy.Request` from
an untrusted client and the policy's decision is the result. Over SMTP
(:func:`audit_smtp`), one session asks every probe: ``EHLO`` (``STARTTLS`` and ``EHLO``
again when asked; or, on an implicit-TLS port such as 465, the TLS handshake before the
greeting, RFC 8314 section 3), then per probe ``RSET``, ``MAIL FROM``, ``RCPT TO``, and the reply to
``RCPT`` is the result. ``DATA`` is never sent, so no message can leave, whatever the
server answers; the session ends with ``QUIT``. A server that hangs up (``421``, or after
too many errors) is reconnected. A probe whose ``MAIL FROM`` is refused is refused; one
that needs SMTPUTF8 on a server without it is not sent.

A probe is *accepted* when ``RCPT`` gets a 2xx reply. A 4xx reply is not acceptance, but a
greylisting server may accept later, so deferred probes are counted in the summary.
Audit only servers you run.

A server that accepts most of the battery, the plainly foreign recipients included
(:func:`looks_trusted`), is an open relay *or* trusts the address the audit came from:
Postfix's ``mynetworks`` (``permit_mynetworks``) or relaypolicy's ``networks.trusted``
relay anything for it, by design. The summary then says so (:func:`summary`'s ``hint``),
since the user most likely audited from the wrong address.
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
from collections.abc import Iterable, Sequence
from typing import Any, Literal, NamedTuple

from relaypolicy.errors import AuditError
from relaypolicy.model import Decision, Verdict
from relaypolicy.policies.base import Policy
from relaypolicy.testing.assertions import DEFAULT_CLIENT, probe_policy
from relaypolicy.testing.probes import Probe
from relaypolicy.testing.report import JUnitCase, format_table

__all__ = [
    "TLS_MODES",
    "AuditError",
    "AuditResult",
    "SmtpSession",
    "TlsMode",
    "audit_policy",
    "audit_smtp",
    "audit_table",
    "junit_cases",
    "looks_trusted",
    "summary",
]

MAX_RECONNECTS = 3

TlsMode = Literal["none", "starttls", "implicit"]
"""How a session is encrypted: not at all, upgraded with ``STARTTLS`` after ``EHLO``
(RFC 3207), or from the first byte (implicit TLS, RFC 8314 section 3: ``submissions``,
port 465, Postfix's ``smtpd_tls_wrappermode = yes``)."""
TLS_MODES: tuple[TlsMode, ...] = ("none", "starttls", "implicit")

# nmap's first four probes: ``relaytest@FOREIGN`` with no routing trick at all. A server
# accepts them only when it relays for this client unconditionally.
PLAIN_FOREIGN_PROBES = frozenset({"nmap-01", "nmap-02", "nmap-03", "nmap-04"})


class AuditResult(NamedTuple):
    """One probe and what the server (or policy) answered.

    ``stage`` is ``RCPT`` (the answer to RCPT TO), ``MAIL`` (MAIL FROM was refused, RCPT
    was not asked) or ``not sent``. ``decision`` is set in process only.
    """

    probe: Probe
    stage: str
    code: int
    reply: str
    decision: Decision | None = None

    @property
    def accepted(self) -> bool:
        if self.decision is not None:
            return self.decision.verdict is Verdict.ACCEPT
        return self.stage == "RCPT" and 200 <= self.code < 300

    @property
    def result(self) -> str:
        """``ACCEPTED``, ``refused``, ``deferred``, ``no opinion`` or ``not sent``."""
        if self.accepted:
            return "ACCEPTED"
        if self.stage == "not sent":
            return "not sent"
        if self.decision is not None and self.decision.verdict is Verdict.NEXT:
            return "no opinion"
        if 400 <= self.code < 500:
            return "deferred"
        return "refused" if self.stage == "RCPT" else f"refused at {self.stage}"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping."""
        data: dict[str, Any] = {
            "name": self.probe.name,
            "why": self.probe.why,
            "sender": self.probe.sender,
            "recipient": self.probe.recipient,
            "stage": self.stage,
            "code": self.code,
            "reply": self.reply,
            "result": self.result,
            "accepted": self.accepted,
        }
        if self.decision is not None:
            data["policy"] = self.decision.policy
            data["reason"] = self.decision.reason
        return data


def audit_policy(
    policy: Policy,
    probes: Iterable[Probe],
    *,
    client_address: str = DEFAULT_CLIENT,
    **request_fields: Any,
) -> list[AuditResult]:
    """Ask ``policy`` about every probe, in process; nothing is sent anywhere."""
    return [
        AuditResult(
            outcome.probe, "RCPT", outcome.decision.code, str(outcome.decision), outcome.decision
        )
        for outcome in probe_policy(policy, probes, client_address=client_address, **request_fields)
    ]


def _reply(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return f"{code} {text}".replace("\n", " ").strip()


class SmtpSession:
    """One SMTP client session that asks probes; reconnects when the server hangs up.

    ``tls`` is the :data:`TlsMode`: ``implicit`` connects with :class:`smtplib.SMTP_SSL`
    (the handshake before the greeting), ``starttls`` upgrades after ``EHLO``; both verify
    the certificate with ``tls_context`` (default: the system's trust store).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        source_address: str | None,
        helo: str | None,
        tls: TlsMode,
        tls_context: ssl.SSLContext | None,
        timeout: float,
    ) -> None:
        if tls not in TLS_MODES:
            raise ValueError(f"tls: expected one of {', '.join(TLS_MODES)}, got {tls!r}")
        self.host = host
        self.port = port
        self.source_address = source_address
        self.helo = helo
        self.tls = tls
        self.tls_context = tls_context
        self.timeout = timeout
        self.smtp: smtplib.SMTP | None = None

    def connect(self) -> smtplib.SMTP:
        where = f"{self.host}:{self.port}"
        source = (self.source_address, 0) if self.source_address else None
        try:
            if self.tls == "implicit":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    self.host,
                    self.port,
                    local_hostname=self.helo,
                    timeout=self.timeout,
                    source_address=source,
                    context=self.tls_context or ssl.create_default_context(),
                )
            else:
                smtp = smtplib.SMTP(
                    self.host,
                    self.port,
                    local_hostname=self.helo,
                    timeout=self.timeout,
                    source_address=source,
                )
        except smtplib.SMTPConnectError as exc:
            raise AuditError(
                f"{where}: refused the connection: {_reply(exc.smtp_code, exc.smtp_error)}"
            ) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise AuditError(f"{where}: cannot connect: {exc}") from None
        try:
            code, text = smtp.ehlo()
            if code != 250:
                raise AuditError(f"{where}: EHLO refused: {_reply(code, text)}")
            if self.tls == "starttls":
                if not smtp.has_extn("starttls"):
                    raise AuditError(f"{where}: STARTTLS is not offered")
                context = self.tls_context or ssl.create_default_context()
                code, text = smtp.starttls(context=context)
                code, text = smtp.ehlo()
                if code != 250:
                    raise AuditError(f"{where}: EHLO after STARTTLS refused: {_reply(code, text)}")
        except AuditError:
            smtp.close()
            raise
        except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
            smtp.close()
            raise AuditError(f"{where}: {exc}") from None
        self.smtp = smtp
        return smtp

    def ask(self, probe: Probe) -> AuditResult:
        if any(char in probe.recipient + probe.sender for char in "\r\n"):
            return AuditResult(probe, "not sent", 0, "CR and LF cannot be sent in a command")
        for _attempt in range(MAX_RECONNECTS):
            smtp = self.smtp or self.connect()
            if probe.smtputf8 and not smtp.has_extn("smtputf8"):
                return AuditResult(probe, "not sent", 0, "the server does not offer SMTPUTF8")
            smtp.command_encoding = "utf-8" if probe.smtputf8 else "ascii"
            options = " SMTPUTF8" if probe.smtputf8 else ""
            try:
                smtp.docmd("RSET")
                code, text = smtp.docmd("MAIL", f"FROM:<{probe.sender}>{options}")
                if code == 421:
                    raise smtplib.SMTPServerDisconnected(_reply(code, text))
                if not 200 <= code < 300:
                    return AuditResult(probe, "MAIL", code, _reply(code, text))
                code, text = smtp.docmd("RCPT", f"TO:<{probe.recipient}>")
                if code == 421:
                    raise smtplib.SMTPServerDisconnected(_reply(code, text))
            except (smtplib.SMTPServerDisconnected, ConnectionError, TimeoutError):
                self.drop()
                continue
            return AuditResult(probe, "RCPT", code, _reply(code, text))
        raise AuditError(
            f"{self.host}:{self.port}: the server hung up {MAX_RECONNECTS} times on probe "
            f"{probe.name}"
        )

    def drop(self) -> None:
        if self.smtp is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                self.smtp.close()
            self.smtp = None

    def close(self) -> None:
        if self.smtp is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                self.smtp.docmd("RSET")  # forget the last envelope before leaving
                self.smtp.quit()
        self.drop()


def audit_smtp(
    host: str,
    port: int,
    probes: Iterable[Probe],
    *,
    source_address: str | None = None,
    helo: str | None = None,
    tls: TlsMode = "none",
    tls_context: ssl.SSLContext | None = None,
    timeout: float = 30.0,
) -> list[AuditResult]:
    """Send every probe to the SMTP server at ``host:port``; never DATA.

    ``source_address`` is the local address to connect from (audit as an outsider from a
    server that trusts some networks); ``helo`` the EHLO name (default: this machine's
    name); ``tls="starttls"`` upgrades the session first, ``tls="implicit"`` speaks TLS
    from the start (port 465), verifying the certificate with ``tls_context`` (default:
    the system's trust store). Raises :class:`AuditError` when
    the audit cannot run.
    """
    session = SmtpSession(
        host,
        port,
        source_address=source_address,
        helo=helo,
        tls=tls,
        tls_context=tls_context,
        timeout=timeout,
    )
    try:
        session.connect()
        return [session.ask(probe) for probe in probes]
    finally:
        session.close()


def looks_trusted(results: Sequence[AuditResult]) -> bool:
    """Whether the results look like a client the server trusts: more than half of the
    probes accepted, and every plainly foreign one (``user@foreign``, no trick) among them.

    A policy that only falls for some routing trick accepts a few probes, never the plain
    ones; ``permit_mynetworks`` (or an open relay) accepts them all.
    """
    plain = [r for r in results if r.probe.name.rsplit(":", 1)[-1] in PLAIN_FOREIGN_PROBES]
    accepted = sum(result.accepted for result in results)
    return bool(plain) and all(r.accepted for r in plain) and 2 * accepted > len(results)


def summary(results: Sequence[AuditResult], hint: str = "") -> str:
    """``not an open relay: 0/N probes accepted`` or ``OPEN RELAY: k/N probes accepted``,
    with the deferred, undecided and unsent probes counted after it, then ``hint`` (what
    the caller knows about why: the client may be trusted)."""
    accepted = sum(result.accepted for result in results)
    line = (
        f"OPEN RELAY: {accepted}/{len(results)} probes accepted"
        if accepted
        else f"not an open relay: 0/{len(results)} probes accepted"
    )
    notes = []
    for result_name, note in (
        ("deferred", "deferred with 4xx (a greylisting server may accept them later)"),
        ("no opinion", "without an opinion (NEXT: the MTA's own restrictions decide)"),
        ("not sent", "not sent"),
    ):
        count = sum(result.result == result_name for result in results)
        if count:
            notes.append(f"{count} {note}")
    if hint:
        notes.append(hint)
    return line + (f"; {'; '.join(notes)}" if notes else "")


def audit_table(results: Sequence[AuditResult]) -> str:
    """One row per probe: name, MAIL FROM, RCPT TO, reply, result."""
    rows = [
        (
            result.probe.name,
            f"<{result.probe.sender}>",
            f"<{result.probe.recipient}>",
            result.reply if result.stage != "MAIL" else f"MAIL: {result.reply}",
            result.result,
        )
        for result in results
    ]
    return format_table(("probe", "mail from", "rcpt to", "reply", "result"), rows)


def junit_cases(results: Sequence[AuditResult], classname: str) -> list[JUnitCase]:
    """One test case per probe; an accepted probe is a failure."""
    cases = []
    for result in results:
        probe = result.probe
        details = (
            f"MAIL FROM:<{probe.sender}> RCPT TO:<{probe.recipient}> -> "
            f"{result.reply or result.stage}\nwhy: {probe.why}"
        )
        failure = f"accepted: {result.reply}" if result.accepted else None
        cases.append(JUnitCase(probe.name, classname, failure, details))
    return cases
