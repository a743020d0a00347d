"""``relaypolicy smtpd``: a small policy-enforcing SMTP server on the daemon runtime.

:class:`SmtpdServer` puts the pieces together: the configured chain in a
:class:`~relaypolicy.aiosmtpd.RelayPolicyHandler`, in front of a
:class:`~relaypolicy.smtpd.delivery.MaildirDelivery`; STARTTLS when a certificate is
configured; AUTH PLAIN/LOGIN against a password file; the POP-before-SMTP table, fed by
the watcher of ``[watch]`` and through the control socket (``relaypolicy ctl --socket
PATH record ADDRESS``, the same JSON lines as ``relaypolicy serve``'s), journalled when
``persist`` is set.

SIGTERM and SIGINT stop it (exit 0, or 74 when the table could not be saved); there is no
reload (SIGHUP is logged and ignored). Needs the ``aiosmtpd`` extra.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import tomllib
from pathlib import Path

from aiosmtpd.smtp import SMTP

from relaypolicy.aiosmtpd import PasswordAuthenticator, RelayPolicyHandler, WholeReplySMTP
from relaypolicy.config import Config, parse_config, read_toml
from relaypolicy.daemon.runtime import Runtime
from relaypolicy.domains import DomainSet
from relaypolicy.errors import ConfigError
from relaypolicy.iptable.base import ManagedTable
from relaypolicy.policies import Policy
from relaypolicy.settings import parse_host_port
from relaypolicy.smtpd.delivery import MaildirDelivery
from relaypolicy.smtpd.settings import DEFAULT_TOML, SmtpdSettings, parse_smtpd

__all__ = ["SmtpdFrontEnd", "SmtpdServer", "load_smtpd_config", "make_tls_context"]

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


def load_smtpd_config(path: str | Path | None) -> tuple[Config, SmtpdSettings]:
    """The configuration and the ``[smtpd]`` settings of ``path`` (None: the default)."""
    source = "<embedded default>" if path is None else str(path)
    data = tomllib.loads(DEFAULT_TOML) if path is None else read_toml(path)
    try:
        settings = parse_smtpd(data.pop("smtpd", {}))
        config = parse_config(data, source=source)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if config.auth.require_tls and settings.passwords and settings.tls_certificate is None:
        raise ConfigError(
            f"{source}: smtp_auth.require_tls needs smtpd.tls_certificate and smtpd.tls_key "
            "(AUTH would never be possible)"
        )
    _check_mailboxes(settings, config, source)
    return config, settings


def _check_mailboxes(settings: SmtpdSettings, config: Config, source: str) -> None:
    """Every listed mailbox is in a local domain, and local domains have mailboxes."""
    local = DomainSet(config.local_domains)
    for local_part, domain in sorted(settings.mailboxes):
        if domain and domain not in local:
            raise ConfigError(
                f"{source}: smtpd.mailboxes: {local_part}@{domain}: {domain} is not in "
                "domains.local"
            )
    if config.local_domains and not settings.mailboxes and settings.catch_all is None:
        raise ConfigError(
            f"{source}: smtpd.mailboxes: mail for {config.local_domains[0]} needs mailboxes: "
            'list them (mailboxes = ["user@example.org", "postmaster"]) or name one Maildir '
            'for every local address (catch_all = "maildirs/catch-all")'
        )


class SmtpdFrontEnd:
    """aiosmtpd's SMTP server, with the policy handler in front of the delivery, as a
    front end of the runtime."""

    def __init__(
        self, config: Config, settings: SmtpdSettings, policy: Policy, listen: list[str]
    ) -> None:
        self.config = config
        self.settings = settings
        self.policy = policy
        self.hostname = settings.server_name  # once: getfqdn() may ask the DNS
        self.listen = [parse_host_port(spec) for spec in listen]  # ValueError now
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
        self.handler = RelayPolicyHandler(policy, inner=self.delivery, log_format=config.log.format)
        self.tls_context = make_tls_context(settings)
        self.authenticator = (
            PasswordAuthenticator(settings.passwords) if settings.passwords is not None else None
        )
        # AUTH only inside TLS when TLS is there (Postfix smtpd_tls_auth_only); without a
        # certificate, only when the configuration does not ask for TLS.
        self.auth_require_tls = self.tls_context is not None or config.auth.require_tls
        self.bound: list[str] = []
        self._servers: list[asyncio.Server] = []

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
        logging.getLogger("mail.log").addFilter(_QuietLoginData())
        for host, port in self.listen:
            server = await loop.create_server(self.smtp, host=host, port=port)
            self._servers.append(server)
            for sock in server.sockets:
                address = sock.getsockname()
                shown = f"[{address[0]}]" if ":" in address[0] else address[0]
                self.bound.append(f"{shown}:{address[1]}")
        return self.bound

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    def update(self, config: Config, policy: Policy) -> list[str]:
        """Never called: ``smtpd`` has no reload."""
        raise NotImplementedError("relaypolicy smtpd does not reload")

    def stats(self) -> dict[str, object]:
        return {"listening": self.bound, **self.handler.decider.stats.as_stats()}

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


class SmtpdServer(Runtime):
    """The SMTP server of one configuration. ``table`` replaces the configured one (tests).

    Raises :class:`ValueError` for settings that cannot be used (a listen address, a TLS
    certificate, a password file: the message names it) and :class:`OSError` or
    :class:`~relaypolicy.errors.TableFileError` for a ``persist`` that cannot be.
    """

    name = "relaypolicy smtpd"
    log = logging.getLogger("relaypolicy.smtpd")

    def __init__(
        self,
        config: Config,
        settings: SmtpdSettings,
        *,
        table: ManagedTable | None = None,
        listen: list[str] | None = None,
    ) -> None:
        if table is None:
            table = config.make_pop_table(durable=True)
        self.settings = settings
        self.policy = config.build_policy(table)
        self.front_end = SmtpdFrontEnd(
            config, settings, self.policy, list(listen or settings.listen)
        )
        super().__init__(config, table, self.front_end, control_socket=settings.control_socket)
        self.delivery = self.front_end.delivery
        self.handler = self.front_end.handler
        self.tls_context = self.front_end.tls_context
        self.authenticator = self.front_end.authenticator
        self.auth_require_tls = self.front_end.auth_require_tls

    def smtp(self) -> SMTP:
        """One aiosmtpd protocol instance (a connection)."""
        return self.front_end.smtp()

    def describe(self) -> str:
        """Where mail goes, in words, for the start-up log."""
        return self.front_end.describe()

    def started_log(self, bound: list[str]) -> None:
        super().started_log(bound)
        log.info("%s", self.describe())
        if self.authenticator is not None and not self.auth_require_tls:
            log.warning("AUTH is offered without TLS: passwords cross the network in the clear")
