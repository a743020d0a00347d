"""Log line framings: classic syslog, rsyslog's ISO 8601 form, Dovecot's own log file."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from relaypolicy.testing import FakeClock
from relaypolicy.watch import LineFraming, LogLine


def epoch(text: str) -> float:
    """``2026-11-28T09:03:28`` (UTC unless the text names a zone) as epoch seconds."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


NOW = epoch("2026-11-28T12:00:00")


def framing(now: float = NOW, tz: str = "UTC") -> LineFraming:
    return LineFraming(clock=FakeClock(now), tz=ZoneInfo(tz))


T = epoch("2026-11-28T09:03:28")

# (line, (time, host, program, pid, message))
FRAMED = [
    # Classic syslog, as syslogd writes RFC 3164 messages to a file.
    (
        "Nov 28 09:03:28 mail dovecot: pop3-login: Login: user=<taro>, method=PLAIN",
        (T, "mail", "dovecot", None, "pop3-login: Login: user=<taro>, method=PLAIN"),
    ),
    (
        "Nov 28 09:03:28 mail dovecot[52217]: imap-login: Logged in: user=<a>",
        (T, "mail", "dovecot", 52217, "imap-login: Logged in: user=<a>"),
    ),
    (
        "Nov 28 09:03:28 mail.example.org cyrus/imap[4101]: login: x",
        (T, "mail.example.org", "cyrus/imap", 4101, "login: x"),
    ),
    (
        "Nov 28 09:03:28 mail in.qpopper[7597]: (v4.0.9) POP login",
        (T, "mail", "in.qpopper", 7597, "(v4.0.9) POP login"),
    ),
    (  # a host logged by address
        "Nov 28 09:03:28 2001:db8::25 postfix/smtpd[1]: connect from x",
        (T, "2001:db8::25", "postfix/smtpd", 1, "connect from x"),
    ),
    (  # a single-digit day is padded with a space
        "Nov  5 09:03:28 mail pop3d: LOGIN, user=a",
        (epoch("2026-11-05T09:03:28"), "mail", "pop3d", None, "LOGIN, user=a"),
    ),
    (  # Solaris syslogd adds a message id
        "Nov 28 09:03:28 mail imapd[99]: [ID 748625 mail.info] Login user=a host=[192.0.2.1]",
        (T, "mail", "imapd", 99, "Login user=a host=[192.0.2.1]"),
    ),
    (  # a trailing newline, as a file iterator gives lines
        "Nov 28 09:03:28 mail dovecot: x\r\n",
        (T, "mail", "dovecot", None, "x"),
    ),
    # rsyslog's RSYSLOG_FileFormat: RFC 3339 with fraction and zone.
    (
        "2026-11-28T09:03:28.232771+00:00 mail dovecot: pop3-login: Login: user=<taro>",
        (T + 0.232771, "mail", "dovecot", None, "pop3-login: Login: user=<taro>"),
    ),
    (
        "2026-11-28T10:03:28+01:00 mail dovecot[7]: x",
        (T, "mail", "dovecot", 7, "x"),
    ),
    (
        "2026-11-28T09:03:28.5Z mail cyrus/pop3[2]: y",
        (T + 0.5, "mail", "cyrus/pop3", 2, "y"),
    ),
    (  # journalctl --output=short-iso
        "2026-11-28T18:03:28+0900 mail imapd[1234]: Login user=a host=[192.0.2.1]",
        (T, "mail", "imapd", 1234, "Login user=a host=[192.0.2.1]"),
    ),
    # Dovecot's own log_path file: log_timestamp "%b %d %H:%M:%S ", then the process.
    (  # a line observed from Dovecot 2.3.19.1
        "Nov 28 13:37:00 pop3-login: Info: Login: user=<taro>, method=PLAIN, "
        "rip=127.0.0.10, lip=127.0.0.1, mpid=6072, session=<PW95RVZh39h/AAAK>",
        (
            epoch("2026-11-28T13:37:00"),
            None,
            "pop3-login",
            None,
            "Info: Login: user=<taro>, method=PLAIN, rip=127.0.0.10, lip=127.0.0.1, "
            "mpid=6072, session=<PW95RVZh39h/AAAK>",
        ),
    ),
    (  # observed too: the mail process names its user, pid and session
        "Nov 28 13:37:00 pop3(taro)<6072><PW95RVZh39h/AAAK>: Info: Disconnected: Logged out",
        (
            epoch("2026-11-28T13:37:00"),
            None,
            "pop3(taro)<6072><PW95RVZh39h/AAAK>",
            None,
            "Info: Disconnected: Logged out",
        ),
    ),
    (  # Dovecot's %d pads the day with a zero
        "Nov 05 09:03:28 imap-login: Info: Login: x",
        (epoch("2026-11-05T09:03:28"), None, "imap-login", None, "Info: Login: x"),
    ),
    (  # log_timestamp = "%Y-%m-%d %H:%M:%S "
        "2026-11-28 09:03:28 imap-login: Info: Login: x",
        (T, None, "imap-login", None, "Info: Login: x"),
    ),
    (  # a syslog template without the host
        "Nov 28 09:03:28 dovecot[12]: imap-login: Login: x",
        (T, None, "dovecot", 12, "imap-login: Login: x"),
    ),
]


@pytest.mark.parametrize(("line", "expected"), FRAMED)
def test_split(line: str, expected: tuple[float, str | None, str, int | None, str]) -> None:
    assert framing().split(line) == LogLine(*expected)


NOT_LINES = [
    "",
    "\n",
    "garbage",
    "Nov 28 09:03:28",  # no program
    "Nov 28 09:03:28 mail",
    "Nov 28 09:03:28 mail dovecot",
    "nov 28 09:03:28 mail dovecot: x",  # months are capitalised
    "Foo 28 09:03:28 mail dovecot: x",
    "Nov 31 09:03:28 mail dovecot: x",  # no such day
    "Nov 28 24:03:28 mail dovecot: x",
    "Nov 28 09:61:28 mail dovecot: x",
    "Nov 28 09:03:61 mail dovecot: x",
    "Nov 28 9:03:28 mail dovecot: x",
    "Nov 28 09:03:28 mail dove cot: x",
    "Nov 28 09:03:28 mail dovecot:x",
    "2026-13-28T09:03:28Z mail dovecot: x",
    "2026-11-28T09:03:28+25:00 mail dovecot: x",
    "２０２６-11-28T09:03:28Z mail dovecot: x",  # full-width digits
    # One line of text is one line: an embedded newline, carriage return or NUL means the
    # text was not cut at line ends, or someone hopes a reader will cut it for them.
    "Nov 28 09:03:28 mail dovecot: a\nNov 28 09:03:28 mail dovecot: b",
    "Nov 28 09:03:28 mail dovecot: a\rb",
    "Nov 28 09:03:28 mail dovecot: a\x00b",
]


@pytest.mark.parametrize("line", NOT_LINES)
def test_not_a_log_line(line: str) -> None:
    assert framing().split(line) is None


def test_classic_syslog_is_read_in_the_given_time_zone() -> None:
    berlin = framing(tz="Europe/Berlin").split("Nov 28 09:03:28 mail dovecot: x")
    tokyo = framing(tz="Asia/Tokyo").split("Nov 28 09:03:28 mail dovecot: x")
    assert berlin is not None and tokyo is not None
    assert berlin.time == epoch("2026-11-28T09:03:28+01:00")
    assert tokyo.time == epoch("2026-11-28T09:03:28+09:00")


def test_iso_lines_carry_their_own_zone() -> None:
    line = "2026-11-28T09:03:28+09:00 mail dovecot: x"
    assert framing(tz="Europe/Berlin").split(line) == framing(tz="UTC").split(line)


def test_dovecot_timestamp_without_zone_is_local_time() -> None:
    found = framing(tz="Europe/Berlin").split("2026-07-01 09:03:28 imap-login: Info: x")
    assert found is not None
    assert found.time == epoch("2026-07-01T09:03:28+02:00")  # summer time


def test_without_tz_the_machine_local_time_is_used() -> None:
    found = LineFraming(clock=FakeClock(NOW)).split("Nov 28 09:03:28 mail dovecot: x")
    assert found is not None
    assert found.time == datetime(2026, 11, 28, 9, 3, 28).timestamp()


# The year of a year-less line: this year's, unless that lies more than a day ahead.
# (now, line time, expected)
YEARS = [
    ("2026-11-28T12:00:00", "Nov 28 09:03:28", "2026-11-28T09:03:28"),
    ("2026-11-28T12:00:00", "Jan  1 00:00:00", "2026-01-01T00:00:00"),
    ("2026-11-28T12:00:00", "Nov 29 11:00:00", "2026-11-29T11:00:00"),  # < a day ahead
    ("2026-11-28T12:00:00", "Nov 29 12:00:01", "2025-11-29T12:00:01"),  # > a day ahead
    ("2026-11-28T12:00:00", "Dec 24 18:00:00", "2025-12-24T18:00:00"),
    # The December -> January turn: a line written just before midnight, read after it.
    ("2027-01-01T00:00:05", "Dec 31 23:59:58", "2026-12-31T23:59:58"),
    ("2027-01-01T00:00:05", "Jan  1 00:00:01", "2027-01-01T00:00:01"),
    ("2027-01-10T08:00:00", "Dec 20 08:00:00", "2026-12-20T08:00:00"),
    # Clock skew the other way: dated eleven months back (old, harmless), never a year ahead.
    ("2026-12-31T23:59:59", "Jan  1 00:00:02", "2026-01-01T00:00:02"),
    # February 29th exists only in leap years.
    ("2028-03-01T00:00:00", "Feb 29 10:00:00", "2028-02-29T10:00:00"),
    ("2029-01-15T00:00:00", "Feb 29 10:00:00", "2028-02-29T10:00:00"),
]


@pytest.mark.parametrize(("now", "stamp", "expected"), YEARS)
def test_year_inference(now: str, stamp: str, expected: str) -> None:
    found = framing(epoch(now)).split(f"{stamp} mail dovecot: x")
    assert found is not None
    assert found.time == epoch(expected)


def test_february_29_that_fits_no_year_is_not_a_line() -> None:
    assert framing(epoch("2027-03-01T00:00:00")).split("Feb 29 10:00:00 mail d: x") is None


def test_the_year_follows_the_clock_across_new_year() -> None:
    clock = FakeClock(epoch("2026-12-31T23:59:50"))
    lines = LineFraming(clock=clock, tz=ZoneInfo("UTC"))
    before = lines.split("Jan  1 00:00:01 mail dovecot: x")
    assert before is not None and before.time == epoch("2026-01-01T00:00:01")
    clock.set(epoch("2027-01-01T00:00:02"))
    after = lines.split("Jan  1 00:00:01 mail dovecot: x")
    assert after is not None and after.time == epoch("2027-01-01T00:00:01")
    late = lines.split("Dec 31 23:59:59 mail dovecot: x")
    assert late is not None and late.time == epoch("2026-12-31T23:59:59")


def test_a_line_from_ahead_of_the_clock_is_not_cached_as_this_year() -> None:
    clock = FakeClock(epoch("2026-11-28T12:00:00"))
    lines = LineFraming(clock=clock, tz=ZoneInfo("UTC"))
    ahead = lines.split("Nov 30 12:00:00 mail dovecot: x")
    assert ahead is not None and ahead.time == epoch("2025-11-30T12:00:00")
    clock.set(epoch("2026-11-30T12:00:05"))
    now = lines.split("Nov 30 12:00:00 mail dovecot: x")
    assert now is not None and now.time == epoch("2026-11-30T12:00:00")


def test_future_tolerance_is_configurable() -> None:
    lines = LineFraming(clock=FakeClock(NOW), tz=ZoneInfo("UTC"), future_tolerance=0.0)
    found = lines.split("Nov 28 12:00:01 mail dovecot: x")
    assert found is not None and found.time == epoch("2025-11-28T12:00:01")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Nov 28 09:03:28", T),
        ("Nov  5 09:03:28", epoch("2026-11-05T09:03:28")),
        ("2026-11-28T09:03:28.25Z", T + 0.25),
        ("2026-11-28T10:03:28+01:00", T),
        ("2026-11-28 09:03:28", T),
        (" Nov 28 09:03:28 ", T),
    ],
)
def test_parse_timestamp(text: str, expected: float) -> None:
    assert framing().parse_timestamp(text) == expected


@pytest.mark.parametrize("text", ["", "Nov 28", "Nov 28 09:03:28 mail", "yesterday", "Nov 31 0"])
def test_parse_timestamp_refuses_what_is_not_a_timestamp(text: str) -> None:
    assert framing().parse_timestamp(text) is None


def test_minute_cache_holds_the_minutes_split_has_read() -> None:
    frames = framing()
    minutes, since, until = frames.minute_cache()
    assert minutes == {} and not since <= NOW < until  # nothing read yet: ask split()
    line = "Nov 28 09:03:28 mail dovecot: imap-login: Login: user=<a>"
    record = frames.split(line)
    assert record is not None
    minutes, since, until = frames.minute_cache()
    assert (since, until) == (epoch("2026-01-01T00:00:00"), epoch("2027-01-01T00:00:00"))
    assert minutes == {"Nov 28 09:03": epoch("2026-11-28T09:03:00")}
    assert minutes["Nov 28 09:03"] + 28 == record.time
    # Another year empties it, in place.
    clock = FakeClock(epoch("2027-01-01T00:00:01"))
    frames.clock = clock
    assert frames.split(line) is not None
    assert frames.minute_cache()[0] is minutes
    assert frames.minute_cache()[1] == epoch("2027-01-01T00:00:00")
