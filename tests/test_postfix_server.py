"""The asyncio policy server over real loopback and unix sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from relaypolicy import FirstMatch, LocalDomainOnly, TrustedNetworks
from relaypolicy.model import Decision, Request
from relaypolicy.postfix.server import Listener, PolicyServer, ServerSettings, parse_listener

POLICY = FirstMatch(TrustedNetworks(["192.0.2.0/24"]), LocalDomainOnly(["local.test"]))


def request_bytes(recipient: str, client: str = "203.0.113.7", state: str = "RCPT") -> bytes:
    return (
        f"request=smtpd_access_policy\nprotocol_state={state}\n"
        f"client_address={client}\nrecipient={recipient}\n\n"
    ).encode()


@asynccontextmanager
async def running(
    settings: ServerSettings | None = None, listeners: list[Listener] | None = None
) -> AsyncIterator[tuple[PolicyServer, str, int]]:
    server = PolicyServer(POLICY, settings)
    bound = await server.start(listeners or [Listener(host="127.0.0.1", port=0)])
    host, port = "127.0.0.1", int(bound[0].rsplit(":", 1)[1]) if bound[0].startswith("inet") else 0
    try:
        yield server, host, port
    finally:
        await server.close(grace=2)


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro())  # type: ignore[arg-type]


def test_answers_many_requests_on_one_connection() -> None:
    async def scenario() -> None:
        async with running() as (server, host, port):
            reader, writer = await asyncio.open_connection(host, port)
            assert await ask(reader, writer, request_bytes("u@local.test")) == b"action=OK\n\n"
            assert await ask(reader, writer, request_bytes("u@aho.jp")) == (
                b"action=554 5.7.1 Relay access denied\n\n"
            )
            assert await ask(reader, writer, request_bytes("u@aho.jp", "192.0.2.5")) == (
                b"action=OK\n\n"
            )
            assert await ask(reader, writer, request_bytes("u@aho.jp", state="MAIL")) == (
                b"action=DUNNO\n\n"
            )
            # Two requests in one write: two answers, in order.
            writer.write(request_bytes("u%aho.jp@local.test") + request_bytes("u@local.test"))
            first = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
            second = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
            assert (first, second) == (
                b"action=554 5.7.1 Relay access denied\n\n",
                b"action=OK\n\n",
            )
            writer.close()
            assert server.counters["requests"] == 6
            assert server.stats()["reason:routing"] == 1

    run(scenario)


@pytest.mark.parametrize(
    "bad",
    [
        b"request=smtpd_access_policy\nthis line has no equals\n\n",
        b"request=smtpd_access_policy\nrecipient=a\x00@b\n\n",
        b"request=smtpd_access_policy\nrecipient=" + b"x" * 10000 + b"\n",
        b"request=smtpd_access_policy\nrecipient=\xc3\x28@b\n\n",
        b"request=something_else\nrecipient=a@b\n\n",
        # Over MAX_REQUEST (64 KiB) in lines that are each short enough.
        b"request=smtpd_access_policy\n"
        + b"x_attribute="
        + b"y" * 4000
        + b"\n"
        + (b"x_attribute=" + b"y" * 4000 + b"\n") * 17
        + b"recipient=a@b\n\n",
        # More than MAX_ATTRIBUTES (1,000) distinct attributes, each tiny (a repeated
        # name is one attribute, its last value winning, as in Postfix).
        b"request=smtpd_access_policy\n"
        + b"".join(b"a%d=b\n" % n for n in range(1000))
        + b"recipient=a@b\n\n",
    ],
    ids=[
        "no-equals",
        "nul",
        "overlong-line",
        "bad-utf8",
        "not-a-policy-request",
        "over-64k",
        "over-1000-attributes",
    ],
)
def test_bad_input_closes_only_that_connection(
    bad: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with running() as (server, host, port):
            good_reader, good_writer = await asyncio.open_connection(host, port)
            assert await ask(good_reader, good_writer, request_bytes("u@local.test")) == (
                b"action=OK\n\n"
            )
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(bad)
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, no answer
            assert await ask(good_reader, good_writer, request_bytes("u@aho.jp")) == (
                b"action=554 5.7.1 Relay access denied\n\n"
            )
            good_writer.close()
            assert server.counters["protocol-errors"] == 1

    with caplog.at_level(logging.WARNING, logger="relaypolicy.serve"):
        run(scenario)
    assert any(
        "protocol error" in r.getMessage() and "127.0.0.1:" in r.getMessage()
        for r in caplog.records
    )


def test_client_stopping_mid_request_is_closed(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with running(ServerSettings(idle_timeout=0.3)) as (_, host, port):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"request=smtpd_access_policy\nrecipient=u@local.test\n")
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b""

    with caplog.at_level(logging.WARNING, logger="relaypolicy.serve"):
        run(scenario)
    assert any("middle of a request" in r.getMessage() for r in caplog.records)


def test_a_full_server_closes_the_connection_without_an_answer_longest() -> None:
    async def scenario() -> None:
        async with running(ServerSettings(max_connections=2)) as (server, host, port):
            held = [await asyncio.open_connection(host, port) for _ in range(2)]
            for reader, writer in held:
                assert await ask(reader, writer, request_bytes("u@local.test")) == (
                    b"action=OK\n\n"
                )
            reader, writer = await asyncio.open_connection(host, port)
            assert await ask(reader, writer, request_bytes("u@local.test")) == b"action=OK\n\n"
            oldest_reader, _ = held[0]
            assert await asyncio.wait_for(oldest_reader.read(), 5) == b""
            newer_reader, newer_writer = held[1]
            assert await ask(newer_reader, newer_writer, request_bytes("u@aho.jp")) == (
                b"action=554 5.7.1 Relay access denied\n\n"
            )
            assert server.counters["connections-evicted"] == 1
            assert server.connections == 2
            for _, other in [*held, (reader, writer)]:
                other.close()

    run(scenario)


# A request that never ends: a valid start, then one "y" at a time (a line may be 8 KiB).
TRICKLE = b"request=smtpd_access_policy\nx_padding="


async def trickle(host: str, port: int, stop: asyncio.Event, cut: list[int]) -> None:
    """A slow client: one byte every 0.2 s, reconnecting whenever the server cuts it off.

    Each connection is counted in ``cut`` when the server closes it."""
    while not stop.is_set():
        reader, writer = await asyncio.open_connection(host, port)
        closed = asyncio.ensure_future(reader.read())
        payload = iter(TRICKLE)
        while not stop.is_set() and not closed.done():
            writer.write(bytes([next(payload, ord("y"))]))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(closed), 0.2)
        if closed.done():
            cut.append(1)
        closed.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def ask_like_postfix(host: str, port: int, data: bytes) -> bytes:
    """Postfix's policy client: connect, ask, and on a failed connection try again."""
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(data)
            answer = await reader.readuntil(b"\n\n")
        except (ConnectionError, asyncio.IncompleteReadError):
            await asyncio.sleep(0.1)  # real-time: a cut-off client retries, as Postfix does
            continue
        writer.close()
        return answer


def test_a_trickled_request_is_closed_at_request_timeout_however_slow_the_bytes() -> None:
    """Every byte arrives well within idle_timeout; the request still has a deadline."""

    async def scenario() -> None:
        settings = ServerSettings(idle_timeout=30, request_timeout=1)
        async with running(settings) as (server, host, port):
            stop, cut = asyncio.Event(), list[int]()
            task = asyncio.create_task(trickle(host, port, stop, cut))
            try:
                for _ in range(1000):  # a bounded wait, 10 s, for the first cut
                    if cut:
                        break
                    await asyncio.sleep(0.01)  # real-time: poll, bounded
                assert cut, "a request trickling in for 10 s was never cut off"
            finally:
                stop.set()
                await asyncio.wait_for(task, 5)
            assert server.counters["request-timeouts"] >= 1

    run(scenario)


def test_time_between_requests_is_not_request_time() -> None:
    async def scenario() -> None:
        settings = ServerSettings(idle_timeout=30, request_timeout=0.3)
        async with running(settings) as (server, host, port):
            reader, writer = await asyncio.open_connection(host, port)
            assert await ask(reader, writer, request_bytes("u@local.test")) == b"action=OK\n\n"
            await asyncio.sleep(0.6)  # real-time: idle for two request timeouts (the loop's clock)
            assert await ask(reader, writer, request_bytes("u@aho.jp")) == (
                b"action=554 5.7.1 Relay access denied\n\n"
            )
            # A request split over two writes a moment apart is answered too.
            first, second = request_bytes("u@local.test")[:20], request_bytes("u@local.test")[20:]
            writer.write(first)
            await writer.drain()
            await asyncio.sleep(0.05)  # real-time: the second half arrives later
            assert await ask(reader, writer, second) == b"action=OK\n\n"
            writer.close()
            assert server.counters["request-timeouts"] == 0

    run(scenario)


def test_trickling_clients_holding_every_slot_do_not_lock_out_postfix() -> None:
    """Fault injection: as many slow clients as there are slots, each sending one byte
    every 0.2 s (never idle for idle_timeout) and reconnecting whenever cut off. A client
    that asks properly still gets its answer, within a generous bound."""

    async def scenario() -> None:
        settings = ServerSettings(max_connections=5, idle_timeout=30, request_timeout=2)
        async with running(settings) as (server, host, port):
            stop, cut = asyncio.Event(), list[int]()
            attackers = [asyncio.create_task(trickle(host, port, stop, cut)) for _ in range(5)]
            try:
                for _ in range(500):
                    if server.connections == 5:
                        break
                    await asyncio.sleep(0.01)  # real-time: poll, bounded
                assert server.connections == 5  # every slot is held
                await asyncio.sleep(0.5)  # real-time: a few bytes each
                answer = await asyncio.wait_for(
                    ask_like_postfix(host, port, request_bytes("u@aho.jp")), 15
                )
                assert answer == b"action=554 5.7.1 Relay access denied\n\n"
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*attackers), 10)

    run(scenario)


def test_unix_socket_with_mode(tmp_path: Path) -> None:
    path = tmp_path / "policy.sock"

    async def scenario() -> None:
        listener = Listener(path=str(path), mode=0o660)
        async with running(listeners=[listener]):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
            reader, writer = await asyncio.open_unix_connection(str(path))
            assert await ask(reader, writer, request_bytes("u@aho.jp")) == (
                b"action=554 5.7.1 Relay access denied\n\n"
            )
            writer.close()
        assert not path.exists()

    run(scenario)


def test_ipv4_ipv6_and_unix_listeners_at_once(tmp_path: Path) -> None:
    """One server on 127.0.0.1, ::1 and a unix socket: each answers, each with its peer."""
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        if os.environ.get("RELAYPOLICY_REQUIRE_REAL") == "1":
            raise
        pytest.skip("no IPv6 loopback here")
    path = tmp_path / "policy.sock"

    async def scenario() -> None:
        listeners = [
            Listener(host="127.0.0.1", port=0),
            Listener(host="::1", port=0),
            Listener(path=str(path), mode=0o600),
        ]
        server = PolicyServer(POLICY)
        bound = await server.start(listeners)
        try:
            assert bound[0].startswith("inet:127.0.0.1:")
            assert bound[1].startswith("inet:[::1]:"), bound
            assert bound[2] == f"unix:{path}"
            v4 = await asyncio.open_connection("127.0.0.1", int(bound[0].rsplit(":", 1)[1]))
            v6 = await asyncio.open_connection("::1", int(bound[1].rsplit(":", 1)[1]))
            unix = await asyncio.open_unix_connection(str(path))
            for reader, writer in (v4, v6, unix):
                assert await ask(reader, writer, request_bytes("u@local.test")) == (
                    b"action=OK\n\n"
                )
                assert await ask(reader, writer, request_bytes("u@aho.jp", "2001:db8::1")) == (
                    b"action=554 5.7.1 Relay access denied\n\n"
                )
                writer.close()
            assert server.counters["requests"] == 6
        finally:
            await server.close(grace=2)
        assert not path.exists()

    run(scenario)


def test_accept_and_other_states_actions_are_configurable() -> None:
    settings = ServerSettings(accept_action="DUNNO", other_states_action="WARN not at RCPT")

    async def scenario() -> None:
        async with running(settings) as (_, host, port):
            reader, writer = await asyncio.open_connection(host, port)
            assert await ask(reader, writer, request_bytes("u@local.test")) == b"action=DUNNO\n\n"
            assert await ask(reader, writer, request_bytes("u@aho.jp", state="DATA")) == (
                b"action=WARN not at RCPT\n\n"
            )
            # A refusal is never softened by either setting.
            assert await ask(reader, writer, request_bytes("u@aho.jp")) == (
                b"action=554 5.7.1 Relay access denied\n\n"
            )
            writer.close()

    run(scenario)


def test_unusable_request_and_raising_policy_fail_closed() -> None:
    class Broken:
        name = "broken"

        def check(self, request: Request) -> Decision:
            raise RuntimeError("bug")

    async def scenario() -> None:
        async with running() as (server, host, port):
            reader, writer = await asyncio.open_connection(host, port)
            answer = await ask(reader, writer, request_bytes("u@local.test", client="unknown"))
            assert answer.startswith(b"action=451 4.3.0 ")
            server.policy = Broken()
            answer = await ask(reader, writer, request_bytes("u@local.test"))
            assert answer == b"action=451 4.3.0 Policy service error\n\n"
            writer.close()

    run(scenario)


def test_close_answers_the_request_in_hand() -> None:
    async def scenario() -> None:
        server = PolicyServer(POLICY)
        bound = await server.start([Listener(host="127.0.0.1", port=0)])
        port = int(bound[0].rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_bytes("u@local.test") * 50)
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
        await server.close(grace=2)
        rest = await asyncio.wait_for(reader.read(), 5)
        assert (first + rest).count(b"action=OK\n\n") == 50

    run(scenario)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9998", Listener(host="127.0.0.1", port=9998)),
        ("inet:[::1]:9998", Listener(host="::1", port=9998)),
        ("unix:/run/relaypolicy.sock", Listener(path="/run/relaypolicy.sock")),
    ],
)
def test_parse_listener(text: str, expected: Listener) -> None:
    assert parse_listener(text) == expected


@pytest.mark.parametrize("bad", ["9998", "localhost:", ":25", "unix:relative", "1.2.3.4:99999"])
def test_parse_listener_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="listener"):
        parse_listener(bad)


def test_pipelined_requests_split_at_every_byte_boundary_are_answered_in_order() -> None:
    pipelined = request_bytes("u%aho.jp@local.test") + request_bytes("u@local.test")
    expected = b"action=554 5.7.1 Relay access denied\n\naction=OK\n\n"

    async def scenario() -> None:
        async with running() as (server, host, port):
            reader, writer = await asyncio.open_connection(host, port)
            for split in range(1, len(pipelined)):
                writer.write(pipelined[:split])
                await writer.drain()
                await asyncio.sleep(0)
                writer.write(pipelined[split:])
                answers = await asyncio.wait_for(reader.readexactly(len(expected)), 5)
                assert answers == expected, split
            writer.close()
            assert server.counters["requests"] == 2 * (len(pipelined) - 1)

    run(scenario)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_one_log_line_per_decision(log_format: str, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with running(ServerSettings(log_format=log_format)) as (_, host, port):
            reader, writer = await asyncio.open_connection(host, port)
            data = request_bytes("u@aho.jp").replace(b"\n\n", b"\nsender=a\x1bb@aho.jp\n\n")
            await ask(reader, writer, data)
            await ask(reader, writer, request_bytes("u@local.test", "192.0.2.5"))
            await ask(reader, writer, request_bytes("u@local.test", state="MAIL"))  # no line
            writer.close()

    with caplog.at_level(logging.INFO, logger="relaypolicy.decisions"):
        run(scenario)
    records = [r for r in caplog.records if r.name == "relaypolicy.decisions"]
    assert [r.levelno for r in records] == [logging.INFO, logging.INFO]
    # The record a plain decisions_log.info(...) in the server would make.
    assert {(r.funcName, Path(r.pathname).name) for r in records} == {("decide", "decisions.py")}
    lines = [r.getMessage() for r in records]
    if log_format == "text":
        assert lines == [
            "client=203.0.113.7 sender=<a\\x1bb@aho.jp> recipient=<u@aho.jp> verdict=REJECT "
            "policy=LocalDomainOnly reason=not-local",
            "client=192.0.2.5 sender=<> recipient=<u@local.test> verdict=ACCEPT "
            "policy=TrustedNetworks reason=trusted-network",
        ]
    else:
        expected = [
            {
                "client": "203.0.113.7",
                "sender": "a\x1bb@aho.jp",
                "recipient": "u@aho.jp",
                "verdict": "reject",
                "policy": "LocalDomainOnly",
                "reason": "not-local",
                "reply": "554 5.7.1 <u@aho.jp>: Relay access denied",
            },
            {
                "client": "192.0.2.5",
                "sender": "",
                "recipient": "u@local.test",
                "verdict": "accept",
                "policy": "TrustedNetworks",
                "reason": "trusted-network",
                "reply": "250 2.1.5 Ok",
            },
        ]
        assert lines == [json.dumps(e, ensure_ascii=False) for e in expected]


def test_idle_connection_between_requests_is_closed_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async with running(ServerSettings(idle_timeout=0.2)) as (server, host, port):
            reader, writer = await asyncio.open_connection(host, port)
            assert await ask(reader, writer, request_bytes("u@local.test")) == b"action=OK\n\n"
            assert await asyncio.wait_for(reader.read(), 5) == b""
            assert server.counters["protocol-errors"] == 0
            assert server.connections == 0

    with caplog.at_level(logging.INFO, logger="relaypolicy.serve"):
        run(scenario)
    assert not [r for r in caplog.records if r.name == "relaypolicy.serve"]


def test_a_busy_connection_is_not_idle() -> None:
    async def scenario() -> None:
        async with running(ServerSettings(idle_timeout=0.3)) as (_, host, port):
            reader, writer = await asyncio.open_connection(host, port)
            for _ in range(6):  # 0.6 s in all, never 0.3 s quiet
                await asyncio.sleep(0.1)
                assert await ask(reader, writer, request_bytes("u@local.test")) == (
                    b"action=OK\n\n"
                )
            writer.close()

    run(scenario)


def test_client_closing_mid_request_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with running() as (server, host, port):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request_bytes("u@local.test") + b"request=smtpd_access_policy\n")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b"action=OK\n\n"
            writer.close()
            for _ in range(100):
                if server.connections == 0:
                    break
                await asyncio.sleep(0.01)
            assert server.connections == 0

    with caplog.at_level(logging.WARNING, logger="relaypolicy.serve"):
        run(scenario)
    assert any(
        "connection closed in the middle of a request" in r.getMessage()
        and "127.0.0.1:" in r.getMessage()
        for r in caplog.records
    )


class StalledTransport(asyncio.Transport):
    """A peer that does not read: what is written stays buffered; closing waits for it."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self.protocol = protocol
        self.written = b""
        self.reading = True
        self.closing = False
        self.aborted = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:  # the buffer never drains: connection_lost never comes
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True
        asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)


def stalled_connection(server: PolicyServer) -> StalledTransport:
    protocol = server._protocol()
    transport = StalledTransport(protocol)
    protocol.connection_made(transport)
    return transport


def test_a_peer_that_does_not_read_is_not_read_and_not_timed_out() -> None:
    """Back-pressure: over the high-water mark the server stops reading until its answers
    are taken, and the idle clock does not run meanwhile (the stream version waited in
    drain() the same way); once they are taken, the clock runs again."""

    async def scenario() -> None:
        server = PolicyServer(POLICY, ServerSettings(idle_timeout=0.1))
        transport = stalled_connection(server)
        (protocol,) = server._connections
        protocol.data_received(request_bytes("u@local.test") * 3)
        assert transport.written == b"action=OK\n\n" * 3
        protocol.pause_writing()
        assert not transport.reading
        await asyncio.sleep(0.35)  # three idle timeouts
        assert not transport.closing
        protocol.resume_writing()
        assert transport.reading
        protocol.data_received(request_bytes("u@aho.jp"))
        assert transport.written.endswith(b"action=554 5.7.1 Relay access denied\n\n")
        await asyncio.sleep(0.35)
        assert transport.closing and not transport.aborted  # idle: closed quietly
        assert server.counters["protocol-errors"] == 0

    run(scenario)


def test_the_request_clock_stops_while_the_server_is_not_reading() -> None:
    """Back-pressure with a request half received: the server stopped reading, so the
    peer's request cannot complete; that time is not held against it."""

    async def scenario() -> None:
        server = PolicyServer(POLICY, ServerSettings(idle_timeout=30, request_timeout=0.2))
        transport = stalled_connection(server)
        (protocol,) = server._connections
        protocol.data_received(request_bytes("u@local.test") + b"request=smtpd_access_policy\n")
        protocol.pause_writing()
        await asyncio.sleep(0.5)  # real-time: over two request timeouts, not reading
        assert not transport.closing
        protocol.resume_writing()
        await asyncio.sleep(0)
        assert not transport.closing
        for _ in range(500):  # then the rest of its 0.2 s runs out
            if transport.closing:
                break
            await asyncio.sleep(0.01)  # real-time: poll, bounded
        assert transport.closing and server.counters["request-timeouts"] == 1

    run(scenario)


def test_close_cuts_off_a_peer_that_never_reads() -> None:
    async def scenario() -> None:
        server = PolicyServer(POLICY)
        transport = stalled_connection(server)
        (protocol,) = server._connections
        protocol.data_received(request_bytes("u@local.test"))
        protocol.pause_writing()
        started = asyncio.get_running_loop().time()
        await server.close(grace=0.2)
        assert 0.2 <= asyncio.get_running_loop().time() - started < 2
        assert transport.aborted
        assert server.connections == 0

    run(scenario)
