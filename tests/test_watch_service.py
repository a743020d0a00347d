"""The watcher wired in: the [watch] configuration, inside `relaypolicy serve`, and
`relaypolicy watch` on its own (feeding a running service, or exporting a map)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from realservers import free_port, wait_until
from serve_process import start_service

from relaypolicy import Request, Verdict
from relaypolicy.config import ConfigError, parse_config
from relaypolicy.daemon.runtime import Runtime
from relaypolicy.daemon.serve import Service
from relaypolicy.iptable.base import ManagedTable


def table_of(service: Runtime) -> ManagedTable:
    """The service's POP-before-SMTP table (these configurations have one)."""
    assert service.table is not None
    return service.table


LOGIN = (
    "{stamp} pop3-login: Info: Login: user=<{user}>, method=PLAIN, rip={ip}, "
    "lip=127.0.0.1, mpid=3710, session=<PW95RVZh39h/AAAK>\n"
)
FAILED = (
    "{stamp} pop3-login: Info: Disconnected (auth failed, 1 attempts in 2 secs): "
    "user=<{user}>, method=PLAIN, rip={ip}, lip=127.0.0.1, session=<RUJ6RVZhs9l/AAAK>\n"
)
# A Postfix line whose envelope sender is shaped like a Dovecot login (CVE-2001-1075).
FORGED = (
    "{stamp} mail postfix/smtpd[4242]: NOQUEUE: reject: RCPT from unknown[127.0.0.66]: "
    "554 5.7.1 <a@b>: Relay access denied; from=<pop3-login: Info: Login: user=<x>, "
    "method=PLAIN, rip=127.0.0.99, lip=127.0.0.1> to=<a@b>\n"
)


WATCH = [sys.executable, "-m", "relaypolicy", "watch"]


def now_stamp() -> str:
    return time.strftime("%b %d %H:%M:%S")


def append(path: Path, template: str, ip: str, user: str = "taro") -> None:
    with path.open("a") as log:
        log.write(template.format(stamp=now_stamp(), ip=ip, user=user))


POLICY = """
[domains]
local = ["example.org"]

[pop_before_smtp]
ttl = 1800

[chain]
steps = ["pop_before_smtp", "local_domains"]
"""


# --- the [watch] table ------------------------------------------------------------------


def config_with(watch: str, *, pop: bool = True) -> str:
    text = (
        POLICY
        if pop
        else POLICY.replace("[pop_before_smtp]\nttl = 1800\n", "").replace(
            '"pop_before_smtp", ', ""
        )
    )
    return text + "\n[watch]\n" + watch


def parse(text: str) -> object:
    import tomllib

    return parse_config(tomllib.loads(text))


def test_watch_settings_are_read() -> None:
    config = parse(
        config_with(
            'log = "/var/log/dovecot.log"\nformat = "dovecot"\nposition = "p.json"\n'
            'timezone = "Asia/Tokyo"\n'
            '[[watch.export]]\npath = "/tmp/x"\nformat = "postfix"\n'
            '[[watch.export]]\npath = "/tmp/y"\nformat = "exim"\ninterval = 2\n'
        )
    )
    watch = config.watch  # type: ignore[attr-defined]
    assert (watch.log, watch.format, watch.position) == (
        "/var/log/dovecot.log",
        "dovecot",
        "p.json",
    )
    assert [(e.path, e.format, e.interval) for e in watch.exports] == [
        ("/tmp/x", "postfix", 1.0),
        ("/tmp/y", "exim", 2.0),
    ]
    assert "watching /var/log/dovecot.log for dovecot logins" in config.describe()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("watch", "message"),
    [
        ('format = "dovecot"', "watch.log: missing"),
        ('log = "x"', "watch.format: missing"),
        ('log = "x"\nformat = "dovcot"', "watch.format: unknown login log format 'dovcot'"),
        ('log = "x"\nformat = "regex:(unclosed"', "watch.format: bad login regex"),
        ('log = "x"\nformat = "dovecot"\nfile = "y"', "watch.file: unknown key"),
        ('log = "x"\nformat = "dovecot"\ntimezone = "Mars/Base"', "watch.timezone: unknown zone"),
        ('log = "x"\nformat = "dovecot"\ninterval = 0', "watch.interval: expected seconds"),
        ('log = 7\nformat = "dovecot"', "watch.log: expected a file path, got 7"),
        ('log = "x"\nformat = "courier"\nsessions = true', "watch.sessions: only the dovecot"),
        ('log = "x"\nformat = "dovecot"\nmax_sessions = 0', "watch.max_sessions: expected 1"),
        (
            'log = "x"\nformat = "dovecot"\n[[watch.export]]\npath = "m"\nformat = "qmail"',
            "watch.export[0].format: expected one of postfix",
        ),
        (
            'log = "x"\nformat = "dovecot"\n[[watch.export]]\npath = "m"\nformat = "exim"\n'
            'map_type = "hash"',
            "watch.export[0].map_type: only the postfix format has one",
        ),
        (
            'log = "x"\nformat = "dovecot"\n[[watch.export]]\npath = "m"\nformat = "exim"\n'
            '[[watch.export]]\npath = "m"\nformat = "plain"',
            "two exports write the same path",
        ),
    ],
)
def test_bad_watch_settings_name_the_key(watch: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(config_with(watch))
    assert message in str(caught.value)


def test_sessions_setting_reaches_the_watcher(tmp_path: Path) -> None:
    from relaypolicy.iptable import ExpiringIpTable
    from relaypolicy.watch import DovecotSessions
    from relaypolicy.watch.runner import LoginWatch

    config = parse(
        config_with(f'log = "{tmp_path / "d.log"}"\nformat = "dovecot"\nsessions = true\n')
    )
    watch = LoginWatch(config.watch, ExpiringIpTable(60))  # type: ignore[attr-defined]
    assert isinstance(watch.watcher.sessions, DovecotSessions)
    assert watch.counters()["sessions"] == 0
    plain = parse(config_with(f'log = "{tmp_path / "d.log"}"\nformat = "dovecot"\n'))
    assert LoginWatch(plain.watch, ExpiringIpTable(60)).watcher.sessions is None  # type: ignore[attr-defined]


def test_watch_needs_a_table() -> None:
    with pytest.raises(ConfigError, match=r"watch: the watcher feeds the \[pop_before_smtp\]"):
        parse(config_with('log = "x"\nformat = "dovecot"', pop=False))


# --- inside `relaypolicy serve` ---------------------------------------------------------


def relay_request(ip: str) -> Request:
    return Request(client_address=ip, recipient="friend@elsewhere.example")


def exporting_service(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A serve configuration whose [watch] follows an empty Dovecot log and exports a
    Postfix map: (log, map, configuration file)."""
    log = tmp_path / "dovecot.log"
    log.write_text("")
    exported = tmp_path / "pop-before-smtp"
    config = tmp_path / "relaypolicy.toml"
    config.write_text(
        POLICY + f'\n[serve]\nlisten = ["127.0.0.1:{free_port()}"]\n\n'
        f'[watch]\nlog = "{log}"\nformat = "dovecot"\n'
        f'position = "{tmp_path / "pos.json"}"\ninterval = 0.05\n'
        f'[[watch.export]]\npath = "{exported}"\nformat = "postfix"\ninterval = 0\n'
    )
    return log, exported, config


def test_serve_runs_the_watcher_on_its_own_table(tmp_path: Path) -> None:
    log, exported, config = exporting_service(tmp_path)

    async def scenario() -> None:
        service = Service(config)
        await service.start()
        try:
            assert service.server.policy.check(relay_request("127.0.0.11")).verdict is (
                Verdict.REJECT
            )
            append(log, FAILED, "127.0.0.12")
            append(log, FORGED, "127.0.0.66")
            append(log, LOGIN, "127.0.0.11")
            deadline = time.monotonic() + 10
            while "127.0.0.11" not in table_of(service):
                assert time.monotonic() < deadline, "the login never reached the table"
                await asyncio.sleep(0.02)
            decision = service.server.policy.check(relay_request("127.0.0.11"))
            assert decision.verdict is Verdict.ACCEPT, decision
            assert "127.0.0.12" not in table_of(service)
            assert "127.0.0.99" not in table_of(service)
            while "127.0.0.11 OK" not in exported.read_text():
                assert time.monotonic() < deadline, "the map was never written"
                await asyncio.sleep(0.02)
            stats = service.stats()
            assert stats["watch-lines"] == 3
            assert stats["watch-logins"] == 1
            assert stats["table-entries"] == 1
        finally:
            await service.close()
        # Stopped: the map is emptied (nothing would expire its entries), the position kept.
        assert "127.0.0.11" not in exported.read_text()
        assert (tmp_path / "pos.json").exists()

    asyncio.run(scenario())


def test_the_map_follows_changes_the_watcher_did_not_make(tmp_path: Path) -> None:
    """`ctl add`, `ctl remove` and expiry reach the exported map, not only new logins."""
    from relaypolicy.daemon.control import table_command

    log, exported, config = exporting_service(tmp_path)

    async def until(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)

    def listed() -> set[str]:
        text = exported.read_text() if exported.exists() else ""
        return {line.split()[0] for line in text.splitlines() if line.endswith(" OK")}

    async def scenario() -> None:
        service = Service(config)
        await service.start()
        try:
            append(log, LOGIN, "127.0.0.11")
            await until(lambda: listed() == {"127.0.0.11"}, "the login in the map")
            # real-time: the service's own table runs on time.monotonic; this entry
            # expires half a second from now, and the map must follow.
            reply = table_command(service.table, "add", {"address": "127.0.0.14", "ttl": 0.5})
            assert reply["ok"], reply
            await until(lambda: listed() == {"127.0.0.11", "127.0.0.14"}, "ctl add in the map")
            await until(lambda: listed() == {"127.0.0.11"}, "the expired entry out of the map")
            assert table_command(service.table, "remove", {"address": "127.0.0.11"})["removed"]
            await until(lambda: listed() == set(), "ctl remove in the map")
        finally:
            await service.close()

    asyncio.run(scenario())


def test_reload_with_another_log_restarts_the_watcher(tmp_path: Path) -> None:
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    first.write_text("")
    second.write_text("")
    config = tmp_path / "relaypolicy.toml"
    port = free_port()

    def write(log: Path) -> None:
        config.write_text(
            POLICY + f'\n[serve]\nlisten = ["127.0.0.1:{port}"]\n\n[watch]\nlog = "{log}"\n'
            'format = "dovecot"\ninterval = 0.05\n'
        )

    write(first)

    async def scenario() -> None:
        service = Service(config)
        await service.start()
        try:
            write(second)
            assert service.reload() == "reloaded"
            deadline = time.monotonic() + 10
            while service.watch.watch is None or service.watch.watch.settings.log != str(second):
                assert time.monotonic() < deadline, "the watcher was not restarted"
                await asyncio.sleep(0.02)
            append(second, LOGIN, "127.0.0.13")
            while "127.0.0.13" not in table_of(service):
                assert time.monotonic() < deadline, "the new log is not followed"
                await asyncio.sleep(0.02)
        finally:
            await service.close()

    asyncio.run(scenario())


# --- `relaypolicy watch` ----------------------------------------------------------------


def watch_process(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    output = (tmp_path / "watch.out").open("wb")
    return subprocess.Popen(
        [*WATCH, *args],
        stdout=output,
        stderr=subprocess.STDOUT,
    )


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=20)


def test_watch_feeds_a_running_service_through_its_control_socket(tmp_path: Path) -> None:
    log = tmp_path / "dovecot.log"
    log.write_text("")
    service = start_service(tmp_path, POLICY)
    watcher = watch_process(
        tmp_path,
        "--log",
        str(log),
        "--format",
        "dovecot",
        "--position",
        str(tmp_path / "pos.json"),
        "--control-socket",
        str(service.control),
    )
    try:

        def listed() -> list[str]:
            entries = service.ctl("table")["entries"]
            assert isinstance(entries, list)
            return [entry["address"] for entry in entries]

        append(log, LOGIN, "127.0.0.11")
        append(log, FAILED, "127.0.0.12")
        wait_until(lambda: "127.0.0.11" in listed(), "the login in the service's table")
        assert "127.0.0.12" not in listed()
        assert stop(watcher) == 0
        # Lines written while the watcher is down are applied when it comes back.
        append(log, LOGIN, "127.0.0.14", user="hanako")
        watcher = watch_process(
            tmp_path,
            "--log",
            str(log),
            "--format",
            "dovecot",
            "--position",
            str(tmp_path / "pos.json"),
            "--control-socket",
            str(service.control),
        )
        wait_until(lambda: "127.0.0.14" in listed(), "the missed login after a restart")
    finally:
        assert stop(watcher) == 0, (tmp_path / "watch.out").read_text()
        assert service.stop() == 0


def test_watch_alone_exports_a_map_and_empties_it_on_stop(tmp_path: Path) -> None:
    log = tmp_path / "dovecot.log"
    log.write_text("")
    exported = tmp_path / "relay.map"
    watcher = watch_process(
        tmp_path, "--log", str(log), "--format", "dovecot", "--export", f"sendmail:{exported}"
    )
    try:
        append(log, LOGIN, "::ffff:127.0.0.15")
        append(log, FORGED, "127.0.0.66")
        wait_until(
            lambda: exported.exists() and "Connect:127.0.0.15 RELAY" in exported.read_text(),
            "the exported map",
        )
        assert "127.0.0.99" not in exported.read_text()
        watcher.send_signal(signal.SIGHUP)  # ignored: dying here would leave the map full
        append(log, LOGIN, "127.0.0.16")
        wait_until(lambda: "Connect:127.0.0.16 RELAY" in exported.read_text(), "a later login")
    finally:
        assert stop(watcher) == 0
    assert "127.0.0.15" not in exported.read_text()
    assert "SIGHUP ignored" in (tmp_path / "watch.out").read_text()
    assert "watch: stopped (lines 3, logins 2" in (tmp_path / "watch.out").read_text()


def test_scan_prints_the_logins_and_records_nothing(tmp_path: Path) -> None:
    log = tmp_path / "dovecot.log"
    append(log, LOGIN, "127.0.0.11")
    append(log, FAILED, "127.0.0.12")
    append(log, FORGED, "127.0.0.66")
    done = subprocess.run(
        [*WATCH, "--log", str(log), "--format", "dovecot", "--scan"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[1:] == ["127.0.0.11", "taro"]
    assert "3 lines, 1 logins, 0 refused as malformed" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "dovecot"], "give --log"),
        (["--log", "x"], "give --format"),
        (["--log", "x", "--format", "dovecot", "--export", "postfix"], "expected FORMAT:PATH"),
        (["--log", "x", "--format", "dovecot", "--export", "qmail:/tmp/m"], "expected one of"),
    ],
)
def test_watch_usage_errors(args: list[str], message: str) -> None:
    done = subprocess.run(
        [*WATCH, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 64
    assert message in done.stderr


def test_watch_without_a_service_says_so(tmp_path: Path) -> None:
    done = subprocess.run(
        [*WATCH, "--log", "x", "--format", "dovecot", "--control-socket", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 69
    assert "cannot use" in done.stderr


# --- inside `relaypolicy smtpd` ---------------------------------------------------------


def test_smtpd_runs_the_watcher_and_lets_a_pop_client_relay(tmp_path: Path) -> None:
    pytest.importorskip("aiosmtpd")
    import smtplib

    from relaypolicy.daemon.smtpd import SmtpdServer, load_smtpd_config

    log = tmp_path / "dovecot.log"
    log.write_text("")
    port = free_port()
    config = tmp_path / "smtpd.toml"
    config.write_text(
        POLICY + f'\n[watch]\nlog = "{log}"\nformat = "dovecot"\ninterval = 0.05\n\n'
        f'[smtpd]\nlisten = ["127.0.0.1:{port}"]\nhostname = "mx.example.org"\n'
        f'maildir = "{tmp_path / "maildirs"}"\noutgoing = "{tmp_path / "outgoing"}"\n'
        f'catch_all = "{tmp_path / "catch-all"}"\n'
    )

    def rcpt_code(source: str) -> int:
        with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=10) as client:
            client.ehlo("laptop.example")
            client.mail("taro@example.org")
            code, _ = client.rcpt("friend@elsewhere.example")
            return code

    async def scenario() -> None:
        loaded, settings = load_smtpd_config(config)
        server = SmtpdServer(loaded, settings)
        await server.start()
        try:
            assert await asyncio.to_thread(rcpt_code, "127.0.0.11") == 554
            append(log, LOGIN, "127.0.0.11")
            deadline = time.monotonic() + 10
            table = server.table
            assert table is not None
            while "127.0.0.11" not in table:
                assert time.monotonic() < deadline, "the login never reached the table"
                await asyncio.sleep(0.02)
            assert await asyncio.to_thread(rcpt_code, "127.0.0.11") == 250
            assert await asyncio.to_thread(rcpt_code, "127.0.0.12") == 554
        finally:
            await server.close()

    asyncio.run(scenario())
