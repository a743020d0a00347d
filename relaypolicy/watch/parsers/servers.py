"""The parsers of the other servers: Courier, Cyrus, qpopper and UW ``ipop3d``/``imapd``.

Each is a ``_ServerParser`` with its marker, its default program tags and a ``_fields``
that reads the server's own success sentence; the comment above each cites the source
or the published log its format comes from.
"""

from __future__ import annotations

import re

from relaypolicy.watch.framing import LogLine
from relaypolicy.watch.parsers.base import _Malformed, _ServerParser

# Courier ------------------------------------------------------------------------------
# "LOGIN, user=%s, ip=[%s], port=[%s]" (pop3d), "..., protocol=%s" (imapd, and pop3d
# since 2018), ", stls=1" after a POP3 STLS; the user is not escaped; failures are
# "LOGIN FAILED, ...", logouts "LOGOUT, ..." (svarshavchik/courier-libs imap/pop3dserver.c,
# imap/imapd.c, imap/pop3login.c). courierlogger logs it under the daemon's name.
_COURIER_TAIL = re.compile(
    r", ip=\[([0-9A-Fa-f:.]+)\](?:, port=\[\d+\])?(?:, protocol=[A-Za-z0-9]+)?(?:, stls=1)?",
    re.ASCII,
)


class CourierParser(_ServerParser):
    """Courier-IMAP ``pop3d``/``imapd`` ``LOGIN, user=..., ip=[...]`` lines."""

    __slots__ = ()

    name = "courier"
    default_programs = frozenset(
        {
            "pop3d",
            "pop3d-ssl",
            "imapd",
            "imapd-ssl",
            "pop3login",
            "imaplogin",
            "courierpop3d",
            "courierpop3login",
            "courierimapd",
            "courierimaplogin",
        }
    )
    marker = "LOGIN, user="

    def _fields(self, record: LogLine) -> tuple[str, str] | None:
        if record.program not in self.programs:
            return None
        message = record.message
        if message.startswith("INFO: "):
            message = message[6:]
        if not message.startswith("LOGIN, user="):
            return None
        body = message[12:]
        cut = body.rfind(", ip=[")
        tail = _COURIER_TAIL.fullmatch(body, cut) if cut >= 0 else None
        if tail is None:
            raise _Malformed("no ', ip=[...]' fields after the user name")
        return tail[1], body[:cut]


# Cyrus --------------------------------------------------------------------------------
# syslog(LOG_NOTICE, "login: %s %s%s %s%s %s", clienthost, userid, magicplus, mech,
# "+TLS", "User logged in SESSIONID=<...>") in imapd.c and pop3d.c; clienthost is
# "name [ip]" (or "[ip]"). Failures are "badlogin: ...". The key=value "login.good"
# format of the newest releases (imap/loginlog.c) is not read here.
_CYRUS = re.compile(
    r"login: (?:[^\s\[\]]+ )?\[([0-9A-Fa-f:.]+)\] (\S+) ([A-Za-z0-9_+-]+)"
    r" User logged in(?: SESSIONID=<[^<>\s]*>)?",
    re.ASCII,
)


class CyrusParser(_ServerParser):
    """Cyrus IMAP/POP3 ``login: host [ip] user mech User logged in`` lines."""

    __slots__ = ()

    name = "cyrus"
    default_programs = frozenset(
        {
            f"{prefix}{service}"
            for prefix in ("", "cyrus/")
            for service in ("imap", "imaps", "pop3", "pop3s", "imapd", "pop3d")
        }
    )
    marker = "User logged in"

    def _fields(self, record: LogLine) -> tuple[str, str] | None:
        if record.program not in self.programs or not record.message.startswith("login: "):
            return None
        found = _CYRUS.fullmatch(record.message)
        if found is None:
            raise _Malformed("not 'login: [host] [ip] user mech User logged in'")
        return found[1], found[2]


# qpopper ------------------------------------------------------------------------------
# pLog_login = "(v%0) POP login by user \"%1\" at (%2) %3" (qpopper 4 pop_init.c), e.g.
# 'in.qpopper[7597]: (v4.0.9) POP login by user "nick" at (yw-out-2526.google.com)
# 74.125.46.35 [pop_log.c:244]' (a user's log, 2009). The user is quoted, not escaped.
_QPOPPER = re.compile(
    r'\(v[^()\s]*\) POP login by user (?:"(.*)"|(\S+)) at \(([^()\s]*)\) ([0-9A-Fa-f:.]+)'
    r"(?: \[[\w.]+:\d+\])?",
    re.ASCII,
)


class QpopperParser(_ServerParser):
    """Qpopper ``POP login by user "..." at (host) ip`` lines."""

    __slots__ = ()

    name = "qpopper"
    default_programs = frozenset({"qpopper", "in.qpopper", "popper", "in.popper"})
    marker = "POP login by user"

    def _fields(self, record: LogLine) -> tuple[str, str] | None:
        if record.program not in self.programs or "POP login by user" not in record.message:
            return None
        found = _QPOPPER.fullmatch(record.message)
        if found is None:
            raise _Malformed("not '(vX) POP login by user \"...\" at (host) ip'")
        return found[4], found[1] if found[1] is not None else found[2]


# UW ipop3d / imapd --------------------------------------------------------------------
# syslog(LOG_INFO, "Login user=%.80s host=%.80s", user, tcp_clienthost()) in imapd.c,
# "Authenticated user=%.80s host=%.80s mech=%.80s"; ipop3d.c adds " nmsgs=%lu/%lu" or
# " no mailbox" and also says "Auth" and "APOP"; tcp_clienthost() is "name [ip]" or
# "[ip]" (c-client tcp_unix.c). Failures are "Login failure user=...", "AUTHENTICATE %s
# failure host=...". The user is free text: only a host=[ip] at the very end counts.
_UW = re.compile(
    r"(?:Login|Authenticated|Preauthenticated|Auth|APOP) user=(.*) host=(?:[^\s\[\]]+ )?"
    r"\[([0-9A-Fa-f:.]+)\](?: nmsgs=\d+/\d+| no mailbox| mech=[A-Za-z0-9_-]+)?",
    re.ASCII,
)
_UW_VERBS = ("Login user=", "Authenticated user=", "Preauthenticated user=")
_UW_POP_VERBS = ("Auth user=", "APOP user=")


class UwParser(_ServerParser):
    """UW ``ipop3d``/``imapd`` ``Login user=... host=name [ip]`` lines."""

    __slots__ = ()

    name = "uw"
    default_programs = frozenset({"ipop3d", "ipop3sd", "imapd", "imapsd"})
    marker = " host="

    def _fields(self, record: LogLine) -> tuple[str, str] | None:
        message = record.message
        if record.program not in self.programs or not message.startswith(_UW_VERBS + _UW_POP_VERBS):
            return None
        found = _UW.fullmatch(message)
        if found is None:
            raise _Malformed("not 'Login user=... host=[name ][ip]'")
        return found[2], found[1]
