"""The ``[serve]`` section: the Postfix policy service's listeners and protocol options."""

from __future__ import annotations

from relaypolicy.listeners import listen_settings
from relaypolicy.postfix.server import ServerSettings
from relaypolicy.settings import Section

__all__ = ["SERVE_KEYS", "parse_serve"]

SERVE_KEYS = (
    "listen",
    "socket_mode",
    "accept_action",
    "other_states_action",
    "idle_timeout",
    "request_timeout",
    "max_connections",
    "control_socket",
)


def parse_serve(table: object) -> ServerSettings:
    """Validate a ``[serve]`` table; :class:`ConfigError` names the key."""
    section = Section(table, "serve", SERVE_KEYS)
    listen, mode = listen_settings(section, "127.0.0.1:9998")
    return ServerSettings(
        listen=listen,
        socket_mode=mode,
        control_socket=section.string("control_socket", expected="a socket path"),
        accept_action=section.string(
            "accept_action", "OK", expected='"OK" or "DUNNO"', choices=("OK", "DUNNO")
        ),
        other_states_action=section.string(
            "other_states_action",
            "DUNNO",
            expected="a one-line Postfix action",
            nonempty=True,
            one_line=True,
        ),
        idle_timeout=section.seconds("idle_timeout", 330.0, low=0.001, high=86400.0),
        request_timeout=section.seconds("request_timeout", 10.0, low=0.001, high=3600.0),
        max_connections=section.integer("max_connections", 200, low=1, high=1_000_000),
    )
