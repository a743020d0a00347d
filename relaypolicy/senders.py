"""Who may use which envelope sender: the one sender-ownership rule.

Two policies ask whether the client's login owns the envelope sender:
:class:`~relaypolicy.policies.auth.SmtpAuthRequired` with ``sender_logins`` (Postfix
``smtpd_sender_login_maps`` with ``reject_sender_login_mismatch``) and
:class:`~relaypolicy.policies.popbeforesmtp.PopBeforeSmtp` with ``bind_sender`` (the NAT
mitigation). They write their tables in opposite directions, sender -> logins and
login -> senders, and both compile into one :class:`SenderOwnership` with one set of rules:

- **Senders.** A key is ``user@domain`` or ``@domain`` (a whole domain, not its
  subdomains). The domain is compared in canonical form (:mod:`relaypolicy.domains`: case,
  a trailing dot, U-label or A-label make no difference). The local part is dequoted and
  compared with :meth:`str.casefold`, so ``straße``, ``STRASSE`` and ``strasse`` are one:
  RFC 5321 section 2.4 tells everyone but the final server not to rely on the case of a
  local part, and Postfix lowercases the address it looks up.
- **Lookup order.** The exact address first, then ``@domain``; the first found decides,
  so an address listed on its own belongs to its own logins only (Postfix's order for
  ``smtpd_sender_login_maps``).
- **Login names** are compared with :meth:`str.casefold` as well: ``Bob`` is ``bob``
  (Postfix compares SASL login names case-insensitively, ``strcasecmp_utf8``; mailbox
  servers such as Dovecot usually fold the login's case too).
- **Senders nobody owns:** the null sender ``<>``, a sender that is not a valid address,
  and one without a domain. :func:`sender_form` says which case a sender is; each policy
  answers it in its own terms (a reply for SMTP AUTH, a reason for POP-before-SMTP).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

from relaypolicy.address import Address, parse_address
from relaypolicy.domains import DomainError, normalize_destination

__all__ = ["SenderForm", "SenderOwnership", "login_key", "sender_form", "sender_key"]

_USE = "use user@domain or @domain"


class SenderForm(enum.Enum):
    """What kind of envelope sender a request carries, for ownership purposes."""

    MAILBOX = "mailbox"  #: ``local@domain``: its owners can be looked up
    NULL = "null"  #: the null sender ``<>``: owned by no one
    INVALID = "invalid"  #: not a valid address: its owner cannot be known
    UNQUALIFIED = "unqualified"  #: a local part without a domain: the MTA may add one later


def sender_form(sender: Address) -> SenderForm:
    """The :class:`SenderForm` of an analysed sender."""
    if sender.error is not None:
        return SenderForm.INVALID
    if sender.domain:
        return SenderForm.MAILBOX
    return SenderForm.UNQUALIFIED if sender.local_part else SenderForm.NULL


def login_key(login: str) -> str:
    """The form a login name is compared in: :meth:`str.casefold` (``Bob`` is ``bob``)."""
    return login.casefold()


def _mailbox_key(sender: Address) -> str:
    return f"{sender.local_part.casefold()}@{sender.domain}"


def sender_key(text: str) -> tuple[str, bool]:
    """The lookup form of a configured sender and whether it names a whole domain.

    ``Alice@Example.ORG.`` gives ``("alice@example.org", False)``; ``@例え.jp`` gives
    ``("xn--r8jz45g.jp", True)``.

    Raises:
        ValueError: ``text`` is neither ``user@domain`` nor ``@domain``; the message says
            why, and the caller names the argument it came from.
    """
    stripped = text.strip()
    if stripped.startswith("@"):
        try:
            return normalize_destination(stripped[1:]), True
        except DomainError as exc:
            raise ValueError(f"bad domain: {exc}; {_USE}") from None
    address = parse_address(stripped)
    form = sender_form(address)
    if form is SenderForm.MAILBOX:
        return _mailbox_key(address), False
    if form is SenderForm.INVALID:
        raise ValueError(f"{address.error}; {_USE}")
    raise ValueError(
        f"{'no domain' if form is SenderForm.UNQUALIFIED else 'empty address'}; {_USE}"
    )


class SenderOwnership:
    """Compiled sender ownership: sender -> the logins that may use it.

    Build it with :meth:`from_sender_logins` (sender -> logins) or
    :meth:`from_bound_senders` (login -> senders); ask :meth:`owns`. Immutable once built.
    The constructor takes the compiled form: :func:`sender_key` keys (addresses and bare
    domains apart) and login names already in :func:`login_key` form.
    """

    __slots__ = ("_by_address", "_by_domain", "logins")

    def __init__(
        self,
        by_address: Mapping[str, frozenset[str]],
        by_domain: Mapping[str, frozenset[str]],
        logins: Iterable[str] = (),
    ) -> None:
        self._by_address = dict(by_address)
        self._by_domain = dict(by_domain)
        named = {
            login for owners in (*by_address.values(), *by_domain.values()) for login in owners
        }
        #: Every login the table names, in :func:`login_key` form (owners or not).
        self.logins: frozenset[str] = frozenset(named.union(logins))

    @classmethod
    def from_sender_logins(
        cls, table: Mapping[str, str | Iterable[str]], *, argument: str = "sender_logins"
    ) -> SenderOwnership:
        """Compile ``{"user@domain" or "@domain": login names}``.

        A value is an iterable of login names or one string, split at commas and white
        space like a Postfix map value. Errors name ``argument`` and the key: a bad key, a
        key with no login names, two keys that are one sender (``ValueError``), a key or
        name that is not a string (``TypeError``).
        """
        by_address: dict[str, frozenset[str]] = {}
        by_domain: dict[str, frozenset[str]] = {}
        seen: dict[str, str] = {}
        for key, value in table.items():
            if not isinstance(key, str):
                raise TypeError(f"{argument}: keys must be str, not {key!r}")
            try:
                lookup, whole_domain = sender_key(key)
            except ValueError as exc:
                raise ValueError(f"{argument}[{key!r}]: {exc}") from None
            marked = ("@" if whole_domain else "") + lookup
            if marked in seen:
                raise ValueError(
                    f"{argument}: keys {seen[marked]!r} and {key!r} are the same address"
                )
            seen[marked] = key
            (by_domain if whole_domain else by_address)[lookup] = _login_names(
                value, f"{argument}[{key!r}]"
            )
        return cls(by_address, by_domain)

    @classmethod
    def from_bound_senders(
        cls, table: Mapping[str, str | Iterable[str]], *, argument: str = "bind_sender"
    ) -> SenderOwnership:
        """Compile ``{login: "user@domain" or "@domain" senders}``.

        A value is an iterable of senders or one sender; an empty one binds the login to
        nothing (it is still known). Errors name ``argument`` and the login: a bad sender,
        two logins that are one (``ValueError``), a login or sender that is not a string
        (``TypeError``).
        """
        by_address: dict[str, set[str]] = {}
        by_domain: dict[str, set[str]] = {}
        seen: dict[str, str] = {}
        for login, senders in table.items():
            if not isinstance(login, str):
                raise TypeError(f"{argument}: login names must be str, not {login!r}")
            name = login_key(login)
            if name in seen:
                raise ValueError(
                    f"{argument}: logins {seen[name]!r} and {login!r} are the same login"
                )
            seen[name] = login
            for text in (senders,) if isinstance(senders, str) else senders:
                if not isinstance(text, str):
                    raise TypeError(f"{argument}[{login!r}]: expected sender text, got {text!r}")
                try:
                    lookup, whole_domain = sender_key(text)
                except ValueError as exc:
                    raise ValueError(f"{argument}[{login!r}]: {text!r}: {exc}") from None
                (by_domain if whole_domain else by_address).setdefault(lookup, set()).add(name)
        return cls(
            {key: frozenset(names) for key, names in by_address.items()},
            {key: frozenset(names) for key, names in by_domain.items()},
            seen.keys(),  # logins bound to nothing are known too
        )

    def owners(self, sender: Address) -> frozenset[str] | None:
        """The logins (in :func:`login_key` form) that own a sender; ``None`` when unlisted.

        Only a :data:`SenderForm.MAILBOX` sender can be listed. ``user@domain`` is looked
        up first, then ``@domain``.
        """
        domain = sender.domain
        if not domain or sender.error is not None:
            return None
        if self._by_address:
            owners = self._by_address.get(_mailbox_key(sender))
            if owners is not None:
                return owners
        return self._by_domain.get(domain)

    def owns(self, login: str, sender: Address) -> bool:
        """Whether ``login`` may use ``sender`` (never for the null or an invalid sender)."""
        owners = self.owners(sender)
        return owners is not None and login_key(login) in owners

    def knows(self, login: str) -> bool:
        """Whether the table names ``login`` at all."""
        return login_key(login) in self.logins

    def as_table(self) -> dict[str, frozenset[str]]:
        """Sender -> logins, in lookup form: ``user@domain`` and ``@domain`` keys."""
        table = dict(self._by_address)
        table.update({f"@{domain}": owners for domain, owners in self._by_domain.items()})
        return table

    def __len__(self) -> int:
        return len(self._by_address) + len(self._by_domain)

    def __repr__(self) -> str:
        return f"SenderOwnership(<{len(self)} senders, {len(self.logins)} logins>)"


def _login_names(value: str | Iterable[str], where: str) -> frozenset[str]:
    # Postfix splits a map value at commas and white space.
    names = value.replace(",", " ").split() if isinstance(value, str) else value
    logins: set[str] = set()
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"{where}: login names must be str, not {name!r}")
        if name.strip():
            logins.add(login_key(name.strip()))
    if not logins:
        raise ValueError(f"{where}: no login names")
    return frozenset(logins)
