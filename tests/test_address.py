"""Recipient analysis, table-driven: every form of the core issue and nmap's 16 relay probes.

Each row is (recipient as the client gives it, expected verdict, expected reason) for
``LocalDomainOnly`` with the domains below, asked on behalf of an untrusted client.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaypolicy import (
    FirstMatch,
    LocalDomainOnly,
    Request,
    TrustedNetworks,
    Verdict,
    parse_address,
)
from relaypolicy import address as address_module
from relaypolicy.address import _parse_slow
from relaypolicy.testing.strategies import hostile_recipients, unicode_text

LOCAL = ["local.test", "xn--r8jz45g.jp", "[192.0.2.1]", "[IPv6:2001:db8::1]"]
RELAY = ["relay.test"]
POLICY = LocalDomainOnly(LOCAL, relay_domains=RELAY)

A, R = Verdict.ACCEPT, Verdict.REJECT
FOREIGN = "relaytest@nmap.scanme.org"

# fmt: off
CASES: list[tuple[str, Verdict, str]] = [
    # Plain local, relay and foreign destinations.
    ("user@local.test", A, "local"),
    ("<user@local.test>", A, "local"),
    ("USER@LOCAL.TEST", A, "local"),
    ("user@Local.Test.", A, "local"),
    ("first.last+tag@local.test", A, "local"),
    ("o'brien@local.test", A, "local"),
    ("user@relay.test", A, "relay-domain"),
    ("user@mx.relay.test", A, "relay-domain"),
    ("user@a.b.relay.test", A, "relay-domain"),
    ("user@sub.local.test", R, "not-local"),  # local domains match exactly
    ("user@notrelay.test", R, "not-local"),
    ("user@relay.test.evil", R, "not-local"),
    ("user@local.test.evil.example", R, "not-local"),
    ("user@evil-local.test", R, "not-local"),
    ("yoshino_yomogiya@aho.jp", R, "not-local"),
    ("user@localtest", R, "not-local"),
    # Sender-specified routing (RFC 5321 appendix C / RFC 1123 percent hack, bang paths).
    ("user%aho.jp@local.test", R, "routing"),
    ("user%aho.jp@relay.test", R, "routing"),
    ("user%local.test@local.test", R, "routing"),  # Postfix may accept; we are stricter
    ("aho.jp!user@local.test", R, "routing"),
    ("aho.jp!user@relay.test", R, "routing"),
    ('"user@aho.jp"@local.test', R, "routing"),
    ('"user%aho.jp"@local.test', R, "routing"),
    ('"aho.jp!user"@local.test', R, "routing"),
    ("user@aho.jp@local.test", R, "routing"),
    ('"user"@aho.jp@local.test', R, "routing"),
    ('"user\\@aho.jp"@local.test', R, "routing"),
    ('"us\\"er@aho.jp"@local.test', R, "routing"),
    ("user%aho.jp%other.example@local.test", R, "routing"),
    ("a!b!user@local.test", R, "routing"),
    ('"user%aho.jp"', R, "routing"),
    ("aho.jp!user", R, "routing"),
    ("user%aho.jp", R, "routing"),
    ("USER%AHO.JP@LOCAL.TEST", R, "routing"),
    # Source routes are stripped: the destination is the final mailbox.
    ("@relay.test:user@local.test", A, "local"),
    ("<@a.example,@b.example:user@local.test>", A, "local"),
    ("@local.test:user@aho.jp", R, "not-local"),
    ("<@local.test:user@aho.jp>", R, "not-local"),
    ("@local.test:user%aho.jp@local.test", R, "routing"),
    ("@local.test", R, "syntax"),
    ("@local.test:", R, "syntax"),
    # Junk in the hops is ignored with the route, as Postfix 3.7 does (checked against it
    # in test_postfix_differential.py): RFC 5321 lets a server ignore the whole route.
    ("<@a,b:user@local.test>", A, "local"),
    ('<@"a":user@local.test>', A, "local"),
    ('@a,@"b":user@local.test', A, "local"),
    ("@a b:user@local.test", A, "local"),
    ("@a,b:user@aho.jp", R, "not-local"),
    ('@"a:b":user@local.test', R, "syntax"),  # the route ends at the first ":"
    ("@a:b,c:user@local.test", R, "syntax"),
    # A local part that starts with "-" once dequoted: Postfix allow_min_user = no.
    ("-user@local.test", R, "syntax"),
    ("-@local.test", R, "syntax"),
    ('"-user"@local.test', R, "syntax"),
    ('"\\-user"@local.test', R, "syntax"),
    ("<-user@local.test>", R, "syntax"),
    ("@local.test:-user@local.test", R, "syntax"),
    ("-user", R, "syntax"),
    ("-user@aho.jp", R, "syntax"),
    ("-user%aho.jp@local.test", R, "syntax"),
    ("user-@local.test", A, "local"),
    ("a-b@local.test", A, "local"),
    ('" -user"@local.test', A, "local"),
    # Internationalised domains: U-labels and A-labels are one domain.
    ("user@例え.jp", A, "local"),
    ("user@xn--r8jz45g.jp", A, "local"),
    ("user@XN--R8JZ45G.JP", A, "local"),
    ("user@例え.JP.", A, "local"),
    ("ユーザー@例え.jp", A, "local"),  # SMTPUTF8 local part
    ("user@例え.jp.evil", R, "not-local"),
    ("user@lоcal.test", R, "not-local"),  # Cyrillic "о": a look-alike is another domain
    ("user@еxample.jp", R, "not-local"),
    ("user@lo\u200bcal.test", R, "syntax"),  # zero-width space: UTS 46 would drop it
    ("user@lo\u00adcal.test", R, "syntax"),  # soft hyphen
    ("user@local\u200d.test", R, "syntax"),  # zero-width joiner
    ("user@local.test\ufeff", R, "syntax"),  # BOM
    ("user@例\ufe0fえ.jp", R, "syntax"),  # variation selector
    ("user@xn--zz.jp", R, "syntax"),  # invalid A-label
    ("user@ｌｏｃａｌ.test", R, "syntax"),  # full-width: UTS 46 maps, Postfix does not
    ("user@local。test", R, "syntax"),  # ideographic full stop
    ("user@例え.ｊｐ", R, "syntax"),
    ("user@ⓛocal.test", R, "syntax"),  # circled letter
    ("user@bu\u0308cher.test", R, "syntax"),  # decomposed accent
    # Address literals.
    ("user@[192.0.2.1]", A, "local"),
    ("user@[IPv6:2001:db8::1]", A, "local"),
    ("user@[ipv6:2001:DB8:0:0::1]", A, "local"),
    ("user@[IPv6:::ffff:192.0.2.1]", A, "local"),  # IPv4-mapped folds to the IPv4 literal
    ("user@[192.0.2.2]", R, "not-local"),
    ("user@[127.0.0.1]", R, "not-local"),
    ("user@[321.1.2.3]", R, "syntax"),
    ("user@[192.0.2]", R, "syntax"),
    ("user@[192.0.2.1", R, "syntax"),
    ("user@[2001:db8::1]", R, "syntax"),  # IPv6 without the IPv6: tag
    ("user@[x-tag:whatever]", R, "syntax"),
    ("user@192.0.2.1", R, "syntax"),  # bare IP address
    ("user@1234", R, "syntax"),
    # Domainless: only postmaster is local (RFC 5321 section 4.5.1).
    ("postmaster", A, "local"),
    ("Postmaster", A, "local"),
    ("POSTMASTER", A, "local"),
    ("<postmaster>", A, "local"),
    ("user", R, "not-local"),
    ("abuse", R, "not-local"),
    # Quoted local parts that are not routed.
    ('"saya yomogi"@local.test', A, "local"),
    ('"user"@local.test', A, "local"),
    ('"a\\"b"@local.test', A, "local"),
    ('""@local.test', A, "local"),
    ('"user"."name"@local.test', A, "local"),  # obsolete but accepted by Postfix too
    ('post"master"', R, "syntax"),  # a quoted string glued to text
    ('us"er"@local.test', R, "syntax"),
    ('"us"er@local.test', R, "syntax"),
    ('"a"b"c"@local.test', R, "syntax"),
    ('"a""b"@local.test', R, "syntax"),
    ('"saya yomogi"@aho.jp', R, "not-local"),
    # Syntax errors: 501 5.1.3.
    ("", R, "syntax"),
    ("<>", R, "syntax"),
    ("user@", R, "syntax"),
    ("@", R, "syntax"),
    ("user@@local.test", R, "routing"),
    ("user@local..test", R, "syntax"),
    ("user@.local.test", R, "syntax"),
    ("user@local.test..", R, "syntax"),
    ("user@-local.test", R, "syntax"),
    ("user@local_test.example", R, "syntax"),
    ("user@local.test ", R, "syntax"),
    (" user@local.test", R, "syntax"),
    ("us er@local.test", R, "syntax"),
    ("user@local.test\r\nRCPT TO:<x@aho.jp>", R, "syntax"),
    ("user\x00@local.test", R, "syntax"),
    ("user@local.test\x00", R, "syntax"),
    ("user\x7f@local.test", R, "syntax"),
    ("us\u3000er@local.test", R, "syntax"),  # ideographic space
    ('"unterminated@local.test', R, "syntax"),
    ("user\\@aho.jp@local.test", R, "syntax"),  # backslash outside quotes
    ("user(comment)@local.test", R, "syntax"),
    ("<user@local.test", R, "syntax"),
    # One pair of angle brackets around the whole path, the route inside (RFC 5321 Path).
    ("<<user@local.test>>", R, "syntax"),
    ("<@aho.jp:<user@local.test>>", R, "syntax"),
    ("@aho.jp:<user@local.test>", R, "syntax"),
    ("@aho.jp:<user@aho.jp>", R, "syntax"),
    ("@a:<@b:<user@local.test>>", R, "syntax"),
    ("@a:<@b:user@local.test>", R, "syntax"),
    ("@a:<>", R, "syntax"),
    ("<@a:<>>", R, "syntax"),
    ("<@a:user@local.test>>", R, "syntax"),
    ("<user>@local.test", R, "syntax"),
    ('user@"local.test"', R, "syntax"),
    ("user@local.test>", R, "syntax"),
    ("u" * 65 + "@local.test", R, "syntax"),
    ("u" * 64 + "@local.test", A, "local"),
    ("user@" + "a" * 64 + ".test", R, "syntax"),
    ("user@" + "a" * 63 + ".local.test", R, "not-local"),
    ("u@" + ".".join(["abcdefghi"] * 25) + ".test", R, "syntax"),  # path over 256 octets
    ("user@[192.0.2.1]\ud800", R, "syntax"),  # lone surrogate
]

# nmap's smtp-open-relay.nse probes, with DOMAIN = local.test and IP = 192.0.2.1, both local.
NMAP_PROBES: list[tuple[str, Verdict, str]] = [
    (FOREIGN, R, "not-local"),                            # 1: MAIL FROM:<>
    (FOREIGN, R, "not-local"),                            # 2: from antispam@nmap.scanme.org
    (FOREIGN, R, "not-local"),                            # 3: from antispam@DOMAIN
    (FOREIGN, R, "not-local"),                            # 4: from antispam@[IP]
    ("relaytest%nmap.scanme.org@[192.0.2.1]", R, "routing"),    # 5
    ("relaytest%nmap.scanme.org@local.test", R, "routing"),     # 6
    ('"relaytest@nmap.scanme.org"', R, "routing"),              # 7
    ('"relaytest%nmap.scanme.org"', R, "routing"),              # 8
    ("relaytest@nmap.scanme.org@[192.0.2.1]", R, "routing"),    # 9
    ('"relaytest@nmap.scanme.org"@[192.0.2.1]', R, "routing"),  # 10
    ("relaytest@nmap.scanme.org@local.test", R, "routing"),     # 11
    ("@[192.0.2.1]:relaytest@nmap.scanme.org", R, "not-local"),  # 12
    ("@local.test:relaytest@nmap.scanme.org", R, "not-local"),   # 13
    ("nmap.scanme.org!relaytest", R, "routing"),                # 14
    ("nmap.scanme.org!relaytest@[192.0.2.1]", R, "routing"),    # 15
    ("nmap.scanme.org!relaytest@local.test", R, "routing"),     # 16
]
NMAP_SENDERS = ["", "antispam@nmap.scanme.org", "antispam@local.test"]
NMAP_SENDERS += ["antispam@[192.0.2.1]"] * 13
# fmt: on


def _decide(recipient: str, sender: str = "") -> tuple[Verdict, str, str]:
    decision = POLICY.check(
        Request(client_address="203.0.113.7", recipient=recipient, sender=sender)
    )
    return decision.verdict, decision.reason, str(decision)


def test_table_is_large_enough() -> None:
    assert len(CASES) + len(NMAP_PROBES) >= 80
    assert len({case[0] for case in CASES}) == len(CASES), "duplicate rows"


@pytest.mark.parametrize(("recipient", "verdict", "reason"), CASES, ids=repr)
def test_recipient(recipient: str, verdict: Verdict, reason: str) -> None:
    got_verdict, got_reason, reply = _decide(recipient)
    assert (got_verdict, got_reason) == (verdict, reason), reply
    if reason == "syntax":
        assert reply == "501 5.1.3 Bad recipient address syntax"
    elif verdict is Verdict.REJECT:
        assert reply.startswith("554 5.7.1 <")
        assert reply.endswith(">: Relay access denied")
    else:
        assert reply == "250 2.1.5 Ok"


@pytest.mark.parametrize(
    ("number", "probe", "sender"),
    [(n + 1, probe, NMAP_SENDERS[n]) for n, probe in enumerate(NMAP_PROBES)],
)
def test_nmap_relay_probe(number: int, probe: tuple[str, Verdict, str], sender: str) -> None:
    recipient, verdict, reason = probe
    assert _decide(recipient, sender)[:2] == (verdict, reason), f"nmap probe {number}"


def test_relay_denied_reply_names_the_recipient() -> None:
    assert _decide("yoshino_yomogiya@aho.jp")[2] == (
        "554 5.7.1 <yoshino_yomogiya@aho.jp>: Relay access denied"
    )
    assert _decide("<yoshino_yomogiya@aho.jp>")[2] == (
        "554 5.7.1 <yoshino_yomogiya@aho.jp>: Relay access denied"
    )


@pytest.mark.parametrize(
    ("text", "local_part", "domain", "routed"),
    [
        ("user@Example.ORG.", "user", "example.org", False),
        ('"saya yomogi"@example.org', "saya yomogi", "example.org", False),
        ('"user@aho.jp"@example.org', "user@aho.jp", "example.org", True),
        ("user@aho.jp@example.org", "user@aho.jp", "example.org", True),
        ("@a,@b:user@dom.example", "user", "dom.example", False),
        ("user@例え.jp", "user", "xn--r8jz45g.jp", False),
        ("user@[IPv6:2001:DB8::1]", "user", "[ipv6:2001:db8::1]", False),
        ("Postmaster", "Postmaster", "", False),
        ('"a\\\\b"@x.example', "a\\b", "x.example", False),
    ],
)
def test_parse_address_fields(text: str, local_part: str, domain: str, routed: bool) -> None:
    address = parse_address(text)
    assert address.error is None
    assert (address.local_part, address.domain, address.routed) == (local_part, domain, routed)


def test_null_address_is_valid_but_empty() -> None:
    for text in ("", "<>"):
        address = parse_address(text)
        assert address.valid
        assert (address.local_part, address.domain) == ("", "")


def test_error_says_why() -> None:
    assert "control character" in (parse_address("a\x00@b.example").error or "")
    assert "longer than 64" in (parse_address("u" * 65 + "@b.example").error or "")
    assert "nothing after" in (parse_address("user@").error or "")
    assert "starts with '-'" in (parse_address('"-x"@b.example').error or "")
    assert "U+2024" in (parse_address("user@ex\u2024ample.org").error or "")
    assert parse_address("<<u@b.example>>").error == "nested angle brackets"
    assert parse_address("<@a:<u@b.example>>").error == "nested angle brackets"
    assert parse_address("@a:<u@b.example>").error == "source route outside angle brackets"


# The fast path (one partition, a cached domain) must agree with the full scanner on
# everything it accepts, and its domain cache must stay bounded.
_LOCAL_ALPHABET = "abcXYZ019!#$&'*+/=?^_`{|}~%.-"
_DOMAIN_ALPHABET = "abcXYZ09-.例え"


@given(
    local=st.text(_LOCAL_ALPHABET, min_size=1, max_size=70),
    domain=st.text(_DOMAIN_ALPHABET, min_size=1, max_size=30),
)
@settings(max_examples=500)
def test_fast_path_agrees_with_the_scanner(local: str, domain: str) -> None:
    text = f"{local}@{domain}"
    first = parse_address(text)
    assert first == _parse_slow(text)
    assert parse_address(text) == first  # the second time from the domain cache


def test_domain_cache_is_bounded_and_never_holds_a_bad_domain() -> None:
    for i in range(address_module._CANONICAL_MAX + 100):
        assert parse_address(f"u@host{i}.example").domain == f"host{i}.example"
        assert len(address_module._canonical) <= address_module._CANONICAL_MAX
    assert parse_address("u@a..b").error is not None
    assert "a..b" not in address_module._canonical
    assert parse_address("u@Example.ORG.").domain == "example.org"
    assert address_module._canonical["Example.ORG."] == "example.org"


# Any string at all: the whole Unicode range, lone surrogates, unassigned and private-use
# code points, and the visible characters UTS 46 disallows (U+2024, ...).
ANY_TEXT = st.one_of(
    st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=60),
    unicode_text(max_size=60),  # the same range, weighted towards the troublesome ones
)
LAW_LOCAL = ["local.test", "例え.jp"]
LAW_CHAIN = FirstMatch(TrustedNetworks(["192.0.2.0/24"]), LocalDomainOnly(LAW_LOCAL))
# Every spelling of a local domain once case is folded: what "really local" means here.
LAW_SPELLINGS = {"local.test", "例え.jp", "xn--r8jz45g.jp"}


def _really_local(recipient: str) -> bool:
    """Read the recipient with no help from relaypolicy's parser: one pair of angle
    brackets and a source route are dropped, no second pair may open then, the domain
    after the last "@" (one trailing dot ignored) must be a local spelling and the local
    part must ask for no routing."""
    mailbox = recipient[1:-1] if recipient[:1] == "<" and recipient[-1:] == ">" else recipient
    if mailbox[:1] == "@":
        mailbox = mailbox.partition(":")[2]
    if mailbox[:1] == "<":
        return False
    local, at, domain = mailbox.rpartition("@")
    if not at:
        return mailbox.lower() == "postmaster"
    domain = domain[:-1] if domain.endswith(".") else domain
    return domain.lower() in LAW_SPELLINGS and not any(c in local for c in "@%!")


def _check_law(recipient: str, sender: str) -> None:
    request = Request(client_address="203.0.113.7", recipient=recipient, sender=sender)
    assert request.recipient_address.text == recipient
    decision = LAW_CHAIN.check(request)
    str(decision)
    if decision.verdict is Verdict.ACCEPT:
        assert decision.policy == "LocalDomainOnly"
        assert _really_local(recipient), (recipient, request.recipient_address)
    elif decision.reason == "syntax":
        address = request.recipient_address
        assert address.error is not None or address.is_null


@settings(max_examples=1000, deadline=None)
@given(recipient=ANY_TEXT, sender=ANY_TEXT)
def test_any_string_is_analysed_never_raised(recipient: str, sender: str) -> None:
    _check_law(recipient, sender)


@settings(max_examples=1000, deadline=None)
@given(recipient=hostile_recipients(LAW_LOCAL), sender=unicode_text())
def test_only_a_local_domain_is_accepted_as_local(recipient: str, sender: str) -> None:
    _check_law(recipient, sender)


def test_the_law_accepts_and_refuses() -> None:
    # The oracle itself, on both sides, so the laws above cannot pass vacuously.
    for recipient in ("user@local.test", "<user@例え.JP.>", "@x:user@xn--r8jz45g.jp"):
        assert _really_local(recipient)
        _check_law(recipient, "")
        assert LAW_CHAIN.check(Request(client_address="203.0.113.7", recipient=recipient))[0] is A
    for recipient in (
        "user@ex\u2024ample.org",
        "user@lo\u2024cal.test",
        "a%b@local.test",
        "@x:<user@local.test>",
        "<@x:<@y:<user@例え.jp>>>",
    ):
        assert not _really_local(recipient)
        _check_law(recipient, "")
