"""ExpiringIpTable against a naive model: a dict of canonical address -> (expires_at, user).

Hypothesis drives random sequences of record / lookup / remove / advance-clock / expire
(and, with ``max_entries``, eviction) and checks that the table answers as the model does.
The model normalises addresses with :mod:`ipaddress` directly, not through the table.
"""

from __future__ import annotations

import ipaddress

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from relaypolicy import Request
from relaypolicy.iptable import ExpiringIpTable, IpEntry, Login
from relaypolicy.testing import FakeClock

TTL = 30.0

# Few distinct clients, each written several ways, so that records collide often.
ADDRESSES = [
    "203.0.113.7",
    "::ffff:203.0.113.7",
    "[203.0.113.7]",
    "203.0.113.8",
    "0.0.0.1",
    "::1",
    "::1.2.3.4",
    "1.2.3.4",
    "2001:db8:1:2::5",
    "2001:DB8:1:2:0:0:0:5",
    "2001:db8:1:2:ffff::1",
    "2001:db8:1:3::5",
    "fe80::1%eth0",
]
USERS = [None, "alice", "bob"]
TTLS = [None, 0.5, 1.0, 5.0, 29.0, 60.0]
STEPS = [0.0, 0.25, 0.5, 1.0, 4.75, 5.0, TTL - 1, TTL, TTL + 1, 100.0]


def model_key(address: str, prefix: int) -> str:
    ip = ipaddress.ip_address(address.strip("[]").split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if prefix < 128:
            return str(ipaddress.IPv6Network((ip, prefix), strict=False))
    return str(ip)


class TableMachine(RuleBasedStateMachine):
    prefix = 128
    max_entries: int | None = None

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(100.0)
        self.table = ExpiringIpTable(
            TTL, clock=self.clock, max_entries=self.max_entries, ipv6_prefix=self.prefix
        )
        self.model: dict[str, tuple[float, str | None]] = {}
        self.evictions = 0

    def live(self) -> dict[str, tuple[float, str | None]]:
        now = self.clock()
        return {key: value for key, value in self.model.items() if value[0] > now}

    @rule(
        address=st.sampled_from(ADDRESSES),
        user=st.sampled_from(USERS),
        ttl=st.sampled_from(TTLS) | st.floats(0.001, 100.0),
    )
    def record(self, address: str, user: str | None, ttl: float | None) -> None:
        key = model_key(address, self.prefix)
        expires = self.clock() + (TTL if ttl is None else ttl)
        live = self.live()
        old = live.get(key)
        full = old is None and self.max_entries is not None and len(live) >= self.max_entries
        before = {entry.address for entry in self.table.entries()}
        self.table.record(address, user=user, ttl=ttl)
        if full:
            # The table must have evicted one of the live entries that expire soonest.
            soonest = min(expires for expires, _ in live.values())
            gone = before - {entry.address for entry in self.table.entries()}
            assert len(gone) == 1
            evicted = gone.pop()
            assert live[evicted][0] == soonest
            del live[evicted]
            self.evictions += 1
        assert self.table.evictions == self.evictions
        live[key] = (expires if old is None else max(expires, old[0]), user)
        self.model = live

    @rule(address=st.sampled_from(ADDRESSES))
    def lookup(self, address: str) -> None:
        key = model_key(address, self.prefix)
        found = self.live().get(key)
        expected = None if found is None else IpEntry(key, found[0], found[1])
        assert self.table.lookup(address) == expected
        assert (address in self.table) is (found is not None)

    @rule(address=st.sampled_from(ADDRESSES))
    def match_request(self, address: str) -> None:
        request = Request(client_address=address, recipient="user@elsewhere.example")
        found = self.live().get(model_key(address, self.prefix))
        assert self.table.has_client(request) is (found is not None)
        login = self.table.client_login(request)
        assert login == (None if found is None else Login(found[1]))

    @rule(address=st.sampled_from(ADDRESSES))
    def remove(self, address: str) -> None:
        key = model_key(address, self.prefix)
        was_live = key in self.live()
        self.model.pop(key, None)
        assert self.table.remove(address) is was_live

    @rule(seconds=st.sampled_from(STEPS) | st.floats(0.0, 50.0))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def expire(self) -> None:
        removed = self.table.expire()
        assert removed >= 0
        self.model = self.live()
        assert len(self.table._expiry) == len(self.model)

    @rule()
    def length(self) -> None:
        assert len(self.table) == len(self.live())

    @rule()
    def snapshot(self) -> None:
        entries = self.table.entries()
        times = [entry.expires_at for entry in entries]
        assert times == sorted(times)
        expected = [IpEntry(key, expires, user) for key, (expires, user) in self.live().items()]
        assert sorted(entries) == sorted(expected)

    @invariant()
    def queue_stays_compact(self) -> None:
        table = self.table
        queued = len(table._times) + len(table._heap)
        assert queued <= 2 * len(table._expiry) + 64 + 1
        if self.max_entries is not None:
            assert len(table._expiry) <= self.max_entries


class GroupedTableMachine(TableMachine):
    prefix = 64


class BoundedTableMachine(TableMachine):
    max_entries = 3


SETTINGS = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestTable = TableMachine.TestCase
TestTable.settings = SETTINGS
TestGroupedTable = GroupedTableMachine.TestCase
TestGroupedTable.settings = SETTINGS
TestBoundedTable = BoundedTableMachine.TestCase
TestBoundedTable.settings = SETTINGS
