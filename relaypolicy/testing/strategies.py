"""Hypothesis strategies for relay policies: clients, mailboxes, routed recipients, requests,
and hostile text from the whole Unicode range.

Importing this module imports Hypothesis (``pip install hypothesis``); nothing else in
relaypolicy does. Use them to state laws about a policy::

    @given(routed_recipients(["example.org"], ["aho.jp"]), client_addresses())
    def test_no_routing_trick_is_accepted(recipient, client):
        request = Request(client_address=client, recipient=recipient)
        assert policy.check(request).verdict is not Verdict.ACCEPT

The valid-address strategies (:func:`local_parts`, :func:`mailboxes`, :func:`domains`)
draw only what a policy should accept; :func:`unicode_text` and
:func:`hostile_recipients` draw anything at all, for laws such as "``Request`` never
raises" and "nothing but a local domain is accepted as local".
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from functools import cache
from typing import Any

import idna
from hypothesis import strategies as st

from relaypolicy.model import Request

__all__ = [
    "client_addresses",
    "domains",
    "hostile_recipients",
    "local_parts",
    "mailboxes",
    "requests",
    "routed_recipients",
    "unicode_characters",
    "unicode_text",
    "uts46_disallowed_characters",
]

_ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789#$&'*+/=?^_`{|}~-"
_LABEL_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"

# Characters address and domain code must survive, drawn more often than their share of
# the code space: address specials, invisible characters UTS 46 ignores, characters it
# folds onto ASCII (full-width, circled, the Kelvin sign, an ideographic full stop), a
# combining mark, look-alikes, line breaks, lone surrogates and the ends of the range.
_TRICKY = (
    '@%!"\\<>:,;.[]()- \t\r\n\x00\x7f'
    "\u00ad\u034f\u200b\u200c\u200d\u2060\ufe0f\ufeff\u3000\u2028"
    "\uff4c\uff2c\u3002\u24db\u0308\u212a\u017f\u00df\u0130\u043e\u0435\u4f8b\u3048"
    "\ud800\udfff\U000e0001\U0010ffff"
)


@cache
def _uts46_disallowed() -> tuple[str, ...]:
    visible = []
    for code in range(0x110000):
        char = chr(code)
        if unicodedata.category(char)[0] in "CZ":
            continue
        try:
            idna.uts46_remap(char, std3_rules=False, transitional=False)
        except idna.IDNAError:
            visible.append(char)
    return tuple(visible)


def uts46_disallowed_characters() -> st.SearchStrategy[str]:
    """The visible characters UTS 46 disallows: U+2024 ONE DOT LEADER, U+2025, U+2026, the
    parenthesised and full-stop digits U+2488..249B, U+FFFD, ... (about 45).

    Computed from the installed ``idna`` on first use (a third of a second), so the list
    follows its tables. They are the ones a check for control, format, unassigned, private
    use and space characters does not catch.
    """
    return st.sampled_from(_uts46_disallowed())


def unicode_characters() -> st.SearchStrategy[str]:
    """Any one code point, U+0000..U+10FFFF: lone surrogates, unassigned and private-use
    code points included, with extra weight on the characters that break address code
    (:func:`uts46_disallowed_characters`, invisible and case-folded ones, specials)."""
    return st.one_of(
        st.characters(min_codepoint=0, max_codepoint=0x10FFFF),
        uts46_disallowed_characters(),
        st.sampled_from(_TRICKY),
    )


def unicode_text(*, min_size: int = 0, max_size: int = 40) -> st.SearchStrategy[str]:
    """Text of :func:`unicode_characters`: what a stranger may put in ``RCPT TO``."""
    # Not st.text(unicode_characters()): text() merges the alphabet's character ranges
    # into one, and the weighted characters would drown in the other million.
    characters = st.lists(unicode_characters(), min_size=min_size, max_size=max_size)
    return characters.map("".join)


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
    # Never a leading "-": Postfix refuses such a local part (allow_min_user = no).
    word = st.text(chars, min_size=1, max_size=12)
    return st.lists(word, min_size=1, max_size=3).map(".".join).filter(lambda t: t[0] != "-")


def _quoted(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def local_parts(*, quoted: bool = True, utf8: bool = True) -> Any:
    """Local parts that ask for no routing: dot-atoms (RFC 5321), quoted strings with
    spaces and escapes, and UTF-8 (RFC 6531). At most 64 octets; never ``@ % !``, never a
    leading ``-`` once dequoted (Postfix ``allow_min_user = no``)."""
    ascii_atoms = _dot_atom(_ATEXT)
    choices = [ascii_atoms]
    if quoted:
        inside = st.text(
            st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="@%!"),
            min_size=0,
            max_size=20,
        ).filter(lambda text: text[:1] != "-")
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
    recipient = (
        st.builds(lambda form, u, f, d: (form(u, f, d), d), shape, user, foreign, local)
        .filter(_fits_local_part)
        .map(lambda pair: pair[0])
    )
    return st.tuples(recipient, st.booleans()).map(
        lambda pair: pair[0].upper() if pair[1] else pair[0]
    )


def _fits_local_part(pair: tuple[str, str]) -> bool:
    """Whether the local part (all before ``@domain``, or all of a bare one) keeps within
    RFC 5321's 64 octets (section 4.5.3.1.1): a longer one is bad syntax, not a trick."""
    text, domain = pair
    local = text[: -len(domain) - 1] if text.endswith(f"@{domain}") else text
    return len(local.encode()) <= 64


def _splice(text: str, noise: str, at: int) -> str:
    position = at % (len(text) + 1)
    return text[:position] + noise + text[position:]


def hostile_recipients(local_domains: Sequence[str]) -> st.SearchStrategy[str]:
    """Recipients that look like mail for one of ``local_domains`` but may be anything.

    A local domain as given, in upper case, with a trailing dot, or with
    :func:`unicode_text` spliced in anywhere; a valid local part or any text; the mailbox
    bare, in angle brackets or behind a source route; or just any text. A law over them:
    whatever a policy accepts as local really is one of ``local_domains``.
    """
    if isinstance(local_domains, str):
        raise TypeError("local_domains must be a sequence of names, not one string")
    local = st.sampled_from(list(local_domains))
    noise = unicode_text(min_size=1, max_size=3)
    where = st.integers(min_value=0, max_value=255)
    domain = st.one_of(
        local,
        local.map(str.upper),
        local.map(lambda name: name + "."),
        st.builds(_splice, local, noise, where),
        unicode_text(max_size=20),
    )
    user = st.one_of(
        local_parts(),
        unicode_text(min_size=1, max_size=12),
        st.builds(_splice, local_parts(), noise, where),
    )
    mailbox = st.builds(lambda name, at: f"{name}@{at}", user, domain)
    return st.one_of(
        mailbox,
        mailbox.map(lambda text: f"<{text}>"),
        st.builds(lambda hop, text: f"@{hop}:{text}", domain, mailbox),
        unicode_text(),
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
