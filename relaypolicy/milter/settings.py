"""The ``[milter]`` section: where ``relaypolicy milter`` listens and its limits.

``listen`` takes the forms of ``[serve] listen`` (``HOST:PORT``, ``inet:[::1]:PORT``,
``unix:/path``; see :func:`relaypolicy.listeners.parse_listener`), ``socket_mode`` and
``control_socket`` mean what they mean there.
"""

from __future__ import annotations

import attrs

from relaypolicy.listeners import listen_settings
from relaypolicy.milter.protocol import MAX_PACKET
from relaypolicy.settings import Section

__all__ = ["MILTER_KEYS", "MilterSettings", "parse_milter"]

MILTER_KEYS = (
    "listen",
    "socket_mode",
    "control_socket",
    "idle_timeout",
    "packet_timeout",
    "max_connections",
    "max_packet",
    "daemon_ports",
    "request_macros",
)


@attrs.frozen
class MilterSettings:
    """The ``[milter]`` section.

    ``idle_timeout``: a connection that sends nothing this long is closed. The MTA keeps
    its milter connection for a whole SMTP session and says nothing while its client is
    silent (Postfix ``smtpd_timeout`` is 300 s, Sendmail's command timeout 1 h), so the
    default is longer than Postfix's. ``packet_timeout``: a packet must be whole this long
    after its first byte (an MTA writes each in one piece). ``max_connections``: at this
    many open connections a new one is closed at once (the MTA applies its default action,
    tempfail, to that session). ``max_packet``: the largest packet accepted, in bytes.
    ``daemon_ports``: ``{daemon_name}`` to port, for an MTA that does not send
    ``{daemon_port}``. ``request_macros``: ask the MTA, when it negotiates, for the macros
    relaypolicy reads (``SMFIF_SETSYMLIST``; they replace the MTA's configured lists for
    this filter). ``log_format`` comes from ``[log]``.
    """

    listen: tuple[str, ...] = ("127.0.0.1:9997",)
    socket_mode: int = 0o666
    control_socket: str = ""
    idle_timeout: float = 330.0
    packet_timeout: float = 10.0
    max_connections: int = 200
    max_packet: int = MAX_PACKET
    daemon_ports: tuple[tuple[str, int], ...] = ()
    request_macros: bool = True
    log_format: str = "text"


def parse_milter(table: object) -> MilterSettings:
    """Validate a ``[milter]`` table; :class:`ConfigError` names the key."""
    section = Section(table, "milter", MILTER_KEYS)
    listen, mode = listen_settings(section, "127.0.0.1:9997")
    daemon_ports: list[tuple[str, int]] = []
    raw = section.table.get("daemon_ports")
    if raw is not None:
        if not isinstance(raw, dict):
            raise section.error("daemon_ports", "expected a table of daemon name = port")
        inner = Section(raw, section.key("daemon_ports"), raw.keys())
        for name in raw:
            daemon_ports.append((name, inner.integer(name, 0, low=1, high=65535)))
    return MilterSettings(
        listen=listen,
        socket_mode=mode,
        control_socket=section.string("control_socket", expected="a socket path"),
        idle_timeout=section.seconds("idle_timeout", 330.0, low=0.001, high=86400.0),
        packet_timeout=section.seconds("packet_timeout", 10.0, low=0.001, high=3600.0),
        max_connections=section.integer("max_connections", 200, low=1, high=1_000_000),
        max_packet=section.integer("max_packet", MAX_PACKET, low=1024, high=16 * 1024 * 1024),
        daemon_ports=tuple(daemon_ports),
        request_macros=section.boolean("request_macros", True),
    )
