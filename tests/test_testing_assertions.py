"""assert_not_open_relay, assert_decision and Expectation."""

from __future__ import annotations

import re

import pytest

from relaypolicy import Decision, LocalDomainOnly, OpenRelay, Request, Verdict, mx_policy
from relaypolicy.model import accept
from relaypolicy.testing import Expectation, assert_decision, assert_not_open_relay


class DomainOnlyCheck:
    """A home-made policy with the classic bug: it looks only at the last domain."""

    name = "DomainOnlyCheck"

    def check(self, request: Request) -> Decision:
        if request.recipient_address.domain == "example.org":
            return accept(self.name, "local")
        return LocalDomainOnly(["example.org"]).check(request)


def test_passes_for_local_domain_only() -> None:
    outcomes = assert_not_open_relay(
        LocalDomainOnly(["example.org", "mail.example.org"], relay_domains=["example.net"]),
        local_domains=["example.org", "mail.example.org"],
        relay_domains=["example.net"],
    )
    assert len(outcomes) >= 2 * 50
    assert all(outcome.decision.verdict is Verdict.REJECT for outcome in outcomes)


def test_fails_for_open_relay_listing_every_accepted_probe() -> None:
    with pytest.raises(AssertionError) as failure:
        assert_not_open_relay(OpenRelay(), local_domains=["example.org"])
    message = str(failure.value)
    first = message.splitlines()[0]
    assert re.fullmatch(
        r"OpenRelay\(\) is an open relay: it accepted (\d+) of \1 relay probes from "
        r"203\.0\.113\.7:",
        first,
    ), first
    assert "  nmap-01: MAIL FROM:<> RCPT TO:<relaytest@nmap.scanme.org> -> ACCEPT 250 2.1.5 Ok" in (
        message
    )
    assert "[policy OpenRelay, reason open-relay]" in message
    assert "why it is a trick: percent hack (RFC 1123 5.2.16)" in message
    assert message.count("why it is a trick:") == int(first.split()[7])


def test_names_only_the_probes_a_subtle_bug_lets_through() -> None:
    with pytest.raises(AssertionError) as failure:
        assert_not_open_relay(DomainOnlyCheck(), local_domains=["example.org"])
    message = str(failure.value)
    assert "nmap-06: MAIL FROM:<antispam@[127.0.0.1]> RCPT TO:<relaytest%nmap.scanme.org@" in (
        message
    )
    assert "at-quoted:" in message and "nmap-16:" in message
    assert "\n  nmap-01:" not in message  # plain foreign recipients are still refused
    assert "\n  upper-case:" not in message


def test_client_address_and_request_fields() -> None:
    policy = mx_policy(["example.org"], trusted_networks=["192.0.2.0/24"])
    assert_not_open_relay(policy, local_domains=["example.org"], server_port=25)
    with pytest.raises(AssertionError, match=re.escape("from 192.0.2.7:")):
        assert_not_open_relay(policy, local_domains=["example.org"], client_address="192.0.2.7")
    with pytest.raises(AssertionError, match="accepted"):
        assert_not_open_relay(policy, local_domains=["example.org"], sasl_username="taro")
    with pytest.raises(TypeError):
        assert_not_open_relay(policy, local_domains="example.org")


def test_assert_decision() -> None:
    policy = LocalDomainOnly(["example.org"])
    decision = assert_decision(policy, "accept")  # defaults: a stranger, user@example.org
    assert decision.reason == "local"
    assert_decision(policy, Verdict.REJECT, recipient="u@aho.jp")
    assert_decision(policy, "554", recipient="u@aho.jp")
    assert_decision(policy, "554 5.7.1 <u@aho.jp>: Relay access denied", recipient="u@aho.jp")
    assert_decision(policy, "501 5.1.3", recipient="u@@")
    with pytest.raises(AssertionError) as failure:
        assert_decision(policy, "accept", recipient="u%aho.jp@example.org", sender="s@aho.jp")
    assert str(failure.value).splitlines() == [
        "expected accept, got REJECT 554 5.7.1 <u%aho.jp@example.org>: Relay access denied  "
        "[policy LocalDomainOnly, reason routing]",
        "  policy:  LocalDomainOnly(['example.org'], relay_domains=[])",
        "  request: Request(client_address='203.0.113.7', recipient='u%aho.jp@example.org', "
        "sender='s@aho.jp')",
    ]
    with pytest.raises(AssertionError, match=re.escape("expected 554 5.7.2, got REJECT 554 5.7.1")):
        assert_decision(policy, "554 5.7.2", recipient="u@aho.jp")


@pytest.mark.parametrize(
    ("text", "verdict", "code", "status", "reply_text"),
    [
        ("accept", Verdict.ACCEPT, None, None, None),
        (" DEFER ", Verdict.DEFER, None, None, None),
        ("next", Verdict.NEXT, None, None, None),
        ("554", None, 554, None, None),
        ("530 5.7.0", None, 530, "5.7.0", None),
        ("530 5.7.0 Authentication required", None, 530, "5.7.0", "Authentication required"),
        ("250 Ok", None, 250, None, "Ok"),
    ],
)
def test_expectation_parse(
    text: str, verdict: Verdict | None, code: int | None, status: str | None, reply_text: str | None
) -> None:
    expectation = Expectation.parse(text)
    assert expectation[1:] == (verdict, code, status, reply_text)


@pytest.mark.parametrize("text", ["acept", "", "5.7.1", "600 5.7.1", "55"])
def test_expectation_parse_errors(text: str) -> None:
    with pytest.raises(ValueError, match="expected accept, reject, defer, next or a reply"):
        Expectation.parse(text)


def test_a_next_decision_has_no_reply_code() -> None:
    assert not Expectation.parse("554").matches(Decision(Verdict.NEXT, 0, "", "", "p", "r"))
