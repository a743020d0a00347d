"""The Hypothesis strategies, and the laws they are for."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from relaypolicy import FirstMatch, LocalDomainOnly, Request, TrustedNetworks, Verdict
from relaypolicy.address import parse_address
from relaypolicy.testing.strategies import (
    client_addresses,
    domains,
    local_parts,
    mailboxes,
    requests,
    routed_recipients,
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


def test_hypothesis_is_imported_only_by_the_strategies_module() -> None:
    code = (
        "import sys, relaypolicy, relaypolicy.testing, relaypolicy.testing.audit, "
        "relaypolicy.testing.scenarios, relaypolicy.cli\n"
        "assert 'hypothesis' not in sys.modules, 'hypothesis imported'\n"
        "assert 'pytest' not in sys.modules, 'pytest imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
