"""The ``[smtpd]`` table of the configuration file, and the embedded default.

The rest of the file is the ordinary configuration (``docs/configuration.md``): the
``[smtpd]`` table is taken out before the rest goes to
:func:`relaypolicy.config.parse_config`, so one file serves ``relaypolicy serve`` and
``relaypolicy smtpd`` alike. Relative paths are relative to the working directory, like
``pop_before_smtp.persist``.
"""

from __future__ import annotations

import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from relaypolicy.address import parse_address
from relaypolicy.config import Config, ConfigError, parse_config, read_toml
from relaypolicy.domains import DomainSet

__all__ = ["DEFAULT_TOML", "SmtpdSettings", "load_smtpd_config", "parse_listen", "parse_smtpd"]

# `relaypolicy smtpd` without --config: try the library at once, nothing leaves the machine.
DEFAULT_TOML = """\
[domains]
local = ["localhost"]

[networks]
trusted = ["127.0.0.1/32"]

[chain]
steps = ["trusted_networks", "sasl_permit", "local_domains"]

[smtpd]
listen = ["127.0.0.1:8025"]
hostname = "localhost"
maildir = "maildirs"
mailboxes = ["user@localhost", "postmaster"]
outgoing = "outgoing"
"""

_KEYS = {
    "listen",
    "hostname",
    "maildir",
    "mailboxes",
    "catch_all",
    "outgoing",
    "smarthost",
    "smarthost_starttls",
    "tls_certificate",
    "tls_key",
    "tls_client_ca",
    "passwords",
    "max_message_size",
    "control_socket",
}


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> ``(host, port)``; :class:`ValueError` if not."""
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isascii() or not port.isdigit():
        raise ValueError(f"expected HOST:PORT or [IPv6]:PORT, got {text!r}")
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return host, number


@attrs.frozen
class SmtpdSettings:
    """``[smtpd]``: where to listen, where mail goes, TLS and AUTH."""

    listen: tuple[str, ...] = ("127.0.0.1:8025",)
    hostname: str = ""  # empty: the machine's fully-qualified name
    maildir: Path = Path("maildirs")  # local mail: <maildir>/<domain>/<local part>/
    # The local recipient table: (local part, domain) in lower case, domain "" for a
    # local part at every local domain. Anything else local goes to catch_all, or is
    # refused (550 5.1.1) without one.
    mailboxes: frozenset[tuple[str, str]] = frozenset()
    catch_all: Path | None = None
    outgoing: Path = Path("outgoing")  # relayed mail, when there is no smarthost
    smarthost: tuple[str, int] | None = None
    smarthost_starttls: bool = False
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    passwords: Path | None = None
    max_message_size: int = 10 * 1024 * 1024
    control_socket: Path | None = None

    @property
    def server_name(self) -> str:
        return self.hostname or socket.getfqdn()


def _get(table: Mapping[str, Any], key: str, kind: type, expected: str, default: Any) -> Any:
    value = table.get(key, default)
    if value is default:
        return value
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"smtpd.{key}: expected {expected}, got {value!r}")
    return value


def _path(table: Mapping[str, Any], key: str) -> Path | None:
    value = _get(table, key, str, "a path", None)
    return Path(value) if value else None


def _mailboxes(table: Mapping[str, Any]) -> frozenset[tuple[str, str]]:
    """``smtpd.mailboxes``: ``"user@example.org"``, or ``"postmaster"`` for every domain."""
    entries = _get(table, "mailboxes", list, "a list of addresses", [])
    keys: set[tuple[str, str]] = set()
    for index, entry in enumerate(entries):
        key = f"smtpd.mailboxes[{index}]"
        if not isinstance(entry, str):
            raise ConfigError(f'{key}: expected an address ("user@example.org"), got {entry!r}')
        address = parse_address(entry)
        if not address.valid or not address.local_part or entry.startswith(("@", "<")):
            why = address.error or "expected user@domain or a bare local part"
            raise ConfigError(f"{key}: {entry!r} is not a mailbox address: {why}")
        if address.routed:
            raise ConfigError(f"{key}: {entry!r} routes mail elsewhere (%, !, @)")
        keys.add((address.local_part.lower(), address.domain))
    return frozenset(keys)


def parse_smtpd(table: Any) -> SmtpdSettings:
    """Validate an ``[smtpd]`` table; :class:`ConfigError` names the key."""
    if not isinstance(table, dict):
        raise ConfigError(f"smtpd: expected a table, got {table!r}")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ConfigError(
            f"smtpd.{unknown[0]}: unknown key (expected one of {', '.join(sorted(_KEYS))})"
        )
    listen = _get(table, "listen", list, "a list of HOST:PORT", ["127.0.0.1:8025"])
    if not listen:
        raise ConfigError("smtpd.listen: expected at least one address")
    for index, spec in enumerate(listen):
        if not isinstance(spec, str):
            raise ConfigError(f"smtpd.listen[{index}]: expected HOST:PORT, got {spec!r}")
        try:
            parse_listen(spec)
        except ValueError as exc:
            raise ConfigError(f"smtpd.listen[{index}]: {exc}") from None
    smarthost = _get(table, "smarthost", str, "HOST:PORT", "")
    try:
        relay = parse_listen(smarthost) if smarthost else None
    except ValueError as exc:
        raise ConfigError(f"smtpd.smarthost: {exc}") from None
    size = _get(table, "max_message_size", int, "a number of bytes", 10 * 1024 * 1024)
    if size < 1024:
        raise ConfigError("smtpd.max_message_size: expected at least 1024 bytes")
    certificate, key = _path(table, "tls_certificate"), _path(table, "tls_key")
    if (certificate is None) != (key is None):
        raise ConfigError("smtpd.tls_key: give both tls_certificate and tls_key, or neither")
    client_ca = _path(table, "tls_client_ca")
    if client_ca is not None and certificate is None:
        raise ConfigError("smtpd.tls_client_ca: needs tls_certificate and tls_key")
    return SmtpdSettings(
        listen=tuple(listen),
        hostname=_get(table, "hostname", str, "a host name", ""),
        maildir=_path(table, "maildir") or Path("maildirs"),
        mailboxes=_mailboxes(table),
        catch_all=_path(table, "catch_all"),
        outgoing=_path(table, "outgoing") or Path("outgoing"),
        smarthost=relay,
        smarthost_starttls=_get(table, "smarthost_starttls", bool, "true or false", False),
        tls_certificate=certificate,
        tls_key=key,
        tls_client_ca=client_ca,
        passwords=_path(table, "passwords"),
        max_message_size=size,
        control_socket=_path(table, "control_socket"),
    )


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
