"""The TOML configuration: one file describes the policies, the chains and the service.

Every error names the key (``chain.ports.587[1]``) and says what was expected; a TOML
syntax error names the line. Loading builds nothing with side effects: the POP-before-SMTP
table is created (or kept, on reload) by the caller through :meth:`Config.build_policy`.

See ``docs/configuration.md`` for the reference and ``examples/`` for whole files.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from relaypolicy.domains import DomainError, DomainSet
from relaypolicy.iptable import ExpiringIpTable
from relaypolicy.model import Verdict
from relaypolicy.networks import NetworkSet
from relaypolicy.policies import FirstMatch, LocalDomainOnly, OpenRelay, Policy, TrustedNetworks
from relaypolicy.policies.auth import ClientCertificate, SmtpAuthRequired
from relaypolicy.policies.popbeforesmtp import PopBeforeSmtp
from relaypolicy.policies.ports import ByServerPort

if TYPE_CHECKING:
    from relaypolicy.fleet import ReplicaTable
    from relaypolicy.watch.runner import WatchSettings

__all__ = ["STEPS", "Config", "ConfigError", "load_config", "parse_config", "read_toml"]


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and the key."""


# The steps a chain may name, and what each means in words (for `config check`).
STEPS: dict[str, str] = {
    "trusted_networks": "accept clients in the trusted networks (permit_mynetworks)",
    "sasl_permit": "accept clients that authenticated with SMTP AUTH (permit_sasl_authenticated)",
    "sasl_required": "require SMTP AUTH: refuse unauthenticated clients with 530 5.7.0",
    "client_certificate": "accept clients presenting a listed TLS client certificate "
    "(permit_tls_clientcerts)",
    "pop_before_smtp": "accept clients that logged in to POP/IMAP recently",
    "local_domains": "accept mail for the local and relay domains, refuse everything else "
    "(reject_unauth_destination)",
    "open_relay": "accept everything (an open relay: tests and closed labs only)",
}
DEFAULT_CHAIN = ("trusted_networks", "sasl_permit", "pop_before_smtp", "local_domains")
_DEFAULTS = {"reject": Verdict.REJECT, "defer": Verdict.DEFER, "next": Verdict.NEXT}


def _typed(value: Any, kind: type | tuple[type, ...], key: str, expected: str) -> Any:
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(f"{key}: expected {expected}, got {type(value).__name__} {value!r}")
    return value


def _strings(value: Any, key: str) -> tuple[str, ...]:
    _typed(value, list, key, "a list of strings")
    for index, item in enumerate(value):
        _typed(item, str, f"{key}[{index}]", "a string")
    return tuple(value)


def _table(config: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = config.get(key, {})
    return _typed(value, dict, key, "a table") if value is not None else {}


def _no_unknown(table: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown key (expected one of {', '.join(sorted(known))})"
        )


@attrs.frozen
class PopSettings:
    """``[pop_before_smtp]``: the table and the NAT mitigation."""

    ttl: float = 1800.0
    max_entries: int | None = None
    ipv6_prefix: int = 128
    persist: str = ""
    state: str = "memory"
    bind_sender: Mapping[str, tuple[str, ...]] | None = None
    max_staleness: float = 10.0  # shared state: defer unknown clients when cut off longer
    key_prefix: str = "relaypolicy:pop"  # shared state: the Redis keys' prefix


@attrs.frozen
class AuthSettings:
    """``[smtp_auth]``: TLS requirement and sender ownership."""

    require_tls: bool = False
    sender_logins: Mapping[str, tuple[str, ...]] | None = None


@attrs.frozen
class ServeSettings:
    """``[serve]``: listeners and the protocol options of the policy service."""

    listen: tuple[str, ...] = ("127.0.0.1:9998",)
    socket_mode: int = 0o666
    accept_action: str = "OK"
    other_states_action: str = "DUNNO"
    idle_timeout: float = 330.0
    max_connections: int = 200
    control_socket: str = ""


@attrs.frozen
class LogSettings:
    """``[log]``: level and format (``text`` or ``json`` lines)."""

    level: str = "INFO"
    format: str = "text"


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
    serve: ServeSettings
    log: LogSettings
    watch: WatchSettings | None = None

    def build_policy(self, pop_table: Any = None) -> Policy:
        """The policy this file describes; ``pop_table`` is reused across reloads."""
        builders = self._builders(pop_table)

        def chain_for(steps: tuple[str, ...], name: str) -> Policy:
            return FirstMatch(
                *(builders[step]() for step in steps), default=self.default, name=name
            )

        default_chain = chain_for(self.chain, "chain")
        if not self.ports:
            return default_chain
        by_port = {
            port: chain_for(steps, f"chain.ports.{port}") for port, steps in self.ports.items()
        }
        return ByServerPort(by_port, default=default_chain)

    def make_pop_table(self, *, load: bool = True) -> ExpiringIpTable | ReplicaTable | None:
        """A new POP-before-SMTP table as configured (loaded from ``persist`` if set).

        With a Redis ``state`` it is a :class:`~relaypolicy.fleet.ReplicaTable`, not yet
        started (its owner calls ``start()`` and ``close()``); with ``load=False`` a
        memory table stands in for it, and nothing is connected or imported.
        """
        if self.pop is None:
            return None
        pop = self.pop
        if pop.state != "memory" and load:
            from relaypolicy.fleet import ReplicaTable

            return ReplicaTable(
                pop.state,
                pop.ttl,
                max_entries=pop.max_entries,
                ipv6_prefix=pop.ipv6_prefix,
                max_staleness=pop.max_staleness,
                key_prefix=pop.key_prefix,
            )
        if pop.persist and load:
            return ExpiringIpTable.load(
                pop.persist, pop.ttl, max_entries=pop.max_entries, ipv6_prefix=pop.ipv6_prefix
            )
        return ExpiringIpTable(pop.ttl, max_entries=pop.max_entries, ipv6_prefix=pop.ipv6_prefix)

    def _builders(self, pop_table: Any) -> dict[str, Callable[[], Policy]]:
        def pop() -> Policy:
            if pop_table is None:
                raise ConfigError(f"{self.source}: pop_before_smtp step without a table")
            assert self.pop is not None
            return PopBeforeSmtp(pop_table, bind_sender=self.pop.bind_sender)

        def sasl(otherwise: Verdict) -> Policy:
            # Sender ownership only where login is required (the submission ports): on
            # port 25, mail from outside legitimately carries our users' addresses
            # (forwarders, mailing lists), and "not logged in" would refuse it.
            return SmtpAuthRequired(
                require_tls=self.auth.require_tls,
                sender_logins=self.auth.sender_logins if otherwise is Verdict.REJECT else None,
                otherwise=otherwise,
                name="sasl_required" if otherwise is Verdict.REJECT else "sasl_permit",
            )

        def certificate() -> Policy:
            return ClientCertificate(self.client_certificates)

        return {
            "trusted_networks": lambda: TrustedNetworks(self.trusted_networks),
            "sasl_permit": lambda: sasl(Verdict.NEXT),
            "sasl_required": lambda: sasl(Verdict.REJECT),
            "client_certificate": certificate,
            "pop_before_smtp": pop,
            "local_domains": lambda: LocalDomainOnly(
                self.local_domains, relay_domains=self.relay_domains
            ),
            "open_relay": OpenRelay,
        }

    def describe(self) -> str:
        """The effective chains, in words."""
        lines = [f"configuration {self.source}"]
        lines.append(f"  local domains: {', '.join(self.local_domains) or '(none)'}")
        lines.append(f"  relay domains: {', '.join(self.relay_domains) or '(none)'}")
        lines.append(f"  trusted networks: {', '.join(self.trusted_networks) or '(none)'}")
        if self.pop is not None:
            persist = f", saved to {self.pop.persist}" if self.pop.persist else ""
            if self.pop.state != "memory":
                from relaypolicy.fleet.urls import parse_state_url

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
                lines.append(f"    {number}. {STEPS[step]}")
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
    """Read and validate a TOML file; :class:`ConfigError` names the file and the key."""
    source = str(path)
    data = read_toml(path)
    try:
        return parse_config(data, source=source)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def parse_config(data: Mapping[str, Any], *, source: str = "<config>") -> Config:
    """Validate an already-parsed TOML document."""
    _no_unknown(
        data,
        {
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
        },
        "",
    )
    if "smtpd" in data:
        # `relaypolicy smtpd` reads it; `serve` ignores it, but a typo is still an error.
        from relaypolicy.smtpd.settings import parse_smtpd

        parse_smtpd(data["smtpd"])
    domains = _table(data, "domains")
    _no_unknown(domains, {"local", "relay"}, "domains")
    local = _strings(domains.get("local", []), "domains.local")
    relay = _strings(domains.get("relay", []), "domains.relay")
    for key, values, subdomains in (
        ("domains.local", local, False),
        ("domains.relay", relay, True),
    ):
        try:
            DomainSet(values, subdomains=subdomains)
        except DomainError as exc:
            raise ConfigError(f"{key}: {exc}") from None

    networks = _table(data, "networks")
    _no_unknown(networks, {"trusted"}, "networks")
    trusted = _strings(networks.get("trusted", []), "networks.trusted")
    for index, cidr in enumerate(trusted):
        try:
            NetworkSet([cidr])
        except ValueError as exc:
            raise ConfigError(f"networks.trusted[{index}]: {exc}") from None

    certificates = _table(data, "client_certificates")
    _no_unknown(certificates, {"fingerprints"}, "client_certificates")
    fingerprints = _strings(
        certificates.get("fingerprints", []), "client_certificates.fingerprints"
    )

    pop = _pop_settings(data)
    auth = _auth_settings(data)
    chain, ports, default = _chains(data, pop is not None)
    if "local_domains" in {*chain, *(s for steps in ports.values() for s in steps)} and not (
        local or relay
    ):
        raise ConfigError("domains.local: the chain uses local_domains but no domain is listed")
    if "client_certificate" in {*chain, *(s for v in ports.values() for s in v)} and (
        not fingerprints
    ):
        raise ConfigError(
            "client_certificates.fingerprints: the chain uses client_certificate "
            "but no fingerprint is listed"
        )
    config = Config(
        source=source,
        local_domains=local,
        relay_domains=relay,
        trusted_networks=trusted,
        client_certificates=fingerprints,
        pop=pop,
        auth=auth,
        chain=chain,
        ports=ports,
        default=default,
        serve=_serve_settings(data),
        log=_log_settings(data),
        watch=_watch_settings(data, pop),
    )
    try:
        # Build once to validate; a fresh in-memory table stands in (no file is read).
        config.build_policy(pop_table=config.make_pop_table(load=False))
        if auth.sender_logins is not None:  # validated even when no step uses it yet
            SmtpAuthRequired(sender_logins=auth.sender_logins)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from None
    return config


def _watch_settings(data: Mapping[str, Any], pop: PopSettings | None) -> WatchSettings | None:
    if "watch" not in data:
        return None
    if pop is None:
        raise ConfigError("watch: the watcher feeds the [pop_before_smtp] table; add one")
    from relaypolicy.watch.runner import parse_watch

    return parse_watch(data["watch"])


def _login_map(value: Any, key: str) -> dict[str, tuple[str, ...]]:
    _typed(value, dict, key, "a table of address = [logins]")
    result: dict[str, tuple[str, ...]] = {}
    for address, logins in value.items():
        listed = [logins] if isinstance(logins, str) else logins
        result[address] = _strings(listed, f"{key}.{address}")
    return result


def _pop_settings(data: Mapping[str, Any]) -> PopSettings | None:
    if "pop_before_smtp" not in data:
        return None
    table = _table(data, "pop_before_smtp")
    key = "pop_before_smtp"
    _no_unknown(
        table,
        {
            "ttl",
            "max_entries",
            "ipv6_prefix",
            "persist",
            "state",
            "bind_sender",
            "max_staleness",
            "key_prefix",
        },
        key,
    )
    ttl = float(_typed(table.get("ttl", 1800), (int, float), f"{key}.ttl", "seconds"))
    if not 0 < ttl <= 7 * 86400:
        raise ConfigError(f"{key}.ttl: expected seconds between 1 and 604800, got {ttl:g}")
    max_entries = table.get("max_entries")
    if max_entries is not None:
        _typed(max_entries, int, f"{key}.max_entries", "a positive integer")
        if max_entries < 1:
            raise ConfigError(f"{key}.max_entries: expected a positive integer")
    prefix = _typed(table.get("ipv6_prefix", 128), int, f"{key}.ipv6_prefix", "an integer")
    if not 32 <= prefix <= 128:
        raise ConfigError(f"{key}.ipv6_prefix: expected 32 to 128, got {prefix}")
    persist = _typed(table.get("persist", ""), str, f"{key}.persist", "a file path")
    state = _typed(table.get("state", "memory"), str, f"{key}.state", "a state URL")
    from relaypolicy.fleet.urls import parse_state_url

    try:
        shared = parse_state_url(state).shared
    except ValueError as exc:
        raise ConfigError(f"{key}.state: {exc}") from None
    if shared:
        import importlib.util

        if importlib.util.find_spec("redis") is None:
            raise ConfigError(
                f"{key}.state: a Redis state needs redis-py: pip install 'relaypolicy[redis]'"
            )
        if persist:
            raise ConfigError(
                f"{key}.persist: Redis keeps a shared table; persist is for the memory state"
            )
    staleness = float(
        _typed(table.get("max_staleness", 10), (int, float), f"{key}.max_staleness", "seconds")
    )
    if not 1 <= staleness <= 3600:
        raise ConfigError(f"{key}.max_staleness: expected seconds from 1 to 3600")
    prefix_text = _typed(
        table.get("key_prefix", "relaypolicy:pop"), str, f"{key}.key_prefix", "a key prefix"
    )
    if not prefix_text or any(c in prefix_text for c in "{}\r\n "):
        raise ConfigError(f"{key}.key_prefix: expected a non-empty prefix without braces")
    bind = table.get("bind_sender")
    return PopSettings(
        ttl=ttl,
        max_entries=max_entries,
        ipv6_prefix=prefix,
        persist=persist,
        state="memory" if not shared else state,
        bind_sender=_login_map(bind, f"{key}.bind_sender") if bind is not None else None,
        max_staleness=staleness,
        key_prefix=prefix_text,
    )


def _auth_settings(data: Mapping[str, Any]) -> AuthSettings:
    table = _table(data, "smtp_auth")
    _no_unknown(table, {"require_tls", "sender_logins"}, "smtp_auth")
    require_tls = _typed(
        table.get("require_tls", False), bool, "smtp_auth.require_tls", "true or false"
    )
    logins = table.get("sender_logins")
    return AuthSettings(
        require_tls=require_tls,
        sender_logins=_login_map(logins, "smtp_auth.sender_logins") if logins is not None else None,
    )


def _steps(value: Any, key: str, have_pop: bool) -> tuple[str, ...]:
    steps = _strings(value, key)
    if not steps:
        raise ConfigError(f"{key}: expected at least one step")
    for index, step in enumerate(steps):
        if step not in STEPS:
            raise ConfigError(
                f"{key}[{index}]: unknown step {step!r} (expected one of {', '.join(STEPS)})"
            )
        if step == "pop_before_smtp" and not have_pop:
            raise ConfigError(f"{key}[{index}]: pop_before_smtp needs a [pop_before_smtp] table")
    if len(set(steps)) != len(steps):
        raise ConfigError(f"{key}: a step is listed twice")
    return steps


def _chains(
    data: Mapping[str, Any], have_pop: bool
) -> tuple[tuple[str, ...], dict[int, tuple[str, ...]], Verdict]:
    table = _table(data, "chain")
    _no_unknown(table, {"steps", "ports", "otherwise"}, "chain")
    if "steps" in table:
        chain = _steps(table["steps"], "chain.steps", have_pop)
    else:
        chain = tuple(s for s in DEFAULT_CHAIN if have_pop or s != "pop_before_smtp")
    ports: dict[int, tuple[str, ...]] = {}
    for port_text, steps in _table(table, "ports").items():
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(f"chain.ports.{port_text}: expected a port number 1-65535")
        ports[int(port_text)] = _steps(steps, f"chain.ports.{port_text}", have_pop)
    expected = '"reject", "defer" or "next"'
    otherwise = _typed(table.get("otherwise", "reject"), str, "chain.otherwise", expected)
    if otherwise not in _DEFAULTS:
        raise ConfigError(f"chain.otherwise: expected {expected}, got {otherwise!r}")
    return chain, ports, _DEFAULTS[otherwise]


def _serve_settings(data: Mapping[str, Any]) -> ServeSettings:
    from relaypolicy.postfix.server import parse_listener

    table = _table(data, "serve")
    key = "serve"
    _no_unknown(
        table,
        {
            "listen",
            "socket_mode",
            "accept_action",
            "other_states_action",
            "idle_timeout",
            "max_connections",
            "control_socket",
        },
        key,
    )
    listen = _strings(table.get("listen", ["127.0.0.1:9998"]), f"{key}.listen")
    if not listen:
        raise ConfigError(f"{key}.listen: expected at least one address")
    for index, spec in enumerate(listen):
        try:
            parse_listener(spec)
        except ValueError as exc:
            raise ConfigError(f"{key}.listen[{index}]: {exc}") from None
    mode_text = _typed(
        table.get("socket_mode", "0666"),
        str,
        f"{key}.socket_mode",
        'an octal string such as "0660"',
    )
    try:
        mode = int(mode_text, 8)
    except ValueError:
        raise ConfigError(f'{key}.socket_mode: expected an octal string such as "0660"') from None
    if not 0 <= mode <= 0o777:
        raise ConfigError(f"{key}.socket_mode: expected a permission mode up to 0777")
    accept = _typed(
        table.get("accept_action", "OK"), str, f"{key}.accept_action", '"OK" or "DUNNO"'
    )
    if accept not in ("OK", "DUNNO"):
        raise ConfigError(f'{key}.accept_action: expected "OK" or "DUNNO", got {accept!r}')
    other = _typed(
        table.get("other_states_action", "DUNNO"), str, f"{key}.other_states_action", "an action"
    )
    if not other or any(c in other for c in "\r\n\x00"):
        raise ConfigError(f"{key}.other_states_action: expected a one-line Postfix action")
    idle = float(
        _typed(table.get("idle_timeout", 330), (int, float), f"{key}.idle_timeout", "seconds")
    )
    if idle <= 0:
        raise ConfigError(f"{key}.idle_timeout: expected a positive number of seconds")
    limit = _typed(table.get("max_connections", 200), int, f"{key}.max_connections", "an integer")
    if limit < 1:
        raise ConfigError(f"{key}.max_connections: expected at least 1")
    control = _typed(table.get("control_socket", ""), str, f"{key}.control_socket", "a socket path")
    return ServeSettings(
        listen=listen,
        socket_mode=mode,
        accept_action=accept,
        other_states_action=other,
        idle_timeout=idle,
        max_connections=limit,
        control_socket=control,
    )


def _log_settings(data: Mapping[str, Any]) -> LogSettings:
    table = _table(data, "log")
    _no_unknown(table, {"level", "format"}, "log")
    level = _typed(table.get("level", "info"), str, "log.level", "a level name").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(
            f"log.level: expected debug, info, warning or error, got {level.lower()!r}"
        )
    fmt = _typed(table.get("format", "text"), str, "log.format", '"text" or "json"')
    if fmt not in ("text", "json"):
        raise ConfigError(f'log.format: expected "text" or "json", got {fmt!r}')
    return LogSettings(level=level, format=fmt)
