"""End to end: a real Postfix asks `relaypolicy milter`, its only relay gate, and real SMTP
clients from distinct loopback addresses get the replies.

Postfix (see ``milter_process.postfix_milter_settings`` and docs/milter.md):
``smtpd_relay_restrictions = check_client_access static:OK, reject`` (everything passes
Postfix's own checks, so the milter alone decides), ``smtpd_milters`` = the milter,
``milter_default_action = tempfail``, the macros relaypolicy reads, and Dovecot SASL so a
login reaches the milter as ``{auth_authen}``. relaypolicy runs as a separate process;
`relaypolicy ctl` talks to its control socket.
"""

from __future__ import annotations

import contextlib
import os
import signal
import smtplib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dovecot_instance import running_dovecot
from milter_process import postfix_milter_settings, start_milter
from postfix_instance import PostfixConfig, PostfixInstance, RcptSession, running_postfix
from realservers import audit_json, require_binary, require_loopback_address, tail
from serve_process import Service

from relaypolicy.testing.probes import relay_probes

pytestmark = pytest.mark.real

TRUSTED = "127.0.0.1"
OUTSIDER = "127.0.0.10"

CONFIG = """\
[domains]
local = ["local.test"]
relay = ["relay.test"]

[networks]
trusted = ["127.0.0.1/32"]

[pop_before_smtp]
ttl = 1800

[chain]
steps = ["trusted_networks", "sasl_permit", "pop_before_smtp", "local_domains"]

[log]
level = "info"
"""


@dataclass
class Stack:
    postfix: PostfixInstance
    milter: Service


def postfix_config(milter_port: int, **extra: str) -> PostfixConfig:
    return PostfixConfig(
        mydestination=["local.test"],
        relay_domains=["relay.test"],
        mynetworks=["127.0.0.1/32"],
        extra={**postfix_milter_settings(milter_port), **extra},
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_loopback_address(OUTSIDER)
    with contextlib.ExitStack() as cleanup:
        milter = start_milter(tmp_path_factory.mktemp("milter"), CONFIG)
        cleanup.callback(milter.stop)
        dovecot = cleanup.enter_context(running_dovecot(users={"taro": "secret"}))
        sasl = {
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "dovecot",
            "smtpd_sasl_path": str(dovecot.auth_socket),
            "smtpd_tls_auth_only": "no",  # loopback only, no TLS in this test
        }
        postfix = cleanup.enter_context(running_postfix(postfix_config(milter.port, **sasl)))
        yield Stack(postfix, milter)


def ask(postfix: PostfixInstance, client: str, recipient: str, sender: str = "s@aho.jp") -> str:
    with RcptSession(postfix.host, postfix.port, client) as session:
        return str(session.ask(recipient, sender=sender))


def test_trusted_client_relays_stranger_only_to_our_domains(stack: Stack) -> None:
    postfix = stack.postfix
    for client in (TRUSTED, OUTSIDER):
        assert ask(postfix, client, "user@local.test").startswith("250"), client
        assert ask(postfix, client, "user@sub.relay.test").startswith("250"), client
    assert ask(postfix, TRUSTED, "user@aho.jp").startswith("250")
    foreign = ask(postfix, OUTSIDER, "user@aho.jp")
    assert foreign == "554 5.7.1 <user@aho.jp>: Relay access denied", foreign
    assert "milter-reject: RCPT from unknown[127.0.0.10]" in postfix.log_tail(20)


@pytest.mark.parametrize(
    "routed",
    [
        "user%aho.jp@local.test",
        "aho.jp!user@local.test",
        '"user@aho.jp"@local.test',
        "user@aho.jp@local.test",
        "@local.test:user@aho.jp",
        "user%aho.jp@relay.test",
    ],
)
def test_routing_tricks_are_refused_to_strangers(stack: Stack, routed: str) -> None:
    reply = ask(stack.postfix, OUTSIDER, routed)
    assert reply.startswith("554 5.7.1"), (routed, reply, tail(stack.milter.log))


def test_decisions_see_what_postfix_sent(stack: Stack) -> None:
    ask(stack.postfix, OUTSIDER, "seen@aho.jp", sender="who@example.org")
    line = stack.milter.wait_for_log(r"^.*recipient=<seen@aho\.jp>.*$").group(0)
    assert "client=127.0.0.10 sender=<who@example.org>" in line
    assert "verdict=REJECT policy=local_domains reason=not-local" in line
    stats = stack.milter.ctl("stats")["stats"]
    assert isinstance(stats, dict)
    assert stats["recipients"] >= 1
    assert stats["reason:not-local"] >= 1
    assert "no-client-address" not in stats  # Postfix always sent the client address


@contextlib.contextmanager
def smtp_session(postfix: PostfixInstance, client: str) -> Iterator[smtplib.SMTP]:
    smtp = smtplib.SMTP(postfix.host, postfix.port, timeout=10, source_address=(client, 0))
    try:
        code, text = smtp.ehlo("client.relaypolicy.test")
        assert code == 250, text
        yield smtp
    finally:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            smtp.quit()


def rcpt(smtp: smtplib.SMTP, recipient: str, sender: str = "taro@local.test") -> str:
    """The reply to MAIL if it fails, else to RCPT; then RSET."""
    code, text = smtp.docmd("MAIL", f"FROM:<{sender}>")
    if code == 250:
        code, text = smtp.docmd("RCPT", f"TO:<{recipient}>")
    smtp.docmd("RSET")
    return f"{code} {text.decode(errors='replace')}"


def test_smtp_auth_reaches_the_milter_as_auth_authen(stack: Stack) -> None:
    with smtp_session(stack.postfix, OUTSIDER) as smtp:
        assert rcpt(smtp, "before-login@aho.jp").startswith("554 5.7.1")
        code, text = smtp.login("taro", "secret")
        assert code == 235, text
        assert rcpt(smtp, "after-login@aho.jp").startswith("250")
        # A routing trick is fine for an authenticated client, as through the service.
        assert rcpt(smtp, "user%aho.jp@local.test").startswith("250")
    line = stack.milter.wait_for_log(r"^.*recipient=<after-login@aho\.jp>.*$").group(0)
    assert "verdict=ACCEPT policy=sasl_permit reason=sasl-authenticated" in line


def test_swaks_with_and_without_auth(stack: Stack) -> None:
    binary = require_binary("swaks")

    def swaks(recipient: str, *auth: str) -> str:
        done = subprocess.run(
            [
                binary,
                "--server",
                f"{stack.postfix.host}:{stack.postfix.port}",
                "--local-interface",
                OUTSIDER,
                *auth,
                "--from",
                "taro@local.test",
                "--to",
                recipient,
                "--quit-after",
                "RCPT",
                "--timeout",
                "20",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return done.stdout

    assert "<** 554 5.7.1 <swaks@aho.jp>: Relay access denied" in swaks("swaks@aho.jp")
    out = swaks(
        "swaks-auth@aho.jp", "--auth", "PLAIN", "--auth-user", "taro", "--auth-password", "secret"
    )
    assert "<-  250 2.1.5 Ok" in out, out


def test_pop_before_smtp_login_relays_until_it_expires(stack: Stack) -> None:
    postfix, milter = stack.postfix, stack.milter
    assert ask(postfix, OUTSIDER, "pop@aho.jp").startswith("554")
    assert milter.ctl("add", OUTSIDER, "--ttl", "3", "--user", "taro")["ok"] is True
    try:
        assert ask(postfix, OUTSIDER, "pop@aho.jp").startswith("250")
        line = milter.wait_for_log(r"^.*recipient=<pop@aho\.jp> verdict=ACCEPT.*$").group(0)
        assert "policy=pop_before_smtp" in line
        # real-time: a real process on a real clock; wait out the 3 s allowance (bounded).
        deadline = time.monotonic() + 30
        reply = ask(postfix, OUTSIDER, "pop@aho.jp")
        while reply.startswith("250") and time.monotonic() < deadline:
            time.sleep(0.5)
            reply = ask(postfix, OUTSIDER, "pop@aho.jp")
        assert reply.startswith("554 5.7.1"), reply
    finally:
        milter.ctl("remove", OUTSIDER)


def test_audit_from_a_stranger_finds_no_open_relay(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    postfix = stack.postfix
    report = audit_json(
        postfix.host, postfix.port, OUTSIDER, capsys, "--relay-domain", "relay.test"
    )
    total = len(relay_probes("local.test", relay_domain="relay.test"))
    assert report["status"] == 0, report["summary"]
    assert report["summary"] == f"not an open relay: 0/{total} probes accepted"
    assert {probe["code"] // 100 for probe in report["probes"]} == {5}


def test_reload_on_sighup_and_a_broken_file_keeps_serving(stack: Stack) -> None:
    postfix, milter = stack.postfix, stack.milter
    good = milter.config.read_text()
    try:
        # The stranger's network becomes trusted: after SIGHUP it relays.
        milter.config.write_text(good.replace('["127.0.0.1/32"]', '["127.0.0.0/24"]'))
        os.kill(milter.process.pid, signal.SIGHUP)
        milter.wait_for_log(r"reloaded .*relaypolicy\.toml")
        assert ask(postfix, OUTSIDER, "reload@aho.jp").startswith("250")
        milter.config.write_text(good + "\n[chain]\nsteps = ['nonsense']\n")
        reply = milter.ctl("reload")
        assert reply["ok"] is False
        assert ask(postfix, OUTSIDER, "still@aho.jp").startswith("250")  # the running one
    finally:
        milter.config.write_text(good)
    assert milter.ctl("reload")["ok"] is True
    assert ask(postfix, OUTSIDER, "again@aho.jp").startswith("554")


def test_daemon_port_selects_the_chain_of_that_port(stack: Stack) -> None:
    """Postfix sends ``{daemon_port}`` (milter_connect_macros): a chain for the port the
    client connected to applies; here one without ``trusted_networks``."""
    postfix, milter = stack.postfix, stack.milter
    good = milter.config.read_text()
    try:
        milter.config.write_text(good + f'\n[chain.ports]\n{postfix.port} = ["local_domains"]\n')
        assert milter.ctl("reload")["ok"] is True
        assert ask(postfix, TRUSTED, "port@aho.jp").startswith("554 5.7.1")
        assert ask(postfix, TRUSTED, "port@local.test").startswith("250")
    finally:
        milter.config.write_text(good)
        milter.ctl("reload")
    assert ask(postfix, TRUSTED, "port@aho.jp").startswith("250")


def test_milter_down_means_tempfail_never_a_relay(tmp_path: Path) -> None:
    require_loopback_address(OUTSIDER)
    milter = start_milter(tmp_path, CONFIG)
    try:
        with running_postfix(postfix_config(milter.port)) as postfix:
            with smtp_session(postfix, TRUSTED) as smtp:
                assert rcpt(smtp, "user@aho.jp").startswith("250")
            assert milter.stop() == 0  # SIGTERM: a clean exit
            for client in (TRUSTED, OUTSIDER):
                with smtp_session(postfix, client) as smtp:
                    for recipient in ("user@aho.jp", "user@local.test"):
                        reply = rcpt(smtp, recipient)
                        assert reply.startswith("451 4.7.1"), (client, recipient, reply)
    finally:
        milter.stop()
    assert "stopping" in milter.log.read_text()


def test_an_ipv6_client_reaches_the_milter_as_ipv6(stack: Stack) -> None:
    """Postfix on ::1 sends CONNECT with family 6: the client is ::1, not trusted here."""
    config = PostfixConfig(
        mydestination=["local.test"],
        host="::1",
        # IPv4 too: the milter listens on 127.0.0.1.
        extra={**postfix_milter_settings(stack.milter.port), "inet_protocols": "all"},
    )
    with running_postfix(config) as postfix:
        assert ask(postfix, "::1", "v6@local.test").startswith("250")
        assert ask(postfix, "::1", "v6@aho.jp") == "554 5.7.1 <v6@aho.jp>: Relay access denied"
    line = stack.milter.wait_for_log(r"^.*recipient=<v6@aho\.jp>.*$").group(0)
    assert "client=::1 " in line, line


def test_the_milter_asks_postfix_for_its_macros(stack: Stack) -> None:
    """A Postfix told nothing about macros (its default lists have no ``{daemon_port}``)
    still sends the ones relaypolicy reads: it asks for them when negotiating
    (``SMFIF_SETSYMLIST``). Shown by the port's chain applying, and a login counting."""
    milter = stack.milter
    settings = postfix_milter_settings(milter.port)
    bare = {k: v for k, v in settings.items() if not k.startswith("milter_") or "action" in k}
    assert "milter_connect_macros" not in bare
    good = milter.config.read_text()
    with contextlib.ExitStack() as cleanup:
        config = PostfixConfig(mydestination=["local.test"], extra=bare)
        postfix = cleanup.enter_context(running_postfix(config))
        cleanup.callback(milter.ctl, "reload")
        cleanup.callback(milter.config.write_text, good)
        milter.config.write_text(good + f'\n[chain.ports]\n{postfix.port} = ["local_domains"]\n')
        assert milter.ctl("reload")["ok"] is True
        assert ask(postfix, TRUSTED, "bare@aho.jp").startswith("554 5.7.1")
        assert ask(postfix, TRUSTED, "bare@local.test").startswith("250")
