"""Request, Decision and Verdict."""

from __future__ import annotations

import ipaddress

import pytest

from relaypolicy import Decision, Request, Verdict
from relaypolicy.model import accept, defer, next_policy, reject


def test_request_requires_keywords() -> None:
    with pytest.raises(TypeError):
        Request("192.0.2.1", "user@example.org")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Request(client_address="192.0.2.1")  # type: ignore[call-arg]


def test_request_is_immutable() -> None:
    request = Request(client_address="192.0.2.1", recipient="user@example.org")
    with pytest.raises(AttributeError):
        request.recipient = "other@aho.jp"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("::FFFF:C000:0201", "192.0.2.1"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("IPv6:2001:db8::1", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
    ],
)
def test_client_address_is_normalised(given: str, canonical: str) -> None:
    request = Request(client_address=given, recipient="u@example.org")
    assert request.client_address == canonical
    assert request.client_ip == ipaddress.ip_address(canonical)


@pytest.mark.parametrize("bad", ["", "unknown", "192.0.2", "192.0.2.256", "1.2.3.04", "::g", 7])
def test_invalid_client_address_names_the_field(bad: object) -> None:
    with pytest.raises(ValueError, match="client_address"):
        Request(client_address=bad, recipient="u@example.org")  # type: ignore[arg-type]


def test_ports_and_server_address() -> None:
    request = Request(
        client_address="192.0.2.1",
        recipient="u@example.org",
        client_port="40123",
        server_port="587",
        server_address="::ffff:198.51.100.1",
    )
    assert (request.client_port, request.server_port) == (40123, 587)
    assert request.server_address == "198.51.100.1"
    with pytest.raises(ValueError, match="server_port"):
        Request(client_address="192.0.2.1", recipient="u@x.example", server_port="smtp")
    with pytest.raises(ValueError, match="client_port"):
        Request(client_address="192.0.2.1", recipient="u@x.example", client_port=70000)
    with pytest.raises(ValueError, match="server_address"):
        Request(client_address="192.0.2.1", recipient="u@x.example", server_address="mx")


def test_recipient_never_raises_but_is_analysed() -> None:
    request = Request(client_address="192.0.2.1", recipient="bad\x00@example.org")
    assert request.recipient_address.error is not None
    assert Request(client_address="192.0.2.1", recipient="").recipient_address.is_null


def test_defaults_and_tls() -> None:
    request = Request(client_address="192.0.2.1", recipient="u@example.org")
    assert request.sender == ""
    assert request.sender_address.is_null
    assert not request.tls
    assert Request(
        client_address="192.0.2.1", recipient="u@example.org", encryption_protocol="TLSv1.3"
    ).tls


def test_replace_reanalyses() -> None:
    request = Request(client_address="192.0.2.1", recipient="u@example.org")
    changed = request.replace(recipient="u%aho.jp@example.org", client_address="::ffff:10.0.0.1")
    assert changed.recipient_address.routed
    assert changed.client_address == "10.0.0.1"
    assert changed.client_ip_value == int(ipaddress.ip_address("10.0.0.1"))
    assert request._replace(sender="a@b.example").sender_address.domain == "b.example"
    with pytest.raises(TypeError, match="derived"):
        request.replace(client_ip=None)


def test_requests_compare_by_value() -> None:
    one = Request(client_address="::ffff:192.0.2.1", recipient="u@example.org")
    two = Request(client_address="192.0.2.1", recipient="u@example.org")
    assert one == two
    assert hash(one) == hash(two)
    assert "client_address='192.0.2.1'" in repr(one)


def test_decision_reply_line() -> None:
    decision = Decision(
        Verdict.REJECT,
        554,
        "5.7.1",
        "<yoshino_yomogiya@aho.jp>: Relay access denied",
        "LocalDomainOnly",
        "not-local",
    )
    assert str(decision) == "554 5.7.1 <yoshino_yomogiya@aho.jp>: Relay access denied"
    assert decision.reply == str(decision)
    assert decision.as_dict()["verdict"] == "reject"
    assert str(next_policy("p")) == ""
    assert str(accept("p", "why")) == "250 2.1.5 Ok"


def test_decision_helpers_check_the_code_class() -> None:
    assert defer(451, "4.3.0", "later", "p", "r").verdict is Verdict.DEFER
    with pytest.raises(ValueError, match="5xx"):
        reject(451, "4.3.0", "x", "p", "r")
    with pytest.raises(ValueError, match="4xx"):
        defer(554, "5.7.1", "x", "p", "r")
