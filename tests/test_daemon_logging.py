"""Where the long-running commands log (``[log] target``): a real syslog datagram from a
real ``relaypolicy serve``, the journal's stream without our timestamp, the fallbacks, and
the ``[log]`` settings' errors."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from serve_process import Service

from relaypolicy.config import ConfigError, LogSettings, parse_config
from relaypolicy.daemon.logging import configure_logging

#: Anything that looks like a time of day or a date our formatter would have written.
STAMP = re.compile(r"\d\d:\d\d:\d\d|\d{4}-\d\d-\d\d")

POLICY = """
[domains]
local = ["example.org"]

[chain]
steps = ["local_domains"]
otherwise = "reject"

[log]
target = "syslog"
facility = "local3"
address = "{address}"
"""

REQUEST = (
    b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=203.0.113.7\n"
    b"sender=someone@aho.jp\nrecipient=user@aho.jp\n\n"
)


@pytest.fixture
def syslog_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    """A datagram unix socket standing in for ``/dev/log``: what a syslog daemon reads."""
    path = tmp_path / "log.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(20)  # a bound wait for a real process, not a timing assertion
    try:
        yield receiver, path
    finally:
        receiver.close()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the ``relaypolicy`` logger back as it was after an in-process test."""
    root = logging.getLogger("relaypolicy")
    saved = (root.handlers[:], root.level, root.propagate)
    yield
    for handler in root.handlers:
        if handler not in saved[0]:
            handler.close()
    root.handlers[:], root.level, root.propagate = saved


def read_until(receiver: socket.socket, marker: str) -> str:
    """The first datagram that contains ``marker`` (startup lines come first)."""
    while True:
        datagram = receiver.recv(65536).decode()
        if marker in datagram:
            return datagram


def test_serve_logs_decisions_to_syslog(
    serve: Callable[[str], Service], syslog_socket: tuple[socket.socket, Path]
) -> None:
    """A real ``relaypolicy serve`` sends each decision as one syslog datagram:
    ``<PRI>`` for facility local3 (19) and severity info (6), the ``relaypolicy[PID]:``
    tag, and no timestamp of ours (syslog stamps the line itself)."""
    receiver, address = syslog_socket
    service = serve(POLICY.format(address=address))
    with socket.create_connection(("127.0.0.1", service.port), timeout=20) as client:
        client.sendall(REQUEST)
        answer = client.makefile("rb").readline()
    assert answer == b"action=554 5.7.1 Relay access denied\n"
    datagram = read_until(receiver, "verdict=")
    prefix = (
        f"<{19 * 8 + 6}>relaypolicy[{service.process.pid}]: INFO relaypolicy.decisions: "
        "client=203.0.113.7 sender=<someone@aho.jp> recipient=<user@aho.jp> verdict=REJECT "
        "policy="
    )
    assert datagram.startswith(prefix), datagram
    assert "\n" not in datagram
    assert STAMP.search(datagram) is None, datagram
    assert "verdict=" not in service.log.read_text()  # the decisions went to syslog only


def test_syslog_json_lines_carry_no_time(
    syslog_socket: tuple[socket.socket, Path], restore_logging: None
) -> None:
    """JSON to syslog: the record's fields, no ``time``; the default facility is mail (2)."""
    receiver, address = syslog_socket
    configure_logging(LogSettings(format="json", target="syslog", address=str(address)))
    logging.getLogger("relaypolicy.serve").warning("listening on %s", "inet:127.0.0.1:9998")
    datagram = receiver.recv(65536).decode()
    head, _, body = datagram.partition(": ")
    assert head == f"<{2 * 8 + 4}>relaypolicy[{os.getpid()}]"
    assert json.loads(body) == {
        "level": "warning",
        "logger": "relaypolicy.serve",
        "message": "listening on inet:127.0.0.1:9998",
    }


def test_unreachable_syslog_falls_back_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    missing = tmp_path / "no-syslog-here"
    configure_logging(LogSettings(target="syslog", address=str(missing)))
    logging.getLogger("relaypolicy.serve").info("still logged")
    lines = capsys.readouterr().err.splitlines()
    assert f"cannot reach syslog at {missing}" in lines[0]
    assert lines[1].endswith("INFO relaypolicy.serve: still logged")


def test_journald_outside_systemd_is_stderr_with_a_warning(
    capsys: pytest.CaptureFixture[str], restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    configure_logging(LogSettings(target="journald"))
    logging.getLogger("relaypolicy.serve").info("still logged")
    first, second = capsys.readouterr().err.splitlines()
    assert first.endswith(
        "WARNING relaypolicy: [log] target = journald, but stderr is not the journal: "
        "logging to stderr"
    )
    assert STAMP.match(first) is not None  # plain stderr keeps our timestamp
    assert second.endswith("INFO relaypolicy.serve: still logged")


CHILD = """
import logging, sys
from relaypolicy.config import LogSettings
from relaypolicy.daemon.logging import configure_logging
configure_logging(LogSettings(target=sys.argv[1], format=sys.argv[2]))
logging.getLogger("relaypolicy.serve").warning("reloaded")
logging.getLogger("relaypolicy.serve").error("cannot save")
"""


def child_stderr(tmp_path: Path, target: str, fmt: str, *, journal: str | None) -> list[str]:
    """What a real process writes to its stderr (a file) with ``JOURNAL_STREAM`` naming
    that file (``journal="self"``), another stream, or unset (``None``)."""
    path = tmp_path / f"stderr-{target}-{fmt}-{journal}"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with path.open("wb") as stream:
        status = os.fstat(stream.fileno())
        if journal == "self":
            env["JOURNAL_STREAM"] = f"{status.st_dev}:{status.st_ino}"
        elif journal is not None:
            env["JOURNAL_STREAM"] = journal
        subprocess.run(
            [sys.executable, "-c", CHILD, target, fmt],
            stderr=stream,
            env=env,
            check=True,
            timeout=60,
        )
    return path.read_text().splitlines()


@pytest.mark.parametrize("target", ["stderr", "journald"])
def test_journal_stream_drops_our_timestamp(tmp_path: Path, target: str) -> None:
    """Under systemd (``JOURNAL_STREAM`` names our stderr) the journal stamps each line:
    ours carry no time, and lead with the ``<N>`` severity the journal turns into the
    entry's priority. That holds for ``target = "stderr"`` too: no doubled timestamps."""
    assert child_stderr(tmp_path, target, "text", journal="self") == [
        "<4>WARNING relaypolicy.serve: reloaded",
        "<3>ERROR relaypolicy.serve: cannot save",
    ]
    first, _ = child_stderr(tmp_path, target, "json", journal="self")
    assert first.startswith("<4>")
    assert json.loads(first[3:]) == {
        "level": "warning",
        "logger": "relaypolicy.serve",
        "message": "reloaded",
    }


@pytest.mark.parametrize("journal", [None, "1:2"])
def test_stderr_outside_the_journal_is_stamped(tmp_path: Path, journal: str | None) -> None:
    """No ``JOURNAL_STREAM``, or one naming another stream (a child that inherited the
    variable but writes elsewhere): our own timestamp, no severity prefix."""
    lines = child_stderr(tmp_path, "stderr", "text", journal=journal)
    assert [STAMP.sub("T", line.split(" ", 2)[-1]) for line in lines] == [
        "WARNING relaypolicy.serve: reloaded",
        "ERROR relaypolicy.serve: cannot save",
    ]
    assert all(STAMP.match(line) for line in lines), lines
    first, _ = child_stderr(tmp_path, "stderr", "json", journal=journal)
    assert STAMP.match(json.loads(first)["time"]) is not None


def test_log_settings_defaults_and_values() -> None:
    domains = {"local": ["example.org"]}
    assert parse_config({"domains": domains}).log == LogSettings(
        level="INFO", format="text", target="stderr", facility="mail", address="/dev/log"
    )
    log = {"target": "syslog", "facility": "local7", "address": "/run/syslog.sock"}
    assert parse_config({"domains": domains, "log": log}).log == LogSettings(
        target="syslog", facility="local7", address="/run/syslog.sock"
    )


@pytest.mark.parametrize(
    ("log", "message"),
    [
        ({"target": "file"}, 'log.target: expected "stderr", "syslog" or "journald", got'),
        ({"target": "SYSLOG"}, "log.target: expected"),
        ({"facility": "mali"}, "log.facility: expected a syslog facility"),
        ({"facility": "local8"}, "log.facility: expected a syslog facility"),
        ({"facility": 2}, "log.facility: expected a syslog facility"),
        ({"address": "dev/log"}, "log.address: expected an absolute socket path, got 'dev/log'"),
        ({"adress": "/dev/log"}, "log.adress: unknown key"),
    ],
)
def test_log_settings_errors_name_the_key(log: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({"domains": {"local": ["example.org"]}, "log": log})
