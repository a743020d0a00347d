"""Read what ``postconf`` prints: ``main.cf`` parameters and ``master.cf`` services.

Theory of operation
-------------------
``relaypolicy postfix import`` takes Postfix's own view of its configuration rather than
parsing ``main.cf`` itself: ``postconf -x`` (every parameter, defaults included, with
``$name`` expanded by Postfix), ``postconf -n`` (only those set), ``postconf -M`` (the
services of ``master.cf``, ``-o`` overrides on the service line) and ``postconf -P`` (the
overrides as ``service/type/name = value``). One text may hold any mix of them, in any
order; each line says what it is:

- ``name = value``: a parameter (a later line for the same name wins);
- ``service/type/name = value``: a service override (``postconf -P``);
- ``service type private unpriv chroot wakeup maxproc command [args]``: a service
  (``postconf -M``, or a ``master.cf`` line), its ``-o name=value`` and
  ``-o { name = value }`` arguments being overrides;
- a line starting with white space continues the previous one (``postconf -Mf``, or a
  ``main.cf`` with folded values); ``#`` starts a comment line; blank lines are skipped.

:func:`expand` replaces ``$name``, ``${name}`` and ``$(name)`` as Postfix does, and refuses
the conditional forms (``${name?text}``, ``${name:text}``, ``${{a} == {b} ? ...}``), which
only ``postconf`` itself should evaluate.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

from relaypolicy.errors import ConfigError

__all__ = ["Postconf", "Service", "expand", "parse_postconf", "split_list"]

_NAME = re.compile(r"[A-Za-z0-9_]+")
_PARAM = re.compile(r"^([A-Za-z0-9_]+)\s*=\s?(.*)$")
_OVERRIDE = re.compile(r"^([^\s/]+)/([a-z-]+)/([A-Za-z0-9_]+)\s*=\s?(.*)$")
_SERVICE_TYPES = ("inet", "unix", "unix-dgram", "fifo", "pass")
_MAX_DEPTH = 100  # Postfix's own limit on nested $name expansion


class Service(NamedTuple):
    """One ``master.cf`` service: ``name`` (``smtp``, ``submission``, ``127.0.0.1:2525``),
    ``type`` (``inet``, ``pass``...), ``command`` (``smtpd``) and its ``-o`` overrides."""

    name: str
    type: str
    command: str
    overrides: dict[str, str]


class Postconf(NamedTuple):
    """The parameters and services read from ``postconf`` output."""

    params: dict[str, str]
    services: list[Service]


def split_list(text: str) -> list[str]:
    """Split a Postfix list at commas and white space, keeping ``{ ... }`` groups whole.

    ``permit_mynetworks, check_policy_service { inet:127.0.0.1:9998, default_action=DEFER }``
    gives three items, the last with its braces. An unbalanced brace raises
    :class:`ConfigError`.
    """
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"unbalanced '}}' in {text!r}")
        if depth == 0 and (char.isspace() or char == ","):
            if current:
                items.append("".join(current))
                current = []
            continue
        current.append(char)
    if depth:
        raise ConfigError(f"unbalanced '{{' in {text!r}")
    if current:
        items.append("".join(current))
    return items


def _unbrace(text: str) -> str:
    """``{ name = value }`` -> ``name = value``; anything else unchanged."""
    stripped = text.strip()
    if stripped.startswith("{") and stripped.endswith("}"):
        return stripped[1:-1].strip()
    return stripped


def _service_words(line: str) -> list[str]:
    """The white-space separated words of a service line, ``{ ... }`` groups whole."""
    words: list[str] = []
    current: list[str] = []
    depth = 0
    for char in line:
        if char == "{":
            depth += 1
        elif char == "}":
            depth = max(0, depth - 1)
        if depth == 0 and char.isspace():
            if current:
                words.append("".join(current))
                current = []
            continue
        current.append(char)
    if current:
        words.append("".join(current))
    return words


def _parse_service(line: str, where: str) -> Service:
    words = _service_words(line)
    if len(words) < 8 or words[1] not in _SERVICE_TYPES:
        raise ConfigError(f"{where}: not a master.cf service line: {line.strip()!r}")
    overrides: dict[str, str] = {}
    args = words[8:]
    index = 0
    while index < len(args):
        arg = args[index]
        setting = None
        if arg == "-o" and index + 1 < len(args):
            setting = args[index + 1]
            index += 1
        elif arg.startswith("-o") and len(arg) > 2:
            setting = arg[2:]
        index += 1
        if setting is None:
            continue
        name, equals, value = _unbrace(setting).partition("=")
        if not equals or not _NAME.fullmatch(name.strip()):
            raise ConfigError(f"{where}: {words[0]}: bad -o option {setting!r}")
        overrides[name.strip()] = _unbrace(value.strip()) if value.strip() else ""
    return Service(words[0], words[1], words[7], overrides)


def parse_postconf(text: str, *, source: str = "<postconf>") -> Postconf:
    """Parameters and services from ``postconf -n``/``-x``/``-M``/``-P`` output (mixed).

    Raises :class:`ConfigError` naming ``source`` and the line for a line that is none of
    the forms in the module's docstring.
    """
    logical: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0].isspace():
            if not logical:
                raise ConfigError(f"{source}:{number}: a continuation line with nothing before")
            first, previous = logical[-1]
            logical[-1] = (first, f"{previous} {raw.strip()}")
            continue
        logical.append((number, raw.rstrip()))
    params: dict[str, str] = {}
    services: dict[tuple[str, str], Service] = {}
    for number, line in logical:
        where = f"{source}:{number}"
        if match := _OVERRIDE.match(line):
            name, kind, param, value = match.groups()
            service = services.setdefault((name, kind), Service(name, kind, "", {}))
            service.overrides[param] = value.strip()
        elif match := _PARAM.match(line):
            params[match.group(1)] = match.group(2).strip()
        else:
            service = _parse_service(line, where)
            known = services.get((service.name, service.type))
            if known is not None:  # -P lines came first: keep their (expanded) values
                service.overrides.update(known.overrides)
            services[(service.name, service.type)] = service
    return Postconf(params, list(services.values()))


_REFERENCE = re.compile(r"\$(?:([A-Za-z0-9_]+)|\{([^{}]*)\}|\(([^()]*)\))")


def expand(value: str, params: Mapping[str, str], *, _depth: int = 0) -> str:
    """``value`` with every ``$name``, ``${name}`` and ``$(name)`` replaced, recursively.

    Raises :class:`KeyError` naming a parameter that ``params`` does not hold (its value
    must come from ``postconf`` on the host), :class:`ConfigError` for a conditional form
    or a loop.
    """
    if _depth > _MAX_DEPTH:
        raise ConfigError(f"$name expansion nested deeper than {_MAX_DEPTH}: a loop?")

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group is not None)
        if not _NAME.fullmatch(name):
            raise ConfigError(
                f"{match.group(0)!r}: a conditional expansion; let postconf evaluate it "
                "(postconf -x, or --config-directory)"
            )
        if name not in params:
            raise KeyError(name)
        return expand(params[name], params, _depth=_depth + 1)

    if "${{" in value:
        raise ConfigError(
            f"{value!r}: a conditional expansion; let postconf evaluate it "
            "(postconf -x, or --config-directory)"
        )
    return _REFERENCE.sub(replace, value)
