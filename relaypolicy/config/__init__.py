"""The TOML configuration: one file describes the policies, the chains and the service.

Every error names the key (``chain.ports.587[1]``) and says what was expected; a TOML
syntax error names the line. Loading builds nothing with side effects: the POP-before-SMTP
table is created (or kept, on reload) by the caller through :meth:`Config.build_policy`.

See ``docs/configuration.md`` for the reference and ``examples/`` for whole files.

Here: :class:`Config`, :data:`SECTIONS` (the sections a file may hold) and the parsing
that puts them together. Each subsystem parses its own section (``[serve]`` in
:mod:`relaypolicy.postfix.settings`, ``[watch]`` in :mod:`relaypolicy.watch.settings`...);
``[pop_before_smtp]``, ``[smtp_auth]`` and ``[log]`` are read in
:mod:`relaypolicy.config.sections`, the chain steps in :mod:`relaypolicy.config.steps`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from relaypolicy.config.metrics import MetricsSettings, parse_metrics
from relaypolicy.config.sections import (
    SYSLOG_FACILITIES,
    AuthSettings,
    LogSettings,
    PopSettings,
    _auth_settings,
    _log_settings,
    _pop_settings,
)
from relaypolicy.config.steps import STEPS, Step, check_needs, parse_chains
from relaypolicy.domains import DomainSet
from relaypolicy.errors import ConfigError, DomainError
from relaypolicy.exim.settings import EximSettings, parse_exim
from relaypolicy.fleet import ReplicaTable
from relaypolicy.fleet.urls import parse_state_url
from relaypolicy.iptable import ExpiringIpTable
from relaypolicy.iptable.base import IpTable, ManagedTable
from relaypolicy.iptable.durable import DurableTable, replay_journals
from relaypolicy.milter.settings import MilterSettings, parse_milter
from relaypolicy.model import Verdict
from relaypolicy.networks import NetworkSet
from relaypolicy.opensmtpd.settings import OpenSmtpdSettings, parse_opensmtpd
from relaypolicy.policies import FirstMatch, Policy
from relaypolicy.policies.auth import SmtpAuthRequired
from relaypolicy.policies.ports import ByServerPort
from relaypolicy.postfix.server import ServerSettings
from relaypolicy.postfix.settings import parse_serve
from relaypolicy.settings import Section, locate
from relaypolicy.smtpd.settings import parse_smtpd
from relaypolicy.watch.settings import WatchSettings, parse_watch

__all__ = [
    "STEPS",
    "SYSLOG_FACILITIES",
    "AuthSettings",
    "Config",
    "ConfigError",
    "LogSettings",
    "PopSettings",
    "Step",
    "load_config",
    "parse_config",
    "read_toml",
]


@attrs.frozen
class Config:
    """A validated configuration file."""

    source: str
    local_domains: tuple[str, ...]
    relay_domains: tuple[str, ...]
    trusted_networks: tuple[str, ...]
    client_certificates: tuple[str, ...]
    pop: PopSettings | None
    auth: AuthSettings
    chain: tuple[str, ...]
    ports: Mapping[int, tuple[str, ...]]
    default: Verdict
    serve: ServerSettings
    log: LogSettings
    watch: WatchSettings | None = None
    metrics: MetricsSettings | None = None
    milter: MilterSettings | None = None
    exim: EximSettings | None = None  # [exim]: relaypolicy exim (Exim's readsocket)
    opensmtpd: OpenSmtpdSettings = attrs.field(factory=OpenSmtpdSettings)

    def build_policy(self, pop_table: IpTable | None = None) -> Policy:
        """The policy this file describes; ``pop_table`` is reused across reloads."""

        def chain_for(steps: tuple[str, ...], name: str) -> Policy:
            policies = (STEPS[step].build(self, pop_table) for step in steps)
            return FirstMatch(*policies, default=self.default, name=name)

        default_chain = chain_for(self.chain, "chain")
        if not self.ports:
            return default_chain
        by_port = {
            port: chain_for(steps, f"chain.ports.{port}") for port, steps in self.ports.items()
        }
        return ByServerPort(by_port, default=default_chain)

    def make_pop_table(self, *, load: bool = True, durable: bool = False) -> ManagedTable | None:
        """A new POP-before-SMTP table as configured (loaded from ``persist`` if set).

        With a Redis ``state`` it is a :class:`~relaypolicy.fleet.ReplicaTable`, not yet
        started (its owner calls ``start()`` and ``close()``). With ``persist`` and
        ``durable`` (what a long-running command asks for) it is the
        :class:`~relaypolicy.iptable.durable.DurableTable` around the snapshot: the
        journal is replayed, a fresh snapshot written, and every change journalled from
        then on; an unusable ``persist`` raises :class:`OSError` or
        :class:`~relaypolicy.errors.TableFileError` here. Without ``durable`` the snapshot
        and its journal are only read (``relaypolicy check``). With ``load=False`` a
        memory table stands in, and nothing is read, connected or imported.
        """
        if self.pop is None:
            return None
        pop = self.pop
        if pop.state != "memory" and load:
            return ReplicaTable(
                pop.state,
                pop.ttl,
                max_entries=pop.max_entries,
                ipv6_prefix=pop.ipv6_prefix,
                max_staleness=pop.max_staleness,
                key_prefix=pop.key_prefix,
            )
        if pop.persist and load:
            table = ExpiringIpTable.load(
                pop.persist, pop.ttl, max_entries=pop.max_entries, ipv6_prefix=pop.ipv6_prefix
            )
            if durable:
                return DurableTable.open(table, pop.persist)
            replay_journals(table, pop.persist)  # what the service acknowledged since
            return table
        return ExpiringIpTable(pop.ttl, max_entries=pop.max_entries, ipv6_prefix=pop.ipv6_prefix)

    def describe(self) -> str:
        """The effective chains, in words."""
        lines = [f"configuration {self.source}"]
        lines.append(f"  local domains: {', '.join(self.local_domains) or '(none)'}")
        lines.append(f"  relay domains: {', '.join(self.relay_domains) or '(none)'}")
        lines.append(f"  trusted networks: {', '.join(self.trusted_networks) or '(none)'}")
        if self.pop is not None:
            persist = f", saved to {self.pop.persist}" if self.pop.persist else ""
            if self.pop.state != "memory":
                persist = (
                    f", shared through {parse_state_url(self.pop.state).redacted} "
                    f"(unknown clients deferred after {self.pop.max_staleness:g} s without it)"
                )
            lines.append(
                f"  POP-before-SMTP: {self.pop.ttl:g} s per login, IPv6 counted by "
                f"/{self.pop.ipv6_prefix}{persist}"
                + (", senders bound to logins" if self.pop.bind_sender else "")
            )
        if self.watch is not None:
            exports = ", ".join(f"{e.format} map {e.path}" for e in self.watch.exports)
            lines.append(
                f"  watching {self.watch.log} for {self.watch.format} logins"
                + (f"; exporting {exports}" if exports else "")
            )

        if self.auth.require_tls or self.auth.sender_logins:
            owned = len(self.auth.sender_logins or {})
            lines.append(
                "  SMTP AUTH: "
                + ("only over TLS" if self.auth.require_tls else "TLS not required")
                + (f"; sender ownership enforced for {owned} address(es)" if owned else "")
            )

        def steps_in_words(title: str, steps: tuple[str, ...]) -> None:
            lines.append(f"  {title}:")
            for number, step in enumerate(steps, 1):
                lines.append(f"    {number}. {STEPS[step].words}")
            ending = {
                Verdict.REJECT: "refuse (554 5.7.1 Relay access denied)",
                Verdict.DEFER: "defer (451 4.7.1)",
                Verdict.NEXT: "no opinion (DUNNO): Postfix's own restrictions decide",
            }[self.default]
            lines.append(f"    otherwise: {ending}")

        for port, steps in sorted(self.ports.items()):
            steps_in_words(f"server port {port}", steps)
        steps_in_words("other ports" if self.ports else "every request", self.chain)
        lines.append(f"  listening on: {', '.join(self.serve.listen)}")
        if self.exim is not None:
            lines.append(f"  relaypolicy exim listening on: {', '.join(self.exim.listen)}")
        return "\n".join(lines)


def read_toml(path: str | Path) -> dict[str, Any]:
    """The TOML document at ``path``; :class:`ConfigError` names the file and the problem
    (the line, for a syntax error)."""
    source = str(path)
    try:
        with open(path, "rb") as stream:
            return tomllib.load(stream)
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML file.

    Raises :class:`ConfigError` whose message starts with ``FILE:LINE:`` (or ``FILE:``
    when the line cannot be told), then the key and what was expected.
    """
    source = str(path)
    data = read_toml(path)
    try:
        return parse_config(data, source=source)
    except ConfigError as exc:
        raise ConfigError(f"{where_in_file(path, str(exc))}: {exc}") from None


def where_in_file(path: str | Path, message: str) -> str:
    """``FILE:LINE`` for the key a :class:`ConfigError` message starts with, else ``FILE``."""
    key = message.split(":", 1)[0]
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return str(path)
    line = locate(text, key) if key and " " not in key else None
    return f"{path}:{line}" if line else str(path)


# The sections a file may hold. Each subsystem parses its own: [serve] the Postfix service
# (relaypolicy.postfix.settings), [watch] the watcher (relaypolicy.watch.settings), [smtpd]
# the SMTP server (relaypolicy.smtpd.settings), [metrics] the Prometheus endpoint of every
# long-running command (relaypolicy.config.metrics); the rest describe the chain and its table.
SECTIONS = (
    "domains",
    "networks",
    "pop_before_smtp",
    "smtp_auth",
    "client_certificates",
    "chain",
    "serve",
    "log",
    "smtpd",
    "watch",
    "metrics",
    "milter",
    "exim",
    "opensmtpd",
)


def parse_config(data: Mapping[str, Any], *, source: str = "<config>") -> Config:
    """Validate an already-parsed TOML document."""
    document = Section(data, "", SECTIONS)
    if "smtpd" in document:
        # `relaypolicy smtpd` reads it; `serve` ignores it, but a typo is still an error.
        parse_smtpd(data["smtpd"])
    domains = document.section("domains", ("local", "relay"))
    local = domains.strings("local")
    relay = domains.strings("relay")
    for key, values, subdomains in (("local", local, False), ("relay", relay, True)):
        try:
            DomainSet(values, subdomains=subdomains)
        except DomainError as exc:
            raise domains.error(key, str(exc)) from None

    networks = document.section("networks", ("trusted",))
    trusted = networks.strings("trusted")
    for index, cidr in enumerate(trusted):
        try:
            NetworkSet([cidr])
        except ValueError as exc:
            raise ConfigError(f"networks.trusted[{index}]: {exc}") from None

    certificates = document.section("client_certificates", ("fingerprints",))
    fingerprints = certificates.strings("fingerprints")

    pop = _pop_settings(document)
    chain, ports, default = parse_chains(
        document.section("chain", ("steps", "ports", "otherwise")), have_pop=pop is not None
    )
    present = {
        "pop_before_smtp": pop is not None,
        "domains.local": bool(local or relay),
        "client_certificates.fingerprints": bool(fingerprints),
    }
    check_needs(chain, ports, present)
    config = Config(
        source=source,
        local_domains=local,
        relay_domains=relay,
        trusted_networks=trusted,
        client_certificates=fingerprints,
        pop=pop,
        auth=_auth_settings(document.section("smtp_auth", ("require_tls", "sender_logins"))),
        chain=chain,
        ports=ports,
        default=default,
        serve=parse_serve(data.get("serve")),
        log=_log_settings(
            document.section("log", ("level", "format", "target", "facility", "address"))
        ),
        watch=_watch_settings(data, pop),
        metrics=parse_metrics(data["metrics"]) if "metrics" in data else None,
        milter=parse_milter(data["milter"]) if "milter" in data else None,
        exim=parse_exim(data["exim"]) if "exim" in data else None,
        opensmtpd=parse_opensmtpd(data.get("opensmtpd")),
    )
    try:
        # Build once to validate; a fresh in-memory table stands in (no file is read).
        config.build_policy(pop_table=config.make_pop_table(load=False))
        if config.auth.sender_logins is not None:  # validated even when no step uses it yet
            SmtpAuthRequired(sender_logins=config.auth.sender_logins)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from None
    return config


def _watch_settings(data: Mapping[str, Any], pop: PopSettings | None) -> WatchSettings | None:
    if "watch" not in data:
        return None
    if pop is None:
        raise ConfigError("watch: the watcher feeds the [pop_before_smtp] table; add one")
    return parse_watch(data["watch"])
