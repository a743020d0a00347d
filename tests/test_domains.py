"""Domain normalisation and domain sets."""

from __future__ import annotations

import re
import unicodedata

import idna
import pytest

from relaypolicy import (
    DomainError,
    DomainSet,
    FirstMatch,
    LocalDomainOnly,
    Request,
    TrustedNetworks,
    Verdict,
    normalize_domain,
)
from relaypolicy.domains import normalize_literal


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("Example.ORG", "example.org"),
        ("example.org.", "example.org"),
        ("例え.jp", "xn--r8jz45g.jp"),
        ("例え.JP.", "xn--r8jz45g.jp"),
        ("XN--R8JZ45G.jp", "xn--r8jz45g.jp"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("faß.de", "xn--fa-hia.de"),  # IDNA 2008: ß is kept, not folded to ss
        ("еden.dyndns.tv", "xn--den-qdd.dyndns.tv"),  # Cyrillic е stays distinct
    ],
)
def test_normalize_domain(given: str, canonical: str) -> None:
    assert normalize_domain(given) == canonical


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("", "empty"),
        (".", "empty"),
        ("example.org..", "empty label"),
        (".example.org", "empty label"),
        ("a..b", "empty label"),
        ("a" * 64 + ".org", "label longer"),
        (".".join(["a" * 63] * 4) + ".org", "longer than 255"),
        ("exa mple.org", "invalid character"),
        ("-example.org", "invalid character"),
        ("example-.org", "invalid character"),
        ("ex_ample.org", "invalid character"),
        ("192.0.2.1", "numeric"),
        ("xn--zz.jp", "A-label"),
        ("ab--cd.example", "reserved"),
        ("lo\u200bcal.test", "invisible"),
        ("lo\u00adcal.test", "invisible"),
        ("loc\u2060al.test", "invisible"),
        ("例\ufe0fえ.jp", "invisible"),
        ("例え\u034f.jp", "invisible"),
        # Names UTS 46 would fold onto others: an MTA that only folds case disagrees.
        ("ＥＸＡＭＰＬＥ.org", "normal form"),
        ("local。test", "normal form"),
        ("ⓛocal.test", "normal form"),
        ("bu\u0308cher.example", "normal form"),
    ],
)
def test_normalize_domain_refuses(bad: str, why: str) -> None:
    with pytest.raises(DomainError, match=why):
        normalize_domain(bad)


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("[192.0.2.1]", "[192.0.2.1]"),
        ("[IPv6:2001:DB8::1]", "[ipv6:2001:db8::1]"),
        ("[ipv6:2001:db8:0:0:0:0:0:1]", "[ipv6:2001:db8::1]"),
        ("[IPv6:::ffff:192.0.2.1]", "[192.0.2.1]"),
    ],
)
def test_normalize_literal(given: str, canonical: str) -> None:
    assert normalize_literal(given) == canonical


@pytest.mark.parametrize(
    "bad", ["[321.1.2.3]", "[192.0.2]", "[2001:db8::1]", "[IPv6:192.0.2.1]", "[]", "[ 192.0.2.1]"]
)
def test_normalize_literal_refuses(bad: str) -> None:
    with pytest.raises(DomainError):
        normalize_literal(bad)


def test_domain_set_exact_and_subdomains() -> None:
    exact = DomainSet(["Example.org.", "例え.jp", "[192.0.2.1]"])
    assert "example.org" in exact
    assert "EXAMPLE.ORG." in exact
    assert "xn--r8jz45g.jp" in exact
    assert "[192.0.2.1]" in exact
    assert "mx.example.org" not in exact
    assert "not a domain!" not in exact
    nested = DomainSet(["relay.example"], subdomains=True)
    assert "a.b.relay.example" in nested
    assert "relay.example" in nested
    assert "xrelay.example" not in nested
    assert "relay.example.org" not in nested


def test_domain_set_names_the_bad_entry() -> None:
    with pytest.raises(DomainError, match=re.escape("bad domain 'a..b'")):
        DomainSet(["ok.example", "a..b"])


# Domains UTS 46 cannot map. The lists are computed from the installed idna, not written
# down, so they follow its tables: every code point for which uts46_remap raises, and the
# subset an "invisible or control" category check does not already catch (U+2024 ONE DOT
# LEADER, the parenthesised and full-stop digits U+2488..249B, U+FFFD, ...).


def _uts46_refuses(char: str) -> bool:
    try:
        idna.uts46_remap(char, std3_rules=False, transitional=False)
    except idna.IDNAError:
        return True
    return False


def _visible_refused() -> list[int]:
    return [
        code
        for code in range(0x110000)
        if unicodedata.category(chr(code))[0] not in "CZ" and _uts46_refuses(chr(code))
    ]


VISIBLE_REFUSED = _visible_refused()
CHAIN = FirstMatch(TrustedNetworks(["192.0.2.0/24"]), LocalDomainOnly(["example.org"]))


def test_the_visible_refused_code_points_are_found() -> None:
    # Guards the enumeration itself: the characters this fix was written for are in it.
    assert {0x2024, 0x2025, 0x2026, 0x2488, 0x249B, 0x2FF0, 0x33C2, 0xFE12} <= set(VISIBLE_REFUSED)


@pytest.mark.parametrize("code", VISIBLE_REFUSED, ids=lambda code: f"U+{code:04X}")
def test_a_domain_uts46_refuses(code: int) -> None:
    char = chr(code)
    domain = f"ex{char}ample.org"
    hex_code = f"U+{code:04X}"
    # normalize_domain: a DomainError naming the code point and the domain.
    with pytest.raises(DomainError, match=re.escape(hex_code)) as raised:
        normalize_domain(domain)
    assert repr(domain) in str(raised.value)
    # A recipient: bad syntax, 501 5.1.3, from the chain and from LocalDomainOnly alone.
    request = Request(client_address="203.0.113.7", recipient=f"user@{domain}")
    assert request.recipient_address.error is not None
    assert hex_code in request.recipient_address.error
    decision = CHAIN.check(request)
    assert (decision.verdict, str(decision)) == (
        Verdict.REJECT,
        "501 5.1.3 Bad recipient address syntax",
    )
    assert CHAIN.policies[1].check(request).code == 501
    # The same domain as a sender or in a routed local part never raises either.
    Request(client_address="203.0.113.7", recipient="user@example.org", sender=f"a@{domain}")
    routed = Request(client_address="203.0.113.7", recipient=f"a%{domain}@example.org")
    assert CHAIN.check(routed).verdict is Verdict.REJECT
    # A configured domain: DomainError naming the entry and the code point.
    with pytest.raises(DomainError, match=re.escape(f"bad domain {domain!r}")) as raised:
        LocalDomainOnly([domain])
    assert hex_code in str(raised.value)
    with pytest.raises(DomainError, match=re.escape(hex_code)):
        DomainSet(["example.org", f"{char}.example"])
    # Membership: simply not a member.
    members = DomainSet(["example.org"], subdomains=True)
    assert domain not in members
    assert f"a{char}.example.org" not in members
    assert char not in members


def test_every_code_point_uts46_refuses_is_a_domain_error() -> None:
    refused = [code for code in range(0x110000) if _uts46_refuses(chr(code))]
    assert len(refused) > 100_000  # unassigned, private use, surrogates, the visible ones
    members = DomainSet(["example.org"], subdomains=True)
    mapped, members_found = [], []
    for code in refused:
        domain = f"a{chr(code)}.example.org"
        try:
            normalize_domain(domain)  # anything but DomainError fails the test here
        except DomainError:
            pass
        else:
            mapped.append(f"U+{code:04X}")
        if domain in members:
            members_found.append(f"U+{code:04X}")
    assert mapped == []
    assert members_found == []
