"""RelayPolicyHandler and the Session -> Request mapping, against real aiosmtpd servers.

Every test starts aiosmtpd's own Controller on a free loopback port and talks to it with
smtplib from distinct loopback source addresses (127.0.0.10, 127.0.0.11, ...).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import smtplib
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aiosmtpd")
trustme = pytest.importorskip("trustme")

from aiosmtpd.controller import Controller  # noqa: E402
from aiosmtpd.smtp import SMTP, Envelope, LoginPassword, Session  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from realservers import free_port, require_loopback_address  # noqa: E402

from relaypolicy import (  # noqa: E402
    ClientCertificate,
    Decision,
    ExpiringIpTable,
    FirstMatch,
    LocalDomainOnly,
    Request,
    TrustedNetworks,
    Verdict,
    mx_policy,
    submission_policy,
)
from relaypolicy.aiosmtpd import (  # noqa: E402
    UNNAMED_LOGIN,
    PasswordAuthenticator,
    RelayPolicyHandler,
    SaslLogin,
    WholeReplySMTP,
    request_from_session,
    subject_public_key_info,
)
from relaypolicy.policies import Policy  # noqa: E402
from relaypolicy.smtpd.passwords import PasswordFile  # noqa: E402
from relaypolicy.testing import FakeClock  # noqa: E402

HOST = "127.0.0.1"
PASSWORD = "correct horse battery staple"


class Recording:
    """A policy that remembers the requests it was asked about."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.name = policy.name
        self.requests: list[Request] = []

    def check(self, request: Request) -> Decision:
        self.requests.append(request)
        return self.policy.check(request)


class Inner:
    """An existing handler to wrap: it records DATA and adds an EHLO line."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-X-INNER", responses[-1]]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append(
            (envelope.mail_from or "", list(envelope.rcpt_tos), envelope.original_content or b"")
        )
        return "250 2.0.0 Ok: inner"


class InnerWithRcpt(Inner):
    """An inner handler that knows its users: it refuses the unknown ones itself."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.asked.append(address)
        if address.startswith("nobody@"):
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Inner ok"


@contextmanager
def running(handler: Any, **kwargs: Any) -> Iterator[Controller]:
    controller = Controller(
        handler, hostname=HOST, port=free_port(), server_hostname="mx.test", **kwargs
    )
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


@contextmanager
def client(
    controller: Controller, source: str = "127.0.0.10", *, implicit: ssl.SSLContext | None = None
) -> Iterator[smtplib.SMTP]:
    require_loopback_address(source)
    if implicit is not None:
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(
            HOST, controller.port, source_address=(source, 0), timeout=10, context=implicit
        )
    else:
        smtp = smtplib.SMTP(HOST, controller.port, source_address=(source, 0), timeout=10)
    with smtp:
        yield smtp


@pytest.fixture(scope="module")
def ca() -> Any:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "mx.test").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_context(ca: Any) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture(scope="module")
def password_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "passwd"
    passwords = PasswordFile(path)
    passwords.set("taro", PASSWORD)
    passwords.save()
    return path


def plain(login: str, password: str) -> str:
    return base64.b64encode(f"\0{login}\0{password}".encode()).decode()


# --- relay control over a plain connection ------------------------------------------------


def test_session_facts_reach_the_policy() -> None:
    policy = Recording(LocalDomainOnly(["example.org"]))
    with (
        running(RelayPolicyHandler(policy, inner=Inner())) as controller,
        client(controller) as smtp,
    ):
        smtp.ehlo("client.example")
        assert smtp.mail("sender@example.net")[0] == 250
        assert smtp.rcpt("user@example.org") == (250, b"2.1.5 Ok")
        assert smtp.sock is not None
        port = smtp.sock.getsockname()[1]
    request = policy.requests[-1]
    assert request.client_address == "127.0.0.10"
    assert request.client_port == port
    assert (request.server_address, request.server_port) == (HOST, controller.port)
    assert request.helo_name == "client.example"
    assert request.sender == "sender@example.net"
    assert request.recipient == "user@example.org"
    assert (request.sasl_username, request.sasl_method, request.tls) == ("", "", False)


def test_foreign_recipient_refused_and_not_handed_to_data() -> None:
    inner = Inner()
    handler = RelayPolicyHandler(mx_policy(["example.org"]), inner=inner)
    with running(handler) as controller, client(controller, "127.0.0.11") as smtp:
        smtp.ehlo("client.example")
        smtp.mail("sender@example.net")
        assert smtp.rcpt("victim@aho.jp") == (554, b"5.7.1 <victim@aho.jp>: Relay access denied")
        assert smtp.rcpt("user@example.org")[0] == 250
        assert smtp.data(b"Subject: hi\r\n\r\nhello\r\n") == (250, b"2.0.0 Ok: inner")
    assert inner.messages == [("sender@example.net", ["user@example.org"], inner.messages[0][2])]
    assert b"hello" in inner.messages[0][2]


@pytest.mark.parametrize(
    "recipient",
    ["user%aho.jp@example.org", "aho.jp!user@example.org", '"user@aho.jp"@example.org'],
)
def test_routed_recipients_refused(recipient: str) -> None:
    handler = RelayPolicyHandler(mx_policy(["example.org"]), inner=Inner())
    with running(handler) as controller, client(controller) as smtp:
        smtp.ehlo("client.example")
        smtp.mail("sender@example.net")
        code, text = smtp.rcpt(recipient)
    assert (code, text.decode()) == (554, f"5.7.1 <{recipient}>: Relay access denied")


def test_inner_hooks_are_delegated() -> None:
    inner = InnerWithRcpt()
    handler = RelayPolicyHandler(LocalDomainOnly(["example.org"]), inner=inner)
    assert "handle_DATA" in dir(handler) and "handle_EHLO" in dir(handler)
    with running(handler) as controller, client(controller) as smtp:
        _code, features = smtp.ehlo("client.example")
        assert b"X-INNER" in features
        smtp.mail("sender@example.net")
        assert smtp.rcpt("victim@aho.jp")[0] == 554  # the policy refuses first
        assert smtp.rcpt("nobody@example.org") == (550, b"5.1.1 No such user")
        assert smtp.rcpt("user@example.org") == (250, b"2.1.5 Inner ok")
        smtp.data(b"Subject: hi\r\n\r\nhello\r\n")
    assert inner.asked == ["nobody@example.org", "user@example.org"]  # never the refused one
    assert inner.messages[0][1] == ["user@example.org"]


def test_without_inner_the_recipient_is_appended_by_the_handler() -> None:
    handler = RelayPolicyHandler(LocalDomainOnly(["example.org"]))
    with running(handler) as controller, client(controller) as smtp:
        smtp.ehlo("client.example")
        smtp.mail("sender@example.net")
        assert smtp.rcpt("user@example.org") == (250, b"2.1.5 Ok")
        assert smtp.rcpt("x@aho.jp")[0] == 554
        code, _ = smtp.data(b"Subject: hi\r\n\r\nhello\r\n")
    assert code == 250  # aiosmtpd's default DATA: a recipient was there


def test_no_opinion_is_refused_with_or_without_an_inner_rcpt_hook() -> None:
    passing = FirstMatch(TrustedNetworks(["192.0.2.0/24"]), default=Verdict.NEXT)
    with running(RelayPolicyHandler(passing)) as controller, client(controller) as smtp:
        smtp.ehlo("client.example")
        smtp.mail("sender@example.net")
        assert smtp.rcpt("x@aho.jp") == (554, b"5.7.1 <x@aho.jp>: Relay access denied")
    inner = InnerWithRcpt()
    with (
        running(RelayPolicyHandler(passing, inner=inner)) as controller,
        client(controller) as smtp,
    ):
        smtp.ehlo("client.example")
        smtp.mail("sender@example.net")
        # The inner hook takes every recipient; asking it would make an open relay.
        assert smtp.rcpt("x@aho.jp") == (554, b"5.7.1 <x@aho.jp>: Relay access denied")
    assert inner.asked == []


class Raising:
    name = "raising"

    def check(self, request: Request) -> Decision:
        raise RuntimeError("boom")


def test_a_policy_that_raises_defers() -> None:
    handler = RelayPolicyHandler(Raising(), check_mail=False)
    with running(handler) as controller, client(controller) as smtp:
        smtp.ehlo("client.example")
        smtp.mail("sender@example.net")
        assert smtp.rcpt("user@example.org") == (451, b"4.3.0 Policy service error")


def test_null_sender_is_the_empty_sender() -> None:
    policy = Recording(LocalDomainOnly(["example.org"]))
    with running(RelayPolicyHandler(policy)) as controller, client(controller) as smtp:
        smtp.ehlo("client.example")
        assert smtp.mail("<>")[0] == 250
        assert smtp.rcpt("user@example.org")[0] == 250
    assert policy.requests[-1].sender == ""
    assert policy.requests[-1].sender_address.is_null


# --- MAIL FROM on a submission port ---------------------------------------------------------


def test_unauthenticated_sender_refused_at_mail_on_submission() -> None:
    handler = RelayPolicyHandler(submission_policy(require_tls=False), inner=Inner())
    with running(handler) as controller, client(controller) as smtp:
        smtp.ehlo("client.example")
        assert smtp.mail("sender@example.org") == (530, b"5.7.0 Authentication required")


def test_mx_policy_takes_any_sender_at_mail() -> None:
    handler = RelayPolicyHandler(mx_policy(["example.org"]), inner=Inner())
    with running(handler) as controller, client(controller) as smtp:
        smtp.ehlo("client.example")
        assert smtp.mail("anyone@aho.jp")[0] == 250


def test_check_mail_off_leaves_the_refusal_to_rcpt() -> None:
    handler = RelayPolicyHandler(submission_policy(require_tls=False), check_mail=False)
    with running(handler) as controller, client(controller) as smtp:
        smtp.ehlo("client.example")
        assert smtp.mail("sender@example.org")[0] == 250
        assert smtp.rcpt("user@example.org") == (530, b"5.7.0 Authentication required")


# --- AUTH and TLS ---------------------------------------------------------------------------


def test_auth_over_starttls_then_relay(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, password_file: Path
) -> None:
    policy = Recording(mx_policy(["example.org"]))
    handler = RelayPolicyHandler(policy, inner=Inner())
    with (
        running(
            handler,
            tls_context=server_context,
            authenticator=PasswordAuthenticator(password_file),
            auth_require_tls=True,
        ) as controller,
        client(controller) as smtp,
    ):
        smtp.ehlo("client.example")
        assert not smtp.has_extn("auth")  # aiosmtpd offers AUTH only inside TLS
        code, text = smtp.docmd("AUTH", "PLAIN " + plain("taro", PASSWORD))
        assert (code, text) == (
            538,
            b"5.7.11 Encryption required for requested authentication mechanism",
        )
        smtp.starttls(context=client_context)
        smtp.ehlo("client.example")
        assert smtp.login("taro", PASSWORD)[0] == 235
        smtp.mail("taro@example.org")
        assert smtp.rcpt("friend@aho.jp") == (250, b"2.1.5 Ok")
    request = policy.requests[-1]
    assert request.sasl_username == "taro"
    assert request.sasl_method in ("PLAIN", "LOGIN")
    assert request.encryption_protocol.startswith("TLSv1")
    assert request.encryption_cipher
    assert request.ccert_fingerprint == ""  # the server asked for no client certificate


def test_auth_login_mechanism_is_reported(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, password_file: Path
) -> None:
    policy = Recording(mx_policy(["example.org"]))
    with (
        running(
            RelayPolicyHandler(policy),
            tls_context=server_context,
            authenticator=PasswordAuthenticator(password_file),
        ) as controller,
        client(controller) as smtp,
    ):
        smtp.starttls(context=client_context)
        smtp.ehlo("client.example")
        smtp.user, smtp.password = "taro", PASSWORD
        assert smtp.auth("LOGIN", smtp.auth_login)[0] == 235
        smtp.mail("taro@example.org")
        smtp.rcpt("friend@aho.jp")
    assert (policy.requests[-1].sasl_username, policy.requests[-1].sasl_method) == ("taro", "LOGIN")


def test_wrong_password_refused_with_535(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, password_file: Path
) -> None:
    with (
        running(
            RelayPolicyHandler(mx_policy(["example.org"])),
            tls_context=server_context,
            authenticator=PasswordAuthenticator(password_file),
        ) as controller,
        client(controller) as smtp,
    ):
        smtp.starttls(context=client_context)
        smtp.ehlo("client.example")
        for user, password in (("taro", "wrong"), ("nobody", PASSWORD)):
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                smtp.login(user, password)
            assert refused.value.smtp_code == 535
            assert refused.value.smtp_error == b"5.7.8 Authentication credentials invalid"
        smtp.mail("taro@example.org")
        assert smtp.rcpt("friend@aho.jp")[0] == 554  # still not allowed to relay


def test_auth_in_the_clear_is_refused_by_a_policy_that_requires_tls(password_file: Path) -> None:
    # aiosmtpd told to allow AUTH without TLS; the policy still refuses the relay.
    with (
        running(
            RelayPolicyHandler(submission_policy(require_tls=True)),
            authenticator=PasswordAuthenticator(password_file),
            auth_require_tls=False,
        ) as controller,
        client(controller) as smtp,
    ):
        smtp.ehlo("client.example")
        assert smtp.login("taro", PASSWORD)[0] == 235
        assert smtp.mail("taro@example.org") == (530, b"5.7.0 Must issue a STARTTLS command first")


def test_client_certificate_facts_and_pinning(
    ca: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    leaf = ca.issue_cert("laptop.example.org", common_name="laptop.example.org")
    der = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_bytes(
        serialization.Encoding.DER
    )
    fingerprint = hashlib.sha256(der).hexdigest()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_OPTIONAL
    mine = ssl.create_default_context()
    ca.configure_trust(mine)
    leaf.configure_cert(mine)
    policy = Recording(
        FirstMatch(ClientCertificate([fingerprint]), LocalDomainOnly(["example.org"]))
    )
    with running(RelayPolicyHandler(policy), tls_context=context) as controller:
        with client(controller) as smtp:
            smtp.starttls(context=mine)
            smtp.ehlo("laptop.example.org")
            smtp.mail("me@example.org")
            assert smtp.rcpt("friend@aho.jp") == (250, b"2.1.5 Ok")
        with client(controller, "127.0.0.11") as smtp:  # TLS without a certificate
            smtp.starttls(context=client_context)
            smtp.ehlo("stranger.example")
            smtp.mail("me@example.org")
            assert smtp.rcpt("friend@aho.jp")[0] == 554
    request = policy.requests[0]
    assert request.ccert_fingerprint.replace(":", "").lower() == fingerprint
    public_key = x509.load_der_x509_certificate(der).public_key()
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert (
        request.ccert_pubkey_fingerprint.replace(":", "").lower()
        == hashlib.sha256(spki).hexdigest()
    )
    assert request.ccert_subject == "laptop.example.org"


def test_implicit_tls_is_seen_although_session_ssl_is_unset(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    # aiosmtpd issues #274/#281: with ssl_context= (implicit TLS, port 465) session.ssl stays
    # None. The handler reads TLS from the transport, so require_tls still works.
    sessions: list[Any] = []

    class Watching(Inner):
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            sessions.append(session.ssl)
            return await super().handle_DATA(server, session, envelope)

    policy = Recording(
        FirstMatch(TrustedNetworks(["127.0.0.10/32"]), LocalDomainOnly(["example.org"]))
    )
    with (
        running(
            RelayPolicyHandler(policy, inner=Watching()), ssl_context=server_context
        ) as controller,
        client(controller, implicit=client_context) as smtp,
    ):
        smtp.ehlo("client.example")
        smtp.mail("me@example.org")
        smtp.rcpt("friend@aho.jp")
        smtp.data(b"Subject: hi\r\n\r\nhello\r\n")
    assert sessions == [None]  # the aiosmtpd gap this works around
    assert policy.requests[-1].encryption_protocol.startswith("TLSv1")


# --- POP-before-SMTP with a fake clock ---------------------------------------------------


def test_pop_before_smtp_allowance_honoured_and_expiring() -> None:
    clock = FakeClock()
    table = ExpiringIpTable(600, clock=clock)
    handler = RelayPolicyHandler(mx_policy(["example.org"], pop_table=table))

    def relay(source: str) -> int:
        with client(controller, source) as smtp:
            smtp.ehlo("client.example")
            smtp.mail("taro@example.org")
            return smtp.rcpt("friend@aho.jp")[0]

    with running(handler) as controller:
        assert relay("127.0.0.12") == 554
        table.record("127.0.0.12", user="taro")  # what the POP3 log watcher does
        assert relay("127.0.0.12") == 250
        assert relay("127.0.0.13") == 554  # another address gained nothing
        clock.advance(599)
        assert relay("127.0.0.12") == 250
        clock.advance(2)
        assert relay("127.0.0.12") == 554


# --- one log line per decision -----------------------------------------------------------


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_one_log_line_per_decision(log_format: str) -> None:
    lines = Lines()
    logger = logging.getLogger("relaypolicy.decisions")
    old_level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        handler = RelayPolicyHandler(mx_policy(["example.org"]), log_format=log_format)
        with running(handler) as controller, client(controller) as smtp:
            smtp.ehlo("client.example")
            smtp.mail("sender@example.net")
            smtp.rcpt("user@example.org")
            smtp.rcpt("x@aho.jp")
    finally:
        logger.removeHandler(lines)
        logger.setLevel(old_level)
    assert len(lines.lines) == 2
    if log_format == "text":
        assert "client=127.0.0.10" in lines.lines[0] and "verdict=ACCEPT" in lines.lines[0]
        assert "recipient=<x@aho.jp>" in lines.lines[1] and "reason=not-local" in lines.lines[1]
    else:
        assert '"verdict": "reject"' in lines.lines[1] and '"stage": "RCPT"' in lines.lines[1]


# --- the mapping on its own ------------------------------------------------------------------


def session(peer: Any = ("192.0.2.7", 40000), **facts: Any) -> Session:
    result = Session(loop=None)  # type: ignore[arg-type]
    result.peer = peer
    for name, value in facts.items():
        setattr(result, name, value)
    return result


@pytest.mark.parametrize(
    ("auth_data", "login", "mechanism"),
    [
        (SaslLogin("taro", "PLAIN"), "taro", "PLAIN"),
        (LoginPassword(b"hanako", b"secret"), "hanako", ""),  # aiosmtpd's auth_callback
        ("jiro", "jiro", ""),
        (b"saburo", "saburo", ""),
        (None, UNNAMED_LOGIN, ""),
        (object(), UNNAMED_LOGIN, ""),
    ],
)
def test_login_from_auth_data(auth_data: Any, login: str, mechanism: str) -> None:
    facts = session(authenticated=True, auth_data=auth_data)
    request = request_from_session(None, facts, None, "user@example.org")
    assert (request.sasl_username, request.sasl_method) == (login, mechanism)
    unauthenticated = session(authenticated=None, auth_data=auth_data)
    assert request_from_session(None, unauthenticated, None, "x@y.example").sasl_username == ""


def test_ipv6_peer_is_folded() -> None:
    request = request_from_session(
        None, session(("::ffff:192.0.2.9", 25, 0, 0)), None, "a@b.example"
    )
    assert (request.client_address, request.client_port) == ("192.0.2.9", 25)


def test_proxy_protocol_client_is_the_one_the_balancer_reports() -> None:
    policy = Recording(
        FirstMatch(TrustedNetworks(["203.0.113.0/24"]), LocalDomainOnly(["example.org"]))
    )

    class TrustingTheBalancer:
        async def handle_PROXY(
            self, server: SMTP, session: Session, envelope: Envelope, proxy: Any
        ) -> bool:
            return True  # aiosmtpd closes PROXY connections unless a hook accepts them

    handler = RelayPolicyHandler(policy, inner=TrustingTheBalancer())
    with (
        running(handler, proxy_protocol_timeout=5) as controller,
        socket.create_connection((HOST, controller.port), timeout=10) as sock,
    ):
        stream = sock.makefile("rwb")
        stream.write(b"PROXY TCP4 203.0.113.5 198.51.100.1 6000 587\r\n")
        commands = (b"EHLO client.example", b"MAIL FROM:<a@example.org>", b"RCPT TO:<x@aho.jp>")
        stream.write(b"".join(command + b"\r\n" for command in commands))
        stream.flush()
        replies: list[bytes] = []
        while len(replies) < 4:  # greeting, EHLO (last line), MAIL, RCPT
            line = stream.readline()
            assert line, f"connection closed after {replies}"
            if line[3:4] == b" ":
                replies.append(line.strip())
    assert replies[-1] == b"250 2.1.5 Ok"
    request = policy.requests[-1]
    assert (request.client_address, request.client_port) == ("203.0.113.5", 6000)
    assert (request.server_address, request.server_port) == ("198.51.100.1", 587)


def test_unknown_client_address_raises() -> None:
    with pytest.raises(ValueError, match="client_address"):
        request_from_session(None, session(""), None, "a@b.example")


def test_subject_public_key_info_rejects_garbage() -> None:
    for junk in (b"", b"\x30", b"\x04\x02ab", b"\x30\x85\x00\x00\x00\x00\x01"):
        with pytest.raises(ValueError):
            subject_public_key_info(junk)


def test_handler_checks_its_arguments() -> None:
    with pytest.raises(TypeError):
        RelayPolicyHandler(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="log_format"):
        RelayPolicyHandler(LocalDomainOnly(["example.org"]), log_format="xml")
    handler = RelayPolicyHandler(LocalDomainOnly(["example.org"]))
    with pytest.raises(AttributeError):
        handler.handle_DATA  # noqa: B018 - no inner: aiosmtpd must see no DATA hook
    assert "handle_DATA" not in dir(handler)


def test_authenticator_rereads_a_changed_file(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    passwords = PasswordFile(path)
    passwords.set("taro", "one", n=2**10)
    passwords.save()
    authenticator = PasswordAuthenticator(path)
    assert authenticator.passwords.verify("taro", "one")
    passwords.set("hanako", "two", n=2**10)
    passwords.save()
    result = authenticator(None, session(), None, "PLAIN", LoginPassword(b"hanako", b"two"))  # type: ignore[arg-type]
    assert result.success and result.auth_data == SaslLogin("hanako", "PLAIN")
    path.write_text("broken line\n")
    result = authenticator(None, session(), None, "LOGIN", LoginPassword(b"taro", b"one"))  # type: ignore[arg-type]
    assert result.success  # the last good file stays in use
    assert not authenticator(None, session(), None, "CRAM-MD5", "x").success  # type: ignore[arg-type]
    invalid = LoginPassword(b"\xff", b"one")
    assert not authenticator(None, session(), None, "PLAIN", invalid).success  # type: ignore[arg-type]


def test_subject_public_key_info_of_a_real_certificate(ca: Any) -> None:
    pem = ca.issue_cert("a.example").cert_chain_pems[0].bytes()
    certificate = x509.load_pem_x509_certificate(pem)
    expected = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert subject_public_key_info(certificate.public_bytes(serialization.Encoding.DER)) == expected


# --- replies in one write ----------------------------------------------------------------


class WholeReplyController(Controller):
    """aiosmtpd's Controller building :class:`WholeReplySMTP`, as docs/aiosmtpd.md shows."""

    def factory(self) -> SMTP:
        return WholeReplySMTP(self.handler, **self.SMTP_kwargs)


class TwoLineNoop(Inner):
    """An inner handler whose NOOP reply is two lines in one string."""

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str
    ) -> str:
        return "250-first\r\n250 second"


def one_read(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    assert data, "the server closed the connection"
    return data


def test_whole_reply_smtp_sends_each_reply_in_one_write() -> None:
    require_loopback_address("127.0.0.10")
    handler = RelayPolicyHandler(LocalDomainOnly(["example.org"]), inner=TwoLineNoop())
    controller = WholeReplyController(
        handler, hostname=HOST, port=free_port(), server_hostname="mx.test"
    )
    controller.start()
    try:
        with socket.create_connection(
            (HOST, controller.port), timeout=10, source_address=("127.0.0.10", 0)
        ) as sock:
            assert one_read(sock).startswith(b"220 mx.test ")
            for attempt in range(20):
                sock.sendall(b"EHLO client.example\r\n")
                reply = one_read(sock)
                assert reply.startswith(b"250-mx.test\r\n"), (attempt, reply)
                assert b"\r\n250-X-INNER\r\n250 HELP\r\n" in reply, (attempt, reply)
                assert reply.endswith(b"250 HELP\r\n"), (attempt, reply)
            sock.sendall(b"NOOP\r\n")
            assert one_read(sock) == b"250-first\r\n250 second\r\n"
            sock.sendall(b"MAIL FROM:<a@aho.jp>\r\n")
            assert one_read(sock) == b"250 OK\r\n"
            sock.sendall(b"RCPT TO:<victim@aho.jp>\r\n")
            assert one_read(sock) == b"554 5.7.1 <victim@aho.jp>: Relay access denied\r\n"
        with client(controller) as smtp:  # an ordinary client sees an ordinary server
            assert smtp.ehlo("client.example")[0] == 250 and smtp.has_extn("x-inner")
            assert smtp.noop() == (250, b"first\nsecond")
    finally:
        controller.stop()
