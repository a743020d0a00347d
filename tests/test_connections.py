"""The connection lifecycle every asyncio server shares (relaypolicy.connections), checked
through each server's own protocol: back-pressure.

The Postfix server's own tests cover its back-pressure in detail; here the same contract
is checked for the milter server and Exim's socket too, which had none before (a peer
sending requests without reading the answers made them buffer answers without bound).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from relaypolicy import LocalDomainOnly
from relaypolicy.connections import TimedConnection
from relaypolicy.exim.server import EximServer
from relaypolicy.exim.settings import EximSettings
from relaypolicy.milter.server import MilterServer
from relaypolicy.milter.settings import MilterSettings
from relaypolicy.postfix.server import PolicyServer, ServerSettings

POLICY = LocalDomainOnly(["local.test"])
TIMEOUT = 0.1  # every clock, in each server's settings


class StalledTransport(asyncio.Transport):
    """A peer that does not read: what is written stays buffered; closing waits for it."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = True
        self.closing = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


def postfix() -> TimedConnection:
    settings = ServerSettings(idle_timeout=TIMEOUT, request_timeout=TIMEOUT)
    return PolicyServer(POLICY, settings)._protocol()


def milter() -> TimedConnection:
    settings = MilterSettings(idle_timeout=TIMEOUT, packet_timeout=TIMEOUT)
    return MilterServer(POLICY, settings)._protocol()


def exim() -> TimedConnection:
    return EximServer(POLICY, EximSettings(request_timeout=TIMEOUT))._protocol()


SERVERS = pytest.mark.parametrize(
    "make", [postfix, milter, exim], ids=["postfix", "milter", "exim"]
)


async def closed_within(transport: StalledTransport, seconds: float) -> bool:
    for _ in range(int(seconds / 0.01)):
        if transport.closing:
            return True
        await asyncio.sleep(0.01)  # real time: poll, bounded
    return transport.closing


@SERVERS
def test_a_peer_that_does_not_read_is_not_read_nor_timed_out(
    make: Callable[[], TimedConnection],
) -> None:
    """Over the high-water mark the connection stops reading and its clocks stop; once the
    peer takes its answers, reading resumes and the clocks run again."""

    async def scenario() -> None:
        protocol = make()
        transport = StalledTransport()
        protocol.connection_made(transport)
        protocol.pause_writing()
        assert not transport.reading
        await asyncio.sleep(4 * TIMEOUT)  # real time: past every deadline, not reading
        assert not transport.closing
        protocol.resume_writing()
        assert transport.reading
        assert await closed_within(transport, 20.0)  # then the idle clock runs out

    asyncio.run(scenario())
