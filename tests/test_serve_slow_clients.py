"""Fault injection end to end: slow clients hold every slot of `relaypolicy serve`, and a
real Postfix still gets its answers.

Each slow client sends one byte of a request that never ends every 0.2 s (never idle for
``idle_timeout``) and reconnects whenever it is cut off. Postfix asks with
``default_action=DEFER``: a connection it cannot use shows as a 4xx, never as the policy's
``554 5.7.1``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest
from postfix_instance import PostfixConfig, RcptSession, running_postfix
from realservers import require_loopback_address, tail
from serve_process import Service

pytestmark = pytest.mark.real

OUTSIDER = "127.0.0.10"
SLOTS = 3

CONFIG = """\
[domains]
local = ["local.test"]

[networks]
trusted = ["127.0.0.11/32"]

[chain]
steps = ["trusted_networks", "local_domains"]
"""


def trickle(port: int, stop: threading.Event) -> None:
    """One slow client: a request that never ends, a byte every 0.2 s, reconnecting."""
    payload = b"request=smtpd_access_policy\nx_padding="
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.settimeout(0.2)
                sent = 0
                while not stop.is_set():
                    sock.sendall(payload[sent : sent + 1] if sent < len(payload) else b"y")
                    sent += 1
                    try:
                        if sock.recv(1024) == b"":
                            break  # cut off: come back
                    except TimeoutError:
                        pass
        except OSError:
            time.sleep(0.05)  # real-time: reconnect after a cut, as Postfix does


@pytest.fixture()
def service(serve: Callable[[str], Service]) -> Service:
    service = serve(CONFIG)
    # start_service's [serve] section is the file's last: these keys land in it.
    with service.config.open("a") as config:
        config.write(f"max_connections = {SLOTS}\nrequest_timeout = 2\n")
    assert service.ctl("reload")["ok"] is True, tail(service.log)
    return service


def test_postfix_is_answered_while_slow_clients_hold_every_slot(service: Service) -> None:
    require_loopback_address(OUTSIDER)
    gate = f"check_policy_service {{ inet:127.0.0.1:{service.port}, default_action=DEFER }}, reject"
    config = PostfixConfig(mydestination=["local.test"], extra={"smtpd_relay_restrictions": gate})
    stop = threading.Event()
    slow = [threading.Thread(target=trickle, args=(service.port, stop)) for _ in range(SLOTS)]
    with running_postfix(config) as postfix:
        for thread in slow:
            thread.start()
        try:
            deadline = time.monotonic() + 20
            while service.ctl("stats")["stats"]["connections-open"] != SLOTS:  # type: ignore[index]
                assert time.monotonic() < deadline, "the slow clients never held every slot"
                time.sleep(0.05)  # real-time: poll the real service, bounded
            time.sleep(0.5)  # real-time: every slot trickling
            with RcptSession(postfix.host, postfix.port, OUTSIDER, timeout=60) as session:
                for recipient in ("user@aho.jp", "user@local.test", "other@aho.jp"):
                    reply = str(session.ask(recipient, sender="sender@aho.jp"))
                    expected = "250" if recipient.endswith("local.test") else "554 5.7.1"
                    assert reply.startswith(expected), (recipient, reply, tail(service.log))
        finally:
            stop.set()
            for thread in slow:
                thread.join(10)
    stats = service.ctl("stats")["stats"]
    assert stats["connections-evicted"] >= 1, stats  # type: ignore[index]
