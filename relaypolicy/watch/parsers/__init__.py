"""Successful POP3/IMAP logins, read from the log lines of the servers people run.

Theory of operation
-------------------
Each parser turns one log line into a :class:`LoginEvent` ``(time, address, user,
server)`` or ``None``. Failed logins, logouts, and every other line give ``None``.

User names, SMTP envelope addresses and HELO names are chosen by strangers and end up
in the same mail log. CVE-2001-1075 (poprelayd) matched a POP login anywhere in a line,
so a ``MAIL FROM:`` shaped like one, logged by the MTA, opened the relay. So, for every
server:

1. *Fast path.* A line without the server's success phrase (``n: user=<`` for Dovecot,
   whose ``Login: user=<`` and ``Logged in: user=<`` both end so) is dropped with one
   substring test, before any regular expression runs.
2. *Frame.* :class:`~relaypolicy.watch.framing.LineFraming` splits the line into time,
   host, program tag and message. The tag must be the server's own (``dovecot``,
   ``cyrus/imap``, ...; configurable with ``programs=``); a Postfix line whose
   ``from=<...>`` holds a perfect Dovecot sentence has the tag ``postfix/smtpd``.
3. *Structure.* The message must *begin* with the server's success sentence, and the
   address is read from the server's own field, located by the fixed structure of the
   sentence, never by searching for ``rip=`` or ``[`` wherever it appears. Where the
   user name (free text, not escaped by any of these servers) comes before the
   server's fields, it ends at the *last* separator before them (Dovecot's
   ``>, method=``, Courier's ``, ip=[``, UW's `` host=`` with the ``[ip]`` that ends
   the line, qpopper's ``" at (``), and the fields after it must have the server's
   structure. Text in a user name can only ever precede the real fields: it can
   neither move nor replace them.

A line from the right program that begins like a success but fails the structure is
*malformed*: the parser counts it in ``malformed`` and passes ``(line, reason)`` to
``on_malformed`` if one was given (to log it: a crafted or damaged line deserves a
look), and returns ``None``. Lines that are simply not logins are not counted.

Blocks. ``parse_block(text)`` reads a whole read of the log at once (the follower reads
64 KiB at a time) and gives exactly what ``parse_lines(text.split("\n"))`` gives. It
skips the lines without the server's phrase with one search over the block, in C,
instead of one test per line. For Dovecot that search is a regular expression that also
matches the fields after the user name in their usual order, and a line so matched is
read on the spot when its head (time, host, tag, service) is one already seen; the
checks are the same rules as above, spelled so that any line they do not settle (another
framing, a field order Dovecot does not use, anything malformed) goes to the per-line
path, which stays the reference (see ``_DOVECOT_SENTENCE`` in
:mod:`~relaypolicy.watch.parsers.dovecot`).

Addresses come out canonical (:func:`relaypolicy.networks.normalize_ip`): IPv4-mapped
IPv6 folded to IPv4, IPv6 compressed. Times are epoch seconds (see the framing for
year-less syslog times).

Where things are: :mod:`~relaypolicy.watch.parsers.base` (the event, the protocol, the
shared server parser), :mod:`~relaypolicy.watch.parsers.dovecot` (Dovecot, with the block
path), :mod:`~relaypolicy.watch.parsers.servers` (Courier, Cyrus, qpopper, UW),
:mod:`~relaypolicy.watch.parsers.regex` (a user's pattern),
:mod:`~relaypolicy.watch.parsers.sessions` (Dovecot's session ids); choosing a parser by
name is here.
"""

from __future__ import annotations

from relaypolicy.watch.framing import LineFraming
from relaypolicy.watch.parsers.base import (
    LineParser,
    LoginEvent,
    LoginParser,
    MalformedHook,
    _ServerParser,
)
from relaypolicy.watch.parsers.dovecot import DovecotParser
from relaypolicy.watch.parsers.regex import RegexParser
from relaypolicy.watch.parsers.servers import CourierParser, CyrusParser, QpopperParser, UwParser
from relaypolicy.watch.parsers.sessions import DovecotSessions, SessionEnd

__all__ = [
    "PARSER_FORMATS",
    "CourierParser",
    "CyrusParser",
    "DovecotParser",
    "DovecotSessions",
    "LineParser",
    "LoginEvent",
    "LoginParser",
    "QpopperParser",
    "RegexParser",
    "SessionEnd",
    "UwParser",
    "parser_for",
]


# Choosing a parser by name ------------------------------------------------------------

_PARSERS: dict[str, type[_ServerParser]] = {
    "dovecot": DovecotParser,
    "courier": CourierParser,
    "cyrus": CyrusParser,
    "qpopper": QpopperParser,
    "uw": UwParser,
}
PARSER_FORMATS = (*_PARSERS, "regex:PATTERN")


def parser_for(
    format: str,
    *,
    framing: LineFraming | None = None,
    on_malformed: MalformedHook | None = None,
) -> LineParser:
    """The parser a configuration names: ``dovecot``, ``courier``, ``cyrus``,
    ``qpopper``, ``uw`` or ``regex:PATTERN``."""
    if format.startswith("regex:"):
        return RegexParser(format[6:], framing=framing, on_malformed=on_malformed)
    parser = _PARSERS.get(format.strip().lower())
    if parser is None:
        raise ValueError(
            f"unknown login log format {format!r}: expected one of {', '.join(PARSER_FORMATS)}"
        )
    return parser(framing=framing, on_malformed=on_malformed)
