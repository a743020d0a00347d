"""The saved IP table: a small, versioned JSON file with a checksum, written atomically.

Format (version 2), one entry per line so that ``grep`` works on it::

    {"format": "relaypolicy-iptable", "version": 2, "ipv6_prefix": 128, "sha256": "9f2c…",
    "entries": [
    ["203.0.113.7", 1767225600.25, "alice"],
    ["2001:db8::/64", 1767225671.5, null]
    ]}

Each entry is ``[address, expires_at, user]``: the canonical address (or IPv6 network,
for a table that groups by prefix), the expiry as wall-clock Unix time (seconds, a finite
number), and the login name or ``null``. Wall-clock time, because the table's own
monotonic clock starts afresh at every boot.

``sha256`` is the SHA-256 (hex) of the line ``relaypolicy-iptable 2 <ipv6_prefix>``
followed by each entry as compact JSON (``["203.0.113.7",1767225600.25,"alice"]``), each
line ending in a newline. A file damaged in any way that changes what it says (a flipped
bit, a truncated or edited entry) fails the check and is refused, rather than loaded as
another set of entries. Version 1 files (the same without ``sha256``) are still read.

The file is written to a temporary file in the same directory (mode 0600: it names users
and where they are), flushed to disk with ``fsync``, then renamed over the old one, so a
crash leaves either the old table or the new one, never half of one. It is read without
blocking: a FIFO, a device or a directory at the path is refused at once.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import os
from collections.abc import Iterable
from os import PathLike

from relaypolicy._files import NotRegularFileError, read_regular, write_atomically
from relaypolicy.iptable.base import TableFileError
from relaypolicy.networks import parse_ip

__all__ = ["FORMAT", "VERSION", "read_entries", "write_entries"]

FORMAT = "relaypolicy-iptable"
VERSION = 2
_READABLE = (1, 2)

Row = tuple[str, float, str | None]


def _digest(version: int, ipv6_prefix: object, rows: Iterable[object]) -> str:
    """The ``sha256`` field: see the module docstring."""
    digest = hashlib.sha256(f"{FORMAT} {version} {ipv6_prefix}\n".encode())
    for row in rows:
        digest.update(json.dumps(row, separators=(",", ":"), allow_nan=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def write_entries(
    path: str | PathLike[str], entries: Iterable[Row], *, ipv6_prefix: int = 128
) -> None:
    """Write ``entries`` (address, wall-clock expiry, user) to ``path`` atomically."""
    path = os.fspath(path)
    rows = [list(row) for row in entries]
    header = json.dumps(
        {
            "format": FORMAT,
            "version": VERSION,
            "ipv6_prefix": ipv6_prefix,
            "sha256": _digest(VERSION, ipv6_prefix, rows),
        }
    )
    lines = [header[:-1] + ', "entries": [']
    lines.append(",\n".join(json.dumps(row, allow_nan=False) for row in rows))
    lines.append("]}\n")
    data = "\n".join(lines).encode("utf-8")
    write_atomically(path, data, mode=0o600)  # user names: the owner only


def read_entries(path: str | PathLike[str]) -> list[Row]:
    """The entries saved in ``path``; ``[]`` when the file does not exist.

    Raises :class:`TableFileError` naming the path and what is wrong for anything that is
    not a valid saved table: not a regular file, not JSON (or nested too deeply), another
    format or version, a checksum that does not match, a malformed entry.
    """
    name = os.fspath(path)
    data = read_state_file(name)
    if data is None:
        return []
    try:
        document = json.loads(data, parse_constant=_refuse_constant)
    except RecursionError:
        raise TableFileError(f"{name}: not a saved IP table: JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise TableFileError(f"{name}: not a saved IP table: not JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise TableFileError(f'{name}: not a saved IP table (no "format": "{FORMAT}")')
    version = document.get("version")
    if version not in _READABLE or isinstance(version, bool):
        raise TableFileError(
            f"{name}: unsupported IP table version {version!r} "
            f"(this release reads {' and '.join(map(str, _READABLE))})"
        )
    entries = document.get("entries")
    if not isinstance(entries, list):
        raise TableFileError(f'{name}: "entries" is not a list')
    _check_digest(name, document, version, entries)
    rows: list[Row] = []
    for index, entry in enumerate(entries):
        problem = _entry_problem(entry)
        if problem is not None:
            raise TableFileError(f"{name}: entry {index}: {problem}: {entry!r:.200}")
        rows.append((entry[0], float(entry[1]), entry[2]))
    return rows


def _check_digest(
    name: str, document: dict[str, object], version: int, entries: list[object]
) -> None:
    given = document.get("sha256")
    if version == 1:
        if given is not None:  # a damaged version 2 file, not a version 1 one
            raise TableFileError(f'{name}: version 1 has no "sha256"; the file is damaged')
        return
    if not isinstance(given, str):
        raise TableFileError(f'{name}: no "sha256" checksum')
    try:
        expected = _digest(version, document.get("ipv6_prefix"), entries)
    except (ValueError, TypeError):  # NaN cannot get here; keep the error specific anyway
        expected = ""
    if given != expected:
        raise TableFileError(
            f"{name}: checksum mismatch: the file is damaged (sha256 {given:.16}…, "
            f"content {expected:.16}…)"
        )


def read_state_file(path: str) -> bytes | None:
    """The bytes of a state file (snapshot or journal); ``None`` when it does not exist.

    Raises :class:`TableFileError` for a path that is not a regular file (a FIFO would
    block the start) or cannot be read, naming it.
    """
    try:
        return read_regular(path)
    except FileNotFoundError:
        return None
    except NotRegularFileError as exc:
        raise TableFileError(str(exc)) from None
    except OSError as exc:
        raise TableFileError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _refuse_constant(constant: str) -> object:
    raise ValueError(f"{constant} is not a number this format allows")


def _entry_problem(entry: object) -> str | None:
    if not isinstance(entry, list) or len(entry) != 3:
        return "expected [address, expires_at, user]"
    address, expires, user = entry
    if not isinstance(address, str):
        return "the address is not a string"
    if "/" in address:
        try:
            network = ipaddress.IPv6Network(address, strict=True)
        except ValueError:
            return "not an IPv6 network"
        if network.prefixlen == 0:
            return "not an IPv6 network"
    else:
        try:
            parse_ip(address)
        except ValueError:
            return "not an IP address"
    if isinstance(expires, bool) or not isinstance(expires, int | float):
        return "expires_at is not a number"
    try:
        if not math.isfinite(float(expires)):
            return "expires_at is not finite"
    except OverflowError:
        return "expires_at is out of range"
    if user is not None and not isinstance(user, str):
        return "user is neither a string nor null"
    return None
