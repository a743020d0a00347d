"""The policy delegation codec, fed bytes the way Postfix (or an attacker) sends them."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relaypolicy import FirstMatch, LocalDomainOnly, Request, TrustedNetworks, Verdict
from relaypolicy.model import accept, defer, next_policy, reject
from relaypolicy.postfix import (
    PolicyConnection,
    PolicyRequest,
    ProtocolError,
    decision_action,
    encode_action,
)
from relaypolicy.postfix.codec import MAX_REQUEST, POSTFIX_ATTRIBUTES

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


# --- the one-pass parser agrees with the line parser -----------------------------------


class LineParserOnly(PolicyConnection):
    """The reference: every request goes through the line-at-a-time parser."""

    __slots__ = ()

    def _whole_request(self, buffer: bytearray, start: int) -> None:
        return None


Outcome = list[dict[str, str]] | str  # the requests completed by a chunk, or the error


def feed(connection: PolicyConnection, chunks: list[bytes]) -> list[tuple[Outcome, bool]]:
    """What each chunk gives (requests or the error message) and ``in_request`` after it."""
    outcomes: list[tuple[Outcome, bool]] = []
    for chunk in chunks:
        try:
            got: Outcome = [r.attributes for r in connection.receive_data(chunk)]
        except ProtocolError as exc:
            got = str(exc)
        outcomes.append((got, connection.in_request))
    return outcomes


PIPELINED = (
    POSTFIX_REQUEST
    + b"request=smtpd_access_policy\r\nprotocol_state=RCPT\r\nrecipient=a@b\r\n\r\n"
    + "request=smtpd_access_policy\nrecipient=ユーザー@例え.jp\nccert_subject=CN=a=b\n\n".encode()
    + b"request=smtpd_access_policy\nrecipient=c@d\nrecipient=last@wins\n\n"
)


def test_pipelined_requests_split_at_every_byte_boundary_give_the_same_requests() -> None:
    whole = [r.attributes for r in PolicyConnection().receive_data(PIPELINED)]
    assert len(whole) == 4
    assert whole[1]["recipient"] == "a@b"
    assert whole[3]["recipient"] == "last@wins"
    for split in range(1, len(PIPELINED)):
        connection = PolicyConnection()
        got = connection.receive_data(PIPELINED[:split])
        got += connection.receive_data(PIPELINED[split:])
        assert [r.attributes for r in got] == whole, split
        assert not connection.in_request


def test_pipelined_requests_split_at_every_pair_of_boundaries() -> None:
    data = PIPELINED[len(POSTFIX_REQUEST) :]  # the three short ones
    whole = feed(LineParserOnly(), [data])[0][0]
    for first in range(1, len(data)):
        for second in range(first, len(data)):
            chunks = [data[:first], data[first:second], data[second:]]
            got = [r for outcome, _ in feed(PolicyConnection(), chunks) for r in outcome]
            assert got == whole, (first, second)


LIMITS = {"max_line": 40, "max_request": 160, "max_attributes": 3}

# Streams of requests whose lines sit at the grammar's edges, so that random streams hit
# every rule: CR, NUL, a missing "=" or name, bytes that are not UTF-8 (in a value or in a
# name), repeated names, long lines, big requests, other request types; mostly good lines,
# so that many requests are whole and valid.
GOOD_LINES = st.sampled_from(
    [
        b"request=smtpd_access_policy",
        b"recipient=a@b",
        b"recipient=c@d",
        b"client_address=192.0.2.1",
        b"ccert_subject=CN=a=b",
        b"x=",
        "u=ユーザー".encode(),
        b"long=" + b"v" * 35,
    ]
)
BAD_LINES = st.one_of(
    st.sampled_from(
        [
            b"request=smtpd_access_policy\r",
            b"recipient=c@d\r",
            b"request=junk",
            b"=value",
            b"no equals",
            b"\r",
            b"a=\x00",
            b"a=\xff",
            b"\xc3\xa9=1",
            b"longer=" + b"v" * 34,
            b"big=" + b"v" * 37,
        ]
    ),
    st.binary(max_size=30),
)
LINES = st.one_of(GOOD_LINES, GOOD_LINES, GOOD_LINES, BAD_LINES)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    data = b""
    for _ in range(draw(st.integers(0, 4))):
        lines = [b"request=smtpd_access_policy", *draw(st.lists(LINES, max_size=8))]
        lines = draw(st.permutations(lines))
        end = draw(st.sampled_from([b"\n", b"\n", b"\r\n", b""]))
        data += b"".join(line + b"\n" for line in lines) + end
    data += draw(st.binary(max_size=4))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    bounds = [0, *cuts, len(data)]
    return data, [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_one_pass_parser_agrees_with_the_line_parser(stream: tuple[bytes, list[bytes]]) -> None:
    """Same requests, same attributes, same error, same state: chunk by chunk."""
    _, chunks = stream
    assert feed(PolicyConnection(**LIMITS), chunks) == feed(LineParserOnly(**LIMITS), chunks)


@settings(max_examples=300)
@given(streams())
def test_default_limits_agree_too(stream: tuple[bytes, list[bytes]]) -> None:
    _, chunks = stream
    assert feed(PolicyConnection(), chunks) == feed(LineParserOnly(), chunks)


def sized(size: int) -> bytes:
    """A valid request of exactly ``size`` bytes, its lines under 8 KiB."""
    data = b"request=smtpd_access_policy\n"
    index = 0
    while len(data) + 1 < size:
        room = min(8000, size - 1 - len(data)) - len(b"a%d=\n" % index)
        data += b"a%d=%s\n" % (index, b"v" * max(room, 0))
        index += 1
    assert len(data + b"\n") == size, size
    return data + b"\n"


@pytest.mark.parametrize(
    "data",
    [
        sized(MAX_REQUEST),
        sized(MAX_REQUEST + 1),
        b"request=smtpd_access_policy\nrecipient=" + b"a" * 8170 + b"\n\n",  # at the limit
        b"request=smtpd_access_policy\nrecipient=" + "é".encode() * 4090 + b"\n\n",
        b"request=smtpd_access_policy\n"
        + b"".join(b"a%d=%s\n" % (i, b"v" * 8000) for i in range(7))
        + b"\n",
        b"request=smtpd_access_policy\n" + b"".join(b"a%d=\n" % i for i in range(999)) + b"\n",
        b"request=smtpd_access_policy\n" + b"".join(b"a%d=\n" % i for i in range(999)) + b"a0=\n\n",
        b"request=smtpd_access_policy\n" + b"".join(b"a%d=\n" % i for i in range(1000)) + b"\n",
        b"request=smtpd_access_policy\n" + b"a=" + b"v" * 8000 + b"\n" * 9 + b"\n",
        b"request=smtpd_access_policy\n" + (b"a=" + b"v" * 8000 + b"\n") * 9 + b"\n",
        b"request=smtpd_access_policy\n\xc3\xa9=1\n\n",
        b"request=smtpd_access_policy\nrecipient=c@d\r\n\n",
        b"\nrequest=smtpd_access_policy\n\n",
    ],
)
def test_limits_at_their_edges_are_the_line_parsers(data: bytes) -> None:
    for chunks in ([data], [data[:-1], data[-1:]], [data + POSTFIX_REQUEST]):
        assert feed(PolicyConnection(), chunks) == feed(LineParserOnly(), chunks)


def test_to_request_reads_every_postfix_attribute() -> None:
    values = {
        "client_address": "192.0.2.1",
        "recipient": "u@local.test",
        "sender": "s@aho.jp",
        "helo_name": "mx.aho.jp",
        "client_name": "mx.aho.jp",
        "client_port": "40123",
        "server_address": "198.51.100.25",
        "server_port": "587",
        "sasl_method": "PLAIN",
        "sasl_username": "yomogi",
        "encryption_protocol": "TLSv1.3",
        "encryption_cipher": "TLS_AES_256_GCM_SHA384",
        "ccert_subject": "CN=yomogi",
        "ccert_fingerprint": "AB:CD",
        "ccert_pubkey_fingerprint": "EF:01",
    }
    assert set(values) == set(POSTFIX_ATTRIBUTES)
    request = PolicyRequest({"request": "smtpd_access_policy", **values}).to_request()
    assert request == Request(**values)


@pytest.mark.parametrize(
    ("given_values", "expected"),
    [
        ({}, {}),
        ({"client_port": "unknown", "server_port": ""}, {}),
        ({"client_port": "0", "server_port": "0"}, {}),
        ({"server_address": "unknown"}, {}),
        ({"server_address": ""}, {}),
        ({"client_name": "unknown"}, {}),
        ({"client_name": ""}, {}),
        ({"client_port": "25", "server_port": "unknown"}, {"client_port": 25}),
    ],
)
def test_unknown_and_missing_values_are_the_defaults(
    given_values: dict[str, str], expected: dict[str, object]
) -> None:
    attributes = {"client_address": "192.0.2.1", "recipient": "u@local.test", **given_values}
    request = PolicyRequest(attributes).to_request()
    assert request == Request(client_address="192.0.2.1", recipient="u@local.test", **expected)  # type: ignore[arg-type]


def test_actions_make_replies_printable() -> None:
    refused = reject(554, "5.7.1", "<u@aho.jp>: bad\x07 bell", "p", "r")
    assert decision_action(refused, recipient="u@aho.jp") == "554 5.7.1 bad? bell"
    assert decision_action(refused) == "554 5.7.1 <u@aho.jp>: bad? bell"


# --- the answer does not depend on where the stream is cut -----------------------------

TINY = {"max_line": 64, "max_request": 256, "max_attributes": 8}


# Requests whose last line may cross both the line and the request limit of TINY, in
# either order: attribute lines under the line limit, then one of any length.
@st.composite
def sized_streams(draw: st.DrawFn) -> bytes:
    sizes = draw(st.lists(st.integers(20, 60), max_size=6))
    lines = [b"request=smtpd_access_policy", *(b"a%d=" % n + b"x" * k for n, k in enumerate(sizes))]
    lines.append(b"long=" + b"y" * draw(st.integers(40, 120)))
    return b"".join(line + b"\n" for line in lines) + draw(st.sampled_from([b"\n", b""]))


ANY_STREAM = st.one_of(
    streams().map(lambda stream: stream[0]), sized_streams(), st.binary(max_size=300)
)


def outcome(limits: dict[str, int], chunks: list[bytes]) -> tuple[list[dict[str, str]], str | None]:
    """The requests returned until the stream ends or fails, and the error, if any."""
    connection = PolicyConnection(**limits)
    got: list[dict[str, str]] = []
    for chunk in chunks:
        try:
            got += [r.attributes for r in connection.receive_data(chunk)]
        except ProtocolError as exc:
            return got, str(exc)
    return got, None


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(stream=ANY_STREAM, limits=st.sampled_from([LIMITS, TINY]), data=st.data())
def test_any_split_gives_the_requests_and_error_of_the_whole_stream(
    stream: bytes, limits: dict[str, int], data: st.DataObject
) -> None:
    """Fed whole, a byte at a time or cut anywhere: the same error message, and the same
    requests (when the stream fails, those returned before the error, as far as a feed
    returns them before it raises)."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6), label="cuts"))
    chunks = [stream[a:b] for a, b in itertools.pairwise([0, *cuts, len(stream)])]
    whole, whole_error = outcome(limits, [stream])
    bytewise, bytewise_error = outcome(limits, [bytes([b]) for b in stream])
    got, error = outcome(limits, chunks)
    assert error == whole_error == bytewise_error
    if error is None:
        assert got == whole == bytewise
    else:
        assert got == bytewise[: len(got)]
        assert whole == bytewise[: len(whole)]


def test_a_line_over_both_limits_names_the_one_it_crossed_first() -> None:
    """Five lines of 44 bytes, then one of 86: the request passes 256 bytes at the long
    line's 9th byte, before the line passes 64 bytes; the message is the same however the
    stream is cut."""
    head = b"request=smtpd_access_policy\n" + b"".join(
        b"a%d=" % n + b"x" * 40 + b"\n" for n in range(5)
    )
    data = head + b"long=" + b"y" * 80 + b"\n"
    for cut in range(len(data) + 1):
        assert outcome(TINY, [data[:cut], data[cut:]]) == ([], "request larger than 256 bytes")
    # A line that crosses its own limit first is named as too long, cut or whole.
    early = b"request=smtpd_access_policy\n" + b"long=" + b"y" * 300 + b"\n"
    for cut in range(len(early) + 1):
        assert outcome(TINY, [early[:cut], early[cut:]]) == ([], "line longer than 64 bytes")
