"""ExpiringIpTable with absolute expiries and bulk replacement: ``entry_address``,
``record_until``, ``put`` and ``replace``, the public methods a replica of a shared table
builds on."""

from __future__ import annotations

import math
import threading

import pytest

from relaypolicy import Request
from relaypolicy.iptable import ExpiringIpTable, IpEntry
from relaypolicy.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def table(clock: FakeClock) -> ExpiringIpTable:
    return ExpiringIpTable(1800, clock=clock)


def request(client: str) -> Request:
    return Request(client_address=client, recipient="user@elsewhere.example")


def test_entry_address_names_the_entry_an_address_falls_in(clock: FakeClock) -> None:
    exact = ExpiringIpTable(clock=clock)
    grouped = ExpiringIpTable(clock=clock, ipv6_prefix=64)
    assert exact.entry_address("::ffff:192.0.2.1") == "192.0.2.1"
    assert exact.entry_address("2001:DB8::1") == "2001:db8::1"
    assert grouped.entry_address("2001:db8:0:1::abcd") == "2001:db8:0:1::/64"
    grouped.record("2001:db8:0:1::1")
    assert [e.address for e in grouped.entries()] == [grouped.entry_address("2001:db8:0:1::9")]
    with pytest.raises(ValueError):
        exact.entry_address("mail.example")


def test_record_until_extends_never_shortens(table: ExpiringIpTable, clock: FakeClock) -> None:
    table.record_until("192.0.2.1", 1600.0, user="taro")
    assert table.lookup("192.0.2.1") == IpEntry("192.0.2.1", 1600.0, "taro")
    table.record_until("192.0.2.1", 1200.0, user="hanako")  # shorter: the user changes only
    assert table.lookup("192.0.2.1") == IpEntry("192.0.2.1", 1600.0, "hanako")
    table.record_until("192.0.2.1", 2000.0)
    assert table.lookup("192.0.2.1") == IpEntry("192.0.2.1", 2000.0, None)
    changes = table.changes
    table.record_until("192.0.2.2", 999.0)  # already past: nothing
    assert "192.0.2.2" not in table and table.changes == changes
    clock.set(2000.0)
    assert not table.has_client(request("192.0.2.1"))
    assert table.expire() == 1


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_record_until_and_put_refuse_a_time_that_is_not_one(
    table: ExpiringIpTable, bad: float
) -> None:
    for method in (table.record_until, table.put):
        with pytest.raises(ValueError, match="expires_at"):
            method("192.0.2.1", bad)
        with pytest.raises(TypeError, match="expires_at"):
            method("192.0.2.1", "1200")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="user"):
            method("192.0.2.1", 1200.0, user="")
    assert len(table) == 0


def test_put_sets_exactly_shortening_and_removing(table: ExpiringIpTable, clock: FakeClock) -> None:
    table.record("192.0.2.1", user="taro")  # until 2800
    table.record("192.0.2.2")  # until 2800
    table.put("192.0.2.1", 1100.0, user="hanako")
    assert table.lookup("192.0.2.1") == IpEntry("192.0.2.1", 1100.0, "hanako")
    table.put("192.0.2.1", 1500.0)
    assert table.lookup("192.0.2.1") == IpEntry("192.0.2.1", 1500.0, None)
    table.put("192.0.2.2", 900.0)  # a time already past removes it
    assert "192.0.2.2" not in table
    table.put("192.0.2.3", 900.0)  # and adds nothing
    assert len(table) == 1
    # The shortened entry goes when its new time comes, and only then.
    clock.set(1499.0)
    assert table.expire() == 0 and "192.0.2.1" in table
    clock.set(1500.0)
    assert table.expire() == 1 and len(table) == 0


def test_put_many_times_keeps_the_queue_bounded(table: ExpiringIpTable) -> None:
    for n in range(5000):
        table.put("192.0.2.1", 2000.0 - n / 10)  # ever shorter: each leaves a stale item
    assert table.lookup("192.0.2.1") == IpEntry("192.0.2.1", 2000.0 - 4999 / 10, None)
    assert len(table._times) + len(table._heap) < 200  # compacted as it went


def test_replace_swaps_the_whole_content(table: ExpiringIpTable, clock: FakeClock) -> None:
    table.record("192.0.2.1")
    changes = table.changes
    live = table.replace(
        [
            ("192.0.2.9", 1300.0, "taro"),
            ("::ffff:192.0.2.8", 1200.0, None),
            ("2001:db8::1", 1100.0, None),
            ("192.0.2.7", 999.0, "gone"),  # already past: skipped
        ]
    )
    assert live == 3 and table.changes == changes + 1
    assert "192.0.2.1" not in table
    assert [e.address for e in table.entries()] == ["2001:db8::1", "192.0.2.8", "192.0.2.9"]
    assert table.client_login(request("192.0.2.9")) == ("taro",)
    clock.set(1250.0)
    assert table.expire() == 2
    assert table.replace([]) == 0 and len(table) == 0


def test_replace_takes_what_entries_gives(clock: FakeClock) -> None:
    grouped = ExpiringIpTable(clock=clock, ipv6_prefix=64, max_entries=2)
    grouped.record("2001:db8:0:1::1", user="taro")
    grouped.record("192.0.2.1")
    copy = ExpiringIpTable(clock=clock, ipv6_prefix=64, max_entries=2)
    copy.replace(grouped.entries())
    assert copy.entries() == grouped.entries()
    copy.replace([*grouped.entries(), ("192.0.2.2", 5000.0, None)])  # three for two places
    assert len(copy) == 2 and copy.evictions == 1 and "192.0.2.2" in copy


def test_replace_copies_another_table(table: ExpiringIpTable, clock: FakeClock) -> None:
    source = ExpiringIpTable(60, clock=clock)
    source.record("192.0.2.1", user="taro")
    source.record("192.0.2.2", ttl=30)
    table.record("198.51.100.1")
    assert table.replace(source) == 2
    assert table.entries() == source.entries()
    source.remove("192.0.2.1")  # a copy: the source goes on alone
    source.record("192.0.2.3")
    assert [e.address for e in table.entries()] == ["192.0.2.2", "192.0.2.1"]
    clock.advance(30)
    assert table.expire() == 1 and "192.0.2.1" in table
    with pytest.raises(ValueError, match="/64"):
        table.replace(ExpiringIpTable(clock=clock, ipv6_prefix=64))
    assert "192.0.2.1" in table


def test_replace_checks_everything_before_it_changes_anything(table: ExpiringIpTable) -> None:
    table.record("192.0.2.1")
    before = table.entries()
    with pytest.raises(ValueError):
        table.replace([("192.0.2.9", 1300.0, None), ("mail.example", 1300.0, None)])
    with pytest.raises(TypeError):
        table.replace([("192.0.2.9", "soon", None)])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        table.replace([("192.0.2.9", 1300.0, 7)])  # type: ignore[list-item]
    assert table.entries() == before


def test_an_entry_in_both_contents_is_never_missing_while_they_swap() -> None:
    """Readers take no lock: while ``replace`` swaps one content for another, an address in
    both is found by every read (a replica relies on it: a reload must not let a known
    client drop out, even for a moment)."""
    table = ExpiringIpTable(1800)
    kept = request("192.0.2.200")
    rows: list[list[tuple[str, float, str | None]]] = [
        [(f"192.0.2.{n}", table.clock() + 600, None) for n in (*range(1, 100), 200)],
        [(f"198.51.100.{n}", table.clock() + 600, None) for n in range(1, 100)]
        + [("192.0.2.200", table.clock() + 900, "taro")],
    ]
    table.replace(rows[0])
    stop = threading.Event()
    reads = 0
    missing = 0

    def read() -> None:
        nonlocal reads, missing
        while not stop.is_set():
            reads += 1
            if not table.has_client(kept) or table.client_login(kept) is None:
                missing += 1

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(300):
            table.replace(rows[n % 2])
    finally:
        stop.set()
        reader.join()
    assert missing == 0 and reads > 0
