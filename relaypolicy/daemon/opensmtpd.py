"""``relaypolicy opensmtpd-filter``: OpenSMTPD's filter process on the daemon runtime.

``smtpd`` starts the filter (``filter NAME proc-exec "COMMAND"`` in ``smtpd.conf``) with
one ``AF_UNIX`` stream socket as both its standard input and output, and its standard
error on another socket whose lines it logs. :class:`OpenSmtpdFrontEnd` reads the
protocol (:mod:`relaypolicy.opensmtpd.codec`) from ``stdin`` and answers on ``stdout``
without blocking (asyncio transports: one socket transport when both are the same socket,
as under ``smtpd``; a read pipe and a write pipe otherwise, as under a test or a
benchmark driver). The table, the watcher, the control socket
(``[opensmtpd] control_socket``), SIGHUP reload, ``[metrics]`` and ``[log]`` are the
:class:`~relaypolicy.daemon.runtime.Runtime`'s.

- A ``rcpt-to`` request: the session's facts and the recipient make a
  :class:`~relaypolicy.model.Request`; the :class:`~relaypolicy.decisions.Decider`
  decides; ACCEPT is ``proceed``, REJECT and DEFER are ``reject|CODE STATUS TEXT``. No
  opinion (NEXT) is ``554 5.7.1 Relay access denied``: ``smtpd``'s own ``match`` rules
  cannot be asked for a verdict from here, and the configuration this filter is meant for
  lets them relay anything (``docs/opensmtpd.md``).
- A request that cannot be read or whose client is unknown: ``451`` (the codec).
- ``stdin`` closed (``smtpd`` exited): stop, save the table, exit 0 (74 when it could not
  be saved). SIGTERM: the same; ``smtpd`` then shuts down, as it does whenever one of its
  filters exits ("lost processor", ``smtpd.c``).

Nothing may write to ``stdout`` but the protocol: the command moves the protocol to a
descriptor of its own and points descriptor 1 at ``stderr`` before anything else runs
(:func:`relaypolicy.cli.opensmtpd.run`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from relaypolicy.config import Config, load_config
from relaypolicy.daemon.runtime import Runtime
from relaypolicy.decisions import Decider
from relaypolicy.model import Decision, Request
from relaypolicy.opensmtpd.codec import FilterCodec, Problem, Query, Write, encode_result
from relaypolicy.policies import Policy
from relaypolicy.policies.base import relay_access_denied

__all__ = ["FilterService", "OpenSmtpdFrontEnd"]

log = logging.getLogger("relaypolicy.opensmtpd")

_NAME = "opensmtpd-filter"
# [opensmtpd] keys a reload cannot apply.
_RESTART_ONLY = ("control_socket", "max_sessions")


def _no_opinion(request: Request) -> Decision:
    # smtpd's match rules are behind this filter, and the recommended configuration lets
    # them relay anything: no opinion is not permission.
    return relay_access_denied(request, _NAME, "no-opinion")


class _Stream(asyncio.Protocol):
    """Hands what ``smtpd`` writes to the front end; notices when it is gone."""

    def __init__(self, front: OpenSmtpdFrontEnd) -> None:
        self.front = front
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.front.received(data)

    def eof_received(self) -> bool:
        self.front.end_of_input()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self.front.end_of_input()

    # smtpd not reading our answers: stop reading its requests until it catches up, so
    # the answers waiting in memory stay bounded by the transport's high-water mark.
    def pause_writing(self) -> None:
        self.front.pause_input(True)

    def resume_writing(self) -> None:
        self.front.pause_input(False)


class OpenSmtpdFrontEnd:
    """The filter protocol on two descriptors, as a front end of the runtime.

    ``input_fd`` and ``output_fd``: where ``smtpd`` writes and reads (0 and the saved
    stdout). ``on_end``: called once when the input ends (the runtime's ``stop``).
    """

    def __init__(
        self,
        config: Config,
        policy: Policy,
        *,
        input_fd: int = 0,
        output_fd: int = 1,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.decider = Decider(policy, log_format=config.log.format, no_opinion=_no_opinion)
        self.codec = FilterCodec(max_sessions=config.opensmtpd.max_sessions)
        self.input_fd = input_fd
        self.output_fd = output_fd
        self.on_end = on_end
        self.counters: Counter[str] = Counter()
        self._reader: asyncio.BaseTransport | None = None
        self._writer: asyncio.WriteTransport | None = None
        self._streams: list[_Stream] = []
        self._ended = False

    # --- the FrontEnd protocol --------------------------------------------------------

    async def start(self) -> list[str]:
        loop = asyncio.get_running_loop()
        mode = os.fstat(self.input_fd).st_mode
        same = os.path.sameopenfile(self.input_fd, self.output_fd)
        if stat.S_ISSOCK(mode) and same:
            # smtpd's socketpair: one transport. (A write-pipe transport on a socket takes
            # any readable data for the peer's hang-up, so it cannot be used here.)
            sock = socket.socket(fileno=os.dup(self.input_fd))
            stream = _Stream(self)
            transport, _ = await loop.connect_accepted_socket(lambda: stream, sock)
            self._reader, self._writer = transport, transport
            self._streams = [stream]
            return ["stdin/stdout (socket)"]
        out_mode = os.fstat(self.output_fd).st_mode
        if not (stat.S_ISFIFO(out_mode) or stat.S_ISCHR(out_mode)):
            raise OSError("stdout must be smtpd's socket (the same as stdin), a pipe or a tty")
        reading = _Stream(self)
        writing = _Stream(self)
        # The writer first: the reader may hand over smtpd's first lines at once.
        self._writer, _ = await loop.connect_write_pipe(
            lambda: writing, os.fdopen(os.dup(self.output_fd), "wb", buffering=0)
        )
        self._reader, _ = await loop.connect_read_pipe(
            lambda: reading, os.fdopen(os.dup(self.input_fd), "rb", buffering=0)
        )
        self._streams = [reading, writing]
        return ["stdin/stdout (pipes)"]

    async def close(self) -> None:
        """Send what is queued and let go of both ends."""
        for transport in {self._writer, self._reader} - {None}:
            assert transport is not None
            transport.close()
        waits = [stream.lost for stream in self._streams]
        if waits:
            await asyncio.wait(waits, timeout=5.0)

    def update(self, config: Config, policy: Policy) -> list[str]:
        waiting = [
            f"opensmtpd.{key}"
            for key in _RESTART_ONLY
            if getattr(self.config.opensmtpd, key) != getattr(config.opensmtpd, key)
        ]
        self.decider.policy = policy
        self.decider.log_format = config.log.format
        self.config = config
        return waiting

    def stats(self) -> dict[str, object]:
        return {
            **self.counters,
            "sessions-open": len(self.codec.sessions),
            **self.decider.stats.as_stats(),
        }

    # --- the stream -------------------------------------------------------------------

    def received(self, data: bytes) -> None:
        """Answer what ``smtpd`` wrote: every request in ``data`` gets its line."""
        out: list[bytes] = []
        for event in self.codec.receive_data(data):
            if isinstance(event, Query):
                self.counters["requests"] += 1
                decision = self.decider.decide(
                    event.request, peer=f"session {event.session}", log_fields={"stage": "RCPT"}
                )
                out.append(encode_result(event.session, event.token, decision))
            elif isinstance(event, Write):
                out.append(event.data)
                if event.data.startswith(b"register|"):
                    log.info(
                        "handshake with smtpd %s done", self.codec.config.get("smtpd-version", "?")
                    )
                else:
                    self.counters["refused-unreadable"] += 1
            elif isinstance(event, Problem):
                self.counters[f"protocol-{event.kind}"] += 1
                log.warning("smtpd stream: %s: %s", event.kind, event.message)
        if out and self._writer is not None and not self._writer.is_closing():
            self._writer.write(b"".join(out))

    def pause_input(self, pause: bool) -> None:
        """Stop (or resume) reading ``smtpd``'s lines while our answers back up."""
        reader = self._reader
        if isinstance(reader, asyncio.ReadTransport) and not reader.is_closing():
            if pause:
                reader.pause_reading()
            else:
                reader.resume_reading()

    def end_of_input(self) -> None:
        """``smtpd`` closed our input (it exited): stop the runtime once."""
        if self._ended:
            return
        self._ended = True
        log.info("smtpd closed the filter's input; stopping")
        if self.on_end is not None:
            self.on_end()


class FilterService(Runtime):
    """``relaypolicy opensmtpd-filter``: the front end on a configuration's runtime."""

    name = "relaypolicy opensmtpd-filter"
    log = logging.getLogger("relaypolicy.opensmtpd")

    def __init__(self, config_path: str | Path, *, input_fd: int = 0, output_fd: int = 1) -> None:
        config = load_config(config_path)
        table = config.make_pop_table(durable=True)
        self.front_end = OpenSmtpdFrontEnd(
            config, config.build_policy(table), input_fd=input_fd, output_fd=output_fd
        )
        super().__init__(
            config,
            table,
            self.front_end,
            config_path=str(config_path),
            control_socket=config.opensmtpd.control_socket,
        )
        self.front_end.on_end = self.stop
