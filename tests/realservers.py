"""Helpers for tests that start a real server (Postfix, Dovecot, Redis).

The rule for real parts: a test whose server cannot run here *skips* with a
reason that says what is missing, except when ``RELAYPOLICY_REQUIRE_REAL=1`` (CI sets it),
where it *fails*: a green CI must mean the real parts ran. Route every "cannot run here"
through :func:`unavailable` so the rule lives in one place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest

from relaypolicy.cli import main

__all__ = [
    "REQUIRE_REAL_ENV",
    "alive",
    "audit_json",
    "children",
    "free_port",
    "mta_root",
    "real_parts_required",
    "require_binary",
    "require_loopback_address",
    "require_mta",
    "require_root",
    "tail",
    "terminate",
    "unavailable",
    "wait_for_port",
    "wait_gone",
]

REQUIRE_REAL_ENV = "RELAYPOLICY_REQUIRE_REAL"
MTA_ROOT_ENV = "RELAYPOLICY_MTA_ROOT"
_DEFAULT_MTA_ROOT = "/opt/relaypolicy-mta"

# Server binaries live in sbin directories that a developer's PATH often lacks.
_EXTRA_BINARY_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def real_parts_required() -> bool:
    """Whether a missing real part is a failure (CI) rather than a skip (a laptop)."""
    return os.environ.get(REQUIRE_REAL_ENV, "") == "1"


def unavailable(reason: str) -> NoReturn:
    """Skip the test because a real part cannot run here, or fail when they are required."""
    if real_parts_required():
        pytest.fail(f"{reason} ({REQUIRE_REAL_ENV}=1: real parts are required)", pytrace=False)
    pytest.skip(reason)


def require_binary(name: str, *, package: str | None = None) -> str:
    """The absolute path of an executable, else skip (or fail, see :func:`unavailable`).

    Looks on PATH, then in the sbin directories. ``package`` names the Debian package for
    the message (defaults to ``name``).
    """
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *_EXTRA_BINARY_DIRS])
    found = shutil.which(name, path=search)
    if found is None:
        unavailable(f"{name} is not installed (apt-get install -y {package or name})")
    return found


def mta_root() -> Path:
    """The private tree Sendmail, Exim and OpenSMTPD are unpacked into (``.ci/install-mtas``)."""
    return Path(os.environ.get(MTA_ROOT_ENV) or _DEFAULT_MTA_ROOT)


def require_mta(relative: str) -> Path:
    """A binary from the private MTA tree (e.g. ``usr/sbin/exim4``), else skip (or fail).

    Sendmail, Exim and OpenSMTPD conflict with Postfix as Debian packages, so
    ``.ci/install-mtas`` unpacks them into :func:`mta_root` instead of installing them.
    """
    binary = mta_root() / relative
    if not os.access(binary, os.X_OK):
        unavailable(f"{binary} is missing (run: sudo .ci/install-mtas; tree from ${MTA_ROOT_ENV})")
    return binary


def require_root(what: str) -> None:
    """Skip (or fail) unless running as root; ``what`` says who needs it and why."""
    if os.geteuid() != 0:
        unavailable(f"{what} needs root")


def require_loopback_address(address: str) -> None:
    """Skip (or fail) unless a client socket can bind ``address`` (e.g. ``127.0.0.10``).

    Linux routes all of 127.0.0.0/8 to the loopback interface; other systems only
    127.0.0.1 unless aliases are configured.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError as exc:
            unavailable(f"cannot bind loopback source address {address} ({exc})")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago (the server should bind it soon)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts TCP connections on ``host:port``; else TimeoutError."""
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s: {last_error}")
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc; empty elsewhere)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # "pid (comm) state ppid ...": comm may hold spaces, so split after the ")".
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # An exited process not yet reaped by its parent (init, for a daemon) is a zombie.
    with contextlib.suppress(OSError, IndexError):
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        return state != "Z"
    return True


def wait_gone(pids: Sequence[int], timeout: float) -> bool:
    """Wait until every process of ``pids`` has exited (a zombie counts as gone); whether
    they all did within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def terminate(process: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """End a server this test started: SIGTERM (its orderly stop), SIGKILL if it has not
    exited within ``timeout`` seconds; its exit status. Only this one process is signalled."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(timeout=timeout)


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, or a note that there is none (for failure messages)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # real-time: poll a real process, bounded


def audit_json(
    host: str, port: int, source: str, capsys: pytest.CaptureFixture[str], *options: str
) -> dict[str, Any]:
    """``relaypolicy audit --smtp HOST:PORT --source-address SOURCE --local-domain
    local.test --json`` plus ``options``, run in process against a real MTA: the JSON
    report, with the exit status under ``"status"``."""
    status = main(
        [
            *("audit", "--smtp", f"{host}:{port}", "--source-address", source),
            *("--local-domain", "local.test", "--json", *options),
        ]
    )
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    report["status"] = status
    return report
