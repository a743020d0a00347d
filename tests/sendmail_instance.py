"""A private Sendmail daemon for tests, and an SMTP client that asks it RCPT questions.

Theory of operation
-------------------
Debian's ``sendmail-bin`` conflicts with ``postfix``, so ``.ci/install-mtas`` unpacks it
(and ``sendmail-cf``, the m4 macros) into :func:`realservers.mta_root`. For each instance,
:func:`running_sendmail` writes a ``sendmail.mc`` into a fresh temporary directory, builds
``sendmail.cf`` from it with ``m4`` and the tree's ``cf/m4/cf.m4``, and runs
``sendmail -bD -C sendmail.cf`` (the daemon in the foreground, so the test owns the process).
Every path Sendmail writes or reads is in that directory: the queue, the pid file, the
statistics file, the help file, the hosts file and the service switch (``hosts files``, so
no DNS), the ``-X`` trace of every SMTP line. The alias file is empty (no aliases).

Three things cannot be set in ``sendmail.cf``; they are set in private namespaces
(``unshare --uts --mount``, so the system is untouched):

- the host name. Before it reads its configuration, Sendmail looks its own name up, and
  when that name has no dot and no qualified alias (a container called ``vm``) it logs
  "My unqualified host name (vm) unknown; sleeping for retry" and sleeps 60 seconds. The
  daemon gets its own UTS namespace with the host name ``mx.relaypolicy.test``;
- the C library's name service. Sendmail resolves the client's address with the C
  library, which reads ``/etc/nsswitch.conf`` and would ask DNS. A private ``hosts`` and a
  ``nsswitch.conf`` that says ``hosts: files`` are bind-mounted over the system's in a
  private mount namespace (private propagation: the system's files are not changed);
- with ``sasl_users``, Cyrus SASL's configuration. libsasl2 reads ``Sendmail.conf`` from
  ``/etc/sasl2``, ``/etc/sasl``, ``/usr/lib/x86_64-linux-gnu/sasl2`` or ``/usr/lib/sasl2``
  (Sendmail passes the environment on to none of them), so a private directory holding a
  ``Sendmail.conf`` (``auxprop`` against a private sasldb written with ``saslpasswd2``)
  is bind-mounted over ``/usr/lib/sasl2``.

Nothing can leave: ``DeliveryMode=queue`` (a message is only queued), no queue runner
(``-bD`` without ``-q``) and :func:`ask` never sends DATA. ``DeliveryMode=queue`` also
means a local recipient is accepted at RCPT without looking the user up (Sendmail answers
"Recipient ok (will queue)"), as relaypolicy accepts any user of a local domain.

Relay decisions (:class:`SendmailConfig` ``gate``):

- ``"milter"``: ``FEATURE(promiscuous_relay)`` turns Sendmail's own relay check off, so the
  milter sees every RCPT and is the only relay gate; without a milter (or with one that
  does not refuse) such an instance is an open relay, which is why this setup needs the
  milter with ``F=T``;
- ``"sendmail"``: Sendmail's own check stays: recipients in class ``w`` (``LOCAL_DOMAIN``)
  are accepted, others only for clients Sendmail trusts (the loopback address, by its
  defaults), ``550 5.7.1 ... Relaying denied`` otherwise, before the milter is asked.

``tls`` adds STARTTLS with a private CA's certificate. Its files are below ``/tmp``, a
world-writable directory with the sticky bit, which Sendmail's file safety checks refuse
for certificates (it then offers no STARTTLS) unless told ``TrustStickyBit``
(``confDONT_BLAME_SENDMAIL``): the one relaxation the harness needs, and only for TLS.
The queue and the rest pass the checks as they are (the temporary directory is root's,
mode 0700).

Starting needs root (the namespaces, and Sendmail's daemon mode), so the harness skips (or
fails, see :mod:`realservers`) without it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import smtplib
import ssl
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import pytest
import trustme
from realservers import (
    free_port,
    mta_root,
    require_binary,
    require_loopback_address,
    require_mta,
    require_root,
    tail,
    terminate,
    unavailable,
    wait_for_port,
)

__all__ = [
    "MILTER_MACROS",
    "Answer",
    "SendmailConfig",
    "SendmailInstance",
    "ask",
    "running_sendmail",
]

SENDMAIL = "usr/libexec/sendmail/sendmail"
CF_DIR = "usr/share/sendmail/cf"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

# The macros Sendmail sends to the milter, per stage (confMILTER_MACROS_*). relaypolicy
# reads the client and server facts at CONNECT, TLS at HELO, SMTP AUTH at MAIL FROM;
# Sendmail's defaults lack {client_addr}, {client_port} and {daemon_port}.
MILTER_MACROS: dict[str, str] = {
    "CONNECT": "j, _, {daemon_name}, {daemon_addr}, {daemon_port}, {client_addr}, {client_port}",
    "HELO": "{tls_version}, {cipher}, {cipher_bits}, {cert_subject}, {cert_issuer}",
    "ENVFROM": (
        "i, {auth_type}, {auth_authen}, {auth_ssf}, {auth_author}, {mail_mailer}, "
        "{mail_host}, {mail_addr}"
    ),
    "ENVRCPT": "{rcpt_mailer}, {rcpt_host}, {rcpt_addr}",
}

# Bind-mounted over /etc/nsswitch.conf inside the daemon's mount namespace.
_NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files\n"

# Run inside `unshare --uts --mount`: $1 hosts, $2 nsswitch.conf, $3 host name, $4 a SASL
# configuration directory or "", then the sendmail command line. exec keeps the pid: the
# test's Popen is the daemon itself.
_NAMESPACE_SCRIPT = """\
set -e
mount --bind "$1" /etc/hosts
mount --bind "$2" /etc/nsswitch.conf
hostname "$3"
if [ -n "$4" ]; then mount --bind "$4" /usr/lib/sasl2; fi
shift 4
exec "$@"
"""

# Where libsasl2 looks for Sendmail.conf last (it exists: libsasl2-2 ships it).
SASL_CONFIG_DIR = Path("/usr/lib/sasl2")
SASL_MECHANISMS = "PLAIN LOGIN CRAM-MD5"


@dataclass(frozen=True)
class SendmailConfig:
    """What the instance decides with.

    ``gate``: ``"milter"`` (``FEATURE(promiscuous_relay)``: the milter is the only relay
    gate) or ``"sendmail"`` (Sendmail's own relay denial first, the milter after it).
    ``milter``: the ``S=`` socket of ``INPUT_MAIL_FILTER`` (``inet:PORT@127.0.0.1``), or
    ``None`` for no milter. ``milter_flags`` ``"T"``: temporary failure when the filter
    cannot be reached or fails (the only safe choice; ``"R"`` would reject, ``""`` would
    carry on as if there were no filter). ``milter_macros``: define the
    ``confMILTER_MACROS_*`` lists of :data:`MILTER_MACROS`; false leaves Sendmail's
    defaults (which lack ``{daemon_port}``). ``sasl_users``: SMTP AUTH (``PLAIN``, ``LOGIN``,
    ``CRAM-MD5``) for these user names and passwords, in the realm ``hostname``;
    ``trust_auth``: Sendmail itself lets them relay (``TRUST_AUTH_MECH``). ``tls``:
    STARTTLS with a certificate for ``hostname`` from a private CA (trustme; the client
    trusts :attr:`SendmailInstance.tls_ca`). ``extra`` is appended to the ``.mc`` verbatim.
    """

    local_domains: Sequence[str] = ("local.test",)
    gate: Literal["milter", "sendmail"] = "sendmail"
    milter: str | None = None
    milter_flags: str = "T"
    milter_timeouts: str = "C:5s;S:5s;R:5s;E:10s"
    milter_macros: bool = True
    hostname: str = "mx.relaypolicy.test"
    host: str = "127.0.0.1"
    daemon_name: str = "MTA"
    sasl_users: Mapping[str, str] = field(default_factory=dict)
    trust_auth: bool = False
    tls: bool = False
    extra: str = ""


@dataclass
class SendmailInstance:
    """A configured (and, inside :func:`running_sendmail`, running) private daemon."""

    root: Path
    config: SendmailConfig
    port: int
    sendmail: Path
    cf_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def mc_file(self) -> Path:
        return self.root / "sendmail.mc"

    @property
    def cf_file(self) -> Path:
        return self.root / "sendmail.cf"

    @property
    def queue_dir(self) -> Path:
        return self.root / "queue"

    @property
    def pid_file(self) -> Path:
        return self.root / "sendmail.pid"

    @property
    def tls_dir(self) -> Path:
        return self.root / "tls"

    @property
    def tls_ca(self) -> Path:
        """The CA certificate that signed the server's (for the client's SSL context)."""
        return self.tls_dir / "ca.pem"

    @property
    def sasl_dir(self) -> Path:
        return self.root / "sasl2"

    @property
    def log(self) -> Path:
        """The daemon's own stdout and stderr (Sendmail logs to syslog, which the tests do
        not have; startup errors are printed here)."""
        return self.root / "sendmail.out"

    @property
    def trace(self) -> Path:
        """Every SMTP line in and out (``sendmail -X``), prefixed with the child's pid."""
        return self.root / "smtp.trace"

    def mc(self) -> str:
        """The ``sendmail.mc``: everything private, no DNS, one loopback listener."""
        c = self.config
        r = self.root

        def define(name: str, value: str) -> str:
            return f"define(`{name}', `{value}')dnl\n"

        lines = [
            "divert(-1)\n",
            "# A private Sendmail instance started by relaypolicy's tests.\n",
            "divert(0)dnl\n",
            f"include(`{self.cf_dir}/m4/cf.m4')dnl\n",
            "OSTYPE(`linux')dnl\n",
            "FEATURE(`no_default_msa')dnl\n",  # no port 587 listener
            define("confDOMAIN_NAME", c.hostname),
            define("QUEUE_DIR", str(self.queue_dir)),
            define("STATUS_FILE", str(r / "statistics")),
            define("confPID_FILE", str(self.pid_file)),
            define("ALIAS_FILE", ""),
            define("HELP_FILE", str(r / "helpfile")),
            define("confSERVICE_SWITCH_FILE", str(r / "service.switch")),
            define("confHOSTS_FILE", str(r / "hosts")),
            define("confDEAD_LETTER_DROP", str(r / "dead.letter")),
            define("confDONT_PROBE_INTERFACES", "True"),
            define("confTO_IDENT", "0"),
            # A busy test machine must not make the daemon refuse or queue connections.
            define("confREFUSE_LA", "999"),
            define("confQUEUE_LA", "999"),
            define("confDELAY_LA", "0"),
            define("confMAX_DAEMON_CHILDREN", "0"),
            define("confCONNECTION_RATE_THROTTLE", "0"),
            define("confBAD_RCPT_THROTTLE", "0"),
            define("confDELIVERY_MODE", "queue"),
            "FEATURE(`nocanonify')dnl\n",
            "FEATURE(`accept_unresolvable_domains')dnl\n",
            "FEATURE(`accept_unqualified_senders')dnl\n",
        ]
        if c.gate == "milter":
            lines.append("FEATURE(`promiscuous_relay')dnl\n")
        family = "inet6" if ":" in c.host else "inet"
        lines.append(
            f"DAEMON_OPTIONS(`Family={family}, Port={self.port}, Addr={c.host}, "
            f"Name={c.daemon_name}')dnl\n"
        )
        lines.extend(f"LOCAL_DOMAIN(`{domain}')dnl\n" for domain in c.local_domains)
        if c.tls:
            lines += [
                # The instance lives under /tmp, a world-writable (sticky) directory: without
                # this Sendmail finds the certificate files unsafe and offers no STARTTLS.
                define("confDONT_BLAME_SENDMAIL", "TrustStickyBit"),
                define("confCACERT_PATH", str(self.tls_dir)),
                define("confCACERT", str(self.tls_ca)),
                define("confSERVER_CERT", str(self.tls_dir / "server.pem")),
                define("confSERVER_KEY", str(self.tls_dir / "server.key")),
            ]
        if c.sasl_users:
            lines.append(define("confAUTH_MECHANISMS", SASL_MECHANISMS))
            if c.trust_auth:
                lines.append(f"TRUST_AUTH_MECH(`{SASL_MECHANISMS}')dnl\n")
        if c.milter is not None:
            if c.milter_macros:
                lines.extend(
                    define(f"confMILTER_MACROS_{stage}", macros)
                    for stage, macros in MILTER_MACROS.items()
                )
            lines.append(
                f"INPUT_MAIL_FILTER(`relaypolicy', `S={c.milter}, F={c.milter_flags}, "
                f"T={c.milter_timeouts}')dnl\n"
            )
        lines.append(c.extra)
        lines.append("MAILER(`local')dnl\nMAILER(`smtp')dnl\n")
        return "".join(lines)

    def write_config(self) -> None:
        """Write the ``.mc`` and its support files, and build ``sendmail.cf`` with m4."""
        r = self.root
        self.queue_dir.mkdir(mode=0o700, exist_ok=True)
        (r / "service.switch").write_text("hosts files\naliases files\n", encoding="utf-8")
        (r / "hosts").write_text(
            f"127.0.0.1 localhost\n{self.host} {self.config.hostname}\n", encoding="utf-8"
        )
        (r / "nsswitch.conf").write_text(_NSSWITCH, encoding="utf-8")
        (r / "helpfile").write_text("", encoding="utf-8")
        self.mc_file.write_text(self.mc(), encoding="utf-8")
        m4 = require_binary("m4")
        built = subprocess.run(
            [m4, str(self.mc_file)], capture_output=True, text=True, timeout=30, check=False
        )
        if built.returncode != 0 or not built.stdout:
            pytest.fail(
                f"m4 {self.mc_file} failed ({built.returncode}):\n{built.stderr}", pytrace=False
            )
        self.cf_file.write_text(built.stdout, encoding="utf-8")
        if self.config.sasl_users:
            self._write_sasl()
        if self.config.tls:
            self._write_tls()

    def _write_tls(self) -> None:
        """A private CA and a server certificate for ``hostname`` and the listening
        address (the client connects by address); the key mode 0600 (Sendmail refuses a
        key file that others can read, unless told ``GroupReadableKeyFile``)."""
        ca = trustme.CA()
        server = ca.issue_cert(self.config.hostname, self.host)
        self.tls_dir.mkdir(mode=0o755)
        ca.cert_pem.write_to_path(str(self.tls_ca))
        server.cert_chain_pems[0].write_to_path(str(self.tls_dir / "server.pem"))
        key = self.tls_dir / "server.key"
        server.private_key_pem.write_to_path(str(key))
        key.chmod(0o600)

    def _write_sasl(self) -> None:
        """A ``Sendmail.conf`` for libsasl2 and a private sasldb with the users."""
        saslpasswd2 = require_binary("saslpasswd2", package="sasl2-bin")
        if not SASL_CONFIG_DIR.is_dir():
            unavailable(f"{SASL_CONFIG_DIR} is missing (apt-get install -y libsasl2-2)")
        sasldb = self.root / "sasldb2"
        self.sasl_dir.mkdir(mode=0o755)
        (self.sasl_dir / "Sendmail.conf").write_text(
            f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nsasldb_path: {sasldb}\n"
            f"mech_list: {SASL_MECHANISMS}\n",
            encoding="utf-8",
        )
        for user, password in self.config.sasl_users.items():
            done = subprocess.run(
                [saslpasswd2, "-f", str(sasldb), "-p", "-c", "-u", self.config.hostname, user],
                input=password,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if done.returncode != 0:
                pytest.fail(f"saslpasswd2 failed for {user}: {done.stderr}", pytrace=False)

    def command(self) -> list[str]:
        """The daemon's command line, inside its private namespaces."""
        unshare = require_binary("unshare", package="util-linux")
        return [
            unshare,
            "--uts",
            "--mount",
            "sh",
            "-c",
            _NAMESPACE_SCRIPT,
            "sendmail-namespace",
            str(self.root / "hosts"),
            str(self.root / "nsswitch.conf"),
            self.config.hostname,
            str(self.sasl_dir) if self.config.sasl_users else "",
            str(self.sendmail),
            "-bD",
            "-C",
            str(self.cf_file),
            "-X",
            str(self.trace),
        ]

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TZ")}
        with self.log.open("wb") as stream:
            # A session of its own: the daemon and the children it forks per connection
            # are one process group, which stop() can end without touching anything else.
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=stream,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        try:
            self._wait_listening()
        except TimeoutError as exc:
            pytest.fail(f"{exc}\n{self.diagnostics()}", pytrace=False)

    def _wait_listening(self) -> None:
        assert self.process is not None
        try:
            wait_for_port(self.host, self.port, timeout=START_TIMEOUT)
        except TimeoutError:
            if self.process.poll() is not None:
                raise TimeoutError(
                    f"sendmail exited with status {self.process.returncode} before listening"
                ) from None
            raise

    def stop(self) -> None:
        """SIGTERM to the daemon, then SIGKILL to whatever of its process group is left
        (children still in a session). Only processes this instance started are signalled."""
        process = self.process
        if process is None:
            return
        terminate(process, STOP_TIMEOUT)
        # The group id is the daemon's pid (start_new_session); its children keep it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        self.process = None

    def diagnostics(self) -> str:
        """The daemon's output and the end of the SMTP trace, for failure messages."""
        return f"--- {self.log} ---\n{tail(self.log)}\n--- {self.trace} ---\n{tail(self.trace)}"


def _require_namespaces() -> None:
    """Skip (or fail) unless ``unshare --uts --mount`` works here (root, and a kernel or
    container that allows new namespaces)."""
    unshare = require_binary("unshare", package="util-linux")
    probe = subprocess.run(
        [unshare, "--uts", "--mount", "true"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        unavailable(
            "a private Sendmail needs `unshare --uts --mount` (its own host name and "
            f"name service): {probe.stderr.strip()}"
        )


@contextlib.contextmanager
def running_sendmail(
    config: SendmailConfig, *, port: int | None = None
) -> Iterator[SendmailInstance]:
    """Start a private daemon on ``port`` (default: a free one); stop it and remove its
    directory afterwards.

    Skips (or fails under ``RELAYPOLICY_REQUIRE_REAL=1``) when the unpacked Sendmail, its
    m4 macros, m4 or root are missing; fails when it is there but will not start.
    """
    sendmail = require_mta(SENDMAIL)
    cf_dir = mta_root() / CF_DIR
    if not (cf_dir / "m4" / "cf.m4").is_file():
        unavailable(f"{cf_dir}/m4/cf.m4 is missing (sendmail-cf; run: sudo .ci/install-mtas)")
    require_binary("m4")
    require_root("a private Sendmail daemon (daemon mode and private namespaces)")
    _require_namespaces()
    require_loopback_address(config.host)

    root = Path(tempfile.mkdtemp(prefix="relaypolicy-sendmail-"))
    port = free_port(config.host) if port is None else port
    instance = SendmailInstance(root, config, port, sendmail, cf_dir)
    try:
        instance.write_config()
        instance.start()
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(root, ignore_errors=True)


Stage = Literal["AUTH", "MAIL", "RCPT"]


class Answer(NamedTuple):
    """Sendmail's answer to one envelope: the reply to RCPT TO, or the earlier refusal of
    AUTH or MAIL FROM (``stage`` says which), with the code and the text after it."""

    stage: Stage
    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.stage}: {self.code} {self.text}"


def ask(
    instance: SendmailInstance,
    client: str,
    recipient: str,
    *,
    sender: str = "sender@aho.jp",
    helo: str = "client.relaypolicy.test",
    login: tuple[str, str] | None = None,
    starttls: bool = False,
    timeout: float = 30.0,
) -> Answer:
    """One SMTP session from ``client``: EHLO, with ``starttls`` STARTTLS (verifying the
    server against :attr:`SendmailInstance.tls_ca`) and EHLO again, AUTH with ``login``
    (user, password) when given (smtplib picks the mechanism: CRAM-MD5 here), MAIL FROM,
    RCPT TO, QUIT; never DATA.

    Addresses are sent exactly as given, inside angle brackets. A session per question:
    Sendmail forks a child (and, with a milter, a milter connection) per SMTP session, so
    each answer comes from a fresh session with the facts of that moment.
    """
    if any(c in recipient + sender for c in "\r\n"):
        raise ValueError("CR and LF cannot be sent inside an SMTP command")
    smtp = smtplib.SMTP(instance.host, instance.port, timeout=timeout, source_address=(client, 0))
    # Non-ASCII is sent as UTF-8 bytes, without SMTPUTF8 (Sendmail here does not offer it):
    # what a client that ignores the extension sends.
    smtp.command_encoding = "utf-8"
    try:
        code, text = smtp.ehlo(helo)
        if code != 250:
            raise AssertionError(f"EHLO refused: {code} {text!r}")
        if starttls:
            context = ssl.create_default_context(cafile=str(instance.tls_ca))
            smtp.starttls(context=context)
            smtp.ehlo(helo)
        if login is not None:
            try:
                smtp.login(*login)
            except smtplib.SMTPAuthenticationError as exc:
                error = exc.smtp_error
                why = error.decode(errors="replace") if isinstance(error, bytes) else error
                return Answer("AUTH", exc.smtp_code, why)
        code, text = smtp.docmd("MAIL", f"FROM:<{sender}>")
        stage: Stage = "MAIL"
        if code == 250:
            stage = "RCPT"
            code, text = smtp.docmd("RCPT", f"TO:<{recipient}>")
        return Answer(stage, code, text.decode("utf-8", errors="replace").replace("\n", " "))
    finally:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            smtp.quit()
        smtp.close()
