"""The shared table against a real Redis: replicas, resume, reload, failure and recovery.

Every test starts its own ``redis-server`` (tests/redis_instance.py). Waiting for a change
to propagate polls with a generous deadline; no assertion is about how long anything took.
Staleness is driven by a fake clock, not by sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from realservers import free_port
from redis_instance import RedisInstance, running_redis

from relaypolicy import FirstMatch, LocalDomainOnly, Request, Verdict
from relaypolicy.fleet import ReplicaTable
from relaypolicy.policies.popbeforesmtp import PopBeforeSmtp
from relaypolicy.testing import FakeClock

pytestmark = pytest.mark.real


@pytest.fixture
def redis_server() -> Iterator[RedisInstance]:
    with running_redis() as instance:
        yield instance


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


def chain(table: ReplicaTable) -> FirstMatch:
    return FirstMatch(PopBeforeSmtp(table), LocalDomainOnly(["example.org"]))


def relay(policy: FirstMatch, client: str) -> tuple[Verdict, int, str]:
    decision = policy.check(Request(client_address=client, recipient="friend@aho.jp"))
    return decision.verdict, decision.code, decision.status


ACCEPTED = (Verdict.ACCEPT, 250, "2.1.5")
REFUSED = (Verdict.REJECT, 554, "5.7.1")
DEFERRED = (Verdict.DEFER, 451, "4.3.0")


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
