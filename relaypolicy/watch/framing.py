"""Split a mail-log line into its frame: time, host, program tag, pid, and message.

Theory of operation
-------------------
POP/IMAP servers reach a log file in three framings, and :meth:`LineFraming.split`
recognises each from the line itself:

=================  ================================================================
classic syslog     ``Nov 28 09:03:28 mail dovecot: pop3-login: Login: ...``
                   (RFC 3164 as syslogd writes it to a file; also ``dovecot[1234]:``)
ISO 8601 syslog    ``2026-11-28T09:03:28.232771+00:00 mail dovecot: ...``
                   (rsyslog's ``RSYSLOG_FileFormat``, ``journalctl -o short-iso``;
                   a ``Z``, ``±hh:mm`` or ``±hhmm`` zone)
Dovecot log_path   ``Nov 28 09:03:28 pop3-login: Info: Login: ...``
                   (Dovecot's own file: ``log_timestamp`` then the process name, no
                   host; ``%Y-%m-%d %H:%M:%S`` timestamps are read too)
=================  ================================================================

A syslog line has a host and then a tag; a Dovecot file line has no host, and its first
word after the time ends with a colon (a host name never does), so the two never
overlap. The tag is split from a trailing ``[pid]``. Solaris's ``[ID 123456 mail.info]``
message prefix is dropped. Anything else, including a line with an embedded newline,
carriage return or NUL, is not a log line: :meth:`~LineFraming.split` returns ``None``.

Time. ISO 8601 lines carry their zone. Classic syslog and Dovecot's default timestamp
carry neither year nor zone: they are read in the framing's ``tz`` (default: the
machine's local time) and the year is the current one by the framing's ``clock``,
unless that would put the line more than ``future_tolerance`` seconds (default one day)
in the future, in which case it belongs to the year before: a ``Dec 31 23:59:58`` line
read at 00:00:05 on 1 January is last year's. The rule errs towards the past on purpose:
a line wrongly dated a year back is merely old, but a line wrongly dated a year ahead
would look fresh for a year. (A ``Jan 1`` line read on 31 December because of clock
skew between hosts is therefore dated eleven months back, and ignored as old.) A
``Feb 29`` that fits no year so chosen is not a log line.

Only login lines reach the framing on the hot path (the parsers test for their phrase
first), but those come by the thousand: the start of each year-less minute is computed
once and kept (``_minutes``, emptied when the clock enters another year), so a line
costs one regular-expression match, a dictionary lookup and an addition. A parser that
reads a whole block may use that cache directly (:meth:`LineFraming.minute_cache`)
for lines whose minute :meth:`~LineFraming.split` has already read.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime, tzinfo
from typing import NamedTuple

__all__ = ["LineFraming", "LogLine"]

_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
        start=1,
    )
}

# The time: "Nov 28 09:03:28" (syslog pads the day with a space, Dovecot's %d with a
# zero), "2026-11-28T09:03:28.232771+00:00" (rsyslog) or "2026-11-28 09:03:28" (Dovecot).
_TIME = (
    r"(?:([A-Z][a-z]{2} {1,2}\d{1,2} \d\d:\d\d):(\d\d)(\.\d{1,9})?"
    r"|(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d)(\.\d{1,9})?(Z|[+-]\d\d:?\d\d)?)"
)
# Then "host tag[pid]: ": the host may be an IPv6 address but never ends with a colon;
# the tag is what openlog(3) was given (cyrus/imap, postfix/smtpd, ...). Or, with no
# host, Dovecot's process name ("pop3-login: ", "pop3(taro)<6072><PW95RVZh39h/AAAK>: ").
# The host and tag patterns are shared with parsers that check a line's head in one
# piece (DovecotParser.parse_block): each token is delimited by a character it cannot
# contain, so a line has at most one split into time, host and tag.
HOST_PATTERN = r"[^\s\[\]]*[^\s:\[\]]"
TAG_PATTERN = r"[A-Za-z0-9_./-]+"
_LINE = re.compile(
    _TIME + rf" (?:({HOST_PATTERN}) ({TAG_PATTERN})(?:\[(\d+)\])?"
    r"|([^\s:\[]+?)(?:\[(\d+)\])?): ",
    re.ASCII,
)
_TIMESTAMP = re.compile(_TIME, re.ASCII)
_SOLARIS_ID = re.compile(r"\[ID \d+ [A-Za-z0-9]+\.[A-Za-z]+\] ", re.ASCII)
_CACHE_LIMIT = 65536


class LogLine(NamedTuple):
    """One framed log line; ``host`` and ``pid`` are ``None`` when the framing has none."""

    time: float
    host: str | None
    program: str
    pid: int | None
    message: str


_new_line = tuple.__new__


class LineFraming:
    """Splits log lines in any of the three framings; holds the clock and zone.

    ``clock`` (default :func:`time.time`) and ``tz`` (default ``None``: local time) are
    injectable so that tests are deterministic. ``future_tolerance`` is how far ahead
    of the clock a year-less line may be before it is taken for last year's.
    """

    __slots__ = (
        "_minutes",
        "_numeric",
        "_year",
        "_year_from",
        "_year_until",
        "clock",
        "future_tolerance",
        "tz",
    )

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        tz: tzinfo | None = None,
        future_tolerance: float = 86400.0,
    ) -> None:
        self.clock = clock
        self.tz = tz
        self.future_tolerance = future_tolerance
        # "Nov 28 09:03" -> epoch of that minute in the clock's current year (in ``tz``);
        # valid while the clock stays in [_year_from, _year_until).
        self._minutes: dict[str, float] = {}
        self._year = 0
        self._year_from = self._year_until = 0.0
        # ("2026-11-28T09:03:28", "+00:00") -> epoch.
        self._numeric: dict[tuple[str, str | None], float] = {}

    def split(self, line: str) -> LogLine | None:
        """The frame of ``line`` (a trailing newline is ignored), or ``None``."""
        line = line.rstrip("\r\n")
        if "\n" in line or "\r" in line or "\x00" in line:
            return None
        framed = _LINE.match(line)
        if framed is None:
            return None
        minute, second, fraction, base, base_fraction, zone, host, program, pid, bare, bare_pid = (
            framed.groups()
        )
        if minute is not None:
            when = self._yearless(minute, int(second))
        else:
            when = self._numeric_time(base, zone)
            fraction = base_fraction
        if when is None:
            return None
        if fraction is not None:
            when += float(fraction)
        if program is None:
            host, program, pid = None, bare, bare_pid
        message = line[framed.end() :]
        if message.startswith("[ID "):
            solaris = _SOLARIS_ID.match(message)
            if solaris is not None:
                message = message[solaris.end() :]
        return _new_line(LogLine, (when, host, program, None if pid is None else int(pid), message))

    def parse_timestamp(self, text: str) -> float | None:
        """Epoch seconds for a timestamp in any of the framings' forms, or ``None``."""
        found = _TIMESTAMP.fullmatch(text.strip())
        if found is None:
            return None
        minute, second, fraction, base, base_fraction, zone = found.groups()
        if minute is not None:
            when = self._yearless(minute, int(second))
        else:
            when, fraction = self._numeric_time(base, zone), base_fraction
        if when is not None and fraction is not None:
            when += float(fraction)
        return when

    def minute_cache(self) -> tuple[dict[str, float], float, float]:
        """``(minutes, since, until)``, for parsers that read many lines at once.

        ``minutes`` maps a year-less minute that :meth:`split` has read (``"Nov 28
        09:03"``, always a string the time pattern matched) to its start in the year
        the clock is in. While ``since <= clock() < until``, the time :meth:`split`
        gives a line of that minute and second ``s`` (0 to 60, no fraction) is
        ``minutes[minute] + s`` if that is at most ``clock() + future_tolerance``. In
        every other case, or for a minute not in ``minutes``, call :meth:`split`; it
        may move the framing to another year, so ask again afterwards.
        """
        return self._minutes, self._year_from, self._year_until

    def _numeric_time(self, base: str, zone: str | None) -> float | None:
        key = (base, zone)
        when = self._numeric.get(key)
        if when is not None:
            return when
        try:
            moment = datetime.fromisoformat(base.replace(" ", "T") + (zone or ""))
        except ValueError:
            return None
        if moment.tzinfo is None and self.tz is not None:
            moment = moment.replace(tzinfo=self.tz)
        when = moment.timestamp()
        if len(self._numeric) >= _CACHE_LIMIT:
            self._numeric.clear()
        self._numeric[key] = when
        return when

    def _yearless(self, minute: str, second: int) -> float | None:
        """Epoch of ``minute`` ("Nov 28 09:03") plus ``second``, the year inferred."""
        if second > 60:
            return None
        now = self.clock()
        if not self._year_from <= now < self._year_until:
            self._start_year(now)
        start = self._minutes.get(minute)
        if start is None:
            start = self._minute_start(minute, self._year)
            if start is not None:
                if len(self._minutes) >= _CACHE_LIMIT:
                    self._minutes.clear()
                self._minutes[minute] = start
        if start is not None and start + second <= now + self.future_tolerance:
            return start + second
        # Later than the clock allows, or no such day this year (February 29th): last
        # year's line (never cached, and rare).
        start = self._minute_start(minute, self._year - 1)
        return None if start is None else start + second

    def _start_year(self, now: float) -> None:
        year = (
            time.localtime(now).tm_year
            if self.tz is None
            else datetime.fromtimestamp(now, self.tz).year
        )
        self._year = year
        self._year_from = datetime(year, 1, 1, tzinfo=self.tz).timestamp()
        self._year_until = datetime(year + 1, 1, 1, tzinfo=self.tz).timestamp()
        self._minutes.clear()

    def _minute_start(self, minute: str, year: int) -> float | None:
        month_name, day, clock_time = minute.split()
        hour, _, minutes = clock_time.partition(":")
        try:
            return datetime(
                year, _MONTHS[month_name], int(day), int(hour), int(minutes), tzinfo=self.tz
            ).timestamp()
        except (KeyError, ValueError):  # "Foo", Feb 29 of a common year, Nov 31, 24:00
            return None
