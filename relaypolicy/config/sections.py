"""The sections the configuration registry reads itself: the table, SMTP AUTH and logging.

``[pop_before_smtp]`` (:class:`PopSettings`: the table's lifetime, size, IPv6 prefix, its
file or Redis state, the NAT mitigation), ``[smtp_auth]`` (:class:`AuthSettings`) and
``[log]`` (:class:`LogSettings`), each parsed with :class:`~relaypolicy.settings.Section`
so every error names the key. :mod:`relaypolicy.config` puts them into a
:class:`~relaypolicy.config.Config`; the other sections are read by their subsystems.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping

import attrs

from relaypolicy.fleet.urls import parse_state_url
from relaypolicy.settings import Section

__all__ = ["SYSLOG_FACILITIES", "AuthSettings", "LogSettings", "PopSettings"]


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


#: ``[log] facility`` names: the syslog facilities of RFC 5424 section 6.2.1 (with their
#: traditional names; ``security``, ``console`` and the like are not portable).
SYSLOG_FACILITIES = (
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
    "authpriv", "ftp", "local0", "local1", "local2", "local3", "local4", "local5", "local6",
    "local7",
)  # fmt: skip


@attrs.frozen
class LogSettings:
    """``[log]``: level, format (``text`` or ``json`` lines) and where the lines go.

    ``target`` is ``stderr``, ``syslog`` (a datagram to the local syslog socket ``address``,
    ``/dev/log``, under ``facility``) or ``journald`` (stderr read by systemd's journal).
    """

    level: str = "INFO"
    format: str = "text"
    target: str = "stderr"
    facility: str = "mail"
    address: str = "/dev/log"


_POP_KEYS = (
    "ttl",
    "max_entries",
    "ipv6_prefix",
    "persist",
    "state",
    "bind_sender",
    "max_staleness",
    "key_prefix",
)


def _pop_settings(document: Section) -> PopSettings | None:
    if "pop_before_smtp" not in document:
        return None
    section = document.section("pop_before_smtp", _POP_KEYS)
    persist = section.string("persist", expected="a file path")
    state = section.string("state", "memory", expected="a state URL")
    try:
        shared = parse_state_url(state).shared
    except ValueError as exc:
        raise section.error("state", str(exc)) from None
    if shared:
        if importlib.util.find_spec("redis") is None:
            raise section.error(
                "state", "a Redis state needs redis-py: pip install 'relaypolicy[redis]'"
            )
        if persist:
            raise section.error(
                "persist", "Redis keeps a shared table; persist is for the memory state"
            )
    max_entries = None
    if "max_entries" in section:
        max_entries = section.integer(
            "max_entries", 0, low=1, high=2**62, expected="a positive integer"
        )
    prefix_text = section.string("key_prefix", "relaypolicy:pop", expected="a key prefix")
    if not prefix_text or any(c in prefix_text for c in "{}\r\n "):
        raise section.error("key_prefix", "expected a non-empty prefix without braces")
    return PopSettings(
        ttl=section.seconds("ttl", 1800.0, low=1.0, high=7 * 86400.0),
        max_entries=max_entries,
        ipv6_prefix=section.integer("ipv6_prefix", 128, low=32, high=128),
        persist=persist,
        state="memory" if not shared else state,
        bind_sender=section.login_map("bind_sender"),
        max_staleness=section.seconds("max_staleness", 10.0, low=1.0, high=3600.0),
        key_prefix=prefix_text,
    )


def _auth_settings(section: Section) -> AuthSettings:
    return AuthSettings(
        require_tls=section.boolean("require_tls", False),
        sender_logins=section.login_map("sender_logins"),
    )


def _log_settings(section: Section) -> LogSettings:
    level = section.string("level", "info", expected="a level name").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise section.error(
            "level", f"expected debug, info, warning or error, got {level.lower()!r}"
        )
    fmt = section.string("format", "text", expected='"text" or "json"', choices=("text", "json"))
    target = section.string(
        "target",
        "stderr",
        expected='"stderr", "syslog" or "journald"',
        choices=("stderr", "syslog", "journald"),
    )
    facility = section.string(
        "facility",
        "mail",
        expected="a syslog facility (mail, daemon, local0 to local7, ...)",
        choices=SYSLOG_FACILITIES,
    )
    address = section.string("address", "/dev/log", expected="an absolute socket path")
    if not address.startswith("/"):
        raise section.error("address", f"expected an absolute socket path, got {address!r}")
    return LogSettings(level=level, format=fmt, target=target, facility=facility, address=address)
