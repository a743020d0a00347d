"""The SMTP AUTH password file: one user per line, a salted scrypt hash each.

Format (one line per user; ``#`` comments and blank lines are kept as they are)::

    # relaypolicy smtpd passwords
    taro:scrypt$16384$8$1$<salt, base64>$<hash, base64>

The fields after ``scrypt`` are the cost parameters N, r and p (:func:`hashlib.scrypt`,
RFC 7914), a 16-byte random salt and the 32-byte derived key, base64 with padding. They
are stored per line, so raising :data:`DEFAULT_N` later does not invalidate old lines:
``relaypolicy passwd`` rewrites a line at the new cost when the password is next set.
A user name is UTF-8 without ``:``, white space or control characters.

Reading validates every line; a bad one raises :class:`PasswordFileError` naming the
file and line number. Writing is atomic (a temporary file in the same directory, then
:func:`os.replace`) and keeps the file's mode (0600 for a new file). Checking a password
compares with :func:`hmac.compare_digest`, and an unknown user costs the same scrypt
computation as a known one, so timing tells an attacker neither.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from relaypolicy._files import write_atomically
from relaypolicy.errors import PasswordFileError

__all__ = [
    "DEFAULT_N",
    "PasswordFile",
    "PasswordFileError",
    "hash_password",
    "verify_password",
]

SCHEME = "scrypt"
DEFAULT_N = 2**14  # about 16 MiB and some tens of milliseconds per check
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
MIN_N = 2**10
MAX_MEMORY = 256 * 1024 * 1024  # refuse parameters that would need more (a typo, or worse)
MAX_NAME = 255

# What an unknown user's check is computed against, so it costs what a known one does.
_DUMMY = f"{SCHEME}${DEFAULT_N}${DEFAULT_R}${DEFAULT_P}${'A' * 24}${'A' * 44}"


def _memory(n: int, r: int, p: int) -> int:
    return 128 * r * (n + p + 2)  # scrypt's working set, as OpenSSL counts it


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(
    password: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P
) -> str:
    """A new ``scrypt$N$r$p$salt$key`` hash of ``password`` with a random salt."""
    _check_parameters(n, r, p)
    salt = secrets.token_bytes(SALT_BYTES)
    key = _derive(password.encode("utf-8"), salt, n, r, p)
    return f"{SCHEME}${n}${r}${p}${_b64(salt)}${_b64(key)}"


def _derive(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password, salt=salt, n=n, r=r, p=p, dklen=KEY_BYTES, maxmem=_memory(n, r, p) + 1024 * 1024
    )


def _check_parameters(n: int, r: int, p: int) -> None:
    if n < MIN_N or n & (n - 1):
        raise PasswordFileError(f"scrypt N must be a power of two, at least {MIN_N}; got {n}")
    if not 1 <= r <= 64 or not 1 <= p <= 16:
        raise PasswordFileError(f"scrypt r must be 1-64 and p 1-16; got r={r}, p={p}")
    if _memory(n, r, p) > MAX_MEMORY:
        raise PasswordFileError(f"scrypt N={n}, r={r} would need more than 256 MiB")


def _parse_hash(text: str) -> tuple[int, int, int, bytes, bytes]:
    parts = text.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise PasswordFileError(f"expected {SCHEME}$N$r$p$salt$hash")
    if not all(part.isascii() and part.isdigit() for part in parts[1:4]):
        raise PasswordFileError("scrypt N, r and p must be decimal integers")
    n, r, p = (int(part) for part in parts[1:4])
    _check_parameters(n, r, p)
    try:
        salt = base64.b64decode(parts[4], validate=True)
        key = base64.b64decode(parts[5], validate=True)
    except (binascii.Error, ValueError):
        raise PasswordFileError("salt and hash must be base64") from None
    if len(salt) < 8 or len(key) < 16:
        raise PasswordFileError("salt or hash too short")
    return n, r, p, salt, key


def verify_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches ``hashed`` (a :func:`hash_password` string)."""
    n, r, p, salt, key = _parse_hash(hashed)
    derived = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=len(key),
        maxmem=_memory(n, r, p) + 1024 * 1024,
    )
    return hmac.compare_digest(derived, key)


def check_user_name(name: str) -> str:
    """``name`` if it can be a user of the file, else :class:`PasswordFileError`."""
    if not name:
        raise PasswordFileError("empty user name")
    if len(name) > MAX_NAME:
        raise PasswordFileError(f"user name longer than {MAX_NAME} characters")
    if (
        name.startswith("#")
        or ":" in name
        or any(char.isspace() or not char.isprintable() for char in name)
    ):
        raise PasswordFileError(
            f"user name {name!r} may not start with '#' or hold ':', white space or "
            "control characters"
        )
    return name


class PasswordFile:
    """The users and hashes of one password file, with its comments, in file order."""

    def __init__(self, path: str | os.PathLike[str], lines: list[str] | None = None) -> None:
        self.path = Path(path)
        self._lines: list[tuple[str | None, str]] = []  # (user, "") or (None, comment line)
        self._hashes: dict[str, str] = {}
        for number, line in enumerate(lines or [], 1):
            self._add_line(line, number)

    def _add_line(self, line: str, number: int) -> None:
        where = f"{self.path}, line {number}"
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            self._lines.append((None, line))
            return
        name, colon, hashed = line.partition(":")
        if not colon:
            raise PasswordFileError(f"{where}: expected user:{SCHEME}$N$r$p$salt$hash")
        try:
            check_user_name(name)
            _parse_hash(hashed)
        except PasswordFileError as exc:
            raise PasswordFileError(f"{where}: {exc}") from None
        if name in self._hashes:
            raise PasswordFileError(f"{where}: user {name!r} is listed twice")
        self._hashes[name] = hashed
        self._lines.append((name, ""))

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, missing_ok: bool = False) -> PasswordFile:
        """Read and validate ``path``; a missing file is empty when ``missing_ok``."""
        try:
            text = Path(path).read_bytes().decode("utf-8")
        except FileNotFoundError:
            if missing_ok:
                return cls(path)
            raise PasswordFileError(f"{path}: no such file") from None
        except UnicodeDecodeError as exc:
            line = _error_line(exc)
            raise PasswordFileError(f"{path}, line {line}: not UTF-8") from None
        except OSError as exc:
            raise PasswordFileError(f"{path}: cannot read: {exc.strerror}") from None
        return cls(path, text.splitlines())

    @property
    def users(self) -> list[str]:
        return list(self._hashes)

    def __contains__(self, name: object) -> bool:
        return name in self._hashes

    def __len__(self) -> int:
        return len(self._hashes)

    def verify(self, name: str, password: str) -> bool:
        """Whether ``name`` exists and ``password`` is its password (same cost either way)."""
        hashed = self._hashes.get(name)
        if hashed is None:
            verify_password(password, _DUMMY)
            return False
        return verify_password(password, hashed)

    def set(self, name: str, password: str, *, n: int = DEFAULT_N) -> None:
        """Add ``name`` or change its password (in memory: :meth:`save` writes)."""
        check_user_name(name)
        if not password:
            raise PasswordFileError("empty password")
        if name not in self._hashes:
            self._lines.append((name, ""))
        self._hashes[name] = hash_password(password, n=n)

    def delete(self, name: str) -> bool:
        """Remove ``name``; whether it was there."""
        if self._hashes.pop(name, None) is None:
            return False
        self._lines.remove((name, ""))
        return True

    def text(self) -> str:
        """The file's text: comments as they were, one ``user:hash`` line per user."""
        return "".join(
            f"{name}:{self._hashes[name]}\n" if name is not None else f"{comment}\n"
            for name, comment in self._lines
        )

    def save(self) -> None:
        """Write the file atomically, keeping its mode (0600 when it is new)."""
        try:
            mode = self.path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o600
        write_atomically(self.path, self.text().encode("utf-8"), mode=mode)


def _error_line(error: UnicodeDecodeError) -> int:
    """The 1-based line of a decoding error."""
    data = error.object
    return bytes(data[: error.start]).count(b"\n") + 1
