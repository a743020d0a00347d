"""ByServerPort: one policy service for the MX and the submission ports."""

from __future__ import annotations

import pytest

from relaypolicy import Decision, FirstMatch, LocalDomainOnly, OpenRelay, Request, Verdict
from relaypolicy.policies.auth import SmtpAuthRequired
from relaypolicy.policies.ports import ByServerPort

mx = FirstMatch(
    SmtpAuthRequired(otherwise=Verdict.NEXT), LocalDomainOnly(["local.test"]), name="mx"
)
submission = FirstMatch(SmtpAuthRequired(require_tls=True), name="submission")
by_port = ByServerPort({587: submission, 465: submission}, default=mx)


def req(port: int, recipient: str = "taro@aho.jp", **fields: str) -> Request:
    return Request(client_address="203.0.113.7", recipient=recipient, server_port=port, **fields)


@pytest.mark.parametrize(
    ("port", "reply", "reason"),
    [
        (25, "554 5.7.1 <taro@aho.jp>: Relay access denied", "not-local"),
        (587, "530 5.7.0 Must issue a STARTTLS command first", "tls-required"),
        (465, "530 5.7.0 Must issue a STARTTLS command first", "tls-required"),
        (0, "554 5.7.1 <taro@aho.jp>: Relay access denied", "not-local"),  # unknown port
        (2525, "554 5.7.1 <taro@aho.jp>: Relay access denied", "not-local"),  # unlisted
    ],
)
def test_routing_by_server_port(port: int, reply: str, reason: str) -> None:
    decision = by_port.check(req(port))
    assert str(decision) == reply
    assert decision.reason == reason


def test_25_versus_587() -> None:
    # The MX takes mail for us from anyone and refuses relaying ...
    assert by_port.check(req(25, "taro@local.test")).verdict is Verdict.ACCEPT
    # ... the submission port takes nothing without AUTH over TLS, not even local mail ...
    local_on_587 = by_port.check(req(587, "taro@local.test", encryption_protocol="TLSv1.3"))
    assert str(local_on_587) == "530 5.7.0 Authentication required"
    # ... and relays for an authenticated client over TLS.
    decision = by_port.check(
        req(587, sasl_username="yomogi", encryption_protocol="TLSv1.3", sasl_method="PLAIN")
    )
    assert (decision.verdict, decision.reason) == (Verdict.ACCEPT, "sasl-authenticated")
    # On 25 the same client may relay without TLS (permit_sasl_authenticated).
    assert by_port.check(req(25, sasl_username="yomogi")).verdict is Verdict.ACCEPT


def test_decision_is_the_sub_policy_decision_unchanged() -> None:
    request = req(587, "bad\x00@local.test")
    assert by_port.check(request) == submission.check(request)
    assert by_port.check(request).policy == "submission"  # refused by that chain: syntax
    assert by_port.check(req(25, "bad\x00@local.test")).policy == "mx"
    accepted = by_port.check(req(25, "taro@local.test"))
    assert accepted is mx.check(req(25, "taro@local.test"))
    assert accepted.policy == "LocalDomainOnly"


def test_policy_for_and_policies() -> None:
    assert by_port.policy_for(587) is submission
    assert by_port.policy_for(25) is mx
    assert by_port.policy_for(0) is mx
    assert dict(by_port.policies) == {587: submission, 465: submission}
    with pytest.raises(TypeError):
        by_port.policies[25] = mx  # type: ignore[index]
    assert by_port.default is mx
    assert by_port.name == "ByServerPort"


def test_ports_given_as_digits() -> None:
    policy = ByServerPort({"587": submission}, default=mx)  # type: ignore[dict-item]
    assert policy.policy_for(587) is submission


@pytest.mark.parametrize("port", [0, -1, 65536, True, "smtp", "", 587.0, None])
def test_bad_port_fails_at_construction(port: object) -> None:
    with pytest.raises(ValueError, match="port"):
        ByServerPort({port: submission}, default=mx)  # type: ignore[dict-item]


def test_port_listed_twice() -> None:
    with pytest.raises(ValueError, match="587 is listed twice"):
        ByServerPort({587: submission, "587": mx}, default=mx)  # type: ignore[dict-item]


def test_policies_must_be_policies() -> None:
    with pytest.raises(TypeError, match="port 587"):
        ByServerPort({587: "submission"}, default=mx)  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="default"):
        ByServerPort({587: submission}, default=Verdict.REJECT)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="mapping"):
        ByServerPort([(587, submission)], default=mx)  # type: ignore[arg-type]


def test_by_server_port_is_a_policy_and_nests() -> None:
    class Recorder:
        name = "recorder"

        def __init__(self) -> None:
            self.seen: list[int] = []

        def check(self, request: Request) -> Decision:
            self.seen.append(request.server_port)
            return OpenRelay().check(request)

    recorder = Recorder()
    chain = FirstMatch(ByServerPort({2525: recorder}, default=submission))
    assert chain.check(req(2525)).verdict is Verdict.ACCEPT
    assert chain.check(req(25)).reason == "tls-required"
    assert recorder.seen == [2525]
    assert repr(by_port).startswith("ByServerPort({465: FirstMatch(")
