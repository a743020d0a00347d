"""The asyncio policy server: a thin loop around :class:`PolicyConnection`.

Each connection reads bytes, feeds the codec, asks the current policy for every complete
request and writes the answer. A protocol error is logged with the peer and what was wrong,
nothing is sent, and only that connection is closed. A connection that stops in the middle
of a request is closed after ``idle_timeout``; an idle connection between requests is
closed after the same time (Postfix reconnects; its own ``smtpd_policy_service_max_idle``
is 300 s, so the default here is longer).

The policy is read from ``self.policy`` for every request, so replacing it (a reload) takes
effect atomically between two requests, never within one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import attrs

from relaypolicy.model import Decision, Request
from relaypolicy.policies import Policy
from relaypolicy.postfix.codec import (
    PolicyConnection,
    PolicyRequest,
    ProtocolError,
    decision_action,
    encode_action,
)

__all__ = ["Listener", "PolicyServer", "ServerSettings", "parse_listener"]

log = logging.getLogger("relaypolicy.serve")
decisions_log = logging.getLogger("relaypolicy.decisions")


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
    host, colon, port_text = spec.rpartition(":")
    if not colon or not port_text.isdigit():
        raise ValueError(f"listener {text!r}: expected HOST:PORT or unix:/path")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"listener {text!r}: port out of range")
    if not host:
        raise ValueError(f"listener {text!r}: give an address to listen on")
    return Listener(host=host, port=port)


@attrs.frozen
class ServerSettings:
    """How the server talks to Postfix.

    ``accept_action`` is what ACCEPT becomes (``OK``, or ``DUNNO`` when Postfix's own
    restrictions should still run after relaypolicy permits). ``other_states_action`` is
    the answer for requests from protocol states other than RCPT (``DUNNO``: no opinion).
    ``unusable_action`` answers a request that cannot be analysed (a client address that is
    not an IP address): closed by default, a temporary refusal.
    """

    accept_action: str = "OK"
    other_states_action: str = "DUNNO"
    unusable_action: str = "451 4.3.0 Policy service cannot evaluate this request"
    idle_timeout: float = 330.0
    max_connections: int = 200
    log_format: str = "text"  # or "json"


class PolicyServer:
    """Serve a policy to Postfix over any number of TCP and unix-socket listeners."""

    def __init__(self, policy: Policy, settings: ServerSettings | None = None) -> None:
        self.policy = policy
        self.settings = settings or ServerSettings()
        self.counters: Counter[str] = Counter()
        self._servers: list[asyncio.Server] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._busy: set[asyncio.Task[None]] = set()  # connections with a request in hand
        self._unix_paths: list[str] = []
        self._closing = False

    @property
    def connections(self) -> int:
        return len(self._handlers)

    async def start(self, listeners: Sequence[Listener]) -> list[str]:
        """Bind every listener; returns their addresses (with the real port for port 0)."""
        bound: list[str] = []
        for listener in listeners:
            if listener.path:
                server = await self._start_unix(listener)
                bound.append(str(listener))
            else:
                server = await asyncio.start_server(
                    self._handle, host=listener.host, port=listener.port, reuse_address=True
                )
                for sock in server.sockets:
                    host, port = sock.getsockname()[:2]
                    bound.append(str(Listener(host=host, port=port)))
            self._servers.append(server)
        return bound

    async def _start_unix(self, listener: Listener) -> asyncio.Server:
        path = Path(listener.path)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise OSError(f"{path} exists and is not a socket; not replacing it")
            path.unlink()
        server = await asyncio.start_unix_server(self._handle, path=str(path))
        os.chmod(path, listener.mode)
        self._unix_paths.append(str(path))
        return server

    async def close(self, *, grace: float = 10.0) -> None:
        """Stop listening, let connections finish the request in hand, then close them."""
        self._closing = True
        for server in self._servers:
            server.close()
        if self._busy:  # answers being written: let them finish
            await asyncio.wait(set(self._busy), timeout=grace)
        for task in list(self._handlers):  # the rest wait for input: stop them
            task.cancel()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=grace)
        for server in self._servers:
            await server.wait_closed()
        for path in self._unix_paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = _peer_name(writer)
        if self._closing or len(self._handlers) >= self.settings.max_connections:
            self.counters["connections-refused"] += 1
            log.warning("%s: too many connections (%d); closing", peer, len(self._handlers))
            writer.close()
            return
        self._handlers.add(task)
        self.counters["connections"] += 1
        try:
            await self._serve_connection(reader, writer, peer, task)
        except asyncio.CancelledError:
            pass
        except (ConnectionError, OSError) as exc:
            log.info("%s: connection lost: %s", peer, exc)
        finally:
            self._handlers.discard(task)
            self._busy.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_connection(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
        task: asyncio.Task[None],
    ) -> None:
        connection = PolicyConnection()
        timeout = self.settings.idle_timeout
        while True:
            try:
                data = await asyncio.wait_for(reader.read(65536), timeout)
            except TimeoutError:
                if connection.in_request:
                    self.counters["protocol-errors"] += 1
                    log.warning("%s: client stopped in the middle of a request; closing", peer)
                return
            if not data:
                if connection.in_request:
                    log.warning("%s: connection closed in the middle of a request", peer)
                return
            try:
                requests = connection.receive_data(data)
            except ProtocolError as exc:
                self.counters["protocol-errors"] += 1
                log.warning("%s: protocol error, closing without an answer: %s", peer, exc)
                return
            if not requests:
                continue
            self._busy.add(task)
            try:
                writer.write(b"".join(self._answer(request, peer) for request in requests))
                await writer.drain()
            finally:
                self._busy.discard(task)
            if self._closing:
                return

    def _answer(self, message: PolicyRequest, peer: str) -> bytes:
        self.counters["requests"] += 1
        state = message.protocol_state
        if state != "RCPT":
            self.counters["other-states"] += 1
            return encode_action(self.settings.other_states_action)
        try:
            request = message.to_request()
        except ValueError as exc:
            self.counters["unusable"] += 1
            log.warning("%s: unusable request: %s", peer, exc)
            return encode_action(self.settings.unusable_action)
        try:
            decision = self.policy.check(request)
        except Exception:
            # A policy must not raise; if one does, fail closed and say so.
            log.exception("%s: policy raised; answering with a temporary refusal", peer)
            self.counters["policy-errors"] += 1
            return encode_action("451 4.3.0 Policy service error")
        self.counters[f"verdict:{decision.verdict.value}"] += 1
        self.counters[f"reason:{decision.reason}"] += 1
        self._log_decision(request, decision)
        return encode_action(
            decision_action(
                decision, accept_action=self.settings.accept_action, recipient=request.recipient
            )
        )

    def _log_decision(self, request: Request, decision: Decision) -> None:
        if not decisions_log.isEnabledFor(logging.INFO):
            return
        if self.settings.log_format == "json":
            decisions_log.info(
                json.dumps(
                    {
                        "client": request.client_address,
                        "sender": request.sender,
                        "recipient": request.recipient,
                        "verdict": decision.verdict.value,
                        "policy": decision.policy,
                        "reason": decision.reason,
                        "reply": str(decision),
                    },
                    ensure_ascii=False,
                )
            )
        else:
            decisions_log.info(
                "client=%s sender=<%s> recipient=<%s> verdict=%s policy=%s reason=%s",
                request.client_address,
                _printable(request.sender),
                _printable(request.recipient),
                decision.verdict.name,
                decision.policy,
                decision.reason,
            )


def _printable(text: str) -> str:
    """Log-safe: a stranger's address must not forge log lines (see the watcher)."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname() or '?'}"
    return str(peer or "?")
