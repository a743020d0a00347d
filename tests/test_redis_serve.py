"""End to end: `relaypolicy serve` processes sharing one real Redis.

A login added through one service's control socket (`relaypolicy ctl add`, what a login
hook does) is honoured by the others, over the Postfix policy protocol; a removal
propagates; a service started late sees what was recorded before; with Redis killed a
service keeps accepting the clients it knows and defers the others, and recovers by itself
when Redis comes back from its append-only file.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import serve_process
from redis_instance import RedisInstance, running_redis
from serve_process import Service

pytestmark = pytest.mark.real

CONFIG = """\
[domains]
local = ["local.test"]

[pop_before_smtp]
ttl = 1800
state = "{url}"
max_staleness = 1

[chain]
steps = ["pop_before_smtp", "local_domains"]
"""


def ask(service: Service, client: str, recipient: str = "friend@elsewhere.test") -> str:
    """The action `relaypolicy serve` gives for ``recipient`` (by default a relay) from
    ``client``."""
    return service.ask(recipient, client=client, sender="someone@local.test")


def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[RedisInstance, Callable[[str], Service]]]:
    services: list[Service] = []
    with running_redis() as redis_server:

        def start(name: str) -> Service:
            directory = tmp_path / name
            directory.mkdir()
            service = serve_process.start_service(directory, CONFIG.format(url=redis_server.url))
            services.append(service)
            return service

        try:
            yield redis_server, start
        finally:
            for service in services:
                assert service.stop() == 0


def test_services_share_logins_and_fail_closed_without_redis(
    fleet: tuple[RedisInstance, Callable[[str], Service]],
) -> None:
    redis_server, start = fleet
    mx_a, mx_b = start("a"), start("b")
    eventually(lambda: ask(mx_b, "192.0.2.44").startswith("554 5.7.1"), "B is in sync")

    assert mx_a.ctl("add", "192.0.2.44", "--user", "taro")["ok"]
    eventually(lambda: ask(mx_b, "192.0.2.44") == "OK", "B honours the login A recorded")
    assert ask(mx_a, "192.0.2.44") == "OK"
    assert ask(mx_b, "192.0.2.45").startswith("554 5.7.1")

    assert mx_b.ctl("add", "192.0.2.46")["ok"]
    assert mx_a.ctl("remove", "192.0.2.44")["ok"]
    eventually(lambda: ask(mx_b, "192.0.2.44").startswith("554"), "the removal reaches B")

    late = start("late")
    eventually(lambda: ask(late, "192.0.2.46") == "OK", "a late service sees earlier logins")
    assert ask(late, "192.0.2.44").startswith("554")
    stats = mx_b.ctl("stats")["stats"]
    assert isinstance(stats, dict)
    assert stats["fleet-state"] == redis_server.url and stats["fleet-stale"] is False

    redis_server.kill()
    assert ask(mx_b, "192.0.2.46") == "OK"  # known: a genuine allowance
    eventually(
        lambda: ask(mx_b, "192.0.2.47").startswith("451 4.3.0"),
        "an unknown client is deferred once B is cut off for max_staleness",
    )
    assert ask(mx_b, "192.0.2.46") == "OK"
    assert mx_a.ctl("add", "192.0.2.48")["ok"]  # queued while Redis is down

    redis_server.start()  # from its append-only file
    eventually(lambda: ask(mx_b, "192.0.2.47").startswith("554"), "B recovers by itself")
    eventually(lambda: ask(mx_b, "192.0.2.48") == "OK", "the queued login reaches B")
    assert ask(mx_b, "192.0.2.46") == "OK"


def test_a_watcher_on_the_pop_server_feeds_every_mta(
    fleet: tuple[RedisInstance, Callable[[str], Service]], tmp_path: Path
) -> None:
    """`relaypolicy watch` on the POP server writes to Redis; two MTAs' services see it."""
    import signal
    import subprocess
    import sys

    redis_server, start = fleet
    mta_a, mta_c = start("a"), start("c")
    log = tmp_path / "dovecot.log"
    log.write_text("")
    config = tmp_path / "pop-server.toml"
    config.write_text(
        CONFIG.format(url=redis_server.url)
        + f'\n[watch]\nlog = "{log}"\nformat = "dovecot"\ninterval = 0.05\n'
    )
    output = (tmp_path / "watch.out").open("wb")
    watcher = subprocess.Popen(
        [sys.executable, "-m", "relaypolicy", "watch", "--config", str(config)],
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    try:
        # A service takes requests before its first load (and defers relays until then).
        eventually(lambda: ask(mta_a, "127.0.0.21").startswith("554 5.7.1"), "A is in sync")
        eventually(lambda: ask(mta_c, "127.0.0.21").startswith("554 5.7.1"), "C is in sync")
        with log.open("a") as stream:
            stream.write(
                time.strftime("%b %d %H:%M:%S")
                + " pop3-login: Info: Login: user=<taro>, method=PLAIN, rip=127.0.0.21, "
                "lip=127.0.0.1, mpid=1, session=<abc>\n"
            )
        eventually(lambda: ask(mta_a, "127.0.0.21") == "OK", "MTA A lets the POP client relay")
        eventually(lambda: ask(mta_c, "127.0.0.21") == "OK", "MTA C lets the POP client relay")
        assert ask(mta_c, "127.0.0.22").startswith("554 5.7.1")
    finally:
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=20) == 0, (tmp_path / "watch.out").read_text()


def test_a_service_cut_off_still_takes_mail_for_its_own_domains(
    fleet: tuple[RedisInstance, Callable[[str], Service]],
) -> None:
    """Cut off from Redis for longer than max_staleness, an MX defers relays from clients
    it does not know (they may be POP users elsewhere in the fleet) and keeps taking mail
    for its own domains, which needs no table."""
    redis_server, start = fleet
    mx = start("a")
    eventually(lambda: ask(mx, "192.0.2.50").startswith("554 5.7.1"), "the service is in sync")
    redis_server.kill()
    eventually(
        lambda: ask(mx, "192.0.2.50").startswith("451 4.3.0"),
        "a relay from an unknown client is deferred once cut off for max_staleness",
    )
    assert ask(mx, "192.0.2.50", "postmaster@local.test") == "OK"
    assert ask(mx, "192.0.2.51", "someone@LOCAL.test") == "OK"
    assert ask(mx, "192.0.2.51", "someone%elsewhere.test@local.test").startswith("451 4.3.0")
    assert ask(mx, "192.0.2.51").startswith("451 4.3.0")


def test_a_removal_while_redis_is_down_never_lets_the_client_relay_again(
    fleet: tuple[RedisInstance, Callable[[str], Service]],
) -> None:
    """`ctl remove` while Redis is down, then Redis back from its append-only file (refusing
    writes for a while, so the service reloads before its removal can be sent): policy
    requests sent one after another all through it never get OK for that client."""
    redis_server, start = fleet
    mx = start("a")
    address = "192.0.2.52"
    assert mx.ctl("add", address, "--user", "leaving")["ok"]
    client = redis_server.client()
    eventually(lambda: client.zscore("{relaypolicy:pop}:expiry", address) is not None, "in Redis")
    assert ask(mx, address) == "OK"
    redis_server.stop()
    assert mx.ctl("remove", address)["ok"]
    answers: list[str] = []
    done = threading.Event()

    def keep_asking() -> None:
        while not done.is_set():
            answers.append(ask(mx, address))

    def reloads() -> int:
        stats = mx.ctl("stats")["stats"]
        assert isinstance(stats, dict)
        return int(stats["fleet-loads"])

    asker = threading.Thread(target=keep_asking, daemon=True)
    asker.start()
    try:
        loads = reloads()
        redis_server.extra = "min-replicas-to-write 1\nmin-replicas-max-lag 10\n"
        redis_server.start()
        client = redis_server.client()
        eventually(lambda: reloads() > loads, "the service reloads")
        asked = len(answers)
        eventually(lambda: len(answers) > asked + 50, "more requests after the reload")
        assert client.zscore("{relaypolicy:pop}:expiry", address) is not None  # not sent yet
        client.config_set("min-replicas-to-write", 0)
        eventually(lambda: client.zscore("{relaypolicy:pop}:expiry", address) is None, "sent")
        asked = len(answers)
        eventually(lambda: len(answers) > asked + 50, "more requests after the resync")
    finally:
        done.set()
        asker.join(30)
    assert "OK" not in answers
    assert answers[-1].startswith("554 5.7.1")
