"""Dovecot's session ids: the one a login line opens, the one a mail process closes.

For the watcher's ``sessions=`` (:class:`relaypolicy.watch.watcher.Watcher`): a session
that ends ends its allowance. A closing line can only shorten an allowance, never open
one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

from relaypolicy.watch.framing import LineFraming
from relaypolicy.watch.parsers.dovecot import _DOVECOT_SERVICES, DovecotParser

# Dovecot sessions ---------------------------------------------------------------------
# A login line ends with its session id ("..., mpid=7963, session=<XsCR5VlhlbJ/AAAL>"),
# and the mail process that serves the session prefixes its lines with the same id
# (mail_log_prefix, default "%s(%u)<%{pid}><%{session}>: "). Its last line says that
# the session ended, observed from Dovecot 2.3.19.1 here (the log_path file; by syslog
# the same after "dovecot: ", without "Info: "):
#   imap(taro)<7963><XsCR5VlhlbJ/AAAL>: Info: Disconnected: Logged out in=12 out=477 ...
#   imap(taro)<7968><ieuZ5VlhQe5/AAAL>: Info: Disconnected: Connection closed (...) ...
#   pop3(taro)<7966><uriZ5VlhCd1/AAAL>: Info: Disconnected: Logged out top=0/0, ...
# Other ends ("Disconnected for inactivity", "Disconnected: Server shutting down") begin
# with "Disconnected" too; "Logged out ..." alone is accepted for releases that omit it.
# A closing line can only shorten an allowance (it ends a session a login line opened,
# by an id only that line gave), so reading one wrongly can never open the relay.
_MAIL_PREFIX = re.compile(
    r"(imap|pop3|submission)\((.+)\)<(\d+)><([A-Za-z0-9+/=:._-]{1,128})>", re.ASCII
)
_SESSION_ID = re.compile(r"[A-Za-z0-9+/=:._-]{1,128}", re.ASCII)


class SessionEnd(NamedTuple):
    """The end of a session: when (epoch seconds, from the line) and its id."""

    time: float
    session: str


class DovecotSessions:
    """Dovecot's session ids: the one a login line opens, and the one a mail process's
    last line (``Logged out``, ``Disconnected: ...``) closes. For the watcher's
    ``sessions=`` (see :class:`relaypolicy.watch.watcher.Watcher`); ``programs`` and
    ``framing`` as for :class:`DovecotParser` (pass the same framing to share its
    clock and zone).
    """

    __slots__ = ("framing", "programs")

    def __init__(
        self, *, programs: Iterable[str] | None = None, framing: LineFraming | None = None
    ) -> None:
        self.framing = framing if framing is not None else LineFraming()
        self.programs = DovecotParser.default_programs if programs is None else frozenset(programs)

    def _split(self, line: str) -> tuple[float, str, str] | None:
        """``(time, process, message)`` of a Dovecot line in either framing."""
        record = self.framing.split(line)
        if record is None:
            return None
        when, host, program, pid, message = record
        if program in self.programs:
            process, _, message = message.partition(": ")
        elif host is None and pid is None:
            process = program
        else:
            return None
        if message.startswith("Info: "):
            message = message[6:]
        return when, process, message

    def opened(self, line: str) -> str | None:
        """The session id of a login line (one :class:`DovecotParser` reads), else
        ``None``. It is read from the fields after the user name, never from it."""
        split = self._split(line)
        if split is None or split[1] not in _DOVECOT_SERVICES:
            return None
        message = split[2]
        if message.startswith("Login: user=<"):
            start = 13
        elif message.startswith("Logged in: user=<"):
            start = 17
        else:
            return None
        cut = message.rfind(">, method=")
        if cut < start:
            return None
        fields = message[cut + 10 :]
        at = fields.find(", session=<")
        if at < 0 or fields.find(", session=<", at + 11) >= 0:
            return None
        end = fields.find(">", at + 11)
        found = _SESSION_ID.fullmatch(fields, at + 11, end) if end >= 0 else None
        return None if found is None else found[0]

    def closed(self, line: str) -> SessionEnd | None:
        """The end of a session, from its mail process's last line, else ``None``."""
        if "><" not in line:  # the fast path: every mail process line has "<pid><id>"
            return None
        split = self._split(line)
        if split is None:
            return None
        when, process, message = split
        prefix = _MAIL_PREFIX.fullmatch(process)
        if prefix is None or not message.startswith(("Disconnected", "Logged out")):
            return None
        return SessionEnd(when, prefix[4])
