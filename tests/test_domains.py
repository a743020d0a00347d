"""Domain normalisation and domain sets."""

from __future__ import annotations

import re

import pytest

from relaypolicy import DomainError, DomainSet, normalize_domain
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
