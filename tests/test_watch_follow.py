"""The log follower (``tail -F`` done right), the watcher that records logins, and its loop.

Real files in ``tmp_path``; ``poll()`` is called directly, so no test sleeps for its logic
(the two asyncio tests wait for a condition, with a deadline).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaypolicy.iptable.memory import ExpiringIpTable
from relaypolicy.testing import FakeClock
from relaypolicy.watch import DovecotParser, LoginEvent
from relaypolicy.watch.export import Exporter
from relaypolicy.watch.follow import MAX_LINE, LogFollower, follow
from relaypolicy.watch.watcher import Watcher

WALL = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def append(path: Path, data: str | bytes) -> None:
    with open(path, "ab") as file:
        file.write(data.encode() if isinstance(data, str) else data)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "mail.log"
    path.write_bytes(b"")
    return path


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "follow.state"


@pytest.fixture
def follower(log: Path) -> Iterator[LogFollower]:
    with LogFollower(log) as f:
        yield f


# --- lines ----------------------------------------------------------------------------


def test_complete_lines_only_a_partial_last_line_waits(log: Path, follower: LogFollower) -> None:
    assert follower.poll() == []
    append(log, "one\ntwo\nthr")
    assert follower.poll() == ["one", "two"]
    assert follower.poll() == []
    append(log, "ee")
    assert follower.poll() == []
    append(log, "\n")
    assert follower.poll() == ["three"]
    assert follower.lines == 3


def test_empty_lines_are_lines(log: Path, follower: LogFollower) -> None:
    append(log, "\n\na\n")
    assert follower.poll() == ["", "", "a"]


def test_a_line_appended_is_seen_on_the_next_poll(log: Path, follower: LogFollower) -> None:
    follower.poll()
    for n in range(100):
        append(log, f"line {n}\n")
        assert follower.poll() == [f"line {n}"]


def test_throughput_a_large_batch(log: Path) -> None:
    lines = [f"Nov 28 09:03:{n % 60:02d} mail dovecot: pop3-login: n={n}" for n in range(50_000)]
    append(log, "".join(f"{line}\n" for line in lines))
    got: list[str] = []
    started = time.perf_counter()
    with LogFollower(log) as follower:
        got += follower.poll()
        while follower.behind:  # max_read bounds one poll
            got += follower.poll()
    assert got == lines
    assert time.perf_counter() - started < 2.0


def test_max_read_bounds_a_poll_and_behind_says_so(log: Path) -> None:
    append(log, "".join(f"line {n:04d}\n" for n in range(100)))  # 10 bytes a line
    with LogFollower(log, max_read=256) as follower:
        first = follower.poll()
        assert follower.behind
        assert 0 < len(first) < 100
        rest: list[str] = []
        while follower.behind:
            rest += follower.poll()
        assert first + rest == [f"line {n:04d}" for n in range(100)]


def test_overlong_line_is_dropped_and_counted(log: Path, follower: LogFollower) -> None:
    append(log, "before\n" + "x" * (MAX_LINE + 1) + "\nafter\n")
    assert follower.poll() == ["before", "after"]
    assert follower.overlong == 1


def test_overlong_line_arriving_in_pieces_is_counted_once(log: Path, tmp_path: Path) -> None:
    with LogFollower(log, max_line=100) as follower:
        append(log, "ok\n" + "y" * 60)
        assert follower.poll() == ["ok"]
        append(log, "y" * 60)  # now 120 bytes without a newline: over the cap
        assert follower.poll() == []
        assert follower.overlong == 1
        append(log, "y" * 500)
        assert follower.poll() == []
        append(log, "yyy\nnext\n")
        assert follower.poll() == ["next"]
        assert follower.overlong == 1


def test_a_line_of_exactly_max_line_bytes_is_kept(log: Path) -> None:
    with LogFollower(log, max_line=10) as follower:
        append(log, "0123456789\n01234567890\n")
        assert follower.poll() == ["0123456789"]
        assert follower.overlong == 1


def test_invalid_utf8_is_replaced_never_raised(log: Path, follower: LogFollower) -> None:
    append(log, b"user=<caf\xe9> rip=192.0.2.7\n\xff\xfe\n" + "ok \u00e9\n".encode())
    assert follower.poll() == ["user=<caf\ufffd> rip=192.0.2.7", "\ufffd\ufffd", "ok \u00e9"]
    assert follower.undecodable == 2


def test_a_multibyte_character_split_between_reads(log: Path, follower: LogFollower) -> None:
    data = "caf\u00e9\n".encode()
    append(log, data[:4])
    assert follower.poll() == []
    append(log, data[4:])
    assert follower.poll() == ["caf\u00e9"]
    assert follower.undecodable == 0


@settings(max_examples=40, deadline=None)
@given(
    lines=st.lists(st.text(st.characters(blacklist_characters="\n"), max_size=30), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=8),
)
def test_however_the_writes_are_cut_the_lines_come_out_whole(
    lines: list[str], cuts: list[int]
) -> None:
    data = "".join(f"{line}\n" for line in lines).encode("utf-8", "surrogatepass")
    bounds = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "log"
        path.write_bytes(b"")
        got: list[str] = []
        with LogFollower(path) as follower:
            for start, end in itertools.pairwise(bounds):
                append(path, data[start:end])
                got += follower.poll()
    expected = [line.encode("utf-8", "surrogatepass").decode("utf-8", "replace") for line in lines]
    assert got == expected


# --- rotation, truncation, disappearance ------------------------------------------------


def test_rename_and_create_reads_the_rest_of_the_old_file_first(log: Path, tmp_path: Path) -> None:
    clock = FakeClock()
    with LogFollower(log, rotation_grace=5.0, clock=clock) as follower:
        writer = open(log, "ab", buffering=0)  # syslogd's descriptor  # noqa: SIM115
        try:
            writer.write(b"a\n")
            assert follower.poll() == ["a"]
            writer.write(b"b\n")  # written, not yet read
            os.rename(log, tmp_path / "mail.log.1")
            writer.write(b"c\n")  # the writer has not reopened yet
            append(log, "d\n")  # the new file
            assert follower.poll() == ["b", "c", "d"]
            assert follower.rotations == 1
            writer.write(b"late\n")  # still before the SIGHUP: read within the grace
            append(log, "e\n")
            assert follower.poll() == ["late", "e"]
        finally:
            writer.close()
        clock.advance(5.0)
        assert follower.poll() == []  # the old file is closed after a quiet grace
        append(tmp_path / "mail.log.1", "after the grace\n")
        append(log, "f\n")
        assert follower.poll() == ["f"]


def test_rotation_drops_an_unfinished_line_of_the_old_file(log: Path, tmp_path: Path) -> None:
    clock = FakeClock()
    with LogFollower(log, rotation_grace=1.0, clock=clock) as follower:
        append(log, "a\nunfinis")
        assert follower.poll() == ["a"]
        os.rename(log, tmp_path / "mail.log.1")
        append(log, "new\n")
        assert follower.poll() == ["new"]
        clock.advance(1.0)
        assert follower.poll() == []
        assert follower.incomplete == 1


def test_copytruncate_restarts_at_zero(log: Path, tmp_path: Path, follower: LogFollower) -> None:
    append(log, "first line\nsecond line\n")
    assert follower.poll() == ["first line", "second line"]
    shutil.copyfile(log, tmp_path / "mail.log.1")
    os.truncate(log, 0)
    append(log, "new\n")  # shorter than the position: the classic daemon's blind spot
    assert follower.poll() == ["new"]
    assert follower.truncations == 1
    assert follower.rotations == 0


def test_copytruncate_refilled_past_our_position_between_polls(
    log: Path, follower: LogFollower
) -> None:
    append(log, "short\n")
    assert follower.poll() == ["short"]
    os.truncate(log, 0)
    append(log, "a much longer first line\nand another\n")  # already past offset 6
    assert follower.poll() == ["a much longer first line", "and another"]
    assert follower.truncations == 1


def test_copytruncate_with_a_partial_line_pending(log: Path, follower: LogFollower) -> None:
    append(log, "a\npart")
    assert follower.poll() == ["a"]
    os.truncate(log, 0)
    append(log, "b\n")
    assert follower.poll() == ["b"]
    assert follower.incomplete == 1


def test_the_file_vanishes_and_reappears(log: Path, follower: LogFollower) -> None:
    append(log, "a\n")
    assert follower.poll() == ["a"]
    log.unlink()
    assert follower.poll() == []
    assert follower.poll() == []
    append(log, "b\n")  # a new file at the path
    assert follower.poll() == ["b"]
    append(log, "c\n")
    assert follower.poll() == ["c"]


def test_a_file_missing_at_start_is_read_from_its_start(tmp_path: Path) -> None:
    path = tmp_path / "later.log"
    with LogFollower(path) as follower:
        assert follower.poll() == []
        append(path, "x\ny\n")
        assert follower.poll() == ["x", "y"]


def test_start_at_end_skips_history_and_a_torn_last_line(log: Path) -> None:
    append(log, "old\nhalf a li")
    with LogFollower(log, start_at_end=True) as follower:
        assert follower.poll() == []
        append(log, "ne\nnew\n")
        assert follower.poll() == ["new"]


# --- the state file ---------------------------------------------------------------------


def handled(follower: LogFollower) -> list[str]:
    """Poll, and tell the follower the lines are handled (what ``follow`` does after its
    ``sync``): the position is saved."""
    lines = follower.poll()
    follower.save_state()
    return lines


def test_restart_continues_where_it_stopped(log: Path, state: Path) -> None:
    append(log, "a\nb\n")
    with LogFollower(log, state_path=state) as follower:
        assert handled(follower) == ["a", "b"]
    saved = json.loads(state.read_text())
    assert saved["offset"] == 4
    assert saved["inode"] == log.stat().st_ino
    append(log, "c\n")  # written while stopped
    with LogFollower(log, state_path=state) as follower:
        assert handled(follower) == ["c"]


def test_the_position_is_saved_only_when_the_caller_says_the_lines_are_handled(
    log: Path, state: Path
) -> None:
    append(log, "a\n")
    crashed = LogFollower(log, state_path=state)
    assert crashed.poll() == ["a"]  # read, but never handled: the process died here
    crashed.close()  # closing does not save either
    assert not state.exists()
    with LogFollower(log, state_path=state) as follower:
        assert follower.poll() == ["a"]  # read again
        follower.save_state()
    append(log, "b\n")
    with LogFollower(log, state_path=state) as follower:
        assert handled(follower) == ["b"]


def test_state_offset_excludes_a_partial_line(log: Path, state: Path) -> None:
    append(log, "a\nhal")
    with LogFollower(log, state_path=state) as follower:
        assert handled(follower) == ["a"]
    append(log, "f\n")
    with LogFollower(log, state_path=state) as follower:
        assert handled(follower) == ["half"]


def test_restart_after_a_rotation_while_down(log: Path, state: Path, tmp_path: Path) -> None:
    append(log, "a\n")
    with LogFollower(log, state_path=state) as follower:
        assert handled(follower) == ["a"]
    append(log, "b (after the stop)\n")
    os.rename(log, tmp_path / "mail.log-20260101")  # dateext naming
    append(log, "c (new file)\n")
    with LogFollower(log, state_path=state) as follower:
        assert handled(follower) == ["b (after the stop)", "c (new file)"]
        assert follower.rotations == 1
    with LogFollower(log, state_path=state) as follower:  # and the state follows the new file
        append(log, "d\n")
        assert handled(follower) == ["d"]


def test_restart_after_rotation_while_down_with_the_log_still_missing(
    log: Path, state: Path, tmp_path: Path
) -> None:
    append(log, "a\n")
    with LogFollower(log, state_path=state) as follower:
        handled(follower)
    append(log, "b\n")
    os.rename(log, tmp_path / "mail.log.1")
    with LogFollower(log, state_path=state) as follower:
        assert handled(follower) == ["b"]
        append(log, "c\n")
        assert handled(follower) == ["c"]


def test_restart_after_rotation_when_the_old_file_is_gone(
    log: Path, state: Path, tmp_path: Path
) -> None:
    append(log, "a\n")
    with LogFollower(log, state_path=state) as follower:
        handled(follower)
    os.rename(log, tmp_path / "mail.log.1")
    (tmp_path / "mail.log.1").unlink()  # e.g. compressed: mail.log.1.gz
    append(log, "c\n")
    with LogFollower(log, state_path=state) as follower:
        assert handled(follower) == ["c"]


def test_restart_on_a_reused_inode_reads_from_the_start(log: Path, state: Path) -> None:
    """Same inode, same size, a line end at the offset: only the fingerprint tells."""
    append(log, "old1\n")
    with LogFollower(log, state_path=state) as follower:
        handled(follower)
    log.write_bytes(b"new1\n")  # rewritten in place: the inode stays
    with LogFollower(log, state_path=state) as follower:
        assert handled(follower) == ["new1"]


def test_restart_after_copytruncate_while_down(log: Path, state: Path) -> None:
    append(log, "a long line before\n")
    with LogFollower(log, state_path=state) as follower:
        handled(follower)
    os.truncate(log, 0)
    append(log, "x\n")
    with LogFollower(log, state_path=state) as follower:
        assert handled(follower) == ["x"]
        assert follower.truncations == 1


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[]",
        b'{"format": "relaypolicy-follow", "version": 99}',
        b'{"format": "relaypolicy-follow", "version": 1, "path": "/other.log",'
        b' "device": 1, "inode": 2, "offset": 3}',
        b'{"format": "relaypolicy-follow", "version": 1, "device": -1}',
    ],
)
def test_a_bad_state_file_is_ignored(log: Path, state: Path, content: bytes) -> None:
    state.write_bytes(content)
    append(log, "a\n")
    with LogFollower(log, state_path=state) as follower:
        assert handled(follower) == ["a"]
    assert json.loads(state.read_text())["offset"] == 2


def test_state_file_is_written_atomically_and_only_when_the_position_moves(
    log: Path, state: Path
) -> None:
    append(log, "a\n")
    with LogFollower(log, state_path=state) as follower:
        handled(follower)
        inode = state.stat().st_ino
        handled(follower)  # nothing new: not rewritten
        assert state.stat().st_ino == inode
        append(log, "b\n")
        handled(follower)
        assert state.stat().st_ino != inode  # a new file renamed over the old one
    assert [p.name for p in state.parent.iterdir() if p.name.endswith(".tmp")] == []


# --- the watcher ------------------------------------------------------------------------


FakeLogin = LoginEvent


class FakeParser:
    """``LOGIN <epoch> <ip> <user>``: the shape of the real parsers, none of their rules."""

    malformed = 0

    def parse(self, line: str) -> FakeLogin | None:
        parts = line.split(" ")
        if len(parts) != 4 or parts[0] != "LOGIN":
            return None
        return FakeLogin(float(parts[1]), parts[2], parts[3], "fake")


def login(when: float, address: str, user: str = "alice") -> str:
    return f"LOGIN {when} {address} {user}"


@pytest.fixture
def clocks() -> tuple[FakeClock, FakeClock]:
    return FakeClock(), FakeClock(WALL)


def make_watcher(clocks: tuple[FakeClock, FakeClock]) -> tuple[Watcher, ExpiringIpTable]:
    table = ExpiringIpTable(1800, clock=clocks[0])
    return Watcher(table, FakeParser(), wall_clock=clocks[1]), table


def test_a_fresh_login_gets_the_full_ttl(clocks: tuple[FakeClock, FakeClock]) -> None:
    watcher, table = make_watcher(clocks)
    assert watcher.feed([login(WALL, "192.0.2.7", "alice"), "unrelated line"]) == 1
    entry = table.lookup("192.0.2.7")
    assert entry is not None
    assert entry.expires_at == 1800.0
    assert entry.user == "alice"
    assert watcher.counters == {
        "lines": 2, "logins": 1, "stale": 0, "future": 0, "expired": 0, "malformed": 0
    }  # fmt: skip


def test_an_old_login_gets_only_its_remaining_time(clocks: tuple[FakeClock, FakeClock]) -> None:
    watcher, table = make_watcher(clocks)
    watcher.feed([login(WALL - 600, "192.0.2.7"), login(WALL - 1799.5, "2001:db8::7")])
    entry = table.lookup("192.0.2.7")
    assert entry is not None and entry.expires_at == 1200.0
    entry = table.lookup("2001:db8::7")
    assert entry is not None and entry.expires_at == 0.5


def test_an_expired_login_gets_none(clocks: tuple[FakeClock, FakeClock]) -> None:
    watcher, table = make_watcher(clocks)
    watcher.feed([login(WALL - 1800, "192.0.2.7"), login(WALL - 86400, "192.0.2.8")])
    assert len(table) == 0
    assert watcher.stale == 2
    assert watcher.logins == 0


def test_a_login_in_the_future_is_taken_as_now(clocks: tuple[FakeClock, FakeClock]) -> None:
    watcher, table = make_watcher(clocks)
    watcher.feed([login(WALL + 30, "192.0.2.7"), login(WALL + 365 * 86400, "192.0.2.8")])
    for address in ("192.0.2.7", "192.0.2.8"):
        entry = table.lookup(address)
        assert entry is not None and entry.expires_at == 1800.0  # never beyond the ttl
    assert watcher.future == 1  # only the one beyond the skew is counted


def test_an_address_the_table_refuses_is_malformed(clocks: tuple[FakeClock, FakeClock]) -> None:
    watcher, table = make_watcher(clocks)
    assert watcher.feed([login(WALL, "not-an-ip"), login(float("nan"), "192.0.2.7")]) == 0
    assert watcher.malformed == 2
    assert len(table) == 0


def test_watcher_needs_a_ttl() -> None:
    class NoTtl:
        def record(
            self, address: str, *, user: str | None = None, ttl: float | None = None
        ) -> None:
            pass

        def expire(self) -> int:
            return 0

        def entries(self) -> list[object]:
            return []

    with pytest.raises(TypeError, match="ttl"):
        Watcher(NoTtl(), FakeParser())  # type: ignore[arg-type]
    assert Watcher(NoTtl(), FakeParser(), ttl=60).ttl == 60.0  # type: ignore[arg-type]


def test_follower_and_watcher_together(log: Path, clocks: tuple[FakeClock, FakeClock]) -> None:
    watcher, table = make_watcher(clocks)
    with LogFollower(log) as follower:
        watcher.follower = follower
        append(log, login(WALL - 10, "192.0.2.7") + "\n" + "z" * (MAX_LINE + 5) + "\n")
        watcher.feed(follower.poll())
    assert "192.0.2.7" in table
    assert watcher.malformed == 1  # the overlong line


# --- the asyncio loop -------------------------------------------------------------------


async def wait_until(condition: object, timeout: float = 3.0) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout``."""
    assert callable(condition)
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


def test_a_login_appears_in_the_table_within_one_second(log: Path) -> None:
    table = ExpiringIpTable(1800)
    watcher = Watcher(table, FakeParser())

    async def scenario() -> float:
        stop = asyncio.Event()
        with LogFollower(log) as follower:
            task = asyncio.create_task(watcher.run(follower, stop=stop))
            await asyncio.sleep(0)
            append(log, login(time.time(), "192.0.2.9") + "\n")
            seconds = await wait_until(lambda: "192.0.2.9" in table)
            stop.set()
            await asyncio.wait_for(task, 5)
        return seconds

    assert asyncio.run(scenario()) < 1.0


def test_entries_expire_on_a_quiet_log(
    log: Path, tmp_path: Path, clocks: tuple[FakeClock, FakeClock]
) -> None:
    """The classic daemon swept only when a line arrived: here the sweep is on a timer."""
    watcher, table = make_watcher(clocks)
    exported = tmp_path / "relay.plain"
    exporter = Exporter(exported, "plain", clock=clocks[0])
    append(log, login(WALL, "192.0.2.7") + "\n")

    async def scenario() -> None:
        stop = asyncio.Event()
        with LogFollower(log) as follower:
            task = asyncio.create_task(
                watcher.run(
                    follower,
                    stop=stop,
                    interval=0.005,
                    sweep_interval=0.5,
                    exporters=[exporter],
                    clock=clocks[0],
                )
            )
            await wait_until(lambda: exported.exists() and exported.read_text() == "192.0.2.7\n")
            clocks[0].advance(1800.0)  # no new line from here on
            await wait_until(lambda: watcher.expired == 1)
            await wait_until(lambda: exported.read_text() == "")
            assert watcher.lines == 1
            stop.set()
            await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert len(table) == 0


def test_stopping_the_watcher_clears_the_exported_map(
    log: Path, tmp_path: Path, clocks: tuple[FakeClock, FakeClock]
) -> None:
    watcher, _ = make_watcher(clocks)
    exported = tmp_path / "relay.plain"
    exporter = Exporter(exported, "plain", clock=clocks[0])
    append(log, login(WALL, "192.0.2.7") + "\n")

    async def scenario() -> None:
        stop = asyncio.Event()
        with LogFollower(log) as follower:
            task = asyncio.create_task(
                watcher.run(follower, stop=stop, interval=0.005, exporters=[exporter])
            )
            await wait_until(lambda: exported.exists() and exported.read_text() != "")
            stop.set()
            await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert exported.read_text() == ""  # fail closed: nothing would expire it while stopped


def test_follow_drains_a_backlog_without_waiting(log: Path, state: Path) -> None:
    append(log, "".join(f"line {n:04d}\n" for n in range(1000)))
    seen: list[str] = []

    async def scenario() -> None:
        stop = asyncio.Event()
        with LogFollower(log, state_path=state, max_read=512) as follower:

            def handle(lines: list[str]) -> None:
                seen.extend(lines)
                if len(seen) == 1000:
                    stop.set()

            # An hour's interval: only "poll again while behind" can read it all.
            await asyncio.wait_for(follow(follower, handle, stop=stop, interval=3600), 5)

    asyncio.run(scenario())
    assert seen == [f"line {n:04d}" for n in range(1000)]
    assert json.loads(state.read_text())["offset"] == 10_000


def test_follow_saves_the_position_only_after_sync_says_the_lines_are_durable(
    log: Path, state: Path
) -> None:
    """The order a crash cannot break: lines read, handled, made durable, position saved."""
    append(log, "a\nb\n")
    order: list[str] = []
    durable = False

    def sync() -> bool:
        order.append("sync")
        return durable

    async def run_until_read(follower: LogFollower) -> None:
        stop = asyncio.Event()

        def handle(lines: list[str]) -> None:
            order.extend(lines)

        def tick() -> None:
            if order:
                stop.set()

        await asyncio.wait_for(
            follow(follower, handle, stop=stop, interval=0.01, on_tick=tick, sync=sync), 30
        )

    with LogFollower(log, state_path=state) as follower:
        asyncio.run(run_until_read(follower))
    assert order == ["a", "b", "sync"]
    assert not state.exists()  # the table could not make them durable: not saved
    order.clear()
    durable = True
    with LogFollower(log, state_path=state) as follower:  # so a restart reads them again
        asyncio.run(run_until_read(follower))
    assert order == ["a", "b", "sync"]
    assert json.loads(state.read_text())["offset"] == 4


def test_a_watcher_sync_that_fails_keeps_the_position(clocks: tuple[FakeClock, FakeClock]) -> None:
    class Failing(ExpiringIpTable):
        def sync(self) -> bool:
            raise OSError(28, "No space left on device")

    watcher = Watcher(Failing(600, clock=clocks[0]), FakeParser(), wall_clock=clocks[1])
    assert watcher.sync() is False
    assert Watcher(ExpiringIpTable(600), FakeParser()).sync() is True  # memory only


def test_stale_temporary_state_files_are_removed(log: Path, state: Path) -> None:
    stale = state.parent / f".{state.name}.abcd1234.tmp"
    stale.write_text("left by a kill -9")
    LogFollower(log, state_path=state).close()
    assert not stale.exists()


class _LineByLine:
    """A parser that only has ``parse``: the watcher then reads line by line."""

    def __init__(self, parser: DovecotParser) -> None:
        self.inner = parser

    def parse(self, line: str) -> LoginEvent | None:
        return self.inner.parse(line)

    @property
    def malformed(self) -> int:
        return self.inner.malformed


def test_block_and_line_by_line_feeding_record_the_same() -> None:
    from zoneinfo import ZoneInfo

    from relaypolicy.watch import LineFraming

    wall = FakeClock(1_795_856_700.0)  # Nov 28 09:05:00 UTC
    stamp = "Nov 28 09:0{}:28"
    lines = [
        f"{stamp.format(4)} pop3-login: Info: Login: user=<taro>, method=PLAIN, "
        "rip=203.0.113.7, lip=192.0.2.1, mpid=1, session=<a>",
        f"{stamp.format(4)} mail dovecot: imap-login: Login: user=<x>, method=plain, "
        "rip=6.6.6.6, lip=1.2.3.4, mpid=1, session=<abc>, method=PLAIN, rip=203.0.113.8, "
        "lip=192.0.2.1, mpid=2, session=<b>",
        f"{stamp.format(4)} mail postfix/smtpd[1]: NOQUEUE: reject: from=<pop3-login: Login: "
        "user=<x>, method=PLAIN, rip=6.6.6.7, lip=1.1.1.1>",
        f"{stamp.format(4)} pop3-login: Info: Login: user=<y>, method=PLAIN, rip=6.6.6.8, "
        "rip=203.0.113.9, lip=192.0.2.1, session=<c>",
        f"{stamp.format(3)} pop3-login: Info: Disconnected (auth failed, 1 attempts in 2 "
        "secs): user=<taro>, method=PLAIN, rip=203.0.113.10, lip=192.0.2.1, session=<d>",
        "Oct 01 00:00:00 pop3-login: Info: Login: user=<old>, method=PLAIN, "
        "rip=203.0.113.11, lip=192.0.2.1, mpid=3, session=<e>",
        "",
    ]
    results = []
    for wrap in (False, True):
        parser = DovecotParser(framing=LineFraming(clock=wall, tz=ZoneInfo("UTC")))
        table = ExpiringIpTable(1800, clock=FakeClock())
        chosen: DovecotParser | _LineByLine = _LineByLine(parser) if wrap else parser
        watcher = Watcher(table, chosen, wall_clock=wall)
        recorded = watcher.feed(lines)
        entries = sorted((e.address, e.user, e.expires_at) for e in table.entries())
        results.append((recorded, entries, watcher.counters))
    assert results[0] == results[1]
    recorded, entries, counters = results[0]
    assert [address for address, _, _ in entries] == ["203.0.113.7", "203.0.113.8"]
    assert counters["lines"] == 7 and counters["stale"] == 1 and counters["malformed"] == 1
