"""POP-before-SMTP: a client that logged in to POP3/IMAP recently may relay for a while.

A watcher (:mod:`relaypolicy.watch`, ``relaypolicy watch`` or the one inside
``relaypolicy serve``, following Dovecot's or another server's login log) records the
address of every successful POP3/IMAP login in an :class:`~relaypolicy.iptable.IpTable`;
this policy accepts a client whose address has a live entry there. With ``bind_sender``,
a client may relay only with a sender that belongs to the user who logged in from its
address, which limits what a stranger behind the same NAT address can do.
``docs/pop-before-smtp.md`` tells the whole story, and the weaknesses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TypeAlias

from relaypolicy.iptable.base import TableReader
from relaypolicy.model import Decision, Request, accept, lookup_failure, next_policy
from relaypolicy.senders import SenderForm, SenderOwnership, sender_form

__all__ = ["PopBeforeSmtp", "SenderBinding"]

SenderBinding: TypeAlias = (
    Mapping[str, "Iterable[str] | str"] | Callable[[str], "Iterable[str] | str | None"]
)
"""Login name -> the senders that user may use: addresses (``alice@example.org``) and
whole domains (``@example.org``). A mapping is read once, at construction; a callable is
asked on every bound check (return ``None`` for "no such user", ``()`` for "no senders").
Compared as :mod:`relaypolicy.senders` says."""


class PopBeforeSmtp:
    """ACCEPT a client whose address has a live entry in ``table``; NEXT for the rest.

    Put it in a chain before :class:`~relaypolicy.policies.LocalDomainOnly`, as the classic
    setups did: ``FirstMatch(TrustedNetworks(...), PopBeforeSmtp(table),
    LocalDomainOnly(...))``. If the table cannot be read, the answer is
    ``451 4.3.0 Temporary lookup failure`` (DEFER), never ACCEPT.

    ``bind_sender`` (the NAT mitigation) maps a login name to the senders that user may use
    (see :data:`SenderBinding`). Then a client is accepted only when the entry for its
    address names a login and the envelope sender belongs to that login, by the one rule
    of :mod:`relaypolicy.senders` that ``SmtpAuthRequired(sender_logins=...)`` uses too:
    the exact address first, then ``@domain``; canonical domains, local parts and login
    names compared with ``str.casefold``. The null sender ``<>`` is never bound to a user,
    so a bound entry does not let it relay. Every other case is NEXT, with the reason:
    ``unknown-user`` (no login recorded, or none bound), ``null-sender``,
    ``sender-not-bound`` (also for a malformed or domainless sender).
    """

    __slots__ = (
        "_accept",
        "_bind",
        "_client_login",
        "_has_client",
        "_no_login",
        "_not_bound",
        "_null_sender",
        "_unknown_user",
        "name",
        "table",
    )

    def __init__(
        self,
        table: TableReader,
        *,
        bind_sender: SenderBinding | None = None,
        name: str = "PopBeforeSmtp",
    ) -> None:
        for method in ("has_client", "client_login"):
            if not callable(getattr(table, method, None)):
                raise TypeError(f"table: not an IP table (no {method} method): {table!r}")
        self.name = name
        self.table = table
        self._has_client: Callable[[Request], bool] = table.has_client
        self._client_login = table.client_login
        # login -> the ownership map that answers for it, None for an unknown login.
        self._bind: Callable[[str], SenderOwnership | None] | None = None
        if isinstance(bind_sender, Mapping):
            self._bind = _compiled(SenderOwnership.from_bound_senders(bind_sender))
        elif bind_sender is not None:
            if not callable(bind_sender):
                raise TypeError(f"bind_sender: expected a mapping or a callable: {bind_sender!r}")
            self._bind = _asking(bind_sender)
        self._accept = accept(name, "pop-before-smtp")
        self._no_login = next_policy(name, "no-login")
        self._unknown_user = next_policy(name, "unknown-user")
        self._null_sender = next_policy(name, "null-sender")
        self._not_bound = next_policy(name, "sender-not-bound")

    def check(self, request: Request) -> Decision:
        if self._bind is None:
            try:
                live = self._has_client(request)
            except Exception as exc:  # fail closed: whatever went wrong, do not accept
                return self._failure("table-error", exc)
            return self._accept if live else self._no_login
        try:
            login = self._client_login(request)
        except Exception as exc:
            return self._failure("table-error", exc)
        if login is None:
            return self._no_login
        user = login.user
        if user is None:
            return self._unknown_user
        sender = request.sender_address
        form = sender_form(sender)
        if form is not SenderForm.MAILBOX:
            # The null sender belongs to no user: bounces come from MTAs, not from mail
            # programs, and a neighbour behind the same NAT could hide behind "<>".
            return self._null_sender if form is SenderForm.NULL else self._not_bound
        try:
            allowed = self._allowed_for(user)
        except Exception as exc:
            return self._failure("binding-error", exc)
        if allowed is None:
            return self._unknown_user
        return self._accept if allowed.owns(user, sender) else self._not_bound

    def _allowed_for(self, user: str) -> SenderOwnership | None:
        return None if self._bind is None else self._bind(user)

    def _failure(self, what: str, exc: Exception) -> Decision:
        # A LookupFailure, not a plain DEFER: a chain still asks the policies after this
        # one, so mail that needs no table (a local recipient) is taken while it is down.
        return lookup_failure(self.name, f"{what}: {exc!r:.200}")

    def __repr__(self) -> str:
        bound = "" if self._bind is None else ", bind_sender=..."
        return f"PopBeforeSmtp({self.table!r}{bound})"


def _compiled(ownership: SenderOwnership) -> Callable[[str], SenderOwnership | None]:
    """A mapping ``bind_sender``, compiled once: the map answers for every login it names."""
    return lambda user: ownership if ownership.knows(user) else None


def _asking(
    bind_sender: Callable[[str], Iterable[str] | str | None],
) -> Callable[[str], SenderOwnership | None]:
    """A callable ``bind_sender``, asked on every check; its answer compiled each time."""

    def bound(user: str) -> SenderOwnership | None:
        found = bind_sender(user)
        return None if found is None else SenderOwnership.from_bound_senders({user: found})

    return bound
