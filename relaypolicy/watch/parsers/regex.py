"""A parser built from a user's regular expression (``format = "regex:PATTERN"``)."""

from __future__ import annotations

import re

from relaypolicy.watch.framing import LineFraming
from relaypolicy.watch.parsers.base import LineParser, LoginEvent, MalformedHook


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
