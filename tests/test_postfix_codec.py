"""The policy delegation codec, fed bytes the way Postfix (or an attacker) sends them."""

from __future__ import annotations

import pytest

from relaypolicy import FirstMatch, LocalDomainOnly, TrustedNetworks, Verdict
from relaypolicy.model import accept, defer, next_policy
from relaypolicy.postfix import (
    PolicyConnection,
    ProtocolError,
    decision_action,
    encode_action,
)

# What Postfix 3.7 sends at RCPT TO (SMTPD_POLICY_README), abridged only in values.
POSTFIX_REQUEST = (
    b"request=smtpd_access_policy\n"
    b"protocol_state=RCPT\n"
    b"protocol_name=ESMTP\n"
    b"client_address=::ffff:203.0.113.7\n"
    b"client_name=unknown\n"
    b"client_port=40123\n"
    b"reverse_client_name=unknown\n"
    b"server_address=127.0.0.1\n"
    b"server_port=25\n"
    b"helo_name=mx.aho.jp\n"
    b"sender=yomogi@aho.jp\n"
    b"recipient=user%aho.jp@local.test\n"
    b"recipient_count=0\n"
    b"queue_id=\n"
    b"instance=123.456.7\n"
    b"size=0\n"
    b"etrn_domain=\n"
    b"stress=\n"
    b"sasl_method=\n"
    b"sasl_username=\n"
    b"sasl_sender=\n"
    b"ccert_subject=\n"
    b"ccert_issuer=\n"
    b"ccert_fingerprint=\n"
    b"ccert_pubkey_fingerprint=\n"
    b"encryption_protocol=\n"
    b"encryption_cipher=\n"
    b"encryption_keysize=0\n"
    b"policy_context=\n"
    b"compatibility_level=3.6\n"
    b"mail_version=3.7.11\n"
    b"\n"
)


def test_full_postfix_request_maps_to_request() -> None:
    (got,) = PolicyConnection().receive_data(POSTFIX_REQUEST)
    assert got.protocol_state == "RCPT"
    request = got.to_request()
    assert request.client_address == "203.0.113.7"
    assert request.recipient_address.routed
    assert (request.client_port, request.server_port) == (40123, 25)
    assert request.client_name == ""
    assert request.helo_name == "mx.aho.jp"
    assert request.sender_address.domain == "aho.jp"
    assert not request.tls


def test_byte_at_a_time_and_many_requests_per_connection() -> None:
    connection = PolicyConnection()
    seen = []
    for byte in POSTFIX_REQUEST * 3:
        seen += connection.receive_data(bytes([byte]))
    assert len(seen) == 3
    assert not connection.in_request


def test_order_free_unknown_ignored_last_value_wins_crlf() -> None:
    data = (
        b"recipient=first@aho.jp\r\n"
        b"x-unknown-attribute=whatever\r\n"
        b"request=smtpd_access_policy\r\n"
        b"recipient=user@local.test\r\n"
        b"client_address=192.0.2.1\r\n"
        b"client_port=0\r\n"
        b"server_port=\r\n"
        b"\r\n"
    )
    (got,) = PolicyConnection().receive_data(data)
    request = got.to_request()
    assert request.recipient == "user@local.test"
    assert (request.client_port, request.server_port) == (0, 0)


def test_values_may_hold_equals_signs_and_utf8() -> None:
    data = (
        "request=smtpd_access_policy\nclient_address=192.0.2.1\n"
        "recipient=ユーザー@例え.jp\nccert_subject=CN=a=b\n\n"
    ).encode()
    (got,) = PolicyConnection().receive_data(data)
    assert got.attributes["ccert_subject"] == "CN=a=b"
    assert got.to_request().recipient_address.domain == "xn--r8jz45g.jp"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"request=smtpd_access_policy\nno equals sign\n\n", "without '='"),
        (b"request=smtpd_access_policy\n=value\n\n", "without a name"),
        (b"request=smtpd_access_policy\nrecipient=a\x00b@x\n\n", "NUL"),
        (b"request=smtpd_access_policy\nrecipient=" + b"a" * 9000 + b"\n\n", "line longer"),
        (b"request=smtpd_access_policy\nrecipient=" + b"a" * 9000, "line longer"),
        (b"request=smtpd_access_policy\nrecipient=\xff\xfe@x\n\n", "not valid UTF-8"),
        (b"request=junk\nrecipient=a@b\n\n", "unsupported request type 'junk'"),
        (b"recipient=a@b\n\n", "unsupported request type None"),
        (b"\n", "empty request"),
        (
            b"request=smtpd_access_policy\n"
            + b"".join(b"a%d=%s\n" % (i, b"v" * 7000) for i in range(10)),
            "request larger",
        ),
        (
            b"request=smtpd_access_policy\n" + b"".join(b"a%d=\n" % i for i in range(1000)),
            "more than 1000 attributes",
        ),
    ],
)
def test_bad_input_is_a_protocol_error(data: bytes, message: str) -> None:
    connection = PolicyConnection()
    with pytest.raises(ProtocolError, match=message):
        connection.receive_data(data)
    assert connection.failed is not None
    with pytest.raises(ProtocolError, match="already failed"):
        connection.receive_data(POSTFIX_REQUEST)


def test_a_thousand_repeats_of_one_name_are_fine() -> None:
    data = (
        b"request=smtpd_access_policy\n"
        + b"recipient=a@b.example\n" * 1500
        + b"client_address=192.0.2.1\n\n"
    )
    (got,) = PolicyConnection().receive_data(data)
    assert got.to_request().recipient == "a@b.example"


def test_unknown_client_address_is_a_value_error() -> None:
    (got,) = PolicyConnection().receive_data(
        b"request=smtpd_access_policy\nclient_address=unknown\nrecipient=a@b.example\n\n"
    )
    with pytest.raises(ValueError, match="client_address"):
        got.to_request()


def test_actions() -> None:
    policy = FirstMatch(TrustedNetworks(["192.0.2.0/24"]), LocalDomainOnly(["local.test"]))
    (got,) = PolicyConnection().receive_data(POSTFIX_REQUEST)
    request = got.to_request()
    refused = policy.check(request)
    assert refused.verdict is Verdict.REJECT
    action = decision_action(refused, recipient=request.recipient)
    assert action == "554 5.7.1 Relay access denied"
    assert decision_action(accept("p", "r")) == "OK"
    assert decision_action(accept("p", "r"), accept_action="DUNNO") == "DUNNO"
    assert decision_action(next_policy("p")) == "DUNNO"
    assert decision_action(defer(451, "4.3.0", "table unavailable", "p", "r")) == (
        "451 4.3.0 table unavailable"
    )
    assert encode_action("DUNNO") == b"action=DUNNO\n\n"
    with pytest.raises(ValueError, match="one line"):
        encode_action("OK\nREJECT")
