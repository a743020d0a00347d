"""The asyncio milter server over real loopback sockets: answers, limits, bad peers."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import stat
import struct
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ParamSpec

import pytest

from relaypolicy import LocalDomainOnly, OpenRelay
from relaypolicy.listeners import Listener
from relaypolicy.milter.client import connect_packet, macro_packet, optneg
from relaypolicy.milter.protocol import encode_packet
from relaypolicy.milter.server import MilterServer
from relaypolicy.milter.settings import MilterSettings
from relaypolicy.policies import Policy

WAIT = 20.0  # generous bound for anything a real socket must do

P = ParamSpec("P")


def in_loop(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test in a fresh event loop (fixtures pass through)."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def strings(command: bytes, *args: str) -> bytes:
    return encode_packet(command, b"".join(a.encode() + b"\0" for a in args))


def transaction(client: str, recipient: str) -> bytes:
    return (
        macro_packet(b"C", {"j": "mx"})
        + connect_packet(client)
        + strings(b"H", "helo.example")
        + strings(b"M", "<s@example.org>")
        + strings(b"R", f"<{recipient}>")
    )


@asynccontextmanager
async def running(
    policy: Policy | None = None,
    listeners: list[Listener] | None = None,
    **settings: object,
) -> AsyncIterator[tuple[MilterServer, list[str]]]:
    server = MilterServer(
        policy or LocalDomainOnly(["local.test"]),
        MilterSettings(**settings),  # type: ignore[arg-type]
    )
    bound = await server.start(listeners or [Listener(host="127.0.0.1", port=0)])
    try:
        yield server, bound
    finally:
        await server.close()


def port_of(bound: list[str]) -> int:
    return int(bound[0].rsplit(":", 1)[1])


async def read_packet(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    (length,) = struct.unpack(">I", await asyncio.wait_for(reader.readexactly(4), WAIT))
    packet = await asyncio.wait_for(reader.readexactly(length), WAIT)
    return packet[:1], packet[1:]


async def negotiate(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(optneg())
    command, _ = await read_packet(reader)
    assert command == b"O"
    return reader, writer


async def ask(port: int, client: str, recipient: str) -> tuple[bytes, bytes]:
    reader, writer = await negotiate(port)
    try:
        writer.write(transaction(client, recipient))
        return await read_packet(reader)
    finally:
        writer.close()


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server has closed the connection (EOF), within the bound."""
    data = await asyncio.wait_for(reader.read(), WAIT)
    return data == b""


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.01)


@in_loop
async def test_local_recipient_continues_foreign_is_refused() -> None:
    async with running() as (server, bound):
        port = port_of(bound)
        assert await ask(port, "192.0.2.7", "user@local.test") == (b"c", b"")
        command, data = await ask(port, "192.0.2.7", "user@aho.jp")
        assert command == b"y"
        assert data == b"554 5.7.1 <user@aho.jp>: Relay access denied\0"
        stats = server.stats()
        assert stats["recipients"] == 2
        assert stats["verdict:accept"] == 1
        assert stats["verdict:reject"] == 1


@in_loop
async def test_many_recipients_on_one_connection() -> None:
    async with running() as (_, bound):
        reader, writer = await negotiate(port_of(bound))
        writer.write(transaction("192.0.2.7", "a@local.test"))
        assert (await read_packet(reader))[0] == b"c"
        for recipient, expected in (("b@aho.jp", b"y"), ("c@local.test", b"c")):
            writer.write(strings(b"R", f"<{recipient}>"))
            assert (await read_packet(reader))[0] == expected
        writer.write(encode_packet(b"Q"))
        assert await closed_by_server(reader)
        writer.close()


@pytest.mark.parametrize(
    ("garbage", "logged"),
    [
        (encode_packet(b"Z"), "unknown command 'Z'"),
        (struct.pack(">I", 10_000_000), "packet of 10000000 bytes is larger than the limit"),
        (b"\0\0\0\0", "empty packet"),
        (encode_packet(b"C", b"no-nul"), "CONNECT without a NUL"),
    ],
)
@in_loop
async def test_bad_input_closes_that_connection_only(
    garbage: bytes, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running() as (server, bound):
        port = port_of(bound)
        good_reader, good_writer = await negotiate(port)
        bad_reader, bad_writer = await negotiate(port)
        with caplog.at_level(logging.WARNING, logger="relaypolicy.milter"):
            bad_writer.write(garbage)
            assert await closed_by_server(bad_reader)
        assert f"milter protocol error, closing the connection: {logged}" in caplog.text
        assert server.counters["protocol-errors"] == 1
        # The other connection, opened before, still answers.
        good_writer.write(transaction("192.0.2.7", "user@aho.jp"))
        assert (await read_packet(good_reader))[0] == b"y"
        good_writer.close()
        bad_writer.close()


@in_loop
async def test_a_connection_that_sends_nothing_is_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running(idle_timeout=0.2) as (server, bound):
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(bound))
        with caplog.at_level(logging.WARNING, logger="relaypolicy.milter"):
            assert await closed_by_server(reader)
        assert "nothing received for" in caplog.text
        assert server.counters["idle-timeouts"] == 1
        writer.close()


@in_loop
async def test_a_packet_that_never_completes_is_closed(caplog: pytest.LogCaptureFixture) -> None:
    async with running(packet_timeout=0.2) as (server, bound):
        reader, writer = await negotiate(port_of(bound))
        with caplog.at_level(logging.WARNING, logger="relaypolicy.milter"):
            writer.write(optneg()[:7])
            assert await closed_by_server(reader)
        assert "packet not complete" in caplog.text
        assert server.counters["packet-timeouts"] == 1
        writer.close()


@in_loop
async def test_connections_over_the_limit_are_closed(caplog: pytest.LogCaptureFixture) -> None:
    async with running(max_connections=1) as (server, bound):
        port = port_of(bound)
        first_reader, first_writer = await negotiate(port)
        with caplog.at_level(logging.WARNING, logger="relaypolicy.milter"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await closed_by_server(reader)
        assert "1 connections open; closing the new one" in caplog.text
        assert server.counters["connections-refused"] == 1
        first_writer.write(transaction("192.0.2.7", "user@local.test"))
        assert (await read_packet(first_reader))[0] == b"c"
        first_writer.close()
        writer.close()


@in_loop
async def test_no_client_address_is_a_temporary_refusal_even_for_an_open_policy() -> None:
    async with running(OpenRelay()) as (server, bound):
        reader, writer = await negotiate(port_of(bound))
        writer.write(connect_packet("") + strings(b"R", "<user@aho.jp>"))
        assert await read_packet(reader) == (
            b"y",
            b"451 4.3.5 Cannot determine the client address\0",
        )
        writer.close()
        assert server.counters["no-client-address"] == 1


@in_loop
async def test_a_new_policy_applies_to_the_next_recipient() -> None:
    async with running() as (server, bound):
        reader, writer = await negotiate(port_of(bound))
        writer.write(transaction("192.0.2.7", "user@aho.jp"))
        assert (await read_packet(reader))[0] == b"y"
        server.policy = OpenRelay()  # what a reload does
        writer.write(strings(b"R", "<user@aho.jp>"))
        assert (await read_packet(reader))[0] == b"c"
        writer.close()


@in_loop
async def test_unix_socket_with_mode_removed_at_close(tmp_path: Path) -> None:
    path = tmp_path / "milter.sock"
    path.write_bytes(b"")
    server = MilterServer(LocalDomainOnly(["local.test"]))
    with pytest.raises(OSError, match="exists and is not a socket"):
        await server.start([Listener(path=str(path), mode=0o660)])
    await server.close()
    path.unlink()
    async with running(listeners=[Listener(path=str(path), mode=0o660)]) as (_, bound):
        assert bound == [f"unix:{path}"]
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(optneg())
        await read_packet(reader)
        # A unix-socket peer has no address of its own: the MTA's CONNECT says who.
        writer.write(transaction("192.0.2.7", "user@local.test"))
        assert (await read_packet(reader))[0] == b"c"
        writer.close()
    assert not path.exists()


@in_loop
async def test_close_closes_open_connections() -> None:
    server = MilterServer(LocalDomainOnly(["local.test"]))
    bound = await server.start([Listener(host="127.0.0.1", port=0)])
    reader, writer = await negotiate(port_of(bound))
    await until(lambda: server.connections == 1)
    await server.close()
    assert await closed_by_server(reader)
    writer.close()
