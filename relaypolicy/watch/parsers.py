"""Successful POP3/IMAP logins, read from the log lines of the servers people run.

Theory of operation
-------------------
Each parser turns one log line into a :class:`LoginEvent` ``(time, address, user,
server)`` or ``None``. Failed logins, logouts, and every other line give ``None``.

User names, SMTP envelope addresses and HELO names are chosen by strangers and end up
in the same mail log. CVE-2001-1075 (poprelayd) matched a POP login anywhere in a line,
so a ``MAIL FROM:`` shaped like one, logged by the MTA, opened the relay. So, for every
server:

1. *Fast path.* A line without the server's success phrase (``n: user=<`` for Dovecot,
   whose ``Login: user=<`` and ``Logged in: user=<`` both end so) is dropped with one
   substring test, before any regular expression runs.
2. *Frame.* :class:`~relaypolicy.watch.framing.LineFraming` splits the line into time,
   host, program tag and message. The tag must be the server's own (``dovecot``,
   ``cyrus/imap``, ...; configurable with ``programs=``); a Postfix line whose
   ``from=<...>`` holds a perfect Dovecot sentence has the tag ``postfix/smtpd``.
3. *Structure.* The message must *begin* with the server's success sentence, and the
   address is read from the server's own field, located by the fixed structure of the
   sentence, never by searching for ``rip=`` or ``[`` wherever it appears. Where the
   user name (free text, not escaped by any of these servers) comes before the
   server's fields, it ends at the *last* separator before them (Dovecot's
   ``>, method=``, Courier's ``, ip=[``, UW's `` host=`` with the ``[ip]`` that ends
   the line, qpopper's ``" at (``), and the fields after it must have the server's
   structure. Text in a user name can only ever precede the real fields: it can
   neither move nor replace them.

A line from the right program that begins like a success but fails the structure is
*malformed*: the parser counts it in ``malformed`` and passes ``(line, reason)`` to
``on_malformed`` if one was given (to log it: a crafted or damaged line deserves a
look), and returns ``None``. Lines that are simply not logins are not counted.

Blocks. ``parse_block(text)`` reads a whole read of the log at once (the follower reads
64 KiB at a time) and gives exactly what ``parse_lines(text.split("\n"))`` gives. It
skips the lines without the server's phrase with one search over the block, in C,
instead of one test per line. For Dovecot that search is a regular expression that also
matches the fields after the user name in their usual order, and a line so matched is
read on the spot when its head (time, host, tag, service) is one already seen; the
checks are the same rules as above, spelled so that any line they do not settle (another
framing, a field order Dovecot does not use, anything malformed) goes to the per-line
path, which stays the reference (see ``_DOVECOT_SENTENCE``).

Addresses come out canonical (:func:`relaypolicy.networks.normalize_ip`): IPv4-mapped
IPv6 folded to IPv4, IPv6 compressed. Times are epoch seconds (see the framing for
year-less syslog times).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple, Protocol

from relaypolicy.networks import normalize_ip, parse_ip
from relaypolicy.watch.framing import HOST_PATTERN, TAG_PATTERN, LineFraming, LogLine

__all__ = [
    "PARSER_FORMATS",
    "CourierParser",
    "CyrusParser",
    "DovecotParser",
    "DovecotSessions",
    "LineParser",
    "LoginEvent",
    "LoginParser",
    "QpopperParser",
    "RegexParser",
    "SessionEnd",
    "UwParser",
    "parser_for",
]

MalformedHook = Callable[[str, str], None]

_IP_CHARACTERS = "0123456789abcdefABCDEF:."


class LoginEvent(NamedTuple):
    """A successful login: when, from which (canonical) address, who, which server."""

    time: float
    address: str
    user: str
    server: str


_new_event = tuple.__new__


class LoginParser(Protocol):
    """What the watcher needs from a parser: a login event for a login line, ``None`` for
    any other line. Implement it without inheriting anything; a ``malformed`` count and a
    ``parse_block(text)`` method are optional (see :class:`LineParser`)."""

    def parse(self, line: str) -> LoginEvent | None: ...


class _Malformed(Exception):
    """The line came from the server and began like a login, but is not one."""


class LineParser:
    """The base of the built-in parsers (yours need not inherit it: see
    :class:`LoginParser`). ``malformed`` counts the lines refused as malformed, and
    ``on_malformed(line, reason)``, if given, hears of each."""

    __slots__ = ("framing", "malformed", "on_malformed")

    name: str

    def __init__(self, framing: LineFraming | None, on_malformed: MalformedHook | None) -> None:
        self.framing = framing if framing is not None else LineFraming()
        self.malformed = 0
        self.on_malformed = on_malformed

    def parse(self, line: str) -> LoginEvent | None:
        """The login ``line`` records, or ``None``."""
        raise NotImplementedError

    def parse_lines(self, lines: Iterable[str]) -> Iterator[LoginEvent]:
        """The logins among ``lines`` (e.g. an open file), in order."""
        parse = self.parse
        for line in lines:
            event = parse(line)
            if event is not None:
                yield event

    def parse_block(self, text: str) -> Iterator[LoginEvent]:
        """The logins in ``text``, which is taken to be whole lines separated by
        ``"\n"``: e.g. a read of a log file cut after its last newline (cutting is the
        caller's job; text after the last newline is read as one more whole line).
        The same events as ``parse_lines(text.split("\n"))``, in order, and the same
        lines counted as malformed; only ``"\n"`` ends a line, as in the follower (a
        ``"\r"`` before it is dropped, as :meth:`parse` drops it)."""
        return self.parse_lines(text.split("\n"))

    def _refuse(self, line: str, reason: str) -> None:
        self.malformed += 1
        if self.on_malformed is not None:
            self.on_malformed(line, reason)

    def _event(self, line: str, when: float, address: str, user: str) -> LoginEvent | None:
        # Only what servers print: no brackets, "IPv6:" tags or spaces, which parse_ip
        # would accept.
        if not address or address.strip(_IP_CHARACTERS):
            self._refuse(line, f"not an IP address: {address!r}")
            return None
        try:
            canonical = normalize_ip(address)
        except ValueError:
            self._refuse(line, f"not an IP address: {address!r}")
            return None
        if not user:
            self._refuse(line, "empty user name")
            return None
        return _new_event(LoginEvent, (when, canonical, user, self.name))


class _ServerParser(LineParser):
    """A parser for one server: fast-path marker, program tags, message structure."""

    __slots__ = ("programs",)

    default_programs: frozenset[str] = frozenset()
    marker = ""

    def __init__(
        self,
        *,
        programs: Iterable[str] | None = None,
        framing: LineFraming | None = None,
        on_malformed: MalformedHook | None = None,
    ) -> None:
        super().__init__(framing, on_malformed)
        self.programs = self.default_programs if programs is None else frozenset(programs)

    def parse(self, line: str) -> LoginEvent | None:
        if self.marker not in line:
            return None
        return self._parse_framed(line)

    def parse_lines(self, lines: Iterable[str]) -> Iterator[LoginEvent]:
        marker, parse_framed = self.marker, self._parse_framed
        for line in lines:
            if marker in line:
                event = parse_framed(line)
                if event is not None:
                    yield event

    def parse_block(self, text: str) -> Iterator[LoginEvent]:
        # Lines without the server's phrase are skipped by a substring search over the
        # whole block, not one by one.
        marker, parse_framed, find, rfind = self.marker, self._parse_framed, text.find, text.rfind
        at = find(marker)
        while at >= 0:
            end = find("\n", at)
            if end < 0:
                end = len(text)
            event = parse_framed(text[rfind("\n", 0, at) + 1 : end])
            if event is not None:
                yield event
            at = find(marker, end)

    def _parse_framed(self, line: str) -> LoginEvent | None:
        record = self.framing.split(line)
        if record is None:
            return None
        try:
            found = self._fields(record)
        except _Malformed as exc:
            self._refuse(line, str(exc))
            return None
        if found is None:
            return None
        return self._event(line, record.time, found[0], found[1])

    def _fields(self, record: LogLine) -> tuple[str, str] | None:
        """``(address text, user)`` from a framed line, ``None`` if it is no login."""
        raise NotImplementedError


# Dovecot ------------------------------------------------------------------------------
# 2.3: "pop3-login: Login: user=<taro>, method=PLAIN, rip=127.0.0.10, lip=127.0.0.1,
#       mpid=6072, session=<PW95RVZh39h/AAAK>" (observed from Dovecot 2.3.19.1 here);
#       the elements are login_log_format_elements, default
#       "user=<%u> method=%m rip=%r lip=%l mpid=%e %c session=<%{session}>",
#       joined with ", " (doveconf -d; dovecot/documentation settings/core.rst).
# 2.4: the same elements after "Logged in: "; failures say "Login aborted: ..."
#       (Dovecot 2.4.1 logs as quoted in downstream parsers' tests, e.g. pidginhost/csm).
# %u is not escaped: Dovecot writes the user name as is, control characters as "?",
# cut to 80 characters with "..." (str_sanitize in src/login-common/client-common.c).
# Its default auth_username_chars refuses "<", ">", "," and space, so only a server
# with that check switched off can log "user=<x>, method=plain, rip=6.6.6.6, ...>".
_DOVECOT_SERVICES = frozenset({"pop3-login", "imap-login", "submission-login"})
_MECHANISM_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


class DovecotParser(_ServerParser):
    """Dovecot 2.3 ``Login:`` and 2.4 ``Logged in:`` lines, by syslog or ``log_path``.

    ``programs`` are the syslog tags (Dovecot's ``instance_name``, default
    ``dovecot``). Lines of Dovecot's own ``log_path`` file are recognised by the
    login process name, ``pop3-login``, ``imap-login`` or ``submission-login``, with
    no host.
    """

    __slots__ = ("_head", "_head_programs", "_heads")

    name = "dovecot"
    default_programs = frozenset({"dovecot"})
    marker = "n: user=<"

    def __init__(
        self,
        *,
        programs: Iterable[str] | None = None,
        framing: LineFraming | None = None,
        on_malformed: MalformedHook | None = None,
    ) -> None:
        super().__init__(programs=programs, framing=framing, on_malformed=on_malformed)
        self._head_programs = self.programs
        self._head = _dovecot_head(self.programs)
        self._heads: dict[str, int] = {}

    def parse_block(self, text: str) -> Iterator[LoginEvent]:
        # The block path: see the comment above _DOVECOT_SENTENCE.
        if self._head_programs is not self.programs:
            self._head_programs, self._head = self.programs, _dovecot_head(self.programs)
            self._heads = {}
        head_match, heads = self._head.fullmatch, self._heads
        parse_framed, name, find, rfind = self._parse_framed, self.name, text.find, text.rfind
        framing = self.framing
        # One reading of the clock for the block: every line in it was written before
        # the block was read (the per-line path reads it for each line).
        now, tolerance = framing.clock(), framing.future_tolerance
        minutes, since, until = framing.minute_cache()
        latest = now + tolerance if since <= now < until else -math.inf
        stop = 0
        for found in _DOVECOT_SENTENCE.finditer(text):
            at = found.start()
            if at < stop:
                continue  # another sentence in a line already read
            start = rfind("\n", 0, at) + 1
            user, address, tail = found.groups()
            if (
                address is not None
                and ", rip=" not in tail
                and ">, method=" not in tail
                and "\r" not in tail
                and "\x00" not in tail
            ):
                # The head after its minute: ":28 mail dovecot: imap-login: " -> 28.
                after = text[start + 12 : at]
                second = heads.get(after)
                if second is None:
                    second = _second_of_head(after, head_match)
                    if len(heads) >= 4096:
                        heads.clear()
                    heads[after] = second
                if (
                    second >= 0
                    and (minute := minutes.get(text[start : start + 12])) is not None
                    and (when := minute + second) <= latest
                ):
                    try:
                        canonical = parse_ip(address).text
                    except ValueError:
                        pass
                    else:
                        yield _new_event(LoginEvent, (when, canonical, user, name))
                        continue
            stop = find("\n", at)
            if stop < 0:
                stop = len(text)
            event = parse_framed(text[start:stop])
            minutes, since, until = framing.minute_cache()  # split() may start a year
            latest = now + tolerance if since <= now < until else -math.inf
            if event is not None:
                yield event

    def _fields(self, record: LogLine) -> tuple[str, str] | None:
        _, host, program, pid, rest = record
        if program in self.programs:
            service, _, rest = rest.partition(": ")
            if service not in _DOVECOT_SERVICES:
                return None
        elif host is not None or pid is not None or program not in _DOVECOT_SERVICES:
            return None
        if rest.startswith("Info: "):
            rest = rest[6:]
        if rest.startswith("Login: user=<"):
            start = 13
        elif rest.startswith("Logged in: user=<"):
            start = 17
        else:
            return None
        # The user name is free text; the server's own fields follow the *last*
        # ">, method=", so nothing in a user name can stand in for them.
        cut = rest.rfind(">, method=")
        if cut < start:
            raise _Malformed("no '>, method=' after the user name")
        fields = rest[cut + 10 :]
        mechanism, comma, fields = fields.partition(", ")
        if not mechanism or mechanism.strip(_MECHANISM_CHARACTERS):
            raise _Malformed(f"bad method {mechanism!r}")
        fields = comma + fields
        at = fields.find(", rip=")
        if at < 0 or fields.find(", rip=", at + 6) >= 0:
            raise _Malformed("not exactly one rip= field after the user name")
        end = fields.find(", ", at + 6)
        return fields[at + 6 : end if end >= 0 else len(fields)], rest[start:cut]


# The block path (DovecotParser.parse_block). One regular-expression search over the
# whole block (a read of the log) finds each login sentence and, in the same match, the
# fields after the user name in Dovecot's own order: "user=<u>, method=M, rip=A", then
# ", ..." or nothing up to the end of the line. Only those lines cost any Python. A line
# is read on the spot only when it has exactly the structure _fields accepts, so that
# the event is the one parse() gives: a user name without ">" (the ">, method=" after it
# is then the last one in the line), method and address in their character sets, no
# second ", rip=" nor ">, method=" after the address, no CR or NUL, and a head (the text
# before the sentence) that is a classic syslog time "Mmm dd hh:mm:ss " whose minute the
# framing has already read (LineFraming.minute_cache), then a host, a tag of
# ``programs`` and a login service, or a bare login service (the log_path file), matched
# by the framing's own host and tag patterns. Each token of a head ends at a character
# it cannot contain, so such a head splits exactly as LineFraming.split splits it. Every
# other line with a sentence (ISO 8601 time, the first line of a minute, fields in
# another order, anything malformed, ...) goes to the per-line path, which stays the
# reference and counts malformed lines. A line without a sentence is no login on either
# path: parse() returns None for it and counts nothing. The address is still only ever
# the rip= field that follows the last ">, method=" of a line with Dovecot's own tag.
_DOVECOT_SENTENCE = re.compile(
    r"Log(?:in|ged in): user=<(?:([^>\n\r\x00]+)>, method=[A-Za-z0-9_-]+, rip=([0-9A-Fa-f:.]+)"
    r"((?:, .*)?)(?![^\n]))?",
    re.ASCII,
)
_SECONDS = {f"{second:02d}": second for second in range(61)}
_TAG = re.compile(TAG_PATTERN, re.ASCII)


def _dovecot_head(programs: frozenset[str]) -> re.Pattern[str]:
    """What may follow the time in a login line's head (``_LINE``'s own host, tag and
    process patterns): ``host TAG[pid]: SERVICE: `` or ``SERVICE: ``, then ``Info: ``."""
    services = "|".join(sorted(_DOVECOT_SERVICES))
    tags = "|".join(re.escape(tag) for tag in sorted(programs) if _TAG.fullmatch(tag))
    bare = "|".join(sorted(_DOVECOT_SERVICES - programs))
    heads = [f"{HOST_PATTERN} (?:{tags})(?:\\[\\d+\\])?: (?:{services})"] if tags else []
    heads += [f"(?:{bare})"] if bare else []
    return re.compile(f"(?:{'|'.join(heads) or '(?!)'}): (?:Info: )?", re.ASCII)


def _second_of_head(after: str, head_match: Callable[[str, int], object]) -> int:
    """The second of a head's ``":SS host tag: service: "`` (after its minute), or -1
    when it is not that, read by the framing's patterns (``head_match``)."""
    second = _SECONDS.get(after[1:3], -1)
    if after[:1] != ":" or after[3:4] != " " or "\x00" in after:
        return -1
    return second if head_match(after, 4) is not None else -1


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


# A user's regular expression ----------------------------------------------------------


class RegexParser(LineParser):
    """Logins matched by a regular expression with named groups.

    ``address`` and ``user`` are required, ``time`` is optional (any timestamp form
    the framing reads; without it the line's framing gives the time, and failing that
    the framing's clock). The pattern must match from the start of the line
    (:meth:`re.Pattern.match`): anchor it on the line's own program tag, and take the
    address from a field the server writes, never from a group that could match text a
    stranger chose. A bad pattern raises :class:`ValueError` naming the problem.
    """

    __slots__ = ("name", "pattern")

    def __init__(
        self,
        pattern: str | re.Pattern[str],
        *,
        name: str = "regex",
        framing: LineFraming | None = None,
        on_malformed: MalformedHook | None = None,
    ) -> None:
        super().__init__(framing, on_malformed)
        try:
            compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
        except re.error as exc:
            raise ValueError(f"bad login regex {pattern!r}: {exc}") from None
        missing = [group for group in ("address", "user") if group not in compiled.groupindex]
        if missing:
            wanted = ", ".join(f"(?P<{group}>...)" for group in missing)
            raise ValueError(f"login regex {compiled.pattern!r} needs the named group(s) {wanted}")
        self.pattern = compiled
        self.name = name

    def parse(self, line: str) -> LoginEvent | None:
        line = line.rstrip("\r\n")
        if "\n" in line or "\r" in line or "\x00" in line:
            return None
        found = self.pattern.match(line)
        if found is None:
            return None
        address, user = found["address"], found["user"]
        if address is None or user is None:
            self._refuse(line, "the address or user group did not take part in the match")
            return None
        stamp = found["time"] if "time" in self.pattern.groupindex else None
        when: float | None
        if stamp is not None:
            when = self.framing.parse_timestamp(stamp)
            if when is None:
                self._refuse(line, f"unreadable time {stamp!r}")
                return None
        else:
            record = self.framing.split(line)
            when = record.time if record is not None else self.framing.clock()
        return self._event(line, when, address, user)


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


# Choosing a parser by name ------------------------------------------------------------

_PARSERS: dict[str, type[_ServerParser]] = {
    "dovecot": DovecotParser,
    "courier": CourierParser,
    "cyrus": CyrusParser,
    "qpopper": QpopperParser,
    "uw": UwParser,
}
PARSER_FORMATS = (*_PARSERS, "regex:PATTERN")


def parser_for(
    format: str,
    *,
    framing: LineFraming | None = None,
    on_malformed: MalformedHook | None = None,
) -> LineParser:
    """The parser a configuration names: ``dovecot``, ``courier``, ``cyrus``,
    ``qpopper``, ``uw`` or ``regex:PATTERN``."""
    if format.startswith("regex:"):
        return RegexParser(format[6:], framing=framing, on_malformed=on_malformed)
    parser = _PARSERS.get(format.strip().lower())
    if parser is None:
        raise ValueError(
            f"unknown login log format {format!r}: expected one of {', '.join(PARSER_FORMATS)}"
        )
    return parser(framing=framing, on_malformed=on_malformed)
