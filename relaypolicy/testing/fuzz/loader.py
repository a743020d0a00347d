"""The ``loader`` target: bytes as a saved IP table file.

An input is the content of a table file, written to a file in a private temporary
directory and read back with :func:`relaypolicy.iptable.persist.read_entries` and
:meth:`ExpiringIpTable.load <relaypolicy.iptable.memory.ExpiringIpTable.load>` (fixed
clocks). Inputs are valid files as ``write_entries`` writes them, their mutations,
JSON-aware edits (deep nesting, huge and non-finite numbers, escaped surrogates, other
encodings) and random bytes. The oracle:

- either it loads, or it raises :class:`~relaypolicy.iptable.base.TableFileError`;
  nothing else;
- what loads is well formed: each row an IP address (or IPv6 network), a finite expiry,
  a user that is a string or ``None``; the table holds no more entries than the rows;
- ``load`` takes every file ``read_entries`` takes.
"""

from __future__ import annotations

import ipaddress
import math
import os
import random
import tempfile
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from relaypolicy.iptable.base import TableFileError
from relaypolicy.iptable.memory import ExpiringIpTable
from relaypolicy.iptable.persist import read_entries
from relaypolicy.testing.fuzz.engine import ORACLE, Problem
from relaypolicy.testing.fuzz.mutate import mutate_bytes

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = ["LoaderTarget"]

WALL_NOW = 1_767_225_000.0
HEADER = b'{"format": "relaypolicy-iptable", "version": 1, "ipv6_prefix": 128, "entries": [\n'
VALID = (
    HEADER + b'["203.0.113.7", 1767225600.25, "alice"],\n'
    b'["2001:db8::7", 1767225671.5, null],\n["198.51.100.1", 1767225000, "b\\u00f6b"]\n]}\n'
)
SEEDS = (
    VALID,
    HEADER + b"\n]}\n",
    HEADER.replace(b"128", b"64") + b'["2001:db8::/64", 1767225671.5, null]\n]}\n',
    VALID.replace(b"1767225600.25", b"1e999"),
    VALID.replace(b"1767225600.25", b"9" * 5000),
    VALID.replace(b'"alice"', b'"\\ud800"'),
    VALID.replace(b"203.0.113.7", b"::ffff:203.0.113.7"),
    VALID.replace(b'"version": 1', b'"version": true'),
    VALID.decode().encode("utf-16"),
    b"\xef\xbb\xbf" + VALID,
    b"",
    b"null",
)


Rows = list[tuple[str, float, str | None]]


def _nested(rng: random.Random, data: bytes) -> bytes:
    depth = rng.choice((10, 900, 1100, 5000, 50_000))
    opener, closer = (b"[", b"]") if rng.random() < 0.7 else (b'{"a":', b"}")
    if rng.random() < 0.5:  # deep inside the entries, or around the whole document
        at = data.find(b"[\n")
        if at >= 0:
            return data[: at + 1] + opener * depth + closer * depth + data[at + 1 :]
    return opener * depth + data + closer * depth


def _row_problems(rows: Rows) -> list[Problem]:
    for row in rows:
        address, expires, user = row
        try:
            if "/" in address:
                ipaddress.IPv6Network(address)
            else:
                ipaddress.ip_address(address.strip().strip("[]").removeprefix("IPv6:"))
        except ValueError:
            return [Problem(ORACLE, "loaded a row that is no address", repr(row))]
        if not isinstance(expires, float) or not math.isfinite(expires):
            return [Problem(ORACLE, "loaded an expiry that is not a finite number", repr(row))]
        if user is not None and not isinstance(user, str):
            return [Problem(ORACLE, "loaded a user that is not a string", repr(row))]
    return []


class LoaderTarget:
    """Bytes through the saved-table loader (or the ``read`` function given: a test gives
    a broken one to see the oracle fire)."""

    name = "loader"

    def __init__(self, read: Callable[[str], Rows] = read_entries) -> None:
        self.read = read
        self._directory: tempfile.TemporaryDirectory[str] | None = None
        self._path = ""

    def corpus(self) -> Sequence[bytes]:
        return SEEDS

    def mutate(self, rng: random.Random, corpus: Sequence[bytes]) -> bytes:
        data = rng.choice(corpus)
        roll = rng.random()
        if roll < 0.02:
            return _nested(rng, data)
        if roll < 0.05:
            return rng.randbytes(rng.randint(0, 300))
        return mutate_bytes(rng, data, corpus)

    @property
    def path(self) -> str:
        """The file each input is written to (in a directory removed at exit)."""
        if self._directory is None:
            # In memory where the system has it: a million files written cost minutes on disk.
            memory = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # noqa: S108
            self._directory = tempfile.TemporaryDirectory(prefix="relaypolicy-fuzz-", dir=memory)
            self._path = os.path.join(self._directory.name, "table.json")
        return self._path

    def check(self, value: bytes) -> list[Problem]:
        path = self.path
        with open(path, "wb") as file:
            file.write(value)
        try:
            rows = self.read(path)
        except TableFileError:
            return []
        problems = _row_problems(rows)
        try:
            table = ExpiringIpTable.load(path, clock=lambda: 1000.0, wall_clock=lambda: WALL_NOW)
        except TableFileError as exc:
            return [*problems, Problem(ORACLE, "load refused what read_entries read", str(exc))]
        if len(table) > len(rows):
            problems.append(Problem(ORACLE, "more entries than rows", f"{len(table)}"))
        return problems

    def strategy(self) -> SearchStrategy[bytes]:
        # Hypothesis is a development extra: its strategies load only for that engine.
        from relaypolicy.testing.fuzz.strategies import table_files

        return table_files(SEEDS)
