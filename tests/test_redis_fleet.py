"""The shared table against a real Redis: replicas, resume, reload, failure and recovery.

Every test starts its own ``redis-server`` (tests/redis_instance.py). Waiting for a change
to propagate polls with a generous deadline; no assertion is about how long anything took.
Staleness is driven by a fake clock, not by sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from realservers import free_port
from redis_instance import RedisInstance, running_redis

from relaypolicy import FirstMatch, LocalDomainOnly, Request, Verdict
from relaypolicy.fleet import ReplicaTable, StaleTable
from relaypolicy.iptable import ExpiringIpTable, IpEntry, IpTable
from relaypolicy.policies.popbeforesmtp import PopBeforeSmtp
from relaypolicy.testing import FakeClock

pytestmark = pytest.mark.real


@pytest.fixture
def replicas() -> Iterator[Callable[..., ReplicaTable]]:
    """Make started replicas; all are closed at the end of the test."""
    made: list[ReplicaTable] = []

    def make(url: str, *, start: bool = True, **options: object) -> ReplicaTable:
        table = ReplicaTable(url, 1800, **options)  # type: ignore[arg-type]
        made.append(table)
        if start:
            table.start()
            assert table.wait_synced(), table.fleet_stats()
        return table

    yield make
    for table in made:
        table.close()


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.005)


def holds(table: ReplicaTable, address: str, present: bool = True) -> Callable[[], bool]:
    return lambda: (address in table) is present


def login_of(table: ReplicaTable, address: str, user: str) -> Callable[[], bool]:
    def check() -> bool:
        entry = table.lookup(address)
        return entry is not None and entry.user == user

    return check


def chain(table: ReplicaTable) -> FirstMatch:
    return FirstMatch(PopBeforeSmtp(table), LocalDomainOnly(["example.org"]))


def relay(policy: FirstMatch, client: str) -> tuple[Verdict, int, str]:
    decision = policy.check(Request(client_address=client, recipient="friend@aho.jp"))
    return decision.verdict, decision.code, decision.status


ACCEPTED = (Verdict.ACCEPT, 250, "2.1.5")
REFUSED = (Verdict.REJECT, 554, "5.7.1")
DEFERRED = (Verdict.DEFER, 451, "4.3.0")
EXPIRY = "{relaypolicy:pop}:expiry"


class Checker:
    """Asks a replica about one address every couple of milliseconds, from a thread of its
    own, the three ways a server does (``has_client`` on the policy's path, ``lookup``,
    ``in``) plus a decision of the classic chain, and notes every answer that says live."""

    def __init__(self, table: ReplicaTable, address: str) -> None:
        self.table = table
        self.address = address
        self.policy = chain(table)
        self.request = Request(client_address=address, recipient="friend@aho.jp")
        self.polls = 0
        self.live: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Checker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        table, address = self.table, self.address
        while not self._stop.wait(0.002):
            try:
                if table.has_client(self.request):
                    self.live.append(f"has_client, poll {self.polls}")
            except StaleTable:
                pass  # unknown while stale: not live
            if table.lookup(address) is not None:
                self.live.append(f"lookup, poll {self.polls}")
            if address in table:
                self.live.append(f"in, poll {self.polls}")
            if self.policy.check(self.request).verdict is Verdict.ACCEPT:
                self.live.append(f"chain ACCEPT, poll {self.polls}")
            self.polls += 1

    def wait_polls(self, count: int) -> None:
        """Let the checker ask ``count`` more times (a bounded real-time wait)."""
        target = self.polls + count
        wait_until(lambda: self.polls >= target, f"{count} more polls")


def test_a_login_recorded_through_one_is_honoured_by_the_others(
    redis_server: RedisInstance, replicas: Callable[..., ReplicaTable]
) -> None:
    writer = replicas(redis_server.url)
    mx1, mx2 = replicas(redis_server.url), replicas(redis_server.unix_url)
    assert relay(chain(mx1), "192.0.2.7") == REFUSED
    writer.record("::ffff:192.0.2.7", user="taro", ttl=600)
    for mx in (mx1, mx2):
        wait_until(holds(mx, "192.0.2.7"), "the login reaches every replica")
        entry = mx.lookup("192.0.2.7")
        assert entry is not None and entry.user == "taro"
        assert relay(chain(mx), "192.0.2.7") == ACCEPTED
    writer.remove("192.0.2.7")
    for mx in (mx1, mx2):
        wait_until(holds(mx, "192.0.2.7", False), "the removal reaches every replica")
        assert relay(chain(mx), "192.0.2.7") == REFUSED


def test_a_replica_started_late_sees_everything_recorded_before(
    redis_server: RedisInstance, replicas: Callable[..., ReplicaTable]
) -> None:
    writer = replicas(redis_server.url)
    for n in range(1, 51):
        writer.record(f"198.51.100.{n}", user=f"user{n}", ttl=300 + n)
    writer.record("2001:db8::5", ttl=900)
    writer.remove("198.51.100.50")
    wait_until(lambda: writer.fleet_stats()["pending-writes"] == 0, "the writes are sent")
    late = replicas(redis_server.url)
    assert len(late) == 50
    assert "198.51.100.50" not in late
    entry = late.lookup("198.51.100.7")
    assert entry is not None and entry.user == "user7"
    assert 300 < entry.expires_at - late.clock() <= 307
    assert "2001:db8::5" in late
    assert late.fleet_stats()["loads"] == 1


def test_a_replica_cut_off_resumes_from_its_last_id(
    redis_server: RedisInstance, replicas: Callable[..., ReplicaTable]
) -> None:
    writer = replicas(redis_server.url)
    mx = replicas(redis_server.url)
    writer.record("192.0.2.1")
    wait_until(lambda: "192.0.2.1" in mx, "the first login arrives")
    mx.close()  # cut off: nothing is read while it is down
    writer.record("192.0.2.2", user="hanako")
    writer.remove("192.0.2.1")
    wait_until(lambda: writer.fleet_stats()["pending-writes"] == 0, "the writes are sent")
    assert "192.0.2.2" not in mx
    mx.start()
    wait_until(lambda: "192.0.2.2" in mx and "192.0.2.1" not in mx, "the replica catches up")
    assert mx.fleet_stats()["loads"] == 1  # resumed, not reloaded
    # Redis drops the connections: it reconnects and resumes, again without a reload.
    redis_server.client().client_kill_filter(_type="normal", skipme=True)
    writer.record("192.0.2.3")
    wait_until(lambda: "192.0.2.3" in mx, "a login after the disconnect arrives")
    assert mx.fleet_stats()["loads"] == 1


def test_the_stream_trimmed_past_a_replica_makes_it_reload(
    redis_server: RedisInstance, replicas: Callable[..., ReplicaTable]
) -> None:
    writer = replicas(redis_server.url, stream_length=5)
    mx = replicas(redis_server.url)
    writer.record("203.0.113.200")
    wait_until(lambda: "203.0.113.200" in mx, "the first login arrives")
    mx.close()
    for n in range(1, 21):
        writer.record(f"203.0.113.{n}", user="u")
    writer.remove("203.0.113.200")
    wait_until(lambda: writer.fleet_stats()["pending-writes"] == 0, "the writes are sent")
    assert redis_server.client().xlen("{relaypolicy:pop}:events") == 5
    mx.start()
    wait_until(lambda: mx.fleet_stats()["loads"] == 2, "the replica reloads")
    assert {e.address for e in mx.entries()} == {f"203.0.113.{n}" for n in range(1, 21)}
    assert {e.address for e in mx.entries()} == {e.address for e in writer.entries()}


def test_redis_stopped_then_killed_then_restarted_from_its_append_only_file(
    redis_server: RedisInstance, replicas: Callable[..., ReplicaTable]
) -> None:
    clock = FakeClock()
    writer = replicas(redis_server.url)
    mx = replicas(redis_server.url, clock=clock, max_staleness=10)
    policy = chain(mx)
    writer.record("192.0.2.10", user="known")
    wait_until(lambda: "192.0.2.10" in mx, "the login arrives")

    redis_server.pause()  # SIGSTOP: connections open, no answers
    assert relay(policy, "192.0.2.10") == ACCEPTED
    assert relay(policy, "192.0.2.99") == REFUSED  # not stale yet: an ordinary refusal
    clock.advance(9.5)
    assert relay(policy, "192.0.2.99") == REFUSED
    clock.advance(1)  # cut off for longer than max_staleness
    assert relay(policy, "192.0.2.10") == ACCEPTED  # a genuine allowance, still running
    assert relay(policy, "192.0.2.99") == DEFERRED
    assert mx.stale and mx.fleet_stats()["stale"]
    decision = policy.check(Request(client_address="192.0.2.99", recipient="x@aho.jp"))
    assert "stale" in decision.reason

    redis_server.kill()  # a crash: only the append-only file is left
    writer.record("192.0.2.11", user="during")  # waits in the writer's queue
    clock.advance(60)
    assert relay(policy, "192.0.2.10") == ACCEPTED
    assert relay(policy, "192.0.2.11") == DEFERRED
    assert relay(policy, "192.0.2.12") == DEFERRED

    redis_server.start()  # same port and directory: reloads its append-only file
    wait_until(lambda: not mx.stale, "the replica hears from Redis again")
    wait_until(lambda: "192.0.2.11" in mx, "the queued login is sent and arrives")
    assert mx.fleet_stats()["loads"] >= 2  # a new run_id: it reloaded
    assert relay(policy, "192.0.2.10") == ACCEPTED  # kept by the append-only file
    assert relay(policy, "192.0.2.11") == ACCEPTED
    assert relay(policy, "192.0.2.12") == REFUSED
    assert redis_server.client().zscore("{relaypolicy:pop}:expiry", "192.0.2.10") is not None


def test_a_replica_that_never_reached_redis_defers_every_unknown_client(
    replicas: Callable[..., ReplicaTable],
) -> None:
    mx = replicas(f"redis://127.0.0.1:{free_port()}/0", start=False, timeout=0.5)
    mx.start()
    assert relay(chain(mx), "192.0.2.1") == DEFERRED
    mx.record("192.0.2.1")  # recorded here: known locally even though Redis is away
    assert relay(chain(mx), "192.0.2.1") == ACCEPTED
    assert mx.fleet_stats()["pending-writes"] == 1


def test_a_replica_is_an_ip_table_by_shape_and_checks_before_it_queues(
    replicas: Callable[..., ReplicaTable],
) -> None:
    clock = FakeClock()
    mx = replicas(f"redis://127.0.0.1:{free_port()}/0", start=False, timeout=0.5, clock=clock)
    assert isinstance(mx, IpTable) and not isinstance(mx, ExpiringIpTable)
    with pytest.raises(ValueError):
        mx.record("mail.example")
    with pytest.raises(ValueError):
        mx.remove("mail.example")
    with pytest.raises(TypeError):
        mx.record("192.0.2.1", user="")
    with pytest.raises(ValueError):
        mx.record("192.0.2.1", ttl=-1)
    assert mx.fleet_stats()["pending-writes"] == 0 and len(mx) == 0
    mx.record("::ffff:192.0.2.1", user="taro", ttl=60)
    assert mx.lookup("192.0.2.1") == IpEntry("192.0.2.1", clock() + 60, "taro")
    assert mx.fleet_stats()["pending-writes"] == 1 and mx.changes > 0


def test_machine_clocks_do_not_matter_only_redis_time(
    redis_server: RedisInstance, replicas: Callable[..., ReplicaTable]
) -> None:
    ahead, behind = FakeClock(1_000_000_000.0), FakeClock(-5_000.0)
    writer = replicas(redis_server.url, clock=FakeClock(123.0))
    mx1 = replicas(redis_server.url, clock=ahead)
    mx2 = replicas(redis_server.url, clock=behind)
    writer.record("192.0.2.20", ttl=60)
    for mx in (mx1, mx2):
        wait_until(holds(mx, "192.0.2.20"), "the login arrives")
        entry = mx.lookup("192.0.2.20")
        assert entry is not None
        # The remaining time is the writer's ttl, wherever each machine's clock stands.
        assert 50 < entry.expires_at - mx.clock() <= 60.5
    client = redis_server.client()
    seconds, micros = client.time()
    stored = client.zscore("{relaypolicy:pop}:expiry", "192.0.2.20")
    assert stored is not None and 50 < stored - (seconds + micros / 1e6) <= 60.5
    ahead.advance(61)
    assert "192.0.2.20" not in mx1
    assert "192.0.2.20" in mx2


def test_ipv6_prefix_is_each_replicas_own(
    redis_server: RedisInstance, replicas: Callable[..., ReplicaTable]
) -> None:
    writer = replicas(redis_server.url)
    exact = replicas(redis_server.url)
    grouped = replicas(redis_server.url, ipv6_prefix=64)
    writer.record("2001:db8:1:2::abcd")
    wait_until(lambda: "2001:db8:1:2::abcd" in grouped, "the login arrives")
    wait_until(lambda: "2001:db8:1:2::abcd" in exact, "the login arrives")
    assert "2001:db8:1:2::1" in grouped
    assert "2001:db8:1:2::1" not in exact


def test_sentinel_failover_the_replica_follows_the_new_primary(
    replicas: Callable[..., ReplicaTable],
) -> None:
    # One primary, one Redis replica, one Sentinel (quorum 1): all redis-server, since the
    # Debian redis-sentinel package is only a link to it.
    with (
        running_redis() as primary,
        running_redis(f"replicaof 127.0.0.1 {primary.port}\n") as standby,
    ):
        monitor = (
            f"sentinel monitor fleet 127.0.0.1 {primary.port} 1\n"
            "sentinel down-after-milliseconds fleet 500\n"
            "sentinel failover-timeout fleet 5000\n"
        )
        with running_redis(monitor, sentinel=True) as sentinel:
            url = f"redis+sentinel://127.0.0.1:{sentinel.port}/fleet/0"
            writer = replicas(url)
            mx = replicas(url)
            writer.record("192.0.2.30", user="before")
            wait_until(holds(mx, "192.0.2.30"), "the login arrives through the primary")
            standby_client = standby.client()
            wait_until(
                lambda: standby_client.zscore("{relaypolicy:pop}:expiry", "192.0.2.30") is not None,
                "the Redis replica has the login",
            )
            primary.kill()
            wait_until(
                lambda: standby_client.info("replication")["role"] == "master",
                "Sentinel promotes the Redis replica",
                timeout=30,
            )
            writer.record("192.0.2.31", user="after")
            wait_until(holds(mx, "192.0.2.31"), "a login after the failover arrives", 30)
            assert "192.0.2.30" in mx
            assert mx.fleet_stats()["loads"] >= 2  # a new primary, a new run_id: reloaded


def test_sentinel_url_logs_in_as_its_acl_user(replicas: Callable[..., ReplicaTable]) -> None:
    """user:password@ in a redis+sentinel:// URL reaches the primary as that ACL user."""
    acl = "user relaypolicy on >s3cret ~{relaypolicy:pop}:* +@all\n"
    with running_redis(acl) as primary:
        monitor = (
            f"sentinel monitor fleet 127.0.0.1 {primary.port} 1\n"
            "sentinel down-after-milliseconds fleet 5000\n"
        )
        with running_redis(monitor, sentinel=True) as sentinel:
            base = f"127.0.0.1:{sentinel.port}/fleet/0"
            table = replicas(f"redis+sentinel://relaypolicy:s3cret@{base}")
            table.record("192.0.2.40", user="acl")
            client = primary.client()
            wait_until(
                lambda: client.zscore("{relaypolicy:pop}:expiry", "192.0.2.40") is not None,
                "the login written as the ACL user",
            )
            users = {c["user"] for c in client.client_list() if c["id"] != str(client.client_id())}
            assert "relaypolicy" in users
            wrong = replicas(f"redis+sentinel://relaypolicy:wrong@{base}", start=False)
            wrong.start()
            # real-time: a bounded wait for a sync that must not happen (bad password).
            assert not wrong.wait_synced(timeout=1.5)
            assert "192.0.2.40" not in wrong  # it never reached the primary


def test_rediss_url_reaches_redis_over_tls(
    tmp_path: Path, replicas: Callable[..., ReplicaTable]
) -> None:
    """rediss:// with a private CA (redis-py's ssl_ca_certs query option); a replica
    that does not trust the certificate never syncs (nothing is accepted in the clear)."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file, chain_file, key_file = (
        tmp_path / "ca.pem",
        tmp_path / "chain.pem",
        tmp_path / "key.pem",
    )
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_pem.write_to_path(str(key_file))
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(chain_file), append=True)
    tls_port = free_port()
    tls = (
        f"tls-port {tls_port}\ntls-cert-file {chain_file}\ntls-key-file {key_file}\n"
        f"tls-ca-cert-file {ca_file}\ntls-auth-clients no\n"
    )
    with running_redis(tls) as server:
        url = f"rediss://127.0.0.1:{tls_port}/0"
        writer = replicas(f"{url}?ssl_ca_certs={ca_file}")
        writer.record("192.0.2.50", user="tls")
        client = server.client()  # the plain port, to look
        wait_until(
            lambda: client.zscore("{relaypolicy:pop}:expiry", "192.0.2.50") is not None,
            "the login written over TLS",
        )
        untrusting = replicas(url, start=False)  # the system CAs do not know ours
        untrusting.start()
        # real-time: a bounded wait for a sync that must not happen (untrusted cert).
        assert not untrusting.wait_synced(timeout=1.5)
        assert untrusting.fleet_stats()["stale"] is True


# --- a removal wins over every older state ------------------------------------------------


@pytest.mark.parametrize("refuse_writes", [False, True], ids=["restart", "restart-no-writes"])
def test_a_removal_made_while_redis_is_down_never_comes_back(
    redis_server: RedisInstance, replicas: Callable[..., ReplicaTable], refuse_writes: bool
) -> None:
    """Recorded (and in Redis' append-only file), removed while Redis is down, Redis back
    from that file with the address in it: the replica never says the address is live again,
    polled every few ms through the restart, the reload and the resync. With
    ``refuse_writes`` the restarted Redis refuses writes for a while (``min-replicas-to-
    write``), as one waiting for its replicas does: the replica reloads while its removal
    cannot be sent, so the file's old entry is all Redis has to say."""
    address = "192.0.2.60"
    mx = replicas(redis_server.url)
    other = replicas(redis_server.url)
    client = redis_server.client()
    mx.record(address, user="leaving")
    wait_until(lambda: client.zscore(EXPIRY, address) is not None, "the login reaches Redis")
    wait_until(holds(other, address), "the login reaches the other server")
    redis_server.stop()
    assert mx.remove(address)
    with Checker(mx, address) as checker:
        checker.wait_polls(20)
        loads = mx.fleet_stats()["loads"]
        if refuse_writes:
            redis_server.extra = "min-replicas-to-write 1\nmin-replicas-max-lag 10\n"
        redis_server.start()  # from the append-only file: the address is back in Redis
        client = redis_server.client()
        wait_until(lambda: mx.fleet_stats()["loads"] > loads, "the replica reloads")
        if refuse_writes:
            checker.wait_polls(100)  # the reloaded replica, its removal still unsent
            assert client.zscore(EXPIRY, address) is not None
            assert mx.fleet_stats()["pending-writes"] == 1
            client.config_set("min-replicas-to-write", 0)
        wait_until(lambda: client.zscore(EXPIRY, address) is None, "the removal reaches Redis")
        wait_until(lambda: mx.fleet_stats()["unread-writes"] == 0, "it is read back")
        wait_until(holds(other, address, False), "the removal reaches the other server")
        checker.wait_polls(50)
    assert checker.live == []
    assert address not in mx and mx.lookup(address) is None


def test_a_login_after_a_removal_wins_and_never_flickers(
    redis_server: RedisInstance, replicas: Callable[..., ReplicaTable]
) -> None:
    """The other order: removed, then recorded again, both while Redis is down. The later
    login stands through the restart, on this server and then on the others."""
    address = "192.0.2.61"
    mx = replicas(redis_server.url)
    other = replicas(redis_server.url)
    mx.record(address, user="first", ttl=3600)
    wait_until(holds(other, address), "the first login reaches the other server")
    redis_server.stop()
    mx.remove(address)
    mx.record(address, user="second", ttl=600)
    request = Request(client_address=address, recipient="friend@aho.jp")
    missing: list[int] = []
    polls = 0
    redis_server.extra = "min-replicas-to-write 1\nmin-replicas-max-lag 10\n"
    loads = mx.fleet_stats()["loads"]
    redis_server.start()
    client = redis_server.client()

    def poll() -> None:
        nonlocal polls
        polls += 1
        entry = mx.lookup(address)
        if not mx.has_client(request) or entry is None or entry.user != "second":
            missing.append(polls)

    def reloaded() -> bool:
        poll()
        return bool(mx.fleet_stats()["loads"] > loads)

    wait_until(reloaded, "the replica reloads while its writes wait")
    client.config_set("min-replicas-to-write", 0)

    def settled() -> bool:
        poll()
        entry = other.lookup(address)
        return (
            entry is not None and entry.user == "second" and not mx.fleet_stats()["unread-writes"]
        )

    wait_until(settled, "both writes reach Redis and the other server")
    assert missing == []
    entry = mx.lookup(address)
    assert entry is not None and entry.expires_at - mx.clock() <= 600  # the first one is gone
    assert client.hget("{relaypolicy:pop}:users", address) == "second"


def test_a_change_from_another_server_goes_beneath_this_servers_unsent_writes(
    replicas: Callable[..., ReplicaTable],
) -> None:
    """A server whose writes Redis refuses (its ACL user may not write yet) keeps its own
    unsent writes over what the others change meanwhile: a removal it made stays removed
    when another server records the address, and a login it recorded keeps exactly its own
    time when another server removes the address, through a reconnect as well; once it
    may write, Redis and every replica end as its writes, the newer ones, say."""
    acl = "user mx on >pw ~* &* +@all -@write\n"
    with running_redis(acl) as server:
        port = server.port
        mx = replicas(f"redis://mx:pw@127.0.0.1:{port}/0")
        other = replicas(server.url)
        removed, kept = "192.0.2.70", "192.0.2.71"
        other.record(removed, user="old", ttl=3600)
        other.record(kept, user="old", ttl=3600)
        wait_until(lambda: removed in mx and kept in mx, "the logins reach mx")
        with Checker(mx, removed) as checker:
            mx.remove(removed)
            mx.record(kept, user="mine", ttl=60)
            events = mx.fleet_stats()["events"]
            other.record(removed, user="meanwhile", ttl=3600)  # older than mx's removal
            other.remove(kept)  # older than mx's login
            wait_until(lambda: mx.fleet_stats()["events"] >= events + 2, "mx reads both")
            assert removed not in mx
            entry = mx.lookup(kept)
            assert entry is not None and entry.user == "mine"
            assert entry.expires_at - mx.clock() <= 60  # not the 3600 s the removal ended
            assert mx.fleet_stats()["pending-writes"] == 2  # still refused by Redis
            # Cut off and back: mx reconnects and resumes where it was, writes still held.
            loads = mx.fleet_stats()["loads"]
            assert server.client().client_kill_filter(_type="normal", user="mx") >= 1
            other.record(removed, user="again", ttl=3600)
            wait_until(lambda: mx.fleet_stats()["events"] >= events + 3, "mx resumes")
            assert mx.fleet_stats()["loads"] == loads
            checker.wait_polls(20)
            server.client().acl_setuser("mx", enabled=True, passwords=["+pw"], commands=["+@write"])
            wait_until(
                lambda: mx.fleet_stats()["unread-writes"] + mx.fleet_stats()["pending-writes"] == 0,
                "mx's writes are read back",
            )
            for table in (mx, other):
                wait_until(holds(table, removed, False), "the removal wins everywhere")
                wait_until(login_of(table, kept, "mine"), "mx's login wins everywhere")
            checker.wait_polls(20)
        assert checker.live == []
        assert server.client().zscore(EXPIRY, removed) is None


def test_two_servers_writing_while_redis_is_away_end_alike(
    redis_server: RedisInstance, replicas: Callable[..., ReplicaTable]
) -> None:
    """One server removes, the other records the same address while Redis is down: when
    Redis is back, both servers and Redis end in the same state, the one of the write Redis
    took last."""
    address = "192.0.2.80"
    mx1, mx2 = replicas(redis_server.url), replicas(redis_server.url)
    mx1.record(address, ttl=3600)
    wait_until(holds(mx2, address), "the login reaches mx2")
    redis_server.stop()
    mx1.remove(address)
    mx2.record(address, user="back", ttl=600)
    redis_server.start()
    client = redis_server.client()

    def settled() -> bool:
        stats = [mx.fleet_stats() for mx in (mx1, mx2)]
        return all(s["pending-writes"] == 0 and s["unread-writes"] == 0 for s in stats)

    wait_until(settled, "both writes are read back")
    in_redis = client.zscore(EXPIRY, address) is not None
    for mx in (mx1, mx2):
        wait_until(holds(mx, address, in_redis), "every server agrees with Redis")


# --- a stale server still takes its own mail ----------------------------------------------


def test_a_server_cut_off_takes_mail_for_its_own_domains_and_defers_relays(
    redis_server: RedisInstance, replicas: Callable[..., ReplicaTable]
) -> None:
    clock = FakeClock()
    mx = replicas(redis_server.url, clock=clock, max_staleness=10)
    policy = chain(mx)
    redis_server.pause()
    clock.advance(11)  # cut off for longer than max_staleness
    assert mx.stale
    local = policy.check(Request(client_address="192.0.2.90", recipient="postmaster@example.org"))
    assert (local.verdict, local.code, local.reason) == (Verdict.ACCEPT, 250, "local")
    assert relay(policy, "192.0.2.90") == DEFERRED  # a relay: never accepted, never 554
    routed = policy.check(Request(client_address="192.0.2.90", recipient="x%aho.jp@example.org"))
    assert (routed.verdict, routed.code, routed.status) == DEFERRED
    redis_server.resume()
    wait_until(lambda: not mx.stale, "the replica hears from Redis again")
    assert relay(policy, "192.0.2.90") == REFUSED
