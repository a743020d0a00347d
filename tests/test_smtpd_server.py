"""`relaypolicy smtpd` end to end: real clients (smtplib, swaks) against a running server.

Most tests share one in-process server (its POP-before-SMTP table on a fake clock) with
two listeners: an MX port and a submission port (``chain.ports``). Relayed mail goes to a
second aiosmtpd on 127.0.0.1 standing in for the smarthost: nothing leaves the machine.
The embedded default runs as a subprocess in a temporary directory.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aiosmtpd")
trustme = pytest.importorskip("trustme")

from aiosmtpd.controller import Controller  # noqa: E402
from aiosmtpd.smtp import SMTP, Envelope, Session  # noqa: E402
from realservers import (  # noqa: E402
    free_port,
    require_binary,
    require_loopback_address,
    tail,
    wait_for_port,
)

from relaypolicy import ExpiringIpTable  # noqa: E402
from relaypolicy.cli import main as cli_main  # noqa: E402
from relaypolicy.config import ConfigError  # noqa: E402
from relaypolicy.daemon.smtpd import SmtpdServer, load_smtpd_config  # noqa: E402
from relaypolicy.smtpd.delivery import mailbox_name  # noqa: E402
from relaypolicy.smtpd.passwords import PasswordFile  # noqa: E402
from relaypolicy.testing import FakeClock  # noqa: E402

HOST = "127.0.0.1"
PASSWORD = "taro's password"
ROOT = Path(__file__).resolve().parent.parent
MESSAGE = b"From: taro@example.org\r\nSubject: test\r\n\r\nhello\r\n"
# The shared server's local recipient table (smtpd.mailboxes), plus two set in the fixture.
MAILBOXES = ["hanako@example.org", "jiro@example.org", "me@example.org", "saburo@example.org"]


class Sink:
    """The smarthost: keeps what it is given; refuses recipients starting with "bad"."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []
        self.port = free_port()

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.startswith("bad"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        self.received.append((envelope.mail_from or "", list(envelope.rcpt_tos), content))
        return "250 OK queued"


class Running:
    """An SmtpdServer on its own event loop in a thread, for the length of a ``with``."""

    def __init__(self, server: SmtpdServer) -> None:
        self.server = server
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stopping.wait()
        await self.server.close()

    def __enter__(self) -> SmtpdServer:
        self._thread.start()
        assert self._ready.wait(10), "the server did not start"
        if self._error is not None:
            raise self._error
        return self.server

    def __exit__(self, *exc_info: object) -> None:
        assert self._loop is not None and self._stopping is not None
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)


def write_config(path: Path, body: str) -> Path:
    path.write_text(body, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    handler = Sink()
    controller = Controller(handler, hostname=HOST, port=handler.port)
    controller.start()
    yield handler
    controller.stop()


@pytest.fixture(scope="module")
def ca() -> Any:
    return trustme.CA()


@pytest.fixture(scope="module")
def client_context(ca: Any) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


class Site:
    """The shared server: its ports, directories, clock and smarthost."""

    def __init__(self, directory: Path, mx: int, submission: int, clock: FakeClock) -> None:
        self.directory = directory
        self.mx = mx
        self.submission = submission
        self.clock = clock

    def maildir(self, domain: str, user: str) -> list[bytes]:
        new = self.directory / "maildirs" / domain / user / "new"
        return [path.read_bytes() for path in sorted(new.iterdir())] if new.exists() else []

    def control(self, **message: Any) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.directory / "ctl.sock"))
            sock.sendall(json.dumps(message).encode() + b"\n")
            answer: dict[str, Any] = json.loads(sock.makefile("rb").readline())
            return answer


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, ca: Any, sink: Sink) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("smtpd")
    leaf = ca.issue_cert("127.0.0.1", "mx.example.org")
    leaf.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(directory / "key.pem"))
    passwords = PasswordFile(directory / "passwd")
    passwords.set("taro", PASSWORD)
    passwords.save()
    mx, submission = free_port(), free_port()
    config = write_config(
        directory / "relaypolicy.toml",
        f"""
[domains]
local = ["example.org"]

[networks]
trusted = ["127.0.0.1/32"]

[pop_before_smtp]
ttl = 600

[smtp_auth]
require_tls = true

[chain]
steps = ["trusted_networks", "sasl_permit", "pop_before_smtp", "local_domains"]

[chain.ports]
{submission} = ["sasl_required"]

[smtpd]
listen = ["{HOST}:{mx}", "{HOST}:{submission}"]
hostname = "mx.example.org"
maildir = "{directory}/maildirs"
mailboxes = {json.dumps([*MAILBOXES, '"../../x"@example.org', "postmaster"])}
outgoing = "{directory}/outgoing"
smarthost = "{HOST}:{sink.port}"
tls_certificate = "{directory}/cert.pem"
tls_key = "{directory}/key.pem"
passwords = "{directory}/passwd"
control_socket = "{directory}/ctl.sock"
""",
    )
    clock = FakeClock()
    loaded, settings = load_smtpd_config(config)
    server = SmtpdServer(loaded, settings, table=ExpiringIpTable(600, clock=clock))
    with Running(server):
        yield Site(directory, mx, submission, clock)


def connect(port: int, source: str = "127.0.0.10") -> smtplib.SMTP:
    require_loopback_address(source)
    return smtplib.SMTP(HOST, port, source_address=(source, 0), timeout=10)


def relay_code(site: Site, source: str, recipient: str = "friend@aho.jp") -> int:
    with connect(site.mx, source) as smtp:
        smtp.ehlo("client.example")
        smtp.mail("taro@example.org")
        return smtp.rcpt(recipient)[0]


def plain(login: str, password: str) -> str:
    return base64.b64encode(f"\0{login}\0{password}".encode()).decode()


# --- the MX port ---------------------------------------------------------------------------


def test_local_mail_lands_in_the_recipients_maildir(site: Site) -> None:
    with connect(site.mx, "127.0.0.10") as smtp:
        smtp.ehlo("client.example")
        smtp.mail("someone@aho.jp")
        assert smtp.rcpt("Hanako@Example.ORG") == (250, b"2.1.5 Ok")
        assert smtp.rcpt("jiro@example.org") == (250, b"2.1.5 Ok")
        assert smtp.data(MESSAGE) == (250, b"2.0.0 Ok: delivered")
    for user in ("hanako", "jiro"):
        (message,) = site.maildir("example.org", user)
        assert message.startswith(b"Return-Path: <someone@aho.jp>\nDelivered-To: ")
        assert b"Received: from client.example ([127.0.0.10])" in message
        assert b"by mx.example.org (relaypolicy smtpd) with ESMTP;" in message
        assert message.endswith(b"\n\nhello\n")


def test_foreign_recipient_refused_with_the_policy_reply(site: Site, sink: Sink) -> None:
    before = len(sink.received)
    with connect(site.mx, "127.0.0.10") as smtp:
        smtp.ehlo("client.example")
        smtp.mail("spammer@aho.jp")
        assert smtp.rcpt("victim@aho.jp") == (554, b"5.7.1 <victim@aho.jp>: Relay access denied")
    assert len(sink.received) == before


@pytest.mark.parametrize(
    "recipient",
    [
        "victim%aho.jp@example.org",
        "aho.jp!victim@example.org",
        '"victim@aho.jp"@example.org',
    ],
)
def test_routed_recipients_refused(site: Site, recipient: str) -> None:
    with connect(site.mx, "127.0.0.11") as smtp:
        smtp.ehlo("client.example")
        smtp.mail("spammer@aho.jp")
        code, text = smtp.rcpt(recipient)
    assert (code, text.decode()) == (554, f"5.7.1 <{recipient}>: Relay access denied")


def test_a_local_part_cannot_climb_out_of_the_maildir_tree(site: Site) -> None:
    with connect(site.mx, "127.0.0.10") as smtp:
        smtp.ehlo("client.example")
        smtp.mail("someone@aho.jp")
        assert smtp.rcpt('"../../x"@example.org')[0] == 250
        smtp.data(MESSAGE)
    assert len(site.maildir("example.org", "%2E.%2F..%2Fx")) == 1
    assert not (site.directory / "x").exists()


def directories(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if path.is_dir()} if root.exists() else set()


def user_unknown(recipient: str) -> tuple[int, bytes]:
    text = f"5.1.1 <{recipient}>: Recipient address rejected: User unknown in local recipient table"
    return 550, text.encode()


def test_unknown_local_users_are_refused_and_never_get_a_directory(site: Site) -> None:
    """A stranger inventing 1,000 local parts gets 1,000 refusals and no directory."""
    before = directories(site.directory / "maildirs")
    unknown = [f"nobody{n}@example.org" for n in range(1000)]
    with connect(site.mx, "127.0.0.10") as smtp:
        smtp.ehlo("client.example")
        smtp.mail("someone@aho.jp")
        for recipient in unknown:
            assert smtp.rcpt(recipient) == user_unknown(recipient)
        assert smtp.rcpt("Jiro@example.org") == (250, b"2.1.5 Ok")  # still at work
        assert smtp.data(MESSAGE) == (250, b"2.0.0 Ok: delivered")
    created = directories(site.directory / "maildirs") - before
    jiro = site.directory / "maildirs" / "example.org" / "jiro"
    assert created <= {jiro, *(jiro / name for name in ("cur", "new", "tmp"))}
    assert len(site.maildir("example.org", "jiro")) >= 1


def test_a_bare_local_part_is_a_mailbox_at_every_local_domain(site: Site) -> None:
    before = len(site.maildir("example.org", "postmaster"))
    with connect(site.mx, "127.0.0.10") as smtp:
        smtp.ehlo("client.example")
        smtp.mail("someone@aho.jp")
        assert smtp.rcpt("PostMaster@example.org") == (250, b"2.1.5 Ok")
        assert smtp.rcpt("postmaster") == (250, b"2.1.5 Ok")  # RFC 5321 section 4.5.1
        assert smtp.rcpt("abuse@example.org") == user_unknown("abuse@example.org")
        assert smtp.data(MESSAGE)[0] == 250
    assert len(site.maildir("example.org", "postmaster")) == before + 2


def test_trusted_client_relays_through_the_smarthost(site: Site, sink: Sink) -> None:
    with connect(site.mx, "127.0.0.1") as smtp:
        smtp.ehlo("localhost")
        smtp.mail("app@example.org")
        assert smtp.rcpt("friend@aho.jp") == (250, b"2.1.5 Ok")
        assert smtp.rcpt("me@example.org")[0] == 250
        assert smtp.data(MESSAGE)[0] == 250
    sender, recipients, content = sink.received[-1]
    assert (sender, recipients) == ("app@example.org", ["friend@aho.jp"])
    assert b"Received: from localhost ([127.0.0.1])" in content
    assert len(site.maildir("example.org", "me")) == 1


def test_smarthost_refusing_one_recipient_keeps_a_copy(site: Site, sink: Sink) -> None:
    with connect(site.mx, "127.0.0.1") as smtp:
        smtp.ehlo("localhost")
        smtp.mail("app@example.org")
        smtp.rcpt("good@aho.jp")
        smtp.rcpt("bad@aho.jp")
        assert smtp.data(MESSAGE)[0] == 250
    assert sink.received[-1][1] == ["good@aho.jp"]
    kept = [path.read_bytes() for path in (site.directory / "outgoing" / "new").iterdir()]
    assert any(b"X-Relaypolicy-Recipient: <bad@aho.jp>" in message for message in kept)


def first_read(sock: socket.socket) -> bytes:
    """What one recv() returns: the part of a reply that arrived together."""
    data = sock.recv(65536)
    assert data, "the server closed the connection"
    return data


@pytest.mark.parametrize("port_name", ["mx", "submission"])
def test_each_multiline_reply_arrives_in_one_read(site: Site, port_name: str) -> None:
    """Postfix writes a whole reply at once, and clients (nmap) rely on it: the first recv()
    after EHLO must hold the final "250 " line. aiosmtpd alone wrote line by line."""
    require_loopback_address("127.0.0.10")
    port = getattr(site, port_name)
    with socket.create_connection(
        (HOST, port), timeout=10, source_address=("127.0.0.10", 0)
    ) as sock:
        assert first_read(sock).startswith(b"220 mx.example.org ")
        for attempt in range(20):
            sock.sendall(b"EHLO client.example\r\n")
            reply = first_read(sock)
            lines = reply.split(b"\r\n")
            assert lines[-1] == b"", (attempt, reply)  # ends with a whole line
            assert lines[0] == b"250-mx.example.org", (attempt, reply)
            assert lines[-2].startswith(b"250 "), (attempt, reply)  # and the last one
            assert all(line.startswith(b"250-") for line in lines[:-2]), (attempt, reply)
        sock.sendall(b"QUIT\r\n")
        assert first_read(sock).startswith(b"221 ")


# --- AUTH and TLS --------------------------------------------------------------------------


def test_auth_over_starttls_then_relay_accepted(
    site: Site, sink: Sink, client_context: ssl.SSLContext
) -> None:
    with connect(site.mx, "127.0.0.13") as smtp:
        smtp.ehlo("laptop.example")
        smtp.mail("taro@example.org")
        assert smtp.rcpt("friend@aho.jp")[0] == 554  # not yet
        smtp.rset()
        smtp.starttls(context=client_context)
        smtp.ehlo("laptop.example")
        assert smtp.login("taro", PASSWORD) == (235, b"2.7.0 Authentication successful")
        smtp.mail("taro@example.org")
        assert smtp.rcpt("friend@aho.jp") == (250, b"2.1.5 Ok")
        assert smtp.data(MESSAGE)[0] == 250
    assert sink.received[-1][1] == ["friend@aho.jp"]
    assert b"with ESMTPSA;" in sink.received[-1][2]


def test_auth_without_tls_is_refused(site: Site) -> None:
    with connect(site.mx, "127.0.0.13") as smtp:
        smtp.ehlo("laptop.example")
        assert smtp.has_extn("starttls") and not smtp.has_extn("auth")
        code, text = smtp.docmd("AUTH", "PLAIN " + plain("taro", PASSWORD))
        assert code == 538 and text.startswith(b"5.7.11 Encryption required")


def test_wrong_password_refused_with_535(site: Site, client_context: ssl.SSLContext) -> None:
    with connect(site.mx, "127.0.0.13") as smtp:
        smtp.starttls(context=client_context)
        smtp.ehlo("laptop.example")
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            smtp.login("taro", "wrong")
    assert (refused.value.smtp_code, refused.value.smtp_error) == (
        535,
        b"5.7.8 Authentication credentials invalid",
    )


def test_submission_port_refuses_unauthenticated_at_mail(
    site: Site, client_context: ssl.SSLContext
) -> None:
    with connect(site.submission, "127.0.0.10") as smtp:
        smtp.ehlo("laptop.example")
        assert smtp.mail("taro@example.org") == (530, b"5.7.0 Must issue a STARTTLS command first")
        smtp.starttls(context=client_context)
        smtp.ehlo("laptop.example")
        assert smtp.mail("taro@example.org") == (530, b"5.7.0 Authentication required")
        smtp.login("taro", PASSWORD)
        assert smtp.mail("taro@example.org")[0] == 250
        assert smtp.rcpt("friend@aho.jp") == (250, b"2.1.5 Ok")


# --- POP-before-SMTP ------------------------------------------------------------------------


def test_pop_before_smtp_allowance_honoured_and_expiring(site: Site) -> None:
    assert relay_code(site, "127.0.0.12") == 554
    # What a POP3 login hook does (relaypolicy ctl record 127.0.0.12 --user taro):
    assert site.control(command="record", address="127.0.0.12", user="taro")["ok"]
    assert relay_code(site, "127.0.0.12") == 250
    assert relay_code(site, "127.0.0.14") == 554  # only that address
    site.clock.advance(599)
    assert relay_code(site, "127.0.0.12") == 250
    site.clock.advance(2)
    assert relay_code(site, "127.0.0.12") == 554


def test_control_socket_speaks_relaypolicy_ctl(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    socket_path = str(site.directory / "ctl.sock")
    assert cli_main(["ctl", "--socket", socket_path, "record", "127.0.0.15", "--ttl", "60"]) == 0
    assert cli_main(["ctl", "--socket", socket_path, "table"]) == 0
    assert "127.0.0.15" in capsys.readouterr().out
    assert cli_main(["ctl", "--socket", socket_path, "remove", "127.0.0.15"]) == 0
    assert site.control(command="add", address="not an address")["ok"] is False
    assert site.control(command="reload")["ok"] is False


# --- swaks -----------------------------------------------------------------------------------


def swaks(*arguments: str) -> subprocess.CompletedProcess[str]:
    binary = require_binary("swaks")
    return subprocess.run(
        [binary, "--server", HOST, "--helo", "swaks.example", "--timeout", "10", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_swaks_refused_relay_and_accepted_local(site: Site) -> None:
    require_loopback_address("127.0.0.16")
    common = ("--port", str(site.mx), "--local-interface", "127.0.0.16", "--from", "a@aho.jp")
    refused = swaks(*common, "--to", "victim@aho.jp")
    assert refused.returncode != 0
    assert "<** 554 5.7.1 <victim@aho.jp>: Relay access denied" in refused.stdout
    local = swaks(*common, "--to", "saburo@example.org")
    assert local.returncode == 0, local.stdout + local.stderr
    assert len(site.maildir("example.org", "saburo")) == 1
    unknown = swaks(*common, "--to", "shiro@example.org")
    assert unknown.returncode != 0
    assert (
        "<** 550 5.1.1 <shiro@example.org>: Recipient address rejected: "
        "User unknown in local recipient table"
    ) in unknown.stdout
    assert not (site.directory / "maildirs" / "example.org" / "shiro").exists()


def test_swaks_authenticated_relay_over_starttls(site: Site, sink: Sink) -> None:
    require_loopback_address("127.0.0.17")
    done = swaks(
        "--port", str(site.mx), "--local-interface", "127.0.0.17",
        "--from", "taro@example.org", "--to", "pal@aho.jp",
        "--tls", "--auth", "PLAIN", "--auth-user", "taro", "--auth-password", PASSWORD,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "<~  235 2.7.0 Authentication successful" in done.stdout  # "~": inside TLS
    assert sink.received[-1][1] == ["pal@aho.jp"]


# --- other configurations ---------------------------------------------------------------------


def test_smarthost_down_defers_and_delivers_nothing(tmp_path: Path) -> None:
    port, closed = free_port(), free_port()
    config = write_config(
        tmp_path / "c.toml",
        f"""
[domains]
local = ["example.org"]
[networks]
trusted = ["127.0.0.1/32"]
[smtpd]
listen = ["{HOST}:{port}"]
maildir = "{tmp_path}/maildirs"
catch_all = "{tmp_path}/maildirs/catch-all"
smarthost = "{HOST}:{closed}"
""",
    )
    server = SmtpdServer(*load_smtpd_config(config))
    with Running(server), connect(port, "127.0.0.1") as smtp:
        smtp.ehlo("localhost")
        smtp.mail("app@example.org")
        smtp.rcpt("friend@aho.jp")
        smtp.rcpt("me@example.org")
        code, text = smtp.data(MESSAGE)
    assert (code, text) == (451, b"4.4.1 The smarthost is not reachable, try again later")
    assert not (tmp_path / "maildirs").exists()  # the client retries; nothing twice


def test_a_catch_all_takes_every_other_local_address(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "c.toml",
        f"""
[domains]
local = ["example.org", "example.jp"]
[smtpd]
listen = ["{HOST}:{port}"]
maildir = "{tmp_path}/maildirs"
mailboxes = ["taro@example.org"]
catch_all = "{tmp_path}/catch-all"
""",
    )
    server = SmtpdServer(*load_smtpd_config(config))
    with Running(server), connect(port, "127.0.0.10") as smtp:
        smtp.ehlo("client.example")
        smtp.mail("someone@aho.jp")
        for n in range(100):
            assert smtp.rcpt(f"guess{n}@example.jp") == (250, b"2.1.5 Ok")
        assert smtp.rcpt("taro@example.org") == (250, b"2.1.5 Ok")
        assert smtp.rcpt("taro@example.jp") == (250, b"2.1.5 Ok")  # another domain's taro
        assert smtp.data(MESSAGE) == (250, b"2.0.0 Ok: delivered")
    assert {path.name for path in (tmp_path / "maildirs").iterdir()} == {"example.org"}
    assert {path.name for path in (tmp_path / "maildirs" / "example.org").iterdir()} == {"taro"}
    caught = [path.read_bytes() for path in (tmp_path / "catch-all" / "new").iterdir()]
    assert len(caught) == 101  # one copy per recipient, as in their own Maildirs
    assert any(b"Delivered-To: taro@example.jp\n" in message for message in caught)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[smtpd]\n", "smtpd.mailboxes: mail for example.org needs mailboxes"),
        ('[smtpd]\nmailboxes = "taro"', "smtpd.mailboxes: expected a list of addresses"),
        ("[smtpd]\nmailboxes = [7]", "smtpd.mailboxes[0]: expected an address"),
        (
            '[smtpd]\nmailboxes = ["taro@example.org", "a b@example.org"]',
            "smtpd.mailboxes[1]: 'a b@example.org' is not a mailbox address",
        ),
        (
            '[smtpd]\nmailboxes = ["friend%aho.jp@example.org"]',
            "smtpd.mailboxes[0]: 'friend%aho.jp@example.org' routes mail elsewhere",
        ),
        (
            '[smtpd]\nmailboxes = ["taro@example.com"]',
            "smtpd.mailboxes: taro@example.com: example.com is not in domains.local",
        ),
        ("[smtpd]\ncatch_all = 1", "smtpd.catch_all: expected a path"),
        ('[smtpd]\nlisten = "x"', "smtpd.listen: expected a list"),
        ('[smtpd]\nlisten = ["nowhere"]', "smtpd.listen[0]: expected HOST:PORT"),
        ('[smtpd]\nsmarthost = "h:99999"', "smtpd.smarthost: port out of range"),
        ('[smtpd]\ntls_key = "k.pem"', "give both tls_certificate and tls_key"),
        ('[smtpd]\ntls_client_ca = "ca.pem"', "needs tls_certificate"),
        ("[smtpd]\nmaildri = 'x'", "smtpd.maildri: unknown key"),
        ("[smtpd]\nmax_message_size = 10", "at least 1024"),
        (
            '[smtp_auth]\nrequire_tls = true\n[smtpd]\npasswords = "p"',
            "needs smtpd.tls_certificate",
        ),
        ("[chain]\nsteps = ['pop']", "chain.steps[0]: unknown step"),
    ],
)
def test_configuration_errors_name_the_key(tmp_path: Path, table: str, message: str) -> None:
    path = write_config(tmp_path / "bad.toml", f'[domains]\nlocal = ["example.org"]\n{table}\n')
    with pytest.raises(ConfigError) as error:
        load_smtpd_config(path)
    assert message in str(error.value) and str(path) in str(error.value)


def test_the_example_configuration_loads() -> None:
    config, settings = load_smtpd_config(ROOT / "examples" / "smtpd.toml")
    assert settings.tls_certificate is not None and settings.passwords is not None
    assert config.local_domains


def test_mailbox_names_stay_in_their_directory() -> None:
    assert mailbox_name("Taro") == "taro"
    assert mailbox_name("first.last+tag") == "first.last%2Btag"
    assert mailbox_name("..") == "%2E."
    assert mailbox_name("a/b") == "a%2Fb"
    assert mailbox_name(".cur") == "%2Ecur"  # not a Maildir++ folder
    assert mailbox_name("[ipv6:2001:db8::1]") == "%5Bipv6%3A2001%3Adb8%3A%3A1%5D"


# --- the embedded default, as a new user runs it -------------------------------------------


def test_default_mode_end_to_end(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "smtpd.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "relaypolicy", "smtpd", "--listen", f"{HOST}:{port}"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_for_port(HOST, port)
        with connect(port, "127.0.0.10") as smtp:
            smtp.ehlo("client.example")
            assert not smtp.has_extn("auth")  # no password file: no AUTH offered
            smtp.mail("someone@aho.jp")
            assert smtp.rcpt("user@localhost") == (250, b"2.1.5 Ok")
            assert smtp.rcpt("victim@aho.jp") == (
                554,
                b"5.7.1 <victim@aho.jp>: Relay access denied",
            )
            assert smtp.data(MESSAGE)[0] == 250
        process.send_signal(signal.SIGHUP)  # no reload here: logged, and it keeps serving
        with connect(port, "127.0.0.1") as smtp:  # the trusted network
            smtp.ehlo("localhost")
            smtp.mail("me@localhost")
            assert smtp.rcpt("friend@aho.jp") == (250, b"2.1.5 Ok")
            assert smtp.data(MESSAGE)[0] == 250
    finally:
        process.send_signal(signal.SIGTERM)
        status = process.wait(10)
    output = tail(log)
    assert status == 0, output
    assert len(list((tmp_path / "maildirs" / "localhost" / "user" / "new").iterdir())) == 1
    assert len(list((tmp_path / "outgoing" / "new").iterdir())) == 1
    decisions = [line for line in output.splitlines() if "relaypolicy.decisions" in line]
    assert len(decisions) == 3, output
    assert "client=127.0.0.10" in decisions[1] and "verdict=REJECT" in decisions[1]
    assert "SIGHUP: relaypolicy smtpd does not reload" in output


def test_command_line_errors(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "relaypolicy", "smtpd"]
    missing = subprocess.run(
        [*run, "--config", str(tmp_path / "none.toml")], capture_output=True, text=True, check=False
    )
    assert missing.returncode == 66 and "no such file" in missing.stderr
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        address = f"{HOST}:{busy.getsockname()[1]}"
        taken = subprocess.run(
            [*run, "--listen", address],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=30,
            check=False,
        )
    assert taken.returncode == 71
    assert f"\nrelaypolicy smtpd: error: cannot listen on {address}: " in taken.stderr
