"""The Exim socket server (relaypolicy.daemon.exim) over real loopback and unix sockets,
and the ``relaypolicy exim`` command's exits and reload.

Every way a request can go wrong ends in a ``defer`` line, never ``accept``: a protocol
error, a line cut by the end of the stream, no client address, a client address that is
not an IP address, a policy that raises, a table that cannot be read, a client too slow,
too many connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from realservers import free_port, wait_for_port, wait_until

from relaypolicy import FirstMatch, LocalDomainOnly, TrustedNetworks
from relaypolicy.exim.codec import encode_request
from relaypolicy.exim.server import EximServer
from relaypolicy.exim.settings import EximSettings
from relaypolicy.model import Decision, Request, lookup_failure
from relaypolicy.policies import Policy
from relaypolicy.postfix.server import Listener

POLICY = FirstMatch(TrustedNetworks(["192.0.2.0/24"]), LocalDomainOnly(["local.test"]))
CANNOT = b"defer 451 4.3.0 Policy service cannot evaluate this request\n"
NO_CLIENT = b"defer 451 4.3.5 Cannot determine the client address\n"


def line(recipient: str, client: str = "203.0.113.7") -> bytes:
    return encode_request({"client_address": client, "rcpt": f"<{recipient}>"})


@asynccontextmanager
async def running(
    policy: Policy = POLICY,
    settings: EximSettings | None = None,
    listeners: list[Listener] | None = None,
) -> AsyncIterator[tuple[EximServer, int]]:
    server = EximServer(policy, settings or EximSettings())
    bound = await server.start(listeners or [Listener(host="127.0.0.1", port=0)])
    port = int(bound[0].rsplit(":", 1)[1]) if bound[0].startswith("inet") else 0
    try:
        yield server, port
    finally:
        await server.close(grace=2)


async def readsocket(port: int, data: bytes, *, half_close: bool = True) -> bytes:
    """What Exim's readsocket does: connect, write, half-close, read to the end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    with contextlib.suppress(OSError):  # a server that answered at once may have closed
        writer.write(data)
        if half_close:
            writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


def test_answers_with_the_four_forms() -> None:
    async def scenario() -> None:
        async with running() as (server, port):
            assert await readsocket(port, line("u@local.test")) == b"accept\n"
            assert await readsocket(port, line("u@aho.jp", "192.0.2.9")) == b"accept\n"
            assert await readsocket(port, line("u@aho.jp")) == (
                b"deny 554 5.7.1 <u@aho.jp>: Relay access denied\n"
            )
            stats = server.stats()
            assert stats["requests"] == 3
            assert stats["verdict:accept"] == 2 and stats["verdict:reject"] == 1

    asyncio.run(scenario())


def test_several_lines_on_one_connection_are_answered_in_order() -> None:
    async def scenario() -> None:
        async with running() as (_, port):
            answer = await readsocket(port, line("u@local.test") + line("u@aho.jp"))
            assert answer == b"accept\ndeny 554 5.7.1 <u@aho.jp>: Relay access denied\n"

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("data", "answer"),
    [
        (b"garbage\n", CANNOT),
        (b"v1 rcpt=" + b"x" * 10, CANNOT),  # cut by the end of the stream
        (b"v1 rcpt=PGFAYi5jPg==", CANNOT),  # no LF before the end
        (b"v1 client_address=MTI3LjAuMC4x rcpt=!!\n", CANNOT),
        (encode_request({"rcpt": "<u@local.test>"}), NO_CLIENT),
        (line("u@local.test", client="unknown"), CANNOT),
        (line("u@local.test") + b"garbage\n", b"accept\n" + CANNOT),
    ],
    ids=["garbage", "cut", "no-lf", "bad-base64", "no-client", "client-not-ip", "then-garbage"],
)  # fmt: skip
def test_what_cannot_be_judged_is_deferred(data: bytes, answer: bytes) -> None:
    async def scenario() -> None:
        async with running() as (server, port):
            assert await readsocket(port, data) == answer
            assert server.stats().get("verdict:accept", 0) == answer.count(b"accept")

    asyncio.run(scenario())


class _Raises:
    name = "Raises"

    def check(self, request: Request) -> Decision:
        raise RuntimeError("boom")


class _TableDown:
    name = "TableDown"

    def check(self, request: Request) -> Decision:
        return lookup_failure("pop_before_smtp", "table-unreadable")


@pytest.mark.parametrize(
    ("policy", "answer"),
    [
        (_Raises(), b"defer 451 4.3.0 Policy service error\n"),
        (_TableDown(), b"defer 451 4.3.0 Temporary lookup failure\n"),
    ],
    ids=["policy-raises", "table-unreadable"],
)
def test_a_policy_that_fails_is_a_deferral(policy: Policy, answer: bytes) -> None:
    async def scenario() -> None:
        async with running(policy) as (_, port):
            assert await readsocket(port, line("u@local.test", "192.0.2.9")) == answer

    asyncio.run(scenario())


def test_a_slow_client_gets_a_deferral_and_is_closed() -> None:
    async def scenario() -> None:
        async with running(settings=EximSettings(request_timeout=0.2)) as (server, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"v1 rcpt=")
            assert await asyncio.wait_for(reader.read(), 10) == CANNOT
            writer.close()
            assert server.stats()["request-timeouts"] == 1

    asyncio.run(scenario())


def test_beyond_max_connections_new_ones_are_deferred() -> None:
    async def scenario() -> None:
        async with running(settings=EximSettings(max_connections=1)) as (server, port):
            _, held = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.sleep(0)  # real-time: let the server take the first connection
            while server.stats()["connections-open"] != 1:
                await asyncio.sleep(0.01)
            assert await readsocket(port, line("u@local.test")) == CANNOT
            held.close()

    asyncio.run(scenario())


def test_a_unix_socket_with_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "exim.sock"

    async def scenario() -> None:
        listener = Listener(path=str(path), mode=0o660)
        async with running(listeners=[listener]):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(line("u@local.test"))
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 10) == b"accept\n"
            writer.close()
        assert not path.exists()

    asyncio.run(scenario())


# --- the command ------------------------------------------------------------------------------

POLICY_TOML = """
[domains]
local = ["local.test"]
[chain]
steps = ["local_domains"]
"""


def relaypolicy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaypolicy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_exits(tmp_path: Path) -> None:
    missing = relaypolicy("exim", "--config", str(tmp_path / "missing.toml"))
    assert missing.returncode == 66, missing.stderr
    no_section = tmp_path / "no-exim.toml"
    no_section.write_text(POLICY_TOML)
    done = relaypolicy("exim", "--config", str(no_section))
    assert done.returncode == 78 and "[exim]" in done.stderr, done.stderr
    bad_key = tmp_path / "bad.toml"
    bad_key.write_text(POLICY_TOML + '[exim]\nlisten = ["nowhere"]\n')
    done = relaypolicy("exim", "--config", str(bad_key))
    assert done.returncode == 78 and "exim.listen[0]" in done.stderr, done.stderr
    good = tmp_path / "good.toml"
    good.write_text(POLICY_TOML + '[exim]\nlisten = ["127.0.0.1:1"]\n')
    done = relaypolicy("exim", "--config", str(good), "--listen", "nowhere")
    assert done.returncode == 64, done.stderr
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = relaypolicy("exim", "--config", str(good), "--listen", f"127.0.0.1:{port}")
    assert done.returncode == 71 and "cannot listen on" in done.stderr, done.stderr


def test_reload_swaps_the_policy(tmp_path: Path) -> None:
    port = free_port()
    control = tmp_path / "control.sock"
    config = tmp_path / "relaypolicy.toml"
    section = f'[exim]\nlisten = ["127.0.0.1:{port}"]\ncontrol_socket = "{control}"\n'
    config.write_text(POLICY_TOML + section)
    log = (tmp_path / "log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "relaypolicy", "exim", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=20)
        assert asyncio.run(readsocket(port, line("u@aho.jp"))).startswith(b"deny 554")
        config.write_text(POLICY_TOML.replace('"local.test"', '"local.test", "aho.jp"') + section)
        done = relaypolicy("ctl", "--socket", str(control), "reload")
        assert done.returncode == 0, done.stdout + done.stderr
        wait_until(lambda: asyncio.run(readsocket(port, line("u@aho.jp"))) == b"accept\n", "reload")
        stats = relaypolicy("ctl", "--socket", str(control), "stats")
        assert '"reloads": 1' in stats.stdout
    finally:
        process.terminate()
        assert process.wait(timeout=20) == 0
        log.close()
