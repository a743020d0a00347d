"""The table's state on disk: loading bad snapshots, the journal, checkpoints, start-up.

Every bad file kind a loader meets in the field, each refused with a message that names
the file (or, for a far-future expiry, capped), and the journal that makes each change
durable before it is acknowledged. Fake clocks throughout; no test sleeps.
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaypolicy.iptable import ExpiringIpTable, TableFileError
from relaypolicy.iptable.durable import DurableTable
from relaypolicy.iptable.journal import read_journal
from relaypolicy.iptable.persist import read_entries
from relaypolicy.testing import FakeClock

WALL = 1_767_225_600.0  # 2026-01-01T00:00:00Z
TTL = 1800.0


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "table.json"


def v1(*entries: object) -> str:
    """A version 1 file (before the checksum), as an older release wrote it."""
    return json.dumps(
        {"format": "relaypolicy-iptable", "version": 1, "ipv6_prefix": 128, "entries": entries}
    )


def load(path: Path, *, wall: float = WALL, ttl: float = TTL) -> ExpiringIpTable:
    return ExpiringIpTable.load(path, ttl, clock=FakeClock(100.0), wall_clock=FakeClock(wall))


def addresses(table: ExpiringIpTable | DurableTable) -> list[str]:
    return sorted(entry.address for entry in table.entries())


# --- loading the snapshot -------------------------------------------------------------


def test_a_version_1_file_still_loads(path: Path) -> None:
    path.write_text(v1(["203.0.113.7", WALL + 60, "alice"], ["2001:db8::1", WALL + 90, None]))
    table = load(path)
    assert [(e.address, e.expires_at, e.user) for e in table.entries()] == [
        ("203.0.113.7", 160.0, "alice"),
        ("2001:db8::1", 190.0, None),
    ]


@pytest.mark.parametrize("expires", [1e300, WALL + 10 * 365 * 86400])
def test_an_expiry_beyond_the_ttl_is_capped_at_now_plus_ttl(path: Path, expires: float) -> None:
    path.write_text(v1(["203.0.113.7", expires, None], ["203.0.113.8", WALL + 60, None]))
    table = load(path)
    entries = {e.address: e.expires_at for e in table.entries()}
    assert entries == {"203.0.113.7": 100.0 + TTL, "203.0.113.8": 160.0}


def test_deeply_nested_json_is_refused_not_a_crash(path: Path) -> None:
    path.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(TableFileError, match="nested too deeply") as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_a_fifo_at_the_path_is_refused_without_blocking(path: Path) -> None:
    os.mkfifo(path)
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            load(path)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)
        else:
            outcome.append(None)

    reader = threading.Thread(target=attempt, daemon=True)
    reader.start()
    reader.join(timeout=30)  # a blocking open would never return: no writer ever comes
    assert not reader.is_alive(), "loading a FIFO blocked"
    assert isinstance(outcome[0], TableFileError)
    assert "not a regular file (a FIFO)" in str(outcome[0])


def test_a_directory_at_the_path_is_refused(path: Path) -> None:
    path.mkdir()
    with pytest.raises(TableFileError, match="not a regular file"):
        load(path)


def test_a_version_2_file_without_its_checksum_or_a_version_1_with_one_is_refused(
    path: Path,
) -> None:
    table = ExpiringIpTable(TTL, clock=FakeClock())
    table.record("203.0.113.7")
    table.save(path)
    document = json.loads(path.read_text())
    del document["sha256"]
    path.write_text(json.dumps(document))
    with pytest.raises(TableFileError, match='no "sha256"'):
        load(path)
    document["sha256"], document["version"] = "0" * 64, 1
    path.write_text(json.dumps(document))
    with pytest.raises(TableFileError, match="damaged"):
        load(path)


def _mutate(data: bytes, rng: random.Random) -> bytes:
    position = rng.randrange(len(data))
    how = rng.randrange(4)
    if how == 0:  # a flipped bit
        return (
            data[:position]
            + bytes([data[position] ^ (1 << rng.randrange(8))])
            + data[position + 1 :]
        )
    if how == 1:  # a byte lost
        return data[:position] + data[position + 1 :]
    if how == 2:  # a byte replaced by a digit: numbers change and stay numbers
        return data[:position] + rng.choice(b"0123456789").to_bytes(1) + data[position + 1 :]
    return data[:position]  # cut short


def test_a_damaged_file_is_refused_never_loaded_as_other_entries(path: Path) -> None:
    """5,000 random damages: each is refused by the checksum (or the parser), or changes
    nothing the file says; none loads as a different set of entries."""
    table = ExpiringIpTable(TTL, clock=FakeClock())
    for n in range(12):
        table.record(f"198.51.100.{n}", user=f"user{n}" if n % 3 else None, ttl=60 + n)
    table.record("2001:db8::7", user="bob")
    table.save(path, wall_clock=FakeClock(WALL))
    original = path.read_bytes()
    expected = read_entries(path)
    rng = random.Random(20260101)  # noqa: S311 (reproducible damage, not secrets)
    refused = different = 0
    for _ in range(5000):
        path.unlink()  # a new file each time (truncating one in place is slow on tmpfs)
        path.write_bytes(_mutate(original, rng))
        try:
            rows = read_entries(path)
        except TableFileError:
            refused += 1
            continue
        if rows != expected:
            different += 1
    assert different == 0, f"{different} damaged files loaded as other entries"
    assert refused > 4500  # nearly every damage is caught (a blank changed is harmless)


def test_read_entries_is_empty_for_a_missing_file(tmp_path: Path) -> None:
    assert read_entries(tmp_path / "absent.json") == []


# --- the journal ----------------------------------------------------------------------


class Site:
    """A snapshot path and the clocks of one "machine": open it like a server does."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.clock = FakeClock(100.0)
        self.wall = FakeClock(WALL)
        self.running: DurableTable | None = None

    def open(self, checkpoint_interval: float = 60.0) -> DurableTable:
        """Start a "server" on the site. One still running is killed first, as a
        process dies: no checkpoint, its descriptors (the journal, the lock) closed by
        the kernel."""
        if self.running is not None:
            kill(self.running)
        table = ExpiringIpTable.load(self.path, TTL, clock=self.clock, wall_clock=self.wall)
        self.running = DurableTable.open(
            table, str(self.path), checkpoint_interval=checkpoint_interval, wall_clock=self.wall
        )
        return self.running


def kill(durable: DurableTable) -> None:
    """What a process's death does to its table: descriptors closed, nothing written."""
    for name in ("_fd", "_lock_fd"):
        fd = getattr(durable, name)
        if fd >= 0:
            os.close(fd)
            setattr(durable, name, -1)


@pytest.fixture
def site(path: Path) -> Iterator[Site]:
    yield Site(path)


def journal_ops(site: Site) -> list[list[object]]:
    return read_journal(str(site.path) + ".journal")


def test_a_synced_change_survives_a_crash(site: Site) -> None:
    durable = site.open()
    durable.record("203.0.113.7", user="alice")
    durable.remove("203.0.113.7")
    durable.record("203.0.113.8", user="bob", ttl=60)
    durable.sync()
    assert journal_ops(site) == [
        ["r", "203.0.113.7", WALL + TTL, "alice"],
        ["d", "203.0.113.7"],
        ["r", "203.0.113.8", WALL + 60, "bob"],
    ]
    # Killed here: no close, no snapshot. The next start replays the journal.
    again = site.open()
    assert [(e.address, e.user) for e in again.entries()] == [("203.0.113.8", "bob")]
    assert again.lookup("203.0.113.8") is not None
    assert journal_ops(site) == []  # the start wrote a snapshot of it all
    assert [row[0] for row in read_entries(site.path)] == ["203.0.113.8"]


def test_a_change_not_yet_synced_is_not_on_disk(site: Site) -> None:
    durable = site.open()
    durable.record("203.0.113.7")
    assert journal_ops(site) == []  # queued in memory: sync() is what makes it durable
    durable.sync()
    assert len(journal_ops(site)) == 1


def test_a_sync_with_nothing_new_does_not_fsync(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    durable = site.open()
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    durable.record("203.0.113.7")
    durable.record("203.0.113.8")
    durable.sync()
    assert len(calls) == 1  # one write, one fsync for the batch
    durable.sync()  # covered already (another thread's sync would find the same)
    assert len(calls) == 1


def test_replay_gives_what_remains_never_more_than_the_ttl(site: Site) -> None:
    durable = site.open()
    durable.record("203.0.113.7", ttl=600)
    durable.record("203.0.113.8", ttl=10 * 365 * 86400.0)  # an admin's ctl add
    durable.record("203.0.113.9", ttl=60)
    durable.sync()
    site.clock, site.wall = FakeClock(5.0), FakeClock(WALL + 100)  # a reboot, 100 s later
    again = site.open()
    assert {e.address: e.expires_at for e in again.entries()} == {
        "203.0.113.7": 5.0 + 500,
        "203.0.113.8": 5.0 + TTL,
    }


def test_a_clear_is_journalled(site: Site) -> None:
    durable = site.open()
    durable.record("203.0.113.7")
    durable.clear()
    durable.record("203.0.113.8")
    durable.sync()
    assert addresses(site.open()) == ["203.0.113.8"]


def test_a_torn_last_line_is_dropped(site: Site) -> None:
    durable = site.open()
    durable.record("203.0.113.7")
    durable.record("203.0.113.8")
    durable.sync()
    journal = Path(str(site.path) + ".journal")
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-7])  # the last write cut short by the crash
    assert addresses(site.open()) == ["203.0.113.7"]


def test_a_torn_tail_of_zeros_is_dropped(site: Site) -> None:
    durable = site.open()
    durable.record("203.0.113.7")
    durable.sync()
    journal = Path(str(site.path) + ".journal")
    with journal.open("ab") as file:  # blocks allocated, never written: a power loss
        file.write(b"\x00" * 300 + b"\n" + b"\x00" * 40)
    assert addresses(site.open()) == ["203.0.113.7"]


def test_a_damaged_line_before_intact_ones_is_refused(site: Site) -> None:
    durable = site.open()
    for n in range(3):
        durable.record(f"203.0.113.{n}")
    durable.sync()
    journal = Path(str(site.path) + ".journal")
    lines = journal.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"203.0.113.1", b"203.0.113.9")  # checksum now wrong
    journal.write_bytes(b"\n".join(lines))
    with pytest.raises(TableFileError, match=r"line 3 is damaged but line 4 after it is intact"):
        site.open()


@pytest.mark.parametrize(
    "content",
    [b'{"format": "relaypolicy-iptable", "version": 2}\n', b"\x89PNG\r\n\x1a\n"],
)
def test_a_file_that_is_no_journal_is_refused(site: Site, content: bytes) -> None:
    Path(str(site.path) + ".journal").write_bytes(content)
    with pytest.raises(TableFileError, match="journal"):
        site.open()


def test_a_fifo_as_journal_is_refused(site: Site) -> None:
    os.mkfifo(str(site.path) + ".journal")
    with pytest.raises(TableFileError, match="not a regular file"):
        site.open()


def test_replay_is_idempotent_a_crash_after_the_snapshot_loses_nothing(site: Site) -> None:
    """Killed after a checkpoint's snapshot, before ``.journal.old`` was deleted: the
    changes it holds are replayed over a snapshot that has them already."""
    durable = site.open()
    durable.record("203.0.113.7", user="alice")
    durable.remove("203.0.113.7")
    durable.record("203.0.113.7", user="carol", ttl=60)
    durable.record("203.0.113.8", user="bob")
    durable.sync()
    journal = Path(str(site.path) + ".journal")
    kept = journal.read_bytes()
    durable.checkpoint()
    Path(str(site.path) + ".journal.old").write_bytes(kept)  # as if never deleted
    again = site.open()
    assert [(e.address, e.expires_at, e.user) for e in again.entries()] == [
        ("203.0.113.7", 100.0 + 60, "carol"),
        ("203.0.113.8", 100.0 + TTL, "bob"),
    ]


def test_changes_during_a_checkpoint_go_to_the_new_journal(site: Site) -> None:
    durable = site.open()
    durable.record("203.0.113.7")
    durable.sync()
    assert durable.checkpoint() == 1
    durable.record("203.0.113.8")
    durable.sync()
    assert journal_ops(site) == [["r", "203.0.113.8", WALL + TTL, None]]
    assert not Path(str(site.path) + ".journal.old").exists()
    assert addresses(site.open()) == ["203.0.113.7", "203.0.113.8"]


def test_a_failed_snapshot_keeps_every_change_in_the_journals(site: Site) -> None:
    durable = site.open()
    durable.record("203.0.113.7")
    durable.sync()
    site.path.unlink()
    site.path.mkdir()  # the snapshot cannot be written any more
    (site.path / "x").write_text("")
    with pytest.raises(OSError):
        durable.checkpoint()
    assert durable.checkpoint_due() or durable.checkpoint_interval > 0
    durable.record("203.0.113.8")
    durable.sync()
    with pytest.raises(OSError):
        durable.checkpoint()  # .journal.old exists: the new lines are appended to it
    durable.record("203.0.113.9")
    durable.sync()
    (site.path / "x").unlink()
    site.path.rmdir()
    assert addresses(site.open()) == ["203.0.113.7", "203.0.113.8", "203.0.113.9"]


def test_checkpoints_racing_writers_lose_nothing_and_revive_nothing(site: Site) -> None:
    """A writer thread records and removes (syncing as the watcher does) while the main
    thread checkpoints; then a crash. Every synced change is there after the restart:
    each kept address present, each removed one absent."""
    durable = site.open()
    kept = [f"10.1.{n >> 8}.{n & 255}" for n in range(3000)]
    removed = kept[::7]
    done = threading.Event()

    def write() -> None:
        for n, address in enumerate(kept):
            durable.record(address, user=f"u{n}")
            if n % 7 == 0:
                durable.remove(address)
            if n % 50 == 49:
                durable.sync()
        durable.sync()
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    checkpoints = 0
    while not done.is_set() or checkpoints < 3:
        durable.checkpoint()
        checkpoints += 1
    writer.join(timeout=60)
    again = site.open()  # the first one was never closed: a crash
    present = set(addresses(again))
    assert present == set(kept) - set(removed)
    entry = again.lookup(kept[1])
    assert entry is not None and entry.user == "u1"


def test_checkpoint_is_due_only_after_a_change_and_the_interval(site: Site) -> None:
    durable = site.open(checkpoint_interval=0.0)
    assert not durable.checkpoint_due()  # nothing changed
    durable.record("203.0.113.7")
    assert durable.checkpoint_due()
    durable.checkpoint()
    assert not durable.checkpoint_due()
    hourly = site.open(checkpoint_interval=3600.0)
    hourly.record("203.0.113.8")
    assert not hourly.checkpoint_due()


def test_close_writes_the_snapshot_and_empties_the_journal(site: Site) -> None:
    durable = site.open()
    durable.record("203.0.113.7", user="alice")
    assert durable.close() == 1
    assert [row[0] for row in read_entries(site.path)] == ["203.0.113.7"]
    assert journal_ops(site) == []


def test_reads_are_the_memory_tables_own_methods(site: Site) -> None:
    """The policy's hot path does not go through the journal at all."""
    durable = site.open()
    assert durable.has_client == durable.table.has_client
    assert durable.client_login == durable.table.client_login
    assert durable.lookup == durable.table.lookup


# --- start-up: the path itself --------------------------------------------------------


def test_stale_temporary_files_of_ours_are_removed_at_start(site: Site) -> None:
    directory = site.path.parent
    ours = [".table.json.k3j_9x2a.tmp", ".table.json.journal.abcdefgh.tmp"]
    others = [".table.json.toolong123.tmp", ".other.json.abcdefgh.tmp", "table.json.tmp"]
    for name in ours + others:
        (directory / name).write_text("left by a kill -9")
    site.open()
    left = sorted(p.name for p in directory.iterdir())
    assert left == sorted([*others, "table.json", "table.json.journal", "table.json.lock"])


def test_an_unwritable_directory_is_refused_at_start(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root writes anywhere it may: /sys refuses new files to all
        where = Path("/sys/relaypolicy-table.json")
    else:
        tmp_path.chmod(0o500)
        where = tmp_path / "table.json"
    table = ExpiringIpTable(TTL)
    try:
        with pytest.raises(OSError, match="cannot keep the table's state here") as caught:
            DurableTable.open(table, str(where))
    finally:
        tmp_path.chmod(0o700)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith(f"{where}: ")


def test_a_missing_directory_is_refused_at_start(tmp_path: Path) -> None:
    where = tmp_path / "no-such-directory" / "table.json"
    with pytest.raises(OSError, match="No such file or directory"):
        DurableTable.open(ExpiringIpTable(TTL), str(where))


# --- one process per persist ----------------------------------------------------------


def test_a_second_process_on_the_same_persist_is_refused_naming_it(site: Site) -> None:
    first = site.open()
    first.record("203.0.113.7", user="alice")
    first.sync()
    table = ExpiringIpTable.load(site.path, TTL, clock=site.clock, wall_clock=site.wall)
    with pytest.raises(OSError) as caught:
        DurableTable.open(table, str(site.path), wall_clock=site.wall)
    message = str(caught.value)
    assert message.startswith(f"{site.path}: in use by another relaypolicy process")
    assert f"(pid {os.getpid()})" in message
    # The refused start changed nothing: the first keeps its journal and its entry.
    assert journal_ops(site) == [["r", "203.0.113.7", WALL + TTL, "alice"]]
    first.close()
    # Closed: the next process takes the table, with the entry.
    again = DurableTable.open(
        ExpiringIpTable.load(site.path, TTL, clock=site.clock, wall_clock=site.wall),
        str(site.path),
        wall_clock=site.wall,
    )
    assert [e.address for e in again.entries()] == ["203.0.113.7"]
    again.close()


def test_a_dead_process_leaves_no_lock_behind(site: Site) -> None:
    site.open().record("203.0.113.7")
    again = site.open()  # the first is killed: the kernel dropped its lock
    assert again.entries() == []  # never synced: nothing was acknowledged
    again.close()
