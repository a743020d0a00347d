"""`relaypolicy audit --smtp` against a real Postfix (a private instance on loopback).

Postfix decides with its own ``permit_mynetworks, reject_unauth_destination``; the audit
speaks SMTP to it from an untrusted loopback address (nothing accepted) and from the
trusted one (everything Postfix can parse is accepted: the audit must say so). Every
transport of the instance is ``discard`` and the audit never sends DATA.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from postfix_instance import PostfixConfig, PostfixInstance, running_postfix
from realservers import audit_json, require_loopback_address

from relaypolicy.testing import relay_probes
from relaypolicy.testing.probes import NMAP_PROBES

pytestmark = pytest.mark.real

OUTSIDER = "127.0.0.10"
TRUSTED = "127.0.0.1"


@pytest.fixture(scope="module")
def postfix() -> Iterator[PostfixInstance]:
    require_loopback_address(OUTSIDER)
    config = PostfixConfig(
        mydestination=["local.test"], relay_domains=["relay.test"], mynetworks=["127.0.0.1/32"]
    )
    with running_postfix(config) as instance:
        yield instance


def audit(postfix: PostfixInstance, source: str, capsys: pytest.CaptureFixture[str]) -> Any:
    return audit_json(postfix.host, postfix.port, source, capsys, "--relay-domain", "relay.test")


def test_postfix_is_not_an_open_relay_to_strangers(
    postfix: PostfixInstance, capsys: pytest.CaptureFixture[str]
) -> None:
    report = audit(postfix, OUTSIDER, capsys)
    total = len(relay_probes("local.test", relay_domain="relay.test"))
    assert report["status"] == 0, report["summary"]
    assert report["summary"] == f"not an open relay: 0/{total} probes accepted"
    by_name = {probe["name"]: probe for probe in report["probes"]}
    assert by_name["nmap-02"]["reply"] == (
        "554 5.7.1 <relaytest@nmap.scanme.org>: Relay access denied"
    )
    assert by_name["relay.test:relay-percent"]["code"] == 554
    # Every probe was asked (SMTPUTF8 included) and answered with a refusal.
    assert {probe["stage"] for probe in report["probes"]} == {"RCPT"}
    assert {probe["code"] // 100 for probe in report["probes"]} == {5}


def test_postfix_relays_for_its_own_network_and_the_audit_says_so(
    postfix: PostfixInstance, capsys: pytest.CaptureFixture[str]
) -> None:
    report = audit(postfix, TRUSTED, capsys)
    assert report["status"] == 1
    assert report["summary"].startswith("OPEN RELAY: ")
    # The plain foreign recipients were accepted too: the summary says why that may be
    # (mynetworks) and how to audit from an address Postfix does not trust.
    assert f"the server may trust the source address {TRUSTED}" in report["summary"]
    assert "Postfix mynetworks" in report["summary"]
    assert "--source-address 127.0.0.10" in report["summary"]
    accepted = {probe["name"] for probe in report["probes"] if probe["accepted"]}
    # permit_mynetworks: all 16 nmap probes are found, and most of the rest.
    assert {f"nmap-{n:02d}" for n in range(1, NMAP_PROBES + 1)} <= accepted
    assert len(accepted) >= 50
