"""Where a daemon listens: the listener specs every front end reads, and binding them.

:class:`Listening` is what each server (the Postfix policy server, the milter server,
Exim's socket) holds: it binds its listeners, and at close stops accepting, lets the
connections send what they have, cuts off the ones that do not finish, and removes the
unix sockets; :func:`peer_name` names a connection for the log.

``[serve] listen`` and ``[milter] listen`` take the same forms (:func:`parse_listener`):
``HOST:PORT``, ``inet:HOST:PORT``, ``[::1]:PORT`` and ``unix:/absolute/path``. Parsing is
pure; :func:`bind` and :func:`remove_unix_sockets` are the only socket and file work here,
done only when a server calls them (as the table touches its own state files only when
asked). Both the Postfix policy server and the milter server call them, so a unix socket
is made, replaced and removed the same way for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Protocol

import attrs

from relaypolicy.settings import Section, parse_host_port

__all__ = [
    "Connection",
    "Listener",
    "Listening",
    "bind",
    "listen_settings",
    "parse_listener",
    "peer_name",
    "remove_unix_sockets",
]


@attrs.frozen
class Listener:
    """Where to listen: TCP ``host``/``port``, or a unix socket ``path`` with ``mode``."""

    host: str = ""
    port: int = 0
    path: str = ""
    mode: int = 0o666

    def __str__(self) -> str:
        if self.path:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"inet:{host}:{self.port}"


def parse_listener(text: str, *, mode: int = 0o666) -> Listener:
    """``127.0.0.1:9998``, ``inet:[::1]:9998``, ``unix:/var/spool/postfix/private/policy``."""
    spec = text.strip()
    if spec.startswith("unix:"):
        path = spec[5:]
        if not path.startswith("/"):
            raise ValueError(f"listener {text!r}: a unix socket path must be absolute")
        return Listener(path=path, mode=mode)
    if spec.startswith("inet:"):
        spec = spec[5:]
    try:
        host, port = parse_host_port(spec)
    except ValueError as exc:
        raise ValueError(f"listener {text!r}: {exc}; or unix:/path") from None
    return Listener(host=host, port=port)


def listen_settings(section: Section, default: str) -> tuple[tuple[str, ...], int]:
    """A front end's ``listen`` (a list of :func:`parse_listener` specs, ``default`` when
    absent) and ``socket_mode`` (an octal string, ``"0666"`` when absent), read from its
    section; :class:`~relaypolicy.errors.ConfigError` names the key and the entry."""
    listen = section.strings("listen", (default,))
    if not listen:
        raise section.error("listen", "expected at least one address")
    for index, spec in enumerate(listen):
        try:
            parse_listener(spec)
        except ValueError as exc:
            raise section.error(f"listen[{index}]", str(exc)) from None
    octal = 'an octal string such as "0660"'
    mode_text = section.string("socket_mode", "0666", expected=octal)
    try:
        mode = int(mode_text, 8)
    except ValueError:
        raise section.error("socket_mode", f"expected {octal}") from None
    if not 0 <= mode <= 0o777:
        raise section.error("socket_mode", "expected a permission mode up to 0777")
    return listen, mode


async def bind(
    listener: Listener, protocol: Callable[[], asyncio.BaseProtocol]
) -> tuple[asyncio.Server, list[str]]:
    """Listen on ``listener``; the server and the addresses it is bound to (with the real
    port when the spec asked for port 0). Raises :class:`OSError` when it cannot.

    A unix socket left by an earlier run is replaced; a path that exists and is not a
    socket is refused, never removed. The new socket gets ``listener.mode``.
    """
    loop = asyncio.get_running_loop()
    if listener.path:
        path = Path(listener.path)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise OSError(f"{path} exists and is not a socket; not replacing it")
            path.unlink()
        server = await loop.create_unix_server(protocol, path=str(path))
        os.chmod(path, listener.mode)
        return server, [str(listener)]
    server = await loop.create_server(
        protocol, host=listener.host, port=listener.port, reuse_address=True
    )
    bound = []
    for sock in server.sockets:
        host, port = sock.getsockname()[:2]
        bound.append(str(Listener(host=host, port=port)))
    return server, bound


def remove_unix_sockets(listeners: Iterable[Listener]) -> None:
    """Remove the unix sockets among ``listeners`` (after the servers have closed)."""
    for listener in listeners:
        if listener.path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(listener.path)


class Connection(Protocol):
    """What :meth:`Listening.close` needs of a server's connection (its asyncio protocol)."""

    @property
    def closed(self) -> asyncio.Future[None]:
        """Done when the connection is lost (``connection_lost``)."""
        ...

    def close(self) -> None:
        """Close once what is written has gone out."""
        ...

    def abort(self) -> None:
        """Close now, dropping what is not sent."""
        ...


class Listening:
    """The listening sockets of one server: bound by :meth:`start`, closed by :meth:`close`."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self._unix: list[Listener] = []

    async def start(
        self, listeners: Sequence[Listener], protocol: Callable[[], asyncio.BaseProtocol]
    ) -> list[str]:
        """Bind every listener (see :func:`bind`); their addresses, with the real port for
        port 0. Raises :class:`OSError` when one cannot be bound."""
        bound: list[str] = []
        for listener in listeners:
            server, addresses = await bind(listener, protocol)
            if listener.path:
                self._unix.append(listener)
            self.servers.append(server)
            bound.extend(addresses)
        return bound

    async def close(self, connections: Collection[Connection], grace: float) -> None:
        """Stop accepting; close ``connections`` (the server's live set) letting their
        answers go out, abort those still open after ``grace`` seconds, then remove the
        unix sockets."""
        for server in self.servers:
            server.close()
        closing = list(connections)
        for connection in closing:
            connection.close()
        if closing:
            await asyncio.wait([c.closed for c in closing], timeout=grace)
        stalled = list(connections)
        for connection in stalled:
            connection.abort()
        if stalled:  # an aborted transport reports its loss on the next loop iteration
            await asyncio.wait([c.closed for c in stalled], timeout=grace)
        for server in self.servers:
            await server.wait_closed()
        remove_unix_sockets(self._unix)


def peer_name(transport: asyncio.BaseTransport) -> str:
    """A connection's peer for the log: ``HOST:PORT``, or ``unix:PATH`` of our socket."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname() or '?'}"
    return str(peer or "?")
