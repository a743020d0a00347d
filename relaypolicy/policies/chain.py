"""Chains: ask policies in order; the first answer that is not NEXT wins."""

from __future__ import annotations

from collections.abc import Callable

from relaypolicy.model import Decision, Request, Verdict, accept, defer, next_policy
from relaypolicy.policies.base import Policy, bad_recipient_syntax, relay_access_denied

__all__ = ["FirstMatch"]

_NEXT = Verdict.NEXT


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
    """

    __slots__ = ("_checks", "_default", "_syntax", "name", "policies")

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

    def _make_default(self, default: Verdict | Policy) -> Callable[[Request], Decision]:
        name = self.name
        if isinstance(default, Verdict):
            if default is Verdict.REJECT:
                return lambda request: relay_access_denied(request, name, "default")
            if default is Verdict.ACCEPT:
                accepted = accept(name, "default")
                return lambda request: accepted
            if default is Verdict.DEFER:
                deferred = defer(451, "4.7.1", "Try again later", name, "default")
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
            if decision[0] is not _NEXT:  # decision.verdict, without the attribute lookup
                return decision
        return self._default(request)

    def __repr__(self) -> str:
        inner = ", ".join(repr(policy) for policy in self.policies)
        return f"FirstMatch({inner})"
