"""The control socket of the long-running commands, its client, and the feed that uses it.

A unix socket, mode 0600 (whoever may write to it may open the relay), that answers one
JSON object per line: ``{"command": "stats"}`` and so on; ``relaypolicy ctl`` is its
client. The table commands, ``table``, ``add`` (alias ``record``) and ``remove``, are
the same for both servers and live here; each server answers ``stats`` and anything of
its own through the ``answer`` callback it passes to :func:`start_control`.

A change (``add``, ``record``, ``remove``) is answered only once it is durable: the
server passes ``durable`` (its table's journal ``fsync``), awaited before the reply is
sent, so a client that got ``"ok": true`` (a login hook, ``relaypolicy watch
--control-socket`` before it saves its log position) knows the change survives a crash.
Without ``persist`` the table lives in memory only, and ``durable`` does nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from relaypolicy.iptable.base import IpEntry, TableWriter

__all__ = [
    "MAX_CONTROL_LINE",
    "TABLE_COMMANDS",
    "ControlSocketTable",
    "ask",
    "ask_many",
    "read_command",
    "start_control",
    "table_command",
]

log = logging.getLogger("relaypolicy.control")

MAX_CONTROL_LINE = 64 * 1024
TABLE_COMMANDS = ("table", "add", "record", "remove")


def read_command(line: bytes) -> tuple[str, dict[str, Any]] | dict[str, Any]:
    """``(command, message)`` from one line, or the error reply to send back."""
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return {"ok": False, "error": "not a JSON object"}
    if not isinstance(message, dict) or not isinstance(message.get("command"), str):
        return {"ok": False, "error": 'expected {"command": ...}'}
    return message["command"], message


def table_command(
    table: TableWriter | None, command: str, message: dict[str, Any]
) -> dict[str, Any]:
    """Answer ``table``, ``add``/``record`` or ``remove`` for a POP-before-SMTP table."""
    if table is None:
        return {"ok": False, "error": "POP-before-SMTP is not configured"}
    if command == "table":
        now = table.clock()
        entries = [
            {"address": e.address, "user": e.user, "expires_in": round(e.expires_at - now, 1)}
            for e in table.entries()
        ]
        return {"ok": True, "entries": entries}
    address = message.get("address")
    if not isinstance(address, str):
        return {"ok": False, "error": '"address" must be a string'}
    try:
        if command == "remove":
            removed = table.remove(address)
            log.info("control: removed %s from the table (%s)", address, removed)
            return {"ok": True, "removed": bool(removed)}
        ttl, user = message.get("ttl"), message.get("user")
        if ttl is not None and (
            isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl < 1e9
        ):
            return {"ok": False, "error": '"ttl" must be a positive number of seconds'}
        if user is not None and not isinstance(user, str):
            return {"ok": False, "error": '"user" must be a string'}
        table.record(address, user=user, ttl=ttl)
    except (ValueError, TypeError) as exc:
        return {"ok": False, "error": str(exc)}
    log.info("control: %s may relay (POP-before-SMTP)", address)
    return {"ok": True, "added": address}


async def start_control(
    path: str | Path,
    answer: Callable[[bytes], dict[str, Any]],
    *,
    durable: Callable[[], Awaitable[None]] | None = None,
) -> asyncio.Server:
    """Listen on the unix socket ``path`` (mode 0600), answering each line with
    ``answer(line)``. An existing socket there is replaced; any other file is not.

    A successful change of the table (a reply with ``added`` or ``removed``) is sent
    only after ``durable()`` returned; when it raises :class:`OSError` the reply says
    the change is in the table but not saved (``"ok": false, "retry": true``).

    Raises :class:`OSError` whose message starts ``cannot create the control socket
    PATH:`` when it cannot listen there (a missing directory, a file in the way)."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise OSError(
                f"cannot create the control socket {path}: it exists and is not a socket; "
                "not replacing it"
            )
        path.unlink()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Lines are answered in order as they come; the replies go out in the same order,
        # each once its change is durable. A client that sends many lines before reading
        # (relaypolicy watch --control-socket) does not wait for an fsync per line: the
        # table's sync covers every change made so far (group commit).
        replies: asyncio.Queue[asyncio.Future[dict[str, Any]] | None] = asyncio.Queue()
        sender = asyncio.create_task(_send_replies(replies, writer))
        try:
            while not sender.done():
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    replies.put_nowait(_done({"ok": False, "error": "line too long"}))
                    return
                if len(line) > MAX_CONTROL_LINE:
                    replies.put_nowait(_done({"ok": False, "error": "line too long"}))
                    return
                reply = answer(line)
                if durable is not None and reply.get("ok") and _changes(reply):
                    replies.put_nowait(asyncio.ensure_future(_made_durable(reply, durable)))
                else:
                    replies.put_nowait(_done(reply))
        except (ConnectionError, OSError):
            return
        finally:
            replies.put_nowait(None)
            with contextlib.suppress(ConnectionError, OSError):
                await sender
            writer.close()

    try:
        server = await asyncio.start_unix_server(client, path=str(path))
    except OSError as exc:  # the system's message does not name the path
        raise OSError(f"cannot create the control socket {path}: {exc.strerror or exc}") from exc
    os.chmod(path, 0o600)  # the control socket can open the relay: owner only
    return server


def _done(reply: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
    future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    future.set_result(reply)
    return future


async def _send_replies(
    replies: asyncio.Queue[asyncio.Future[dict[str, Any]] | None], writer: asyncio.StreamWriter
) -> None:
    """Write the replies of one connection in order, each once it is ready."""
    while (future := await replies.get()) is not None:
        reply = await future
        writer.write(json.dumps(reply, ensure_ascii=False).encode() + b"\n")
        await writer.drain()


def _changes(reply: dict[str, Any]) -> bool:
    return "added" in reply or "removed" in reply


async def _made_durable(
    reply: dict[str, Any], durable: Callable[[], Awaitable[None]]
) -> dict[str, Any]:
    try:
        await durable()
    except OSError as exc:
        log.error("control: a change could not be saved: %s", exc)
        return {
            "ok": False,
            "error": f"changed in memory, but not saved to disk: {exc}",
            "retry": True,  # not refused: send it again later
        }
    return reply


def ask_many(
    path: str | Path, messages: list[dict[str, Any]], *, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Send ``messages`` on one connection to the control socket at ``path``, all at
    once, then read their replies, in order. Fewer replies than messages when the
    connection ends early (the service stopped): those are the first ones. Keep a batch
    to a few hundred messages, so the replies fit the socket's buffer. :class:`OSError`
    when the socket cannot be reached or answers like no relaypolicy control socket."""
    replies: list[dict[str, Any]] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(os.fspath(path))
        sock.sendall(b"".join(json.dumps(message).encode() + b"\n" for message in messages))
        buffer = b""
        with contextlib.suppress(ConnectionError):
            while len(replies) < len(messages):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                *lines, buffer = (buffer + chunk).split(b"\n")
                replies += [_reply(path, line) for line in lines]
    return replies


def _reply(path: str | Path, line: bytes) -> dict[str, Any]:
    try:
        reply = json.loads(line)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise OSError(f"{path}: not a relaypolicy control socket")
    return reply


def ask(path: str | Path, message: dict[str, Any], *, timeout: float = 10.0) -> dict[str, Any]:
    """Send ``message`` to the control socket at ``path``; the reply (``"ok"`` says whether
    the command succeeded). :class:`OSError` when the socket cannot be reached or does not
    answer like a relaypolicy control socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(os.fspath(path))
        sock.sendall(json.dumps(message).encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return _reply(path, answer)


BATCH = 500  # logins sent on one control connection before reading the replies


class ControlSocketTable:
    """The table of a running ``relaypolicy serve``, reached through its control socket.

    What ``relaypolicy watch --control-socket`` feeds: each login becomes an ``add`` with
    the login's remaining time; expiry is the service's own business. Calls block (the
    watcher makes them from a worker thread). Logins are queued and sent by :meth:`sync`
    (the end of each of the watcher's rounds) or :meth:`expire`, many on one connection
    (:func:`~relaypolicy.control.ask_many`): the service answers an ``add`` only once it
    is durable there, and a batch shares its fsyncs. :meth:`sync` says whether every
    login was answered, so the watcher saves its log position only then. While the
    service cannot be reached (a restart), logins wait in a bounded queue
    (``max_pending``; the oldest are dropped first and counted in ``dropped``, and read
    again from the log after a restart of the watcher, whose position has not moved) and
    are sent again at the next round, with what remains of their time: a login is never
    given more time than it had.
    """

    def __init__(self, path: str, *, timeout: float = 10.0, max_pending: int = 100_000) -> None:
        self.path = path
        self.timeout = timeout
        self.max_pending = max_pending
        self.dropped = 0
        self._pending: collections.deque[tuple[str, str | None, float]] = collections.deque()
        self._failing = False
        stats = self._ask({"command": "stats"}).get("stats", {})
        if "pop-ttl" not in stats:
            raise OSError(f"{self.path}: the service has no POP-before-SMTP table")
        self.ttl = float(stats["pop-ttl"])

    def _ask(self, message: dict[str, Any]) -> dict[str, Any]:
        reply = ask(self.path, message, timeout=self.timeout)
        if not reply.get("ok"):
            raise ValueError(str(reply.get("error", "refused")))
        return reply

    def record(self, address: str, *, user: str | None = None, ttl: float | None = None) -> None:
        deadline = time.monotonic() + (self.ttl if ttl is None else ttl)
        self._pending.append((address, user, deadline))
        while len(self._pending) > self.max_pending:
            self._pending.popleft()
            self.dropped += 1
        if len(self._pending) >= BATCH:
            self._flush()  # else at the end of the watcher's round: see sync()

    def _flush(self) -> None:
        """Send the waiting logins, up to :data:`BATCH` on one connection at a time (the
        service answers each once it is durable, and a batch shares its fsyncs)."""
        while self._pending:
            now = time.monotonic()
            while self._pending and self._pending[0][2] <= now:
                self._pending.popleft()  # its time ran out while it waited
            batch = list(itertools.islice(self._pending, BATCH))
            messages: list[dict[str, Any]] = []
            for address, user, deadline in batch:
                message: dict[str, Any] = {"command": "add", "address": address}
                message["ttl"] = max(deadline - now, 0.001)
                if user is not None:
                    message["user"] = user
                messages.append(message)
            if not messages:
                break
            try:
                replies = ask_many(self.path, messages, timeout=self.timeout)
            except OSError as exc:
                replies, problem = [], str(exc)
            else:
                problem = "the connection ended before every login was answered"
            answered = 0
            for (address, _, _), reply in zip(batch, replies, strict=False):
                if reply.get("retry"):  # taken, but not durable there: not acknowledged
                    problem = str(reply.get("error"))
                    break
                if not reply.get("ok"):  # the service refused this one: say so, go on
                    error = reply.get("error", "refused")
                    log.warning("watch: %s refused %r: %s", self.path, address, error)
                self._pending.popleft()
                answered += 1
            if answered < len(batch):
                if not self._failing:
                    log.error(
                        "watch: %s did not take every login, keeping them: %s", self.path, problem
                    )
                self._failing = True
                return
        if self._failing:
            log.info("watch: %s reachable again, logins sent", self.path)
            self._failing = False

    @property
    def pending(self) -> int:
        return len(self._pending)

    def sync(self) -> bool:
        """Send what is waiting; whether the service has acknowledged every login."""
        self._flush()
        return not self._pending

    def expire(self) -> int:
        """Sends what is waiting; the service expires its own entries (returns 0)."""
        self._flush()
        return 0

    def entries(self) -> list[IpEntry]:
        try:
            listed = self._ask({"command": "table"}).get("entries", [])
        except (OSError, ValueError) as exc:  # exported maps fail closed: empty
            log.error("watch: cannot list the table of %s: %s", self.path, exc)
            return []
        now = time.monotonic()
        return [
            IpEntry(item["address"], now + float(item["expires_in"]), item.get("user"))
            for item in listed
        ]
