"""The ``[smtpd]`` section of the configuration file, and the embedded default.

The rest of the file is the ordinary configuration (``docs/configuration.md``), so one
file serves ``relaypolicy serve`` and ``relaypolicy smtpd`` alike
(:func:`relaypolicy.daemon.smtpd.load_smtpd_config` reads both). Relative paths are
relative to the working directory, like ``pop_before_smtp.persist``.
"""

from __future__ import annotations

import socket
from pathlib import Path

import attrs

from relaypolicy.address import parse_address
from relaypolicy.errors import ConfigError
from relaypolicy.settings import Section, parse_host_port

__all__ = ["DEFAULT_TOML", "SMTPD_KEYS", "SmtpdSettings", "parse_smtpd"]

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

SMTPD_KEYS = (
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
)


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


def _path(section: Section, key: str) -> Path | None:
    value = section.string(key, expected="a path")
    return Path(value) if value else None


def _mailboxes(section: Section) -> frozenset[tuple[str, str]]:
    """``smtpd.mailboxes``: ``"user@example.org"``, or ``"postmaster"`` for every domain."""
    keys: set[tuple[str, str]] = set()
    item = 'an address ("user@example.org")'
    for index, entry in enumerate(section.strings("mailboxes", item=item)):
        key = f"smtpd.mailboxes[{index}]"
        address = parse_address(entry)
        if not address.valid or not address.local_part or entry.startswith(("@", "<")):
            why = address.error or "expected user@domain or a bare local part"
            raise ConfigError(f"{key}: {entry!r} is not a mailbox address: {why}")
        if address.routed:
            raise ConfigError(f"{key}: {entry!r} routes mail elsewhere (%, !, @)")
        keys.add((address.local_part.lower(), address.domain))
    return frozenset(keys)


def parse_smtpd(table: object) -> SmtpdSettings:
    """Validate an ``[smtpd]`` table; :class:`ConfigError` names the key."""
    section = Section(table, "smtpd", SMTPD_KEYS)
    listen = section.strings("listen", ("127.0.0.1:8025",))
    if not listen:
        raise section.error("listen", "expected at least one address")
    for index, spec in enumerate(listen):
        try:
            parse_host_port(spec)
        except ValueError as exc:
            raise ConfigError(f"smtpd.listen[{index}]: {exc}") from None
    certificate, key = _path(section, "tls_certificate"), _path(section, "tls_key")
    if (certificate is None) != (key is None):
        raise section.error("tls_key", "give both tls_certificate and tls_key, or neither")
    client_ca = _path(section, "tls_client_ca")
    if client_ca is not None and certificate is None:
        raise section.error("tls_client_ca", "needs tls_certificate and tls_key")
    size = section.integer(
        "max_message_size", 10 * 1024 * 1024, low=1024, high=2**40, expected="at least 1024 bytes"
    )
    return SmtpdSettings(
        listen=listen,
        hostname=section.string("hostname", expected="a host name"),
        maildir=_path(section, "maildir") or Path("maildirs"),
        mailboxes=_mailboxes(section),
        catch_all=_path(section, "catch_all"),
        outgoing=_path(section, "outgoing") or Path("outgoing"),
        smarthost=section.host_port("smarthost"),
        smarthost_starttls=section.boolean("smarthost_starttls", False),
        tls_certificate=certificate,
        tls_key=key,
        tls_client_ca=client_ca,
        passwords=_path(section, "passwords"),
        max_message_size=size,
        control_socket=_path(section, "control_socket"),
    )
