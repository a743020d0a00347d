"""``relaypolicy.decisions``: the one way every front end asks its policy — never raising,
counting, timing and logging each decision."""

from __future__ import annotations

import logging

import pytest

from relaypolicy import FirstMatch, LocalDomainOnly, TrustedNetworks, Verdict
from relaypolicy.decisions import LATENCY_BUCKETS, Decider
from relaypolicy.model import Decision, Request
from relaypolicy.policies import relay_access_denied
from relaypolicy.testing import FakeClock

LOCAL = Request(client_address="192.0.2.9", recipient="user@example.org")
FOREIGN = Request(client_address="192.0.2.9", recipient="user@elsewhere.test")
TRUSTED = Request(client_address="10.0.0.5", recipient="user@elsewhere.test")


class Raises:
    name = "Raises"

    def check(self, request: Request) -> Decision:
        raise RuntimeError("the table fell over")


class Slow:
    """A policy that takes ``seconds`` on ``clock`` to answer NEXT."""

    name = "Slow"

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds

    def check(self, request: Request) -> Decision:
        self.clock.advance(self.seconds)
        return Decision(Verdict.NEXT, 0, "", "", "Slow", "no-opinion")


def chain() -> FirstMatch:
    return FirstMatch(TrustedNetworks(["10.0.0.0/8"]), LocalDomainOnly(["example.org"]))


def test_decisions_are_counted_by_verdict_reason_and_deciding_policy() -> None:
    decider = Decider(chain())
    for request in (LOCAL, LOCAL, FOREIGN, TRUSTED):
        decider.decide(request, peer="test")
    stats = decider.stats.as_stats()
    assert stats["verdict:accept"] == 3
    assert stats["verdict:reject"] == 1
    assert stats["reason:local"] == 2
    assert stats["decision:accept:LocalDomainOnly:local"] == 2
    assert stats["decision:reject:LocalDomainOnly:not-local"] == 1
    assert stats["decision:accept:TrustedNetworks:trusted-network"] == 1
    assert sum(v for k, v in stats.items() if k.startswith("decision:")) == 4
    assert stats["decision-seconds-count"] == 4


def test_a_policy_that_raises_is_a_temporary_refusal_never_a_relay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    decider = Decider(Raises())
    with caplog.at_level(logging.ERROR, logger="relaypolicy.decide"):
        decision = decider.decide(FOREIGN, peer="peer-7")
    assert decision.verdict is Verdict.DEFER
    assert str(decision) == "451 4.3.0 Policy service error"
    assert (decision.policy, decision.reason) == ("relaypolicy", "policy-error")
    assert decider.stats.as_stats()["policy-errors"] == 1
    assert "peer-7: policy raised" in caplog.text
    assert "the table fell over" in caplog.text  # the traceback is logged


def test_latency_lands_in_cumulative_buckets() -> None:
    clock = FakeClock()
    policy = Slow(clock, 0.0)
    decider = Decider(policy, timer=clock)
    for seconds in (0.00003, 0.0003, 0.0003, 0.02, 5.0):
        policy.seconds = seconds
        decider.decide(LOCAL, peer="test")
    stats = decider.stats.as_stats()
    assert stats["decision-seconds-le:5e-05"] == 1
    assert stats["decision-seconds-le:0.0005"] == 3
    assert stats["decision-seconds-le:0.025"] == 4
    assert stats[f"decision-seconds-le:{LATENCY_BUCKETS[-1]:g}"] == 4  # 5 s is past 1 s
    assert stats["decision-seconds-count"] == 5
    assert stats["decision-seconds-sum"] == pytest.approx(5.02063)


def test_a_decision_on_a_bound_counts_in_that_bucket() -> None:
    # Prometheus buckets are "less than or equal": 1 ms is in le=0.001.
    clock = FakeClock()
    decider = Decider(Slow(clock, 0.001), timer=clock)
    decider.decide(LOCAL, peer="test")
    stats = decider.stats.as_stats()
    assert stats["decision-seconds-le:0.0005"] == 0
    assert stats["decision-seconds-le:0.001"] == 1


def test_no_opinion_becomes_the_front_ends_refusal_when_it_cannot_pass_it_on() -> None:
    def refuse(request: Request) -> Decision:
        return relay_access_denied(request, "Front", "no-opinion")

    passes = FirstMatch(TrustedNetworks(["10.0.0.0/8"]), default=Verdict.NEXT)
    assert Decider(passes).decide(FOREIGN, peer="t").verdict is Verdict.NEXT
    decider = Decider(passes, no_opinion=refuse)
    decision = decider.decide(FOREIGN, peer="t")
    assert str(decision) == "554 5.7.1 <user@elsewhere.test>: Relay access denied"
    assert decider.stats.as_stats()["decision:reject:Front:no-opinion"] == 1
    # A question on the side gets the policy's own answer and is not counted.
    assert decider.decide(FOREIGN, peer="t", record=False).verdict is Verdict.NEXT
    assert decider.stats.as_stats()["decision-seconds-count"] == 1


def test_one_log_line_per_recorded_decision(caplog: pytest.LogCaptureFixture) -> None:
    decider = Decider(chain())
    with caplog.at_level(logging.INFO, logger="relaypolicy.decisions"):
        decider.decide(FOREIGN, peer="t")
        decider.decide(LOCAL, peer="t", record=False)
        decider.log_format = "json"
        decider.decide(LOCAL, peer="t", log_fields={"stage": "RCPT"})
    lines = [r.getMessage() for r in caplog.records if r.name == "relaypolicy.decisions"]
    assert len(lines) == 2
    assert "recipient=<user@elsewhere.test> verdict=REJECT policy=LocalDomainOnly" in lines[0]
    assert '"stage": "RCPT"' in lines[1] or '"stage":"RCPT"' in lines[1]
    assert '"verdict"' in lines[1]


def test_a_reload_swaps_the_policy_and_keeps_the_counts() -> None:
    decider = Decider(LocalDomainOnly(["example.org"]))
    decider.decide(FOREIGN, peer="t")
    decider.policy = LocalDomainOnly(["elsewhere.test"])
    assert decider.decide(FOREIGN, peer="t").verdict is Verdict.ACCEPT
    assert decider.stats.as_stats()["decision-seconds-count"] == 2


def test_a_bad_log_format_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="log_format"):
        Decider(chain(), log_format="xml")
