"""Domain names as a relay decision must compare them.

One canonical form for every domain: lower-case ASCII, A-labels for internationalised
labels (IDNA 2008 with UTS 46 mapping, through the ``idna`` package), no trailing dot.
``例え.jp``, ``XN--R8JZ45G.JP.`` and ``xn--r8jz45g.jp`` are one domain; a look-alike
(Cyrillic ``е`` in ``еden.example``) is another.

UTS 46 *ignores* some invisible code points (zero-width space, soft hyphen, variation
selectors): plain ``idna.encode("lo\\u200bcal.jp", uts46=True)`` gives ``local.jp``. A
stranger could hide such a character in a recipient so that one program sees a foreign
domain and another sees ours, so we refuse any domain containing one instead of mapping it
away. UTS 46 *disallows* others outright (U+2024 ONE DOT LEADER, the parenthesised and
full-stop digits U+2488..249B, U+FFFD, ...); ``idna`` raises for them, and so do we, with a
:class:`DomainError` naming the code point. Every call into ``idna`` turns its failures
(all ``ValueError``) into :class:`DomainError`, so nothing else escapes: a recipient whose
domain cannot be mapped is bad syntax (``501 5.1.3``, as Postfix answers), a configured
one a clear error, never a crash.

Address literals (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``) are kept in a canonical form of
their own (``[192.0.2.1]``, ``[ipv6:2001:db8::1]``) so they can be listed among the local
domains and compared like names.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import TypeVar

import idna

from relaypolicy.errors import DomainError
from relaypolicy.networks import parse_ip

__all__ = ["DomainError", "DomainSet", "normalize_domain", "normalize_literal"]

MAX_DOMAIN_OCTETS = 255  # RFC 5321 section 4.5.3.1.2
MAX_LABEL_OCTETS = 63  # RFC 1035 section 2.3.4

# RFC 5321 section 4.1.2: sub-domain = Let-dig [Ldh-str]
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_DIGITS = re.compile(r"[0-9]+")


_T = TypeVar("_T")


def _idna(function: Callable[[str], _T], text: str, why: str) -> _T:
    """``function(text)`` for an ``idna`` function; any failure is a :class:`DomainError`.

    ``idna`` raises :class:`idna.IDNAError` (a :class:`UnicodeError`) and documents a bare
    :class:`ValueError` from its CONTEXTJ helper; catching ``ValueError`` covers both. The
    message starts with ``why`` and ends with idna's own reason.
    """
    try:
        return function(text)
    except ValueError as exc:
        raise DomainError(f"{why}: {exc}") from None


def _check_ascii(domain: str, original: str) -> str:
    if len(domain) > MAX_DOMAIN_OCTETS:
        raise DomainError(f"domain longer than {MAX_DOMAIN_OCTETS} octets")
    labels = domain.split(".")
    for label in labels:
        if not label:
            raise DomainError(f"empty label in domain {original!r}")
        if len(label) > MAX_LABEL_OCTETS:
            raise DomainError(f"label longer than {MAX_LABEL_OCTETS} octets")
        if not _LABEL.fullmatch(label):
            raise DomainError(f"invalid character in domain label {label!r}")
        if label.startswith("xn--"):
            why = f"invalid A-label {label!r}"
            reencoded = _idna(idna.encode, _idna(idna.decode, label, why), why)
            if reencoded != label.encode("ascii"):
                raise DomainError(f"non-canonical A-label {label!r}")
        elif label[2:4] == "--":
            # RFC 5891 section 4.2.3.1: "??--" labels are reserved for A-labels.
            raise DomainError(f"reserved label {label!r}")
    if _DIGITS.fullmatch(labels[-1]):
        # A bare IP address or numeric top-level name; RFC 5321 wants [192.0.2.1].
        raise DomainError(f"numeric top-level label in {original!r}; use an address literal")
    return domain


def _remap(text: str) -> str:
    # UTS 46 mapping without the STD3 ASCII rules (_check_ascii applies RFC 5321's own).
    return idna.uts46_remap(text, std3_rules=False, transitional=False)


def _check_char(char: str, original: str) -> None:
    """Refuse a non-ASCII code point that UTS 46 ignores or disallows, or that is invisible."""
    category = unicodedata.category(char)
    if category[0] in "CZ":  # controls, format, unassigned, private use, surrogates, spaces
        raise DomainError(f"invisible or control character U+{ord(char):04X} in domain")
    try:
        mapped = _remap(char)
    except ValueError:  # idna.InvalidCodepoint: UTS 46 disallows it
        raise DomainError(
            f"code point U+{ord(char):04X} in {original!r} is not allowed in a domain name (UTS 46)"
        ) from None
    if mapped == "":
        raise DomainError(f"invisible or control character U+{ord(char):04X} in domain")


@lru_cache(maxsize=8192)
def normalize_domain(text: str) -> str:
    """The canonical form of a domain name, or :class:`DomainError`.

    One trailing dot is ignored. Address literals are not domains: use
    :func:`normalize_literal`. Any string is either mapped or refused with
    :class:`DomainError` (lone surrogates, unassigned and UTS 46-disallowed code points
    included); nothing else is raised.
    """
    domain = text[:-1] if text.endswith(".") else text
    if not domain:
        raise DomainError("empty domain")
    if domain.isascii():
        return _check_ascii(domain.lower(), text)
    for char in domain:
        if not char.isascii():
            _check_char(char, text)
    lowered = domain.lower()
    mapped = _idna(_remap, lowered, "invalid internationalised domain")
    if mapped != lowered:
        # UTS 46 would fold this name onto another (full-width letters, "。" for ".",
        # circled letters, decomposed accents). An MTA that only folds case sees a
        # different domain, so two programs would disagree about whether it is ours.
        raise DomainError("domain is not in normal form (UTS 46 would change it)")
    encoded = _idna(idna.encode, mapped, "invalid internationalised domain")
    return _check_ascii(encoded.decode("ascii"), text)


@lru_cache(maxsize=1024)
def normalize_literal(text: str) -> str:
    """The canonical form of an address literal (RFC 5321 section 4.1.3).

    ``[192.0.2.1]`` stays; ``[IPv6:2001:DB8:0::1]`` becomes ``[ipv6:2001:db8::1]``; an
    IPv4-mapped IPv6 literal is folded to the IPv4 one. Anything else raises
    :class:`DomainError` (general address literals are not interpreted).
    """
    if len(text) < 3 or text[0] != "[" or text[-1] != "]":
        raise DomainError(f"not an address literal: {text!r}")
    inner = text[1:-1]
    is_v6 = inner[:5].lower() == "ipv6:"
    body = inner[5:] if is_v6 else inner
    if not body or not all(c.isascii() and (c.isalnum() or c in ".:") for c in body):
        raise DomainError(f"invalid address literal {text!r}")
    try:
        parsed = parse_ip(body)
    except ValueError:
        raise DomainError(f"invalid address literal {text!r}") from None
    if is_v6 and ":" not in body:
        raise DomainError(f"invalid address literal {text!r}")
    if not is_v6 and parsed.version == 6 and ":" in body:
        raise DomainError(f"IPv6 address literal without the IPv6: tag: {text!r}")
    if parsed.version == 4:
        return f"[{parsed.text}]"
    return f"[ipv6:{parsed.text}]"


def normalize_destination(text: str) -> str:
    """A domain or an address literal, in canonical form."""
    if text.startswith("["):
        return normalize_literal(text)
    return normalize_domain(text)


class DomainSet:
    """A set of domains (and address literals), optionally matching their subdomains.

    With ``subdomains=True`` a domain matches itself and every name below it, which is how
    Postfix's ``relay_domains`` treats its entries (``parent_domain_matches_subdomains``).
    Entries are normalised on the way in; a bad entry raises :class:`DomainError` naming it.
    """

    __slots__ = ("domains", "subdomains")

    def __init__(self, domains: Iterable[str], *, subdomains: bool = False) -> None:
        if isinstance(domains, str):
            raise TypeError("domains must be an iterable of names, not one string")
        canonical: set[str] = set()
        for entry in domains:
            try:
                canonical.add(normalize_destination(entry.strip()))
            except DomainError as exc:
                raise DomainError(f"bad domain {entry!r}: {exc}") from None
        self.domains: frozenset[str] = frozenset(canonical)
        self.subdomains = subdomains

    def matches(self, domain: str) -> bool:
        """Whether a canonical domain is in the set (or below an entry, with subdomains)."""
        if domain in self.domains:
            return True
        if self.subdomains and not domain.startswith("["):
            dot = domain.find(".")
            while dot != -1:
                domain = domain[dot + 1 :]
                if domain in self.domains:
                    return True
                dot = domain.find(".")
        return False

    def __contains__(self, domain: object) -> bool:
        if not isinstance(domain, str):
            return False
        try:
            return self.matches(normalize_destination(domain))
        except DomainError:
            return False

    def __len__(self) -> int:
        return len(self.domains)

    def __repr__(self) -> str:
        return f"DomainSet({sorted(self.domains)!r}, subdomains={self.subdomains})"
