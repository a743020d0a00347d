"""A private Dovecot instance for tests: POP3 (and, on request, IMAP) on loopback ports,
an auth socket for Postfix's Dovecot SASL, and login lines in a log file.

Theory of operation
-------------------
:func:`running_dovecot` writes one self-contained ``dovecot.conf`` (nothing from
``/etc/dovecot`` is included) into a fresh temporary directory and runs ``dovecot -c FILE``,
which daemonises. Everything the instance owns lives below that directory: ``base_dir``
(the master's pid file and internal sockets), ``state_dir``, the ``passwd-file`` of users,
their homes, the log file and the auth socket for Postfix. The only listeners on the network
are POP3 and, with ``protocols=("pop3", "imap")`` (Debian's ``dovecot-imapd``), IMAP, each on
a free port of a loopback address; ``pop3s`` and ``imaps`` are switched off.

Dovecot's unprivileged processes need the directory: auth (``dovecot`` user) reads the
passwd-file, pop3 (the mail user) opens the homes, and Postfix's smtpd (``postfix`` user)
connects to the auth socket. So the root is world-traversable (0755); it holds nothing but
test passwords.

Logging: ``log_path`` and ``info_log_path`` name the same file, so one file carries the
login lines a log watcher reads, with Dovecot's own file format (``log_timestamp`` prefix,
then ``pop3-login: Info: Login: user=<taro>, method=PLAIN, rip=127.0.0.10, ...``).
The mail processes log a session's end with the session id of its login line
(``imap(taro)<6072><PW95RVZh39h/AAAK>: Info: Logged out ...``). ``auth_verbose`` adds
the reason for every failed login. ``auth_failure_delay = 0`` and no
anvil auth penalty keep a failed login from taking Dovecot's default 2 s, or longer for a
repeat offender; it still takes about 0.5 s, as the auth process sends failures on a
500 ms timer. The log file is root's, mode 0600. After the log is renamed away,
:meth:`DovecotInstance.log_reopen` (``doveadm -c FILE log reopen``, through the master's
socket in our own ``base_dir``) makes the log process create it anew.

Stopping: SIGTERM to the master whose pid is in our own ``base_dir``, which is what
``doveadm -c FILE stop`` does; but doveadm then waits for the pid to vanish, and an exited
daemon stays a zombie until init reaps it, which some container inits do only every few
seconds. The fixture instead waits until the master and the children it had have exited
(zombies count as gone; SIGKILL after a timeout). The master takes about a second to let
its log process drain. Only this instance's processes are ever signalled.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import poplib
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from realservers import (
    children,
    free_port,
    require_binary,
    require_loopback_address,
    require_root,
    tail,
    unavailable,
    wait_gone,
)

__all__ = ["DovecotInstance", "SourcedIMAP4", "SourcedPOP3", "running_dovecot"]

START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

# Mail users are unprivileged; Dovecot refuses uids below first_valid_uid (500 by default).
MAIL_USER = "nobody"

# Where Dovecot's service binaries live (Debian: /usr/lib/dovecot).
_LIBEXEC_DIRS = ("/usr/lib/dovecot", "/usr/libexec/dovecot", "/usr/local/libexec/dovecot")

_USER_NAME = re.compile(r"[A-Za-z0-9._+-]+")

_DOVECOT_CONF = """\
# A private Dovecot instance started by relaypolicy's tests.
instance_name = {instance_name}
base_dir = {base_dir}
state_dir = {state_dir}
protocols = {protocols}
listen = {host}

log_path = {log_path}
info_log_path = {log_path}
auth_verbose = yes
auth_failure_delay = 0

# Plaintext passwords over an unencrypted connection: acceptable only because the instance
# listens on a loopback address and its users exist for the test alone.
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login

default_internal_user = dovecot
default_login_user = dovenull

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd_file}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={home_dir}/%u
}}
mail_location = maildir:~/Maildir

# Failed logins answered at once: no fixed delay (auth_failure_delay above) and no growing
# per-address penalty from anvil, which would make each later failure slower.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}

service pop3-login {{
  inet_listener pop3 {{
    address = {host}
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
{imap_service}
# For Postfix: smtpd_sasl_type = dovecot, smtpd_sasl_path = {auth_socket}
service auth {{
  unix_listener {auth_socket} {{
    mode = 0666
  }}
}}
"""

_IMAP_SERVICE = """
service imap-login {{
  inet_listener imap {{
    address = {host}
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""

# The login process each protocol needs (Debian: dovecot-pop3d, dovecot-imapd).
_PACKAGES = {"pop3": "dovecot-pop3d", "imap": "dovecot-imapd"}


@dataclass
class DovecotInstance:
    """A configured (and, inside :func:`running_dovecot`, running) private instance."""

    root: Path
    users: Mapping[str, str]
    pop3_port: int
    host: str = "127.0.0.1"
    dovecot: str = "dovecot"
    protocols: tuple[str, ...] = ("pop3",)
    imap_port: int = 0  # with "imap" in protocols
    doveadm: str = "doveadm"

    @property
    def config_path(self) -> Path:
        return self.root / "dovecot.conf"

    @property
    def base_dir(self) -> Path:
        return self.root / "run"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def home_dir(self) -> Path:
        return self.root / "home"

    @property
    def passwd_file(self) -> Path:
        return self.root / "users"

    @property
    def log_path(self) -> Path:
        return self.root / "dovecot.log"

    @property
    def auth_socket(self) -> Path:
        """Dovecot's authentication socket, for Postfix's ``smtpd_sasl_path``."""
        return self.root / "auth-postfix"

    def dovecot_conf(self) -> str:
        mail_user = pwd.getpwnam(MAIL_USER)
        imap_service = (
            _IMAP_SERVICE.format(host=self.host, imap_port=self.imap_port)
            if "imap" in self.protocols
            else ""
        )
        return _DOVECOT_CONF.format(
            instance_name=self.root.name,
            base_dir=self.base_dir,
            state_dir=self.state_dir,
            protocols=" ".join(self.protocols),
            imap_service=imap_service,
            host=self.host,
            log_path=self.log_path,
            passwd_file=self.passwd_file,
            uid=mail_user.pw_uid,
            gid=mail_user.pw_gid,
            home_dir=self.home_dir,
            pop3_port=self.pop3_port,
            auth_socket=self.auth_socket,
        )

    def write_config(self) -> None:
        mail_user = pwd.getpwnam(MAIL_USER)
        self.home_dir.mkdir()
        lines = []
        for user, password in self.users.items():
            if not _USER_NAME.fullmatch(user) or any(c in password for c in ":\r\n"):
                raise ValueError(f"unusable test user or password for a passwd-file: {user!r}")
            lines.append(f"{user}:{{PLAIN}}{password}::::::\n")
            # Each home is the mail user's own; Dovecot creates the Maildir in it at login.
            home = self.home_dir / user
            home.mkdir()
            os.chown(home, mail_user.pw_uid, mail_user.pw_gid)
        self.passwd_file.write_text("".join(lines), encoding="utf-8")
        self.passwd_file.chmod(0o644)  # read by the auth process (the dovecot user)
        self.config_path.write_text(self.dovecot_conf(), encoding="utf-8")

    def master_pid(self) -> int | None:
        try:
            return int((self.base_dir / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        # To a file, not a pipe: the daemonised master keeps the descriptors it inherited,
        # and a pipe would then never reach end-of-file.
        startup_log = self.root / "startup.log"
        with startup_log.open("wb") as output:
            result = subprocess.run(
                [self.dovecot, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=START_TIMEOUT,
                check=False,
            )
        if result.returncode != 0:
            pytest.fail(
                f"dovecot -c {self.config_path} failed ({result.returncode}):\n"
                f"{tail(startup_log)}\n--- {self.log_path} ---\n{self.log_tail()}",
                pytrace=False,
            )
        # The master binds every listener before it daemonises (a port in use fails the
        # command, exit status 89), so no probe connection is needed, and none appears in the
        # log as a "no auth attempts" line.
        if not self.auth_socket.is_socket():
            pytest.fail(
                f"dovecot started without {self.auth_socket}\n"
                f"--- {self.log_path} ---\n{self.log_tail()}",
                pytrace=False,
            )

    def stop(self) -> None:
        """SIGTERM to the master (what ``doveadm stop`` sends), then make sure the master and
        its children are gone."""
        master = self.master_pid()
        if master is None:
            return
        ours = [master, *children(master)]
        with contextlib.suppress(ProcessLookupError):
            os.kill(master, signal.SIGTERM)
        if not wait_gone(ours, STOP_TIMEOUT):
            for pid in ours:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            wait_gone(ours, STOP_TIMEOUT)

    def pop3_login(self, user: str, password: str, *, source_address: str) -> bool:
        """Log in over POP3 (USER/PASS) from ``source_address`` and log out: whether the
        password was accepted. Dovecot logs USER/PASS as ``method=PLAIN``."""
        client = SourcedPOP3(self.host, self.pop3_port, source_address)
        try:
            client.user(user)
            try:
                client.pass_(password)
            except poplib.error_proto as exc:
                if b"[AUTH]" not in exc.args[0]:
                    raise
                return False
            return True
        finally:
            client.quit()

    def imap_login(self, user: str, password: str, *, source_address: str) -> bool:
        """Log in over IMAP (LOGIN) from ``source_address`` and log out: whether the
        password was accepted. Dovecot logs LOGIN as ``method=PLAIN``."""
        client = self.imap_client(source_address)
        try:
            try:
                client.login(user, password)
            except imaplib.IMAP4.error as exc:
                if "[AUTHENTICATIONFAILED]" not in str(exc):
                    raise
                return False
            return True
        finally:
            client.logout()

    def imap_client(self, source_address: str) -> SourcedIMAP4:
        """A connected IMAP client from ``source_address``, not yet logged in (a client
        that keeps its session open, like Thunderbird's cached connections)."""
        if "imap" not in self.protocols:
            raise ValueError("this instance was started without IMAP")
        return SourcedIMAP4(self.host, self.imap_port, source_address)

    def doveadm_run(self, *args: str) -> None:
        """Run ``doveadm -c CONFIG ARGS...`` against this instance; fail the test if it
        fails."""
        result = subprocess.run(
            [self.doveadm, "-c", str(self.config_path), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(
                f"doveadm {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}",
                pytrace=False,
            )

    def log_reopen(self) -> None:
        """Make the log process reopen ``log_path`` (after logrotate's rename)."""
        self.doveadm_run("log", "reopen")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float = 5.0) -> re.Match[str]:
        """The first match of ``pattern`` (a regular expression) in the log, waiting for it.

        Dovecot's processes log through its log process, so a line may land a moment after
        the client saw the reply.
        """
        compiled = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while (found := compiled.search(self.log_text())) is None:
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"no line matching {pattern!r} in {self.log_path} after {timeout}s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.05)
        return found

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)


class SourcedIMAP4(imaplib.IMAP4):
    """:class:`imaplib.IMAP4` connecting from a chosen local address."""

    def __init__(self, host: str, port: int, source_address: str, timeout: float = 10.0) -> None:
        self.source_address = source_address
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=(self.source_address, 0)
        )


class SourcedPOP3(poplib.POP3):
    """:class:`poplib.POP3` connecting from a chosen local address, so that one machine
    plays several clients (127.0.0.10, 127.0.0.11, ...)."""

    def __init__(self, host: str, port: int, source_address: str, timeout: float = 10.0) -> None:
        self.source_address = source_address
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=(self.source_address, 0)
        )


@contextlib.contextmanager
def running_dovecot(
    users: Mapping[str, str],
    *,
    host: str = "127.0.0.1",
    protocols: tuple[str, ...] = ("pop3",),
) -> Iterator[DovecotInstance]:
    """Start a private instance with these users (name -> password) serving ``protocols``
    (``pop3``, ``imap``); stop it and remove its directory afterwards.

    Skips (or fails under ``RELAYPOLICY_REQUIRE_REAL=1``) when Dovecot is not installed,
    when not root, or when the users it runs as are missing; fails when it is there but will
    not start.
    """
    dovecot = require_binary("dovecot", package="dovecot-core")
    doveadm = require_binary("doveadm", package="dovecot-core")
    for protocol in protocols:
        if protocol not in _PACKAGES:
            raise ValueError(f"protocols: {protocol!r} is not one of {', '.join(_PACKAGES)}")
        if not any(Path(d, f"{protocol}-login").exists() for d in _LIBEXEC_DIRS):
            unavailable(
                f"Dovecot's {protocol.upper()} server is not installed "
                f"(apt-get install -y {_PACKAGES[protocol]})"
            )
    require_root("a private Dovecot instance (its master starts as root)")
    for name in ("dovecot", "dovenull", MAIL_USER):
        try:
            pwd.getpwnam(name)
        except KeyError:
            unavailable(f"the {name!r} user is missing (reinstall the dovecot-core package)")
    require_loopback_address(host)

    root = Path(tempfile.mkdtemp(prefix="relaypolicy-dovecot-"))
    root.chmod(0o755)
    pop3_port = imap_port = free_port(host)
    while "imap" in protocols and imap_port == pop3_port:
        imap_port = free_port(host)
    instance = DovecotInstance(
        root,
        dict(users),
        pop3_port,
        host,
        dovecot,
        protocols=tuple(protocols),
        imap_port=imap_port if "imap" in protocols else 0,
        doveadm=doveadm,
    )
    try:
        instance.write_config()
        instance.start()
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(root, ignore_errors=True)
