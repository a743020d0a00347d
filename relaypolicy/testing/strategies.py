"""Hypothesis strategies for relay policies: clients, mailboxes, routed recipients, requests.

Importing this module imports Hypothesis (``pip install hypothesis``); nothing else in
relaypolicy does. Use them to state laws about a policy::

    @given(routed_recipients(["example.org"], ["aho.jp"]), client_addresses())
    def test_no_routing_trick_is_accepted(recipient, client):
        request = Request(client_address=client, recipient=recipient)
        assert policy.check(request).verdict is not Verdict.ACCEPT
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from relaypolicy.model import Request

__all__ = [
    "client_addresses",
    "domains",
    "local_parts",
    "mailboxes",
    "requests",
    "routed_recipients",
]

_ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789#$&'*+/=?^_`{|}~-"
_LABEL_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def client_addresses(*, v4: bool = True, v6: bool = True, mapped: bool = True) -> Any:
    """Client IP addresses as text: IPv4, IPv6, and IPv4-mapped IPv6 (``::ffff:a.b.c.d``,
    which a policy must treat as the IPv4 address)."""
    choices = []
    if v4:
        choices.append(st.ip_addresses(v=4).map(str))
    if v6:
        choices.append(st.ip_addresses(v=6).map(str))
    if mapped:
        choices.append(st.ip_addresses(v=4).map(lambda address: f"::ffff:{address}"))
    if not choices:
        raise ValueError("client_addresses: allow at least one of v4, v6, mapped")
    return st.one_of(choices)


def _dot_atom(chars: str | st.SearchStrategy[str]) -> Any:
    word = st.text(chars, min_size=1, max_size=12)
    return st.lists(word, min_size=1, max_size=3).map(".".join)


def _quoted(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def local_parts(*, quoted: bool = True, utf8: bool = True) -> Any:
    """Local parts that ask for no routing: dot-atoms (RFC 5321), quoted strings with
    spaces and escapes, and UTF-8 (RFC 6531). At most 64 octets; never ``@ % !``."""
    ascii_atoms = _dot_atom(_ATEXT)
    choices = [ascii_atoms]
    if quoted:
        inside = st.text(
            st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="@%!"),
            min_size=0,
            max_size=20,
        )
        choices.append(inside.map(_quoted))
    if utf8:
        letters = st.characters(categories=["Ll", "Lu", "Lo"], min_codepoint=0x80)
        choices.append(_dot_atom(st.one_of(st.sampled_from(_ATEXT), letters)))
    return st.one_of(choices).filter(lambda text: len(text.encode("utf-8")) <= 64)


def domains() -> Any:
    """Syntactically valid ASCII domain names (``a1.b-c.example``), never numeric at the end."""
    label = st.text(_LABEL_CHARS, min_size=1, max_size=10).filter(lambda text: text[2:4] != "--")
    top = st.text("abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=6)
    return st.tuples(st.lists(label, min_size=1, max_size=3), top).map(
        lambda parts: ".".join([*parts[0], parts[1]])
    )


def mailboxes(domain: str | Sequence[str] | None = None, **local_part_options: Any) -> Any:
    """``local@domain`` mailboxes, at ``domain`` (one, a list to choose from, or any)."""
    if domain is None:
        domain_strategy = domains()
    elif isinstance(domain, str):
        domain_strategy = st.just(domain)
    else:
        domain_strategy = st.sampled_from(list(domain))
    return st.builds(
        lambda local, name: f"{local}@{name}", local_parts(**local_part_options), domain_strategy
    )


def routed_recipients(local_domains: Sequence[str], foreign_domains: Sequence[str]) -> Any:
    """Recipients that ask a local domain to route to a foreign one (or route without a
    domain at all): the percent hack, bang paths, a quoted or second ``@``, source routes
    to a routed mailbox, in any letter case."""
    local = st.sampled_from(list(local_domains))
    foreign = st.sampled_from(list(foreign_domains))
    user = _dot_atom(_ATEXT)
    forms = [
        lambda u, f, d: f"{u}%{f}@{d}",
        lambda u, f, d: f"{f}!{u}@{d}",
        lambda u, f, d: f'"{u}@{f}"@{d}',
        lambda u, f, d: f"{u}@{f}@{d}",
        lambda u, f, d: f'"{u}%{f}"@{d}',
        lambda u, f, d: f"{d}!{f}!{u}@{d}",
        lambda u, f, d: f"@{d}:{u}%{f}@{d}",
        lambda u, f, d: f"{u}%{f}",
        lambda u, f, d: f"{f}!{u}",
        lambda u, f, d: f'"{u}@{f}"',
    ]
    shape = st.sampled_from(forms)
    recipient = st.builds(lambda form, u, f, d: form(u, f, d), shape, user, foreign, local)
    return st.tuples(recipient, st.booleans()).map(
        lambda pair: pair[0].upper() if pair[1] else pair[0]
    )


def _request(**fields: Any) -> Request:
    # Not st.builds(Request): Hypothesis would also fill the derived fields of the tuple.
    return Request(**fields)


def requests(
    recipients: Any = None,
    *,
    clients: Any = None,
    senders: Any = None,
    authenticated: bool | None = False,
) -> Any:
    """Whole :class:`~relaypolicy.Request` objects.

    ``recipients``, ``clients`` and ``senders`` are strategies (defaults: any mailbox, any
    client address, the null sender or any mailbox). ``authenticated``: ``False`` (the
    default) never sets ``sasl_username``, ``True`` always does, ``None`` sometimes; TLS
    and the server port vary freely.
    """
    if authenticated is None:
        logins = st.one_of(st.just(""), st.text(_LABEL_CHARS, min_size=1, max_size=8))
    elif authenticated:
        logins = st.text(_LABEL_CHARS, min_size=1, max_size=8)
    else:
        logins = st.just("")
    return st.builds(
        _request,
        client_address=clients if clients is not None else client_addresses(),
        recipient=recipients if recipients is not None else mailboxes(),
        sender=senders if senders is not None else st.one_of(st.just(""), mailboxes()),
        sasl_username=logins,
        encryption_protocol=st.sampled_from(["", "TLSv1.2", "TLSv1.3"]),
        server_port=st.sampled_from([0, 25, 465, 587]),
    )
