"""The ``[watch]`` section: which log to follow, how to read it, and what to export.

One log, one parser, a position file and any number of exported maps::

    [watch]
    log = "/var/log/dovecot.log"
    format = "dovecot"            # courier, cyrus, qpopper, uw, or "regex:PATTERN"
    position = "/var/lib/relaypolicy/dovecot.pos"

    [[watch.export]]
    path = "/etc/postfix/pop-before-smtp"
    format = "postfix"            # postfix-cidr, exim, sendmail, plain

Relative paths are relative to the working directory, like ``pop_before_smtp.persist``.
"""

from __future__ import annotations

import logging
import time
import zoneinfo
from collections.abc import Callable

import attrs

from relaypolicy.errors import ConfigError, ExportError
from relaypolicy.settings import Section
from relaypolicy.watch.export import EXPORT_FORMATS, Exporter
from relaypolicy.watch.framing import LineFraming
from relaypolicy.watch.parsers import LineParser, parser_for

__all__ = ["ExportSettings", "WatchSettings", "parse_watch"]

log = logging.getLogger("relaypolicy.watch")

WATCH_KEYS = (
    "log",
    "format",
    "position",
    "start_at_end",
    "timezone",
    "interval",
    "sessions",
    "max_sessions",
    "export",
)
EXPORT_KEYS = ("path", "format", "map_type", "interval", "postmap_config")
MAP_TYPES = ("texthash", "hash", "btree")


@attrs.frozen
class ExportSettings:
    """One ``[[watch.export]]``: a map file kept in step with the table."""

    path: str
    format: str
    map_type: str | None = None
    interval: float = 1.0
    postmap_config: str | None = None

    def exporter(self) -> Exporter:
        return Exporter(
            self.path,
            self.format,
            map_type=self.map_type,
            postmap_config=self.postmap_config,
            interval=self.interval,
        )


@attrs.frozen
class WatchSettings:
    """``[watch]``: which log to follow, how to read it, and what to export."""

    log: str
    format: str
    position: str = ""  # the follower's state file; empty: read the log from its start
    start_at_end: bool = False  # without a position: skip what the log already holds
    timezone: str = ""  # for year-less syslog times; empty: the machine's local time
    interval: float = 0.25  # seconds between two looks at the log
    exports: tuple[ExportSettings, ...] = ()
    sessions: bool = False  # Dovecot: hold an address while it has an open session
    max_sessions: int = 65536

    def parser(self, *, clock: Callable[[], float] = time.time) -> LineParser:
        tz = zoneinfo.ZoneInfo(self.timezone) if self.timezone else None
        return parser_for(
            self.format, framing=LineFraming(clock=clock, tz=tz), on_malformed=_log_malformed
        )


def _log_malformed(line: str, reason: str) -> None:
    # A crafted or damaged line deserves a look; repr() keeps control characters visible.
    log.warning("watch: refused a malformed login line (%s): %.300r", reason, line)


def _parse_export(table: object, where: str) -> ExportSettings:
    section = Section(table, where, EXPORT_KEYS)
    section.required("path")
    section.required("format")
    path = section.string("path", expected="a file path", nonempty=True)
    format = section.string(
        "format", expected=f"one of {', '.join(EXPORT_FORMATS)}", choices=EXPORT_FORMATS
    )
    map_type = None
    if "map_type" in section:
        map_type = section.string(
            "map_type", expected=f"one of {', '.join(MAP_TYPES)}", choices=MAP_TYPES
        )
        if format != "postfix":
            raise section.error("map_type", "only the postfix format has one")
    return ExportSettings(
        path,
        format,
        map_type,
        section.seconds("interval", 1.0, low=0.0, high=3600.0),
        section.string("postmap_config", expected="a directory") or None,
    )


def parse_watch(table: object) -> WatchSettings:
    """Validate a ``[watch]`` table; :class:`ConfigError` names the key."""
    section = Section(table, "watch", WATCH_KEYS)
    for key in ("log", "format"):
        section.required(key, "the log to follow and its format")
    format = section.string("format", expected="a log format")
    exports_table = section.table.get("export", [])
    if isinstance(exports_table, dict):  # [watch.export] written once, not [[...]]
        exports_table = [exports_table]
    if not isinstance(exports_table, list):
        raise section.error("export", "expected [[watch.export]] tables")
    exports = tuple(
        _parse_export(item, f"watch.export[{index}]") for index, item in enumerate(exports_table)
    )
    paths = [export.path for export in exports]
    if len(set(paths)) != len(paths):
        raise section.error("export", "two exports write the same path")
    sessions = section.boolean("sessions", False)
    if sessions and format != "dovecot":
        raise section.error("sessions", "only the dovecot format logs the end of sessions")
    settings = WatchSettings(
        log=section.string("log", expected="a file path", nonempty=True),
        format=format,
        position=section.string("position", expected="a file path"),
        start_at_end=section.boolean("start_at_end", False),
        timezone=section.string("timezone", expected="a zone name"),
        interval=section.seconds("interval", 0.25, low=0.01, high=10.0),
        exports=exports,
        sessions=sessions,
        max_sessions=section.integer(
            "max_sessions", 65536, low=1, high=10_000_000, expected="1 to 10000000"
        ),
    )
    try:
        settings.parser()
    except zoneinfo.ZoneInfoNotFoundError:
        raise section.error("timezone", f"unknown zone {settings.timezone!r}") from None
    except ValueError as exc:
        raise section.error("format", str(exc)) from None
    for index, export in enumerate(exports):
        try:
            export.exporter()  # finds postmap for hash:/btree: now, not at the first write
        except ExportError as exc:
            raise ConfigError(f"watch.export[{index}]: {exc}") from None
    return settings
