"""RFC 5321 / RFC 6531 mailbox analysis: where is this mail really going?

Theory of operation
-------------------
A recipient arrives either in SMTP form (``"user@other"@local``, quotes kept, perhaps in
angle brackets, perhaps with a source route) or in Postfix's unquoted internal form
(``user@other@local``, as a policy service receives it). Either way we answer three
questions, once, when the request is built:

1. Is it syntactically acceptable? If not, the reply is ``501 5.1.3``.
2. What is the destination? The domain after the last ``@`` outside quotes, in canonical
   form (:mod:`relaypolicy.domains`); ``""`` when there is none. A source route
   (``@a,@b:user@dom``) is dropped: RFC 5321 section 4.1.1.3 lets a server ignore it, so
   the destination is ``user@dom``.
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
_ATEXT = "A-Za-z0-9!#$&'*+/=?^_`{|}~%.-"
_PLAIN = re.compile(rf"([{_ATEXT}]+)@([A-Za-z0-9.-]+)")
_ATEXT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$&'*+/=?^_`{|}~%.-")
_ROUTING = re.compile(r"[@%!]")


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
    def mailbox(self) -> str:
        """``local@domain`` with the canonical domain (``local`` when domainless)."""
        return f"{self.local_part}@{self.domain}" if self.domain else self.local_part


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
    if not isinstance(text, str):
        return _bad(repr(text), "not a string")
    match = _PLAIN.fullmatch(text)
    if match is not None:
        local, domain = match.group(1, 2)
        if len(local) > MAX_LOCAL_PART_OCTETS:
            return _bad(text, f"local part longer than {MAX_LOCAL_PART_OCTETS} octets")
        if len(text) + 2 > MAX_PATH_OCTETS:
            return _bad(text, f"path longer than {MAX_PATH_OCTETS} octets")
        try:
            canonical = normalize_domain(domain)
        except DomainError as exc:
            return _bad(text, str(exc))
        return Address(text, local, canonical, "%" in local or "!" in local, None)
    return _parse_slow(text)


def _parse_slow(text: str) -> Address:
    path = text
    if path.startswith("<"):
        if not path.endswith(">"):
            return _bad(text, "unbalanced angle bracket")
        path = path[1:-1]
    if not path:
        return Address(text, "", "", False, None)
    if _octets(path) + 2 > MAX_PATH_OCTETS:
        return _bad(text, f"path longer than {MAX_PATH_OCTETS} octets")
    for char in path:
        code = ord(char)
        if code < 0x20 or 0x7F <= code < 0xA0:
            return _bad(text, f"control character U+{code:04X}")
        if 0xD800 <= code < 0xE000:
            return _bad(text, "lone surrogate (not UTF-8)")
    if path.startswith("@"):
        # A source route, "@a,@b:mailbox" (RFC 5321 section 4.1.2, A-d-l): drop it.
        colon = path.find(":")
        if colon == -1:
            return _bad(text, "source route without ':'")
        path = path[colon + 1 :]
        if not path:
            return _bad(text, "source route without a mailbox")

    # Split at the last "@" outside quotes, dequoting the local part as we go.
    local_chars: list[str] = []
    split_at = -1
    in_quotes = False
    escaped = False
    pieces: list[tuple[int, str]] = []  # (index in path, dequoted char) of the local part
    for index, char in enumerate(path):
        if escaped:
            pieces.append((index, char))
            escaped = False
        elif in_quotes:
            if char == "\\":
                escaped = True
            elif char == '"':
                in_quotes = False
            else:
                pieces.append((index, char))
        elif char == '"':
            in_quotes = True
        elif char == "\\":
            return _bad(text, "backslash outside quotes")
        else:
            if char == "@":
                split_at = index
            elif char.isspace():
                return _bad(text, "whitespace outside quotes")
            elif char.isascii() and char not in _ATEXT_CHARS and not (
                char in "[]:" and split_at != -1
            ):
                # "[" "]" ":" may appear only in the part after an "@" (address literals);
                # the domain check below decides whether that part is valid.
                return _bad(text, f"invalid character {char!r} outside quotes")
            pieces.append((index, char))
    if in_quotes or escaped:
        return _bad(text, "unbalanced quote")

    if split_at == -1:
        local_text, domain_text = path, None
    else:
        local_text, domain_text = path[:split_at], path[split_at + 1 :]
    local_chars = [char for index, char in pieces if split_at == -1 or index < split_at]
    local = "".join(local_chars)
    if _octets(local_text) > MAX_LOCAL_PART_OCTETS:
        return _bad(text, f"local part longer than {MAX_LOCAL_PART_OCTETS} octets")
    routed = _ROUTING.search(local) is not None

    if domain_text is None:
        if not local:
            return _bad(text, "empty address")
        return Address(text, local, "", routed, None)
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
    return Address(text, local, canonical, routed, None)
