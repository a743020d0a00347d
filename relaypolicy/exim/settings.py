"""The ``[exim]`` section: where ``relaypolicy exim`` listens for Exim's ``${readsocket}``.

Keys: ``listen`` (a list of ``HOST:PORT``, ``[::1]:PORT`` or ``unix:/path``, like
``[serve] listen``; default ``127.0.0.1:9996``), ``socket_mode`` (the unix sockets' mode,
an octal string, default ``"0666"``: Exim's user must be able to connect),
``control_socket`` (the control socket's path; empty: none), ``request_timeout`` (a
connection must bring its whole line within this many seconds, default 10: Exim's own
readsocket timeout is shorter, so only a broken client meets it) and ``max_connections``
(default 200; beyond it new connections are answered ``defer`` and closed).
"""

from __future__ import annotations

import attrs

from relaypolicy.listeners import listen_settings
from relaypolicy.settings import Section

__all__ = ["DEFAULT_LISTEN", "EXIM_KEYS", "EximSettings", "parse_exim"]

DEFAULT_LISTEN = "127.0.0.1:9996"

EXIM_KEYS = ("listen", "socket_mode", "control_socket", "request_timeout", "max_connections")


@attrs.frozen
class EximSettings:
    """A validated ``[exim]`` section (see the module)."""

    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    socket_mode: int = 0o666
    control_socket: str = ""
    request_timeout: float = 10.0
    max_connections: int = 200


def parse_exim(table: object) -> EximSettings:
    """Validate an ``[exim]`` table; :class:`ConfigError` names the key."""
    section = Section(table, "exim", EXIM_KEYS)
    listen, mode = listen_settings(section, DEFAULT_LISTEN)
    return EximSettings(
        listen=listen,
        socket_mode=mode,
        control_socket=section.string("control_socket", expected="a socket path"),
        request_timeout=section.seconds("request_timeout", 10.0, low=0.001, high=3600.0),
        max_connections=section.integer("max_connections", 200, low=1, high=1_000_000),
    )
