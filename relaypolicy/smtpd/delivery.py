"""Where ``relaypolicy smtpd`` puts the mail it accepted: Maildirs and the smarthost.

:class:`MaildirDelivery` is an ordinary aiosmtpd handler with a ``handle_DATA``; the relay
control in front of it is :class:`relaypolicy.aiosmtpd.RelayPolicyHandler`, which only lets
recipients through that the policy accepted.

- A recipient in a local domain (or a domainless ``postmaster``) that is a listed mailbox
  gets the message in its own Maildir, ``<maildir>/<domain>/<local part>/`` (local part
  lower-cased; anything but letters, digits and ``_.-~`` percent-encoded, and a leading
  dot too, so no name can climb out of the tree or pose as a Maildir++ folder), with
  ``Return-Path`` and ``Delivered-To`` added. Any other local recipient goes to the one
  catch-all Maildir when there is one, and is refused at RCPT otherwise, in Postfix's
  words (``local_recipient_maps``): ``550 5.1.1 <rcpt>: Recipient address rejected: User
  unknown in local recipient table``. So the directories are the configured ones: a
  client cannot make one per address it invents.
- Every other accepted recipient is being relayed: with a smarthost the message is
  forwarded to it (plain SMTP, STARTTLS on request) before the client gets its answer,
  so a smarthost that is down or says 4xx becomes ``451 4.4.1`` and the client retries;
  a 5xx becomes ``554 5.4.0`` with the smarthost's reply. There is no queue and no
  bounce: recipients the smarthost refuses one by one while it takes others are logged
  and the message is kept for them in the outgoing Maildir. Without a smarthost, relayed
  mail is kept in the outgoing Maildir, with ``X-Relaypolicy-Recipient`` headers.

Relayed mail is forwarded first and delivered locally after, so a smarthost failure
leaves nothing delivered twice when the client retries.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import mailbox
import smtplib
import ssl
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from relaypolicy.address import parse_address
from relaypolicy.aiosmtpd import tls_facts
from relaypolicy.domains import DomainSet
from relaypolicy.replies import (
    DELIVERED,
    LOCAL_DELIVERY_FAILED,
    NO_SMTPUTF8_AT_SMARTHOST,
    NON_ASCII_WITHOUT_SMTPUTF8,
    OK,
    SMARTHOST_BUSY,
    SMARTHOST_REFUSED,
    SMARTHOST_REFUSED_ALL,
    SMARTHOST_UNREACHABLE,
    USER_UNKNOWN,
)
from relaypolicy.text import reply_safe

__all__ = ["MaildirDelivery", "mailbox_name", "user_unknown"]

log = logging.getLogger("relaypolicy.smtpd")
SMARTHOST_TIMEOUT = 60.0


def mailbox_name(text: str) -> str:
    """A file name for a domain or local part that cannot leave its directory."""
    name = urllib.parse.quote(text.lower(), safe="")
    if name.startswith("."):
        name = "%2E" + name[1:]
    return name[:200] or "_"


def user_unknown(recipient: str) -> str:
    """Postfix's refusal of a local address that no mailbox answers to."""
    return f"{USER_UNKNOWN.code} {USER_UNKNOWN.status} {USER_UNKNOWN.about(recipient)}"


def _header_safe(text: str) -> str:
    return reply_safe(text)


class MaildirDelivery:
    """Deliver local recipients into Maildirs, relay the others (see the module doc)."""

    def __init__(
        self,
        *,
        maildir: Path,
        outgoing: Path,
        local_domains: Iterable[str],
        hostname: str,
        smarthost: tuple[str, int] | None = None,
        smarthost_starttls: bool = False,
        mailboxes: Iterable[tuple[str, str]] = (),
        catch_all: Path | None = None,
    ) -> None:
        self.maildir = Path(maildir)
        self.mailboxes = frozenset(mailboxes)  # (local part, domain or "" for every one)
        self.catch_all = None if catch_all is None else Path(catch_all)
        self.outgoing = Path(outgoing)
        self.local_domains = tuple(local_domains)
        self._local = DomainSet(self.local_domains)
        self.hostname = hostname
        self.smarthost = smarthost
        self.smarthost_starttls = smarthost_starttls

    def is_local(self, recipient: str) -> bool:
        address = parse_address(recipient)
        return not address.domain or address.domain in self._local

    def mailbox_path(self, recipient: str) -> Path | None:
        """The Maildir of a local recipient: its own, the catch-all, or ``None`` (unknown)."""
        address = parse_address(recipient)
        domain = address.domain or (self.local_domains[0] if self.local_domains else "localhost")
        local_part = address.local_part.lower()
        if (local_part, domain) in self.mailboxes or (local_part, "") in self.mailboxes:
            return self.maildir / mailbox_name(domain) / mailbox_name(local_part)
        return self.catch_all

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        """Asked after the policy accepted ``address``: refuse a local user we do not have."""
        if self.is_local(address) and self.mailbox_path(address) is None:
            log.info("refused <%s>: user unknown in local recipient table", _header_safe(address))
            return user_unknown(address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return str(OK)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # with this hook, aiosmtpd leaves it to us
        # Without a password file no mechanism is offered, yet aiosmtpd still says "AUTH".
        return [line for line in responses if line.rstrip() != "250-AUTH"]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        sender = envelope.mail_from or ""
        sender = "" if sender == "<>" else sender
        local = [r for r in envelope.rcpt_tos if self.is_local(r)]
        remote = [r for r in envelope.rcpt_tos if not self.is_local(r)]
        message = self._received(server, session, envelope) + content
        if remote and self.smarthost is not None:
            failure = await asyncio.to_thread(self._forward, message, sender, remote, envelope)
            if failure is not None:
                return failure
        try:
            if remote and self.smarthost is None:
                key = await asyncio.to_thread(self._keep, message, sender, remote, None)
                log.info(
                    "kept relayed mail from <%s> for %d recipient(s) as %s",
                    _header_safe(sender),
                    len(remote),
                    key,
                )
            for recipient in local:
                key = await asyncio.to_thread(self._deliver, message, sender, recipient)
                log.info(
                    "delivered mail from <%s> to <%s> as %s",
                    _header_safe(sender),
                    _header_safe(recipient),
                    key,
                )
        except OSError as exc:
            log.error("delivery failed: %s", exc)
            return str(LOCAL_DELIVERY_FAILED)
        return str(DELIVERED)

    def _received(self, server: SMTP, session: Session, envelope: Envelope) -> bytes:
        peer = session.peer
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        address = f"IPv6:{address}" if ":" in address else address  # RFC 5321 section 4.1.3
        tls = tls_facts(server, session)
        protocol = "ESMTP" if session.extended_smtp else "SMTP"
        protocol += ("S" if tls.protocol else "") + ("A" if session.authenticated else "")
        using = f" (using {tls.protocol} with cipher {tls.cipher})" if tls.protocol else ""
        helo = _header_safe(session.host_name or "unknown")
        date = email.utils.formatdate(localtime=True)
        return (
            f"Received: from {helo} ([{address}]){using}\r\n"
            f"\tby {_header_safe(self.hostname)} (relaypolicy smtpd) with {protocol};\r\n"
            f"\t{date}\r\n"
        ).encode("ascii")

    @staticmethod
    def _store(directory: Path, message: bytes) -> str:
        directory.parent.mkdir(parents=True, exist_ok=True)
        box = mailbox.Maildir(directory, create=True)
        return str(box.add(message.replace(b"\r\n", b"\n")))

    def _deliver(self, message: bytes, sender: str, recipient: str) -> str:
        directory = self.mailbox_path(recipient)
        if directory is None:  # handle_RCPT refused it; never make a directory for it
            raise OSError(f"no mailbox for <{_header_safe(recipient)}>")
        headers = (
            f"Return-Path: <{_header_safe(sender)}>\r\nDelivered-To: {_header_safe(recipient)}\r\n"
        ).encode("ascii")
        return self._store(directory, headers + message)

    def _keep(self, message: bytes, sender: str, recipients: list[str], why: str | None) -> str:
        lines = [f"Return-Path: <{_header_safe(sender)}>"]
        lines += [f"X-Relaypolicy-Recipient: <{_header_safe(r)}>" for r in recipients]
        if why:
            lines.append(f"X-Relaypolicy-Failure: {_header_safe(why)}")
        headers = "".join(f"{line}\r\n" for line in lines).encode("ascii")
        return self._store(self.outgoing, headers + message)

    def _forward(
        self, message: bytes, sender: str, recipients: list[str], envelope: Envelope
    ) -> str | None:
        """Send to the smarthost; ``None`` when it took the message, else the reply."""
        assert self.smarthost is not None
        host, port = self.smarthost
        options = [o for o in envelope.mail_options if o.startswith("BODY=")]
        if envelope.smtp_utf8:
            options.append("SMTPUTF8")
        try:
            with smtplib.SMTP(
                host, port, local_hostname=self.hostname, timeout=SMARTHOST_TIMEOUT
            ) as client:
                if self.smarthost_starttls:
                    client.starttls(context=ssl.create_default_context())
                refused: dict[str, Any] = client.sendmail(sender, recipients, message, options)
        except smtplib.SMTPNotSupportedError:
            return str(NO_SMTPUTF8_AT_SMARTHOST)
        except UnicodeEncodeError:  # a non-ASCII address without SMTPUTF8
            return str(NON_ASCII_WITHOUT_SMTPUTF8)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            log.warning("smarthost %s:%d refused every recipient: %s", host, port, exc.recipients)
            if all(500 <= code < 600 for code in codes):
                return str(SMARTHOST_REFUSED_ALL)
            return str(SMARTHOST_BUSY)
        except smtplib.SMTPResponseException as exc:
            text = (
                exc.smtp_error.decode("utf-8", "replace")
                if isinstance(exc.smtp_error, bytes)
                else str(exc.smtp_error)
            )
            log.warning("smarthost %s:%d: %d %s", host, port, exc.smtp_code, text)
            if 500 <= exc.smtp_code < 600:
                return f"{SMARTHOST_REFUSED} {exc.smtp_code} {_header_safe(text)[:200]}"
            return str(SMARTHOST_BUSY)
        except (OSError, smtplib.SMTPException) as exc:
            log.warning("smarthost %s:%d unreachable: %s", host, port, exc)
            return str(SMARTHOST_UNREACHABLE)
        if refused:
            key = self._keep(message, sender, list(refused), f"smarthost refused: {refused}")
            log.error("smarthost refused %s; kept as %s in %s", sorted(refused), key, self.outgoing)
        log.info(
            "forwarded mail from <%s> for %d recipient(s) to %s:%d",
            _header_safe(sender),
            len(recipients) - len(refused),
            host,
            port,
        )
        return None

    def __repr__(self) -> str:
        relay = f"{self.smarthost[0]}:{self.smarthost[1]}" if self.smarthost else str(self.outgoing)
        return f"MaildirDelivery(maildir={str(self.maildir)!r}, relay={relay!r})"
