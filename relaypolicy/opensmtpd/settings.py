"""The ``[opensmtpd]`` section: the OpenSMTPD filter's options.

``relaypolicy opensmtpd-filter`` reads the whole file (``docs/configuration.md``); this
section holds only what is the filter's own: where its control socket listens and how
many SMTP sessions it follows at once.
"""

from __future__ import annotations

import attrs

from relaypolicy.opensmtpd.codec import MAX_SESSIONS
from relaypolicy.settings import Section

__all__ = ["OPENSMTPD_KEYS", "OpenSmtpdSettings", "parse_opensmtpd"]

OPENSMTPD_KEYS = ("control_socket", "max_sessions")


@attrs.frozen
class OpenSmtpdSettings:
    """``control_socket``: the control socket's path (empty: none), as ``[serve]``'s.
    ``max_sessions``: the sessions followed at once; past it the oldest is forgotten and a
    request in it gets a temporary failure (``smtpd``'s own ``max-sessions`` is lower by
    default, so this bounds memory against a stream that never says ``link-disconnect``)."""

    control_socket: str = ""
    max_sessions: int = MAX_SESSIONS


def parse_opensmtpd(table: object) -> OpenSmtpdSettings:
    """Validate an ``[opensmtpd]`` table (``None``: the defaults); :class:`ConfigError`
    names the key."""
    section = Section(table, "opensmtpd", OPENSMTPD_KEYS)
    return OpenSmtpdSettings(
        control_socket=section.string("control_socket", expected="a socket path", one_line=True),
        max_sessions=section.integer("max_sessions", MAX_SESSIONS, low=1, high=10_000_000),
    )
