"""Compare a live Postfix with a relaypolicy configuration, question by question.

Theory of operation
-------------------
The questions are the relay probe battery (:mod:`relaypolicy.testing.probes`) for the
configuration's domains plus :func:`recipient_corpus`: mail for the local and relay
domains (their subdomains, case, a trailing dot, the postmaster), routing whose every hop
is ours, the server's address literal, internationalised names and syntax that a lenient
parser repairs. Each is sent to Postfix over SMTP from every client address given, exactly
as ``relaypolicy audit --smtp`` does (``MAIL FROM``, ``RCPT TO``, never ``DATA``), and
asked of the configuration's policy in process with the same facts: client address, EHLO
name, sender, recipient, server port, TLS and login. On a TLS port (``STARTTLS`` on 587,
implicit TLS on 465) the requests say the session is encrypted (``encryption_protocol``),
as Postfix's own ``smtpd`` knows it is.

Each pair of answers is one :class:`Row`, of a ``kind``:

- ``same``: both accept, or both refuse with the same reply code;
- ``stricter``: Postfix accepts, relaypolicy refuses;
- ``looser``: relaypolicy accepts what Postfix refuses (a deferral included) -- the one
  kind that must not happen;
- ``code``: both refuse, with different reply codes (``454`` against ``554``, ``501``
  against ``554``...);
- ``postfix-only``: relaypolicy accepts what Postfix refuses with a check that is not a
  relay restriction and stays in Postfix after the switch to ``check_policy_service``: its
  address parser or resolver (``501 5.1.3 ... Bad recipient address syntax``, whatever
  the client, before and beside the restriction lists) or its recipient tables
  (``550 5.1.1 ... User unknown``, for one of our domains). With relaypolicy as the gate
  Postfix still gives that answer, so this is no relay;
- ``not sent``: Postfix could not be asked (SMTPUTF8 not offered, CR or LF).
"""

from __future__ import annotations

import ipaddress
import smtplib
import ssl
from collections.abc import Sequence
from typing import Any, NamedTuple

from relaypolicy.config import Config
from relaypolicy.domains import DomainError, normalize_domain
from relaypolicy.errors import AuditError
from relaypolicy.model import Decision, Verdict
from relaypolicy.settings import parse_host_port
from relaypolicy.testing.audit import (
    AuditResult,
    SmtpSession,
    TlsMode,
    audit_policy,
    audit_smtp,
)
from relaypolicy.testing.probes import Probe, probe_battery
from relaypolicy.testing.report import format_table

__all__ = [
    "KINDS",
    "Login",
    "Row",
    "classify",
    "compare",
    "compare_table",
    "parse_host_port",
    "recipient_corpus",
]

KINDS = ("looser", "stricter", "code", "postfix-only", "not sent", "same")
# smtpd's parser and address resolver, not a restriction list: "501 5.1.3 Bad recipient
# address syntax", or "501 5.1.3 <rcpt>: Recipient address rejected: Bad recipient ..."
_BAD_SYNTAX = "Bad recipient address syntax"
_UNKNOWN_USER = ("User unknown in", "Recipient address rejected: User unknown")

# name, recipient; {local} a local domain, {other} another (or the same), {ip} the server's
# address literal, {LOCAL} upper case. Relay templates need {relay}.
# fmt: off
_CORPUS = (
    ("local-plain", "user@{local}"),
    ("local-upper-case", "USER@{LOCAL}"),
    ("local-trailing-dot", "user@{local}."),
    ("local-postmaster", "Postmaster@{local}"),
    ("local-subdomain", "user@sub.{local}"),
    ("local-as-prefix", "user@{local}.example"),
    ("postmaster-bare", "postmaster"),
    ("unqualified", "user"),
    ("routing-percent-ours", "user%{other}@{local}"),
    ("routing-bang-ours", "{other}!user@{local}"),
    ("routing-quoted-ours", '"user@{other}"@{local}'),
    ("routing-second-at-ours", "user@{other}@{local}"),
    ("routing-domainless-percent-ours", "user%{local}"),
    ("routing-domainless-bang-ours", "{local}!user"),
    ("routing-domainless-quoted-ours", '"user@{local}"'),
    ("routing-route-then-quoted-ours", '@aho.jp:"user@{local}"'),
    ("source-route-to-ours", "@aho.jp:user@{local}"),
    ("literal-server", "user@{ip}"),
    ("syntax-no-local-part", "@{local}"),
    ("syntax-backslash", "us\\er@{local}"),
    ("syntax-comment", "user(comment)@{local}"),
    ("syntax-space-before-at", "user @{local}"),
    ("syntax-quoted-domain", 'user@"{local}"'),
    ("syntax-stray-semicolon", "user@{local};"),
    ("syntax-stray-bracket", "user@{local}>"),
    ("syntax-route-outside-brackets", "@aho.jp:<user@{local}>"),
    ("syntax-long-local-part", "u" * 65 + "@{local}"),
    ("syntax-double-at", "user@@{local}"),
    ("syntax-leading-dash", "-user@{local}"),
    ("syntax-underscore", "user@a_b.{local}"),
    ("syntax-empty-label", "user@{local}..x"),
    ("idn-unicode-below-ours", "user@例え.{local}"),
    ("idn-mailbox", "ユーザー@{local}"),
)
_RELAY_CORPUS = (
    ("relay-plain", "user@{relay}"),
    ("relay-upper-case", "USER@{RELAY}"),
    ("relay-subdomain", "user@mx.{relay}"),
    ("relay-deep-subdomain", "user@a.b.{relay}"),
    ("relay-trailing-dot", "user@{relay}."),
    ("relay-postmaster", "postmaster@{relay}"),
    ("relay-via-local-percent", "user%{relay}@{local}"),
    ("relay-glued", "user@x{relay}"),
)
# fmt: on


def _literal(ip: str) -> str:
    address = ipaddress.ip_address(ip)
    return f"[IPv6:{address.compressed}]" if address.version == 6 else f"[{address}]"


def recipient_corpus(
    local_domains: Sequence[str], relay_domains: Sequence[str], server_ip: str
) -> list[Probe]:
    """The corpus for a server with these domains, as probes with the null sender.

    Names start ``corpus:``; the IDN entries of every internationalised domain listed
    (both its U-label and A-label forms) are added.
    """
    names = [d for d in local_domains if not d.startswith("[")] or ["localhost"]
    values = {
        "local": names[0].rstrip("."),
        "LOCAL": names[0].rstrip(".").upper(),
        "other": names[1 if len(names) > 1 else 0].rstrip("."),
        "ip": _literal(server_ip),
    }
    entries = [(name, text.format(**values)) for name, text in _CORPUS]
    for relay in relay_domains[:1]:
        relayed = {**values, "relay": relay.rstrip("."), "RELAY": relay.rstrip(".").upper()}
        entries += [(name, text.format(**relayed)) for name, text in _RELAY_CORPUS]
    for domain in [*local_domains, *relay_domains]:
        try:
            ace = normalize_domain(domain)
        except DomainError:
            continue
        if ace == domain.lower().rstrip(".") and "xn--" not in ace:
            continue  # a plain ASCII name
        unicode_form = ace.encode("ascii").decode("idna")
        entries += [
            (f"idn-a-label:{ace}", f"user@{ace}"),
            (f"idn-u-label:{ace}", f"user@{unicode_form}"),
        ]
    return [Probe(f"corpus:{name}", "corpus", recipient, "") for name, recipient in entries]


class Row(NamedTuple):
    """One question asked from one client: Postfix's answer, relaypolicy's, the kind."""

    client: str
    probe: Probe
    postfix: AuditResult
    decision: Decision
    kind: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "name": self.probe.name,
            "sender": self.probe.sender,
            "recipient": self.probe.recipient,
            "postfix": self.postfix.reply
            if self.postfix.stage != "MAIL"
            else f"MAIL: {self.postfix.reply}",
            "postfix_code": self.postfix.code,
            "relaypolicy": str(self.decision),
            "relaypolicy_code": self.decision.code,
            "policy": self.decision.policy,
            "reason": self.decision.reason,
            "kind": self.kind,
        }


def classify(postfix: AuditResult, decision: Decision) -> str:
    """The kind of one pair of answers (see the module's docstring)."""
    if postfix.stage == "not sent":
        return "not sent"
    ours = decision.verdict is Verdict.ACCEPT
    if postfix.accepted:
        return "same" if ours else "stricter"
    if ours:
        if (
            postfix.stage == "RCPT"
            and postfix.reply.startswith("501 5.1.3 ")
            and (postfix.reply.endswith(_BAD_SYNTAX))
        ):
            return "postfix-only"
        unknown = postfix.code == 550 and any(text in postfix.reply for text in _UNKNOWN_USER)
        if unknown and decision.reason in ("local", "relay-domain"):
            return "postfix-only"
        return "looser"
    return "same" if postfix.code == decision.code else "code"


class Login(NamedTuple):
    """SMTP AUTH credentials for the session (``AUTH PLAIN``, after TLS if asked)."""

    user: str
    password: str


class _LoginSession(SmtpSession):
    """An audit session that logs in after EHLO (and TLS), so the questions are
    asked as an authenticated client; the in-process requests carry the same login."""

    login: Login

    def connect(self) -> smtplib.SMTP:
        smtp = super().connect()
        try:
            smtp.login(self.login.user, self.login.password)
        except smtplib.SMTPException as exc:
            smtp.close()
            raise AuditError(f"{self.host}:{self.port}: AUTH as {self.login.user}: {exc}") from None
        return smtp


def _ask_smtp(
    host: str,
    port: int,
    probes: Sequence[Probe],
    *,
    client: str,
    helo: str,
    tls: TlsMode,
    tls_context: ssl.SSLContext | None,
    login: Login | None,
    timeout: float,
) -> list[AuditResult]:
    if login is None:
        return audit_smtp(
            host,
            port,
            probes,
            source_address=client,
            helo=helo,
            tls=tls,
            tls_context=tls_context,
            timeout=timeout,
        )
    session = _LoginSession(
        host,
        port,
        source_address=client,
        helo=helo,
        tls=tls,
        tls_context=tls_context,
        timeout=timeout,
    )
    session.login = login
    try:
        session.connect()
        return [session.ask(probe) for probe in probes]
    finally:
        session.close()


def compare(
    config: Config,
    host: str,
    port: int,
    clients: Sequence[str],
    *,
    server_port: int | None = None,
    server_ip: str | None = None,
    helo: str = "client.relaypolicy.test",
    tls: TlsMode = "none",
    tls_context: ssl.SSLContext | None = None,
    login: Login | None = None,
    extra: Sequence[Probe] = (),
    timeout: float = 30.0,
) -> list[Row]:
    """Ask Postfix at ``host:port`` and ``config``'s policy everything, from each client.

    ``server_port`` is the port relaypolicy is told (default ``port``); ``server_ip`` the
    server's address for the literal probes (default ``host``, which must then be an IP
    address). With ``tls`` (``"starttls"``: upgraded after ``EHLO``; ``"implicit"``: TLS
    from the first byte, port 465) the session is encrypted and the requests say so
    (``encryption_protocol``); with ``login`` it authenticates and the requests carry the
    login (``sasl_username``). Raises :class:`~relaypolicy.errors.AuditError` when Postfix
    cannot be asked. ``extra`` questions are asked after the battery and the corpus.
    """
    if config.default is Verdict.NEXT:
        raise ValueError(
            f'{config.source}: chain.otherwise = "next" leaves decisions to Postfix: there '
            "is nothing to compare (compare the gate relaypolicy would be, with reject)"
        )
    local = list(config.local_domains)
    relays = list(config.relay_domains)
    if not local and not relays:
        raise ValueError(f"{config.source}: no local or relay domain to ask about")
    server_ip = server_ip or host
    # The battery for one local domain (the others are local alike; the corpus names a
    # second one), its relay probes for every relay domain.
    probes = probe_battery((local or relays)[:1], relay_domains=relays, server_ip=server_ip)
    probes += recipient_corpus(local or relays[:1], relays, server_ip)
    probes += extra
    policy = config.build_policy(config.make_pop_table(load=False))
    rows: list[Row] = []
    for client in clients:
        answers = _ask_smtp(
            host,
            port,
            probes,
            client=client,
            helo=helo,
            tls=tls,
            tls_context=tls_context,
            login=login,
            timeout=timeout,
        )
        decisions = audit_policy(
            policy,
            probes,
            client_address=client,
            server_port=server_port or port,
            helo_name=helo,
            encryption_protocol="" if tls == "none" else "TLS",
            sasl_method="PLAIN" if login else "",
            sasl_username=login.user if login else "",
        )
        for postfix, ours in zip(answers, decisions, strict=True):
            assert ours.decision is not None
            rows.append(
                Row(client, postfix.probe, postfix, ours.decision, classify(postfix, ours.decision))
            )
    return rows


def summary(rows: Sequence[Row]) -> str:
    """``N questions: k looser, ...``: the count of each kind that occurred."""
    counts = [f"{sum(r.kind == kind for r in rows)} {kind}" for kind in KINDS]
    looser = sum(r.kind == "looser" for r in rows)
    verdict = "relaypolicy is LOOSER than Postfix" if looser else "relaypolicy is nowhere looser"
    return f"{verdict}: {len(rows)} questions; {', '.join(counts)}"


def compare_table(rows: Sequence[Row]) -> str:
    """One line per row: client, probe, RCPT TO, Postfix's reply, relaypolicy's, kind."""
    return format_table(
        ("kind", "client", "probe", "rcpt to", "postfix", "relaypolicy"),
        [
            (
                row.kind,
                row.client,
                row.probe.name,
                f"<{row.probe.recipient}>",
                row.as_dict()["postfix"],
                f"{row.decision} [{row.decision.policy}: {row.decision.reason}]",
            )
            for row in sorted(rows, key=lambda r: KINDS.index(r.kind))
        ],
    )
