"""One policy per listening port: the MX on 25, submission on 587 and 465."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from relaypolicy.model import Decision, Request
from relaypolicy.policies.base import Policy

__all__ = ["ByServerPort"]


def _port(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"not a port number: {value!r}")
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"not a port number (1-65535): {value!r}")
    return value


class ByServerPort:
    """Ask the policy for the port the client connected to (``server_port``).

    One policy service can then answer for every port of a mail server, as one Postfix
    answers with a different ``smtpd`` line in ``master.cf`` per port::

        ByServerPort({587: submission, 465: submission}, default=mx)

    A request whose ``server_port`` is not listed, or unknown (``0``), goes to ``default``.
    The chosen policy's decision is returned unchanged, so ``decision.policy`` names the
    policy that decided (give the sub-policies telling names, as the recipes do). Ports
    must be 1-65535 (``int``, or digits as text); anything else raises :class:`ValueError`.
    """

    __slots__ = ("_checks", "_default", "_policies", "default", "name")

    def __init__(
        self,
        policies: Mapping[int, Policy],
        *,
        default: Policy,
        name: str = "ByServerPort",
    ) -> None:
        if not isinstance(policies, Mapping):
            raise TypeError("policies must be a mapping of port -> policy")
        by_port: dict[int, Policy] = {}
        for given, policy in policies.items():
            port = _port(given)
            if port in by_port:
                raise ValueError(f"port {port} is listed twice")
            if not callable(getattr(policy, "check", None)):
                raise TypeError(f"not a policy (no check method) for port {port}: {policy!r}")
            by_port[port] = policy
        if not callable(getattr(default, "check", None)):
            raise TypeError(f"default must be a policy, not {default!r}")
        self.name = name
        self.default = default
        self._policies = MappingProxyType(by_port)
        self._checks: dict[int, Callable[[Request], Decision]] = {
            port: policy.check for port, policy in by_port.items()
        }
        self._default: Callable[[Request], Decision] = default.check

    @property
    def policies(self) -> Mapping[int, Policy]:
        """The listed ports and their policies (read-only)."""
        return self._policies

    def policy_for(self, port: int) -> Policy:
        """The policy that answers for a server port (``default`` when not listed)."""
        return self._policies.get(port, self.default)

    def check(self, request: Request) -> Decision:
        return self._checks.get(request.server_port, self._default)(request)

    def __repr__(self) -> str:
        listed = ", ".join(f"{port}: {policy!r}" for port, policy in sorted(self._policies.items()))
        return f"ByServerPort({{{listed}}}, default={self.default!r})"
