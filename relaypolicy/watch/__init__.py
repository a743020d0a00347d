"""The login watcher: POP/IMAP log lines in, successful logins out.

:mod:`relaypolicy.watch.framing` splits a raw line (classic syslog, rsyslog's ISO 8601
form, Dovecot's own ``log_path`` file); :mod:`relaypolicy.watch.parsers` reads the
logins of Dovecot, Courier, Cyrus, qpopper and UW ipop3d/imapd, or a regular expression
of your own. See ``docs/watcher.md``.
"""

from relaypolicy.watch.framing import LineFraming, LogLine
from relaypolicy.watch.parsers import (
    PARSER_FORMATS,
    CourierParser,
    CyrusParser,
    DovecotParser,
    LineParser,
    LoginEvent,
    LoginParser,
    QpopperParser,
    RegexParser,
    UwParser,
    parser_for,
)

__all__ = [
    "PARSER_FORMATS",
    "CourierParser",
    "CyrusParser",
    "DovecotParser",
    "LineFraming",
    "LineParser",
    "LogLine",
    "LoginEvent",
    "LoginParser",
    "QpopperParser",
    "RegexParser",
    "UwParser",
    "parser_for",
]
