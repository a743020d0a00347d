"""The request a policy is asked about, the decision it gives, and the verdicts.

Requests and decisions are values: immutable, compared by value, built once. They are
named tuples underneath rather than ``attrs`` classes because a relay check is on the
path of every recipient of every message: building a frozen ``attrs`` class with this many
fields costs about twice as much as a named tuple built by keyword, five times as much as
one built from a tuple (a 20-field ``timeit`` comparison, not kept as a benchmark). Treat
the tuple behaviour (indexing, iteration) as an implementation detail.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

from relaypolicy.address import Address, parse_address
from relaypolicy.networks import IPAddress, parse_ip
from relaypolicy.replies import OK, TEMPORARY_LOOKUP_FAILURE

__all__ = [
    "Decision",
    "LookupFailure",
    "Request",
    "Verdict",
    "accept",
    "defer",
    "lookup_failure",
    "next_policy",
    "reject",
]


class Verdict(enum.Enum):
    """What a policy says about one recipient."""

    ACCEPT = "accept"  #: the recipient may be accepted
    REJECT = "reject"  #: refuse with a 5xx reply
    DEFER = "defer"  #: refuse with a 4xx reply: try again later
    NEXT = "next"  #: no opinion: ask the next policy

    def __repr__(self) -> str:
        return f"Verdict.{self.name}"


class Decision(NamedTuple):
    """A verdict plus the SMTP reply that goes with it, and who decided and why.

    ``str(decision)`` is the reply line an MTA sends, e.g.
    ``554 5.7.1 <user@example.org>: Relay access denied``. A ``NEXT`` decision has no
    reply (code 0); its string is empty.
    """

    verdict: Verdict
    code: int
    status: str
    text: str
    policy: str
    reason: str

    def __str__(self) -> str:
        if self.code == 0:
            return ""
        return f"{self.code} {self.status} {self.text}"

    @property
    def reply(self) -> str:
        """The reply line, as ``str(decision)``."""
        return self.__str__()

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping."""
        return {
            "verdict": self.verdict.value,
            "code": self.code,
            "status": self.status,
            "text": self.text,
            "reply": str(self),
            "policy": self.policy,
            "reason": self.reason,
        }


def accept(policy: str, reason: str) -> Decision:
    """An ACCEPT decision with the usual ``250 2.1.5 Ok`` reply."""
    return Decision(Verdict.ACCEPT, *OK, policy, reason)


def next_policy(policy: str, reason: str = "no-opinion") -> Decision:
    """A NEXT decision: no opinion, no reply."""
    return Decision(Verdict.NEXT, 0, "", "", policy, reason)


def reject(code: int, status: str, text: str, policy: str, reason: str) -> Decision:
    """A REJECT decision; ``code`` must be 5xx."""
    if not 500 <= code <= 599:
        raise ValueError(f"a rejection needs a 5xx code, not {code}")
    return Decision(Verdict.REJECT, code, status, text, policy, reason)


def defer(code: int, status: str, text: str, policy: str, reason: str) -> Decision:
    """A DEFER decision; ``code`` must be 4xx."""
    if not 400 <= code <= 499:
        raise ValueError(f"a deferral needs a 4xx code, not {code}")
    return Decision(Verdict.DEFER, code, status, text, policy, reason)


class LookupFailure(Decision):
    """A DEFER given because the state a policy needs cannot be read (a table that is down).

    It says "I cannot tell", not "no": a chain keeps asking the policies after it, lets a
    later ACCEPT stand (that policy did not need the unreadable state: mail for a local
    domain, an authenticated client) and turns every other outcome into this deferral, so
    nothing is ever relayed, or refused for good, on state nobody could read. Compares equal
    to the plain :class:`Decision` with the same fields; build one with
    :func:`lookup_failure`.
    """

    __slots__ = ()


def lookup_failure(policy: str, reason: str) -> LookupFailure:
    """``451 4.3.0 Temporary lookup failure`` (Postfix's wording for a table it cannot read,
    RFC 3463 X.3.0), marked as a :class:`LookupFailure`."""
    return LookupFailure(Verdict.DEFER, *TEMPORARY_LOOKUP_FAILURE, policy, reason)


def _port(value: int | str | None, field: str) -> int:
    if value is None or value == "":
        return 0
    if type(value) is int and 0 <= value <= 65535:
        return value
    if isinstance(value, bool):
        raise ValueError(f"{field}: not a port number: {value!r}")
    if isinstance(value, str):
        if not value.isascii() or not value.isdigit():
            raise ValueError(f"{field}: not a port number: {value!r}")
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"{field}: not a port number: {value!r}")
    return value


class _RequestFields(NamedTuple):
    client_address: str
    recipient: str
    sender: str
    helo_name: str
    client_name: str
    client_port: int
    server_address: str
    server_port: int
    sasl_method: str
    sasl_username: str
    encryption_protocol: str
    encryption_cipher: str
    ccert_subject: str
    ccert_fingerprint: str
    ccert_pubkey_fingerprint: str
    # Analysed once, at construction:
    client_ip: IPAddress
    client_ip_version: int
    client_ip_value: int
    recipient_address: Address
    sender_address: Address


_RAW_FIELDS = _RequestFields._fields[:15]
_new = tuple.__new__


class Request(_RequestFields):
    """What the MTA knows at ``RCPT TO``, for one recipient.

    Keyword-only; field names are Postfix's policy-delegation attribute names, so an
    adapter maps them one to one. ``client_address`` is required and must be an IPv4 or
    IPv6 address (IPv4-mapped IPv6 is folded to IPv4); an invalid one raises
    :class:`ValueError` naming the field. ``recipient`` is required but never raises: a
    bad recipient is analysed as such (``recipient_address.error``) and refused by the
    policies with ``501 5.1.3``. ``sender`` defaults to the null sender ``""``.

    Derived fields, computed once: ``client_ip`` (an :mod:`ipaddress` object),
    ``client_ip_version`` and ``client_ip_value`` (its integer), ``recipient_address`` and
    ``sender_address`` (:class:`~relaypolicy.address.Address`). ``encryption_protocol``
    empty means the session is not using TLS.
    """

    __slots__ = ()

    def __new__(
        cls,
        *,
        client_address: str,
        recipient: str,
        sender: str = "",
        helo_name: str = "",
        client_name: str = "",
        client_port: int | str | None = 0,
        server_address: str = "",
        server_port: int | str | None = 0,
        sasl_method: str = "",
        sasl_username: str = "",
        encryption_protocol: str = "",
        encryption_cipher: str = "",
        ccert_subject: str = "",
        ccert_fingerprint: str = "",
        ccert_pubkey_fingerprint: str = "",
    ) -> Request:
        try:
            address, ip, version, value = parse_ip(client_address)
        except (ValueError, TypeError):
            raise ValueError(
                f"client_address: not an IPv4 or IPv6 address: {client_address!r}"
            ) from None
        if server_address:
            try:
                server_address = parse_ip(server_address).text
            except (ValueError, TypeError):
                raise ValueError(
                    f"server_address: not an IPv4 or IPv6 address: {server_address!r}"
                ) from None
        if client_port != 0 or server_port != 0:  # both unknown is the common case
            client_port = _port(client_port, "client_port")
            server_port = _port(server_port, "server_port")
        if recipient.__class__ is not str or sender.__class__ is not str:
            for field, text in (("recipient", recipient), ("sender", sender)):
                if not isinstance(text, str):
                    raise TypeError(f"{field}: expected str, got {type(text).__name__}")
        return _new(
            cls,
            (
                address,
                recipient,
                sender,
                helo_name,
                client_name,
                client_port,
                server_address,
                server_port,
                sasl_method,
                sasl_username,
                encryption_protocol,
                encryption_cipher,
                ccert_subject,
                ccert_fingerprint,
                ccert_pubkey_fingerprint,
                ip,
                version,
                value,
                parse_address(recipient),
                _NULL_SENDER if not sender else parse_address(sender),
            ),
        )

    @property
    def tls(self) -> bool:
        """Whether the session uses TLS (``encryption_protocol`` is set)."""
        return bool(self.encryption_protocol)

    def raw_fields(self) -> dict[str, Any]:
        """The fields given at construction (not the derived ones)."""
        return {name: getattr(self, name) for name in _RAW_FIELDS}

    def replace(self, **changes: Any) -> Request:
        """A new request with some fields changed, analysed afresh (like ``attrs.evolve``)."""
        unknown = set(changes) - set(_RAW_FIELDS)
        if unknown:
            raise TypeError(f"cannot replace derived or unknown fields: {sorted(unknown)}")
        return Request(**{**self.raw_fields(), **changes})

    _replace = replace

    @classmethod
    def _make(cls, iterable: Any) -> Request:  # type: ignore[override]
        raise TypeError("build a Request with keyword arguments")

    def __repr__(self) -> str:
        given = ", ".join(
            f"{name}={value!r}"
            for name, value in zip(_RAW_FIELDS, self, strict=False)
            if value not in ("", 0) or name in ("client_address", "recipient")
        )
        return f"Request({given})"


_NULL_SENDER = Address("", "", "", False, None)
