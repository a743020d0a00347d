"""The milter codec: negotiation, session state, macros, answers, and bad input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaypolicy import LocalDomainOnly, OpenRelay
from relaypolicy.errors import ProtocolError
from relaypolicy.milter.client import connect_packet, macro_packet, optneg
from relaypolicy.milter.codec import MilterConnection, Recipient
from relaypolicy.milter.protocol import (
    SMFIF_SETSYMLIST,
    SMFIP_NOBODY,
    SMFIP_NR_CONN,
    SMFIP_NR_HELO,
    SMFIP_NR_MAIL,
    WANTED_PROTOCOL,
    encode_decision,
    encode_packet,
    encode_reply,
    macro_name,
)
from relaypolicy.milter.server import MilterServer
from relaypolicy.model import accept, defer, next_policy, reject

CONTINUE = encode_packet(b"c")


def strings(command: bytes, *args: str) -> bytes:
    return encode_packet(command, b"".join(a.encode() + b"\0" for a in args))


def negotiated(protocol: int = 0x1FFFFF, **kwargs: object) -> MilterConnection:
    codec = MilterConnection(**kwargs)  # type: ignore[arg-type]
    [answer] = codec.receive_data(optneg(protocol=protocol))
    assert isinstance(answer, bytes)
    return codec


def session(client: str = "192.0.2.7", **macros: str) -> bytes:
    """What Postfix sends up to the first RCPT, with ``macros`` at the connect stage."""
    return (
        macro_packet(b"C", {"j": "mx.example", **macros})
        + connect_packet(client, 40001, host="client.example")
        + strings(b"H", "helo.example")
        + macro_packet(b"M", {"{auth_authen}": "taro", "{auth_type}": "PLAIN"})
        + strings(b"M", "<sender@example.org>", "SIZE=100")
        + macro_packet(b"R", {"{rcpt_addr}": "user@example.net"})
        + strings(b"R", "<user@example.net>")
    )


def only_recipient(items: list[bytes | Recipient]) -> Recipient:
    [item] = items
    assert isinstance(item, Recipient)
    return item


# --- negotiation --------------------------------------------------------------------


def test_optneg_asks_to_skip_what_we_do_not_need_and_for_our_macros() -> None:
    codec = MilterConnection()
    [answer] = codec.receive_data(optneg(protocol=0x1FFFFF))  # Postfix's offer
    lists = (
        b"\0\0\0\0{client_addr} {client_port} {daemon_addr} {daemon_port} {daemon_name}\0"
        b"\0\0\0\1{tls_version} {cipher} {cert_subject}\0"
        b"\0\0\0\2{auth_type} {auth_authen}\0"
    )
    expected = struct.pack(">III", 6, SMFIF_SETSYMLIST, WANTED_PROTOCOL) + lists
    assert answer == encode_packet(b"O", expected)
    assert codec.no_reply == SMFIP_NR_CONN | SMFIP_NR_HELO | SMFIP_NR_MAIL


@pytest.mark.parametrize(
    ("actions", "request_macros"), [(0x1FF & ~SMFIF_SETSYMLIST, True), (0x1FF, False)]
)
def test_optneg_modifies_nothing_without_setsymlist(actions: int, request_macros: bool) -> None:
    codec = MilterConnection(request_macros=request_macros)
    offer = encode_packet(b"O", struct.pack(">III", 6, actions, 0x1FFFFF))
    [answer] = codec.receive_data(offer)
    assert answer == encode_packet(b"O", struct.pack(">III", 6, 0, WANTED_PROTOCOL))


def test_optneg_asks_only_for_what_the_mta_offers() -> None:
    codec = MilterConnection(request_macros=False)
    [answer] = codec.receive_data(optneg(protocol=SMFIP_NOBODY))
    assert answer == encode_packet(b"O", struct.pack(">III", 6, 0, SMFIP_NOBODY))
    # No "no reply" offered: CONNECT, HELO and MAIL are answered "continue".
    out = codec.receive_data(connect_packet("192.0.2.7") + strings(b"H", "x") + strings(b"M", "<>"))
    assert out == [CONTINUE, CONTINUE, CONTINUE]


def test_optneg_version_2_gets_no_no_reply_bits() -> None:
    codec = MilterConnection()
    [answer] = codec.receive_data(optneg(version=2, protocol=0x1FFFFF))
    assert isinstance(answer, bytes)
    version, _, protocol = struct.unpack(">III", answer[5:])
    assert version == 2
    assert protocol & (SMFIP_NR_CONN | SMFIP_NR_HELO | SMFIP_NR_MAIL) == 0
    assert codec.no_reply == 0


# --- the session and its request ----------------------------------------------------


def test_a_postfix_session_becomes_a_request() -> None:
    codec = negotiated()
    recipient = only_recipient(
        codec.receive_data(
            session(
                **{
                    "{daemon_port}": "587",
                    "{daemon_addr}": "192.0.2.1",
                    "{tls_version}": "TLSv1.3",
                    "{cipher}": "TLS_AES_256_GCM_SHA384",
                    "{cert_subject}": "CN=client",
                }
            )
        )
    )
    request = recipient.to_request()
    assert request.client_address == "192.0.2.7"
    assert request.client_port == 40001
    assert request.client_name == "client.example"
    assert request.helo_name == "helo.example"
    assert request.sender == "sender@example.org"
    assert request.recipient == "user@example.net"
    assert request.sasl_username == "taro"
    assert request.sasl_method == "PLAIN"
    assert request.server_port == 587
    assert request.server_address == "192.0.2.1"
    assert request.encryption_protocol == "TLSv1.3"
    assert request.encryption_cipher == "TLS_AES_256_GCM_SHA384"
    assert request.ccert_subject == "CN=client"


@pytest.mark.parametrize(
    ("address", "expected"),
    [("IPv6:2001:db8::1", "2001:db8::1"), ("::1", "::1"), ("::ffff:192.0.2.7", "192.0.2.7")],
)
def test_ipv6_connect_addresses(address: str, expected: str) -> None:
    codec = negotiated()
    packet = encode_packet(b"C", b"[x]\x006" + struct.pack(">H", 25) + address.encode() + b"\0")
    recipient = only_recipient(codec.receive_data(packet + strings(b"R", "<a@b.example>")))
    assert recipient.to_request().client_address == expected
    assert recipient.client_name == ""  # "[x]": no verified name


def test_unknown_family_takes_client_addr_macro() -> None:
    codec = negotiated()
    data = macro_packet(b"C", {"{client_addr}": "198.51.100.4", "{client_port}": "2525"})
    data += connect_packet("") + strings(b"R", "<a@b.example>")
    recipient = only_recipient(codec.receive_data(data))
    assert recipient.client_address == "198.51.100.4"
    assert recipient.client_port == 2525


@pytest.mark.parametrize(
    "connect",
    [
        connect_packet(""),  # family U, no macro
        encode_packet(b"C", b"localhost\0L\0\0/run/socket\0"),  # a unix socket
        b"",  # no CONNECT at all
    ],
)
def test_no_client_address_is_empty_and_the_server_refuses_for_now(connect: bytes) -> None:
    codec = negotiated()
    recipient = only_recipient(codec.receive_data(connect + strings(b"R", "<a@b.example>")))
    assert recipient.client_address == ""
    server = MilterServer(OpenRelay())  # would accept anything it is asked
    answer = server.answer(recipient, "test")
    assert answer == encode_reply(451, "4.3.5", "Cannot determine the client address")
    assert server.counters["no-client-address"] == 1


def test_a_client_address_that_is_not_ip_is_a_temporary_refusal() -> None:
    codec = negotiated()
    data = macro_packet(b"C", {"{client_addr}": "not-an-address"}) + connect_packet("")
    recipient = only_recipient(codec.receive_data(data + strings(b"R", "<a@b.example>")))
    server = MilterServer(OpenRelay())
    assert server.answer(recipient, "test")[4:9] == b"y451 "
    assert server.counters["unusable"] == 1


def test_macro_scope_mail_macros_end_with_the_transaction() -> None:
    codec = negotiated()
    first = only_recipient(codec.receive_data(session()))
    assert first.to_request().sasl_username == "taro"
    # Another RCPT in the same transaction: the MAIL macros still hold, the RCPT ones not.
    second = only_recipient(codec.receive_data(strings(b"R", "<other@example.net>")))
    assert second.macros["auth_authen"] == "taro"
    assert "rcpt_addr" not in second.macros
    # ABORT (RSET): the sender and its macros go; HELO and connect facts stay.
    assert codec.receive_data(encode_packet(b"A")) == []
    third = only_recipient(codec.receive_data(strings(b"R", "<x@example.net>")))
    assert third.sender == ""
    assert "auth_authen" not in third.macros
    assert third.helo == "helo.example"
    assert third.client_address == "192.0.2.7"
    # A new MAIL without auth macros: no login carried over.
    data = macro_packet(b"M", {"i": "Q1"}) + strings(b"M", "<>") + strings(b"R", "<y@x.example>")
    fourth = only_recipient(codec.receive_data(data))
    assert fourth.to_request().sasl_username == ""
    assert fourth.sender == ""


def test_quit_nc_starts_a_new_session_on_the_same_connection() -> None:
    codec = negotiated()
    only_recipient(codec.receive_data(session()))
    assert codec.receive_data(encode_packet(b"K")) == []
    recipient = only_recipient(codec.receive_data(strings(b"R", "<a@b.example>")))
    assert recipient.client_address == ""
    assert recipient.helo == ""
    assert recipient.macros == {}


def test_daemon_name_maps_to_a_port_when_no_daemon_port_is_sent() -> None:
    codec = negotiated(daemon_ports={"MSA": 587})
    data = macro_packet(b"C", {"{daemon_name}": "MSA"}) + connect_packet("192.0.2.7")
    recipient = only_recipient(codec.receive_data(data + strings(b"R", "<a@b.example>")))
    assert recipient.server_port == 587


def test_steps_the_mta_could_not_skip_are_answered_continue() -> None:
    codec = negotiated(protocol=0)
    out = codec.receive_data(
        encode_packet(b"T")
        + strings(b"L", "Subject", "hi")
        + encode_packet(b"N")
        + encode_packet(b"B", b"body")
        + encode_packet(b"E")
        + strings(b"U", "NOOP")
    )
    assert out == [CONTINUE] * 6


def test_quit_ends_the_connection() -> None:
    codec = negotiated()
    assert codec.receive_data(encode_packet(b"Q")) == []
    assert codec.quit


def test_macro_name_braces() -> None:
    assert macro_name("{auth_authen}") == "auth_authen"
    assert macro_name("j") == "j"
    codec = negotiated()
    codec.receive_data(macro_packet(b"C", {"{daemon_port}": "25", "j": "mx"}))
    assert codec.macro("daemon_port") == codec.macro("{daemon_port}") == "25"
    assert codec.macro("{j}") == "mx"
    assert codec.macro("missing") is None


# --- answers ------------------------------------------------------------------------


def test_accept_and_next_continue_refusals_reply_with_our_code() -> None:
    assert encode_decision(accept("p", "r")) == CONTINUE
    assert encode_decision(next_policy("p")) == CONTINUE
    refused = encode_decision(reject(554, "5.7.1", "<a@b>: Relay access denied", "p", "r"))
    assert refused == encode_packet(b"y", b"554 5.7.1 <a@b>: Relay access denied\0")
    deferred = encode_decision(defer(451, "4.3.0", "later", "p", "r"))
    assert deferred == encode_packet(b"y", b"451 4.3.0 later\0")


def test_reply_text_is_made_safe() -> None:
    assert encode_reply(550, "5.7.1", "100% é\r\nx") == encode_packet(
        b"y", b"550 5.7.1 100%% ???x\0"
    )
    # A code the MTA would refuse (then apply its default action) is a temporary refusal.
    assert encode_reply(250, "2.0.0", "ok")[5:15] == b"451 4.3.0 "
    assert encode_reply(550, "4.7.1", "mismatch")[5:15] == b"451 4.3.0 "


def test_a_policy_decision_through_the_server() -> None:
    server = MilterServer(LocalDomainOnly(["local.test"]))
    codec = negotiated()
    recipient = only_recipient(codec.receive_data(session()))
    answer = server.answer(recipient, "test")
    assert answer.startswith(struct.pack(">I", len(answer) - 4) + b"y554 5.7.1 ")
    assert server.stats()["verdict:reject"] == 1


# --- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (encode_packet(b"C", b"x\0U"), "before option negotiation"),
        (optneg() + encode_packet(b"Z"), "unknown command 'Z'"),
        (optneg() + b"\0\0\0\0", "empty packet"),
        (optneg() + struct.pack(">I", 65537), "larger than the limit of 65536"),
        (optneg() + optneg(), "negotiation repeated"),
        (encode_packet(b"O", b"\0\0\0\6"), "expected at least 12"),
        (optneg(version=1), "version 1"),
        (optneg() + encode_packet(b"C", b"host"), "without a NUL"),
        (optneg() + encode_packet(b"C", b"host\0"), "without an address family"),
        (optneg() + encode_packet(b"C", b"host\0X\0\0a\0"), "unknown address family 'X'"),
        (optneg() + encode_packet(b"C", b"host\x004\0"), "truncated"),
        (optneg() + encode_packet(b"C", b"h\x004\0\x19a\0b\0"), "NUL inside"),
        (optneg() + encode_packet(b"H", b"helo"), "does not end with NUL"),
        (optneg() + encode_packet(b"H", b"a\0b\0"), "HELO packet with 2 strings"),
        (optneg() + encode_packet(b"D", b""), "without the command"),
        (optneg() + encode_packet(b"D", b"Cname\0"), "a name and no value"),
        (optneg() + encode_packet(b"R", b""), "does not end with NUL"),
        (optneg() + encode_packet(b"Q") + b"x", "after QUIT"),
    ],
)
def test_bad_input_is_a_protocol_error(data: bytes, message: str) -> None:
    codec = MilterConnection()
    with pytest.raises(ProtocolError, match=message):
        codec.receive_data(data)
    assert codec.failed is not None
    with pytest.raises(ProtocolError, match="already failed"):
        codec.receive_data(b"")


def test_an_oversized_packet_is_refused_from_its_length_alone() -> None:
    codec = negotiated(max_packet=1024)
    with pytest.raises(ProtocolError, match="1025 bytes is larger than the limit of 1024"):
        codec.receive_data(struct.pack(">I", 1025))  # nothing more needed


def test_partial_packets_wait_for_the_rest() -> None:
    codec = negotiated()
    data = session()
    for index in range(len(data) - 1):
        assert codec.receive_data(data[index : index + 1]) == []
    assert codec.in_packet
    out = codec.receive_data(data[-1:])
    assert not codec.in_packet
    assert only_recipient(out).recipient == "user@example.net"


# --- properties -------------------------------------------------------------------


_COMMANDS = b"ABCDEHKLMNOQRTU"


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    """A packet of a known command with arbitrary data, or arbitrary bytes."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=40))
    command = bytes([draw(st.sampled_from(_COMMANDS))])
    if command == b"C" and draw(st.booleans()):
        family = draw(st.sampled_from([b"4", b"6", b"U", b"L"]))
        address = draw(st.sampled_from([b"192.0.2.7", b"::1", b"", b"junk", b"IPv6:::1"]))
        data = draw(st.binary(max_size=8)) + b"\0" + family + b"\0\x19" + address + b"\0"
    elif command == b"D" and draw(st.booleans()):
        names = draw(st.lists(st.sampled_from([b"{client_addr}", b"{auth_authen}", b"j"])))
        values = draw(st.lists(st.binary(max_size=12), min_size=len(names), max_size=len(names)))
        stage = bytes([draw(st.sampled_from(b"CHMR"))])
        data = stage + b"".join(n + b"\0" + v + b"\0" for n, v in zip(names, values, strict=True))
    else:
        data = draw(st.binary(max_size=30))
        if draw(st.booleans()):
            data += b"\0"
    return encode_packet(command, data)


@settings(max_examples=300, deadline=None)
@given(st.lists(packets(), max_size=12), st.integers(min_value=1, max_value=64))
def test_any_stream_raises_only_protocol_error_and_never_continues_without_a_client(
    stream: list[bytes], chunk: int
) -> None:
    """Whatever arrives, in whatever pieces: only ProtocolError is raised, and a recipient
    without an IP client address is never answered "continue", even by a policy that
    would let everything through."""
    codec = MilterConnection()
    server = MilterServer(OpenRelay())
    data = optneg() + b"".join(stream)
    for start in range(0, len(data), chunk):
        try:
            items = codec.receive_data(data[start : start + chunk])
        except ProtocolError:
            return
        for item in items:
            if isinstance(item, Recipient):
                answer = server.answer(item, "fuzz")
                if answer == CONTINUE:
                    item.to_request()  # a usable client address, or this raises


@settings(max_examples=200, deadline=None)
@given(st.lists(packets(), max_size=10), st.integers(min_value=1, max_value=17))
def test_chunking_does_not_change_the_outcome(stream: list[bytes], chunk: int) -> None:
    data = optneg() + b"".join(stream)

    def run(pieces: list[bytes]) -> list[object]:
        """The answers and recipients; only the error once there is one (the server
        then closes the connection without writing anything more)."""
        codec = MilterConnection()
        out: list[object] = []
        for piece in pieces:
            try:
                items = codec.receive_data(piece)
            except ProtocolError as exc:
                return [f"error: {exc}"]
            out += [item if isinstance(item, bytes) else repr(item) for item in items]
        return out

    whole = run([data])
    pieces = run([data[i : i + chunk] for i in range(0, len(data), chunk)])
    assert pieces == whole
