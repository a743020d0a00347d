"""What the log's path names now: rotation, truncation in place, a missing file, and the
file rotated away while the follower was stopped (see the theory of operation in
:mod:`relaypolicy.watch.follow`). ``_Rotation`` is a base of
:class:`~relaypolicy.watch.follow.LogFollower`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat

from relaypolicy.watch.follow.source import _OPEN_FLAGS, _byte_at, _head, _Saved, _Source

log = logging.getLogger("relaypolicy.watch")

_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".lzma", ".Z", ".zip")


class _Rotation:
    """The follower's steps that look at the path (its fields are set by
    :class:`~relaypolicy.watch.follow.LogFollower`)."""

    path: str
    start_at_end: bool
    rotations: int
    truncations: int
    incomplete: int
    _current: _Source | None
    _draining: list[_Source]
    _recovered: bool
    _saved: _Saved | None
    _problem: str

    def _check_path(self, now: float) -> bool:
        """Look at what the path names now; whether there is something new to read."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._current is None and not self._recovered and self._saved is not None:
                return self._recover_rotated(self._saved, now)
            self._trouble(f"{self.path} is missing; waiting for it")
            return False
        except OSError as exc:
            self._trouble(f"cannot stat {self.path}: {exc}")
            return False
        current = self._current
        if current is not None and (st.st_dev, st.st_ino) == (current.device, current.inode):
            self._problem = ""
            return self._check_truncated(current)
        source = self._open(self.path)
        if source is None:
            return False
        self._problem = ""
        if current is not None:
            log.info("%s was rotated; reading the new file from the start", self.path)
            current.quiet_since = now
            self._draining.append(current)
            self.rotations += 1
        else:
            self._position_first(source, now)
        self._current = source
        return True

    def _check_truncated(self, source: _Source) -> bool:
        """Start again from 0 if the file was truncated in place; whether it was."""
        try:
            size = os.fstat(source.fd).st_size
        except OSError:
            return False
        if size >= source.offset and self._still_ours(source):
            return False
        log.info("%s was truncated; reading it from the start", source.name)
        if source.pending:
            self.incomplete += 1
        source.seek(0)
        self.truncations += 1
        return True

    def _still_ours(self, source: _Source) -> bool:
        """Whether the byte before our position is the one we read there."""
        if source.offset == 0 or source.skip:
            return True
        expected = source.pending[-1:] if source.pending else b"\n"
        return _byte_at(source.fd, source.offset - 1) == expected

    def _open(self, name: str) -> _Source | None:
        try:
            fd = os.open(name, _OPEN_FLAGS)
        except OSError as exc:
            self._trouble(f"cannot open {name}: {exc}")
            return None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            self._trouble(f"{name} is not a regular file")
            return None
        return _Source(fd, st, name)

    def _position_first(self, source: _Source, now: float) -> None:
        """Where to start in the first file opened: the saved position, or 0, or the end."""
        saved = self._saved
        if saved is None:
            if self.start_at_end:
                end = os.lseek(source.fd, 0, os.SEEK_END)
                source.offset = end
                source.skip = end > 0 and _byte_at(source.fd, end - 1) != b"\n"
            return
        if (source.device, source.inode) == (saved.device, saved.inode):
            if self._resumable(source, saved):
                source.seek(saved.offset)
                source.skip = saved.skip
            else:
                # Truncated (copytruncate), or a new file given the inode that the
                # rotation of ours freed: no other file can hold that inode now.
                log.info(
                    "%s was truncated or replaced while stopped; reading it from the start",
                    self.path,
                )
                self.truncations += 1
            return
        if not self._recovered:
            self._recover_rotated(saved, now)

    def _resumable(self, source: _Source, saved: _Saved) -> bool:
        """Whether ``source`` is the file of ``saved`` and still holds its position."""
        if saved.offset > os.fstat(source.fd).st_size:
            return False
        if _head(source.fd, saved.head_length) != saved.head:
            return False
        return saved.skip or saved.offset == 0 or _byte_at(source.fd, saved.offset - 1) == b"\n"

    def _recover_rotated(self, saved: _Saved, now: float) -> bool:
        """Find the file we were reading when stopped, rotated since, to read its rest
        first; whether it was found."""
        self._recovered = True
        name = self._find_by_inode(saved)
        source = None if name is None else self._open(name)
        if source is not None and (
            (source.device, source.inode) != (saved.device, saved.inode)
            or not self._resumable(source, saved)  # the inode was reused
        ):
            os.close(source.fd)
            source = None
        if source is None:
            log.warning(
                "%s was rotated while stopped and the old file was not found beside it; "
                "lines written to it after the stop are not read",
                self.path,
            )
            return False
        source.seek(saved.offset)
        source.skip = saved.skip
        source.quiet_since = now
        log.info("%s was rotated while stopped; reading the rest of %s first", self.path, name)
        self._draining.append(source)
        self.rotations += 1
        return True

    def _find_by_inode(self, saved: _Saved) -> str | None:
        directory, base = os.path.split(self.path)
        try:
            entries = os.scandir(directory or ".")
        except OSError:
            return None
        with entries:
            for entry in entries:
                name = entry.name
                if name == base or not name.startswith(base) or name.endswith(_COMPRESSED):
                    continue
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    if (st.st_dev, st.st_ino) == (saved.device, saved.inode):
                        return entry.path
        return None

    def _retire(self, source: _Source) -> None:
        if source.pending:
            self.incomplete += 1  # a line its writer never finished
        os.close(source.fd)
        self._draining.remove(source)

    def _trouble(self, message: str) -> None:
        if message != self._problem:
            self._problem = message
            log.warning("%s", message)
