"""The ``[serve]`` section: the Postfix policy service's listeners and protocol options."""

from __future__ import annotations

from relaypolicy.errors import ConfigError
from relaypolicy.postfix.server import ServerSettings, parse_listener
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
    listen = section.strings("listen", ("127.0.0.1:9998",))
    if not listen:
        raise section.error("listen", "expected at least one address")
    for index, spec in enumerate(listen):
        try:
            parse_listener(spec)
        except ValueError as exc:
            raise ConfigError(f"serve.listen[{index}]: {exc}") from None
    octal = 'an octal string such as "0660"'
    mode_text = section.string("socket_mode", "0666", expected=octal)
    try:
        mode = int(mode_text, 8)
    except ValueError:
        raise section.error("socket_mode", f"expected {octal}") from None
    if not 0 <= mode <= 0o777:
        raise section.error("socket_mode", "expected a permission mode up to 0777")
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
