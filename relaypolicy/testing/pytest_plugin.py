"""The relaypolicy pytest plugin: fixtures and readable failures for decisions.

Loaded automatically when relaypolicy is installed (entry point ``pytest11``); disable it
with ``-p no:relaypolicy``. Fixtures:

- ``fake_clock``: a :class:`~relaypolicy.testing.FakeClock` at 0.0;
- ``make_request``: build a :class:`~relaypolicy.Request` with sensible defaults (a
  stranger's ``client_address``, ``recipient="user@example.org"``); keywords override;
- ``relay_probes``: :func:`~relaypolicy.testing.relay_probes`, for parametrising.

A failed ``assert decision == other`` shows both decisions field by field, and comparing a
decision with a verdict (``decision == Verdict.ACCEPT``, always false) says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from relaypolicy.model import Decision, Request, Verdict
from relaypolicy.testing.assertions import DEFAULT_CLIENT
from relaypolicy.testing.clock import FakeClock
from relaypolicy.testing.probes import Probe
from relaypolicy.testing.probes import relay_probes as _relay_probes

__all__ = ["fake_clock", "make_request", "pytest_assertrepr_compare", "relay_probes"]

REQUEST_DEFAULTS: dict[str, Any] = {
    "client_address": DEFAULT_CLIENT,
    "recipient": "user@example.org",
}


@pytest.fixture
def fake_clock() -> FakeClock:
    """A clock at 0.0 that moves only when told to (``advance``, ``set``)."""
    return FakeClock()


@pytest.fixture
def make_request() -> Callable[..., Request]:
    """``make_request(**fields)``: a Request from a stranger to ``user@example.org`` unless
    ``fields`` say otherwise."""

    def build(**fields: Any) -> Request:
        return Request(**{**REQUEST_DEFAULTS, **fields})

    return build


@pytest.fixture
def relay_probes() -> Callable[..., list[Probe]]:
    """:func:`relaypolicy.testing.relay_probes`, as a fixture."""
    return _relay_probes


def _decision_lines(decision: Decision) -> list[str]:
    return [
        f"  verdict: {decision.verdict.name}",
        f"  reply:   {str(decision) or '(none)'}",
        f"  policy:  {decision.policy}",
        f"  reason:  {decision.reason}",
    ]


def pytest_assertrepr_compare(
    config: pytest.Config, op: str, left: object, right: object
) -> list[str] | None:
    """Explain a failed comparison that involves a :class:`~relaypolicy.Decision`."""
    if op != "==":
        return None
    if isinstance(left, Decision) and isinstance(right, Decision):
        differ = [name for name in Decision._fields if getattr(left, name) != getattr(right, name)]
        lines = [f"two different decisions ({', '.join(differ)} differ)"]
        lines += ["left:", *_decision_lines(left), "right:", *_decision_lines(right)]
        return lines
    for decision, other in ((left, right), (right, left)):
        if isinstance(decision, Decision) and isinstance(other, Verdict):
            return [
                f"a Decision never equals a Verdict: compare decision.verdict with {other!r}",
                "the decision:",
                *_decision_lines(decision),
            ]
    return None
