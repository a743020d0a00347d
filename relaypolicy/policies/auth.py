"""Who the client is: SMTP AUTH (RFC 4954), TLS (RFC 3207), sender ownership, certificates.

POP-before-SMTP trusts an IP address for a while after a mailbox login; whoever shares or
inherits the address inherits the permission. SMTP AUTH authenticates the session itself,
and on the submission ports (587, RFC 6409; 465 with implicit TLS, RFC 8314) it is the rule.
:class:`SmtpAuthRequired` is Postfix's ``permit_sasl_authenticated`` (with ``otherwise=NEXT``)
or the submission port's ``permit_sasl_authenticated, reject``, plus
``smtpd_tls_auth_only``-style TLS enforcement and ``reject_sender_login_mismatch``.
:class:`ClientCertificate` is ``permit_tls_clientcerts`` with ``relay_clientcerts``.

Both policies trust what the MTA reports (``sasl_username``, ``encryption_protocol``,
``ccert_*``): the MTA did the authentication, the policy only decides what it allows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from relaypolicy import replies
from relaypolicy.address import Address
from relaypolicy.model import Decision, Request, Verdict, accept, defer, next_policy, reject
from relaypolicy.replies import SENDER_NOT_LOGGED_IN as _NOT_LOGGED_IN
from relaypolicy.replies import SENDER_NOT_OWNED as _NOT_OWNED
from relaypolicy.senders import SenderForm, SenderOwnership, sender_form
from relaypolicy.text import reply_safe

__all__ = ["ClientCertificate", "SmtpAuthRequired"]

MAX_LOGIN_IN_REPLY = 64  # characters of a login name echoed in a reply, before "..."

_new = tuple.__new__
_REJECT = Verdict.REJECT
_NO_OWNERS = SenderOwnership({}, {})  # check_sender without sender_logins: nobody owns anything


def _echo(address: str) -> str:
    """``<address>: ``, as Postfix starts a sender refusal; ``""`` when unfit to echo.

    Only called for a valid sender, which holds no control characters; a printable check
    also keeps out Unicode line and paragraph separators (valid in a quoted local part).
    """
    if not address.isprintable():
        return ""
    if address[:1] == "<" and address[-1:] == ">":
        return f"{address}: "
    return f"<{address}>: "


class SmtpAuthRequired:
    """ACCEPT an authenticated client (SMTP AUTH, RFC 4954); refuse or pass the others.

    - ``sasl_username`` set: ACCEPT, reason ``sasl-authenticated`` (Postfix
      ``permit_sasl_authenticated``). It outranks the destination check, so an authenticated
      user may relay anywhere, routed addresses included, as in Postfix.
    - Not authenticated: ``otherwise`` decides. ``Verdict.REJECT`` (the default, for a
      submission port) gives ``530 5.7.0 Authentication required`` (RFC 4954 section 6),
      ``Verdict.DEFER`` gives ``454 4.7.0 Authentication required``, both reason
      ``auth-required``; ``Verdict.NEXT`` passes (reason ``not-authenticated``), so the
      policy only permits and sits in a port-25 chain like ``permit_sasl_authenticated``.
    - ``require_tls=True``: without TLS (``encryption_protocol`` empty) the answer is
      ``530 5.7.0 Must issue a STARTTLS command first`` (RFC 3207 section 4), reason
      ``tls-required``, *even for an authenticated client* (its password crossed the
      network in the clear). With ``otherwise=NEXT`` an unauthenticated client without TLS
      still passes: it asked for nothing this policy grants.
    - ``sender_logins``: who may use which sender address, Postfix
      ``smtpd_sender_login_maps`` with ``reject_sender_login_mismatch``. See
      :meth:`check_sender`.
    """

    __slots__ = (
        "_accept",
        "_next",
        "_ownership",
        "_refuse",
        "_require_tls",
        "_sender_syntax",
        "_tls_required",
        "name",
        "otherwise",
    )

    def __init__(
        self,
        *,
        require_tls: bool = False,
        sender_logins: Mapping[str, str | Iterable[str]] | None = None,
        otherwise: Verdict = Verdict.REJECT,
        name: str = "SmtpAuthRequired",
    ) -> None:
        if not isinstance(otherwise, Verdict):
            raise TypeError(f"otherwise must be a Verdict, not {otherwise!r}")
        if otherwise is Verdict.ACCEPT:
            raise ValueError("otherwise=Verdict.ACCEPT would let anyone relay; use OpenRelay")
        self.name = name
        self.otherwise = otherwise
        self._require_tls = bool(require_tls)
        self._accept = accept(name, "sasl-authenticated")
        self._next = next_policy(name, "not-authenticated")
        self._tls_required = reject(*replies.STARTTLS_FIRST, name, "tls-required")
        self._refuse: Decision | None = None
        if otherwise is Verdict.REJECT:
            self._refuse = reject(*replies.AUTH_REQUIRED, name, "auth-required")
        elif otherwise is Verdict.DEFER:
            self._refuse = defer(*replies.AUTH_REQUIRED_LATER, name, "auth-required")
        # A sender that is not an address at all; Postfix says 501 5.1.7 for bad MAIL FROM.
        self._sender_syntax = reject(*replies.BAD_SENDER_SYNTAX, name, "sender-syntax")
        self._ownership: SenderOwnership | None = None
        if sender_logins is not None:
            if not isinstance(sender_logins, Mapping):
                raise TypeError("sender_logins must be a mapping of address -> login names")
            if not sender_logins:
                raise ValueError(
                    "sender_logins is empty: every authenticated sender would be refused; "
                    "pass None to leave senders unchecked"
                )
            self._ownership = SenderOwnership.from_sender_logins(sender_logins)

    @property
    def require_tls(self) -> bool:
        return self._require_tls

    @property
    def sender_logins(self) -> dict[str, frozenset[str]] | None:
        """The ownership table in lookup form (``user@domain`` / ``@domain`` -> logins,
        casefolded; see :mod:`relaypolicy.senders`)."""
        return None if self._ownership is None else self._ownership.as_table()

    def check(self, request: Request) -> Decision:
        if request.sasl_username:
            if self._require_tls and not request.encryption_protocol:
                return self._tls_required
            if self._ownership is None:
                return self._accept
            return self.check_sender(request)
        if self._refuse is not None:
            if self._require_tls and not request.encryption_protocol:
                return self._tls_required  # STARTTLS first, then AUTH
            return self._refuse
        if self._ownership is None:
            return self._next
        return self.check_sender(request)

    def owners(self, sender: Address) -> frozenset[str] | None:
        """The login names (casefolded) that own a valid sender, or ``None`` when unlisted.

        The rules are :mod:`relaypolicy.senders`' (shared with ``PopBeforeSmtp``'s
        ``bind_sender``): ``user@domain`` first, then ``@domain``; the domain compared in
        canonical form, the local part and the login names with ``str.casefold``.
        """
        return None if self._ownership is None else self._ownership.owners(sender)

    def check_sender(self, request: Request) -> Decision:
        """Sender ownership, like Postfix ``reject_sender_login_mismatch``.

        - The null sender ``<>`` is never refused for being null (RFC 6409 section 3.2):
          an authenticated client gets ACCEPT, an unauthenticated one the ``otherwise``
          answer.
        - A sender that is not a valid address: ``501 5.1.7 Bad sender address syntax``
          (reason ``sender-syntax``); its owner cannot be known, so it is not let through.
        - A sender without a domain: ``504 5.5.2 <sender>: Sender address rejected: need
          fully-qualified address`` (reason ``sender-not-fqdn``); the MTA would append its
          own domain later, and with it a sender we cannot see here.
        - Logged in, and the login is not among the sender's owners (or the sender has no
          owner at all): ``553 5.7.1 <sender>: Sender address rejected: not owned by user
          NAME`` (reason ``sender-not-owned``). Login names, local parts and domains
          compare as :mod:`relaypolicy.senders` says (``str.casefold``, canonical domain).
        - Not logged in, and the sender has an owner: ``553 5.7.1 <sender>: Sender address
          rejected: not logged in`` (reason ``sender-not-logged-in``).
        """
        sender = request.sender_address
        login = request.sasl_username
        passed = self._accept if login else (self._refuse or self._next)
        form = sender_form(sender)
        if form is SenderForm.INVALID:
            return self._sender_syntax
        if form is SenderForm.NULL:
            return passed
        if form is SenderForm.UNQUALIFIED:
            return _new(
                Decision,
                (
                    _REJECT,
                    replies.SENDER_NEEDS_DOMAIN.code,
                    replies.SENDER_NEEDS_DOMAIN.status,
                    f"{_echo(request.sender)}{replies.SENDER_NEEDS_DOMAIN.text}",
                    self.name,
                    "sender-not-fqdn",
                ),
            )
        ownership = _NO_OWNERS if self._ownership is None else self._ownership
        if login:
            if ownership.owns(login, sender):
                return passed
            text = (
                f"{_echo(request.sender)}{_NOT_OWNED.text} {reply_safe(login, MAX_LOGIN_IN_REPLY)}"
            )
            return _new(
                Decision,
                (_REJECT, _NOT_OWNED.code, _NOT_OWNED.status, text, self.name, "sender-not-owned"),
            )
        if ownership.owners(sender) is None:
            return passed
        text = f"{_echo(request.sender)}{_NOT_LOGGED_IN.text}"
        code, status = _NOT_LOGGED_IN.code, _NOT_LOGGED_IN.status
        return _new(Decision, (_REJECT, code, status, text, self.name, "sender-not-logged-in"))

    def __repr__(self) -> str:
        logins = "None" if self._ownership is None else f"<{len(self._ownership)}>"
        return (
            f"SmtpAuthRequired(require_tls={self._require_tls}, sender_logins={logins}, "
            f"otherwise={self.otherwise!r})"
        )


_HEX = frozenset("0123456789abcdef")
# SHA-256 is what Postfix prints by default since 3.6 (smtpd_tls_fingerprint_digest); longer
# SHA-2 digests are fine too. MD5 and SHA-1 lengths are refused: pin with SHA-256.
_DIGEST_LENGTHS = {64: "SHA-256", 96: "SHA-384", 128: "SHA-512"}


def _plain_hex(text: str) -> str:
    return text.strip().replace(":", "").lower()


class ClientCertificate:
    """ACCEPT a client whose TLS certificate is one of ours; NEXT for everyone else.

    Postfix ``permit_tls_clientcerts`` with ``relay_clientcerts``. A request matches when
    its ``ccert_fingerprint`` (the certificate) or ``ccert_pubkey_fingerprint`` (its public
    key, which survives renewal with the same key) is in ``fingerprints``; reason
    ``client-certificate``. This is pinning: no certificate authority is involved.

    Fingerprints are SHA-256 digests (64 hex digits; SHA-384 and SHA-512 lengths are
    accepted too), written either way: ``AB:CD:...`` as Postfix prints them or plain hex,
    in any case. A fingerprint that is not hex, or has the length of an MD5 or SHA-1
    digest, raises :class:`ValueError` naming it. An empty request fingerprint never
    matches.
    """

    __slots__ = ("_accept", "_fingerprints", "_no_certificate", "_spellings", "_unknown", "name")

    def __init__(self, fingerprints: Iterable[str], *, name: str = "ClientCertificate") -> None:
        if isinstance(fingerprints, str):
            raise TypeError("fingerprints must be an iterable of fingerprints, not one string")
        self.name = name
        canonical: set[str] = set()
        for given in fingerprints:
            if not isinstance(given, str):
                raise TypeError(f"fingerprints: not a string: {given!r}")
            plain = _plain_hex(given)
            if not plain or not _HEX.issuperset(plain):
                raise ValueError(f"fingerprints: not a hex fingerprint: {given!r}")
            if len(plain) not in _DIGEST_LENGTHS:
                raise ValueError(
                    f"fingerprints: {given!r} has {len(plain)} hex digits; expected a SHA-256 "
                    "fingerprint (64 digits; Postfix: smtpd_tls_fingerprint_digest = sha256)"
                )
            canonical.add(plain)
        self._fingerprints = frozenset(canonical)
        # The spellings MTAs actually print, so the common lookup is one set probe.
        spellings: set[str] = set()
        for plain in canonical:
            upper = plain.upper()
            spellings.update((plain, upper, ":".join(_pairs(upper)), ":".join(_pairs(plain))))
        self._spellings = frozenset(spellings)
        self._accept = accept(name, "client-certificate")
        self._no_certificate = next_policy(name, "no-client-certificate")
        self._unknown = next_policy(name, "unknown-client-certificate")

    @property
    def fingerprints(self) -> frozenset[str]:
        """The fingerprints, as lower-case hex without separators."""
        return self._fingerprints

    def check(self, request: Request) -> Decision:
        certificate = request.ccert_fingerprint
        public_key = request.ccert_pubkey_fingerprint
        if not certificate and not public_key:
            return self._no_certificate
        spellings = self._spellings
        if certificate in spellings or public_key in spellings:
            return self._accept
        # An unusual spelling (mixed case, spaces): normalise and look again.
        fingerprints = self._fingerprints
        for given in (certificate, public_key):
            if given and _plain_hex(given) in fingerprints:
                return self._accept
        return self._unknown

    def __repr__(self) -> str:
        return f"ClientCertificate(<{len(self._fingerprints)} fingerprints>)"


def _pairs(text: str) -> list[str]:
    return [text[i : i + 2] for i in range(0, len(text), 2)]
