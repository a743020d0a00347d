"""Relay control for aiosmtpd-based MTAs: one handler in front of the one you have.

:class:`RelayPolicyHandler` answers ``RCPT TO`` (and, where the policy refuses the client
whatever the recipient, ``MAIL FROM``, as RFC 6409 section 4.3 wants for submission) with
the policy's decision; every other hook is the inner handler's. :func:`request_from_session`
maps aiosmtpd's session to a :class:`~relaypolicy.model.Request` (table in
``docs/aiosmtpd.md``); TLS is read from the transport, because with implicit TLS aiosmtpd
never fills ``session.ssl`` (aiosmtpd issues #274, #281). :class:`PasswordAuthenticator`
checks AUTH PLAIN/LOGIN against a scrypt password file. :class:`WholeReplySMTP` is
aiosmtpd's ``SMTP`` sending each multi-line reply in one write. Needs the ``aiosmtpd``
extra.

The package: this module holds the handler, the authenticator and ``WholeReplySMTP``;
:mod:`relaypolicy.aiosmtpd.session` turns a session into a request (the TLS facts, the
certificate's key, the login). Every name is importable from here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, AnyStr, NamedTuple

try:
    from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(
        "relaypolicy.aiosmtpd needs aiosmtpd: pip install 'relaypolicy[aiosmtpd]'"
    ) from exc

from relaypolicy.aiosmtpd.session import (
    UNNAMED_LOGIN,
    TlsFacts,
    request_from_session,
    subject_public_key_info,
    tls_facts,
)
from relaypolicy.decisions import Decider
from relaypolicy.errors import PasswordFileError
from relaypolicy.model import Decision, Request, Verdict, defer
from relaypolicy.policies import Policy, relay_access_denied
from relaypolicy.replies import NO_CLIENT_ADDRESS
from relaypolicy.smtpd.passwords import PasswordFile
from relaypolicy.text import decision_line, log_safe

__all__ = [
    "UNNAMED_LOGIN",
    "PasswordAuthenticator",
    "RelayPolicyHandler",
    "SaslLogin",
    "TlsFacts",
    "WholeReplySMTP",
    "request_from_session",
    "subject_public_key_info",
    "tls_facts",
]

decisions_log = logging.getLogger("relaypolicy.decisions")
log = logging.getLogger("relaypolicy.aiosmtpd")

# Asked at MAIL FROM: RFC 5321 section 4.5.1 makes "postmaster" deliverable everywhere, so a
# policy that refuses even this recipient refuses the client or the sender, not a recipient.
MAIL_PROBE_RECIPIENT = "postmaster"


class SaslLogin(NamedTuple):
    """What :class:`PasswordAuthenticator` leaves in ``session.auth_data``: who, and how
    (aiosmtpd records no mechanism, and its default keeps the password: ``LoginPassword``).
    """

    login: str
    mechanism: str


_Hook = Callable[..., Awaitable[Any]]
_NAME = "RelayPolicyHandler"  # the policy named in the handler's own decisions
_NO_CLIENT = defer(*NO_CLIENT_ADDRESS, _NAME, "no-client")


def _no_opinion(request: Request) -> Decision:
    # No opinion is not permission: an inner handler that takes every recipient must not
    # turn a chain that passes into an open relay.
    return relay_access_denied(request, _NAME, "no-opinion")


class RelayPolicyHandler:
    """An aiosmtpd handler that enforces ``policy`` and delegates everything else to ``inner``.

    - ``handle_RCPT``: on REJECT or DEFER the decision's reply is the answer and the
      recipient is not appended. On ACCEPT the recipient is handed to
      ``inner.handle_RCPT`` when ``inner`` has one (it appends it, or still refuses an
      unknown user, and its reply is the answer), else appended with the decision's
      ``250``. A NEXT (a chain whose default passes) is refused with ``554 5.7.1 Relay
      access denied`` whatever ``inner`` is: no opinion is not permission, and an inner
      handler that takes every recipient must not turn it into an open relay. A policy
      that raises, or a client without an IP address, is deferred (4xx).
    - ``handle_MAIL`` (``check_mail=True``): the policy is asked about the recipient
      ``postmaster``; if it refuses even that, the client or the sender is what it refuses
      (e.g. ``530 5.7.0 Authentication required`` on a submission port), and MAIL FROM is
      answered with that refusal. Otherwise ``inner.handle_MAIL`` (or aiosmtpd) decides.
    - Any other attribute (``handle_DATA``, ``handle_EHLO``, ``auth_XOAUTH2``,
      ``handle_exception``...) is ``inner``'s, so aiosmtpd sees exactly the hooks
      ``inner`` has, plus these two.

    One log line per decision goes to the ``relaypolicy.decisions`` logger (INFO), in the
    format of ``relaypolicy serve`` (``log_format="json"`` for JSON lines), and
    :attr:`decider` counts them (``decider.stats``), as every front end's does.
    """

    def __init__(
        self,
        policy: Policy,
        *,
        inner: object | None = None,
        check_mail: bool = True,
        log_format: str = "text",
    ) -> None:
        if not callable(getattr(policy, "check", None)):
            raise TypeError(f"policy: not a policy (no check method): {policy!r}")
        self.decider = Decider(policy, log_format=log_format, no_opinion=_no_opinion)
        self.inner = inner
        self.check_mail = check_mail

    @property
    def policy(self) -> Policy:
        """What decides; replaceable (a reload)."""
        return self.decider.policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        self.decider.policy = policy

    @property
    def log_format(self) -> str:
        """``"text"`` or ``"json"``: the decision lines' format."""
        return self.decider.log_format

    def __getattr__(self, name: str) -> Any:
        # Only called for names this class lacks: those are the inner handler's.
        inner = self.__dict__.get("inner")
        if inner is None or name.startswith("_"):
            raise AttributeError(name)
        return getattr(inner, name)

    def __dir__(self) -> list[str]:
        # aiosmtpd finds hooks and AUTH mechanisms with dir(); show it the inner ones.
        names = set(super().__dir__())
        if self.inner is not None:
            names.update(name for name in dir(self.inner) if not name.startswith("_"))
        return sorted(names)

    def _inner_hook(self, name: str) -> _Hook | None:
        hook = getattr(self.inner, name, None) if self.inner is not None else None
        return hook if callable(hook) else None

    def decide(
        self,
        server: SMTP | None,
        session: Session,
        envelope: Envelope | None,
        recipient: str,
        *,
        stage: str = "RCPT",
    ) -> tuple[Request | None, Decision]:
        """The request and the policy's decision; never raises.

        At ``RCPT`` the decision is counted and logged; at ``MAIL`` (the check with the
        recipient ``postmaster``) only a refusal is logged, and nothing is counted.
        """
        try:
            request = request_from_session(server, session, envelope, recipient)
        except ValueError as exc:
            log.warning("cannot build a request (peer %r): %s", session.peer, exc)
            return None, _NO_CLIENT
        peer = repr(session.peer)
        if stage == "RCPT":
            extra = (
                {"login": request.sasl_username, "stage": stage}
                if self.log_format == "json"
                else {}
            )
            return request, self.decider.decide(request, peer=peer, log_fields=extra)
        decision = self.decider.decide(request, peer=peer, record=False)
        if decision.verdict in (Verdict.REJECT, Verdict.DEFER):
            self._log(request, decision, stage=stage)
        return request, decision

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> Any:
        if self.check_mail:
            probe = Envelope()
            probe.mail_from = address
            _, decision = self.decide(server, session, probe, MAIL_PROBE_RECIPIENT, stage="MAIL")
            if decision.verdict in (Verdict.REJECT, Verdict.DEFER):
                return decision.reply
        hook = self._inner_hook("handle_MAIL")
        if hook is not None:
            return await hook(server, session, envelope, address, mail_options)
        return MISSING  # aiosmtpd records the sender and says 250 OK

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> Any:
        _, decision = self.decide(server, session, envelope, address)
        if decision.verdict in (Verdict.REJECT, Verdict.DEFER):
            return decision.reply
        hook = self._inner_hook("handle_RCPT")
        if hook is not None:
            return await hook(server, session, envelope, address, rcpt_options)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return decision.reply

    def _log(self, request: Request, decision: Decision, stage: str) -> None:
        if not decisions_log.isEnabledFor(logging.INFO):
            return
        extra = {"recipient": ""}  # the MAIL check's recipient is not the client's
        if self.log_format == "json":
            extra.update(login=request.sasl_username, stage=stage)
        message, args = decision_line(request, decision, json=self.log_format == "json", **extra)
        decisions_log.info(message, *args)

    def __repr__(self) -> str:
        return f"RelayPolicyHandler({self.policy!r}, inner={self.inner!r})"


class PasswordAuthenticator:
    """An aiosmtpd ``authenticator`` for AUTH PLAIN and LOGIN against a password file.

    ``SMTP(handler, authenticator=PasswordAuthenticator(path))``. The file
    (:mod:`relaypolicy.smtpd.passwords`) is reread when it changes; a broken new version is
    logged and the last good one kept. A wrong login or password gets aiosmtpd's ``535
    5.7.8``; on success ``session.auth_data`` is a :class:`SaslLogin`. aiosmtpd calls
    authenticators synchronously: each attempt costs one scrypt run on the event loop.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.passwords = PasswordFile.load(self.path)  # PasswordFileError names the line
        self._stamp = self._file_stamp()

    def _file_stamp(self) -> tuple[int, int, int]:
        info = self.path.stat()
        return info.st_ino, info.st_size, info.st_mtime_ns

    def _current(self) -> Any:
        try:
            stamp = self._file_stamp()
            if stamp != self._stamp:
                self.passwords = PasswordFile.load(self.path)
                self._stamp = stamp
                log.info("reloaded the password file %s", self.path)
        except (OSError, PasswordFileError) as exc:
            log.error("password file %s: %s; keeping the last good one", self.path, exc)
        return self.passwords

    def __call__(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        if mechanism not in ("PLAIN", "LOGIN") or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        try:
            login = auth_data.login.decode("utf-8")
            password = auth_data.password.decode("utf-8")
        except UnicodeDecodeError:
            return AuthResult(success=False, handled=False)
        if self._current().verify(login, password):
            return AuthResult(success=True, auth_data=SaslLogin(login, mechanism))
        log.info("%s: authentication failed for %r", session.peer, log_safe(login))
        return AuthResult(success=False, handled=False)


class WholeReplySMTP(SMTP):
    """aiosmtpd's ``SMTP`` that sends each reply in one write, as Postfix does.

    aiosmtpd writes and drains every line of a multi-line reply (EHLO, a handler's list)
    on its own, so the lines can reach the client in separate segments. A client that
    takes one read for the whole reply -- nmap's ``smtp-open-relay`` does -- then pairs
    every later reply with the wrong command (and called the embedded server an open
    relay). Lines that continue a reply (``250-...``, RFC 5321 section 4.2.1) are kept
    here until its last line (``250 ...``) is pushed, then all go out together. Use it
    wherever ``SMTP`` is built: ``Controller.factory``, ``loop.create_server``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reply_lines: list[bytes] = []

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str):  # as aiosmtpd encodes it
            line = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        else:
            line = status
        if line.rpartition(b"\n")[2][3:4] == b"-":  # the reply goes on
            self._reply_lines.append(line)
            return
        if self._reply_lines:
            line = b"\r\n".join([*self._reply_lines, line])
            self._reply_lines.clear()
        await super().push(line)
