"""The login watcher: POP/IMAP log lines in, successful logins out.

:mod:`relaypolicy.watch.framing` splits a raw line (classic syslog, rsyslog's ISO 8601
form, Dovecot's own ``log_path`` file); :mod:`relaypolicy.watch.parsers` reads the
logins of Dovecot, Courier, Cyrus, qpopper and UW ipop3d/imapd, or a regular expression
of your own; :mod:`relaypolicy.watch.follow` follows a log through rotation and restarts
and records the logins in a table; :mod:`relaypolicy.watch.export` writes the live table
as an MTA's map; :mod:`relaypolicy.watch.settings` reads the ``[watch]`` section and
:mod:`relaypolicy.watch.runner` builds all of it from there (the daemon runs it: see
:mod:`relaypolicy.daemon.watch`). See ``docs/watcher.md``.
"""

from relaypolicy.watch.export import EXPORT_FORMATS, Exporter, ExportError, render
from relaypolicy.watch.follow import MAX_LINE, FilePosition, LogFollower, follow
from relaypolicy.watch.framing import LineFraming, LogLine
from relaypolicy.watch.parsers import (
    PARSER_FORMATS,
    CourierParser,
    CyrusParser,
    DovecotParser,
    DovecotSessions,
    LineParser,
    LoginEvent,
    LoginParser,
    QpopperParser,
    RegexParser,
    SessionEnd,
    UwParser,
    parser_for,
)
from relaypolicy.watch.watcher import Watcher

__all__ = [
    "EXPORT_FORMATS",
    "MAX_LINE",
    "PARSER_FORMATS",
    "CourierParser",
    "CyrusParser",
    "DovecotParser",
    "DovecotSessions",
    "ExportError",
    "Exporter",
    "FilePosition",
    "LineFraming",
    "LineParser",
    "LogFollower",
    "LogLine",
    "LoginEvent",
    "LoginParser",
    "QpopperParser",
    "RegexParser",
    "SessionEnd",
    "UwParser",
    "Watcher",
    "follow",
    "parser_for",
    "render",
]
