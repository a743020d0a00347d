"""The Policy protocol and the replies policies share."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from relaypolicy.model import Decision, Request, Verdict, reject
from relaypolicy.replies import BAD_RECIPIENT_SYNTAX, RELAY_ACCESS_DENIED

_DENIED_CODE, _DENIED_STATUS, _DENIED_TEXT = RELAY_ACCESS_DENIED

__all__ = ["Policy", "bad_recipient_syntax", "relay_access_denied"]


@runtime_checkable
class Policy(Protocol):
    """Anything with a ``name`` and ``check(request) -> Decision`` is a policy.

    No base class is needed: a user's own policy is any object of this shape. A policy
    should be pure (its answer depends on the request and on state it was given, never on
    I/O it does itself) and must not raise for any request.
    """

    @property
    def name(self) -> str: ...

    def check(self, request: Request) -> Decision: ...


_new = tuple.__new__
_REJECT = Verdict.REJECT


def relay_access_denied(request: Request, policy: str, reason: str) -> Decision:
    """Postfix's ``reject_unauth_destination`` reply: ``554 5.7.1 <rcpt>: Relay access denied``.

    Only called for recipients that passed the syntax check, so the text holds no control
    characters (no reply injection).
    """
    recipient = request.recipient
    if recipient[:1] == "<" and recipient[-1:] == ">":
        text = f"{recipient}: {_DENIED_TEXT}"
    else:
        text = f"<{recipient}>: {_DENIED_TEXT}"
    # tuple.__new__ skips the Python-level NamedTuple constructor, and the reply's parts are
    # module constants rather than attribute reads: this is the hot path of every refused
    # relay attempt (benchmarks/bench_decisions.py).
    return _new(Decision, (_REJECT, _DENIED_CODE, _DENIED_STATUS, text, policy, reason))


def bad_recipient_syntax(policy: str) -> Decision:
    """``501 5.1.3 Bad recipient address syntax`` (Postfix's wording, RFC 3463 X.1.3).

    The recipient is not echoed: it may hold control characters.
    """
    return reject(*BAD_RECIPIENT_SYNTAX, policy, "syntax")
