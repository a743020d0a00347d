"""The base of the login parsers: the event, the protocol, and the shared server parser.

:class:`LoginEvent` is what every parser gives, :class:`LoginParser` what the watcher asks
of one. :class:`LineParser` counts malformed lines and turns an address into an event;
``_ServerParser`` adds the three steps every server's parser takes (see the theory of
operation in :mod:`relaypolicy.watch.parsers`): the fast-path marker, the framing with the
server's program tags, and the server's own ``_fields``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple, Protocol

from relaypolicy.networks import normalize_ip
from relaypolicy.watch.framing import LineFraming, LogLine

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
