"""The Hypothesis strategies, and the laws they are for."""

from __future__ import annotations

import subprocess
import sys
import unicodedata

import idna
from hypothesis import find, given, settings
from hypothesis import strategies as st

from relaypolicy import FirstMatch, LocalDomainOnly, Request, TrustedNetworks, Verdict
from relaypolicy.address import parse_address
from relaypolicy.testing.strategies import (
    client_addresses,
    domains,
    hostile_recipients,
    local_parts,
    mailboxes,
    requests,
    routed_recipients,
    unicode_characters,
    unicode_text,
    uts46_disallowed_characters,
)

LOCAL = ["example.org", "xn--r8jz45g.jp"]
FOREIGN = ["aho.jp", "nmap.scanme.org"]
POLICY = FirstMatch(TrustedNetworks(["192.0.2.0/24"]), LocalDomainOnly(LOCAL))
FAST = settings(max_examples=150, deadline=None)


@FAST
@given(routed_recipients(LOCAL, FOREIGN), client_addresses())
def test_no_routing_trick_is_accepted_from_an_untrusted_client(recipient: str, client: str) -> None:
    request = Request(client_address=client, recipient=recipient)
    if request.client_ip_version == 4 and request.client_address.startswith("192.0.2."):
        return  # a trusted client may route
    assert parse_address(recipient).routed
    assert POLICY.check(request).verdict is Verdict.REJECT


@FAST
@given(mailboxes(LOCAL), client_addresses())
def test_mail_for_a_local_domain_is_accepted_from_anyone(mailbox: str, client: str) -> None:
    address = parse_address(mailbox)
    assert address.valid and not address.routed, address
    assert address.domain in LOCAL
    assert POLICY.check(Request(client_address=client, recipient=mailbox)).verdict is (
        Verdict.ACCEPT
    )


@FAST
@given(client_addresses(v4=False, v6=False))
def test_mapped_addresses_fold_to_ipv4(client: str) -> None:
    assert client.startswith("::ffff:")
    assert Request(client_address=client, recipient="u@example.org").client_ip_version == 4


@FAST
@given(local_parts(quoted=True, utf8=True), domains())
def test_mailboxes_are_valid_and_unrouted(local: str, domain: str) -> None:
    address = parse_address(f"{local}@{domain}")
    assert address.valid, (local, domain, address.error)
    assert not address.routed
    assert address.domain == domain


@FAST
@given(requests(mailboxes(FOREIGN), authenticated=False))
def test_strangers_never_relay(request: Request) -> None:
    assert request.sasl_username == ""
    if request.client_address.startswith("192.0.2."):
        return
    assert POLICY.check(request).verdict is Verdict.REJECT


@FAST
@given(requests(authenticated=True), st.data())
def test_requests_can_be_authenticated(request: Request, data: st.DataObject) -> None:
    assert request.sasl_username
    assert request.server_port in (0, 25, 465, 587)


@FAST
@given(local_parts())
def test_local_parts_never_start_with_a_dash(local: str) -> None:
    assert not local.lstrip('"\\').startswith("-")
    assert parse_address(f"{local}@example.org").valid


def _uts46_refuses(char: str) -> bool:
    try:
        idna.uts46_remap(char, std3_rules=False, transitional=False)
    except idna.IDNAError:
        return True
    return False


def test_uts46_disallowed_characters_are_the_visible_ones_idna_refuses() -> None:
    drawn = set(uts46_disallowed_characters().elements)  # type: ignore[attr-defined]
    assert {"\u2024", "\u2025", "\u2026", "\u2488", "\u249b", "\u2ff0", "\u33c2"} <= drawn
    assert all(_uts46_refuses(c) and unicodedata.category(c)[0] not in "CZ" for c in drawn)


def _found(strategy: st.SearchStrategy[str], condition: object) -> str:
    settings_ = settings(max_examples=5000, database=None, deadline=None)
    return find(strategy, condition, settings=settings_)  # type: ignore[arg-type]


def test_unicode_characters_cover_the_whole_range() -> None:
    categories = {"Cs", "Cn", "Co", "Cc", "Cf", "Zs"}
    for category in categories:
        char = _found(unicode_characters(), lambda c, k=category: unicodedata.category(c) == k)
        assert unicodedata.category(char) == category
    assert ord(_found(unicode_characters(), lambda c: ord(c) > 0xFFFF)) > 0xFFFF
    assert _uts46_refuses(_found(unicode_characters(), lambda c: c in "\u2024\u2488\ufe12"))


def test_unicode_text_draws_the_disallowed_characters_often() -> None:
    # Weighted: text(), given this alphabet, would merge it into one uniform range.
    disallowed = set(uts46_disallowed_characters().elements)  # type: ignore[attr-defined]
    hits = 0

    @settings(max_examples=300, database=None, deadline=None)
    @given(unicode_text(min_size=5, max_size=10))
    def count(text: str) -> None:
        nonlocal hits
        hits += any(c in disallowed for c in text)

    count()
    assert hits >= 30


@FAST
@given(hostile_recipients(LOCAL), client_addresses())
def test_hostile_recipients_are_accepted_only_for_a_local_domain(
    recipient: str, client: str
) -> None:
    request = Request(client_address=client, recipient=recipient)
    decision = POLICY.check(request)
    if decision.verdict is Verdict.ACCEPT and decision.policy == "LocalDomainOnly":
        assert request.recipient_address.domain in LOCAL or (
            request.recipient_address.local_part.lower() == "postmaster"
        )
        assert not request.recipient_address.routed


def test_hostile_recipients_include_local_mail_and_broken_domains() -> None:
    accepted = _found(
        hostile_recipients(LOCAL),
        lambda r: (
            POLICY.check(Request(client_address="203.0.113.7", recipient=r)).verdict
            is Verdict.ACCEPT
        ),
    )
    assert parse_address(accepted).domain in LOCAL
    broken = _found(
        hostile_recipients(LOCAL),
        lambda r: any(c in r.rpartition("@")[2] for c in "\u2024\u2488\ufe12\ufffd"),
    )
    assert POLICY.check(Request(client_address="203.0.113.7", recipient=broken)).verdict is (
        Verdict.REJECT
    )


def test_hypothesis_is_imported_only_by_the_strategies_module() -> None:
    code = (
        "import sys, relaypolicy, relaypolicy.testing, relaypolicy.testing.audit, "
        "relaypolicy.testing.scenarios, relaypolicy.cli\n"
        "assert 'hypothesis' not in sys.modules, 'hypothesis imported'\n"
        "assert 'pytest' not in sys.modules, 'pytest imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
