"""RFC 5321 / RFC 6531 mailbox analysis: where is this mail really going?

Theory of operation
-------------------
A recipient arrives either in SMTP form (``"user@other"@local``, quotes kept, perhaps in
angle brackets, perhaps with a source route) or in Postfix's unquoted internal form
(``user@other@local``, as a policy service receives it). Either way we answer three
questions, once, when the request is built:

1. Is it syntactically acceptable? If not, the reply is ``501 5.1.3``. Besides RFC 5321's
   grammar, a local part that starts with ``-`` once dequoted (``-user@dom``,
   ``"-user"@dom``) is refused, as Postfix's smtpd does with its default
   ``allow_min_user = no``: a delivery agent handed ``-oQ/tmp`` on a command line could
   take it for an option. A domain that UTS 46 cannot map is bad syntax too
   (:mod:`relaypolicy.domains`).
2. What is the destination? The domain after the last ``@`` outside quotes, in canonical
   form (:mod:`relaypolicy.domains`); ``""`` when there is none. A source route
   (``@a,@b:user@dom``) is dropped: RFC 5321 section 4.1.1.3 lets a server ignore it, so
   the destination is ``user@dom``. A path has at most one pair of angle brackets, around
   the route and the mailbox (section 4.1.2, ``Path``); a second pair or a route outside
   the pair (``<<user@dom>>``, ``@a:<user@dom>``) is bad syntax, as Postfix answers for
   ``<@a:<@b:<user@dom>>>``.
3. Does the sender ask for routing? If the dequoted local part holds ``@``, ``%`` or ``!``,
   some mail software would deliver the message onward to the domain hidden inside
   (``user%other@local``, ``other!user@local``, ``"user@other"@local``). Such an address
   is *routed*, and no policy may accept it as local mail from an untrusted client.

The common address (plain ASCII ``local@domain``) takes a fast path of one regular
expression and one cached domain lookup; everything else goes through a small scanner.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from relaypolicy.domains import DomainError, normalize_domain, normalize_literal

__all__ = ["Address", "parse_address"]

MAX_LOCAL_PART_OCTETS = 64  # RFC 5321 section 4.5.3.1.1
MAX_PATH_OCTETS = 256  # RFC 5321 section 4.5.3.1.3, angle brackets included

# RFC 5322 atext, plus "." for dot-strings. "%" and "!" are atext, hence the routing check.
_ATEXT_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$&'*+/=?^_`{|}~%.-"
)


class Address(NamedTuple):
    """The analysis of one envelope address.

    ``text`` is the address as given. ``local_part`` is dequoted (``"a b"`` -> ``a b``).
    ``domain`` is the canonical destination (A-label, lower case, no trailing dot, or a
    canonical address literal such as ``[192.0.2.1]``), ``""`` when there is none.
    ``routed`` is true when the local part asks for sender-specified routing. ``error`` is
    ``None`` for a valid address, else the reason it is not.
    """

    text: str
    local_part: str
    domain: str
    routed: bool
    error: str | None

    @property
    def valid(self) -> bool:
        return self.error is None

    @property
    def is_null(self) -> bool:
        """The null path ``<>``: no local part and no domain."""
        return not self.local_part and not self.domain

    @property
    def mailbox(self) -> str:
        """``local@domain`` with the canonical domain (``local`` when domainless)."""
        return f"{self.local_part}@{self.domain}" if self.domain else self.local_part


_new = tuple.__new__
_NULL = Address("", "", "", False, None)

# Valid domain text -> canonical form, for the fast path: a plain dict answers in half the
# time of normalize_domain's lru_cache. Emptied when full, so a stranger's many distinct
# domains cost memory up to the bound and no more.
_canonical: dict[str, str] = {}
_CANONICAL_MAX = 8192


def _bad(text: str, why: str) -> Address:
    return Address(text, "", "", False, why)


def _octets(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def parse_address(text: str) -> Address:
    """Analyse an envelope address; never raises for any string.

    The null address (``""`` or ``<>``) is valid with no local part and no domain; whether
    it is acceptable where it appears is the caller's business (it is a fine sender and a
    bad recipient).
    """
    if text.__class__ is not str and not isinstance(text, str):
        return _bad(repr(text), "not a string")
    # Fast path: an atext local part, one "@", a domain name. This is most mail.
    local, at, domain = text.partition("@")
    if (
        at
        and local
        and local[0] != "-"
        and domain
        and len(local) <= MAX_LOCAL_PART_OCTETS
        and ((local.isalnum() and local.isascii()) or _ATEXT_CHARS.issuperset(local))
        and domain[0] != "["
        and "@" not in domain
        and (len(text) if text.isascii() else _octets(text)) + 2 <= MAX_PATH_OCTETS
    ):
        canonical = _canonical.get(domain)
        if canonical is None:
            try:
                canonical = normalize_domain(domain)
            except DomainError:
                return _parse_slow(text)  # which says precisely what is wrong
            if len(_canonical) >= _CANONICAL_MAX:
                _canonical.clear()
            _canonical[domain] = canonical
        return _new(Address, (text, local, canonical, "%" in local or "!" in local, None))
    return _parse_slow(text)


# A quoted string (closed), a run of unquoted text, or a stray quote (unbalanced).
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[^"]+|"', re.DOTALL)
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# Outside quotes: RFC 5322 specials other than "@" and ".", backslash, and any whitespace.
_BAD_UNQUOTED = re.compile(r"[\s\\()<>,;:\[\]]")


def _parse_slow(text: str) -> Address:
    if not text:
        return _NULL
    found = _CONTROL.search(text)
    if found is not None:
        code = ord(found.group())
        if code >= 0xD800:
            return _bad(text, "lone surrogate (not UTF-8)")
        return _bad(text, f"control character U+{code:04X}")
    path = text
    if path.startswith("<"):
        if not path.endswith(">"):
            return _bad(text, "unbalanced angle bracket")
        path = path[1:-1]
        if not path:
            return _new(Address, (text, "", "", False, None))
        if path.startswith("<"):
            return _bad(text, "nested angle brackets")
    if _octets(path) + 2 > MAX_PATH_OCTETS:
        return _bad(text, f"path longer than {MAX_PATH_OCTETS} octets")
    if path.startswith("@"):
        # A source route, "@a,@b:mailbox" (RFC 5321 section 4.1.2, A-d-l): drop it.
        colon = path.find(":")
        if colon == -1:
            return _bad(text, "source route without ':'")
        path = path[colon + 1 :]
        if not path or path.startswith("@"):
            return _bad(text, "source route without a mailbox")
        if path.startswith("<"):
            # "@a:<user@dom>" or "<@a:<user@dom>>": a Path holds one Mailbox, and
            # brackets or a route around it again would be a second Path.
            if text.startswith("<"):
                return _bad(text, "nested angle brackets")
            return _bad(text, "source route outside angle brackets")
    if path is text:
        return _parse_tokens(text, path)
    # The mailbox inside: it starts with neither "<" nor "@", so parse_address reads it
    # as a Mailbox (fast path, else _parse_tokens), never as a second Path. Its text is
    # the whole path given.
    inner = parse_address(path)
    return _new(Address, (text, *inner[1:]))


def _parse_tokens(text: str, path: str) -> Address:
    """Quoted strings, backslashes, several "@": split at the last "@" outside quotes."""
    tokens = _TOKEN.findall(path)
    if '"' in tokens:
        return _bad(text, "unbalanced quote")
    split_token = -1
    for index in range(len(tokens) - 1, -1, -1):
        token = tokens[index]
        if token[0] != '"' and "@" in token:
            split_token = index
            break
    if split_token == -1:
        local_tokens, domain_text = tokens, None
    else:
        token = tokens[split_token]
        at = token.rfind("@")
        local_tokens = [*tokens[:split_token], token[:at]] if at else tokens[:split_token]
        domain_text = token[at + 1 :] + "".join(tokens[split_token + 1 :])

    pieces: list[str] = []
    last = len(local_tokens) - 1
    for index, token in enumerate(local_tokens):
        if token[0] == '"':
            # A quoted string is a whole word (RFC 5321 Quoted-string, or a word of an
            # obsolete "a"."b" dot-string): only a dot or an "@" may touch it, never
            # other text (post"master", "us"er) and never another quoted string.
            if index > 0 and local_tokens[index - 1][-1] not in ".@":
                return _bad(text, "quoted string joined to other text")
            if index < last and local_tokens[index + 1][0] not in ".@":
                return _bad(text, "quoted string joined to other text")
            inner = token[1:-1]
            pieces.append(_UNESCAPE.sub(r"\1", inner) if "\\" in inner else inner)
        else:
            bad = _BAD_UNQUOTED.search(token)
            if bad is not None:
                char = bad.group()
                if char.isspace():
                    return _bad(text, "whitespace outside quotes")
                return _bad(text, f"invalid character {char!r} outside quotes")
            pieces.append(token)
    local = "".join(pieces)
    local_text = "".join(local_tokens)
    if _octets(local_text) > MAX_LOCAL_PART_OCTETS:
        return _bad(text, f"local part longer than {MAX_LOCAL_PART_OCTETS} octets")
    if local[:1] == "-":
        return _bad(text, "local part starts with '-' (Postfix: allow_min_user = no)")
    routed = "@" in local or "%" in local or "!" in local

    if domain_text is None:
        if not local_text:
            return _bad(text, "empty address")
        return _new(Address, (text, local, "", routed, None))
    if not domain_text:
        return _bad(text, "nothing after '@'")
    if not local_text:
        return _bad(text, "empty local part")
    if '"' in domain_text:
        return _bad(text, "quote in domain")
    try:
        if domain_text.startswith("["):
            canonical = normalize_literal(domain_text)
        else:
            canonical = normalize_domain(domain_text)
    except DomainError as exc:
        return _bad(text, str(exc))
    return _new(Address, (text, local, canonical, routed, None))
