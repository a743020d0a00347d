"""Where a daemon listens: the listener specs every front end reads, and binding them.

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
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

import attrs

from relaypolicy.settings import parse_host_port

__all__ = ["Listener", "bind", "parse_listener", "remove_unix_sockets"]


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
