"""``relaypolicy smtpd``: a small policy-enforcing SMTP server on aiosmtpd.

:class:`SmtpdServer` puts the pieces together: the configured chain in a
:class:`~relaypolicy.aiosmtpd.RelayPolicyHandler`, in front of a
:class:`~relaypolicy.smtpd.delivery.MaildirDelivery`; STARTTLS when a certificate is
configured; AUTH PLAIN/LOGIN against a password file; the POP-before-SMTP table, fed by
the watcher of ``[watch]`` (:class:`~relaypolicy.watch.runner.WatchTask`) and through
the control socket (``relaypolicy ctl --socket PATH record ADDRESS``, the same JSON
lines as ``relaypolicy serve``'s), journalled and saved on exit when ``persist`` is set.

SIGTERM and SIGINT stop it (exit 0; 74, EX_IOERR, when the table could not be saved).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
from typing import Any

from aiosmtpd.smtp import SMTP

from relaypolicy.aiosmtpd import PasswordAuthenticator, RelayPolicyHandler, WholeReplySMTP
from relaypolicy.config import Config
from relaypolicy.control import TABLE_COMMANDS, read_command, start_control, table_command
from relaypolicy.iptable.host import TableHost
from relaypolicy.smtpd.delivery import MaildirDelivery
from relaypolicy.smtpd.settings import SmtpdSettings, parse_listen
from relaypolicy.watch.runner import WatchTask

__all__ = ["SmtpdServer", "make_tls_context"]

log = logging.getLogger("relaypolicy.smtpd")
AUTH_ATTEMPTS_PER_CONNECTION = 5  # each costs an scrypt computation; guessing is slowed


class _QuietLoginData(logging.Filter):
    """aiosmtpd 1.4 warns on every successful AUTH that ``login_data`` is deprecated,
    though it is aiosmtpd itself that sets it; that line says nothing to an operator."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


def make_tls_context(settings: SmtpdSettings) -> ssl.SSLContext | None:
    """The server's TLS context, or ``None`` when no certificate is configured.

    With ``tls_client_ca`` a client certificate is asked for (not required) and checked
    against that CA: Python's ``ssl`` cannot take one it did not verify.
    """
    if settings.tls_certificate is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_certificate, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"smtpd.tls_certificate: cannot load {settings.tls_certificate} with key "
            f"{settings.tls_key}: {exc.strerror or exc}"
        ) from None
    if settings.tls_client_ca is not None:
        try:
            context.load_verify_locations(cafile=str(settings.tls_client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"smtpd.tls_client_ca: cannot load {settings.tls_client_ca}: {exc.strerror or exc}"
            ) from None
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


class SmtpdServer:
    """The SMTP server of one configuration. ``table`` replaces the configured one (tests)."""

    def __init__(
        self,
        config: Config,
        settings: SmtpdSettings,
        *,
        table: Any = None,
        listen: list[str] | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.host = TableHost(
            table if table is not None else config.make_pop_table(),
            persist=config.pop.persist if config.pop else "",
        )
        self.table = self.host.table  # with persist: the journalled table
        self.policy = config.build_policy(self.table)
        self.hostname = settings.server_name  # once: getfqdn() may ask the DNS
        self.listen = list(listen or settings.listen)
        for spec in self.listen:
            parse_listen(spec)  # ValueError now rather than at start
        self.delivery = MaildirDelivery(
            maildir=settings.maildir,
            outgoing=settings.outgoing,
            local_domains=config.local_domains,
            hostname=self.hostname,
            smarthost=settings.smarthost,
            smarthost_starttls=settings.smarthost_starttls,
            mailboxes=settings.mailboxes,
            catch_all=settings.catch_all,
        )
        self.handler = RelayPolicyHandler(
            self.policy, inner=self.delivery, log_format=config.log.format
        )
        self.tls_context = make_tls_context(settings)
        self.authenticator = (
            PasswordAuthenticator(settings.passwords) if settings.passwords is not None else None
        )
        # AUTH only inside TLS when TLS is there (Postfix smtpd_tls_auth_only); without a
        # certificate, only when the configuration does not ask for TLS.
        self.auth_require_tls = self.tls_context is not None or config.auth.require_tls
        self.bound: list[str] = []
        self._servers: list[asyncio.Server] = []
        self._control: asyncio.Server | None = None
        self._stop = asyncio.Event()
        self.watch = WatchTask()

    def smtp(self) -> SMTP:
        """One aiosmtpd protocol instance (a connection); each reply goes in one write."""
        return WholeReplySMTP(
            self.handler,
            hostname=self.hostname,
            ident="relaypolicy smtpd",
            tls_context=self.tls_context,
            authenticator=self.authenticator,
            auth_require_tls=self.auth_require_tls,
            # No password file: offer no AUTH at all rather than one that always fails.
            auth_exclude_mechanism=None if self.authenticator else ["PLAIN", "LOGIN"],
            data_size_limit=self.settings.max_message_size,
            enable_SMTPUTF8=True,
            command_call_limit={"AUTH": AUTH_ATTEMPTS_PER_CONNECTION, "*": 100_000},
        )

    async def start(self) -> list[str]:
        """Listen; the bound addresses as ``host:port``."""
        loop = asyncio.get_running_loop()
        await self.host.start()
        for spec in self.listen:
            host, port = parse_listen(spec)
            server = await loop.create_server(self.smtp, host=host, port=port)
            self._servers.append(server)
            for sock in server.sockets:
                address = sock.getsockname()
                shown = f"[{address[0]}]" if ":" in address[0] else address[0]
                self.bound.append(f"{shown}:{address[1]}")
        if self.settings.control_socket is not None:
            self._control = await start_control(
                self.settings.control_socket, self.control, durable=self.host.sync
            )
        self.watch.start(self.config.watch, self.table)
        return self.bound

    def describe(self) -> str:
        """Where mail goes, in words, for the start-up log."""
        relay = (
            f"forwarded to {self.settings.smarthost[0]}:{self.settings.smarthost[1]}"
            if self.settings.smarthost
            else f"kept in {self.settings.outgoing}/"
        )
        unknown = (
            f"other local addresses to {self.settings.catch_all}/"
            if self.settings.catch_all is not None
            else "other local addresses refused"
        )
        return (
            f"local domains {', '.join(self.config.local_domains) or '(none)'}: "
            f"{len(self.settings.mailboxes)} mailbox(es) delivered to "
            f"{self.settings.maildir}/<domain>/<user>/, {unknown}; relayed mail {relay}; "
            f"STARTTLS {'on' if self.tls_context else 'off'}; "
            f"AUTH {'on' if self.authenticator else 'off'}"
        )

    def stop(self) -> None:
        self._stop.set()

    def hangup(self) -> None:
        """SIGHUP: there is no reload here (a restart applies a changed file). Without
        this handler SIGHUP would end the process without saving the table."""
        log.warning("SIGHUP: relaypolicy smtpd does not reload; restart it to apply changes")

    async def run(self) -> int:
        """Serve until SIGTERM or SIGINT; 0, or 74 when the table could not be saved.
        SIGHUP is logged and otherwise ignored."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.hangup)
        logging.getLogger("mail.log").addFilter(_QuietLoginData())
        bound = await self.start()
        log.info("relaypolicy smtpd listening on %s", ", ".join(bound))
        log.info("%s", self.describe())
        if self.authenticator is not None and not self.auth_require_tls:
            log.warning("AUTH is offered without TLS: passwords cross the network in the clear")
        await self._stop.wait()
        log.info("stopping")
        await self.close()
        return self.host.exit_status

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self._control is not None:
            self._control.close()
            assert self.settings.control_socket is not None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.settings.control_socket)
            self._control = None
        await self.watch.stop()
        await self.host.close()

    # --- control socket: the subset of `relaypolicy serve`'s that concerns the table ---

    def control(self, line: bytes) -> dict[str, Any]:
        """Answer one control command: ``table``, ``add`` (``record``), ``remove``, ``stats``."""
        parsed = read_command(line)
        if isinstance(parsed, dict):
            return parsed
        command, message = parsed
        if command == "stats":
            stats: dict[str, Any] = {"listening": self.bound, **self.host.stats()}
            stats.update(self.watch.counters())
            return {"ok": True, "stats": stats}
        if command not in TABLE_COMMANDS:
            return {"ok": False, "error": f"unknown command {command!r}"}
        return table_command(self.table, command, message)
