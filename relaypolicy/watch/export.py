"""Export the live IP table as a map file that an MTA reads (the classic pop-before-smtp design).

Theory of operation
-------------------
An MTA that cannot ask a policy service reads a file instead. :func:`render` turns the live
entries into the text of one of these maps (sans-I/O); an :class:`Exporter` keeps the file
on disk in step with the table. The watcher calls :meth:`Exporter.update` with the table's
live entries whenever they may have changed (the table's ``changes`` count moved: a
login, an expiry sweep, a ``ctl add``/``remove``, a fleet's change) and
:meth:`Exporter.maybe_write` on every tick; the file is rewritten only when its content
changes, and at most once per ``interval`` (one second by default), so a burst of logins
costs one write. A change held back by the rate limit is written on a later tick: entries
leave the map within about a second of expiring even when the log is quiet.

Formats, one live client per line, IPv4 before IPv6, each in address order:

=============  ==================================================  =======================
format         lines                                               read by
=============  ==================================================  =======================
postfix        ``192.0.2.7 OK``, ``2001:db8::7 OK``                Postfix access(5) map,
                                                                   ``texthash:`` or, through
                                                                   postmap, ``hash:``
postfix-cidr   ``192.0.2.7 OK``, ``2001:db8:1:2::/64 OK``          Postfix cidr_table(5)
exim           ``192.0.2.7``, ``"2001:db8::7"``                    Exim ``net-iplsearch;``
sendmail       ``Connect:192.0.2.7 RELAY``,                        Sendmail access db
               ``Connect:IPv6:2001:db8::7 RELAY``                  (after makemap)
plain          ``192.0.2.7``, ``2001:db8::7``                      anything else
=============  ==================================================  =======================

Every format but ``plain`` starts with the comment line :data:`HEADER`. Addresses are
written as the MTA formats the client address it looks up: IPv4-mapped IPv6 folded to
IPv4, IPv6 in the compressed form of ``inet_ntop(3)``, without brackets (access(5): "Do
not specify [], /, leading zeros, or non-compressed forms"). Exim's lsearch files end an
unquoted key at the first colon, so IPv6 keys are quoted; ``iplsearch`` then compares
them as addresses (a plain ``lsearch;`` item in a host list looks up the host *name*).
A table that groups IPv6 clients by prefix has network entries (``2001:db8:1:2::/64``):
``postfix-cidr``, ``exim`` and ``plain`` write them; Postfix's and Sendmail's indexed maps
match networks by cutting the compressed address at colons, which cannot express a
prefix, so ``postfix`` and ``sendmail`` leave them out (counted in
:attr:`Exporter.skipped`, logged).

Writing is atomic: a temporary file in the same directory, ``fsync``, ``rename`` over the
old file, ``fsync`` of the directory. A reader opens either the old file or the new one,
never half of one. For ``hash:`` and ``btree:`` the text is written to the temporary
file, ``postmap`` builds ``TEMP.db`` beside it, and both are renamed into place, the
database first; ``PATH.db`` is therefore never older than ``PATH`` (Postfix warns when
it is). Postfix daemons notice the replaced ``.db`` and reopen it; ``texthash:`` is read
when a daemon starts and "does not detect changes after the file is read" (postconf(5)).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from os import PathLike
from typing import TYPE_CHECKING, NamedTuple

from relaypolicy._files import (
    fsync_directory,
    fsync_path,
    remove_stale_temps,
    write_atomically,
    write_temp,
)
from relaypolicy.errors import ExportError

if TYPE_CHECKING:
    from relaypolicy.iptable.base import IpEntry

__all__ = ["EXPORT_FORMATS", "HEADER", "ExportError", "Exporter", "render", "write_atomically"]

log = logging.getLogger("relaypolicy.watch")

HEADER = "# written by relaypolicy; do not edit"

# postmap(1): the file each indexed type builds from FILE (only single-file types).
_POSTMAP_SUFFIX = {"hash": ".db", "btree": ".db"}
_BINARY_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")


class _Item(NamedTuple):
    """One entry, parsed: sorts IPv4 before IPv6, then by value."""

    version: int
    value: int
    prefix: int
    text: str
    network: bool


def _item(address: str) -> _Item | None:
    """The parsed form of an entry's address or IPv6 network; ``None`` if it is neither."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    try:
        if "/" in address:
            net = ipaddress.ip_network(address, strict=True)
            if net.prefixlen < net.max_prefixlen:
                text = f"{_text(net.network_address)}/{net.prefixlen}"
                return _Item(net.version, int(net.network_address), net.prefixlen, text, True)
            ip = net.network_address
        else:
            ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:192.0.2.7 is the client 192.0.2.7
    return _Item(ip.version, int(ip), ip.max_prefixlen, _text(ip), False)


def _text(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if ip.version == 4:
        return str(ip)
    # The C library's form, which is what Postfix and Sendmail print and look up
    # (it differs from Python's for the deprecated IPv4-compatible ::a.b.c.d).
    return socket.inet_ntop(socket.AF_INET6, ip.packed)


def _postfix(item: _Item) -> str | None:
    return None if item.network else f"{item.text} OK"


def _postfix_cidr(item: _Item) -> str | None:
    return f"{item.text} OK"


def _exim(item: _Item) -> str | None:
    return f'"{item.text}"' if item.version == 6 else item.text


def _sendmail(item: _Item) -> str | None:
    if item.network:
        return None
    return f"Connect:{item.text} RELAY" if item.version == 4 else f"Connect:IPv6:{item.text} RELAY"


def _plain(item: _Item) -> str | None:
    return item.text


# format -> (line of one item, or None when the format cannot express it; header line?)
_FORMATS: dict[str, tuple[Callable[[_Item], str | None], bool]] = {
    "postfix": (_postfix, True),
    "postfix-cidr": (_postfix_cidr, True),
    "exim": (_exim, True),
    "sendmail": (_sendmail, True),
    "plain": (_plain, False),
}
EXPORT_FORMATS: tuple[str, ...] = tuple(_FORMATS)


def _check_format(format: str) -> None:
    if format not in _FORMATS:
        raise ValueError(f"format: expected one of {', '.join(EXPORT_FORMATS)}, not {format!r}")


def _render(entries: Iterable[IpEntry | str], format: str) -> tuple[str, int]:
    """The map text and how many entries it had to leave out."""
    _check_format(format)
    line_of, header = _FORMATS[format]
    items: set[_Item] = set()
    skipped = 0
    for entry in entries:
        address = entry if isinstance(entry, str) else entry.address
        item = _item(address)
        if item is None:
            log.warning("export: not an address or network, left out: %r", address)
            skipped += 1
        else:
            items.add(item)
    lines = [HEADER] if header else []
    for item in sorted(items):
        line = line_of(item)
        if line is None:
            skipped += 1
        else:
            lines.append(line)
    return "".join(f"{line}\n" for line in lines), skipped


def render(entries: Iterable[IpEntry | str], format: str) -> str:
    """The text of a ``format`` map listing ``entries`` (table entries or address text).

    Sorted and de-duplicated, so the same live set always gives the same bytes. Entries
    the format cannot express (see the module docstring) are left out.
    """
    return _render(entries, format)[0]


def _find_postmap(postmap: str | PathLike[str] | None) -> str:
    if postmap is not None:
        found = shutil.which(os.fspath(postmap))
    else:
        search = os.pathsep.join([os.environ.get("PATH", os.defpath), *_BINARY_DIRS])
        found = shutil.which("postmap", path=search)
    if found is None:
        raise ExportError(
            f"postmap not found ({postmap or 'postmap'}): install Postfix, or use texthash"
        )
    return found


# --- the exporter ---------------------------------------------------------------------


class Exporter:
    """Keeps one map file in step with the live entries of an IP table.

    ``format`` is one of :data:`EXPORT_FORMATS`. For ``postfix``, ``map_type`` is
    ``"texthash"`` (the default: only the text file) or ``"hash"`` / ``"btree"``: the
    text file plus ``PATH.db`` built by ``postmap`` (``postmap`` names its path, else it
    is looked up on ``PATH`` and in the sbin directories; ``postmap_config`` is passed as
    ``-c`` for a Postfix whose ``main.cf`` is not in ``/etc/postfix``). A missing
    postmap raises :class:`ExportError` here, not at the first write.

    ``interval`` is the least time between two writes, on ``clock`` (default
    :func:`time.monotonic`). ``mode`` is the file's permission bits: 0644 by default,
    since the MTA reads the map as its own user (Exim does, after dropping root).
    """

    __slots__ = (
        "_clock",
        "_last_write",
        "_postmap",
        "_wanted",
        "_written",
        "errors",
        "format",
        "interval",
        "map_type",
        "mode",
        "path",
        "postmap_config",
        "skipped",
        "stale_removed",
        "writes",
    )

    def __init__(
        self,
        path: str | PathLike[str],
        format: str,
        *,
        map_type: str | None = None,
        postmap: str | PathLike[str] | None = None,
        postmap_config: str | PathLike[str] | None = None,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        mode: int = 0o644,
    ) -> None:
        _check_format(format)
        if map_type is not None and format != "postfix":
            raise ValueError(f"map_type: only the postfix format has one, not {format}")
        if map_type not in (None, "texthash", *_POSTMAP_SUFFIX):
            raise ValueError(
                f"map_type: expected texthash, {', '.join(_POSTMAP_SUFFIX)}, not {map_type!r}"
            )
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval < 0:
            raise ValueError(f"interval: expected seconds >= 0, not {interval!r}")
        self.path = os.fspath(path)
        self.format = format
        self.map_type = map_type
        self._postmap = _find_postmap(postmap) if map_type in _POSTMAP_SUFFIX else None
        self.postmap_config = None if postmap_config is None else os.fspath(postmap_config)
        self.interval = float(interval)
        self._clock = clock
        self.mode = mode
        self._wanted: bytes | None = None
        self._written: bytes | None = None  # what this exporter last put on disk
        self._last_write: float | None = None
        self.writes = 0
        self.errors = 0
        self.skipped = 0
        self.stale_removed: bool = False  # the temporaries of a killed process, once

    def __repr__(self) -> str:
        kind = f"{self.format}, {self.map_type}" if self.map_type else self.format
        return f"Exporter({self.path!r}, {kind}, writes={self.writes})"

    @property
    def pending(self) -> bool:
        """Whether the file on disk differs from the last :meth:`update`."""
        return self._wanted is not None and self._wanted != self._written

    def update(self, entries: Iterable[IpEntry | str]) -> bool:
        """Take the live entries (e.g. ``table.entries()``); whether a write is pending."""
        text, skipped = _render(entries, self.format)
        if skipped and skipped != self.skipped:
            log.warning(
                "export %s: %d entries left out (the %s format cannot express IPv6 "
                "networks; use postfix-cidr, exim or plain)",
                self.path,
                skipped,
                self.format,
            )
        self.skipped = skipped
        self._wanted = text.encode("utf-8")
        return self.pending

    def maybe_write(self, now: float | None = None) -> bool:
        """Write the pending content if ``interval`` has passed since the last write;
        whether it wrote. A failure is logged and counted in :attr:`errors`, and retried
        after ``interval``, so a full disk does not stop the watcher."""
        if not self.pending:
            return False
        if now is None:
            now = self._clock()
        if self._last_write is not None and now - self._last_write < self.interval:
            return False
        self._last_write = now  # attempts are rate-limited too
        try:
            self._write()
        except OSError as exc:
            self.errors += 1
            log.error("export %s: could not write the map: %s", self.path, exc)
            return False
        return True

    def write(self) -> None:
        """Write the content of the last :meth:`update` now, regardless of the rate limit
        and of whether it changed; raises :class:`OSError` or :class:`ExportError`."""
        if self._wanted is None:
            self._wanted = _render((), self.format)[0].encode("utf-8")
        self._last_write = self._clock()
        self._write()

    def close(self, *, clear: bool = True) -> None:
        """Stop exporting. With ``clear`` (the default) the map is emptied: nothing would
        remove its entries once they expire while the watcher is stopped (fail closed)."""
        if not clear:
            return
        self.update(())
        try:
            self.write()
        except OSError as exc:
            self.errors += 1
            log.error("export %s: could not clear the map: %s", self.path, exc)

    def _write(self) -> None:
        data = self._wanted
        assert data is not None
        if not self.stale_removed:
            # Before this process's first write: what a process killed mid-write left.
            for name in remove_stale_temps(self.path):
                log.info("export: removed %s, left by a process killed while writing", name)
            self.stale_removed = True
        if self._postmap is None:
            write_atomically(self.path, data, mode=self.mode)
        else:
            self._write_indexed(data)
        self._written = data
        self.writes += 1

    def _write_indexed(self, data: bytes) -> None:
        """The text and its postmap database, both renamed into place."""
        assert self._postmap is not None and self.map_type is not None
        suffix = _POSTMAP_SUFFIX[self.map_type]
        temporary = write_temp(self.path, data, self.mode)
        database = temporary + suffix  # postmap(1): "hash: ... named file_name.db"
        command = [self._postmap]
        if self.postmap_config is not None:
            command += ["-c", self.postmap_config]
        command.append(f"{self.map_type}:{temporary}")
        try:
            try:
                result = subprocess.run(
                    command,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    errors="replace",
                    timeout=60,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise ExportError(f"{' '.join(command)}: timed out") from None
            if result.returncode != 0:
                raise ExportError(
                    f"{' '.join(command)} failed (exit {result.returncode}): "
                    f"{result.stderr.strip()[:500]}"
                )
            fsync_path(database)
            # The database first: PATH.db is then never older than PATH.
            os.replace(database, self.path + suffix)
            os.replace(temporary, self.path)
        except BaseException:
            for name in (temporary, database):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)
            raise
        fsync_directory(os.path.dirname(self.path) or ".")
