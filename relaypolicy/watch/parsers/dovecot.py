"""Dovecot 2.3 and 2.4 login lines: the per-line reading and the block fast path.

:class:`DovecotParser` reads a line by the rules of :mod:`relaypolicy.watch.parsers`;
its ``parse_block`` finds the login sentences of a whole read with one regular
expression and reads a line on the spot when its head is one already seen (the comment
above ``_DOVECOT_SENTENCE`` says exactly when); every other line goes to the per-line
path, which stays the reference.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator

from relaypolicy.networks import parse_ip
from relaypolicy.watch.framing import HOST_PATTERN, TAG_PATTERN, LineFraming, LogLine
from relaypolicy.watch.parsers.base import (
    LoginEvent,
    MalformedHook,
    _Malformed,
    _new_event,
    _ServerParser,
)

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
