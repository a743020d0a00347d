"""The Exim socket protocol (relaypolicy.exim.codec): table-driven cases and properties.

The properties: whatever a value holds (newlines, ``=``, braces, backslashes, spaces,
non-ASCII), it round-trips through the request line into the same field and nowhere
else; and whatever bytes arrive, the codec either returns requests or raises our
ProtocolError -- nothing else, and never a request built from a line it should refuse.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaypolicy.errors import ProtocolError
from relaypolicy.exim.codec import (
    FIELDS,
    MAX_LINE,
    EximConnection,
    EximProtocolError,
    encode_answer,
    encode_request,
    parse_line,
    rcpt_path,
)
from relaypolicy.model import accept, defer, next_policy, reject


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def line(**fields: str) -> bytes:
    return encode_request(fields)


# --- rcpt_path: the path of the RCPT TO argument, unchanged -------------------------------

RCPT_PATHS = [
    ("<user@local.test>", "user@local.test"),
    ("<User@Local.Test>", "User@Local.Test"),
    ("<user%other@local.test>", "user%other@local.test"),
    ('<"user@other"@local.test>', '"user@other"@local.test'),
    ('<"a>b"@local.test> NOTIFY=NEVER', '"a>b"@local.test'),
    ('<"a\\">b"@local.test>', '"a\\">b"@local.test'),
    ("<@a,@b:user@local.test>", "@a,@b:user@local.test"),
    ("<user@local.test> NOTIFY=NEVER ORCPT=rfc822;x@y", "user@local.test"),
    ('<"x y"@local.test>', '"x y"@local.test'),
    ("<>", ""),
    ("<postmaster>", "postmaster"),
    ("user@local.test", "user@local.test"),
    ("user@local.test NOTIFY=NEVER", "user@local.test"),
    ('"x y"@local.test NOTIFY=NEVER', '"x y"@local.test'),
    ("  <user@local.test>  ", "user@local.test"),
    ("<user@local.test", "<user@local.test"),  # never closed: not an address
    ("", ""),
]


@pytest.mark.parametrize(("argument", "path"), RCPT_PATHS)
def test_rcpt_path(argument: str, path: str) -> None:
    assert rcpt_path(argument) == path


# --- requests -------------------------------------------------------------------------------


def test_a_full_request_becomes_the_request() -> None:
    request = parse_line(
        line(
            client_address="127.0.0.10",
            client_port="40000",
            helo_name="client.example",
            sasl_method="plain",
            sasl_username="alice",
            encryption_protocol="TLS1.3",
            encryption_cipher="TLS1.3:AES_256_GCM_SHA384:256",
            ccert_subject="CN=alice",
            server_address="127.0.0.1",
            server_port="25",
            sender="alice@local.test",
            rcpt="<bob@aho.jp> NOTIFY=NEVER",
        ).rstrip(b"\n")
    ).to_request()
    assert request.client_address == "127.0.0.10"
    assert request.client_port == 40000
    assert request.server_port == 25
    assert request.recipient == "bob@aho.jp"
    assert request.sender == "alice@local.test"
    assert request.sasl_username == "alice"
    assert request.tls
    assert request.ccert_subject == "CN=alice"


def test_exim_unknown_ports_and_a_cipher_without_a_protocol() -> None:
    request = parse_line(
        line(
            client_address="127.0.0.1",
            client_port="0",
            server_port="",
            encryption_cipher="X",
            rcpt="<a@b.c>",
        )[:-1]
    ).to_request()
    assert (request.client_port, request.server_port) == (0, 0)
    assert request.encryption_protocol == "TLS"


@pytest.mark.parametrize("client", ["", "unknown", "300.1.1.1", "127.0.0.1,10.0.0.1"])
def test_a_client_address_that_is_not_an_ip_cannot_be_judged(client: str) -> None:
    parsed = parse_line(line(client_address=client, rcpt="<a@b.c>")[:-1])
    with pytest.raises(ValueError, match="client_address"):
        parsed.to_request()


def test_no_client_address_at_all_cannot_be_judged() -> None:
    with pytest.raises(ValueError, match="client_address"):
        parse_line(line(rcpt="<a@b.c>")[:-1]).to_request()


BAD_LINES = [
    (b"", "empty request line"),
    (b"   ", "empty request line"),
    (b"v2 rcpt=" + b64("<a@b.c>"), "unsupported request version"),
    (b"rcpt=" + b64("<a@b.c>"), "unsupported request version"),
    (b"v1", "request without rcpt"),
    (b"v1 client_address=" + b64("127.0.0.1"), "request without rcpt"),
    (b"v1 rcpt", "word without '='"),
    (b"v1 recipient=" + b64("a@b.c"), "unknown field"),
    (b"v1 =abc", "unknown field"),
    (b"v1 rcpt=" + b64("<a@b.c>") + b" rcpt=" + b64("<x@y.z>"), "given twice"),
    (b"v1 rcpt=<a@b.c>", "not base64"),
    (b"v1 rcpt=YWJj", "not base64"),  # "abc" is YWJj: valid; "YWJ" is not
    (b"v1 rcpt=YWJ", "not base64"),
    (b"v1 rcpt=YW=j", "not base64"),
    (b"v1 rcpt=" + base64.b64encode(b"a\x00b"), "NUL"),
    (b"v1 rcpt=" + base64.b64encode(b"\xff\xfe"), "not UTF-8"),
    (b"v1 rcpt=" + b64("<a@b.c>") + b" client_address=" + b64("1.2.3.4") + b"==", "not base64"),
]


@pytest.mark.parametrize(("raw", "message"), BAD_LINES)
def test_bad_lines_are_protocol_errors(raw: bytes, message: str) -> None:
    if raw == b"v1 rcpt=YWJj":
        assert parse_line(raw).fields["rcpt"] == "abc"  # the control case
        return
    with pytest.raises(ProtocolError, match=message):
        parse_line(raw)


def test_the_attribute_injection_of_the_postfix_protocol_is_just_a_user_name() -> None:
    """A user name holding a newline and "client_address=..." stays the user name."""
    hostile = "x\nclient_address=10.0.0.1\nrcpt=<victim@aho.jp>"
    raw = line(client_address="127.0.0.10", sasl_username=hostile, rcpt="<a@local.test>")
    assert raw.count(b"\n") == 1
    (parsed,) = EximConnection().receive_data(raw)
    request = parsed.to_request()
    assert request.sasl_username == hostile
    assert request.client_address == "127.0.0.10"
    assert request.recipient == "a@local.test"


# --- the connection: lines, limits, end of stream --------------------------------------------


def test_several_lines_in_any_chunks() -> None:
    raw = line(client_address="127.0.0.1", rcpt="<a@b.c>") * 3
    for size in (1, 2, 7, len(raw)):
        connection = EximConnection()
        found = []
        for start in range(0, len(raw), size):
            found += connection.receive_data(raw[start : start + size])
        assert [r.recipient for r in found] == ["a@b.c"] * 3
        connection.receive_eof()


def test_eof_in_the_middle_of_a_line() -> None:
    connection = EximConnection()
    assert connection.receive_data(b"v1 rcpt=") == []
    with pytest.raises(ProtocolError, match="middle of a line"):
        connection.receive_eof()


def test_a_line_over_the_limit_is_refused_before_its_end() -> None:
    connection = EximConnection(max_line=100)
    with pytest.raises(ProtocolError, match="longer than 100"):
        connection.receive_data(b"v1 " + b"A" * 200)
    assert connection.failed
    with pytest.raises(ProtocolError, match="already failed"):
        connection.receive_data(line(client_address="127.0.0.1", rcpt="<a@b.c>"))


def test_a_whole_line_over_the_limit_is_refused() -> None:
    connection = EximConnection(max_line=100)
    with pytest.raises(ProtocolError, match="longer than 100"):
        connection.receive_data(b"v1 rcpt=" + b"A" * 200 + b"\n")


def test_the_default_limit_takes_what_exim_can_send() -> None:
    rcpt = "<" + "u" * 16000 + "@local.test>"
    (parsed,) = EximConnection().receive_data(line(client_address="127.0.0.1", rcpt=rcpt))
    assert parsed.recipient == rcpt[1:-1]
    assert len(line(rcpt=rcpt)) <= MAX_LINE


# --- answers --------------------------------------------------------------------------------


ANSWERS = [
    (accept("chain", "trusted-network"), b"accept\n"),
    (next_policy("chain"), b"next\n"),
    (
        reject(554, "5.7.1", "<a@aho.jp>: Relay access denied", "LocalDomainOnly", "foreign"),
        b"deny 554 5.7.1 <a@aho.jp>: Relay access denied\n",
    ),
    (
        defer(451, "4.3.0", "Temporary lookup failure", "Pop", "lookup"),
        b"defer 451 4.3.0 Temporary lookup failure\n",
    ),
    (
        reject(554, "5.7.1", "<\u30e6\nx>: {$x} \\", "p", "r"),
        b"deny 554 5.7.1 <??x>: {$x} \\\n",
    ),
    (reject(554, "5.7.1", "", "p", "r"), b"deny 554 5.7.1 -\n"),
]


@pytest.mark.parametrize(("decision", "answer"), ANSWERS)
def test_answers(decision: object, answer: bytes) -> None:
    assert encode_answer(decision) == answer  # type: ignore[arg-type]


def test_a_long_text_is_cut() -> None:
    answer = encode_answer(reject(554, "5.7.1", "x" * 5000, "p", "r"))
    assert len(answer) < 512
    assert answer.endswith(b"...\n")


# --- properties -------------------------------------------------------------------------------

HOSTILE = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
    max_size=60,
) | st.sampled_from(["\n", "=", "{}", "\\", "a\nrcpt=PHg+", " v1 ", "${run{x}}", "\r\n\r\n"])


@given(st.dictionaries(st.sampled_from(sorted(FIELDS - {"rcpt"})), HOSTILE), HOSTILE)
def test_any_values_round_trip_into_their_own_fields(fields: dict[str, str], rcpt: str) -> None:
    raw = encode_request({**fields, "rcpt": rcpt})
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    (parsed,) = EximConnection().receive_data(raw)
    assert parsed.fields == {**fields, "rcpt": rcpt}


@given(st.binary(max_size=300))
def test_any_bytes_give_requests_or_a_protocol_error(data: bytes) -> None:
    connection = EximConnection(max_line=200)
    try:
        requests = connection.receive_data(data)
        connection.receive_eof()
    except ProtocolError:
        return
    for request in requests:
        assert set(request.fields) <= FIELDS and "rcpt" in request.fields
        assert all("\x00" not in value for value in request.fields.values())


_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


_WHITE = frozenset(b" \t\n\r\x0b\x0c")


@given(
    st.binary(min_size=1, max_size=60).filter(
        lambda v: not set(v) <= _B64_ALPHABET and not set(v) & _WHITE
    )
)
def test_a_value_outside_the_base64_alphabet_is_refused(value: bytes) -> None:
    """A value with a byte base64 does not use (a quote, a brace, a NUL, a backslash, a
    non-ASCII byte...) is refused: raw text never passes for an encoded value. (White
    space separates words; the tables above show where it ends a value.)"""
    raw = b"v1 client_address=" + b64("127.0.0.10") + b" rcpt=" + value + b"\n"
    with pytest.raises(ProtocolError):
        EximConnection().receive_data(raw)


@given(
    st.sampled_from([accept("p", "r"), next_policy("p")])
    | st.builds(reject, st.just(554), st.just("5.7.1"), HOSTILE, st.just("p"), st.just("r"))
    | st.builds(defer, st.just(451), st.just("4.3.0"), HOSTILE, st.just("p"), st.just("r"))
)
def test_every_answer_is_one_printable_line_of_the_four_forms(decision: object) -> None:
    answer = encode_answer(decision)  # type: ignore[arg-type]
    text = answer.decode("ascii")
    assert text.endswith("\n") and text.count("\n") == 1
    body = text[:-1]
    assert body.isprintable()
    assert body in ("accept", "next") or body.split(" ", 3)[0] in ("deny", "defer")
    if body.startswith("deny"):
        assert body[5] == "5"
    if body.startswith("defer"):
        assert body[6] == "4"


def test_the_requests_before_a_bad_line_are_carried_by_the_error() -> None:
    good = line(client_address="127.0.0.1", rcpt="<a@b.c>")
    with pytest.raises(EximProtocolError) as caught:
        EximConnection().receive_data(good + good + b"garbage\n" + good)
    assert [r.recipient for r in caught.value.completed] == ["a@b.c", "a@b.c"]
