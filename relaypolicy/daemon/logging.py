"""Logging for the long-running commands: one handler on stderr, plain text or JSON lines.

The service manager (systemd's journal, a container runtime, syslog through a pipe) adds
its own timestamps and routing; JSON lines carry the decision log's fields as fields.
"""

from __future__ import annotations

import json
import logging

__all__ = ["configure_logging"]


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == "relaypolicy.decisions" and message.startswith("{"):
            payload = json.loads(message)
        else:
            payload = {"message": message}
        payload = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            **payload,
        }
        return json.dumps(payload, ensure_ascii=False)


def configure_logging(level: str, fmt: str) -> None:
    """Log to stderr, plain text or JSON lines (one object per line)."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("relaypolicy")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
