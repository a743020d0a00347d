"""Sessions for connection-caching clients: Dovecot's session ids in login and logout
lines (:class:`DovecotSessions`), and the watcher holding an address while it has an open
session (``Watcher(..., sessions=...)``).

The log lines are Dovecot 2.3.19.1's own, from its ``log_path`` file here (logins and
logouts by poplib/imaplib from 127.0.0.11, a wrong password from 127.0.0.12); only the
times are moved. Clocks are fake; nothing sleeps. The end-to-end test with the real
Dovecot is in ``test_watch_dovecot.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from relaypolicy.iptable.memory import ExpiringIpTable
from relaypolicy.testing import FakeClock
from relaypolicy.watch.framing import LineFraming
from relaypolicy.watch.parsers import DovecotParser, DovecotSessions, SessionEnd
from relaypolicy.watch.watcher import Watcher

WALL = datetime(2026, 11, 28, 17, 56, 31, tzinfo=UTC).timestamp()
TTL = 600.0

# Observed: Dovecot 2.3.19.1, log_path file (log_timestamp "%b %d %H:%M:%S ").
IMAP_LOGIN = (
    "Nov 28 17:56:31 imap-login: Info: Login: user=<taro>, method=PLAIN, rip=127.0.0.11, "
    "lip=127.0.0.1, mpid=7963, session=<XsCR5VlhlbJ/AAAL>"
)
IMAP_LOGOUT = (
    "Nov 28 17:56:31 imap(taro)<7963><XsCR5VlhlbJ/AAAL>: Info: Disconnected: Logged out "
    "in=12 out=477 deleted=0 expunged=0 trashed=0 hdr_count=0 hdr_bytes=0 body_count=0 "
    "body_bytes=0"
)
IMAP_LOGIN_2 = (
    "Nov 28 17:56:32 imap-login: Info: Login: user=<taro>, method=PLAIN, rip=127.0.0.11, "
    "lip=127.0.0.1, mpid=7968, session=<ieuZ5VlhQe5/AAAL>"
)
IMAP_CLOSED_2 = (  # the client closed the connection without LOGOUT
    "Nov 28 17:56:32 imap(taro)<7968><ieuZ5VlhQe5/AAAL>: Info: Disconnected: Connection "
    "closed (SELECT finished 0.001 secs ago) in=20 out=712 deleted=0 expunged=0 trashed=0 "
    "hdr_count=0 hdr_bytes=0 body_count=0 body_bytes=0"
)
POP3_LOGIN = (
    "Nov 28 17:56:32 pop3-login: Info: Login: user=<taro>, method=PLAIN, rip=127.0.0.11, "
    "lip=127.0.0.1, mpid=7966, session=<uriZ5VlhCd1/AAAL>"
)
POP3_LOGOUT = (
    "Nov 28 17:56:32 pop3(taro)<7966><uriZ5VlhCd1/AAAL>: Info: Disconnected: Logged out "
    "top=0/0, retr=0/0, del=0/0, size=0"
)
AUTH_FAILED = (
    "Nov 28 17:56:31 auth: Info: passwd-file(taro,127.0.0.12,<+u+R5Vlho4p/AAAM>): Password mismatch"
)
LOGIN_FAILED = (
    "Nov 28 17:56:32 imap-login: Info: Disconnected: Aborted login by logging out (auth "
    "failed, 1 attempts in 1 secs): user=<taro>, method=PLAIN, rip=127.0.0.12, "
    "lip=127.0.0.1, session=<+u+R5Vlho4p/AAAM>"
)
STARTUP = (
    "Nov 28 17:56:31 master: Info: Dovecot v2.3.19.1 (9b53102964) starting up for pop3, "
    "imap (core dumps disabled)"
)


def stamped(line: str, when: float) -> str:
    """``line`` with its log_path time replaced by ``when`` (UTC)."""
    return datetime.fromtimestamp(when, UTC).strftime("%b %d %H:%M:%S") + line[15:]


def syslog(line: str, tag: str = "dovecot") -> str:
    """The same message as a syslog daemon writes it (``host tag: ``, no ``Info: ``)."""
    return f"{line[:15]} mail {tag}: {line[16:].replace(': Info: ', ': ', 1)}"


def iso(line: str) -> str:
    return "2026-11-28T17:56:31.232771+00:00" + syslog(line)[15:]


@pytest.fixture
def wall() -> FakeClock:
    return FakeClock(WALL)


@pytest.fixture
def sessions(wall: FakeClock) -> DovecotSessions:
    return DovecotSessions(framing=LineFraming(clock=wall, tz=UTC))


# --- DovecotSessions: the ids of logins and the ends of sessions ---------------------


@pytest.mark.parametrize(
    ("line", "session"),
    [
        (IMAP_LOGIN, "XsCR5VlhlbJ/AAAL"),
        (POP3_LOGIN, "uriZ5VlhCd1/AAAL"),
        (syslog(IMAP_LOGIN), "XsCR5VlhlbJ/AAAL"),
        (syslog(IMAP_LOGIN).replace("dovecot:", "dovecot[812]:"), "XsCR5VlhlbJ/AAAL"),
        (iso(POP3_LOGIN), "uriZ5VlhCd1/AAAL"),
        (IMAP_LOGIN.replace("Login: ", "Logged in: "), "XsCR5VlhlbJ/AAAL"),  # 2.4
        # A TLS login has "TLS" between mpid and session (the %c element).
        (IMAP_LOGIN.replace("mpid=7963, ", "mpid=7963, TLS, "), "XsCR5VlhlbJ/AAAL"),
    ],
)
def test_a_login_line_opens_its_session(sessions: DovecotSessions, line: str, session: str) -> None:
    assert sessions.opened(line) == session
    assert sessions.closed(line) is None


@pytest.mark.parametrize(
    "line",
    [
        LOGIN_FAILED,  # a failed login has a session id too: it opens nothing
        AUTH_FAILED,
        STARTUP,
        IMAP_LOGOUT,
        IMAP_LOGIN.replace(", session=<XsCR5VlhlbJ/AAAL>", ""),  # no session element
        IMAP_LOGIN + ", session=<second>",  # two: not Dovecot's structure
        IMAP_LOGIN.replace("XsCR5VlhlbJ/AAAL", "bad id"),
        IMAP_LOGIN.replace("XsCR5VlhlbJ/AAAL>", "XsCR5VlhlbJ/AAAL"),  # unterminated
        syslog(IMAP_LOGIN, tag="postfix/smtpd"),
        syslog(IMAP_LOGIN).replace("dovecot: imap-login", "dovecot: lmtp"),
    ],
)
def test_other_lines_open_no_session(sessions: DovecotSessions, line: str) -> None:
    assert sessions.opened(line) is None


def test_the_session_id_comes_from_the_servers_fields_not_the_user_name(
    sessions: DovecotSessions,
) -> None:
    # With auth_username_chars emptied, a user name can hold any text: it can only ever
    # come before the real fields.
    crafted = IMAP_LOGIN.replace(
        "user=<taro>", "user=<x>, method=PLAIN, rip=6.6.6.6, session=<EVIL>, y>"
    )
    assert sessions.opened(crafted) == "XsCR5VlhlbJ/AAAL"
    assert DovecotParser(framing=sessions.framing).parse(crafted) is not None


@pytest.mark.parametrize(
    ("line", "session"),
    [
        (IMAP_LOGOUT, "XsCR5VlhlbJ/AAAL"),
        (IMAP_CLOSED_2, "ieuZ5VlhQe5/AAAL"),
        (POP3_LOGOUT, "uriZ5VlhCd1/AAAL"),
        (syslog(IMAP_LOGOUT), "XsCR5VlhlbJ/AAAL"),
        (iso(POP3_LOGOUT), "uriZ5VlhCd1/AAAL"),
        (
            IMAP_LOGOUT.replace("Disconnected: Logged out", "Disconnected for inactivity"),
            "XsCR5VlhlbJ/AAAL",
        ),
        (
            IMAP_LOGOUT.replace("Disconnected: Logged out", "Disconnected: Server shutting down"),
            "XsCR5VlhlbJ/AAAL",
        ),
        (IMAP_LOGOUT.replace("Disconnected: Logged out", "Logged out"), "XsCR5VlhlbJ/AAAL"),
        (
            POP3_LOGOUT.replace("pop3(taro)<7966>", "submission(taro)<7966>"),
            "uriZ5VlhCd1/AAAL",
        ),
    ],
)
def test_a_mail_process_end_closes_its_session(
    sessions: DovecotSessions, line: str, session: str
) -> None:
    end = sessions.closed(line)
    assert isinstance(end, SessionEnd)
    assert end.session == session
    assert end.time == pytest.approx(WALL, abs=1.5)  # the line's own time
    assert sessions.opened(line) is None
    assert DovecotParser(framing=sessions.framing).parse(line) is None


@pytest.mark.parametrize(
    "line",
    [
        IMAP_LOGIN,
        LOGIN_FAILED,  # a login process's "Disconnected" ends no mail session
        AUTH_FAILED,
        STARTUP,
        # A mail process line that is no end.
        IMAP_LOGOUT.replace("Disconnected: Logged out", "Mailbox INBOX: Opened"),
        IMAP_LOGOUT.replace("imap(taro)<7963>", "lmtp(taro)<7963>"),
        IMAP_LOGOUT.replace("<7963>", "<pid>"),
        IMAP_LOGOUT.replace("<XsCR5VlhlbJ/AAAL>", "<>"),
        syslog(IMAP_LOGOUT, tag="postfix/smtpd"),
        syslog(IMAP_LOGOUT, tag="logger"),
        # A Postfix line carrying a logout sentence in the envelope.
        "Nov 28 17:56:31 mail postfix/smtpd[1]: NOQUEUE: reject: RCPT from x[192.0.2.1]: "
        "554 5.7.1 <a@b>: Relay access denied; from=<imap(taro)<1><XsCR5VlhlbJ/AAAL>: "
        "Info: Disconnected: Logged out> to=<a@b> proto=ESMTP helo=<x>",
    ],
)
def test_other_lines_close_no_session(sessions: DovecotSessions, line: str) -> None:
    assert sessions.closed(line) is None


# --- the watcher holding addresses ----------------------------------------------------


class Clocks:
    """The table's monotonic clock and the watcher's wall clock, moved together."""

    def __init__(self, wall: FakeClock) -> None:
        self.mono = FakeClock()
        self.wall = wall

    def advance(self, seconds: float) -> None:
        self.mono.advance(seconds)
        self.wall.advance(seconds)


@pytest.fixture
def clocks(wall: FakeClock) -> Clocks:
    return Clocks(wall)


def make_watcher(
    clocks: Clocks,
    sessions: DovecotSessions | None,
    *,
    max_sessions: int = 65536,
    max_session_age: float = 86400.0,
) -> tuple[Watcher, ExpiringIpTable]:
    table = ExpiringIpTable(TTL, clock=clocks.mono)
    parser = DovecotParser(framing=LineFraming(clock=clocks.wall, tz=UTC))
    watcher = Watcher(
        table,
        parser,
        wall_clock=clocks.wall,
        sessions=sessions,
        max_sessions=max_sessions,
        max_session_age=max_session_age,
    )
    return watcher, table


def run_for(watcher: Watcher, clocks: Clocks, seconds: float, step: float = 1.0) -> None:
    """Let ``seconds`` pass with a sweep every ``step``, as :meth:`Watcher.run` does."""
    for _ in range(round(seconds / step)):
        clocks.advance(step)
        watcher.sweep()


def test_an_open_session_keeps_its_address_past_the_ttl(
    clocks: Clocks, sessions: DovecotSessions
) -> None:
    watcher, table = make_watcher(clocks, sessions)
    assert watcher.feed([IMAP_LOGIN]) == 1
    assert watcher.held() == {"127.0.0.11": 1}
    for _ in range(6):  # an hour, ten times the ttl
        run_for(watcher, clocks, TTL, step=10)
        assert "127.0.0.11" in table
    # Its end is logged: the ttl starts there.
    watcher.feed([stamped(IMAP_LOGOUT, clocks.wall())])
    assert watcher.held() == {}
    run_for(watcher, clocks, TTL - 1)
    assert "127.0.0.11" in table
    run_for(watcher, clocks, 2)
    assert "127.0.0.11" not in table
    assert watcher.counters["sessions"] == 0


def test_the_ttl_starts_when_the_last_session_closes(
    clocks: Clocks, sessions: DovecotSessions
) -> None:
    watcher, table = make_watcher(clocks, sessions)
    watcher.feed([IMAP_LOGIN, stamped(IMAP_LOGIN_2, WALL)])
    assert watcher.held() == {"127.0.0.11": 2}
    run_for(watcher, clocks, 2 * TTL, step=10)
    watcher.feed([stamped(IMAP_CLOSED_2, clocks.wall())])  # one of two: still held
    assert watcher.held() == {"127.0.0.11": 1}
    run_for(watcher, clocks, 2 * TTL, step=10)
    assert "127.0.0.11" in table
    closed_at = clocks.wall()
    watcher.feed([stamped(IMAP_LOGOUT, closed_at)])
    run_for(watcher, clocks, TTL - 1)
    entry = table.lookup("127.0.0.11")
    assert entry is not None and entry.user == "taro"
    run_for(watcher, clocks, 2)
    assert table.lookup("127.0.0.11") is None


def test_a_pop3_session_ends_at_once_and_leaves_the_usual_ttl(
    clocks: Clocks, sessions: DovecotSessions
) -> None:
    watcher, table = make_watcher(clocks, sessions)
    watcher.feed([stamped(POP3_LOGIN, WALL), stamped(POP3_LOGOUT, WALL)])
    assert watcher.held() == {}
    run_for(watcher, clocks, TTL - 1)
    assert "127.0.0.11" in table
    run_for(watcher, clocks, 2)
    assert "127.0.0.11" not in table


def test_without_sessions_a_login_lasts_the_ttl_whatever_the_session_does(
    clocks: Clocks,
) -> None:
    watcher, table = make_watcher(clocks, None)
    watcher.feed([IMAP_LOGIN])
    run_for(watcher, clocks, TTL - 1)
    assert "127.0.0.11" in table
    run_for(watcher, clocks, 2)
    assert "127.0.0.11" not in table
    assert "sessions" not in watcher.counters


def test_a_failed_login_and_an_unknown_session_end_change_nothing(
    clocks: Clocks, sessions: DovecotSessions
) -> None:
    watcher, table = make_watcher(clocks, sessions)
    # The end of a session opened before the watcher started, and a failed login.
    assert watcher.feed([AUTH_FAILED, LOGIN_FAILED, IMAP_LOGOUT, STARTUP]) == 0
    assert len(table) == 0
    assert watcher.held() == {}


def test_catching_up_an_old_session_that_ended_gives_only_what_remains(
    clocks: Clocks, sessions: DovecotSessions
) -> None:
    watcher, table = make_watcher(clocks, sessions)
    now = clocks.wall()
    # Logged in two hours ago; one session ended 50 minutes ago (past the ttl), the
    # other 5 minutes ago: read after a restart, in one batch.
    watcher.feed(
        [
            stamped(IMAP_LOGIN, now - 7200),
            stamped(IMAP_LOGIN_2.replace("127.0.0.11", "127.0.0.13"), now - 7200),
            stamped(IMAP_LOGOUT, now - 3000),
            stamped(IMAP_CLOSED_2, now - 300),
        ]
    )
    watcher.sweep()
    assert watcher.held() == {}
    assert table.lookup("127.0.0.11") is None  # no full ttl for a session long over
    entry = table.lookup("127.0.0.13")
    assert entry is not None and entry.expires_at == pytest.approx(TTL - 300)


def test_catching_up_a_session_still_open_holds_it(
    clocks: Clocks, sessions: DovecotSessions
) -> None:
    watcher, table = make_watcher(clocks, sessions)
    assert watcher.feed([stamped(IMAP_LOGIN, clocks.wall() - 7200)]) == 1
    assert "127.0.0.11" not in table  # two hours old: nothing from the line itself ...
    watcher.sweep()
    assert "127.0.0.11" in table  # ... but its session is open as far as the log says


def test_open_sessions_are_bounded_in_number(clocks: Clocks, sessions: DovecotSessions) -> None:
    watcher, table = make_watcher(clocks, sessions, max_sessions=3)
    logins = [
        IMAP_LOGIN.replace("127.0.0.11", f"127.0.0.{20 + n}").replace("AAAL", f"AA{n:02}")
        for n in range(5)
    ]
    assert watcher.feed(logins) == 5
    assert watcher.held() == {"127.0.0.22": 1, "127.0.0.23": 1, "127.0.0.24": 1}
    assert watcher.counters["sessions"] == 3
    assert watcher.counters["sessions_dropped"] == 2
    run_for(watcher, clocks, 2 * TTL, step=10)
    assert [entry.address for entry in table.entries()] == [
        "127.0.0.22",
        "127.0.0.23",
        "127.0.0.24",
    ]  # the two oldest, no longer held, ran out


def test_open_sessions_are_bounded_in_age(clocks: Clocks, sessions: DovecotSessions) -> None:
    watcher, table = make_watcher(clocks, sessions, max_session_age=3600)
    watcher.feed([IMAP_LOGIN])
    run_for(watcher, clocks, 3600, step=10)
    assert watcher.held() == {"127.0.0.11": 1}
    run_for(watcher, clocks, 10, step=10)
    assert watcher.held() == {}
    assert watcher.sessions_dropped == 1
    run_for(watcher, clocks, TTL, step=10)
    assert "127.0.0.11" not in table
    # A login older than max_session_age opens no session.
    watcher.feed([stamped(IMAP_LOGIN, clocks.wall() - 3601)])
    assert watcher.held() == {}


def test_a_flood_of_logins_without_logouts_stays_bounded(
    clocks: Clocks, sessions: DovecotSessions
) -> None:
    watcher, _ = make_watcher(clocks, sessions, max_sessions=100)
    watcher.feed(IMAP_LOGIN.replace("XsCR5VlhlbJ/AAAL", f"S{n:015}") for n in range(10_000))
    assert watcher.counters["sessions"] == 100
    assert watcher.held() == {"127.0.0.11": 100}


def test_bad_bounds_are_refused(clocks: Clocks) -> None:
    with pytest.raises(ValueError, match="max_sessions"):
        make_watcher(clocks, None, max_sessions=0)
    for age in (0.0, float("inf")):
        with pytest.raises(ValueError, match="max_session_age"):
            make_watcher(clocks, None, max_session_age=age)
