"""Follow a log as ``tail -F`` should, and turn its logins into IP table entries.

Theory of operation
-------------------
:class:`LogFollower` keeps the log open and reads what was appended each time
:meth:`~LogFollower.poll` is called; nothing happens between polls, so tests call it
directly and :func:`follow` is a small asyncio loop around it.
:class:`~relaypolicy.watch.watcher.Watcher` parses the lines and records the logins in a
table; :meth:`~relaypolicy.watch.watcher.Watcher.run` drives both, sweeps
expired entries once a second whether or not lines arrive, and keeps exported maps
(:mod:`relaypolicy.watch.export`) in step.

Lines. Only complete lines are returned: bytes after the last newline wait for the rest
of their line. Lines are decoded as UTF-8 with ``errors="replace"``: a bad byte becomes
U+FFFD (counted in ``undecodable``) and the line is still parsed, for an address can
follow a mangled user name; lone surrogates (``surrogateescape``) would instead make
every later encode of the text (a JSON log line, the control socket) raise. A line
longer than ``max_line`` bytes (64 KiB) is dropped, up to its newline, and counted in
``overlong``: no log line is that long, and the buffer stays bounded.

Rotation. Before the open file is read, it is checked for truncation in place
(``copytruncate``): shorter than our position, or the byte before our position is not
the one we read there (that catches a file truncated and refilled past our position
between two polls); it is then read from 0. Once it is read to its end, the path is
stat'ed:

- another (device, inode) at the path: the log was renamed away and a new one created
  (logrotate's ``create``). The old file was read to its end first; it stays open for
  ``rotation_grace`` seconds after its last growth, read first on every poll, since the
  writer keeps writing to it until it reopens (syslogd on SIGHUP); the new file is read
  from its start. While we hold the old file open its inode cannot be reused, so a new
  file is always told from the old one;
- no file: keep the open one (its writer may not have reopened yet) and look again at
  the next poll; a file that then appears is a new file, read from its start.

State. With ``state_path``, the position is written atomically as one JSON line by
:meth:`~LogFollower.save_state`, which the caller calls once the lines that
:meth:`~LogFollower.poll` returned are handled for good (recorded in a table and made
durable: :func:`follow` takes a ``sync`` for that). Neither ``poll`` nor ``close`` saves
it: a process that dies between reading lines and making them durable reads them again
at its next start. The state holds the device, inode, the offset after the last
complete line, and a fingerprint (SHA-256 of the file's first KiB, or of all of it
before the offset when shorter). On start, the log is opened at the saved offset when
inode and fingerprint match and a line ends there. With the same inode but another
fingerprint, the log was truncated, or is a new file given the inode that the rotation
of ours freed: it is read from 0. With another inode, the log was rotated while we were
stopped: the old file is looked for by inode (and fingerprint) among the files in the
log's directory whose names start with the log's (``mail.log.1``,
``mail.log-20260101``; compressed ones are skipped), its rest is read, and then the new
log from 0. Without a state file the log is read from its start (unless
``start_at_end``): logins from before the start still get what remains of their time.

Where things are: one open file and the state file's record are in
:mod:`~relaypolicy.watch.follow.source`, the steps that look at the path (rotation,
truncation, recovery after a stop) in :mod:`~relaypolicy.watch.follow.rotation`; reading
lines, saving the position and the asyncio loop are here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from os import PathLike
from typing import NamedTuple

from relaypolicy._files import remove_stale_temps
from relaypolicy.watch.export import write_atomically
from relaypolicy.watch.follow.rotation import _Rotation
from relaypolicy.watch.follow.source import _HEAD, _head, _Saved, _Source
from relaypolicy.watch.follow.source import STATE_FORMAT as STATE_FORMAT
from relaypolicy.watch.follow.source import STATE_VERSION as STATE_VERSION

__all__ = ["MAX_LINE", "FilePosition", "LogFollower", "follow"]

log = logging.getLogger("relaypolicy.watch")

MAX_LINE = 64 * 1024
_CHUNK = 64 * 1024


class FilePosition(NamedTuple):
    """Where a follower is: the file's device and inode, and the byte offset in it."""

    device: int
    inode: int
    offset: int


class LogFollower(_Rotation):
    """Complete new lines of the log at ``path``, through rotation, truncation and restarts.

    See the module docstring. ``poll()`` reads at most ``max_read`` bytes; when it stops
    short of the end, :attr:`behind` is true and the caller should poll again at once.
    ``clock`` (default :func:`time.monotonic`) times ``rotation_grace``. Counters:
    ``lines``, ``overlong``, ``incomplete`` (an unfinished line dropped at a truncation or
    with a rotated file), ``undecodable``, ``rotations``, ``truncations``.
    """

    def __init__(
        self,
        path: str | PathLike[str],
        *,
        state_path: str | PathLike[str] | None = None,
        start_at_end: bool = False,
        max_line: int = MAX_LINE,
        max_read: int = 1 << 20,
        rotation_grace: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_line < 1 or max_read < 1:
            raise ValueError("max_line and max_read must be positive")
        self.path = os.fspath(path)
        self.state_path = None if state_path is None else os.fspath(state_path)
        self.start_at_end = start_at_end
        self.max_line = max_line
        self.max_read = max_read
        self.rotation_grace = rotation_grace
        self._clock = clock
        self._current: _Source | None = None
        self._draining: list[_Source] = []  # rotated away, still read for a while
        self._closed = False
        self._recovered = False  # looked for a file rotated while we were stopped
        self._problem = ""  # the last trouble logged, so it is logged once
        self.behind = False
        self.lines = self.overlong = self.incomplete = self.undecodable = 0
        self.rotations = self.truncations = 0
        if self.state_path is not None:
            remove_stale_temps(self.state_path)  # left by a process killed mid-save
        self._saved = self._load_state()
        self._on_disk = self._saved

    def __repr__(self) -> str:
        return f"LogFollower({self.path!r}, position={self.position})"

    def __enter__(self) -> LogFollower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def position(self) -> FilePosition | None:
        """The current file and the offset after its last complete line, or ``None``."""
        c = self._current
        return None if c is None else FilePosition(c.device, c.inode, c.committed)

    @property
    def counters(self) -> dict[str, int]:
        return {
            "lines": self.lines,
            "overlong": self.overlong,
            "incomplete": self.incomplete,
            "undecodable": self.undecodable,
            "rotations": self.rotations,
            "truncations": self.truncations,
        }

    # --- polling ----------------------------------------------------------------------

    def poll(self) -> list[str]:
        """The complete lines appended since the last poll, oldest file first.

        The position is not saved: call :meth:`save_state` once they are handled."""
        if self._closed:
            raise ValueError("poll() on a closed LogFollower")
        out: list[str] = []
        budget = self.max_read
        self.behind = False
        now = self._clock()
        for source in list(self._draining):
            got = self._read(source, out, budget)
            budget -= got
            if not source.eof:
                return self._done(out, behind=True)
            if got:
                source.quiet_since = now
            elif now - source.quiet_since >= self.rotation_grace:
                self._retire(source)
        current = self._current
        if current is not None:
            self._check_truncated(current)  # before reading: see _still_ours
            budget -= self._read(current, out, budget)
            if not current.eof:
                return self._done(out, behind=True)
        if self._check_path(now):
            # A new file, a truncated one, or one rotated while we were stopped: read
            # what is there now, older files first.
            for source in [*self._draining, *([self._current] if self._current else [])]:
                budget -= self._read(source, out, budget)
                if not source.eof:
                    return self._done(out, behind=True)
        return self._done(out, behind=False)

    def _done(self, out: list[str], *, behind: bool) -> list[str]:
        self.behind = behind
        self.lines += len(out)
        return out

    def _read(self, source: _Source, out: list[str], budget: int) -> int:
        """Read up to ``budget`` bytes, appending complete lines to ``out``; bytes read."""
        total = 0
        source.eof = False
        while total < budget:
            try:
                chunk = os.read(source.fd, min(_CHUNK, budget - total))
            except OSError as exc:
                self._trouble(f"cannot read {source.name}: {exc}")
                source.eof = True
                break
            if not chunk:
                source.eof = True
                break
            total += len(chunk)
            source.offset += len(chunk)
            self._split(source, chunk, out)
        return total

    def _split(self, source: _Source, chunk: bytes, out: list[str]) -> None:
        start = 0
        if source.skip:
            start = chunk.find(b"\n") + 1
            if start == 0:
                return  # still inside the overlong line
            source.skip = False
        parts = chunk[start:].split(b"\n")
        rest = parts.pop()
        limit = self.max_line
        pending = source.pending
        if parts and pending:
            parts[0] = bytes(pending) + parts[0]
            pending.clear()
        for raw in parts:
            if len(raw) > limit:
                self.overlong += 1
                continue
            try:
                out.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                self.undecodable += 1
                out.append(raw.decode("utf-8", "replace"))
        if rest:
            if len(pending) + len(rest) > limit:
                self.overlong += 1
                pending.clear()
                source.skip = True
            else:
                pending += rest

    # --- state ------------------------------------------------------------------------

    def _load_state(self) -> _Saved | None:
        if self.state_path is None:
            return None
        try:
            with open(self.state_path, "rb") as file:
                document = json.loads(file.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring the follower state %s: %s", self.state_path, exc)
            return None
        saved = _Saved.from_json(document)
        if saved is None:
            log.warning("ignoring the follower state %s: not a valid state file", self.state_path)
            return None
        if document["path"] != self.path:
            log.warning(
                "ignoring the follower state %s: it is for %r, not %r",
                self.state_path,
                document["path"],
                self.path,
            )
            return None
        return saved

    def save_state(self) -> None:
        """Write the position after the last line :meth:`poll` returned to
        ``state_path``, if it moved since the last save. Call it only once those lines
        are handled for good: a restart continues from here."""
        current = self._current
        if self.state_path is None or current is None:
            return
        offset = current.committed
        length = min(offset, _HEAD)
        if current.head is None or current.head[0] != length:
            current.head = (length, _head(current.fd, length))
        saved = _Saved(current.device, current.inode, offset, current.skip, *current.head)
        if saved == self._on_disk:
            return
        try:
            write_atomically(self.state_path, saved.to_json(self.path), mode=0o600)
        except OSError as exc:
            self._trouble(f"cannot save the follower state {self.state_path}: {exc}")
            return
        self._on_disk = saved

    def close(self) -> None:
        """Close the files. The position is not saved (see :meth:`save_state`)."""
        if self._closed:
            return
        for source in [*self._draining, *([self._current] if self._current else [])]:
            os.close(source.fd)
        self._draining = []
        self._current = None
        self._closed = True


async def follow(
    follower: LogFollower,
    handle_lines: Callable[[list[str]], object],
    *,
    stop: asyncio.Event,
    interval: float = 0.25,
    on_tick: Callable[[], object] | None = None,
    sync: Callable[[], bool] | None = None,
) -> None:
    """Poll ``follower`` every ``interval`` seconds (again at once while it is behind)
    until ``stop`` is set, passing new lines to ``handle_lines``, then calling
    ``on_tick``, then ``sync`` (which makes what they recorded durable, and says whether
    it is), and only then saving the position: a line is never skipped by a restart
    before what it recorded is on disk. Each round runs in a worker thread
    (:func:`asyncio.to_thread`), so file reads and fsyncs never stall the event loop;
    rounds never overlap. The follower stays open when it returns."""

    def tick() -> bool:
        lines = follower.poll()
        if lines:
            handle_lines(lines)
        if on_tick is not None:
            on_tick()
        if sync is None or sync():
            follower.save_state()
        return follower.behind

    while not stop.is_set():
        if await asyncio.to_thread(tick):
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
