"""A private OpenSMTPD (6.8, from the tree ``.ci/install-mtas`` unpacks) with relaypolicy as
its ``proc-exec`` filter, for end-to-end tests.

What OpenSMTPD 6.8 needs, found out by running it (``smtpd -d -f FILE``):

- The queue is compiled in: ``/var/spool/smtpd``, which must be ``0711`` root (``smtpd``
  refuses to start otherwise, "must be rwx--x--x") and the unprivileged processes chroot
  to ``/var/lib/opensmtpd/empty``. Neither has an option, so the harness creates both
  (as root) when missing. The control socket is compiled in too (``/var/run/smtpd.sock``),
  so one instance runs at a time: the harness holds a lock file while one runs.
- ``proc-exec`` filters are started by the parent process through ``/bin/sh``
  (``system("exec COMMAND")``, ``fork_filter_process`` in ``smtpd.c``) as the
  ``filter``'s ``user`` (default: the daemon's user, ``opensmtpd`` on Debian), with
  ``smtpd``'s own environment, stdin and stdout one socket, stderr logged by ``smtpd``.
  The test interpreter lives under ``/root`` here, which the ``opensmtpd`` user cannot
  enter, so the test filter runs with ``user root group root``; the command sets
  ``PYTHONPATH`` itself (``/usr/bin/env``) so the filter imports this tree.
- When a filter exits, ``smtpd`` logs ``lost processor`` and shuts down
  (``parent_shutdown``): nothing is accepted without the filter.

The configuration is ``docs/opensmtpd.md``'s: the filtered listener tags its sessions and
only tagged sessions may relay, to any recipient (the filter is the gate). Every recipient
goes to one ``relay host`` on a loopback port nobody listens on: the tests never send
DATA, and nothing could leave the machine if one did.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from realservers import (
    alive,
    children,
    free_port,
    require_mta,
    require_root,
    tail,
    unavailable,
    wait_for_port,
    wait_gone,
    wait_until,
)

__all__ = ["OpenSmtpdInstance", "running_opensmtpd"]

ROOT = Path(__file__).resolve().parent.parent
SPOOL = Path("/var/spool/smtpd")
CHROOT = Path("/var/lib/opensmtpd/empty")
CONTROL = Path("/var/run/smtpd.sock")
LOCK = Path(tempfile.gettempdir()) / "relaypolicy-opensmtpd.lock"

SMTPD_CONF = """\
filter relaypolicy proc-exec "{command}" user root group root
listen on 127.0.0.1 port {port} tag RELAYPOLICY filter relaypolicy
action "out" relay host smtp://127.0.0.1:{dead_port}
match from any tag RELAYPOLICY for any action "out"
"""


@dataclass
class OpenSmtpdInstance:
    """A running ``smtpd -d`` and where its files are."""

    process: subprocess.Popen[bytes]
    directory: Path
    port: int
    relaypolicy_config: Path
    control: Path  # relaypolicy's control socket

    host = "127.0.0.1"

    @property
    def log(self) -> Path:
        return self.directory / "smtpd.log"

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log, lines)

    def filter_pids(self) -> list[int]:
        """The relaypolicy filter processes: descendants of smtpd's parent process (it
        forks, and the child runs the command through ``/bin/sh``)."""
        return [
            pid
            for pid in descendants(self.process.pid)
            if b"opensmtpd-filter" in _cmdline(pid) and b"/bin/sh" not in _cmdline(pid)
        ]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _prepare_system_directories() -> None:
    """The compiled-in queue and chroot directories, as ``smtpd`` wants them."""
    if not SPOOL.exists():
        SPOOL.mkdir(parents=True)
    os.chown(SPOOL, 0, 0)
    SPOOL.chmod(0o711)
    CHROOT.mkdir(parents=True, exist_ok=True)
    os.chown(CHROOT, 0, 0)
    CHROOT.chmod(0o755)


@contextlib.contextmanager
def running_opensmtpd(policy_toml: str, *, opensmtpd: str = "") -> Iterator[OpenSmtpdInstance]:
    """Start a private OpenSMTPD whose filter is relaypolicy with ``policy_toml`` (the
    policy part; the harness adds the ``[opensmtpd]`` section: the control socket, then
    the lines of ``opensmtpd``)."""
    smtpd = require_mta("usr/sbin/smtpd")
    require_root("OpenSMTPD (its queue is /var/spool/smtpd, its daemons drop privileges)")
    with open(LOCK, "w") as lock:
        _lock(lock.fileno())
        if CONTROL.exists() and _control_answers():
            unavailable(f"another smtpd is running ({CONTROL} answers)")
        _prepare_system_directories()
        directory = Path(tempfile.mkdtemp(prefix="relaypolicy-opensmtpd-"))
        directory.chmod(0o755)
        process: subprocess.Popen[bytes] | None = None
        try:
            control = directory / "relaypolicy.sock"
            config = directory / "relaypolicy.toml"
            config.write_text(
                policy_toml + f'\n[opensmtpd]\ncontrol_socket = "{control}"\n{opensmtpd}\n',
                encoding="utf-8",
            )
            port = free_port()
            command = (
                f"/usr/bin/env PYTHONPATH={ROOT} {sys.executable} -m relaypolicy "
                f"opensmtpd-filter --config {config}"
            )
            conf = directory / "smtpd.conf"
            conf.write_text(
                SMTPD_CONF.format(command=command, port=port, dead_port=free_port()),
                encoding="utf-8",
            )
            checked = subprocess.run(
                [str(smtpd), "-n", "-f", str(conf)], capture_output=True, text=True, check=False
            )
            assert checked.returncode == 0, f"smtpd -n: {checked.stdout}{checked.stderr}"
            with open(directory / "smtpd.log", "wb") as log:
                process = subprocess.Popen(
                    [str(smtpd), "-d", "-f", str(conf)], stdout=log, stderr=subprocess.STDOUT
                )
            instance = OpenSmtpdInstance(process, directory, port, config, control)
            try:
                wait_for_port("127.0.0.1", port, timeout=60)
                # smtpd listens before its filters have registered; wait for ours.
                wait_until(
                    lambda: (
                        b"handshake with smtpd" in instance.log.read_bytes()
                        or instance.process.poll() is not None
                    ),
                    "the filter's handshake",
                    timeout=60,
                )
                assert instance.process.poll() is None, "smtpd exited"
            except (TimeoutError, AssertionError) as exc:
                raise AssertionError(f"{exc}\n--- smtpd log ---\n{instance.log_tail()}") from None
            yield instance
        finally:
            if process is not None:
                pids = descendants(process.pid)
                OpenSmtpdInstance(process, directory, 0, Path(), Path()).stop()
                wait_gone([pid for pid in pids if alive(pid)], timeout=30)
            shutil.rmtree(directory, ignore_errors=True)


def _lock(fd: int, timeout: float = 300.0) -> None:
    """Take the one-instance lock, waiting a bounded time for another test's instance."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise AssertionError(f"another OpenSMTPD instance holds {LOCK}") from None
            time.sleep(0.2)  # real-time: wait for another test's smtpd, bounded


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``."""
    found: list[int] = []
    queue = [pid]
    while queue:
        below = children(queue.pop())
        found += below
        queue += below
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _control_answers() -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(CONTROL))
        except OSError:
            return False
        return True
