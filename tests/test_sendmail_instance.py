"""The Sendmail harness (tests/sendmail_instance.py) against the real, unpacked Sendmail,
without relaypolicy: it starts and answers on loopback, its own relay check does what
docs/milter.md says, ``F=T`` turns a filter that is down into a temporary failure, and a
scripted filter on a raw socket sees the milter protocol and the macros the harness asks
Sendmail to send.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from realservers import alive, free_port, require_loopback_address
from sendmail_instance import MILTER_MACROS, SendmailConfig, ask, running_sendmail

pytestmark = pytest.mark.real

OUTSIDER = "127.0.0.10"
LOCALHOST = "127.0.0.1"


@pytest.fixture(autouse=True)
def _outsider_address() -> None:
    require_loopback_address(OUTSIDER)


def test_starts_answers_220_and_stops_without_leaving_a_process() -> None:
    with running_sendmail(SendmailConfig()) as sendmail:
        assert sendmail.process is not None
        pid = sendmail.process.pid
        with socket.create_connection((sendmail.host, sendmail.port), timeout=30) as sock:
            greeting = sock.makefile("rb").readline()
        assert greeting.startswith(b"220 mx.relaypolicy.test "), greeting
        assert sendmail.pid_file.read_text().split()[0] == str(pid)
    assert not alive(pid)


def test_own_relay_check_local_foreign_and_routed() -> None:
    """gate="sendmail": class w is local, the loopback client is trusted, a stranger is
    refused every foreign recipient, the routed forms included."""
    with running_sendmail(SendmailConfig(gate="sendmail")) as sendmail:
        assert ask(sendmail, OUTSIDER, "user@local.test")[:2] == ("RCPT", 250)
        assert ask(sendmail, LOCALHOST, "user@aho.jp")[:2] == ("RCPT", 250)
        for recipient in (
            "user@aho.jp",
            "user%aho.jp@local.test",
            "aho.jp!user@local.test",
            '"user@aho.jp"@local.test',
        ):
            answer = ask(sendmail, OUTSIDER, recipient)
            assert answer[:2] == ("RCPT", 550), (recipient, answer)
            assert "5.7.1" in answer.text and "Relaying denied" in answer.text, answer


def test_promiscuous_relay_without_a_milter_is_an_open_relay() -> None:
    """gate="milter" turns Sendmail's own check off: without the milter anyone relays.
    This is why that setup is safe only with the milter and F=T (docs/milter.md)."""
    with running_sendmail(SendmailConfig(gate="milter")) as sendmail:
        assert ask(sendmail, OUTSIDER, "user@aho.jp")[:2] == ("RCPT", 250)
        assert ask(sendmail, OUTSIDER, "user%aho.jp@local.test")[:2] == ("RCPT", 250)


@pytest.mark.parametrize("gate", ["milter", "sendmail"])
def test_filter_down_with_f_t_is_a_temporary_failure_never_an_accept(gate: str) -> None:
    """``F=T`` and nothing listening on the filter's port: Sendmail answers 4xx (at MAIL
    FROM: it could not open the filter at connect), for local and foreign recipients and
    for the loopback client it would otherwise trust."""
    dead = f"inet:{free_port()}@127.0.0.1"
    config = SendmailConfig(gate="milter" if gate == "milter" else "sendmail", milter=dead)
    with running_sendmail(config) as sendmail:
        for client in (OUTSIDER, LOCALHOST):
            for recipient in ("user@local.test", "user@aho.jp"):
                answer = ask(sendmail, client, recipient)
                assert answer == ("MAIL", 451, "4.3.2 Please try again later"), answer


def test_filter_down_without_f_t_carries_on_as_if_there_were_no_filter() -> None:
    """The failure mode docs/milter.md warns about: with no ``F=`` flag Sendmail ignores a
    filter it cannot reach, so with promiscuous_relay a stranger relays."""
    dead = f"inet:{free_port()}@127.0.0.1"
    config = SendmailConfig(gate="milter", milter=dead, milter_flags="")
    with running_sendmail(config) as sendmail:
        assert ask(sendmail, OUTSIDER, "user@aho.jp")[:2] == ("RCPT", 250)


@pytest.mark.parametrize("trust_auth", [True, False])
def test_smtp_auth_against_a_private_sasldb(trust_auth: bool) -> None:
    """SMTP AUTH works against the private sasldb; a wrong password is refused (535); the
    authenticated stranger relays through Sendmail's own check only with TRUST_AUTH_MECH."""
    config = SendmailConfig(sasl_users={"taro": "secret"}, trust_auth=trust_auth)
    with running_sendmail(config) as sendmail:
        wrong = ask(sendmail, OUTSIDER, "user@aho.jp", login=("taro", "wrong"))
        assert wrong[:2] == ("AUTH", 535), wrong
        relayed = ask(sendmail, OUTSIDER, "user@aho.jp", login=("taro", "secret"))
        assert relayed[:2] == (("RCPT", 250) if trust_auth else ("RCPT", 550)), relayed


# --- a scripted filter on a raw socket -----------------------------------------------------

SMFI_VERSION = 6


def _read_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def _packet(sock: socket.socket) -> bytes:
    (length,) = struct.unpack(">I", _read_exact(sock, 4))
    return _read_exact(sock, length)


def _send(sock: socket.socket, command: bytes, data: bytes = b"") -> None:
    sock.sendall(struct.pack(">I", len(command) + len(data)) + command + data)


def _macros(data: bytes) -> dict[str, str]:
    strings = data.split(b"\0")[:-1]
    return {
        strings[i].decode().strip("{}"): strings[i + 1].decode()
        for i in range(0, len(strings) - 1, 2)
    }


@dataclass
class Session:
    """What the scripted filter saw on one milter connection: the first packet, each
    packet's command, the macros sent for each stage (``D`` packets, by stage letter)."""

    first_packet: bytes = b""
    commands: list[bytes] = field(default_factory=list)
    macros: dict[str, dict[str, str]] = field(default_factory=dict)
    error: BaseException | None = None


@dataclass
class ScriptedFilter:
    """A milter answered by a script: negotiate, continue at CONNECT, HELO and MAIL,
    refuse every RCPT with ``reply``; with ``negotiate`` false, hang up after the first
    packet. Sendmail opens one connection per SMTP session (the harness's own readiness
    probe included), so each is served in a thread and recorded as a :class:`Session`."""

    listener: socket.socket
    reply: bytes = b"550 5.7.1 refused by the scripted filter"
    negotiate: bool = True
    sessions: list[Session] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # the listener was closed: the test is over
            session = Session()
            self.sessions.append(session)
            thread = threading.Thread(target=self._serve_one, args=(conn, session), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve_one(self, conn: socket.socket, session: Session) -> None:
        with conn:
            conn.settimeout(30)
            try:
                self._converse(conn, session)
            except (OSError, ValueError) as exc:
                session.error = exc

    def _converse(self, conn: socket.socket, session: Session) -> None:
        session.first_packet = _packet(conn)
        if not self.negotiate:
            return  # hang up: Sendmail must treat the filter as failed
        _send(conn, b"O", struct.pack(">III", SMFI_VERSION, 0, 0))
        while True:
            packet = _packet(conn)
            command = packet[:1]
            session.commands.append(command)
            if command == b"D":
                session.macros[packet[1:2].decode()] = _macros(packet[2:])
            elif command in (b"C", b"H", b"M"):
                _send(conn, b"c")
            elif command == b"R":
                _send(conn, b"y", self.reply + b"\0")
            elif command == b"Q":
                return
            elif command != b"A":  # abort: no reply
                _send(conn, b"c")

    def session_of(self, client: str) -> Session:
        """The session whose CONNECT macros name ``client``."""
        for session in self.sessions:
            if session.macros.get("C", {}).get("client_addr") == client:
                return session
        raise AssertionError(f"no milter session for {client}: {self.sessions}")


@contextlib.contextmanager
def scripted_filter(*, negotiate: bool = True) -> Iterator[tuple[ScriptedFilter, int]]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    script = ScriptedFilter(listener, negotiate=negotiate)
    thread = threading.Thread(target=script.serve, daemon=True)
    thread.start()
    try:
        yield script, listener.getsockname()[1]
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(timeout=10)
        for worker in script.threads:
            worker.join(timeout=40)


def test_sendmail_opens_the_filter_with_an_option_negotiation() -> None:
    """The first packet is SMFIC_OPTNEG (``O``, version, actions, protocol flags); a
    filter that hangs up after it is a failure, so ``F=T`` gives a 4xx."""
    with scripted_filter(negotiate=False) as (script, port):
        config = SendmailConfig(gate="milter", milter=f"inet:{port}@127.0.0.1")
        with running_sendmail(config) as sendmail:
            answer = ask(sendmail, OUTSIDER, "user@aho.jp")
    assert answer == ("MAIL", 451, "4.3.2 Please try again later"), answer
    assert script.sessions, "Sendmail never connected to the filter"
    for session in script.sessions:
        assert session.error is None, session.error
        assert session.first_packet[:1] == b"O", session.first_packet
        version, _actions, _protocol = struct.unpack(">III", session.first_packet[1:13])
        assert version >= 2


def test_the_filter_gets_the_macros_the_harness_asks_for_and_its_reply_is_sent() -> None:
    with scripted_filter() as (script, port):
        config = SendmailConfig(gate="milter", milter=f"inet:{port}@127.0.0.1")
        with running_sendmail(config) as sendmail:
            answer = ask(sendmail, OUTSIDER, "user@aho.jp", helo="helo.example")
            daemon_port = sendmail.port
    # Sendmail puts the recipient between the enhanced status code and the filter's text.
    assert answer == ("RCPT", 550, "5.7.1 <user@aho.jp>... refused by the scripted filter")
    session = script.session_of(OUTSIDER)
    assert session.error is None, session.error
    assert session.commands[:1] == [b"D"]
    for command in (b"C", b"H", b"M", b"R"):
        assert command in session.commands, session.commands
    connect, mail, rcpt = session.macros["C"], session.macros["M"], session.macros["R"]
    assert connect["daemon_port"] == str(daemon_port)
    assert connect["daemon_addr"] == "127.0.0.1"
    assert connect["daemon_name"] == "MTA"
    assert connect["j"] == "mx.relaypolicy.test"
    assert int(connect["client_port"]) > 0
    assert "auth_authen" not in mail  # no SMTP AUTH in this session: not sent at all
    assert mail["mail_addr"] == "sender@aho.jp"
    assert rcpt["rcpt_addr"] == "user@aho.jp"


def test_docs_give_the_macro_lines_the_harness_uses() -> None:
    """docs/milter.md's Sendmail snippets are the lines these tests run with."""
    docs = (Path(__file__).resolve().parent.parent / "docs" / "milter.md").read_text()
    heading = re.search(r"^## (\d+\. )?Sendmail$", docs, re.MULTILINE)
    assert heading is not None
    section = docs[heading.start() :]
    for stage, macros in MILTER_MACROS.items():
        line = f"define(`confMILTER_MACROS_{stage}', `{macros}')dnl"
        assert section.count(line) == 2, line  # in the list of macros and in setup 1
    assert "F=T, T=C:5s;S:5s;R:5s;E:10s')dnl" in section
    assert SendmailConfig().milter_flags == "T"
    assert SendmailConfig().milter_timeouts == "C:5s;S:5s;R:5s;E:10s"
