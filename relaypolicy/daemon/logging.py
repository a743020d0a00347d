"""Logging for the long-running commands: one handler, plain text or JSON lines, to stderr,
syslog or systemd's journal (``[log] target``).

Whoever stores the lines stamps them: syslog and journald add their own time, so with
those targets our lines carry none (no doubled timestamps). Only plain stderr outside
systemd gets ours. The journal is detected as systemd documents it (``JOURNAL_STREAM``,
systemd.exec(5)): the variable names the device and inode of the stream systemd connected,
and it counts only while our stderr still is that stream (a child that inherits the
variable but writes elsewhere is not under the journal).

- ``syslog``: :class:`logging.handlers.SysLogHandler`, one datagram per line to the local
  socket (``/dev/log``), ``<PRI>relaypolicy[PID]: LEVEL logger: message`` (the RFC 3164
  shape every local syslog daemon reads), the facility from ``[log] facility``.
- ``journald``: stderr, each line led by its ``<N>`` severity (sd-daemon(3)), which the
  journal turns into the entry's priority. Outside systemd it is plain stderr, with a
  warning.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import socket
import sys

from relaypolicy.config import LogSettings

__all__ = ["configure_logging", "under_journald"]

_TEXT = "%(levelname)s %(name)s: %(message)s"

#: The syslog severity of each level (RFC 5424 section 6.2.1), for journald's ``<N>``.
_SEVERITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class _JsonFormatter(logging.Formatter):
    """One JSON object per record; the decision log's fields stay fields."""

    def __init__(self, *, stamped: bool) -> None:
        super().__init__()
        self.stamped = stamped

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == "relaypolicy.decisions" and message.startswith("{"):
            payload = json.loads(message)
        else:
            payload = {"message": message}
        head = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z")} if self.stamped else {}
        payload = {
            **head,
            "level": record.levelname.lower(),
            "logger": record.name,
            **payload,
        }
        return json.dumps(payload, ensure_ascii=False)


class _JournalFormatter(logging.Formatter):
    """Lead each line with its ``<N>`` severity, the prefix the journal reads (sd-daemon(3))."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return f"<{_SEVERITY.get(record.levelname, 6)}>{self.inner.format(record)}"


def under_journald() -> bool:
    """Whether our stderr is the stream systemd connected to the journal (``JOURNAL_STREAM``
    is ``DEVICE:INODE`` of that stream, systemd.exec(5))."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    try:
        status = os.fstat(sys.stderr.fileno())
        return (status.st_dev, status.st_ino) == (int(device), int(inode))
    except (ValueError, OSError, AttributeError):
        return False


def _syslog_handler(settings: LogSettings) -> logging.Handler:
    """A datagram handler to the local syslog socket, tagged ``relaypolicy[PID]:``.

    Raises:
        OSError: the socket cannot be reached (no syslog daemon, wrong ``address``).
    """
    # SysLogHandler swallows a failed connect (and retries on every line): try it first,
    # so that a wrong address or a missing syslog daemon is said once, with its reason.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        probe.connect(settings.address)
    handler = logging.handlers.SysLogHandler(
        address=settings.address,
        facility=logging.handlers.SysLogHandler.facility_names[settings.facility],
        socktype=socket.SOCK_DGRAM,
    )
    handler.ident = f"relaypolicy[{os.getpid()}]: "
    handler.append_nul = False  # a NUL after the message is an old syslogd habit
    return handler


def configure_logging(settings: LogSettings) -> None:
    """Send the ``relaypolicy`` loggers to ``settings.target`` at ``settings.level``.

    A syslog socket that cannot be reached, and ``journald`` outside systemd, fall back to
    stderr with a warning: a daemon that cannot log where asked still logs somewhere.
    """
    fallback = ""
    handler: logging.Handler = logging.StreamHandler()
    journal = under_journald()
    to_stderr = True
    if settings.target == "syslog":
        try:
            handler = _syslog_handler(settings)
            to_stderr = False
        except OSError as exc:
            fallback = f"cannot reach syslog at {settings.address} ({exc}): logging to stderr"
    elif settings.target == "journald" and not journal:
        fallback = "[log] target = journald, but stderr is not the journal: logging to stderr"
    stamped = to_stderr and not journal  # syslog and the journal stamp lines themselves
    formatter: logging.Formatter
    if settings.format == "json":
        formatter = _JsonFormatter(stamped=stamped)
    else:
        formatter = logging.Formatter(f"%(asctime)s {_TEXT}" if stamped else _TEXT)
    if to_stderr and journal:
        formatter = _JournalFormatter(formatter)
    handler.setFormatter(formatter)
    root = logging.getLogger("relaypolicy")
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    root.propagate = False
    if fallback:
        root.warning("%s", fallback)
