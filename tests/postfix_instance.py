"""A private Postfix instance for tests, and an SMTP client that asks it RCPT questions.

Theory of operation
-------------------
:func:`running_postfix` writes a ``main.cf`` and ``master.cf`` into a fresh temporary
directory, points ``queue_directory``, ``data_directory`` and ``maillog_file`` there too,
and runs ``postfix -c DIR start``. Nothing is shared with a system Postfix: the pid file
lives in our queue directory, ``master.lock`` in our data directory, the one listener on a
free loopback port. ``postfix -c`` with a non-default directory needs that directory listed
in ``alternate_config_directories`` of the default ``main.cf`` only for the set-gid
commands (postdrop, postqueue) run by ordinary users; as root, starting and stopping an
instance works without it, so the system configuration is never touched (on Debian with
"No configuration" there is not even an ``/etc/postfix/main.cf``). Starting the master
needs root, so the fixture skips (or fails, see :mod:`realservers`) without it.

Every transport is ``discard`` and :class:`RcptSession` never sends DATA: nothing can leave.
DNS is off, ``smtpd_error_sleep_time = 0`` and high error limits keep a long run of
refused recipients fast and in one session.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import smtplib
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pytest
from realservers import (
    children,
    free_port,
    require_binary,
    require_loopback_address,
    require_root,
    tail,
    unavailable,
    wait_for_port,
    wait_gone,
)

__all__ = [
    "INTERNAL_SERVICES",
    "PostfixConfig",
    "PostfixInstance",
    "RcptSession",
    "Reply",
    "running_postfix",
]

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

# Internal services smtpd and cleanup talk to, and every delivery transport as discard.
# No chroot (column 5 "n"): the queue is a temporary directory with nothing copied into it.
_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
{listen} inet  n       -       n       -       -       smtpd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
smtp      unix  -       -       n       -       -       discard
relay     unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       discard
virtual   unix  -       n       n       -       -       discard
"""


@dataclass(frozen=True)
class PostfixConfig:
    """What the instance decides with. ``myorigin`` is left at ``$myhostname``, which is
    deliberately not in ``mydestination``: unqualified recipients are then foreign to
    Postfix, as they are to relaypolicy (only ``postmaster`` is special, for both)."""

    mydestination: Sequence[str]
    relay_domains: Sequence[str] = ()
    mynetworks: Sequence[str] = ("127.0.0.1/32",)
    myhostname: str = "mx.relaypolicy.test"
    host: str = "127.0.0.1"
    smtputf8: bool = True
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class PostfixInstance:
    """A configured (and, inside :func:`running_postfix`, running) private instance."""

    root: Path
    config: PostfixConfig
    port: int
    postfix: str = "postfix"

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def config_dir(self) -> Path:
        return self.root / "etc"

    @property
    def queue_dir(self) -> Path:
        return self.root / "queue"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def maillog(self) -> Path:
        return self.root / "maillog"

    def main_cf(self) -> str:
        c = self.config
        params = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.root),
            "myhostname": c.myhostname,
            "mydestination": ", ".join(c.mydestination),
            "relay_domains": ", ".join(c.relay_domains),
            "mynetworks": ", ".join(c.mynetworks),
            "inet_interfaces": c.host,
            "inet_protocols": "ipv6" if ":" in c.host else "ipv4",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_recipient_restrictions": "",
            "local_recipient_maps": "",
            "smtpd_reject_unlisted_recipient": "no",
            "smtputf8_enable": "yes" if c.smtputf8 else "no",
            # Nothing must ever leave, whatever a message would resolve to.
            "default_transport": "discard",
            "relay_transport": "discard",
            "local_transport": "discard",
            "virtual_transport": "discard",
            # No DNS, no reverse lookups of the client: fast and hermetic.
            "smtp_dns_support_level": "disabled",
            "smtpd_peername_lookup": "no",
            # Many refused recipients in one session, without tarpitting or a hang-up.
            "smtpd_error_sleep_time": "0",
            "smtpd_soft_error_limit": "10000",
            "smtpd_hard_error_limit": "10000",
            "smtpd_junk_command_limit": "10000",
            "biff": "no",
            **c.extra,
        }
        header = "# A private Postfix instance started by relaypolicy's tests.\n"
        return header + "".join(f"{name} = {value}\n" for name, value in params.items())

    def master_cf(self) -> str:
        return _MASTER_CF.format(listen=f"{self.host}:{self.port}".ljust(9))

    def write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.queue_dir.mkdir(exist_ok=True)
        # data_directory is left for Postfix to create: it must be owned by the postfix user.
        (self.config_dir / "main.cf").write_text(self.main_cf(), encoding="utf-8")
        (self.config_dir / "master.cf").write_text(self.master_cf(), encoding="utf-8")

    def _postfix(self, command: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAIL_")}
        return subprocess.run(
            [self.postfix, "-c", str(self.config_dir), command],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            env=env,
            check=False,
        )

    def master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        result = self._postfix("start")
        if result.returncode != 0:
            pytest.fail(
                f"postfix -c {self.config_dir} start failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}\n--- {self.maillog} ---\n{self.log_tail()}",
                pytrace=False,
            )
        try:
            wait_for_port(self.host, self.port, timeout=START_TIMEOUT)
        except TimeoutError as exc:
            pytest.fail(f"{exc}\n--- {self.maillog} ---\n{self.log_tail()}", pytrace=False)

    def stop(self) -> None:
        """``postfix stop``, then make sure the master and its children are gone.

        Only the processes of this instance are signalled: the master (by the pid in our
        own queue directory) and its children.
        """
        master = self.master_pid()
        ours = [master, *children(master)] if master is not None else []
        self._postfix("stop")
        if not wait_gone(ours, STOP_TIMEOUT):
            for pid in ours:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            wait_gone(ours, STOP_TIMEOUT)

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.maillog, lines)


#: The internal services of the test master.cf (everything but the listener), for a
#: harness that writes its own listeners.
INTERNAL_SERVICES = _MASTER_CF.split("\n", 2)[2]


@contextlib.contextmanager
def running_postfix(
    config: PostfixConfig,
    make: Callable[[Path, PostfixConfig, int, str], PostfixInstance] = PostfixInstance,
) -> Iterator[PostfixInstance]:
    """Start a private instance; stop it and remove its directory afterwards.

    ``make`` builds the instance (a subclass may write its own main.cf and master.cf).

    Skips (or fails under ``RELAYPOLICY_REQUIRE_REAL=1``) when Postfix is not installed,
    when not root, or when its users are missing; fails when it is there but will not start.
    """
    postfix = require_binary("postfix")
    require_binary("postconf", package="postfix")
    require_root("a private Postfix instance (its master daemon starts as root)")
    for lookup, name in ((pwd.getpwnam, "postfix"), (grp.getgrnam, "postdrop")):
        try:
            lookup(name)
        except KeyError:
            unavailable(f"the {name!r} user or group is missing (reinstall the postfix package)")
    require_loopback_address(config.host)

    root = Path(tempfile.mkdtemp(prefix="relaypolicy-postfix-"))
    # Postfix daemons run as the postfix user and must reach the queue below this.
    root.chmod(0o755)
    instance = make(root, config, free_port(config.host), postfix)
    try:
        instance.write_config()
        instance.start()
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(root, ignore_errors=True)


class Reply(NamedTuple):
    """One SMTP reply: the code and the text after it (enhanced status code included)."""

    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class RcptSession:
    """An SMTP client that asks one recipient at a time: MAIL, RCPT, RSET; never DATA.

    The session is kept open between questions and reopened when the server hangs up.
    Addresses are sent exactly as given, inside angle brackets (smtplib's own ``rcpt``
    would rewrite them). ``SMTPUTF8`` is added to MAIL when an address is not ASCII.
    """

    def __init__(
        self,
        host: str,
        port: int,
        source_address: str,
        *,
        helo: str = "client.relaypolicy.test",
        timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.source_address = source_address
        self.helo = helo
        self.timeout = timeout
        self._smtp: smtplib.SMTP | None = None

    def __enter__(self) -> RcptSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._smtp is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self._smtp.quit()
            self._smtp = None

    def _connect(self) -> smtplib.SMTP:
        smtp = smtplib.SMTP(
            self.host,
            self.port,
            timeout=self.timeout,
            source_address=(self.source_address, 0),
        )
        smtp.command_encoding = "utf-8"
        code, text = smtp.ehlo(self.helo)
        if code != 250:
            raise AssertionError(f"EHLO refused: {code} {text!r}")
        self._smtp = smtp
        return smtp

    def ask(self, recipient: str, sender: str = "") -> Reply:
        """The server's reply to ``RCPT TO:<recipient>`` after ``MAIL FROM:<sender>``."""
        if any(c in recipient + sender for c in "\r\n"):
            raise ValueError("CR and LF cannot be sent inside an SMTP command")
        utf8 = not (recipient + sender).isascii()
        for _attempt in range(3):
            smtp = self._smtp or self._connect()
            if utf8 and not smtp.has_extn("smtputf8"):
                raise AssertionError("the server does not offer SMTPUTF8")
            try:
                code, text = smtp.docmd("MAIL", f"FROM:<{sender}>" + (" SMTPUTF8" if utf8 else ""))
                if code == 421:
                    raise smtplib.SMTPServerDisconnected(text.decode(errors="replace"))
                if code != 250:
                    raise AssertionError(f"MAIL FROM:<{sender}> refused: {code} {text!r}")
                code, text = smtp.docmd("RCPT", f"TO:<{recipient}>")
                if code == 421:
                    raise smtplib.SMTPServerDisconnected(text.decode(errors="replace"))
            except (smtplib.SMTPServerDisconnected, ConnectionError):
                self._smtp = None
                continue
            try:
                smtp.docmd("RSET")
            except (smtplib.SMTPServerDisconnected, ConnectionError):
                self._smtp = None
            return Reply(code, text.decode("utf-8", errors="replace").replace("\n", " "))
        raise AssertionError(f"the server hung up three times on RCPT TO:<{recipient}>")
