"""The ``parsers`` target: log text through every login parser, line by line and by block.

An input is a block of log text (lines separated by ``"\\n"``, as the follower reads
them): mutated real login lines of Dovecot, Courier, Cyrus, qpopper and UW in the three
framings, near misses and injections, random text, and random bytes decoded as the
follower decodes them (UTF-8, bad bytes replaced). Each parser (fresh, on a fixed clock
and UTC, so a finding reproduces from its input alone) reads the block three ways:
``parse`` on each line, ``parse_lines`` and ``parse_block``. The oracle:

- no exception from any of them, nor from :class:`~relaypolicy.watch.parsers.DovecotSessions`;
- every event's address is a valid IP address in canonical form (what ``ipaddress``
  prints, IPv4-mapped IPv6 folded), its user is not empty and holds no line end or NUL,
  its time is finite and it names its parser;
- the three ways agree: the same events in the same order, the same number of lines
  counted as malformed.
"""

from __future__ import annotations

import ipaddress
import math
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from relaypolicy.testing.fuzz.engine import ORACLE, Problem
from relaypolicy.testing.fuzz.mutate import mutate_text, random_text
from relaypolicy.watch.framing import LineFraming
from relaypolicy.watch.parsers import (
    CourierParser,
    CyrusParser,
    DovecotParser,
    DovecotSessions,
    LineParser,
    LoginEvent,
    QpopperParser,
    RegexParser,
    UwParser,
)

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = ["PARSERS", "ParserTarget"]

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC).timestamp()
REGEX = r"\S+ +\d+ [\d:]+ \S+ pop3d\[\d+\]: ok (?P<user>\S+) (?P<address>\S+)$"


def _framing() -> LineFraming:
    return LineFraming(clock=lambda: NOW, tz=UTC)


PARSERS: dict[str, Callable[[], LineParser]] = {
    "dovecot": lambda: DovecotParser(framing=_framing()),
    "courier": lambda: CourierParser(framing=_framing()),
    "cyrus": lambda: CyrusParser(framing=_framing()),
    "qpopper": lambda: QpopperParser(framing=_framing()),
    "uw": lambda: UwParser(framing=_framing()),
    "regex": lambda: RegexParser(REGEX, framing=_framing()),
}

# (program tag, message): real login lines as the servers write them.
MESSAGES = (
    (
        "dovecot",
        "pop3-login: Login: user=<taro>, method=PLAIN, rip=127.0.0.10, "
        "lip=127.0.0.1, mpid=12638, session=<vVMBVFZhvcl/AAAK>",
    ),
    (
        "dovecot",
        "imap-login: Login: user=<postmaster>, method=PLAIN, rip=80.241.60.193, "
        "lip=172.31.1.100, mpid=23349, TLS, session=<sF+SszFtrD5Q8TzB>",
    ),
    (
        "dovecot",
        "pop3-login: Login: user=<bob>, method=PLAIN, rip=::ffff:192.0.2.7, "
        "lip=::ffff:192.0.2.1, TLS",
    ),
    (
        "dovecot",
        "submission-login: Login: user=<alice>, method=SCRAM-SHA-256, "
        "rip=2001:DB8:0::5, lip=2001:db8::1, mpid=3, TLS, session=<AbC+/123>",
    ),
    (
        "dovecot",
        "imap-login: Logged in: user=<office@example.ro>, method=PLAIN, "
        "rip=198.51.100.7, lip=203.0.113.1, mpid=1, TLS",
    ),
    (
        "dovecot",
        "imap-login: Login: user=<x>, method=plain, rip=6.6.6.6, lip=1>, "
        "method=PLAIN, rip=192.0.2.9, lip=192.0.2.1",
    ),
    (
        "postfix/smtpd[4242]",
        "NOQUEUE: reject: RCPT from x[6.6.6.6]: from=<pop3-login: "
        "Login: user=<a>, method=PLAIN, rip=6.6.6.6>",
    ),
    ("pop3d", "LOGIN, user=alice, ip=[::ffff:192.0.2.10], port=[51234]"),
    ("imapd", "LOGIN, user=alice@example.org, ip=[::ffff:192.0.2.11], port=[40112], protocol=IMAP"),
    ("pop3d-ssl", "LOGIN, user=bob, ip=[::ffff:192.0.2.12], port=[50000], protocol=POP3, stls=1"),
    (
        "cyrus/imap",
        "login: frontend1.nyi.internal [10.202.2.160] robntest plaintext User "
        "logged in SESSIONID=<sloti30t15-4101108-1450760746-1-6931901653674999381>",
    ),
    ("cyrus/pop3", "login: [2001:db8::20] bob PLAIN+TLS User logged in"),
    (
        "in.qpopper",
        '(v4.0.9) POP login by user "nick" at (yw-out-2526.google.com) '
        "74.125.46.35 [pop_log.c:244]",
    ),
    ("qpopper", '(v4.0.5) POP login by user "bob" at (2001:db8::30) 2001:db8::30'),
    ("imapd", "Login user=alice host=client.example.com [192.0.2.40]"),
    ("ipop3d", "Login user=bob host=[2001:db8::40] nmsgs=3/3"),
    ("imapd", "Authenticated user=carol host=client.example.com [192.0.2.41] mech=PLAIN"),
    ("pop3d", "ok bob 192.0.2.61"),
)


def _framed(tag: str, message: str, form: int) -> str:
    if form == 0:
        return f"Nov 28 09:03:28 mail {tag}: {message}"
    if form == 1:
        return f"2026-11-28T09:03:28.000000+00:00 mail {tag}: {message}"
    if form == 2:
        return f"Nov 28 09:03:{form + 26} mail {tag}[4242]: {message}"
    service, _, rest = message.partition(": ")  # Dovecot's own log_path file
    return f"Nov  8 09:03:28 {service}: Info: {rest}"


LINES = (
    *(_framed(tag, message, form) for tag, message in MESSAGES for form in range(4)),
    "Nov 28 09:03:28 mail dovecot: imap-login: Login: user=<x\rNov 28 09:03:28 mail "
    "dovecot: imap-login: Login: user=<y>, method=P, rip=6.6.6.6",
    "Feb 29 09:03:28 mail dovecot: imap-login: Login: user=<a>, method=P, rip=1.1.1.5",
    "Nov 28 09:03:61 mail dovecot: imap-login: Login: user=<a>, method=P, rip=1.1.1.1",
    "imap(taro)<7963><XsCR5VlhlbJ/AAAL>: Info: Disconnected: Logged out in=12 out=477",
    "",
)


def _event_problems(name: str, events: list[LoginEvent]) -> list[Problem]:
    problems = []
    for event in events:
        try:
            address = ipaddress.ip_address(event.address)
        except ValueError:
            problems.append(Problem(ORACLE, f"{name}: not an IP address", repr(event)))
            continue
        mapped = isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None
        if str(address) != event.address or mapped:
            problems.append(Problem(ORACLE, f"{name}: address not canonical", repr(event)))
        user = event.user
        if not user or "\n" in user or "\r" in user or "\x00" in user:
            problems.append(Problem(ORACLE, f"{name}: bad user name", repr(event)))
        if not math.isfinite(event.time) or event.server != name:
            problems.append(Problem(ORACLE, f"{name}: bad time or server", repr(event)))
    return problems


class ParserTarget:
    """Log text through every parser of :data:`PARSERS` (or the ones given)."""

    name = "parsers"

    def __init__(self, parsers: dict[str, Callable[[], LineParser]] | None = None) -> None:
        self.parsers = dict(parsers) if parsers is not None else PARSERS
        self._corpus = [*LINES, "\n".join(LINES[::3]), "\r\n".join(LINES[1::5])]

    def corpus(self) -> Sequence[str]:
        return self._corpus

    def mutate(self, rng: random.Random, corpus: Sequence[str]) -> str:
        roll = rng.random()
        if roll < 0.05:  # random bytes, decoded as the follower decodes them
            return rng.randbytes(rng.randint(0, 200)).decode("utf-8", "replace")
        if roll < 0.1:
            return random_text(rng, 200)
        lines = [rng.choice(corpus) for _ in range(rng.choice((1, 1, 2, 3, 6)))]
        lines[rng.randrange(len(lines))] = mutate_text(rng, rng.choice(lines), corpus)
        return rng.choice(("\n", "\n", "\r\n")).join(lines)

    def check(self, value: str) -> list[Problem]:
        lines = value.split("\n")
        problems: list[Problem] = []
        for name, make in self.parsers.items():
            one, many, block = make(), make(), make()
            singles = [event for line in lines if (event := one.parse(line)) is not None]
            listed = list(many.parse_lines(lines))
            blocked = list(block.parse_block(value))
            problems += _event_problems(name, blocked)
            if not singles == listed == blocked:
                problems += _event_problems(name, singles)
                problems.append(
                    Problem(
                        ORACLE,
                        f"{name}: parse, parse_lines and parse_block disagree",
                        f"parse {singles!r:.300}, block {blocked!r:.300}",
                    )
                )
            if not one.malformed == many.malformed == block.malformed:
                problems.append(
                    Problem(
                        ORACLE,
                        f"{name}: malformed counts disagree",
                        f"{one.malformed}, {many.malformed}, {block.malformed}",
                    )
                )
        sessions = DovecotSessions(framing=_framing())
        for line in lines:
            sessions.opened(line)
            sessions.closed(line)
        return problems

    def strategy(self) -> SearchStrategy[str]:
        # Hypothesis is a development extra: its strategies load only for that engine.
        from relaypolicy.testing.fuzz.strategies import log_blocks

        return log_blocks(self._corpus)
