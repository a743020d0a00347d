"""Text from strangers, made safe for where it goes: a log line, an SMTP reply, a report.

A client chooses its addresses and login names; written as they are, a CR or LF in one
would forge a log line (and with it a watcher's login) or split a reply. Every place that
writes such text uses one of these, and :func:`decision_line` is the one decision-log line
every front end writes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relaypolicy.model import Decision, Request

__all__ = ["DECISION_LINE", "decision_line", "log_safe", "reply_safe"]

DECISION_LINE = "client=%s sender=<%s> recipient=<%s> verdict=%s policy=%s reason=%s"
_json_line = json.JSONEncoder(ensure_ascii=False).encode  # json.dumps(..., ensure_ascii=False)


def log_safe(text: str) -> str:
    """``text`` with every unprintable character (CR, LF, other controls, Unicode line
    separators) written as ``\\xNN``: one line, nothing forged."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def reply_safe(text: str, limit: int | None = None, *, ascii_only: bool = True) -> str:
    """``text`` fit to appear in an SMTP reply or header: each character outside printable
    ASCII (or, with ``ascii_only=False``, each unprintable one) becomes ``?``; a text
    longer than ``limit`` is cut and ends in ``...``."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable() and (text.isascii() or not ascii_only):
        return text
    if ascii_only:
        return "".join(c if " " <= c <= "~" else "?" for c in text)
    return "".join(c if c.isprintable() else "?" for c in text)


def decision_line(
    request: Request, decision: Decision, *, json: bool, **extra: str
) -> tuple[str, tuple[str, ...]]:
    """The decision log line, as ``(message, args)`` for ``logger.info(message, *args)``.

    Text: ``client=… sender=<…> recipient=<…> verdict=… policy=… reason=…`` (the
    addresses log-safe; ``recipient`` in ``extra`` replaces the request's). JSON: one object
    with those fields, ``reply``, and ``extra`` (for instance ``stage``, ``login``).
    """
    recipient = extra.pop("recipient", request.recipient)
    if json:
        fields = {
            "client": request.client_address,
            "sender": request.sender,
            "recipient": recipient,
            **extra,
            "verdict": decision.verdict.value,
            "policy": decision.policy,
            "reason": decision.reason,
            "reply": str(decision),
        }
        return _json_line(fields), ()
    return DECISION_LINE, (
        request.client_address,
        log_safe(request.sender),
        log_safe(recipient),
        decision.verdict.name,
        decision.policy,
        decision.reason,
    )
