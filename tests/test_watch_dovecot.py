"""The login watcher end to end with the real Dovecot: POP3 and IMAP logins by poplib and
imaplib from loopback addresses, read from Dovecot's own log file into the IP table.

One private instance (``dovecot_instance.py``) serves the module; each test follows its
log from the end (``start_at_end``), so earlier tests' lines are not its business. Most
tests drive the follower and the watcher by hand (``poll()`` then ``feed()``, see
:class:`Pump`) and wait for a condition with a deadline; two run :meth:`Watcher.run`.
Clients log in from 127.0.0.11 (and 127.0.1.x, one address per login, where the test
counts logins); a wrong password comes from 127.0.0.12.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dovecot_instance import DovecotInstance, running_dovecot
from realservers import require_loopback_address

from relaypolicy.iptable.memory import ExpiringIpTable
from relaypolicy.watch.follow import LogFollower
from relaypolicy.watch.parsers import DovecotParser, DovecotSessions
from relaypolicy.watch.watcher import Watcher

pytestmark = pytest.mark.real

CLIENT = "127.0.0.11"
STRANGER = "127.0.0.12"
USERS = {"taro": "secret", "hanako": "secret2"}
DEADLINE = 15.0  # for a condition on a loaded machine; met in well under a second here


@pytest.fixture(scope="module")
def dovecot() -> Iterator[DovecotInstance]:
    for address in (CLIENT, STRANGER, "127.0.1.1"):
        require_loopback_address(address)
    with running_dovecot(users=USERS, protocols=("pop3", "imap")) as instance:
        yield instance


class Pump:
    """A follower and a watcher driven by hand: each step polls the log once and feeds
    what it read; the lines are kept, for tests that wait for a line to be read."""

    def __init__(self, dovecot: DovecotInstance, follower: LogFollower, watcher: Watcher) -> None:
        self.dovecot = dovecot
        self.follower = follower
        self.watcher = watcher
        self.lines: list[str] = []
        watcher.follower = follower

    def step(self) -> None:
        lines = self.follower.poll()
        self.watcher.feed(lines)
        if self.watcher.sync():  # as follow() does: the position moves once they are durable
            self.follower.save_state()
        self.lines += lines

    def until(self, condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.step()
            if condition():
                return
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{what}: not within {timeout}s; watcher {self.watcher.counters}, "
                    f"follower {self.follower.counters}\n--- log ---\n{self.dovecot.log_tail()}"
                )
            time.sleep(0.02)

    def saw(self, pattern: str) -> bool:
        compiled = re.compile(pattern)
        return any(compiled.search(line) for line in self.lines)


def pump_for(dovecot: DovecotInstance, table: ExpiringIpTable, state: Path | None = None) -> Pump:
    follower = LogFollower(dovecot.log_path, state_path=state, start_at_end=True)
    return Pump(dovecot, follower, Watcher(table, DovecotParser()))


def test_real_pop3_and_imap_logins_appear_and_a_wrong_password_does_not(
    dovecot: DovecotInstance,
) -> None:
    table = ExpiringIpTable(3600)
    pump = pump_for(dovecot, table)
    with pump.follower:
        pump.step()  # positioned at the end, before the clients come
        assert dovecot.pop3_login("taro", "wrong", source_address=STRANGER) is False
        assert dovecot.imap_login("hanako", "wrong", source_address=STRANGER) is False
        assert dovecot.pop3_login("taro", "secret", source_address=CLIENT) is True
        pump.until(lambda: CLIENT in table, "the POP3 login")
        entry = table.lookup(CLIENT)
        assert entry is not None and entry.user == "taro"
        assert dovecot.imap_login("hanako", "secret2", source_address=CLIENT) is True
        pump.until(lambda: pump.watcher.logins == 2, "the IMAP login")
        entry = table.lookup(CLIENT)
        assert entry is not None and entry.user == "hanako"  # the latest login's
        # Both failures have been read, and recorded nothing.
        stranger = re.escape(STRANGER)
        pump.until(
            lambda: (
                pump.saw(rf"pop3-login: Info: .*auth failed.*rip={stranger},")
                and pump.saw(rf"imap-login: Info: .*auth failed.*rip={stranger},")
            ),
            "the failed logins",
        )
    assert STRANGER not in table
    assert [entry.address for entry in table.entries()] == [CLIENT]
    assert pump.watcher.logins == 2
    assert pump.watcher.malformed == 0


class Clients(threading.Thread):
    """Logs in ``count`` times, alternately by POP3 and IMAP, each time from the next
    address of 127.0.1.0/24, while the test rotates the log. ``gate`` (held by the test)
    keeps a login from being in flight while it is held."""

    def __init__(self, dovecot: DovecotInstance, count: int) -> None:
        super().__init__(daemon=True)
        self.dovecot = dovecot
        self.addresses = [f"127.0.1.{n}" for n in range(1, count + 1)]
        self.done = 0
        self.gate = threading.Lock()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for n, address in enumerate(self.addresses):
                with self.gate:
                    login = self.dovecot.pop3_login if n % 2 else self.dovecot.imap_login
                    assert login("taro", "secret", source_address=address)
                    self.done += 1
        except BaseException as exc:  # reported by finish()
            self.error = exc

    def wait_done(self, count: int) -> None:
        deadline = time.monotonic() + DEADLINE
        while self.done < count and self.is_alive():
            assert time.monotonic() < deadline, f"{count} logins not done in {DEADLINE}s"
            time.sleep(0.01)
        self.check()

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        self.join(DEADLINE)
        self.check()
        assert self.done == len(self.addresses)


def test_rotation_by_rename_and_doveadm_log_reopen_while_logins_continue_loses_none(
    dovecot: DovecotInstance,
) -> None:
    table = ExpiringIpTable(3600)
    pump = pump_for(dovecot, table)
    rotated = dovecot.log_path.with_name(dovecot.log_path.name + ".renamed")
    clients = Clients(dovecot, 30)
    with pump.follower:
        pump.step()
        clients.start()
        clients.wait_done(10)
        pump.step()
        dovecot.log_path.rename(rotated)  # logrotate's "create" ...
        # ... and Dovecot goes on writing to the renamed file until it reopens its log.
        written = clients.done
        clients.wait_done(written + 2)
        pump.step()  # the path is missing for now: the follower keeps the old file
        dovecot.log_reopen()  # logrotate's postrotate script for Dovecot
        clients.finish()
        pump.until(
            lambda: all(address in table for address in clients.addresses),
            "every login of the 30",
        )
    assert pump.watcher.logins == 30
    assert pump.follower.rotations == 1
    logins_in = [path.read_text().count(": Info: Login: ") for path in (rotated, dovecot.log_path)]
    assert all(logins_in), f"logins went to both files: {logins_in}"


def test_rotation_by_copytruncate_while_logins_continue_loses_none(
    dovecot: DovecotInstance,
) -> None:
    """Logins go on before and after the copy; the copy and the truncation themselves
    happen while no login is in flight (``gate``) and after the follower has read every
    finished login. copytruncate cannot do better than that for any reader of the live
    file: a line written between the reader's last read and the truncation is only in the
    copy (logrotate's manual says as much). Rotate Dovecot's log by rename and
    ``doveadm log reopen`` instead (previous test)."""
    table = ExpiringIpTable(3600)
    pump = pump_for(dovecot, table)
    copy = dovecot.log_path.with_name(dovecot.log_path.name + ".copied")
    clients = Clients(dovecot, 30)
    with pump.follower:
        pump.step()
        clients.start()
        clients.wait_done(10)
        with clients.gate:
            written = clients.done
            pump.until(lambda: pump.watcher.logins == written, "the logins so far")
            shutil.copyfile(dovecot.log_path, copy)
            with dovecot.log_path.open("r+b") as log:
                log.truncate(0)
        clients.finish()
        pump.until(
            lambda: all(address in table for address in clients.addresses),
            "every login of the 30",
        )
    assert pump.watcher.logins == 30
    assert pump.follower.truncations == 1
    # Dovecot appends (O_APPEND): after the truncation its lines start at 0, no hole.
    assert b"\x00" not in dovecot.log_path.read_bytes()
    assert dovecot.log_path.read_text().count(": Info: Login: ") == 30 - written


def test_a_watcher_restarted_after_missing_lines_catches_up(
    dovecot: DovecotInstance, tmp_path: Path
) -> None:
    state = tmp_path / "follow.state"
    first = ExpiringIpTable(3600)
    pump = pump_for(dovecot, first, state)
    with pump.follower:
        pump.step()
        assert dovecot.pop3_login("taro", "secret", source_address=CLIENT)
        pump.until(lambda: CLIENT in first, "the login before the stop")
    # Stopped: three logins, and a rotation, which the restarted watcher must not miss.
    missed = ["127.0.0.13", "127.0.0.14", "127.0.0.15"]
    assert dovecot.pop3_login("taro", "secret", source_address=missed[0])
    dovecot.wait_for_log(rf"rip={re.escape(missed[0])},")
    dovecot.log_path.rename(dovecot.log_path.with_name(dovecot.log_path.name + ".down"))
    assert dovecot.imap_login("hanako", "secret2", source_address=missed[1])  # renamed file
    dovecot.log_reopen()
    assert dovecot.imap_login("taro", "secret", source_address=missed[2])  # the new file
    dovecot.wait_for_log(rf"rip={re.escape(missed[2])},")

    second = ExpiringIpTable(3600)
    pump = pump_for(dovecot, second, state)
    with pump.follower:
        pump.until(lambda: all(address in second for address in missed), "the missed logins")
    assert CLIENT not in second  # read once, before the stop: not again
    assert pump.watcher.logins == 3
    assert [(entry.address, entry.user) for entry in second.entries()] == [
        ("127.0.0.13", "taro"),
        ("127.0.0.14", "hanako"),
        ("127.0.0.15", "taro"),
    ]


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def test_a_login_appears_in_the_table_within_one_second(dovecot: DovecotInstance) -> None:
    """Measured from the moment the client's login returned, which is after Dovecot wrote
    (or queued) the line, so the second is not flattered."""
    table = ExpiringIpTable(3600)
    watcher = Watcher(table, DovecotParser())
    address = "127.0.0.16"

    async def scenario() -> float:
        stop = asyncio.Event()
        with LogFollower(dovecot.log_path, start_at_end=True) as follower:
            task = asyncio.create_task(watcher.run(follower, stop=stop))
            await wait_until(lambda: follower.position is not None, DEADLINE, "following")
            try:
                ok = await asyncio.to_thread(
                    dovecot.imap_login, "taro", "secret", source_address=address
                )
                assert ok
                return await wait_until(lambda: address in table, 1.0, "the login")
            finally:
                stop.set()
                await asyncio.wait_for(task, DEADLINE)

    assert asyncio.run(scenario()) < 1.0


def test_an_open_imap_session_keeps_its_address_until_it_logs_out(
    dovecot: DovecotInstance,
) -> None:
    """Sessions: with a 2.5 s ttl, an IMAP client that stays connected for twice that
    keeps its allowance; after its logout the address lasts the ttl, then expires.
    (Dovecot's log times have whole seconds, so "the ttl" here is 1.5 to 2.5 s.)"""
    ttl = 2.5
    address = "127.0.0.17"
    table = ExpiringIpTable(ttl)
    watcher = Watcher(table, DovecotParser(), sessions=DovecotSessions())

    async def scenario() -> None:
        stop = asyncio.Event()
        with LogFollower(dovecot.log_path, start_at_end=True) as follower:
            task = asyncio.create_task(
                watcher.run(follower, stop=stop, interval=0.05, sweep_interval=0.1)
            )
            await wait_until(lambda: follower.position is not None, DEADLINE, "following")
            client = await asyncio.to_thread(dovecot.imap_client, address)
            try:
                await asyncio.to_thread(client.login, "taro", "secret")
                await wait_until(lambda: address in table, DEADLINE, "the login")
                assert watcher.held() == {address: 1}
                # Connected, idle, for twice the ttl: never out of the table.
                until = time.monotonic() + 2 * ttl
                while time.monotonic() < until:
                    assert address in table, "expired while its session was open"
                    await asyncio.sleep(0.02)
                await asyncio.to_thread(client.logout)
                await wait_until(lambda: not watcher.held(), DEADLINE, "the logout")
                assert address in table  # the ttl starts now ...
                await wait_until(lambda: address not in table, ttl + 1.0, "expiry")
                assert watcher.counters["sessions"] == 0
            finally:
                stop.set()
                await asyncio.wait_for(task, DEADLINE)

    asyncio.run(scenario())
