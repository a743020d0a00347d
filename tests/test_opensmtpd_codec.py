"""The OpenSMTPD filter protocol codec, from real protocol lines.

The 6.8 lines were written by OpenSMTPD 6.8.0p2 (Debian 12's) to a filter during a swaks
session; the 7.x lines follow ``lka_filter.c`` of OpenSMTPD 7.8.0p1 (protocol 0.7:
``config|protocol``, ``link-auth`` as ``RESULT|USERNAME``).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaypolicy.model import accept, defer, next_policy, reject
from relaypolicy.opensmtpd.codec import (
    REPORT_EVENTS,
    FilterCodec,
    Problem,
    Query,
    Write,
    encode_result,
    parse_endpoint,
    registration,
)
from relaypolicy.replies import CANNOT_EVALUATE, NO_CLIENT_ADDRESS

HANDSHAKE_68 = b"""config|smtpd-version|6.8.0p2
config|smtp-session-timeout|300
config|subsystem|smtp-in
config|admd|vm
config|ready
"""
HANDSHAKE_78 = b"""config|smtpd-version|7.8.0p1
config|protocol|0.7
config|smtp-session-timeout|300
config|subsystem|smtp-in
config|admd|mx.example.org
config|ready
"""
SESSION = "59a30825cff1988c"
TOKEN = "b06ff848e1a499f1"

SESSION_68 = f"""\
report|0.6|1796321235.196177|smtp-in|link-connect|{SESSION}|localhost|pass|\
127.0.0.10:55510|127.0.0.1:10025
report|0.6|1796321235.196827|smtp-in|link-identify|{SESSION}|EHLO|client.example
report|0.6|1796321235.197000|smtp-in|link-tls|{SESSION}|TLSv1.3:TLS_AES_256_GCM_SHA384:256
report|0.6|1796321235.197100|smtp-in|link-auth|{SESSION}|alice|pass
report|0.6|1796321235.197200|smtp-in|tx-begin|{SESSION}|989058fc
report|0.6|1796321235.197424|smtp-in|tx-mail|{SESSION}|989058fc|ok|a@b.example
filter|0.6|1796321235.197678|smtp-in|rcpt-to|{SESSION}|{TOKEN}|x@y.example
"""
SESSION_78 = f"""\
report|0.7|1796321235.196177|smtp-in|link-connect|{SESSION}||fail|\
[2001:db8::5]:55510|[2001:db8::1]:25
report|0.7|1796321235.196827|smtp-in|link-identify|{SESSION}|HELO|client|with|bars
report|0.7|1796321235.197100|smtp-in|link-auth|{SESSION}|pass|bob|the|builder
report|0.7|1796321235.197424|smtp-in|tx-mail|{SESSION}|989058fc|ok|a@b.example
filter|0.7|1796321235.197678|smtp-in|rcpt-to|{SESSION}|{TOKEN}|x@y.example
"""


def queries(events: Sequence[object]) -> list[Query]:
    return [e for e in events if isinstance(e, Query)]


def writes(events: Sequence[object]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Write))


def problems(events: Sequence[object]) -> list[str]:
    return [e.kind for e in events if isinstance(e, Problem)]


def ready(handshake: bytes = HANDSHAKE_68) -> FilterCodec:
    codec = FilterCodec()
    events = codec.receive_data(handshake)
    assert writes(events) == registration()
    assert codec.ready
    return codec


def test_handshake_68_is_answered_with_the_registration() -> None:
    codec = FilterCodec()
    assert codec.receive_data(HANDSHAKE_68[:20]) == []  # a partial line waits
    events = codec.receive_data(HANDSHAKE_68[20:])
    lines = writes(events).decode().splitlines()
    assert lines[-1] == "register|ready"
    assert "register|filter|smtp-in|rcpt-to" in lines
    assert {f"register|report|smtp-in|{event}" for event in REPORT_EVENTS} <= set(lines)
    assert codec.config == {
        "smtpd-version": "6.8.0p2",
        "smtp-session-timeout": "300",
        "subsystem": "smtp-in",
        "admd": "vm",
    }


def test_handshake_78_records_the_protocol_version() -> None:
    codec = ready(HANDSHAKE_78)
    assert codec.config["protocol"] == "0.7"


@pytest.mark.parametrize(
    ("handshake", "lines", "expected"),
    [
        (
            HANDSHAKE_68,
            SESSION_68,
            {
                "client_address": "127.0.0.10",
                "client_port": 55510,
                "server_address": "127.0.0.1",
                "server_port": 10025,
                "client_name": "localhost",
                "helo_name": "client.example",
                "sasl_username": "alice",
                "encryption_protocol": "TLSv1.3",
                "encryption_cipher": "TLS_AES_256_GCM_SHA384",
                "sender": "a@b.example",
                "recipient": "x@y.example",
            },
        ),
        (
            HANDSHAKE_78,
            SESSION_78,
            {
                "client_address": "2001:db8::5",
                "client_port": 55510,
                "server_address": "2001:db8::1",
                "server_port": 25,
                "client_name": "",  # fcrdns fail: the name is not trusted
                "helo_name": "client|with|bars",
                "sasl_username": "bob|the|builder",
                "encryption_protocol": "",
                "encryption_cipher": "",
                "sender": "a@b.example",
                "recipient": "x@y.example",
            },
        ),
    ],
    ids=["6.8", "7.x"],
)
def test_session_facts_become_the_request(
    handshake: bytes, lines: str, expected: dict[str, object]
) -> None:
    codec = ready(handshake)
    events = codec.receive_data(lines.encode())
    assert problems(events) == []
    [query] = queries(events)
    assert (query.session, query.token) == (SESSION, TOKEN)
    fields = query.request.raw_fields()
    assert {key: fields[key] for key in expected} == expected


@pytest.mark.parametrize(
    ("auth", "username"),
    [
        ("report|0.6|1.0|smtp-in|link-auth|{s}|alice|pass", "alice"),
        ("report|0.6|1.0|smtp-in|link-auth|{s}|alice|fail", ""),
        ("report|0.6|1.0|smtp-in|link-auth|{s}|pass|fail", ""),  # user "pass" failed
        ("report|0.7|1.0|smtp-in|link-auth|{s}|pass|alice", "alice"),
        ("report|0.7|1.0|smtp-in|link-auth|{s}|fail|alice", ""),
        ("report|0.7|1.0|smtp-in|link-auth|{s}|error|alice", ""),
        ("report|0.7|1.0|smtp-in|link-auth|{s}|fail|pass", ""),  # user "pass" failed
    ],
)
def test_link_auth_order_follows_the_version(auth: str, username: str) -> None:
    codec = ready()
    version = auth.split("|")[1]
    connect = f"report|{version}|1.0|smtp-in|link-connect|{SESSION}||pass|127.0.0.10:1|127.0.0.1:25"
    rcpt = f"filter|{version}|1.0|smtp-in|rcpt-to|{SESSION}|{TOKEN}|x@y.example"
    events = codec.receive_data(f"{connect}\n{auth.format(s=SESSION)}\n{rcpt}\n".encode())
    [query] = queries(events)
    assert query.request.sasl_username == username


def test_sender_is_reset_with_the_transaction() -> None:
    codec = ready()
    prefix = "report|0.6|1.0|smtp-in"
    codec.receive_data(
        f"{prefix}|link-connect|{SESSION}||pass|127.0.0.10:1|127.0.0.1:25\n"
        f"{prefix}|tx-mail|{SESSION}|0001|ok|a@b.example\n".encode()
    )
    assert codec.sessions[SESSION].sender == "a@b.example"
    codec.receive_data(f"{prefix}|tx-reset|{SESSION}|0001\n".encode())
    assert codec.sessions[SESSION].sender == ""
    codec.receive_data(f"{prefix}|tx-mail|{SESSION}|0002|permfail|c@d.example\n".encode())
    assert codec.sessions[SESSION].sender == ""


def test_disconnect_drops_the_session_and_a_later_request_is_refused() -> None:
    codec = ready()
    codec.receive_data(SESSION_68.encode())
    assert SESSION in codec.sessions
    codec.receive_data(f"report|0.6|1.0|smtp-in|link-disconnect|{SESSION}\n".encode())
    assert codec.sessions == {}
    events = codec.receive_data(
        f"filter|0.6|1.0|smtp-in|rcpt-to|{SESSION}|{TOKEN}|x@y.example\n".encode()
    )
    assert queries(events) == []
    assert problems(events) == ["no-session"]
    assert writes(events) == (
        f"filter-result|{SESSION}|{TOKEN}|reject|{NO_CLIENT_ADDRESS}\n".encode()
    )


def test_sessions_are_bounded_oldest_first() -> None:
    codec = FilterCodec(max_sessions=2)
    codec.receive_data(HANDSHAKE_68)
    for n in range(3):
        events = codec.receive_data(
            f"report|0.6|1.0|smtp-in|link-connect|{n:016x}||pass|127.0.0.{n + 1}:1|"
            "127.0.0.1:25\n".encode()
        )
    assert list(codec.sessions) == [f"{1:016x}", f"{2:016x}"]
    assert problems(events) == ["sessions-full"]


def test_unix_socket_submission_has_no_client_address() -> None:
    codec = ready()
    events = codec.receive_data(
        f"report|0.6|1.0|smtp-in|link-connect|{SESSION}|localhost|pass|"
        f"unix:/var/run/smtpd.sock|unix:/var/run/smtpd.sock\n"
        f"filter|0.6|1.0|smtp-in|rcpt-to|{SESSION}|{TOKEN}|x@y.example\n".encode()
    )
    assert queries(events) == []
    assert problems(events) == ["no-client"]
    assert writes(events).startswith(f"filter-result|{SESSION}|{TOKEN}|reject|451 ".encode())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:25", ("127.0.0.1", 25)),
        ("[::1]:587", ("::1", 587)),
        ("[2001:db8::1]:65535", ("2001:db8::1", 65535)),
        ("unix:/var/run/smtpd.sock", None),
    ],
)
def test_parse_endpoint(text: str, expected: tuple[str, int] | None) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", "127.0.0.1:", ":25", "[::1]:70000", "x:-1", ""])
def test_parse_endpoint_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="not an address:port"):
        parse_endpoint(text)


def test_encode_result() -> None:
    ok = accept("trusted_networks", "trusted-network")
    assert (
        encode_result(SESSION, TOKEN, ok) == f"filter-result|{SESSION}|{TOKEN}|proceed\n".encode()
    )
    no = reject(554, "5.7.1", "<x@y.example>: Relay access denied", "local_domains", "r")
    assert (
        encode_result(SESSION, TOKEN, no)
        == (
            f"filter-result|{SESSION}|{TOKEN}|reject|554 5.7.1 <x@y.example>: Relay access denied\n"
        ).encode()
    )
    later = defer(451, "4.3.0", "Temporary lookup failure", "pop", "r")
    assert encode_result(SESSION, TOKEN, later).endswith(
        b"|reject|451 4.3.0 Temporary lookup failure\n"
    )
    # NEXT is never a proceed.
    assert b"|reject|451 " in encode_result(SESSION, TOKEN, next_policy("x"))
    # The text is one line, printable ASCII, and short enough for smtpd's buffer.
    nasty = reject(554, "5.7.1", "a\r\nb\x00" + "é" * 5000, "p", "r")
    line = encode_result(SESSION, TOKEN, nasty)
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    assert line.isascii() and b"\r" not in line and b"\x00" not in line
    assert len(line) < 1024


# Each line is broken; a filter request among them names its session and token, so it
# gets an answer; none gets a proceed or a Query.
MALFORMED = [
    b"filter|0.6|1.0|smtp-in|rcpt-to|" + SESSION.encode() + b"|" + TOKEN.encode(),  # 7 fields
    b"filter|0.6|1.0|smtp-in|rcpt-to|NOTHEX|" + TOKEN.encode() + b"|x@y",
    b"filter|0.9|1.0|smtp-in|rcpt-to|" + SESSION.encode() + b"|" + TOKEN.encode() + b"|x@y",
    b"filter|0.6|1.0|smtp-in|rcpt-to|" + SESSION.encode() + b"|" + TOKEN.encode() + b"|x\xff@y",
    b"filter|0.6|1.0|smtp-in|rcpt-to|" + SESSION.encode() + b"|" + TOKEN.encode() + b"|x\x00@y",
    b"filter|0.6|1.0|smtp-in|mail-from|" + SESSION.encode() + b"|" + TOKEN.encode() + b"|a@b",
    b"report|0.6|1.0|smtp-in|link-connect|" + SESSION.encode() + b"|x|pass|nonsense|127.0.0.1:25",
    b"report|0.6|1.0|smtp-in|link-connect",
    b"hello",
    b"",
]


@pytest.mark.parametrize("line", MALFORMED)
def test_malformed_lines_never_proceed(line: bytes) -> None:
    codec = ready()
    codec.receive_data(SESSION_68.encode().rsplit(b"filter", 1)[0])
    events = codec.receive_data(line + b"\n")
    assert queries(events) == []
    assert b"proceed" not in writes(events)
    assert problems(events)
    if line.startswith(b"filter|") and f"|{SESSION}|{TOKEN}|".encode() in line:
        assert writes(events).startswith(f"filter-result|{SESSION}|{TOKEN}|reject|451 ".encode())


def test_request_before_handshake_is_refused() -> None:
    codec = FilterCodec()
    events = codec.receive_data(f"filter|0.6|1.0|smtp-in|rcpt-to|{SESSION}|{TOKEN}|x@y\n".encode())
    assert problems(events) == ["malformed"]
    assert writes(events).endswith(
        b"|reject|451 4.3.0 Policy service cannot evaluate this request\n"
    )


def test_over_long_line_is_dropped_and_its_request_refused() -> None:
    codec = FilterCodec(max_line=1024)
    codec.receive_data(HANDSHAKE_68)
    codec.receive_data(SESSION_68.encode().rsplit(b"filter", 1)[0])
    head = f"filter|0.6|1.0|smtp-in|rcpt-to|{SESSION}|{TOKEN}|".encode()
    events = codec.receive_data(head + b"a" * 600)
    assert events == []
    events = codec.receive_data(b"a" * 600)  # now past the limit: dropped as it comes
    assert events == [] and len(codec._buffer) == 0
    events = codec.receive_data(
        b"a" * 5000 + b"@y.example\nreport|0.6|1.0|smtp-in|tx-reset|" + SESSION.encode() + b"\n"
    )
    assert problems(events) == ["malformed"]
    assert (
        writes(events) == (f"filter-result|{SESSION}|{TOKEN}|reject|{CANNOT_EVALUATE}\n").encode()
    )
    # The stream goes on after the dropped line.
    events = codec.receive_data(
        f"filter|0.6|1.0|smtp-in|rcpt-to|{SESSION}|{TOKEN}|x@y.example\n".encode()
    )
    assert len(queries(events)) == 1


def test_crlf_line_ends_are_read() -> None:
    codec = FilterCodec()
    events = codec.receive_data(HANDSHAKE_68.replace(b"\n", b"\r\n"))
    assert codec.ready and writes(events) == registration()


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(
        st.one_of(
            st.binary(max_size=80),
            st.sampled_from(
                [
                    b"filter|0.6|1.0|smtp-in|rcpt-to|",
                    b"filter|0.7|1.0|smtp-in|rcpt-to|",
                    SESSION.encode(),
                    TOKEN.encode(),
                    b"|",
                    b"\n",
                    b"report|0.6|1.0|smtp-in|link-connect|",
                    b"unix:/x",
                    b"127.0.0.10:25",
                    b"config|ready\n",
                ]
            ),
        ),
        max_size=40,
    )
)
def test_fuzz_never_raises_and_queries_only_well_formed_requests(chunks: list[bytes]) -> None:
    codec = FilterCodec(max_line=300, max_sessions=3)
    events: list[object] = []
    for chunk in chunks:
        events += codec.receive_data(chunk)
    stream = b"".join(chunks)
    lines = stream.split(b"\n")[:-1]
    for query in queries(events):
        # A query comes only from a whole filter line naming its session and token, of a
        # session reported by a link-connect with an IP client address.
        marker = f"|rcpt-to|{query.session}|{query.token}|".encode()
        assert any(line.startswith(b"filter|0.") and marker in line for line in lines)
        assert query.request.client_address
    for data in (e.data for e in events if isinstance(e, Write)):
        for line in data.splitlines():
            assert line.startswith((b"register|", b"filter-result|"))
            assert not line.endswith(b"|proceed")  # only a decision proceeds


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_a_broken_request_line_never_becomes_a_query(junk: bytes) -> None:
    codec = ready()
    codec.receive_data(SESSION_68.encode().rsplit(b"filter", 1)[0])
    line = f"filter|0.6|1.0|smtp-in|rcpt-to|{SESSION}|{TOKEN}|".encode() + junk
    events = codec.receive_data(line + b"\n")
    body = line.split(b"\n")[0]
    valid = b"\x00" not in body and b"\r" not in body[:-1]
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        valid = False
    if not valid:
        assert queries(events) == []
    assert b"proceed" not in writes(events)


@pytest.mark.parametrize(
    "junk", [b"\r\x01", b"a\rb@local.test", b"user@local.test\x1b[2J", b"\x7f"]
)
def test_a_control_character_in_a_request_is_refused_not_decided(junk: bytes) -> None:
    """Found by the fuzz test above: a CR inside a line (not its CRLF end) went through as
    part of the recipient. smtpd's lines carry no control characters; one is damage."""
    codec = ready()
    codec.receive_data(SESSION_68.encode().rsplit(b"filter", 1)[0])
    line = f"filter|0.6|1.0|smtp-in|rcpt-to|{SESSION}|{TOKEN}|".encode() + junk
    events = codec.receive_data(line + b"\n")
    assert queries(events) == []
    assert writes(events).startswith(f"filter-result|{SESSION}|{TOKEN}|reject|451 ".encode())
