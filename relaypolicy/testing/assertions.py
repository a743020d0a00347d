"""Assertions for tests of relay policies: one decision, or the whole relay-abuse battery."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, NamedTuple

from relaypolicy.model import Decision, Request, Verdict
from relaypolicy.policies.base import Policy
from relaypolicy.testing.probes import DEFAULT_FOREIGN_DOMAIN, Probe, probe_battery

__all__ = [
    "DEFAULT_CLIENT",
    "Expectation",
    "assert_decision",
    "assert_not_open_relay",
    "describe_decision",
    "probe_policy",
]

DEFAULT_CLIENT = "203.0.113.7"  # TEST-NET-3 (RFC 5737): a stranger on the internet
_REPLY = re.compile(r"([2-5][0-9][0-9])(?:\s+([2-5]\.[0-9]{1,3}\.[0-9]{1,3}))?(?:\s+(.*))?\Z", re.S)
_VERDICTS = {verdict.value: verdict for verdict in Verdict}


class Expectation(NamedTuple):
    """What a decision should be: a verdict, or (part of) an exact reply.

    Written as text: ``accept``, ``reject``, ``defer`` or ``next`` (any case) for a verdict;
    ``554``, ``554 5.7.1`` or ``554 5.7.1 <u@aho.jp>: Relay access denied`` for a reply,
    where each part given must match exactly and the parts left out match anything.
    """

    text: str
    verdict: Verdict | None = None
    code: int | None = None
    status: str | None = None
    reply_text: str | None = None

    @classmethod
    def parse(cls, expect: str | Verdict | Expectation) -> Expectation:
        """Read ``expect``; :class:`ValueError` says what was expected instead."""
        if isinstance(expect, Expectation):
            return expect
        if isinstance(expect, Verdict):
            return cls(expect.value, verdict=expect)
        if not isinstance(expect, str):
            raise TypeError(f"expected a verdict or a reply as text, got {expect!r}")
        text = expect.strip()
        verdict = _VERDICTS.get(text.lower())
        if verdict is not None:
            return cls(verdict.value, verdict=verdict)
        found = _REPLY.match(text)
        if found is None:
            raise ValueError(
                'expected accept, reject, defer, next or a reply such as "554 5.7.1", '
                f"got {expect!r}"
            )
        code, status, rest = found.groups()
        return cls(text, code=int(code), status=status, reply_text=rest)

    def matches(self, decision: Decision) -> bool:
        if self.verdict is not None:
            return decision.verdict is self.verdict
        return (
            decision.code == self.code
            and (self.status is None or decision.status == self.status)
            and (self.reply_text is None or decision.text == self.reply_text)
        )

    def __str__(self) -> str:
        return self.text


def describe_decision(decision: Decision) -> str:
    """One line: the reply (or ``NEXT``), the deciding policy and its reason."""
    reply = str(decision) or "(no reply)"
    return f"{decision.verdict.name} {reply}  [policy {decision.policy}, reason {decision.reason}]"


def assert_decision(
    policy: Policy, expect: str | Verdict | Expectation, **request_fields: Any
) -> Decision:
    """Ask ``policy`` about one request and check the answer; the decision.

    ``request_fields`` are :class:`~relaypolicy.Request` keywords; ``client_address``
    defaults to a stranger (``203.0.113.7``) and ``recipient`` to ``user@example.org``.
    ``expect`` is as :class:`Expectation` reads it. A mismatch raises
    :class:`AssertionError` showing the request and the whole decision.
    """
    expectation = Expectation.parse(expect)
    fields = {"client_address": DEFAULT_CLIENT, "recipient": "user@example.org"}
    fields.update(request_fields)
    request = Request(**fields)
    decision = policy.check(request)
    if not expectation.matches(decision):
        raise AssertionError(
            f"expected {expectation}, got {describe_decision(decision)}\n"
            f"  policy:  {policy!r}\n  request: {request!r}"
        )
    return decision


class ProbeOutcome(NamedTuple):
    """A probe and the decision an in-process policy gave it."""

    probe: Probe
    decision: Decision

    @property
    def accepted(self) -> bool:
        return self.decision.verdict is Verdict.ACCEPT


def probe_policy(
    policy: Policy,
    probes: Iterable[Probe],
    *,
    client_address: str = DEFAULT_CLIENT,
    **request_fields: Any,
) -> list[ProbeOutcome]:
    """Ask ``policy`` about every probe, from ``client_address``; the outcomes in order.

    ``request_fields`` (``server_port``, ``helo_name``...) go into every request.
    """
    outcomes = []
    for probe in probes:
        request = Request(
            client_address=client_address,
            recipient=probe.recipient,
            sender=probe.sender,
            **request_fields,
        )
        outcomes.append(ProbeOutcome(probe, policy.check(request)))
    return outcomes


def assert_not_open_relay(
    policy: Policy,
    *,
    local_domains: Iterable[str],
    client_address: str = DEFAULT_CLIENT,
    relay_domains: Iterable[str] = (),
    foreign_domain: str = DEFAULT_FOREIGN_DOMAIN,
    server_ip: str = "127.0.0.1",
    **request_fields: Any,
) -> list[ProbeOutcome]:
    """Run the relay-abuse battery against ``policy``; fail if it accepts any probe.

    The battery (:func:`~relaypolicy.testing.relay_probes`) is built for each of
    ``local_domains``, plus the routing probes through each of ``relay_domains``, and
    every probe is asked from ``client_address``, an untrusted
    client by default. The :class:`AssertionError` lists each accepted probe with its
    envelope, its decision and why it is a trick. Returns the outcomes (all refused).
    """
    probes = probe_battery(
        local_domains,
        relay_domains=relay_domains,
        foreign_domain=foreign_domain,
        server_ip=server_ip,
    )
    outcomes = probe_policy(policy, probes, client_address=client_address, **request_fields)
    accepted = [outcome for outcome in outcomes if outcome.accepted]
    if accepted:
        lines = [
            f"{policy!r} is an open relay: it accepted {len(accepted)} of {len(outcomes)} "
            f"relay probes from {client_address}:"
        ]
        for outcome in accepted:
            probe = outcome.probe
            lines.append(
                f"  {probe.name}: MAIL FROM:<{probe.sender}> RCPT TO:<{probe.recipient}> -> "
                f"{describe_decision(outcome.decision)}"
            )
            lines.append(f"      why it is a trick: {probe.why}")
        raise AssertionError("\n".join(lines))
    return outcomes
