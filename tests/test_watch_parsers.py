"""Login-line parsers: every server in every framing, failures ignored, injection refused.

The success and failure messages are real: observed from the Dovecot 2.3.19.1 installed
here (log_path and syslog, marked "observed"), or quoted from the servers' sources and
from logs their users published (cited in ``relaypolicy/watch/parsers/``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from relaypolicy.testing import FakeClock
from relaypolicy.watch import (
    PARSER_FORMATS,
    CourierParser,
    CyrusParser,
    DovecotParser,
    LineFraming,
    LineParser,
    LoginEvent,
    LoginParser,
    QpopperParser,
    RegexParser,
    UwParser,
    parser_for,
)

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC).timestamp()
T = datetime(2026, 11, 28, 9, 3, 28, tzinfo=UTC).timestamp()
EVIL = "6.6.6.6"


def framing() -> LineFraming:
    return LineFraming(clock=FakeClock(NOW), tz=ZoneInfo("UTC"))


PARSERS: dict[str, Callable[[], LineParser]] = {
    "dovecot": lambda: DovecotParser(framing=framing()),
    "courier": lambda: CourierParser(framing=framing()),
    "cyrus": lambda: CyrusParser(framing=framing()),
    "qpopper": lambda: QpopperParser(framing=framing()),
    "uw": lambda: UwParser(framing=framing()),
}


def syslog(tag: str, message: str) -> str:
    """Classic syslog, as syslogd writes it to /var/log/mail.log."""
    return f"Nov 28 09:03:28 mail {tag}: {message}\n"


def rsyslog(tag: str, message: str) -> str:
    """rsyslog's RSYSLOG_FileFormat (RFC 3339 time)."""
    return f"2026-11-28T09:03:28.000000+00:00 mail {tag}: {message}\n"


def with_pid(tag: str, message: str) -> str:
    """Classic syslog from a daemon that logs its pid (or through journald)."""
    return f"Nov 28 09:03:28 mail {tag}[4242]: {message}\n"


def dovecot_file(service: str, message: str) -> str:
    """Dovecot's own log_path file: log_timestamp, the login process, "Info: "."""
    return f"Nov 28 09:03:28 {service}: Info: {message}\n"


FRAMINGS = [syslog, rsyslog, with_pid]

# (server, program tag, message, address, user)
LOGINS = [
    # Dovecot 2.3. Observed here (log_path and syslog; the syslog tag is instance_name).
    (
        "dovecot",
        "dovecot",
        "pop3-login: Login: user=<taro>, method=PLAIN, rip=127.0.0.10, lip=127.0.0.1, "
        "mpid=12638, session=<vVMBVFZhvcl/AAAK>",
        "127.0.0.10",
        "taro",
    ),
    (
        "dovecot",
        "dovecot",
        "pop3-login: Login: user=<taro>, method=PLAIN, rip=::1, lip=::1, mpid=6074, secured, "
        "session=<lRZ6RVZhPc8AAAAAAAAAAAAAAAAAAAAB>",
        "::1",
        "taro",
    ),
    (  # Dovecot 2.3 behind TLS, from a user's published log
        "dovecot",
        "dovecot",
        "imap-login: Login: user=<postmaster>, method=PLAIN, rip=80.241.60.193, "
        "lip=172.31.1.100, mpid=23349, TLS, session=<sF+SszFtrD5Q8TzB>",
        "80.241.60.193",
        "postmaster",
    ),
    (  # Dovecot 2.2 (no session), and 2.0 (no mpid)
        "dovecot",
        "dovecot",
        "imap-login: Login: user=<user@domain.com>, method=PLAIN, rip=127.0.0.1, "
        "lip=127.0.0.1, mpid=16983, TLS",
        "127.0.0.1",
        "user@domain.com",
    ),
    (
        "dovecot",
        "dovecot",
        "imap-login: Login: user=<customerservice@mydomain.com>, method=PLAIN, "
        "rip=127.0.0.1, lip=127.0.0.1, secured",
        "127.0.0.1",
        "customerservice@mydomain.com",
    ),
    (  # a dual-stack listener logs IPv4 clients IPv4-mapped
        "dovecot",
        "dovecot",
        "pop3-login: Login: user=<bob>, method=PLAIN, rip=::ffff:192.0.2.7, "
        "lip=::ffff:192.0.2.1, TLS",
        "192.0.2.7",
        "bob",
    ),
    (
        "dovecot",
        "dovecot",
        "submission-login: Login: user=<alice>, method=SCRAM-SHA-256, rip=2001:DB8:0::5, "
        "lip=2001:db8::1, mpid=3, TLS, session=<AbC+/123>",
        "2001:db8::5",
        "alice",
    ),
    (  # login_log_format_elements with the ports
        "dovecot",
        "dovecot",
        "imap-login: Login: user=<a>, method=PLAIN, rip=192.0.2.9, rport=51234, "
        "lip=192.0.2.1, lport=993, mpid=77, TLS",
        "192.0.2.9",
        "a",
    ),
    # Dovecot 2.4 says "Logged in".
    (
        "dovecot",
        "dovecot",
        "imap-login: Logged in: user=<office@example.ro>, method=PLAIN, rip=198.51.100.7, "
        "lip=203.0.113.1, mpid=1, TLS",
        "198.51.100.7",
        "office@example.ro",
    ),
    (
        "dovecot",
        "dovecot",
        "imap-login: Logged in: user=<ceo@example.com>, method=PLAIN, rip=198.51.100.7, "
        "lip=10.0.0.1, mpid=88721, secured, session=<x>",
        "198.51.100.7",
        "ceo@example.com",
    ),
    # Courier (pop3dserver.c, imapd.c).
    (
        "courier",
        "pop3d",
        "LOGIN, user=alice, ip=[::ffff:192.0.2.10], port=[51234]",
        "192.0.2.10",
        "alice",
    ),
    (
        "courier",
        "imapd",
        "LOGIN, user=alice@example.org, ip=[::ffff:192.0.2.11], port=[40112], protocol=IMAP",
        "192.0.2.11",
        "alice@example.org",
    ),
    (
        "courier",
        "imapd-ssl",
        "LOGIN, user=bob, ip=[2001:db8::7], port=[993], protocol=IMAP",
        "2001:db8::7",
        "bob",
    ),
    (
        "courier",
        "pop3d-ssl",
        "LOGIN, user=bob, ip=[::ffff:192.0.2.12], port=[50000], protocol=POP3, stls=1",
        "192.0.2.12",
        "bob",
    ),
    (  # older courier-imap, before the port was logged
        "courier",
        "courierpop3login",
        "LOGIN, user=carol, ip=[::ffff:192.0.2.13]",
        "192.0.2.13",
        "carol",
    ),
    # Cyrus (imapd.c, pop3d.c).
    (
        "cyrus",
        "cyrus/imap",
        "login: frontend1.nyi.internal [10.202.2.160] robntest plaintext User logged in "
        "SESSIONID=<sloti30t15-4101108-1450760746-1-6931901653674999381>",
        "10.202.2.160",
        "robntest",
    ),
    (
        "cyrus",
        "cyrus/pop3",
        "login: client.example.com [192.0.2.20] alice plaintext+TLS User logged in "
        "SESSIONID=<mail-2345-1700000000-1>",
        "192.0.2.20",
        "alice",
    ),
    (
        "cyrus",
        "imap",
        "login: [2001:db8::20] bob PLAIN+TLS User logged in",
        "2001:db8::20",
        "bob",
    ),
    (
        "cyrus",
        "cyrus/imaps",
        "login: localhost [::ffff:127.0.0.1] carol nopassword User logged in",
        "127.0.0.1",
        "carol",
    ),
    # qpopper (pop_init.c pLog_login).
    (
        "qpopper",
        "in.qpopper",
        '(v4.0.9) POP login by user "nick" at (yw-out-2526.google.com) 74.125.46.35 '
        "[pop_log.c:244]",
        "74.125.46.35",
        "nick",
    ),
    (
        "qpopper",
        "qpopper",
        '(v4.1.0) POP login by user "alice" at (client.example.com) 192.0.2.30',
        "192.0.2.30",
        "alice",
    ),
    (
        "qpopper",
        "popper",
        '(v4.0.5) POP login by user "bob" at (2001:db8::30) 2001:db8::30',
        "2001:db8::30",
        "bob",
    ),
    # UW ipop3d / imapd (imapd.c, ipop3d.c, tcp_unix.c).
    (
        "uw",
        "imapd",
        "Login user=alice host=client.example.com [192.0.2.40]",
        "192.0.2.40",
        "alice",
    ),
    ("uw", "ipop3d", "Login user=bob host=[192.0.2.41] nmsgs=3/3", "192.0.2.41", "bob"),
    (
        "uw",
        "ipop3d",
        "Auth user=carol host=client.example.com [2001:db8::41] nmsgs=0/0",
        "2001:db8::41",
        "carol",
    ),
    ("uw", "ipop3d", "APOP user=dave host=[192.0.2.42] nmsgs=1/1", "192.0.2.42", "dave"),
    (
        "uw",
        "imapd",
        "Authenticated user=erin host=client.example.com [192.0.2.43] mech=PLAIN",
        "192.0.2.43",
        "erin",
    ),
    ("uw", "imapsd", "Authenticated user=frank host=[192.0.2.44]", "192.0.2.44", "frank"),
    ("uw", "ipop3d", "Login user=gina host=[192.0.2.45] no mailbox", "192.0.2.45", "gina"),
]


def _login_cases() -> Iterator[object]:
    for server, tag, message, address, user in LOGINS:
        for frame in FRAMINGS:
            yield pytest.param(
                server,
                frame(tag, message),
                LoginEvent(T, address, user, server),
                id=f"{server}-{frame.__name__}-{tag}-{user}",
            )
        if server == "dovecot":  # Dovecot's own log file: the login process, no host
            service, _, rest = message.partition(": ")
            yield pytest.param(
                server,
                dovecot_file(service, rest),
                LoginEvent(T, address, user, server),
                id=f"dovecot-log_path-{service}-{user}",
            )


@pytest.mark.parametrize(("server", "line", "expected"), list(_login_cases()))
def test_successful_login(server: str, line: str, expected: LoginEvent) -> None:
    parser = PARSERS[server]()
    assert parser.parse(line) == expected
    assert parser.malformed == 0


@pytest.mark.parametrize(("server", "line", "expected"), list(_login_cases()))
def test_only_the_own_server_reads_a_login(server: str, line: str, expected: LoginEvent) -> None:
    for other, make in PARSERS.items():
        if other != server:
            assert make().parse(line) is None, other


def test_observed_dovecot_log_path_lines() -> None:
    """The log file of the throwaway Dovecot 2.3.19.1 instance: two logins (IPv4 and IPv6
    clients), then a failed login, an unknown user and a connection without a login."""
    log = """\
Nov 28 13:36:53 master: Info: Dovecot v2.3.19.1 (9b53102964) starting up for pop3 (core dumps disabled)
Nov 28 13:37:00 pop3-login: Info: Login: user=<taro>, method=PLAIN, rip=127.0.0.10, lip=127.0.0.1, mpid=6072, session=<PW95RVZh39h/AAAK>
Nov 28 13:37:00 pop3(taro)<6072><PW95RVZh39h/AAAK>: Info: Disconnected: Logged out top=0/0, retr=0/0, del=0/0, size=0
Nov 28 13:37:00 pop3-login: Info: Login: user=<taro>, method=PLAIN, rip=::1, lip=::1, mpid=6074, secured, session=<lRZ6RVZhPc8AAAAAAAAAAAAAAAAAAAAB>
Nov 28 13:37:00 pop3(taro)<6074><lRZ6RVZhPc8AAAAAAAAAAAAAAAAAAAAB>: Info: Disconnected: Logged out top=0/0, retr=0/0, del=0/0, size=0
Nov 28 13:37:00 auth: Info: passwd-file(taro,127.0.0.10,<RUJ6RVZhs9l/AAAK>): Password mismatch
Nov 28 13:37:01 pop3-login: Info: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 1 secs): user=<taro>, method=PLAIN, rip=127.0.0.10, lip=127.0.0.1, session=<RUJ6RVZhs9l/AAAK>
Nov 28 13:37:01 auth: Info: passwd-file(nosuch,127.0.0.10,<AgqCRVZhw8J/AAAK>): unknown user
Nov 28 13:37:01 pop3-login: Info: Disconnected: Aborted login by logging out (auth failed, 1 attempts in 0 secs): user=<nosuch>, method=PLAIN, rip=127.0.0.10, lip=127.0.0.1, session=<AgqCRVZhw8J/AAAK>
Nov 28 13:37:06 pop3-login: Info: Disconnected: Aborted login by logging out (no auth attempts in 0 secs): user=<>, rip=127.0.0.10, lip=127.0.0.1, session=<+W7ORVZhf5x/AAAK>
Nov 28 13:41:06 master: Warning: Killed with signal 15 (by pid=12532 uid=0 code=kill)
"""  # noqa: E501
    parser = DovecotParser(framing=framing())
    at = datetime(2026, 11, 28, 13, 37, 0, tzinfo=UTC).timestamp()
    assert list(parser.parse_lines(log.splitlines(keepends=True))) == [
        LoginEvent(at, "127.0.0.10", "taro", "dovecot"),
        LoginEvent(at, "::1", "taro", "dovecot"),
    ]
    assert list(DovecotParser(framing=framing()).parse_block(log)) == [
        LoginEvent(at, "127.0.0.10", "taro", "dovecot"),
        LoginEvent(at, "::1", "taro", "dovecot"),
    ]
    assert parser.malformed == 0


def test_dovecot_syslog_tag_is_its_instance_name() -> None:
    # Observed from Dovecot 2.3.19.1 logging to syslog with instance_name = dvsys.
    line = (
        "Nov 28 13:41:04 mail dvsys: pop3-login: Login: user=<taro>, method=PLAIN, "
        "rip=127.0.0.10, lip=127.0.0.1, mpid=12638, session=<vVMBVFZhvcl/AAAK>"
    )
    assert DovecotParser(framing=framing()).parse(line) is None
    found = DovecotParser(programs=["dvsys"], framing=framing()).parse(line)
    assert found is not None and found.address == "127.0.0.10"


# (server, program tag, message): failed logins, logouts and other lines of each server.
NOT_LOGINS = [
    # Dovecot 2.3, observed here (syslog form: no "Info: ").
    (
        "dovecot",
        "dovecot",
        "pop3-login: Disconnected: Aborted login by logging out (auth failed, 1 attempts in "
        "1 secs): user=<taro>, method=PLAIN, rip=127.0.0.10, lip=127.0.0.1, "
        "session=<ZnsBVFZh+4h/AAAK>",
    ),
    (
        "dovecot",
        "dovecot",
        "auth: passwd-file(taro,127.0.0.10,<ZnsBVFZh+4h/AAAK>): Password mismatch",
    ),
    (
        "dovecot",
        "dovecot",
        "pop3(taro)<12638><vVMBVFZhvcl/AAAK>: Disconnected: Logged out top=0/0, retr=0/0, "
        "del=0/0, size=0",
    ),
    (
        "dovecot",
        "dovecot",
        "pop3-login: Disconnected: Aborted login by logging out (no auth attempts in 0 secs): "
        "user=<>, rip=127.0.0.10, lip=127.0.0.1, session=<+W7ORVZhf5x/AAAK>",
    ),
    (
        "dovecot",
        "dovecot",
        "master: Dovecot v2.3.19.1 (9b53102964) starting up for pop3 (core dumps disabled)",
    ),
    # Dovecot 2.4's failure wording, and Dovecot 1.2's.
    (
        "dovecot",
        "dovecot",
        "imap-login: Login aborted: Connection closed (auth failed, 1 attempts in 2 secs) "
        "(auth_failed): user=<vanzari@example.ro>, method=PLAIN, rip=198.51.100.8, "
        "lip=203.0.113.1, TLS: Connection closed",
    ),
    (
        "dovecot",
        "dovecot",
        "imap-login: Aborted login (auth failed, 1 attempts): user=<someone>, method=PLAIN, "
        "rip=192.0.2.3, lip=192.0.2.1, TLS",
    ),
    (
        "dovecot",
        "dovecot",
        "imap(user@domain.com): Disconnected: Logged out bytes=88/1121",
    ),
    (
        "dovecot",
        "dovecot",
        "managesieve-login: Login: user=<a>, method=PLAIN, rip=192.0.2.3, lip=192.0.2.1",
    ),
    # Courier.
    ("courier", "pop3d", "LOGIN FAILED, user=alice, ip=[::ffff:192.0.2.10]"),
    ("courier", "imapd", "LOGIN FAILED, method=PLAIN, ip=[::ffff:192.0.2.10]"),
    (
        "courier",
        "pop3d",
        "LOGOUT, user=alice, ip=[::ffff:192.0.2.10], port=[51234], top=0, retr=0, rcvd=12, "
        "sent=39, time=0",
    ),
    (
        "courier",
        "imapd",
        "DISCONNECTED, user=alice, ip=[::ffff:192.0.2.10], headers=0, body=0, rcvd=64, "
        "sent=500, time=3",
    ),
    ("courier", "imapd", "Connection, ip=[::ffff:192.0.2.10]"),
    # Cyrus.
    (
        "cyrus",
        "cyrus/imap",
        "badlogin: client.example.com [192.0.2.20] plaintext alice SASL(-13): authentication "
        "failure: checkpass failed",
    ),
    ("cyrus", "cyrus/imap", "accepted connection"),
    ("cyrus", "cyrus/pop3", "USAGE alice user: 0.010000 sys: 0.020000"),
    # qpopper.
    (
        "qpopper",
        "in.qpopper",
        '(v4.0.9) Servicing request from "yw-out-2526.google.com" at 74.125.46.35 '
        "[pop_init.c:1408]",
    ),
    (
        "qpopper",
        "in.qpopper",
        "(null) at yw-out-2526.google.com (74.125.46.32): -ERR POP EOF or I/O Error [popper.c:828]",
    ),
    (
        "qpopper",
        "qpopper",
        'alice at client.example.com (192.0.2.30): -ERR [AUTH] Password supplied for "alice" '
        "is incorrect.",
    ),
    ("qpopper", "qpopper", "Stats: alice 0 0 0 0 client.example.com 192.0.2.30"),
    # UW.
    ("uw", "imapd", "Login failure user=alice host=client.example.com [192.0.2.40]"),
    ("uw", "ipop3d", "AUTHENTICATE PLAIN failure host=[192.0.2.41]"),
    ("uw", "imapd", "Logout user=alice host=client.example.com [192.0.2.40]"),
    ("uw", "ipop3d", "Logout user=bob host=[192.0.2.41] nmsgs=3 ndele=0"),
    ("uw", "imapd", "Autologout user=alice host=client.example.com [192.0.2.40]"),
    (
        "uw",
        "imapd",
        "Command stream end of file, while reading line user=alice host=[192.0.2.40]",
    ),
    ("uw", "imapd", "imap service init from 192.0.2.40"),
]


def _not_login_cases() -> Iterator[object]:
    for server, tag, message in NOT_LOGINS:
        for frame in FRAMINGS:
            yield pytest.param(server, frame(tag, message), id=f"{server}-{frame.__name__}")


@pytest.mark.parametrize(("server", "line"), list(_not_login_cases()))
def test_failed_logins_logouts_and_other_lines_yield_nothing(server: str, line: str) -> None:
    parser = PARSERS[server]()
    assert parser.parse(line) is None
    assert parser.malformed == 0


# Crafted lines. Each must never make any parser record 6.6.6.6; where the line is a real
# login, the parser must return the real address.
POSTFIX = "Nov 28 09:03:28 mail postfix/smtpd[4242]: "
INJECTIONS: list[tuple[str, str, str | None]] = [
    # (description, line, the real address or None)
    (
        "CVE-2001-1075: a MAIL FROM shaped like a POP login, in Postfix's NOQUEUE line",
        POSTFIX + "NOQUEUE: reject: RCPT from unknown[6.6.6.6]: 554 5.7.1 <friend@aho.jp>: "
        "Relay access denied; from=<imap-login: Login: user=<x>, method=PLAIN, rip=6.6.6.6, "
        "lip=192.0.2.1, mpid=1, TLS> to=<friend@aho.jp> proto=ESMTP helo=<attacker>",
        None,
    ),
    (
        "CVE-2001-1075 with the whole Dovecot syslog sentence in the sender",
        POSTFIX + "NOQUEUE: reject: RCPT from unknown[6.6.6.6]: 554 5.7.1 <a@aho.jp>: Relay "
        "access denied; from=<Nov 28 09:03:28 mail dovecot: imap-login: Login: user=<x>, "
        "method=PLAIN, rip=6.6.6.6, lip=1.2.3.4> to=<a@aho.jp> proto=SMTP helo=<x>",
        None,
    ),
    (
        "CVE-2001-1075, UW ipop3d shape (what poprelayd looked for)",
        POSTFIX + "NOQUEUE: reject: RCPT from unknown[6.6.6.6]: 554 5.7.1 <a@aho.jp>: Relay "
        "access denied; from=<ipop3d[1]: Login user=x host=[6.6.6.6] nmsgs=0/0> to=<a@aho.jp>",
        None,
    ),
    (
        "the qpopper shape sent by the classic relay-check probe",
        POSTFIX + "NOQUEUE: reject: RCPT from unknown[6.6.6.6]: 554 5.7.1 <a@aho.jp>: Relay "
        'access denied; from=<"POP login by user "admin" at (6.6.6.6) 6.6.6.6"@example.org> '
        "to=<a@aho.jp>",
        None,
    ),
    (
        "Courier and Cyrus shapes in the HELO name",
        POSTFIX + "warning: Illegal address syntax from unknown[6.6.6.6] in MAIL command: "
        "<LOGIN, user=x, ip=[6.6.6.6]> helo=<login: [6.6.6.6] x plaintext User logged in>",
        None,
    ),
    (
        "a Postfix-tagged line whose message is exactly a Dovecot message",
        POSTFIX + "imap-login: Login: user=<x>, method=PLAIN, rip=6.6.6.6, lip=192.0.2.1",
        None,
    ),
    (
        "observed: Dovecot with auth_username_chars emptied logs a crafted name as is",
        "Nov 28 13:41:45 pop3-login: Info: Login: user=<x>, method=plain, rip=6.6.6.6, "
        "lip=1.2.3.4, mpid=1, session=<abc>, method=PLAIN, rip=127.0.0.10, lip=127.0.0.1, "
        "mpid=13367, session=<4lhoVlZhTbp/AAAK>",
        "127.0.0.10",
    ),
    (
        "observed: a crafted name with secured and a session, in syslog form",
        "Nov 28 13:41:45 mail dovecot: pop3-login: Login: user=<w>, method=plain, "
        "rip=6.6.6.6, lip=1.1.1.1, mpid=1, secured, session=<abc>, method=PLAIN, "
        "rip=127.0.0.10, lip=127.0.0.1, mpid=13372, session=<X6VwVlZhFY9/AAAK>",
        "127.0.0.10",
    ),
    (
        "observed: a user name holding ', rip=' (and no '>')",
        "Nov 28 13:41:33 pop3-login: Info: Login: user=<y, rip=6.6.6.6>, method=PLAIN, "
        "rip=127.0.0.10, lip=127.0.0.1, mpid=13250, session=<qla5VVZhbbB/AAAK>",
        "127.0.0.10",
    ),
    (
        "observed: a failed login whose user name is a whole login sentence",
        "Nov 28 13:41:45 pop3-login: Info: Disconnected: Aborted login by logging out (auth "
        "failed, 1 attempts in 0 secs): user=<z login: user=<q>, method=plain, rip=6.6.6.6, "
        "lip=1.1.1.1>, method=PLAIN, rip=127.0.0.10, lip=127.0.0.1, "
        "session=<r+RoVlZhaYV/AAAK>",
        None,
    ),
    (
        "Dovecot's own file: the mail process names its user, here a fake login process",
        "Nov 28 13:41:45 pop3(a pop3-login: Info: Login: user=<z>, method=PLAIN, rip=6.6.6.6, "
        "lip=1.1.1.1, mpid=1, session=<a>)<13367><4lhoVlZhTbp/AAAK>: Info: Disconnected: "
        "Logged out top=0/0, retr=0/0, del=0/0, size=0",
        None,
    ),
    (
        "a name with a control character (Dovecot writes '?') and a whole syslog line",
        "Nov 28 09:03:28 mail dovecot: imap-login: Login: user=<a?Nov 28 09:03:28 mail "
        "dovecot: imap-login: Login: user=<x>, method=PLAIN, rip=6.6.6.6, lip=1.1.1.1, "
        "mpid=1, session=<s>, method=PLAIN, rip=192.0.2.50, lip=192.0.2.1, mpid=2, TLS",
        "192.0.2.50",
    ),
    (
        "a newline that was not cut: a forged Dovecot line after a Postfix one",
        POSTFIX + "NOQUEUE: reject: RCPT from unknown[6.6.6.6]: 554 5.7.1 <a@aho.jp>: Relay "
        "access denied; from=<a@b>\nNov 28 09:03:28 mail dovecot: imap-login: Login: "
        "user=<x>, method=PLAIN, rip=6.6.6.6, lip=1.1.1.1, mpid=1, TLS",
        None,
    ),
    (
        "rsyslog's #012 escape of a newline inside a Postfix line",
        POSTFIX + "warning: a#012Nov 28 09:03:28 mail dovecot: imap-login: Login: user=<x>, "
        "method=PLAIN, rip=6.6.6.6, lip=1.1.1.1, mpid=1, TLS",
        None,
    ),
    (
        "two rip= fields after the user name: not Dovecot's structure",
        "Nov 28 09:03:28 mail dovecot: imap-login: Login: user=<x>, method=PLAIN, "
        "rip=6.6.6.6, rip=192.0.2.51, lip=192.0.2.1, mpid=2, TLS",
        None,
    ),
    (
        "a bracketed rip (parse_ip would accept brackets; Dovecot never writes them)",
        "Nov 28 09:03:28 mail dovecot: imap-login: Login: user=<x>, method=PLAIN, "
        "rip=[6.6.6.6], lip=192.0.2.1",
        None,
    ),
    (
        "full-width digits that look like an address",
        "Nov 28 09:03:28 mail dovecot: imap-login: Login: user=<x>, method=PLAIN, "
        "rip=６.６.６.６, lip=192.0.2.1",
        None,
    ),
    (
        "Courier: a user name holding a whole ip=[...] field",
        "Nov 28 09:03:28 mail imapd: LOGIN, user=x, ip=[6.6.6.6], port=[1], protocol=IMAP, "
        "user=y, ip=[::ffff:192.0.2.10], port=[51234], protocol=IMAP",
        "192.0.2.10",
    ),
    (
        "Courier: a failed login with a LOGIN sentence for a user name",
        "Nov 28 09:03:28 mail pop3d: LOGIN FAILED, user=LOGIN, user=x, ip=[6.6.6.6], "
        "ip=[::ffff:192.0.2.10]",
        None,
    ),
    (
        "Cyrus: a user name with spaces and a bracketed address",
        "Nov 28 09:03:28 mail cyrus/imap[1]: login: client [192.0.2.20] x] [6.6.6.6 plaintext "
        "User logged in",
        None,
    ),
    (
        "Cyrus: a failed login whose user name is a login sentence",
        "Nov 28 09:03:28 mail cyrus/imap[1]: badlogin: client [192.0.2.20] plaintext login: "
        "[6.6.6.6] x plaintext User logged in",
        None,
    ),
    (
        "qpopper: a user name closing the quote and adding a host and address",
        'Nov 28 09:03:28 mail in.qpopper[7597]: (v4.0.9) POP login by user "nick" at (evil) '
        '6.6.6.6" at (yw-out-2526.google.com) 74.125.46.35 [pop_log.c:244]',
        "74.125.46.35",
    ),
    (
        "UW: a user name holding a host= field",
        "Nov 28 09:03:28 mail imapd[1]: Login user=x host=[6.6.6.6] host=client.example.com "
        "[192.0.2.40]",
        "192.0.2.40",
    ),
    (
        "UW: a host name cut at 80 characters lost its [ip]",
        "Nov 28 09:03:28 mail imapd[1]: Login user=x host=a.very.long.name.example [6.6.6.6]"
        " truncated.tail.of.the.real.host.name.exam",
        None,
    ),
]


@pytest.mark.parametrize(
    ("line", "real"), [pytest.param(line, real, id=why) for why, line, real in INJECTIONS]
)
def test_crafted_lines_never_record_the_attacker_address(line: str, real: str | None) -> None:
    found = [event for make in PARSERS.values() if (event := make().parse(line)) is not None]
    assert all(event.address != EVIL for event in found)
    assert [event.address for event in found] == ([] if real is None else [real])


def test_malformed_lines_are_counted_and_reported() -> None:
    heard: list[tuple[str, str]] = []
    parser = DovecotParser(
        framing=framing(), on_malformed=lambda line, why: heard.append((line, why))
    )
    two_rips = (
        "Nov 28 09:03:28 mail dovecot: imap-login: Login: user=<x>, method=PLAIN, "
        "rip=6.6.6.6, rip=192.0.2.51, lip=192.0.2.1"
    )
    no_method = "Nov 28 09:03:28 mail dovecot: imap-login: Login: user=<x>, rip=6.6.6.6"
    bad_address = "Nov 28 09:03:28 mail dovecot: imap-login: Login: user=<x>, method=PLAIN, rip=x"
    not_a_login = "Nov 28 09:03:28 mail postfix/smtpd[1]: imap-login: Login: user=<x>, rip=6.6.6.6"
    for line in (two_rips, no_method, bad_address, not_a_login):
        assert parser.parse(line) is None
    assert parser.malformed == 3
    assert [why for _, why in heard] == [
        "not exactly one rip= field after the user name",
        "no '>, method=' after the user name",
        "not an IP address: 'x'",
    ]
    assert heard[0][0] == two_rips


def test_forged_syslog_tag_is_the_residual_risk() -> None:
    """``logger -t dovecot '...'`` by any local user produces exactly what Dovecot logs
    through syslog (observed: ``<13>Nov 28 13:41:08 dovecot: pop3-login: Login: ...``). No
    parser can tell them apart; Dovecot's own log_path file, which only Dovecot can write,
    can be told apart (docs/watcher.md)."""
    forged = syslog(
        "dovecot", "pop3-login: Login: user=<forged>, method=PLAIN, rip=6.6.6.6, lip=127.0.0.1"
    )
    found = DovecotParser(framing=framing()).parse(forged)
    assert found is not None and found.address == EVIL


# Property: whatever text a user name holds, the address is the server's own field.
names = st.text(st.characters(blacklist_characters="\r\n\x00"), min_size=1, max_size=60)
evil_names = st.sampled_from(
    [
        ">, method=PLAIN, rip=6.6.6.6, lip=1.2.3.4, mpid=1, session=<a",
        ", rip=6.6.6.6",
        "x>, method=PLAIN, rip=6.6.6.6",
        ">",
        ">, method=",
        "a, rip=6.6.6.6, lip=6.6.6.6>, method=X",
        "imap-login: Login: user=<x>, method=PLAIN, rip=6.6.6.6, lip=1.1.1.1",
    ]
)
addresses = st.sampled_from(["192.0.2.77", "::ffff:192.0.2.77", "2001:db8::77", "::1"])
dovecot_framings = st.sampled_from(
    [
        lambda m: syslog("dovecot", "imap-login: " + m),
        lambda m: rsyslog("dovecot", "pop3-login: " + m),
        lambda m: with_pid("dovecot", "submission-login: " + m),
        lambda m: dovecot_file("imap-login", m),
    ]
)


@given(
    user=st.one_of(names, evil_names, st.tuples(names, evil_names, names).map("".join)),
    rip=addresses,
    frame=dovecot_framings,
    verb=st.sampled_from(["Login", "Logged in"]),
)
@example(
    user=">, method=PLAIN, rip=6.6.6.6",
    rip="192.0.2.77",
    frame=lambda m: syslog("dovecot", "imap-login: " + m),
    verb="Login",
)
def test_dovecot_address_is_always_the_real_rip(
    user: str, rip: str, frame: Callable[[str], str], verb: str
) -> None:
    line = frame(
        f"{verb}: user=<{user}>, method=PLAIN, rip={rip}, lip=192.0.2.1, mpid=4242, TLS, "
        "session=<AbCdEf+/0123>"
    )
    found = DovecotParser(framing=framing()).parse(line)
    assert found is not None
    assert found.address == ("192.0.2.77" if rip.startswith("::ffff:") else rip)
    assert found.user == user


@given(user=st.one_of(names, st.tuples(names, evil_names, names).map("".join)))
def test_courier_qpopper_uw_addresses_are_always_the_real_ones(user: str) -> None:
    lines = {
        "courier": syslog(
            "imapd", f"LOGIN, user={user}, ip=[::ffff:192.0.2.78], port=[1], protocol=IMAP"
        ),
        "qpopper": with_pid(
            "qpopper", f'(v4.1.0) POP login by user "{user}" at (c.example) 192.0.2.78'
        ),
        "uw": with_pid("imapd", f"Login user={user} host=c.example [192.0.2.78]"),
    }
    for server, line in lines.items():
        found = PARSERS[server]().parse(line)
        assert found is not None, server
        assert (found.address, found.user) == ("192.0.2.78", user), server


@given(user=names)
def test_cyrus_address_is_the_real_one_or_nothing(user: str) -> None:
    line = with_pid("cyrus/imap", f"login: c.example [192.0.2.79] {user} PLAIN User logged in")
    found = CyrusParser(framing=framing()).parse(line)
    if found is not None:
        assert (found.address, found.user) == ("192.0.2.79", user)
    else:
        assert re.search(r"\s", user)


# A user's own regular expression.


def test_regex_parser() -> None:
    parser = RegexParser(
        r"(?P<time>\S+) \S+ vm-pop3d\[\d+\]: User (?P<user>\S+) logged in from "
        r"(?P<address>[0-9a-fA-F.:]+)$",
        framing=framing(),
    )
    line = "2026-11-28T09:03:28Z mail vm-pop3d[12]: User alice logged in from ::ffff:192.0.2.60"
    assert parser.parse(line + "\n") == LoginEvent(T, "192.0.2.60", "alice", "regex")
    assert parser.parse("2026-11-28T09:03:28Z mail vm-pop3d[12]: User alice failed") is None


def test_regex_parser_takes_the_time_from_the_framing_or_the_clock() -> None:
    parser = RegexParser(
        r".* pop3d\[\d+\]: ok (?P<user>\w+) (?P<address>\S+)$", name="mine", framing=framing()
    )
    assert parser.parse("Nov 28 09:03:28 mail pop3d[1]: ok bob 192.0.2.61") == LoginEvent(
        T, "192.0.2.61", "bob", "mine"
    )
    assert parser.parse("whenever pop3d[1]: ok bob 192.0.2.61") == LoginEvent(
        NOW, "192.0.2.61", "bob", "mine"
    )


def test_regex_parser_reads_one_line_at_a_time() -> None:
    parser = RegexParser(r".*ok (?P<user>\w+)\s+(?P<address>\S+)$", framing=framing())
    assert parser.parse("Nov 28 09:03:28 mail pop3d[1]: ok bob\n192.0.2.61") is None
    assert parser.parse("Nov 28 09:03:28 mail pop3d[1]: ok bob\r6.6.6.6") is None


def test_regex_parser_refuses_what_is_not_an_address() -> None:
    parser = RegexParser(r".*ok (?P<user>\w+) (?P<address>\S+)$", framing=framing())
    assert parser.parse("Nov 28 09:03:28 mail pop3d[1]: ok bob [192.0.2.61]") is None
    assert parser.parse("Nov 28 09:03:28 mail pop3d[1]: ok bob localhost") is None
    assert parser.malformed == 2


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (r"(?P<user>\w+) from (?P<address>", "bad login regex"),
        (r"(?P<user>\w+) from (\S+)", r"needs the named group\(s\) \(\?P<address>\.\.\.\)"),
        (r"from (\S+)", r"\(\?P<address>\.\.\.\), \(\?P<user>\.\.\.\)"),
    ],
)
def test_regex_parser_validates_the_pattern(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RegexParser(pattern)


# Choosing a parser by name, as the configuration does.


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("dovecot", DovecotParser),
        ("courier", CourierParser),
        ("cyrus", CyrusParser),
        ("qpopper", QpopperParser),
        ("uw", UwParser),
        ("Dovecot", DovecotParser),
        (r"regex:(?P<user>\w+) (?P<address>\S+)", RegexParser),
    ],
)
def test_parser_for(name: str, kind: type[LineParser]) -> None:
    parser = parser_for(name)
    assert isinstance(parser, kind)
    checked: LoginParser = parser  # the protocol the watcher takes
    assert checked.parse("not a login line") is None
    assert parser.name == ("regex" if kind is RegexParser else name.lower())


@pytest.mark.parametrize("name", ["", "postfix", "dovecot2", "regex", "uw-imap"])
def test_parser_for_names_the_valid_choices(name: str) -> None:
    with pytest.raises(ValueError, match="expected one of dovecot, courier, cyrus, qpopper, uw"):
        parser_for(name)


def test_parser_formats() -> None:
    assert PARSER_FORMATS == ("dovecot", "courier", "cyrus", "qpopper", "uw", "regex:PATTERN")


def test_parse_lines_and_parse_block_agree_with_parse() -> None:
    lines = [frame(tag, message) for _, tag, message, _, _ in LOGINS for frame in FRAMINGS]
    lines += [frame(tag, message) for _, tag, message in NOT_LOGINS for frame in FRAMINGS]
    lines += [line + "\n" for _, line, _ in INJECTIONS if "\n" not in line]
    for make in PARSERS.values():
        one_by_one = [event for line in lines if (event := make().parse(line)) is not None]
        assert list(make().parse_lines(lines)) == one_by_one
        assert list(make().parse_block("".join(lines))) == one_by_one
        assert list(make().parse_block("".join(lines).replace("\n", "\r\n"))) == one_by_one


# parse_block: the same events as parse_lines over the same lines, for any mixed text.
# The Dovecot block path reads a line on the spot only when its minute is known and its
# structure is the usual one, so the texts repeat minutes and mix usual lines with crafted
# ones; each block is parsed twice by one parser (the second time every minute and head
# is known) and compared with a fresh parser reading the lines one by one.


def _block_lines() -> list[str]:
    lines = [frame(tag, message) for _, tag, message, _, _ in LOGINS for frame in FRAMINGS]
    lines += [frame(tag, message) for _, tag, message in NOT_LOGINS for frame in FRAMINGS]
    lines += [line + "\n" for _, line, _ in INJECTIONS]
    lines += [
        # Near misses of the usual Dovecot structure, each one change away from it.
        syslog("dovecot", "imap-login: Login: user=<a>, method=PLAIN, rip=192.0.2.9"),
        syslog("dovecot", "imap-login: Login: user=<a>, method=PLAIN, rip=192.0.2.9,x"),
        syslog("dovecot", "imap-login: Login: user=<a>, method=PLAIN, rip=192.0.2.9 , lip=1"),
        syslog("dovecot", "imap-login: Login: user=<a>, method=PLAIN, rip=300.1.1.1, lip=1"),
        syslog("dovecot", "imap-login: Login: user=<a>, method=PL AIN, rip=192.0.2.9, lip=1"),
        syslog("dovecot", "imap-login: Login: user=<a>, lip=1.1.1.1, method=X, rip=192.0.2.9"),
        syslog("dovecot", "imap-login: Login: user=<a>, method=X, lip=1, rip=192.0.2.9, a=b"),
        syslog("dovecot", "imap-login: Login: user=<>, method=PLAIN, rip=192.0.2.9, lip=1"),
        syslog("dovecot", "imap-login: Login: user=<a\x00>, method=PLAIN, rip=192.0.2.9"),
        syslog("dovecot", "imap-login: Login: user=<a>, method=PLAIN, rip=192.0.2.9, \x00"),
        syslog("dovecot", "imap-login: Login: user=<a>, method=PLAIN, rip=192.0.2.9, x\ry"),
        syslog("dovecot", "imap-login: Info: Info: Login: user=<a>, method=P, rip=192.0.2.9"),
        syslog("dovecot", "imap-login:  Login: user=<a>, method=PLAIN, rip=192.0.2.9"),
        syslog("dovecot", "pop3: Login: user=<a>, method=PLAIN, rip=192.0.2.9, lip=1"),
        syslog("dovecot[x]", "imap-login: Login: user=<a>, method=PLAIN, rip=192.0.2.9"),
        with_pid("dovecot", "imap-login: Logged in: user=<b>, method=PLAIN, rip=::ffff:1.2.3.4"),
        syslog("postfix/smtpd", "imap-login: Login: user=<a>, method=PLAIN, rip=6.6.6.6"),
        "Nov 28 09:03:28 mail\x00 dovecot: imap-login: Login: user=<a>, method=P, rip=1.1.1.1\n",
        "Nov 28 09:03:28 ma[il dovecot: imap-login: Login: user=<a>, method=P, rip=1.1.1.1\n",
        "Nov 28 09:03:28 mail dovecot: [ID 1 mail.info] imap-login: Login: user=<a>, "
        "method=P, rip=1.1.1.1\n",
        "Nov 28 09:03:61 mail dovecot: imap-login: Login: user=<a>, method=P, rip=1.1.1.1\n",
        "Nov 28 09:03:28.5 mail dovecot: imap-login: Login: user=<a>, method=P, rip=1.1.1.1\n",
        "Nov 28 09:03:28.5 dovecot: imap-login: Login: user=<a>, method=P, rip=1.1.1.1\n",
        syslog("dvsys", "pop3-login: Login: user=<a>, method=PLAIN, rip=192.0.2.9, lip=1"),
        syslog("bad tag", "pop3-login: Login: user=<a>, method=PLAIN, rip=192.0.2.9, lip=1"),
        "Nov 28 09:03:28 mail pop3-login: imap-login: Login: user=<a>, method=P, rip=1.1.1.1\n",
        "Nov 28 09:03x28 mail dovecot: imap-login: Login: user=<a>, method=P, rip=1.1.1.1\n",
        syslog("dovecot", "imap-login: Login: user=<a>, method=P, rip=192.0.2.9, x>, method=Q"),
        "Nov  8 09:03:28 mail dovecot: imap-login: Login: user=<a>, method=P, rip=1.1.1.2\n",
        "Nov 8 09:03:28 mail dovecot: imap-login: Login: user=<a>, method=P, rip=1.1.1.3\n",
        "Nov  28 09:03:28 mail dovecot: imap-login: Login: user=<a>, method=P, rip=1.1.1.4\n",
        "Feb 29 09:03:28 mail dovecot: imap-login: Login: user=<a>, method=P, rip=1.1.1.5\n",
        "Nov 29 09:03:28 mail dovecot: imap-login: Login: user=<a>, method=P, rip=1.1.1.6\n",
        "Dec 28 09:03:28 mail dovecot: imap-login: Login: user=<a>, method=P, rip=1.1.1.7\n",
        "Nov 28 09:03:28 imap-login[1]: Info: Login: user=<a>, method=P, rip=1.1.1.8\n",
        "Nov 28 09:03:28 pop3-login: Login: user=<a>, method=P, rip=1.1.1.9, lip=1\n",
        "2026-11-28 09:03:28 pop3-login: Info: Login: user=<a>, method=P, rip=1.1.1.10\n",
        "Nov 28 09:03:28 mail dovecot: imap-login: Login: user=<Login: user=<x>, method=P, "
        "rip=6.6.6.6>, method=P, rip=1.1.1.11\n",
        "Nov 28 09:03:28 mail dovecot: imap-login: Login: user=<x\rNov 28 09:03:28 mail "
        "dovecot: imap-login: Login: user=<y>, method=P, rip=6.6.6.6\n",
        "\n",
        "\r\n",
    ]
    return lines


BLOCK_LINES = _block_lines()
dovecot_lines = st.builds(
    lambda frame, verb, user, rip, tail: frame(
        f"{verb}: user=<{user}>, method=PLAIN, rip={rip}{tail}"
    ),
    dovecot_framings,
    st.sampled_from(["Login", "Logged in"]),
    st.one_of(names, evil_names, st.tuples(names, evil_names, names).map("".join)),
    st.one_of(addresses, st.sampled_from(["6.6.6.6,", "[6.6.6.6]", "", "x"])),
    st.one_of(
        st.sampled_from(["", ", lip=192.0.2.1, mpid=1, TLS, session=<a>", ", rip=6.6.6.6"]),
        evil_names.map(", ".join),
        names.map(", ".__add__),
    ),
)
block_texts = st.lists(
    st.one_of(st.sampled_from(BLOCK_LINES), dovecot_lines), min_size=1, max_size=30
).flatmap(
    lambda lines: st.tuples(st.just(lines), st.booleans(), st.booleans()).map(
        lambda drawn: _join(*drawn)
    )
)


def _join(lines: list[str], crlf: bool, cut_last_newline: bool) -> str:
    text = "".join(lines)
    if crlf:
        text = text.replace("\n", "\r\n")
    return text.removesuffix("\n") if cut_last_newline else text


def _dovecot_with_odd_programs() -> LineParser:
    # An instance_name, and a login process name taken for a syslog tag.
    return DovecotParser(programs=["dvsys", "pop3-login", "bad tag"], framing=framing())


class _Heard:
    """A parser's malformed lines as its on_malformed hook hears them."""

    def __init__(self, parser: LineParser) -> None:
        self.lines: list[tuple[str, str]] = []
        parser.on_malformed = self.hear

    def hear(self, line: str, why: str) -> None:
        self.lines.append((line, why))


@given(text=block_texts)
@example(text="".join(BLOCK_LINES))
@example(text="".join(BLOCK_LINES).replace("\n", "\r\n"))
def test_parse_block_is_parse_lines_over_the_same_lines(text: str) -> None:
    for make in [*PARSERS.values(), _dovecot_with_odd_programs]:
        reference = make()
        heard = _Heard(reference)
        expected = (list(reference.parse_lines(text.split("\n"))), heard.lines)
        parser = make()
        heard = _Heard(parser)
        for _ in range(2):  # cold, then with every minute and head already seen
            assert (list(parser.parse_block(text)), heard.lines) == expected
            assert parser.malformed == len(heard.lines)
            heard.lines, parser.malformed = [], 0
        if not any(mark in text for mark in "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"):
            assert list(make().parse_lines(text.splitlines())) == expected[0]


def test_parse_block_takes_whole_lines() -> None:
    login = syslog("dovecot", "imap-login: Login: user=<a>, method=PLAIN, rip=192.0.2.9, lip=1")
    parser = DovecotParser(framing=framing())
    # Text after the last newline is read as a whole line: cutting is the caller's job.
    assert len(list(parser.parse_block(login * 3 + login.rstrip("\n")))) == 4
    assert (
        list(parser.parse_block(login.replace("\n", "\r\n") * 2 + "\n\n"))
        == [LoginEvent(T, "192.0.2.9", "a", "dovecot")] * 2
    )
    # Only "\n" ends a line: a "\r" inside one makes it no log line at all.
    assert list(parser.parse_block(login.rstrip("\n") + "\r" + login)) == []
    assert list(parser.parse_block("")) == []


def test_dovecot_block_reads_usual_lines_without_the_per_line_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    usual = [
        syslog(
            "dovecot",
            f"imap-login: Login: user=<u{i}>, method=PLAIN, rip=192.0.2.{i}, "
            "lip=192.0.2.1, mpid=1, TLS, session=<a>",
        )
        for i in range(1, 4)
    ] + [dovecot_file("pop3-login", "Login: user=<v>, method=PLAIN, rip=::ffff:192.0.2.4")]
    parser = DovecotParser(framing=framing())
    assert [e.address for e in parser.parse_block("".join(usual))] == [
        "192.0.2.1",
        "192.0.2.2",
        "192.0.2.3",
        "192.0.2.4",
    ]
    read_one_by_one: list[str] = []
    per_line = DovecotParser._parse_framed

    def spy(self: DovecotParser, line: str) -> LoginEvent | None:
        read_one_by_one.append(line)
        return per_line(self, line)

    monkeypatch.setattr(DovecotParser, "_parse_framed", spy)
    events = list(parser.parse_block("".join(usual) + INJECTIONS[0][1] + "\n"))
    assert [e.address for e in events] == ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"]
    assert read_one_by_one == [INJECTIONS[0][1]]  # only the line it does not settle


def test_dovecot_block_across_the_turn_of_the_year() -> None:
    clock = FakeClock(datetime(2026, 12, 31, 23, 59, 50, tzinfo=UTC).timestamp())
    block = "".join(
        f"{stamp} mail dovecot: imap-login: Login: user=<a>, method=PLAIN, rip=192.0.2.{i}\n"
        for i, stamp in enumerate(["Dec 31 23:59:58", "Jan  1 00:00:02", "Dec 31 23:59:59"])
    )
    parser = DovecotParser(framing=LineFraming(clock=clock, tz=ZoneInfo("UTC")))
    for now in ("2026-12-31T23:59:59", "2027-01-01T00:00:03", "2027-01-01T00:00:04"):
        clock.set(datetime.fromisoformat(now + "+00:00").timestamp())
        reference = DovecotParser(framing=LineFraming(clock=clock, tz=ZoneInfo("UTC")))
        assert list(parser.parse_block(block)) == list(reference.parse_lines(block.split("\n")))


# The real Dovecot: log in from a loopback client, read its log file.


@pytest.mark.real
def test_real_dovecot_login_is_read_from_its_log_file() -> None:
    from dovecot_instance import running_dovecot
    from realservers import require_loopback_address

    client = "127.0.0.10"
    require_loopback_address(client)
    with running_dovecot(users={"taro": "secret"}) as dovecot:
        assert dovecot.pop3_login("taro", "wrong", source_address=client) is False
        assert dovecot.pop3_login("taro", "secret", source_address=client) is True
        dovecot.wait_for_log(r"pop3-login: Info: Login: user=<taro>")
        with dovecot.log_path.open(encoding="utf-8") as log:
            events = list(DovecotParser().parse_lines(log))
    assert [(event.address, event.user, event.server) for event in events] == [
        (client, "taro", "dovecot")
    ]
