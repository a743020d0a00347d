"""Reading one section of a TOML configuration: typed getters that name the key.

Every subsystem parses its own section (``[serve]`` in :mod:`relaypolicy.postfix.settings`,
``[watch]`` in :mod:`relaypolicy.watch.settings`, ...) through a :class:`Section`, so a
port, a ``HOST:PORT``, a duration or a list of strings is read one way everywhere, and
every error is a :class:`~relaypolicy.errors.ConfigError` whose message starts with the
full key (``serve.listen[0]: ...``). :func:`locate` finds that key's line in the file
text, so the loader can say where it is.

Pure: no files, no sockets; the standard library only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

from relaypolicy.errors import ConfigError

__all__ = ["Section", "locate", "parse_host_port", "parse_port"]

T = TypeVar("T")
_MISSING: Any = object()


def parse_port(text: str) -> int:
    """A TCP port, 1 to 65535, written in ASCII digits; :class:`ValueError` if not."""
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"expected a port number 1-65535, got {text!r}")
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {text!r} (expected 1-65535)")
    return port


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> ``(host, port)``; :class:`ValueError` if not.

    This is the one reading of an address to listen on or connect to: the Postfix
    service's listeners, smtpd's ``listen`` and ``smarthost`` and the command lines use it.
    """
    host, colon, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if not colon or not host or (":" in host and not bracketed):
        raise ValueError(f"expected HOST:PORT or [IPv6]:PORT, got {text!r}")
    if port.isascii() and port.isdigit() and port:
        try:
            return host, parse_port(port)
        except ValueError:
            raise ValueError(f"port out of range in {text!r} (expected 1-65535)") from None
    raise ValueError(f"expected HOST:PORT with a port 1-65535, got {text!r}")


class Section:
    """One table of the configuration, read key by key.

    ``where`` is the table's key path (``"serve"``, ``"watch.export[0]"``, ``""`` for the
    document itself); ``known`` the keys it may hold: any other key is an error naming it.
    A missing table reads as an empty one.
    """

    __slots__ = ("table", "where")

    def __init__(self, table: object, where: str, known: Collection[str]) -> None:
        if table is None:
            table = {}
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table, got {_show(table)}")
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise ConfigError(
                f"{self._join(where, unknown[0])}: unknown key "
                f"(expected one of {', '.join(sorted(known))})"
            )
        self.table: Mapping[str, Any] = table
        self.where = where

    @staticmethod
    def _join(where: str, name: str) -> str:
        return f"{where}.{name}" if where else name

    def key(self, name: str) -> str:
        """The full key path of ``name`` in this section, for messages."""
        return self._join(self.where, name)

    def __contains__(self, name: object) -> bool:
        return name in self.table

    def error(self, name: str, message: str) -> ConfigError:
        """A :class:`ConfigError` about key ``name``."""
        return ConfigError(f"{self.key(name)}: {message}")

    def section(self, name: str, known: Collection[str]) -> Section:
        """The sub-table ``name`` (empty when absent)."""
        return Section(self.table.get(name), self.key(name), known)

    def _typed(self, name: str, kind: type[T] | tuple[type, ...], expected: str, default: T) -> T:
        value = self.table.get(name, _MISSING)
        if value is _MISSING:
            return default
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.error(name, f"expected {expected}, got {value!r}")
        if not isinstance(value, kind):
            raise self.error(name, f"expected {expected}, got {_show(value)}")
        return value  # type: ignore[return-value]

    def required(self, name: str, why: str = "") -> None:
        """Raise unless ``name`` is present."""
        if name not in self.table:
            raise self.error(name, "missing" + (f" ({why})" if why else ""))

    def string(
        self,
        name: str,
        default: str = "",
        *,
        expected: str = "a string",
        choices: Collection[str] = (),
        nonempty: bool = False,
        one_line: bool = False,
    ) -> str:
        """A string; with ``choices``, one of them; ``one_line`` refuses CR, LF and NUL."""
        value = self._typed(name, str, expected, default)
        if choices and value not in choices:
            raise self.error(name, f"expected {expected}, got {value!r}")
        if nonempty and not value:
            raise self.error(name, f"expected {expected}, got an empty string")
        if one_line and any(c in value for c in "\r\n\x00"):
            raise self.error(name, f"expected {expected} on one line")
        return value

    def boolean(self, name: str, default: bool = False) -> bool:
        """``true`` or ``false``."""
        return self._typed(name, bool, "true or false", default)

    def integer(self, name: str, default: int, *, low: int, high: int, expected: str = "") -> int:
        """An integer from ``low`` to ``high``."""
        expected = expected or f"an integer from {low} to {high}"
        value = self._typed(name, int, expected, default)
        if not low <= value <= high:
            raise self.error(name, f"expected {expected}, got {value}")
        return value

    def seconds(self, name: str, default: float, *, low: float, high: float) -> float:
        """A duration in seconds (an integer or a float), from ``low`` to ``high``."""
        value = float(self._typed(name, (int, float), "seconds", default))
        if math.isnan(value) or not low <= value <= high:
            raise self.error(name, f"expected seconds from {low:g} to {high:g}, got {value:g}")
        return value

    def strings(
        self, name: str, default: tuple[str, ...] = (), *, item: str = "a string"
    ) -> tuple[str, ...]:
        """A list of strings; ``item`` says what each is, for messages."""
        value = self._typed(name, list, f"a list of {_plural(item)}", _MISSING)
        if value is _MISSING:
            return default
        for index, entry in enumerate(value):
            if not isinstance(entry, str):
                raise ConfigError(f"{self.key(name)}[{index}]: expected {item}, got {entry!r}")
        return tuple(value)

    def host_port(self, name: str, default: str = "") -> tuple[str, int] | None:
        """``HOST:PORT`` (see :func:`parse_host_port`), or ``None`` when empty or absent."""
        text = self.string(name, default, expected="HOST:PORT")
        if not text:
            return None
        try:
            return parse_host_port(text)
        except ValueError as exc:
            raise self.error(name, str(exc)) from None

    def login_map(self, name: str) -> dict[str, tuple[str, ...]] | None:
        """A table of ``address = [logins]`` (a single login may be a string)."""
        value = self._typed(name, dict, "a table of address = [logins]", _MISSING)
        if value is _MISSING:
            return None
        inner = Section(value, self.key(name), value.keys())
        return {
            address: (logins,) if isinstance(logins, str) else inner.strings(address)
            for address, logins in value.items()
        }


def _plural(item: str) -> str:
    """``"a string"`` -> ``"strings"``, ``"an address (...)"`` -> ``"addresses"``."""
    noun = item.split(" (", maxsplit=1)[0].split(" ", 1)[-1]
    return noun + ("es" if noun.endswith("s") else "s")


def _show(value: object) -> str:
    return f"{value!r:.80}"


_INDEX = re.compile(r"\[(\d+)\]")
_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_ASSIGN = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*=""")


def _name(part: str) -> str:
    part = part.strip()
    return part[1:-1] if part[:1] in "\"'" and part[-1:] == part[:1] else part


def locate(text: str, key: str) -> int | None:
    """The line (1-based) of ``key`` (``serve.listen[0]``, ``watch.export[1].path``) in
    the TOML ``text``, or of the closest table that holds it; ``None`` when not found.

    A best effort for error messages: it reads headers (``[a.b]``, ``[[a.b]]``) and
    ``name =`` lines, which is how configuration files are written.
    """
    parts: list[tuple[str, int | None]] = []
    for segment in key.split("."):
        match = _INDEX.search(segment)
        name = segment[: match.start()] if match else segment
        parts.append((name, int(match.group(1)) if match else None))
    if not parts or not parts[0][0]:
        return None
    path = [name for name, _ in parts]
    best: int | None = None
    table: list[str] = []
    selected = True  # the current table holds the key (or is the document)
    seen: dict[tuple[str, ...], int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            table = [_name(p) for p in header.group(2).split(".")]
            occurrence = seen.get(tuple(table), -1) + 1
            seen[tuple(table)] = occurrence
            wanted = parts[len(table) - 1][1] if len(table) <= len(parts) else None
            selected = table == path[: len(table)] and wanted in (None, occurrence)
            if selected:
                best = number
                if len(table) == len(path):
                    return number
            continue
        assign = _ASSIGN.match(line)
        if (
            assign
            and selected
            and len(table) < len(path)
            and _name(assign.group(1)) == path[len(table)]
        ):
            return number
    return best
