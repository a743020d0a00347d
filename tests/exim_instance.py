"""A private Exim 4 asking a private ``relaypolicy exim``, for end-to-end tests.

Exim comes from the unpacked tree of ``.ci/install-mtas`` (``realservers.require_mta``). Its
configuration is this module's: its own spool and log directories, ``exim_user``
Debian-exim, ``local_interfaces = 127.0.0.1`` on a free port, no DNS
(``host_lookup``, ``rfc1413_hosts`` empty), no routers (the tests stop at RCPT), and the
RCPT ACL of ``contrib/exim/relaypolicy-rcpt.acl`` included as shipped, with the socket and
timeout set through the macros of ``contrib/exim/relaypolicy-macros``. A plaintext
authenticator takes any user name with the password ``secret``.

Two ways in: :meth:`EximInstance.bh` runs Exim's host-checking mode (``exim -bh IP``: the
real ACLs, SMTP on stdin and stdout, nothing delivered), and :meth:`EximInstance.daemon`
runs the listening daemon (``exim -bdf``) for real TCP clients.

Exim refuses a ``-C`` file that is not owned by root or is writable by others; the tests
run as root (:func:`realservers.require_root`), and the directory is made readable by
Debian-exim, which the daemon's children run as.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from postfix_instance import Reply
from realservers import free_port, require_mta, require_root, tail, terminate, wait_for_port
from serve_process import Service, start_daemon

__all__ = [
    "ACL_FILE",
    "DEBIAN_ANCHOR",
    "MACROS_FILE",
    "EximInstance",
    "debian_config",
    "exim_instance",
    "start_relaypolicy_exim",
]

CONTRIB = Path(__file__).resolve().parent.parent / "contrib" / "exim"
ACL_FILE = CONTRIB / "relaypolicy-rcpt.acl"
MACROS_FILE = CONTRIB / "relaypolicy-macros"

_CONFIG = """\
primary_hostname = mx.exim.test
exim_user = Debian-exim
exim_group = Debian-exim
spool_directory = {directory}/spool
log_file_path = {directory}/log/%slog
pid_file_path = {directory}/exim.pid
host_lookup =
rfc1413_hosts =
daemon_smtp_ports = {port}
local_interfaces = 127.0.0.1
allow_domain_literals = true
smtp_max_synprot_errors = 100000
smtp_accept_max_nonmail_hosts =
smtp_enforce_sync = false
auth_advertise_hosts = *
acl_smtp_rcpt = acl_check_rcpt
{extra}
{macros}

begin acl

acl_check_rcpt:
  accept  hosts = :
.include {directory}/relaypolicy-rcpt.acl
  deny    message = 550 5.7.1 relaypolicy had no opinion (test configuration)

begin routers

begin transports

begin authenticators

plain:
  driver = plaintext
  public_name = PLAIN
  server_prompts = :
  server_condition = ${{if eq{{$auth3}}{{secret}}}}
  server_set_id = $auth2
"""

_RELAYPOLICY_SECTION = """
[exim]
listen = ["127.0.0.1:{port}"]
control_socket = "{control}"
"""


def macros_for(port: int, timeout: str) -> str:
    """The shipped macros file with the socket and timeout of this instance."""
    values = {
        "RELAYPOLICY_SOCKET": f"inet:127.0.0.1:{port}",
        "RELAYPOLICY_TIMEOUT": timeout,
    }
    lines = []
    for line in MACROS_FILE.read_text().splitlines():
        name = line.partition(" =")[0]
        lines.append(f"{name} = {values[name]}" if name in values else line)
    return "\n".join(lines)


@dataclass
class EximInstance:
    """One configuration of a private Exim (see the module)."""

    binary: Path
    directory: Path
    config: Path
    port: int
    relaypolicy_port: int

    def with_config(self, config: Path) -> EximInstance:
        """The same directories and ports with another configuration file."""
        return dataclasses.replace(self, config=config)

    @property
    def mainlog(self) -> Path:
        return self.directory / "log" / "mainlog"

    def bh(self, client: str, commands: Sequence[str]) -> list[Reply]:
        """Exim's replies to ``commands`` (SMTP lines without CRLF) in a host-checking
        session from ``client``: the banner's first, then one per command."""
        script = "".join(f"{command}\r\n" for command in [*commands, "QUIT"])
        done = subprocess.run(
            [str(self.binary), "-C", str(self.config), "-bh", client],
            input=script.encode(),
            capture_output=True,
            timeout=300,
            check=False,
        )
        replies = parse_replies(done.stdout.decode("utf-8", "replace"))
        if len(replies) != len(commands) + 2 or replies[-1].code != 221:
            raise AssertionError(
                f"exim -bh gave {len(replies)} replies for {len(commands)} commands "
                f"(status {done.returncode}):\n{done.stdout.decode(errors='replace')[-3000:]}\n"
                f"{done.stderr.decode(errors='replace')[-3000:]}"
            )
        return replies[:-1]

    @contextlib.contextmanager
    def daemon(self) -> Iterator[subprocess.Popen[bytes]]:
        """The listening daemon (``-bdf``: in the foreground) on :attr:`port`."""
        log = self.directory / "daemon.out"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(self.binary), "-C", str(self.config), "-bdf"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            try:
                wait_for_port("127.0.0.1", self.port, timeout=20)
            except TimeoutError:
                pytest.fail(f"exim did not listen:\n{tail(log)}\n{tail(self.mainlog)}")
            yield process
        finally:
            terminate(process)


def parse_replies(stdout: str) -> list[Reply]:
    """The final lines of the SMTP replies in ``exim -bh`` output (its ``****`` notes
    and the continuation lines of multi-line replies left out)."""
    replies = []
    for line in stdout.splitlines():
        if len(line) >= 4 and line[:3].isdigit() and line[3] == " ":
            replies.append(Reply(int(line[:3]), line[4:]))
        elif len(line) == 3 and line.isdigit():
            replies.append(Reply(int(line), ""))
    return replies


@contextlib.contextmanager
def exim_instance(
    relaypolicy_port: int, *, timeout: str = "5s", extra: str = ""
) -> Iterator[EximInstance]:
    """A configured Exim whose ACL asks ``127.0.0.1:relaypolicy_port``; removed after.
    ``extra``: more main-section lines (TLS, say)."""
    require_root("Exim with a -C configuration file")
    binary = require_mta("usr/sbin/exim4")
    directory = Path(tempfile.mkdtemp(prefix="relaypolicy-exim-"))
    try:
        os.chmod(directory, 0o755)  # noqa: S103 - Exim's children run as Debian-exim
        for sub in ("spool", "log"):
            (directory / sub).mkdir()
            shutil.chown(directory / sub, "Debian-exim", "Debian-exim")
        shutil.copyfile(ACL_FILE, directory / "relaypolicy-rcpt.acl")
        port = free_port()
        config = directory / "exim.conf"
        config.write_text(
            _CONFIG.format(
                directory=directory,
                port=port,
                extra=extra,
                macros=macros_for(relaypolicy_port, timeout),
            )
        )
        for path in (config, directory / "relaypolicy-rcpt.acl"):
            os.chmod(path, 0o644)
        yield EximInstance(binary, directory, config, port, relaypolicy_port)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# Where docs/exim.md tells a Debian administrator to put the statements: right after the
# first statement of acl_check_rcpt (local SMTP, no client address, is accepted by Debian).
DEBIAN_ANCHOR = """acl_check_rcpt:

  # Accept if the source is local SMTP (i.e. not over TCP/IP). We do this by
  # testing for an empty sending host field.
  accept
    hosts = :
    control = dkim_disable_verify
"""
# update-exim4.conf concatenates the split files in this order.
_SPLIT_ORDER = ("main", "acl", "router", "transport", "retry", "rewrite", "auth")


def debian_config(instance: EximInstance, kind: str) -> Path:
    """Debian's own configuration (``unsplit``: exim4.conf.template; ``split``: conf.d,
    concatenated as update-exim4.conf does) with the recipe of docs/exim.md: the macros
    where debconf puts its own, the ``.include`` after :data:`DEBIAN_ANCHOR`. Returns the
    file to pass to ``-C`` (see :meth:`EximInstance.with_config`)."""
    etc = instance.binary.parent.parent.parent / "etc" / "exim4"
    if kind == "unsplit":
        text = (etc / "exim4.conf.template").read_text()
    else:
        parts = []
        for section in _SPLIT_ORDER:
            for path in sorted((etc / "conf.d" / section).iterdir()):
                parts.append(path.read_text())
        text = "\n".join(parts)
    directory = instance.directory
    debconf = (
        "UPEX4CmacrosUPEX4C = 1\n"
        "MAIN_LOCAL_DOMAINS = @:localhost:local.test\n"
        "MAIN_RELAY_TO_DOMAINS = relay.test\n"
        "MAIN_RELAY_NETS = 127.0.0.1\n"
        "ETC_MAILNAME = mx.exim.test\n"
        "DC_minimaldns = 1\n"
        f"SPOOLDIR = {directory}/spool\n"
        f"log_file_path = {directory}/log/%slog\n"
        f"{macros_for(instance.relaypolicy_port, '5s')}\n"
    )
    assert text.count("UPEX4CmacrosUPEX4C = 1\n") == 1 and text.count(DEBIAN_ANCHOR) == 1
    text = text.replace("UPEX4CmacrosUPEX4C = 1\n", debconf)
    include = f"\n.include {directory}/relaypolicy-rcpt.acl\n"
    text = text.replace(DEBIAN_ANCHOR, DEBIAN_ANCHOR + include)
    config = directory / f"debian-{kind}.conf"
    config.write_text(text)
    os.chmod(config, 0o644)
    return config


def start_relaypolicy_exim(directory: Path, policy_config: str) -> Service:
    """Start ``relaypolicy exim`` with ``policy_config`` (TOML without ``[exim]``) plus an
    ``[exim]`` section on a free loopback port, with a control socket."""
    port = free_port()
    control = directory / "control.sock"
    text = policy_config + _RELAYPOLICY_SECTION.format(port=port, control=control)
    return start_daemon(
        "exim", directory, text, port=port, control=control, log_name="exim-front.log"
    )
