"""ExpiringIpTable: expiry, normalisation, /64 grouping, eviction, persistence, threads."""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import sys
import threading
from pathlib import Path

import pytest

from relaypolicy import Request
from relaypolicy.iptable import ExpiringIpTable, IpEntry, IpTable, Login, TableFileError
from relaypolicy.testing import FakeClock

TTL = 1800.0
WALL = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def table(clock: FakeClock) -> ExpiringIpTable:
    return ExpiringIpTable(TTL, clock=clock)


def request(client: str) -> Request:
    return Request(client_address=client, recipient="user@elsewhere.example")


def queue_size(table: ExpiringIpTable) -> int:
    return len(table._times) + len(table._heap)


# --- expiry -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("after", "live"),
    [
        (0.0, True),
        (TTL - 1.0, True),
        (TTL - 1e-6, True),
        (TTL, False),  # live while clock() < expires_at
        (TTL + 1e-6, False),
        (TTL + 1.0, False),
    ],
)
def test_entry_lives_for_ttl(
    table: ExpiringIpTable, clock: FakeClock, after: float, live: bool
) -> None:
    table.record("203.0.113.7", user="alice")
    clock.advance(after)
    assert ("203.0.113.7" in table) is live
    assert table.has_client(request("203.0.113.7")) is live
    assert (table.client_login(request("203.0.113.7")) is not None) is live
    expected = IpEntry("203.0.113.7", 1000.0 + TTL, "alice") if live else None
    assert table.lookup("203.0.113.7") == expected
    assert len(table) == int(live)


def test_expired_entry_is_not_live_before_expire_runs(
    table: ExpiringIpTable, clock: FakeClock
) -> None:
    table.record("203.0.113.7")
    clock.advance(TTL + 1)
    assert len(table._expiry) == 1  # still stored ...
    assert "203.0.113.7" not in table  # ... but never reported live
    assert table.lookup("203.0.113.7") is None
    assert table.expire() == 1
    assert len(table._expiry) == 0


@pytest.mark.parametrize(
    "case",
    [
        (None, 600.0, None, 1000.0 + 600.0 + TTL),  # re-recording extends
        (None, 600.0, 60.0, 1000.0 + TTL),  # a shorter ttl never shortens
        (None, 0.0, None, 1000.0 + TTL),  # the same expiry: unchanged
        (60.0, 10.0, 3600.0, 1000.0 + 10.0 + 3600.0),  # a longer ttl extends
        (60.0, 120.0, 30.0, 1000.0 + 120.0 + 30.0),  # after expiry: a new entry
    ],
)
def test_record_extends_never_shortens(
    table: ExpiringIpTable,
    clock: FakeClock,
    case: tuple[float | None, float, float | None, float],
) -> None:
    first_ttl, second_after, second_ttl, expires_at = case
    table.record("203.0.113.7", ttl=first_ttl)
    clock.advance(second_after)
    table.record("203.0.113.7", ttl=second_ttl)
    entry = table.lookup("203.0.113.7")
    assert entry is not None
    assert entry.expires_at == expires_at


def test_entry_keeps_user_of_latest_login(table: ExpiringIpTable, clock: FakeClock) -> None:
    table.record("203.0.113.7", user="alice")
    clock.advance(10)
    table.record("203.0.113.7", user="bob", ttl=60)  # shorter: expiry kept, user is bob
    assert table.lookup("203.0.113.7") == IpEntry("203.0.113.7", 1000.0 + TTL, "bob")
    assert table.client_login(request("203.0.113.7")) == Login("bob")
    table.record("203.0.113.7")  # a login the watcher could not name
    assert table.client_login(request("203.0.113.7")) == Login(None)
    assert table.lookup("203.0.113.7") == IpEntry("203.0.113.7", 1010.0 + TTL, None)


def test_amortised_expiry_removes_due_entries_as_records_arrive(
    table: ExpiringIpTable, clock: FakeClock
) -> None:
    for i in range(100):
        table.record(f"198.51.100.{i}")
    clock.advance(TTL + 1)
    for i in range(50):
        table.record(f"203.0.113.{i}")
    # Each record removed up to two due entries: all 100 old ones are gone, unasked.
    assert len(table._expiry) == 50
    assert table.expire() == 0


def test_out_of_order_expiries_go_through_the_heap(
    table: ExpiringIpTable, clock: FakeClock
) -> None:
    table.record("192.0.2.1", ttl=1000)
    table.record("192.0.2.2", ttl=10)
    table.record("192.0.2.3", ttl=500)
    table.record("192.0.2.4", ttl=20)
    assert len(table._heap) == 3  # all but the first came out of order
    clock.advance(15)
    assert table.expire() == 1
    assert [e.address for e in table.entries()] == ["192.0.2.4", "192.0.2.3", "192.0.2.1"]
    clock.advance(600)
    assert table.expire() == 2
    assert [e.address for e in table.entries()] == ["192.0.2.1"]


def test_stale_queue_items_are_compacted(table: ExpiringIpTable, clock: FakeClock) -> None:
    for i in range(10):
        table.record(f"192.0.2.{i}")
    for _ in range(1000):
        clock.advance(0.5)
        for i in range(10):
            table.record(f"192.0.2.{i}")  # each leaves its old queue item stale
        assert queue_size(table) <= 2 * 10 + 64 + 1
    assert len(table) == 10


def test_remove(table: ExpiringIpTable, clock: FakeClock) -> None:
    table.record("203.0.113.7", user="alice")
    table.record("203.0.113.8")
    assert table.remove("::ffff:203.0.113.7") is True
    assert "203.0.113.7" not in table
    assert table.remove("203.0.113.7") is False
    clock.advance(TTL)
    assert table.remove("203.0.113.8") is False  # it had expired
    table.record("203.0.113.7")
    assert table.lookup("203.0.113.7") == IpEntry("203.0.113.7", 1000.0 + 2 * TTL, None)


def test_changes_counts_every_change_of_the_entries(clock: FakeClock) -> None:
    """What exported maps rely on to notice changes made by others (ctl, sweeps)."""
    table = ExpiringIpTable(TTL, clock=clock, max_entries=2)
    seen = table.changes

    def changed() -> bool:
        nonlocal seen
        before, seen = seen, table.changes
        return seen != before

    table.record("192.0.2.1")
    assert changed()
    table.record("192.0.2.1", ttl=10)  # shorter: nothing changes
    assert not changed()
    assert table.lookup("192.0.2.1") is not None and "192.0.2.1" in table
    assert not changed()  # reading changes nothing
    clock.advance(1)
    table.record("192.0.2.1")  # extended
    assert changed()
    table.record("192.0.2.2")
    assert changed()
    table.record("192.0.2.3")  # evicts the one that expires soonest
    assert changed() and table.evictions == 1
    assert table.remove("192.0.2.3")
    assert changed()
    assert not table.remove("192.0.2.3")
    assert not changed()
    clock.advance(TTL)
    assert table.expire() == 1
    assert changed()
    assert table.expire() == 0
    assert not changed()
    table.record("192.0.2.4")
    assert changed()
    table.clear()
    assert changed()


def test_clear(table: ExpiringIpTable) -> None:
    table.record("203.0.113.7", user="alice")
    table.clear()
    assert len(table) == 0
    assert table.lookup("203.0.113.7") is None


# --- normalisation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seen_by_watcher", "seen_by_mta"),
    [
        ("::ffff:203.0.113.7", "203.0.113.7"),  # Courier/Dovecot on a dual-stack socket
        ("::FFFF:203.0.113.7", "203.0.113.7"),
        ("0:0:0:0:0:ffff:cb00:7107", "203.0.113.7"),
        ("[203.0.113.7]", "203.0.113.7"),
        ("IPv6:::ffff:203.0.113.7", "::ffff:203.0.113.7"),
        (" 203.0.113.7 ", "[203.0.113.7]"),
        ("203.0.113.7", "::ffff:cb00:7107"),
        ("2001:0DB8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
    ],
)
def test_addresses_are_normalised_like_client_address(
    table: ExpiringIpTable, seen_by_watcher: str, seen_by_mta: str
) -> None:
    table.record(seen_by_watcher, user="alice")
    assert seen_by_mta in table
    assert table.has_client(request(seen_by_mta))
    entry = table.lookup(seen_by_mta)
    assert entry is not None
    assert entry.address == request(seen_by_mta).client_address


@pytest.mark.parametrize(
    ("recorded", "other"),
    [
        ("0.0.0.1", "::1"),  # equal integers, different families
        ("::1", "0.0.0.1"),
        ("1.2.3.4", "::1.2.3.4"),  # IPv4-compatible IPv6 is not IPv4
        ("::1.2.3.4", "1.2.3.4"),
        ("203.0.113.7", "203.0.113.8"),
    ],
)
def test_distinct_addresses_stay_distinct(
    table: ExpiringIpTable, recorded: str, other: str
) -> None:
    table.record(recorded)
    assert other not in table
    assert not table.has_client(request(other))


@pytest.mark.parametrize(
    "bad", ["", "203.0.113", "203.0.113.256", "01.2.3.4", "example.org", "::g"]
)
def test_invalid_addresses(table: ExpiringIpTable, bad: str) -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        table.record(bad)
    with pytest.raises(ValueError, match="not an IP address"):
        table.remove(bad)
    assert table.lookup(bad) is None
    assert bad not in table
    assert 42 not in table


@pytest.mark.parametrize(
    ("prefix", "recorded", "client", "live"),
    [
        (64, "2001:db8:1:2::5", "2001:db8:1:2:a:b:c:d", True),  # privacy address rotated
        (64, "2001:db8:1:2::5", "2001:db8:1:3::5", False),  # another /64
        (64, "203.0.113.7", "203.0.113.8", False),  # IPv4 is always exact
        (64, "::ffff:203.0.113.7", "203.0.113.7", True),
        (48, "2001:db8:1:2::5", "2001:db8:1:ffff::1", True),
        (128, "2001:db8:1:2::5", "2001:db8:1:2::6", False),
        (128, "2001:db8:1:2::5", "2001:db8:1:2:0:0:0:5", True),
    ],
)
def test_ipv6_prefix_grouping(
    clock: FakeClock, prefix: int, recorded: str, client: str, live: bool
) -> None:
    table = ExpiringIpTable(TTL, clock=clock, ipv6_prefix=prefix)
    table.record(recorded, user="alice")
    assert (client in table) is live
    assert table.has_client(request(client)) is live
    assert (table.client_login(request(client)) == Login("alice")) is live


def test_grouped_entry_names_its_network(clock: FakeClock) -> None:
    table = ExpiringIpTable(TTL, clock=clock, ipv6_prefix=64)
    table.record("2001:db8:1:2::5")
    table.record("2001:db8:1:2::6")
    assert len(table) == 1
    assert table.lookup("2001:db8:1:2::7") == IpEntry("2001:db8:1:2::/64", 1000.0 + TTL, None)
    assert table.remove("2001:db8:1:2:ffff::1") is True


# --- max_entries --------------------------------------------------------------------------


def test_full_table_evicts_the_entry_that_expires_soonest(
    table: ExpiringIpTable, clock: FakeClock
) -> None:
    table = ExpiringIpTable(TTL, clock=clock, max_entries=3)
    table.record("192.0.2.1", ttl=100)
    table.record("192.0.2.2", ttl=300)
    table.record("192.0.2.3", ttl=200)
    table.record("192.0.2.4", ttl=400)
    assert table.evictions == 1
    assert [e.address for e in table.entries()] == ["192.0.2.3", "192.0.2.2", "192.0.2.4"]
    table.record("192.0.2.5", ttl=1)  # never the fresh one, even if it expires soonest
    assert table.evictions == 2
    assert [e.address for e in table.entries()] == ["192.0.2.5", "192.0.2.2", "192.0.2.4"]
    table.record("192.0.2.2", ttl=1000)  # extending an entry needs no room
    assert table.evictions == 2


def test_full_table_drops_expired_entries_before_evicting(clock: FakeClock) -> None:
    table = ExpiringIpTable(TTL, clock=clock, max_entries=2)
    table.record("192.0.2.1", ttl=10)
    table.record("192.0.2.2", ttl=100)
    clock.advance(50)
    table.record("192.0.2.3")
    assert table.evictions == 0
    assert [e.address for e in table.entries()] == ["192.0.2.2", "192.0.2.3"]


def test_eviction_skips_stale_queue_items(clock: FakeClock) -> None:
    table = ExpiringIpTable(TTL, clock=clock, max_entries=2)
    table.record("192.0.2.1")
    table.record("192.0.2.2")
    clock.advance(10)
    table.record("192.0.2.1")  # its first queue item is stale now
    table.record("192.0.2.3")
    assert table.evictions == 1
    assert [e.address for e in table.entries()] == ["192.0.2.1", "192.0.2.3"]


# --- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"ttl": 0}, ValueError, "ttl: must be positive"),
        ({"ttl": -1.0}, ValueError, "ttl: must be positive"),
        ({"ttl": math.inf}, ValueError, "ttl: must be positive and finite"),
        ({"ttl": math.nan}, ValueError, "ttl: must be positive and finite"),
        ({"ttl": "1800"}, TypeError, "ttl: expected seconds"),
        ({"ttl": True}, TypeError, "ttl: expected seconds"),
        ({"max_entries": 0}, ValueError, "max_entries"),
        ({"max_entries": 1.5}, ValueError, "max_entries"),
        ({"ipv6_prefix": 0}, ValueError, "ipv6_prefix"),
        ({"ipv6_prefix": 129}, ValueError, "ipv6_prefix"),
        ({"ipv6_prefix": "64"}, TypeError, "ipv6_prefix"),
        ({"clock": 5}, TypeError, "clock"),
    ],
)
def test_bad_configuration(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        ExpiringIpTable(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"ttl": 0}, ValueError),
        ({"ttl": math.nan}, ValueError),
        ({"ttl": "60"}, TypeError),
        ({"user": ""}, TypeError),
        ({"user": b"alice"}, TypeError),
    ],
)
def test_bad_record_arguments(
    table: ExpiringIpTable, kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        table.record("203.0.113.7", **kwargs)  # type: ignore[arg-type]
    assert len(table) == 0


def test_table_satisfies_the_protocol(table: ExpiringIpTable) -> None:
    assert isinstance(table, IpTable)
    assert table.ttl == TTL
    assert table.max_entries is None
    assert table.ipv6_prefix == 128
    assert "ExpiringIpTable(ttl=1800.0" in repr(table)


# --- persistence --------------------------------------------------------------------------


def test_save_load_round_trip_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "popauth.json"
    uptime, wall = FakeClock(5000.0), FakeClock(WALL)
    before = ExpiringIpTable(TTL, clock=uptime)
    before.record("203.0.113.7", user="alice")
    before.record("2001:db8::1", user="bob", ttl=60)
    before.record("198.51.100.1", ttl=20)
    uptime.advance(30)
    wall.advance(30)
    assert before.save(path, wall_clock=wall) == 2  # 198.51.100.1 had expired

    # The machine restarts: the monotonic clock starts again near zero; 10 s went by.
    uptime, wall = FakeClock(3.0), FakeClock(WALL + 40)
    after = ExpiringIpTable.load(path, clock=uptime, wall_clock=wall)
    assert after.entries() == [
        IpEntry("2001:db8::1", 3.0 + 20, "bob"),
        IpEntry("203.0.113.7", 3.0 + TTL - 40, "alice"),
    ]
    uptime.advance(20)
    assert "2001:db8::1" not in after
    assert "203.0.113.7" in after


def test_load_drops_entries_that_expired_while_down(tmp_path: Path) -> None:
    path = tmp_path / "popauth.json"
    table = ExpiringIpTable(TTL, clock=FakeClock())
    table.record("203.0.113.7", ttl=60)
    table.record("203.0.113.8", ttl=600)
    table.save(path, wall_clock=FakeClock(WALL))
    loaded = ExpiringIpTable.load(path, clock=FakeClock(), wall_clock=FakeClock(WALL + 60))
    assert [e.address for e in loaded.entries()] == ["203.0.113.8"]


def test_saved_file_is_plain_versioned_json(tmp_path: Path, table: ExpiringIpTable) -> None:
    path = tmp_path / "popauth.json"
    table.record("203.0.113.7", user="alice")
    table.record("::ffff:192.0.2.1")
    table.save(path, wall_clock=FakeClock(WALL))
    document = json.loads(path.read_text())
    entries = [["203.0.113.7", WALL + TTL, "alice"], ["192.0.2.1", WALL + TTL, None]]
    # The checksum, computed as the format describes it: a header line, then each entry
    # as compact JSON, one per line.
    digest = hashlib.sha256(b"relaypolicy-iptable 2 128\n")
    for entry in entries:
        digest.update(json.dumps(entry, separators=(",", ":")).encode() + b"\n")
    assert document == {
        "format": "relaypolicy-iptable",
        "version": 2,
        "ipv6_prefix": 128,
        "sha256": digest.hexdigest(),
        "entries": entries,
    }
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it names users and where they are
    assert os.listdir(tmp_path) == ["popauth.json"]  # no temporary file left behind


def test_save_replaces_atomically(
    tmp_path: Path, table: ExpiringIpTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "popauth.json"
    table.record("203.0.113.7")
    table.save(path)
    original = path.read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError("disk on fire")

    table.record("203.0.113.8")
    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk on fire"):
        table.save(path)
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["popauth.json"]


def test_missing_file_is_an_empty_table(tmp_path: Path) -> None:
    table = ExpiringIpTable.load(tmp_path / "absent.json", 600, max_entries=5)
    assert len(table) == 0
    assert table.ttl == 600
    assert table.max_entries == 5


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "not JSON"),
        ("popauth: 203.0.113.7\n", "not JSON"),
        ('{"format": "relaypolicy-iptable"', "not JSON"),
        ("[]", "not a saved IP table"),
        ('{"format": "something-else", "version": 1, "entries": []}', "not a saved IP table"),
        ('{"format": "relaypolicy-iptable", "version": 3, "entries": []}', "version 3"),
        ('{"format": "relaypolicy-iptable", "version": 2, "entries": []}', 'no "sha256"'),
        ('{"format": "relaypolicy-iptable", "version": "1", "entries": []}', "version '1'"),
        ('{"format": "relaypolicy-iptable", "version": 1}', '"entries" is not a list'),
        ('{"format": "relaypolicy-iptable", "version": 1, "entries": [5]}', "entry 0: expected"),
        (
            '{"format": "relaypolicy-iptable", "version": 1, "entries": [["1.2.3.4", 1]]}',
            "entry 0: expected [address, expires_at, user]",
        ),
        (
            '{"format": "relaypolicy-iptable", "version": 1, "entries": '
            '[["1.2.3.4", 1, null], ["1.2.3.400", 1, null]]}',
            "entry 1: not an IP address",
        ),
        (
            '{"format": "relaypolicy-iptable", "version": 1, "entries": [[7, 1, null]]}',
            "entry 0: the address is not a string",
        ),
        (
            '{"format": "relaypolicy-iptable", "version": 1, "entries": [["10.0.0.0/8", 1, null]]}',
            "entry 0: not an IPv6 network",
        ),
        (
            '{"format": "relaypolicy-iptable", "version": 1, "entries": [["1.2.3.4", "1", null]]}',
            "entry 0: expires_at is not a number",
        ),
        (
            '{"format": "relaypolicy-iptable", "version": 1, "entries": [["1.2.3.4", true, null]]}',
            "entry 0: expires_at is not a number",
        ),
        (
            '{"format": "relaypolicy-iptable", "version": 1, "entries": [["1.2.3.4", NaN, null]]}',
            "not JSON",
        ),
        (
            '{"format": "relaypolicy-iptable", "version": 1, "entries": '
            '[["1.2.3.4", 1e999, null]]}',
            "entry 0: expires_at is not finite",
        ),
        (
            '{"format": "relaypolicy-iptable", "version": 1, "entries": [["1.2.3.4", 1, 5]]}',
            "entry 0: user is neither a string nor null",
        ),
    ],
)
def test_corrupt_or_foreign_file_is_refused(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "popauth.json"
    path.write_text(content)
    with pytest.raises(TableFileError) as caught:
        ExpiringIpTable.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert problem in message
    assert isinstance(caught.value, ValueError)


def test_undecodable_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "popauth.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TableFileError, match="not JSON"):
        ExpiringIpTable.load(path)


@pytest.mark.parametrize(
    ("saved_prefix", "loaded_prefix", "addresses"),
    [
        (64, 64, ["2001:db8:1:2::/64", "203.0.113.7"]),
        (128, 64, ["2001:db8:1:2::/64", "203.0.113.7"]),  # finer entries are grouped
        (64, 128, ["203.0.113.7"]),  # a /64 cannot be split into addresses: dropped
        (64, 48, ["2001:db8:1::/48", "203.0.113.7"]),
    ],
)
def test_load_with_another_ipv6_prefix(
    tmp_path: Path, saved_prefix: int, loaded_prefix: int, addresses: list[str]
) -> None:
    path = tmp_path / "popauth.json"
    table = ExpiringIpTable(TTL, clock=FakeClock(), ipv6_prefix=saved_prefix)
    table.record("2001:db8:1:2::5")
    table.record("203.0.113.7", ttl=TTL + 1)
    table.save(path, wall_clock=FakeClock(WALL))
    loaded = ExpiringIpTable.load(
        path, clock=FakeClock(), wall_clock=FakeClock(WALL), ipv6_prefix=loaded_prefix
    )
    assert [e.address for e in loaded.entries()] == addresses


def test_load_respects_max_entries(tmp_path: Path) -> None:
    path = tmp_path / "popauth.json"
    table = ExpiringIpTable(TTL, clock=FakeClock())
    for i in range(5):
        table.record(f"192.0.2.{i}", ttl=100 + i)
    table.save(path, wall_clock=FakeClock(WALL))
    loaded = ExpiringIpTable.load(
        path, clock=FakeClock(), wall_clock=FakeClock(WALL), max_entries=3
    )
    assert [e.address for e in loaded.entries()] == ["192.0.2.2", "192.0.2.3", "192.0.2.4"]
    assert loaded.evictions == 2


# --- threads ------------------------------------------------------------------------------


def test_watcher_thread_records_while_policy_threads_read() -> None:
    clock = FakeClock()
    table = ExpiringIpTable(10.0, clock=clock, max_entries=500)
    addresses = [f"10.0.{i // 250}.{i % 250}" for i in range(1000)]
    requests = [request(address) for address in addresses[:200]]
    stop = threading.Event()
    errors: list[BaseException] = []

    def watcher() -> None:
        try:
            for round_ in range(20):
                for i, address in enumerate(addresses):
                    table.record(address, user=f"user{i}")
                    if i % 100 == 0:
                        clock.advance(0.7)
                if round_ % 5 == 0:
                    table.expire()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            stop.set()

    def reader() -> None:
        try:
            while not stop.is_set():
                for i, req in enumerate(requests):
                    login = table.client_login(req)
                    # A login is always the one recorded for that address, never another's.
                    assert login is None or login.user == f"user{i}"
                    table.lookup(addresses[i])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=watcher)] + [
        threading.Thread(target=reader) for _ in range(2)
    ]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: more interleavings to get wrong
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        sys.setswitchinterval(interval)
    assert not errors
    assert len(table) <= 500


# --- FakeClock ----------------------------------------------------------------------------


def test_fake_clock() -> None:
    clock = FakeClock()
    assert clock() == 0.0
    assert clock.advance(1.5) == 1.5
    assert clock() == clock.now == 1.5
    clock.set(WALL)
    assert clock() == WALL
    clock.set(10)  # a wall clock may be stepped back
    assert clock() == 10.0
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="finite"):
        clock.set(math.inf)
    with pytest.raises(TypeError):
        FakeClock("0")  # type: ignore[arg-type]
    assert repr(clock) == "FakeClock(10.0)"
