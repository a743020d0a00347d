"""`relaypolicy opensmtpd-filter` as a process, driven over its stdin and stdout by the test
the way smtpd drives it: the handshake, report events, rcpt-to requests.

Pipes for most tests; one socketpair as both stdin and stdout, which is what smtpd gives
its filters (``fork_filter_process`` in ``smtpd.c``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serve_process
from realservers import wait_until
from redis_instance import running_redis

from relaypolicy.daemon.control import ask

ROOT = Path(__file__).resolve().parent.parent
SESSION = "59a30825cff1988c"
TOKEN = "b06ff848e1a499f1"
HANDSHAKE = (
    b"config|smtpd-version|6.8.0p2\nconfig|smtp-session-timeout|300\n"
    b"config|subsystem|smtp-in\nconfig|admd|vm\nconfig|ready\n"
)

CONFIG = """
[domains]
local = ["local.test"]

[networks]
trusted = ["127.0.0.1/32"]

[pop_before_smtp]
ttl = 600
persist = "{persist}"

[chain]
steps = ["trusted_networks", "sasl_permit", "pop_before_smtp", "local_domains"]

[log]
level = "debug"

[opensmtpd]
control_socket = "{control}"
"""


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "always"}


class Filter:
    """One filter process; the test is smtpd."""

    def __init__(
        self, directory: Path, *, socketpair: bool = False, config: str = "", extra: str = ""
    ) -> None:
        """``config``: the policy part instead of :data:`CONFIG` (the ``[opensmtpd]``
        section with the control socket is added); ``extra``: lines added at the end."""
        self.directory = directory
        self.control = directory / "control.sock"
        self.persist = directory / "table.json"
        self.config = directory / "relaypolicy.toml"
        if config:
            text = config + f'\n[opensmtpd]\ncontrol_socket = "{self.control}"\n'
        else:
            text = CONFIG.format(persist=self.persist, control=self.control)
        self.config.write_text(text + extra, encoding="utf-8")
        self.stderr = directory / "stderr.log"
        command = [sys.executable, "-m", "relaypolicy", "opensmtpd-filter"]
        command += ["--config", str(self.config)]
        self._ours: socket.socket | None = None
        with open(self.stderr, "wb") as err:
            if socketpair:
                ours, theirs = socket.socketpair()
                self._ours = ours
                self.process = subprocess.Popen(
                    command,
                    stdin=theirs.fileno(),
                    stdout=theirs.fileno(),
                    stderr=err,
                    env=environment(),
                )
                theirs.close()
            else:
                self.process = subprocess.Popen(
                    command,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    env=environment(),
                )
        self.received = b""

    def write(self, data: bytes) -> None:
        if self._ours is not None:
            self._ours.sendall(data)
        else:
            assert self.process.stdin is not None
            self.process.stdin.write(data)
            self.process.stdin.flush()

    def _read(self) -> bytes:
        if self._ours is not None:
            return self._ours.recv(65536)
        assert self.process.stdout is not None
        return os.read(self.process.stdout.fileno(), 65536)

    def read_lines(self, count: int, timeout: float = 30.0) -> list[str]:
        """The next ``count`` lines the filter wrote (a bounded wait)."""
        deadline = time.monotonic() + timeout
        while self.received.count(b"\n") < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.received!r} after {timeout}s:\n{self.log()}")
            if self._ours is not None:
                self._ours.settimeout(max(0.1, deadline - time.monotonic()))
            chunk = self._read()
            if not chunk:
                raise AssertionError(f"the filter closed its stdout:\n{self.log()}")
            self.received += chunk
        lines = self.received.split(b"\n")
        taken, rest = lines[:count], lines[count:]
        self.received = b"\n".join(rest)
        return [line.decode() for line in taken]

    def handshake(self) -> list[str]:
        self.write(HANDSHAKE)
        lines: list[str] = []
        while not lines or lines[-1] != "register|ready":
            lines += self.read_lines(1)
        return lines

    def connect(self, session: str, client: str, version: str = "0.6") -> None:
        self.write(
            f"report|{version}|1.0|smtp-in|link-connect|{session}|rdns|pass|"
            f"{client}:40000|127.0.0.1:25\n".encode()
        )

    def rcpt(self, session: str, recipient: str, version: str = "0.6") -> str:
        self.write(f"filter|{version}|1.0|smtp-in|rcpt-to|{session}|{TOKEN}|{recipient}\n".encode())
        [line] = self.read_lines(1)
        prefix = f"filter-result|{session}|{TOKEN}|"
        assert line.startswith(prefix), line
        return line[len(prefix) :]

    def close_input(self) -> None:
        if self._ours is not None:
            self._ours.shutdown(socket.SHUT_WR)
        else:
            assert self.process.stdin is not None
            self.process.stdin.close()

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._ours is not None:
            self._ours.close()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Filter]:
    process = Filter(tmp_path)
    try:
        process.handshake()
        yield process
    finally:
        process.stop()


def session(n: int) -> str:
    return f"{n:016x}"


def test_handshake_registers_rcpt_to_and_the_session_events(tmp_path: Path) -> None:
    process = Filter(tmp_path)
    try:
        lines = process.handshake()
    finally:
        process.stop()
    assert "register|filter|smtp-in|rcpt-to" in lines
    for event in ("link-connect", "link-auth", "link-tls", "link-disconnect", "tx-mail"):
        assert f"register|report|smtp-in|{event}" in lines


def test_decisions_trusted_untrusted_local_foreign(running: Filter) -> None:
    running.connect(session(1), "127.0.0.1")
    running.connect(session(2), "127.0.0.10")
    assert running.rcpt(session(1), "user@foreign.example") == "proceed"
    assert running.rcpt(session(2), "user@local.test") == "proceed"
    assert running.rcpt(session(2), "user@foreign.example") == (
        "reject|554 5.7.1 <user@foreign.example>: Relay access denied"
    )
    # Routing tricks through a local domain are relaying too.
    assert running.rcpt(session(2), "user%foreign.example@local.test").startswith("reject|554 ")
    assert running.rcpt(session(2), "foreign.example!user@local.test").startswith("reject|554 ")
    assert running.rcpt(session(2), "@local.test:user@foreign.example").startswith("reject|5")


def test_smtp_auth_login_relays_and_a_failed_one_does_not(running: Filter) -> None:
    running.connect(session(3), "127.0.0.10")
    running.write(f"report|0.6|1.0|smtp-in|link-auth|{session(3)}|alice|fail\n".encode())
    assert running.rcpt(session(3), "user@foreign.example").startswith("reject|554 ")
    running.write(f"report|0.6|1.0|smtp-in|link-auth|{session(3)}|alice|pass\n".encode())
    assert running.rcpt(session(3), "user@foreign.example") == "proceed"
    # 0.7 (OpenSMTPD 7.4+) sends the result first.
    running.connect(session(4), "127.0.0.10", version="0.7")
    running.write(f"report|0.7|1.0|smtp-in|link-auth|{session(4)}|pass|bob\n".encode())
    assert running.rcpt(session(4), "user@foreign.example", version="0.7") == "proceed"


def test_disconnect_forgets_the_session_and_unknown_sessions_get_451(running: Filter) -> None:
    running.connect(session(5), "127.0.0.1")
    assert running.rcpt(session(5), "user@foreign.example") == "proceed"
    running.write(f"report|0.6|1.0|smtp-in|link-disconnect|{session(5)}\n".encode())
    assert running.rcpt(session(5), "user@foreign.example").startswith("reject|451 4.3.5 ")
    # A local submission through smtpd's unix socket has no client address.
    running.write(
        f"report|0.6|1.0|smtp-in|link-connect|{session(6)}|localhost|pass|"
        "unix:/var/run/smtpd.sock|unix:/var/run/smtpd.sock\n".encode()
    )
    assert running.rcpt(session(6), "user@local.test").startswith("reject|451 4.3.5 ")


def test_malformed_lines_are_logged_and_a_request_among_them_gets_451(running: Filter) -> None:
    running.connect(session(7), "127.0.0.1")
    running.write(b"nonsense from smtpd\n")
    running.write(f"filter|0.6|1.0|smtp-in|rcpt-to|{session(7)}|{TOKEN}\n".encode())  # 7 fields
    [line] = running.read_lines(1)
    assert line == (
        f"filter-result|{session(7)}|{TOKEN}|reject|451 4.3.0 "
        "Policy service cannot evaluate this request"
    )
    # An unknown protocol version is not guessed at.
    running.write(f"filter|0.9|1.0|smtp-in|rcpt-to|{session(7)}|{TOKEN}|u@local.test\n".encode())
    assert running.read_lines(1)[0].endswith(
        "|reject|451 4.3.0 Policy service cannot evaluate this request"
    )
    # The stream goes on.
    assert running.rcpt(session(7), "user@foreign.example") == "proceed"
    wait_until(lambda: "unknown line type" in running.log(), "the warning in the log")
    stats = ask(running.control, {"command": "stats"})["stats"]
    assert stats["protocol-malformed"] == 2
    assert stats["protocol-version"] == 1
    assert stats["requests"] == 1
    assert stats["verdict:accept"] == 1
    assert stats["sessions-open"] == 1


def test_pop_before_smtp_through_the_control_socket(running: Filter) -> None:
    running.connect(session(8), "127.0.0.10")
    assert running.rcpt(session(8), "user@foreign.example").startswith("reject|554 ")
    reply = ask(running.control, {"command": "add", "address": "127.0.0.10", "user": "taro"})
    assert reply["ok"], reply
    assert running.rcpt(session(8), "user@foreign.example") == "proceed"
    assert ask(running.control, {"command": "remove", "address": "127.0.0.10"})["ok"]
    assert running.rcpt(session(8), "user@foreign.example").startswith("reject|554 ")


def test_stdin_closing_stops_the_filter_and_saves_the_table(tmp_path: Path) -> None:
    process = Filter(tmp_path)
    try:
        process.handshake()
        assert ask(process.control, {"command": "add", "address": "192.0.2.7"})["ok"]
        process.close_input()
        assert process.process.wait(timeout=30) == 0, process.log()
    finally:
        process.stop()
    saved = json.loads(process.persist.read_text())
    assert "192.0.2.7" in json.dumps(saved)
    assert not process.control.exists()


def test_over_a_socketpair_as_smtpd_runs_it(tmp_path: Path) -> None:
    process = Filter(tmp_path, socketpair=True)
    try:
        process.handshake()
        process.connect(session(9), "127.0.0.10")
        assert process.rcpt(session(9), "user@local.test") == "proceed"
        assert process.rcpt(session(9), "user@foreign.example").startswith("reject|554 ")
        process.close_input()  # smtpd exits: our input ends
        assert process.process.wait(timeout=30) == 0, process.log()
    finally:
        process.stop()


def test_sighup_reloads_the_policy(running: Filter) -> None:
    running.connect(session(10), "127.0.0.10")
    assert running.rcpt(session(10), "user@other.test").startswith("reject|554 ")
    text = running.config.read_text().replace(
        'local = ["local.test"]', 'local = ["local.test", "other.test"]'
    )
    running.config.write_text(text)
    running.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "reloaded" in running.log(), "the reload")
    assert running.rcpt(session(10), "user@other.test") == "proceed"


def test_stdout_carries_only_the_protocol(tmp_path: Path) -> None:
    """Debug logging, a malformed line and a broken reload all log; none of it may reach
    stdout, where smtpd would read it as protocol."""
    process = Filter(tmp_path)
    try:
        process.handshake()
        process.connect(session(11), "127.0.0.1")
        process.write(b"garbage\n")
        process.config.write_text("[chain\n")
        process.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload failed" in process.log(), "the failed reload")
        assert process.rcpt(session(11), "user@local.test") == "proceed"
        process.close_input()
        assert process.process.wait(timeout=30) == 0
        assert process.process.stdout is not None
        rest = process.received + process.process.stdout.read()
    finally:
        process.stop()
    assert rest == b""
    log = process.log()
    assert "unknown line type" in log and "reload failed" in log
    assert "verdict=ACCEPT" in log  # the decision line went to stderr


def test_a_stray_print_goes_to_stderr_not_to_the_protocol() -> None:
    """The command moves the protocol off descriptor 1 before anything runs."""
    code = (
        "import os, sys\n"
        "from relaypolicy.cli.opensmtpd import _protect_stdout\n"
        "fd = _protect_stdout()\n"
        "print('stray print')\n"
        "os.write(1, b'stray write\\n')\n"
        "os.write(fd, b'protocol\\n')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=environment(), timeout=60, check=True
    )
    assert done.stdout == b"protocol\n"
    assert b"stray print" in done.stderr and b"stray write" in done.stderr


def test_a_configuration_that_cannot_be_read_exits_66_on_stderr(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "relaypolicy", "opensmtpd-filter", "--config", str(tmp_path / "x")],
        capture_output=True,
        env=environment(),
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 66
    assert done.stdout == b""
    assert done.stderr.startswith(b"relaypolicy opensmtpd-filter: error: ")


def dovecot_login(client: str) -> str:
    return (
        time.strftime("%b %d %H:%M:%S")
        + f" pop3-login: Info: Login: user=<taro>, method=PLAIN, rip={client}, "
        "lip=127.0.0.1, mpid=1, session=<abc>\n"
    )


def test_the_watcher_feeds_the_filters_table(tmp_path: Path) -> None:
    """[watch] in the filter's own file: a POP3 login in the log lets that client relay."""
    log = tmp_path / "dovecot.log"
    log.write_text("")
    watch = f'\n[watch]\nlog = "{log}"\nformat = "dovecot"\ninterval = 0.05\n'
    process = Filter(tmp_path, extra=watch)
    try:
        process.handshake()
        process.connect(session(12), "127.0.0.21")
        assert process.rcpt(session(12), "user@foreign.example").startswith("reject|554 ")
        with log.open("a") as stream:
            stream.write(dovecot_login("127.0.0.21"))
        wait_until(
            lambda: process.rcpt(session(12), "user@foreign.example") == "proceed",
            "the login to let 127.0.0.21 relay",
        )
    finally:
        process.stop()


REDIS_CONFIG = """
[domains]
local = ["local.test"]

[pop_before_smtp]
ttl = 1800
state = "{url}"
max_staleness = 1

[chain]
steps = ["pop_before_smtp", "local_domains"]
"""


@pytest.mark.real
def test_a_redis_fleet_feeds_the_filter_and_an_unreadable_table_defers(tmp_path: Path) -> None:
    """A login recorded through `relaypolicy serve`'s control socket reaches the filter
    through Redis; with Redis gone longer than max_staleness, the filter's table cannot be
    read and a relay from an unknown client gets a 451, never a proceed."""
    with running_redis() as redis_server:
        config = REDIS_CONFIG.format(url=redis_server.url)
        (tmp_path / "serve").mkdir()
        service = serve_process.start_service(tmp_path / "serve", config)
        process = Filter(tmp_path, config=config)
        try:
            process.handshake()
            process.connect(session(13), "127.0.0.31")
            process.connect(session(14), "127.0.0.32")
            wait_until(
                lambda: process.rcpt(session(13), "user@foreign.example").startswith("reject|554 "),
                "the filter's replica to load",
                timeout=30,
            )
            assert service.ctl("add", "127.0.0.31")["ok"]
            wait_until(
                lambda: process.rcpt(session(13), "user@foreign.example") == "proceed",
                "the login to reach the filter through Redis",
                timeout=30,
            )
            redis_server.kill()
            wait_until(
                lambda: (
                    process.rcpt(session(14), "user@foreign.example")
                    == "reject|451 4.3.0 Temporary lookup failure"
                ),
                "the filter to defer an unknown client once cut off",
                timeout=30,
            )
            assert process.rcpt(session(14), "user@local.test") == "proceed"
        finally:
            process.stop()
            service.stop()


def test_no_opinion_is_a_refusal(tmp_path: Path) -> None:
    """A chain that ends without an answer (otherwise = "next") must not let smtpd's
    relay-anything match rule decide: the filter refuses."""
    config = """
[networks]
trusted = ["127.0.0.1/32"]

[chain]
steps = ["trusted_networks"]
otherwise = "next"
"""
    process = Filter(tmp_path, config=config)
    try:
        process.handshake()
        process.connect(session(15), "127.0.0.10")
        assert process.rcpt(session(15), "user@foreign.example") == (
            "reject|554 5.7.1 <user@foreign.example>: Relay access denied"
        )
        process.connect(session(16), "127.0.0.1")
        assert process.rcpt(session(16), "user@foreign.example") == "proceed"
    finally:
        process.stop()
