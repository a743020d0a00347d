"""End to end: a client authenticated through Postfix's Dovecot SASL relays, because
`relaypolicy serve` sees the login Postfix reports (``sasl_username``) and its
``sasl_permit`` step accepts it; without a login, or with a wrong password, it may not.

Dovecot (a private instance) checks the passwords behind its auth socket; Postfix
(``smtpd_sasl_type = dovecot``, ``smtpd_sasl_path`` = that socket's absolute path, allowed
because the test smtpd is not chrooted) offers AUTH and asks relaypolicy, the only gate:
``smtpd_relay_restrictions = check_policy_service { inet:127.0.0.1:PORT,
default_action=DEFER }, reject``. No trusted network covers the client, 127.0.0.10.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from dovecot_instance import DovecotInstance, running_dovecot
from postfix_instance import PostfixConfig, PostfixInstance, Reply, running_postfix
from realservers import require_binary, require_loopback_address
from serve_process import Service, start_service

pytestmark = pytest.mark.real

CLIENT = "127.0.0.10"
SENDER = "taro@local.test"

CONFIG = """\
[domains]
local = ["local.test"]

[networks]
trusted = ["127.0.0.1/32"]  # the host itself, not the client 127.0.0.10

[chain]
steps = ["trusted_networks", "sasl_permit", "local_domains"]

[log]
level = "info"
"""


@dataclass
class Stack:
    dovecot: DovecotInstance
    postfix: PostfixInstance
    service: Service

    def decision(self, recipient: str) -> str:
        """relaypolicy's log line for the decision about ``recipient``."""
        return self.service.wait_for_log(
            rf"^.*client={re.escape(CLIENT)} sender=<[^>]*> "
            rf"recipient=<{re.escape(recipient)}> verdict=.*$"
        ).group(0)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_loopback_address(CLIENT)
    with contextlib.ExitStack() as cleanup:
        service = start_service(tmp_path_factory.mktemp("serve"), CONFIG)
        cleanup.callback(service.stop)
        dovecot = cleanup.enter_context(running_dovecot(users={"taro": "secret"}))
        gate = f"check_policy_service {{ {service.policy_service}, default_action=DEFER }}, reject"
        config = PostfixConfig(
            mydestination=["local.test"],
            extra={
                "smtpd_relay_restrictions": gate,
                "smtpd_sasl_auth_enable": "yes",
                "smtpd_sasl_type": "dovecot",
                # Absolute: the test master.cf runs smtpd without chroot (column 5 "n").
                "smtpd_sasl_path": str(dovecot.auth_socket),
                # No TLS in this test, so AUTH must be offered in the clear (loopback only).
                "smtpd_tls_auth_only": "no",
                "broken_sasl_auth_clients": "no",
            },
        )
        postfix = cleanup.enter_context(running_postfix(config))
        yield Stack(dovecot, postfix, service)


@contextlib.contextmanager
def smtp_session(postfix: PostfixInstance) -> Iterator[smtplib.SMTP]:
    smtp = smtplib.SMTP(postfix.host, postfix.port, timeout=10, source_address=(CLIENT, 0))
    try:
        code, text = smtp.ehlo("client.relaypolicy.test")
        assert code == 250, text
        yield smtp
    finally:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            smtp.quit()


def rcpt(smtp: smtplib.SMTP, recipient: str, sender: str = SENDER) -> Reply:
    """The reply to ``RCPT TO:<recipient>`` (sent as given) after MAIL; then RSET."""
    code, text = smtp.docmd("MAIL", f"FROM:<{sender}>")
    assert code == 250, text
    code, text = smtp.docmd("RCPT", f"TO:<{recipient}>")
    smtp.docmd("RSET")
    return Reply(code, text.decode(errors="replace").replace("\n", " "))


def test_auth_is_offered_with_dovecot_mechanisms(stack: Stack) -> None:
    with smtp_session(stack.postfix) as smtp:
        assert smtp.has_extn("auth")
        assert set(smtp.esmtp_features["auth"].upper().split()) == {"PLAIN", "LOGIN"}


def test_authenticated_client_relays(stack: Stack) -> None:
    with smtp_session(stack.postfix) as smtp:
        code, text = smtp.login("taro", "secret")  # smtplib picks PLAIN
        assert code == 235, text
        reply = rcpt(smtp, "plain@aho.jp")
        assert reply.code == 250, reply
    decision = stack.decision("plain@aho.jp")
    assert "verdict=ACCEPT policy=sasl_permit reason=sasl-authenticated" in decision, decision


def test_authenticated_with_login_mechanism_relays(stack: Stack) -> None:
    with smtp_session(stack.postfix) as smtp:
        smtp.user, smtp.password = "taro", "secret"
        code, text = smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)
        assert code == 235, text
        assert rcpt(smtp, "login@aho.jp").code == 250
    assert "reason=sasl-authenticated" in stack.decision("login@aho.jp")


def test_unauthenticated_client_may_not_relay(stack: Stack) -> None:
    with smtp_session(stack.postfix) as smtp:
        reply = rcpt(smtp, "anonymous@aho.jp")
        assert reply.code == 554, reply
        assert reply.text.startswith("5.7.1 "), reply
        assert "Relay access denied" in reply.text, reply
        # ... while mail for the local domain is still welcome.
        assert rcpt(smtp, "taro@local.test").code == 250
    decision = stack.decision("anonymous@aho.jp")
    assert "verdict=REJECT" in decision, decision
    assert "sasl" not in decision, decision


def test_wrong_password_is_refused_and_does_not_relay(stack: Stack) -> None:
    with smtp_session(stack.postfix) as smtp:
        smtp.user, smtp.password = "taro", "wrong"
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            smtp.auth("PLAIN", smtp.auth_plain)  # one attempt (login() would try LOGIN too)
        assert refused.value.smtp_code == 535, refused.value
        assert "5.7.8 Error: authentication failed" in str(refused.value), refused.value
        reply = rcpt(smtp, "wrongpassword@aho.jp")
        assert reply.code == 554, reply
        assert "Relay access denied" in reply.text, reply
    assert "verdict=REJECT" in stack.decision("wrongpassword@aho.jp")
    # Over Postfix SASL the auth line has no session id: "passwd-file(taro,127.0.0.10): ..."
    stack.dovecot.wait_for_log(
        r"auth: Info: passwd-file\(taro,127\.0\.0\.10(,<[^>]*>)?\): Password mismatch"
    )


def test_authentication_outranks_the_routing_check(stack: Stack) -> None:
    """Postfix's ``permit_sasl_authenticated`` before ``reject_unauth_destination``: an
    authenticated client may send what would be a routing trick from a stranger."""
    routed = "user%aho.jp@local.test"
    with smtp_session(stack.postfix) as smtp:
        assert rcpt(smtp, routed).code == 554  # a stranger first
        smtp.login("taro", "secret")
        reply = rcpt(smtp, routed)
        assert reply.code == 250, reply
    log = stack.service.log.read_text()
    assert f"recipient=<{routed}> verdict=REJECT" in log
    assert f"recipient=<{routed}> verdict=ACCEPT policy=sasl_permit reason=sasl-authenticated" in (
        log
    )


def swaks(stack: Stack, recipient: str, password: str | None) -> subprocess.CompletedProcess[str]:
    """swaks from the client address up to RCPT; with AUTH PLAIN as taro unless no password."""
    binary = require_binary("swaks")
    auth: list[str] = []
    if password is not None:
        auth = ["--auth", "PLAIN", "--auth-user", "taro", "--auth-password", password]
    return subprocess.run(
        [
            binary,
            "--server",
            f"{stack.postfix.host}:{stack.postfix.port}",
            "--local-interface",
            CLIENT,
            "--helo",
            "swaks.relaypolicy.test",
            *auth,
            "--from",
            SENDER,
            "--to",
            recipient,
            "--quit-after",
            "RCPT",
            "--timeout",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_swaks_authenticated_relays(stack: Stack) -> None:
    done = swaks(stack, "swaks@aho.jp", "secret")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^<- +235 2\.7\.0 ", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^<- +250 2\.1\.5 ", done.stdout, re.MULTILINE), done.stdout
    assert "reason=sasl-authenticated" in stack.decision("swaks@aho.jp")


def test_swaks_without_auth_is_refused(stack: Stack) -> None:
    done = swaks(stack, "swaks-anonymous@aho.jp", None)
    assert done.returncode == 24, done.stdout + done.stderr  # swaks: no RCPT accepted
    assert re.search(r"^<\*\* +554 5\.7\.1 .*Relay access denied", done.stdout, re.MULTILINE)


def test_swaks_wrong_password_stops_at_auth(stack: Stack) -> None:
    done = swaks(stack, "swaks-wrong@aho.jp", "wrong")
    assert done.returncode == 28, done.stdout + done.stderr  # swaks: error in AUTH
    assert re.search(r"^<\*\* +535 5\.7\.8 ", done.stdout, re.MULTILINE), done.stdout
