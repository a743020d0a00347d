"""End to end: a real Postfix asks `relaypolicy serve`, the only gate, and a real SMTP
client from distinct loopback addresses gets the replies.

Postfix: ``smtpd_relay_restrictions = check_policy_service { inet:127.0.0.1:PORT,
default_action=DEFER }, reject``. relaypolicy runs as a separate process with the TOML file
below; `relaypolicy ctl` talks to its control socket.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import serve_process
from postfix_instance import PostfixConfig, PostfixInstance, RcptSession, running_postfix
from realservers import require_loopback_address, tail
from serve_process import Service

pytestmark = pytest.mark.real

OUTSIDER = "127.0.0.10"
TRUSTED = "127.0.0.11"
POP_CLIENT = "127.0.0.12"

CONFIG = """\
[domains]
local = ["local.test"]

[networks]
trusted = ["{trusted}/32"]

[pop_before_smtp]
ttl = 1800

[chain]
steps = ["trusted_networks", "sasl_permit", "pop_before_smtp", "local_domains"]

[log]
level = "info"
"""


def start_service(tmp_path: Path) -> Service:
    return serve_process.start_service(tmp_path, CONFIG.format(trusted=TRUSTED))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PostfixInstance, Service]]:
    for address in (OUTSIDER, TRUSTED, POP_CLIENT):
        require_loopback_address(address)
    service = start_service(tmp_path_factory.mktemp("serve"))
    gate = f"check_policy_service {{ inet:127.0.0.1:{service.port}, default_action=DEFER }}, reject"
    config = PostfixConfig(
        mydestination=["local.test"],
        mynetworks=["127.0.0.1/32"],
        extra={"smtpd_relay_restrictions": gate},
    )
    try:
        with running_postfix(config) as postfix:
            yield postfix, service
    finally:
        service.stop()


def ask(postfix: PostfixInstance, client: str, recipient: str) -> str:
    with RcptSession(postfix.host, postfix.port, client) as session:
        return str(session.ask(recipient, sender="sender@aho.jp"))


def test_local_foreign_and_routed(stack: tuple[PostfixInstance, Service]) -> None:
    postfix, service = stack
    assert ask(postfix, OUTSIDER, "user@local.test").startswith("250")
    foreign = ask(postfix, OUTSIDER, "user@aho.jp")
    assert foreign.startswith("554 5.7.1"), foreign
    assert "Relay access denied" in foreign
    for routed in ("user%aho.jp@local.test", "aho.jp!user@local.test", '"user@aho.jp"@local.test'):
        reply = ask(postfix, OUTSIDER, routed)
        assert reply.startswith("554 5.7.1"), (routed, reply, tail(service.log))


def test_trusted_network_relays(stack: tuple[PostfixInstance, Service]) -> None:
    postfix, _ = stack
    assert ask(postfix, TRUSTED, "user@aho.jp").startswith("250")


def test_pop_before_smtp_entry_added_by_ctl_relays_until_it_expires(
    stack: tuple[PostfixInstance, Service],
) -> None:
    postfix, service = stack
    assert ask(postfix, POP_CLIENT, "user@aho.jp").startswith("554")
    added = service.ctl("add", POP_CLIENT, "--ttl", "3", "--user", "taro")
    assert added["ok"] is True
    listed = service.ctl("table")
    assert any(e["address"] == POP_CLIENT for e in listed["entries"])  # type: ignore[attr-defined]
    assert ask(postfix, POP_CLIENT, "user@aho.jp").startswith("250")
    # A real process on a real clock: wait out the 3 s allowance (bounded), then refused.
    deadline = time.monotonic() + 15
    while True:
        reply = ask(postfix, POP_CLIENT, "user@aho.jp")
        if reply.startswith("554") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert reply.startswith("554 5.7.1"), reply
    # A login hook's "record" (the push feed), then an admin withdrawing the address:
    # both take effect at once.
    assert service.ctl("record", POP_CLIENT, "--user", "taro")["ok"] is True
    assert ask(postfix, POP_CLIENT, "user@aho.jp").startswith("250")
    assert service.ctl("remove", POP_CLIENT)["removed"] is True
    assert ask(postfix, POP_CLIENT, "user@aho.jp").startswith("554")


def test_stats_and_decision_log(stack: tuple[PostfixInstance, Service]) -> None:
    postfix, service = stack
    ask(postfix, OUTSIDER, "counted@aho.jp")
    stats = service.ctl("stats")["stats"]
    assert isinstance(stats, dict)
    assert stats["requests"] >= 1
    assert stats["reason:not-local"] >= 1
    log = service.log.read_text()
    assert "recipient=<counted@aho.jp> verdict=REJECT policy=local_domains" in log


def test_reload_with_broken_file_keeps_serving(stack: tuple[PostfixInstance, Service]) -> None:
    postfix, service = stack
    good = service.config.read_text()
    try:
        service.config.write_text(good + "\n[chain]\nsteps = ['nonsense']\n")
        reply = service.ctl("reload")
        assert reply["ok"] is False
        assert "keeping the running configuration" in str(reply["result"])
        assert ask(postfix, OUTSIDER, "user@local.test").startswith("250")
        assert ask(postfix, OUTSIDER, "user@aho.jp").startswith("554")
        # SIGHUP too
        os.kill(service.process.pid, signal.SIGHUP)
        assert ask(postfix, TRUSTED, "user@aho.jp").startswith("250")
    finally:
        service.config.write_text(good)
    assert service.ctl("reload")["ok"] is True


def test_service_down_means_postfix_default_action_never_a_relay(
    serve: Callable[[str], Service],
) -> None:
    require_loopback_address(OUTSIDER)
    service = serve(CONFIG.format(trusted=TRUSTED))
    gate = f"check_policy_service {{ inet:127.0.0.1:{service.port}, default_action=DEFER }}, reject"
    config = PostfixConfig(mydestination=["local.test"], extra={"smtpd_relay_restrictions": gate})
    with running_postfix(config) as postfix:
        assert ask(postfix, TRUSTED, "user@aho.jp").startswith("250")
        assert service.stop() == 0  # SIGTERM: a clean exit
        for client in (TRUSTED, OUTSIDER):
            reply = ask(postfix, client, "user@aho.jp")
            assert reply.startswith("4"), reply  # Postfix's default_action: DEFER
        assert "stopping" in service.log.read_text()


def test_sigterm_under_load_loses_no_answered_request(serve: Callable[[str], Service]) -> None:
    """Many clients keep asking while SIGTERM arrives: every request that got an answer
    got a complete, correct one, and the service exits 0."""
    service = serve(CONFIG.format(trusted=TRUSTED))
    request = (
        b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=203.0.113.7\n"
        b"recipient=user@aho.jp\n\n"
    )
    answered: list[int] = []
    bad: list[bytes] = []

    def client() -> None:
        count = 0
        try:
            with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
                stream = sock.makefile("rb")
                while True:
                    sock.sendall(request)
                    answer = stream.readline() + stream.readline()
                    if not answer:
                        break  # closed by the shutdown: this request was never answered
                    if answer != b"action=554 5.7.1 Relay access denied\n\n":
                        bad.append(answer)
                        break
                    count += 1
        except OSError:
            pass
        answered.append(count)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # real load on a real process
    assert service.stop() == 0
    for thread in threads:
        thread.join(timeout=20)
    assert bad == []
    assert len(answered) == 8
    assert sum(answered) > 0
    log = service.log.read_text()
    assert "stopping: finishing requests in hand" in log
