"""Chains: ask policies in order; the first answer that is not NEXT wins.

One exception keeps a server that cannot read some state taking the mail that does not
need it: a :class:`~relaypolicy.model.LookupFailure` (a policy whose table is down) is held
while the chain asks the policies after it. A later ACCEPT stands; anything else, and the
default, becomes the held deferral.
"""

from __future__ import annotations

from collections.abc import Callable

from relaypolicy.model import (
    Decision,
    LookupFailure,
    Request,
    Verdict,
    accept,
    defer,
    next_policy,
)
from relaypolicy.policies.base import Policy, bad_recipient_syntax, relay_access_denied
from relaypolicy.replies import TRY_AGAIN_LATER

__all__ = ["FirstMatch"]

_NEXT = Verdict.NEXT
_DEFER = Verdict.DEFER
_ACCEPT = Verdict.ACCEPT


class FirstMatch:
    """Evaluate policies in order; the first verdict other than NEXT is the decision.

    Like Postfix's ``smtpd_relay_restrictions``. When every policy says NEXT, ``default``
    decides: a :class:`Verdict` (``REJECT``, the default, gives
    ``554 5.7.1 <rcpt>: Relay access denied``; ``DEFER`` gives ``451 4.7.1``; ``NEXT``
    passes the question on, which is useful for a nested chain) or a policy. A chain is a
    policy, so chains nest.

    A recipient with bad syntax is refused with ``501 5.1.3`` before any policy is asked,
    as Postfix's smtpd does before it applies its restrictions: no policy, not even a
    trusted network, can let a malformed address through a chain.

    A :class:`~relaypolicy.model.LookupFailure` (``451 4.3.0``: a policy could not read its
    state, e.g. a stale shared table) does not end the chain: the policies after it are
    asked, an ACCEPT among them stands (it did not use that state: a local recipient, an
    authenticated client), another lookup failure is passed over, and the first other
    answer (REJECT, DEFER) is replaced by the held (first) deferral. A ``default`` policy
    is asked like the others; a ``default`` verdict, even ACCEPT, gives the held deferral.
    So mail for our own domains is still taken, and a relay from a client nobody could
    look up is deferred, never accepted nor refused for good. The chain returns the held
    :class:`~relaypolicy.model.LookupFailure` itself, so an outer chain treats a nested one
    the same way.
    """

    __slots__ = ("_checks", "_default", "_default_is_policy", "_syntax", "name", "policies")

    def __init__(
        self,
        *policies: Policy,
        default: Verdict | Policy = Verdict.REJECT,
        name: str = "FirstMatch",
    ) -> None:
        for policy in policies:
            if not callable(getattr(policy, "check", None)):
                raise TypeError(f"not a policy (no check method): {policy!r}")
        self.name = name
        self.policies: tuple[Policy, ...] = policies
        self._checks: tuple[Callable[[Request], Decision], ...] = tuple(
            policy.check for policy in policies
        )
        self._syntax = bad_recipient_syntax(name)
        self._default: Callable[[Request], Decision] = self._make_default(default)
        self._default_is_policy = not isinstance(default, Verdict)

    def _make_default(self, default: Verdict | Policy) -> Callable[[Request], Decision]:
        name = self.name
        if isinstance(default, Verdict):
            if default is Verdict.REJECT:
                return lambda request: relay_access_denied(request, name, "default")
            if default is Verdict.ACCEPT:
                accepted = accept(name, "default")
                return lambda request: accepted
            if default is Verdict.DEFER:
                deferred = defer(*TRY_AGAIN_LATER, name, "default")
                return lambda request: deferred
            passed = next_policy(name, "default")
            return lambda request: passed
        if not callable(getattr(default, "check", None)):
            raise TypeError(f"default must be a Verdict or a policy, not {default!r}")
        return default.check

    def check(self, request: Request) -> Decision:
        recipient = request.recipient_address
        if recipient.error is not None or (not recipient.domain and not recipient.local_part):
            return self._syntax
        for check in self._checks:
            decision = check(request)
            verdict = decision[0]  # decision.verdict, without the attribute lookup
            if verdict is not _NEXT:
                # Only a DEFER can be a LookupFailure: ACCEPT and REJECT skip the class test.
                if verdict is _DEFER and decision.__class__ is LookupFailure:
                    return self._after_lookup_failure(request, check, decision)
                return decision
        return self._default(request)

    def _after_lookup_failure(
        self, request: Request, failed: Callable[[Request], Decision], held: Decision
    ) -> Decision:
        """Ask the policies after ``failed``: an ACCEPT stands, anything else is ``held``."""
        checks = self._checks
        # Identity, not equality: the same policy may be in the chain twice.
        position = next(n for n, check in enumerate(checks) if check is failed)
        for check in checks[position + 1 :]:
            decision = check(request)
            verdict = decision[0]
            if verdict is _ACCEPT:
                return decision
            if verdict is not _NEXT and decision.__class__ is not LookupFailure:
                return held  # another "cannot tell" is passed over like NEXT
        if self._default_is_policy:  # a policy is asked like the others
            decision = self._default(request)
            if decision[0] is _ACCEPT:
                return decision
        # A Verdict default is the chain's own answer for "nobody knew", whatever it says:
        # with a policy's state unreadable, nobody could know.
        return held

    def __repr__(self) -> str:
        inner = ", ".join(repr(policy) for policy in self.policies)
        return f"FirstMatch({inner})"
