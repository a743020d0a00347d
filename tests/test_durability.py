"""Nothing acknowledged is lost: ``kill -9`` at random moments while logins are written.

A writer thread appends synthetic Dovecot login lines (one new address each) to a log.
``relaypolicy watch`` (with ``persist``) or ``relaypolicy serve`` (with ``[watch]`` and
``persist``) follows it and is killed with SIGKILL at a random moment, again and again.
After each restart every login written to the log before the kill must be in the table:
either it was durable before the watcher's position moved past it, or it is read again.

Real processes, started as an administrator would; every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from realservers import free_port, tail
from serve_process import Service, start_service

from relaypolicy.daemon.control import ask

KILLS = 24
CATCH_UP = 30.0  # seconds for a restarted process to hold every login; far more than needed
LOGIN = (
    "{stamp} pop3-login: Info: Login: user=<{user}>, method=PLAIN, rip={ip}, "
    "lip=127.0.0.1, mpid=3710, session=<PW95RVZh39h/AAAK>\n"
)
NOISE = "{stamp} pop3(u{n})<3710><PW95RVZh39h/AAAK>: Info: Disconnected: Logged out top=0/0\n"


class LoginWriter(threading.Thread):
    """Appends login lines, each from a new address (``10.x.y.z``), in small bursts,
    with other lines between; :meth:`written` is how many logins are in the log."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.addresses: list[str] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            n = 0
            while not self._halt.is_set():
                stamp = time.strftime("%b %d %H:%M:%S")
                for _ in range(3):
                    n += 1
                    ip = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
                    line = LOGIN.format(stamp=stamp, user=f"u{n}", ip=ip)
                    os.write(fd, line.encode())  # one write a line: always whole
                    with self._lock:
                        self.addresses.append(ip)
                os.write(fd, NOISE.format(stamp=stamp, n=n).encode())
                self._halt.wait(0.006)
        finally:
            os.close(fd)

    def written(self) -> list[str]:
        with self._lock:
            return list(self.addresses)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


STARTED: list[subprocess.Popen[bytes]] = []  # every process a kill loop started


@pytest.fixture(autouse=True)
def reap() -> Iterator[None]:
    """Whatever happens in a test, no process it started outlives it."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[LoginWriter]:
    log = tmp_path / "dovecot.log"
    log.write_bytes(b"")
    thread = LoginWriter(log)
    thread.start()
    yield thread
    thread.stop()


def policy_config(tmp_path: Path, *, export: bool) -> str:
    text = f"""
[domains]
local = ["example.org"]

[pop_before_smtp]
ttl = 1800
persist = "{tmp_path / "table.json"}"

[chain]
steps = ["pop_before_smtp", "local_domains"]

[watch]
log = "{tmp_path / "dovecot.log"}"
format = "dovecot"
position = "{tmp_path / "dovecot.pos"}"
interval = 0.05
"""
    if export:
        text += f'\n[[watch.export]]\npath = "{tmp_path / "map.txt"}"\nformat = "plain"\n'
        text += "interval = 0\n"
    return text


def kill_loop(
    writer: LoginWriter,
    start: Callable[[], subprocess.Popen[bytes]],
    table: Callable[[], set[str] | None],
    after_kill: Callable[[], None],
    describe: Callable[[], str],
) -> subprocess.Popen[bytes]:
    """Kill and restart ``KILLS`` times; after each restart wait until ``table()`` (the
    live table, ``None`` while it cannot be read) holds every login written before the
    kill. Returns the last process, running."""
    seed = int.from_bytes(os.urandom(4))
    rng = random.Random(seed)  # noqa: S311 (kill moments, not secrets)
    began = time.monotonic()
    process = start()
    STARTED.append(process)
    for kill in range(1, KILLS + 1):
        time.sleep(rng.uniform(0.02, 0.7))  # real-time: a random moment of its work
        before = writer.written()
        process.kill()
        process.wait(timeout=10)
        after_kill()
        time.sleep(rng.uniform(0, 0.1))  # real-time: logins keep coming while the process is down
        process = start()
        STARTED.append(process)
        deadline = time.monotonic() + CATCH_UP
        while True:
            if process.poll() is not None:
                pytest.fail(f"kill {kill}: the restarted process exited:\n{describe()}")
            held = table()
            missing = [a for a in before if held is None or a not in held]
            if not missing:
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"kill {kill} of {KILLS} (seed {seed}): {len(missing)} of the "
                    f"{len(before)} logins written before the kill are not in the table "
                    f"after the restart ({0 if held is None else len(held)} entries; first "
                    f"missing {missing[:3]})\n{describe()}"
                )
            time.sleep(0.05)  # real-time: poll the restarted process, bounded
    print(
        f"{KILLS} kills, {len(writer.written())} logins written, "
        f"{time.monotonic() - began:.1f} s (seed {seed})"
    )
    return process


def test_kill_9_of_watch_with_persist_loses_no_login(tmp_path: Path, writer: LoginWriter) -> None:
    config = tmp_path / "relaypolicy.toml"
    config.write_text(policy_config(tmp_path, export=True))
    exported = tmp_path / "map.txt"
    output = tmp_path / "watch.out"

    def start() -> subprocess.Popen[bytes]:
        with output.open("ab") as stream:
            return subprocess.Popen(
                [sys.executable, "-m", "relaypolicy", "watch", "--config", str(config)],
                stdout=stream,
                stderr=subprocess.STDOUT,
            )

    def table() -> set[str] | None:
        try:
            return set(exported.read_text().split())
        except FileNotFoundError:
            return None

    def after_kill() -> None:
        # The killed process's map shows what it had in memory: only the restarted one's
        # map tells what survived.
        exported.unlink(missing_ok=True)

    process = kill_loop(writer, start, table, after_kill, lambda: tail(output))
    finish(process, writer, table, tmp_path, lambda: tail(output))


def test_kill_9_of_serve_with_watch_loses_no_login(tmp_path: Path, writer: LoginWriter) -> None:
    services: list[Service] = []

    def start() -> subprocess.Popen[bytes]:
        services.append(start_service(tmp_path, policy_config(tmp_path, export=False)))
        return services[-1].process  # the reaper stops it if the test fails

    def table() -> set[str] | None:
        try:
            reply = ask(services[-1].control, {"command": "table"}, timeout=10)
        except OSError:
            return None
        return {entry["address"] for entry in reply.get("entries", [])}

    process = kill_loop(writer, start, table, lambda: None, lambda: tail(services[-1].log))
    finish(process, writer, table, tmp_path, lambda: tail(services[-1].log))


def test_kill_9_of_watch_feeding_a_service_loses_no_login(
    tmp_path: Path, writer: LoginWriter
) -> None:
    """``watch --control-socket``: its position moves only once the service (with
    ``persist``) has answered every login read, i.e. once they are in its journal."""
    service = start_service(tmp_path, policy_config(tmp_path, export=False).split("[watch]")[0])
    STARTED.append(service.process)
    output = tmp_path / "watch.out"
    command = [
        *(sys.executable, "-m", "relaypolicy", "watch", "--format", "dovecot"),
        *("--log", str(tmp_path / "dovecot.log"), "--position", str(tmp_path / "dovecot.pos")),
        *("--control-socket", str(service.control)),
    ]

    def start() -> subprocess.Popen[bytes]:
        with output.open("ab") as stream:
            return subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT)

    def table() -> set[str] | None:
        reply = ask(service.control, {"command": "table"}, timeout=10)
        return {entry["address"] for entry in reply.get("entries", [])}

    try:
        process = kill_loop(writer, start, table, lambda: None, lambda: tail(output))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, tail(output)
    finally:
        assert service.stop() == 0, tail(service.log)


def finish(
    process: subprocess.Popen[bytes],
    writer: LoginWriter,
    table: Callable[[], set[str] | None],
    tmp_path: Path,
    describe: Callable[[], str],
) -> None:
    """Stop writing; once every login is in the table, a clean stop (exit 0) leaves them
    all in the snapshot and an empty journal."""
    # Imported here so that the kill loops also run against a release without a journal.
    from relaypolicy.iptable.journal import read_journal
    from relaypolicy.iptable.persist import read_entries

    writer.stop()
    everything = writer.written()
    deadline = time.monotonic() + CATCH_UP
    while not set(everything) <= (table() or set()):
        assert time.monotonic() < deadline, f"not every login came in:\n{describe()}"
        time.sleep(0.05)  # real-time: poll, bounded by CATCH_UP
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0, describe()
    saved = {address for address, _, _ in read_entries(tmp_path / "table.json")}
    assert set(everything) <= saved
    assert read_journal(str(tmp_path / "table.json.journal")) == []
    # Temporary files the kills left beside the table and the position are gone (an
    # exported map's are the exporter's business).
    ours = re.compile(r"\.(table\.json|dovecot\.pos).*\.tmp|table\.json\.journal\.old")
    assert [p.name for p in tmp_path.iterdir() if ours.fullmatch(p.name)] == []


# --- an acknowledged change, a start-up that cannot keep state, a stop that could not -----


def test_an_acknowledged_add_survives_kill_9_of_serve(tmp_path: Path) -> None:
    config = policy_config(tmp_path, export=False).split("[watch]")[0]
    service = start_service(tmp_path, config)
    try:
        added = [f"198.51.100.{n}" for n in range(1, 21)]
        for address in added:
            reply = ask(service.control, {"command": "add", "address": address, "user": "u"})
            assert reply == {"ok": True, "added": address}
        service.process.kill()  # at once: no stop, no snapshot
        service.process.wait(timeout=10)
        service = start_service(tmp_path, config)
        held = {e["address"] for e in ask(service.control, {"command": "table"})["entries"]}
        assert set(added) <= held, f"{len(set(added) - held)} of 20 acknowledged adds lost"
    finally:
        service.stop()


def test_pipelined_changes_are_answered_in_order_once_durable(tmp_path: Path) -> None:
    """Many lines on one connection (as ``watch --control-socket`` sends them): each
    answered, in order; all in the journal when the answers arrive."""
    from relaypolicy.daemon.control import ask_many
    from relaypolicy.iptable.journal import read_journal

    config = policy_config(tmp_path, export=False).split("[watch]")[0]
    service = start_service(tmp_path, config)
    try:
        messages: list[dict[str, object]] = []
        for n in range(300):
            messages.append({"command": "add", "address": f"198.51.100.{n % 200}"})
            if n % 3 == 0:
                messages.append({"command": "remove", "address": f"198.51.100.{n % 200}"})
        messages.append({"command": "add", "address": "not an address"})
        replies = ask_many(service.control, messages)
        assert len(replies) == len(messages)
        for message, reply in zip(messages, replies, strict=True):
            if message["address"] == "not an address":
                assert reply["ok"] is False
            elif message["command"] == "add":
                assert reply == {"ok": True, "added": message["address"]}
            else:
                assert reply["ok"] is True and "removed" in reply
        journal = read_journal(str(tmp_path / "table.json.journal"))
        assert [op[0] for op in journal] == [
            "r" if m["command"] == "add" else "d" for m in messages[:-1]
        ]
    finally:
        assert service.stop() == 0


def test_a_change_the_service_could_not_save_is_not_acknowledged(tmp_path: Path) -> None:
    """The service took an ``add`` but its journal could not be written: the reply says
    so (``retry``), and ``watch --control-socket``'s table keeps the login and does not
    let the watcher save its position."""
    import asyncio

    from relaypolicy.daemon.control import ControlSocketTable, start_control, table_command
    from relaypolicy.iptable import ExpiringIpTable

    table = ExpiringIpTable(1800)
    disk_full = True
    path = tmp_path / "control.sock"

    def answer(line: bytes) -> dict[str, object]:
        message = json.loads(line)
        if message["command"] == "stats":
            return {"ok": True, "stats": {"pop-ttl": 1800}}
        return table_command(table, message["command"], message)

    async def durable() -> None:
        if disk_full:
            raise OSError(28, "No space left on device")

    ready = threading.Event()
    loops: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def main() -> None:
        done = asyncio.Event()
        server = await start_control(path, answer, durable=durable)
        loops.append((asyncio.get_running_loop(), done))
        ready.set()
        async with server:
            await done.wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    try:
        assert ready.wait(30)
        reply = ask(path, {"command": "add", "address": "198.51.100.7"})
        assert reply["ok"] is False and reply["retry"] is True
        assert "not saved to disk" in reply["error"]
        feed = ControlSocketTable(str(path))
        feed.record("198.51.100.8")
        assert feed.sync() is False  # not acknowledged: the position must not move
        assert feed.pending == 1
        disk_full = False
        assert feed.sync() is True
        assert feed.pending == 0
        assert "198.51.100.8" in table
    finally:
        if loops:
            loop, done = loops[0]
            loop.call_soon_threadsafe(done.set)
        thread.join(timeout=30)


def smtpd_config(tmp_path: Path, persist: str) -> Path:
    config = tmp_path / "smtpd.toml"
    config.write_text(
        f"""
[domains]
local = ["example.org"]

[pop_before_smtp]
persist = "{persist}"

[chain]
steps = ["pop_before_smtp", "local_domains"]

[smtpd]
listen = ["127.0.0.1:{free_port()}"]
maildir = "{tmp_path / "maildirs"}"
catch_all = "{tmp_path / "maildirs" / "catch-all"}"
control_socket = "{tmp_path / "control.sock"}"
"""
    )
    return config


def watch_config(tmp_path: Path, persist: str) -> Path:
    config = tmp_path / "watch.toml"
    (tmp_path / "dovecot.log").touch()
    config.write_text(
        f"""
[domains]
local = ["example.org"]

[pop_before_smtp]
persist = "{persist}"

[chain]
steps = ["pop_before_smtp", "local_domains"]

[watch]
log = "{tmp_path / "dovecot.log"}"
format = "dovecot"
"""
    )
    return config


def serve_config(tmp_path: Path, persist: str) -> Path:
    config = tmp_path / "serve.toml"
    config.write_text(
        f"""
[domains]
local = ["example.org"]

[pop_before_smtp]
persist = "{persist}"

[chain]
steps = ["pop_before_smtp", "local_domains"]

[serve]
listen = ["127.0.0.1:{free_port()}"]
control_socket = "{tmp_path / "control.sock"}"
"""
    )
    return config


CONFIGS = {"serve": serve_config, "smtpd": smtpd_config, "watch": watch_config}
READY = {"serve": "relaypolicy serving on", "smtpd": "listening on", "watch": "following"}


def unusable_persist(tmp_path: Path, kind: str) -> str:
    if kind == "missing directory":
        return str(tmp_path / "no-such-directory" / "table.json")
    if kind == "FIFO":
        os.mkfifo(tmp_path / "table.json")
        return str(tmp_path / "table.json")
    # Unwritable: root may write anywhere a mode allows; /sys refuses new files to all.
    if os.geteuid() == 0:
        return "/sys/relaypolicy-table.json"
    directory = tmp_path / "read-only"
    directory.mkdir(mode=0o500)
    return str(directory / "table.json")


@pytest.mark.parametrize("kind", ["missing directory", "FIFO", "unwritable directory"])
@pytest.mark.parametrize("command", ["serve", "smtpd", "watch"])
def test_an_unusable_persist_is_refused_at_start(tmp_path: Path, command: str, kind: str) -> None:
    persist = unusable_persist(tmp_path, kind)
    config = CONFIGS[command](tmp_path, persist)
    done = subprocess.run(
        [sys.executable, "-m", "relaypolicy", command, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,  # a FIFO opened for reading would block here for ever
        check=False,
    )
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert done.returncode == 78, done.stderr  # EX_CONFIG: the configured persist
    assert len(errors) == 1 and persist in errors[0], done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["serve", "smtpd", "watch"])
def test_a_table_that_cannot_be_saved_at_stop_exits_non_zero(tmp_path: Path, command: str) -> None:
    persist = tmp_path / "table.json"
    config = CONFIGS[command](tmp_path, str(persist))
    output = tmp_path / "out.log"
    with output.open("wb") as stream:
        process = subprocess.Popen(
            [sys.executable, "-m", "relaypolicy", command, "--config", str(config)],
            stdout=stream,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while READY[command] not in output.read_text(errors="replace"):
            assert process.poll() is None and time.monotonic() < deadline, tail(output)
            time.sleep(0.05)  # real-time: poll the process's log, bounded
        persist.unlink(missing_ok=True)  # written at start; now nothing can replace it
        persist.mkdir()
        (persist / "in-the-way").touch()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 74, tail(output)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert "could not save the table" in output.read_text(), tail(output)


def pop_policy(persist: str) -> str:
    """A POP-before-SMTP policy kept in ``persist`` (``start_service`` adds ``[serve]``)."""
    return f"""
[domains]
local = ["example.org"]

[pop_before_smtp]
persist = "{persist}"

[chain]
steps = ["pop_before_smtp", "local_domains"]
"""


def test_a_second_service_on_the_same_persist_is_refused_and_the_first_keeps_it(
    tmp_path: Path,
) -> None:
    persist = str(tmp_path / "table.json")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = start_service(tmp_path / "one", pop_policy(persist))
    try:
        assert first.ctl("add", "203.0.113.9")["ok"] is True
        second = subprocess.run(
            [
                *(sys.executable, "-m", "relaypolicy", "serve", "--config"),
                str(serve_config(tmp_path / "two", persist)),  # a copy, another port
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 78, second.stderr
        owner = f"{persist}: in use by another relaypolicy process (pid {first.process.pid})"
        assert owner in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        assert first.stop() == 0, tail(first.log)
    # The first saved its table, the acknowledged add in it, untouched by the second.
    assert "203.0.113.9" in Path(persist).read_text()


def test_check_with_the_config_sees_what_the_service_acknowledged(tmp_path: Path) -> None:
    """``relaypolicy check --config`` reads the journal too: an ``add`` answered a moment
    ago is in the journal only (the next snapshot is up to a minute away)."""
    persist = str(tmp_path / "table.json")
    service = start_service(tmp_path, pop_policy(persist))
    check = [
        sys.executable, "-m", "relaypolicy", "check", "--config", str(service.config),
        "--client-address", "203.0.113.9", "--recipient", "friend@elsewhere.test",
    ]  # fmt: skip
    try:
        before = subprocess.run(check, capture_output=True, text=True, timeout=60, check=False)
        assert before.returncode == 1, before.stdout + before.stderr  # reject
        assert service.ctl("add", "203.0.113.9")["ok"] is True
        assert "203.0.113.9" not in Path(persist).read_text()  # not in the snapshot yet
        after = subprocess.run(check, capture_output=True, text=True, timeout=60, check=False)
        assert after.returncode == 0, after.stdout + after.stderr  # accept: POP login
        assert "pop-before-smtp" in after.stdout
    finally:
        assert service.stop() == 0
