"""The ready-made chains: mx_policy and submission_policy."""

from __future__ import annotations

import pytest

from relaypolicy import FirstMatch, LocalDomainOnly, Request, TrustedNetworks, Verdict
from relaypolicy.policies.auth import SmtpAuthRequired
from relaypolicy.policies.ports import ByServerPort
from relaypolicy.policies.recipes import mx_policy, submission_policy

TLS = {"encryption_protocol": "TLSv1.3"}


def req(recipient: str, client: str = "203.0.113.7", **fields: str) -> Request:
    return Request(client_address=client, recipient=recipient, **fields)


# --- mx_policy ----------------------------------------------------------------------------

mx = mx_policy(["local.test"], relay_domains=["relay.test"], trusted_networks=["192.0.2.0/24"])


def test_mx_policy_is_the_postfix_chain() -> None:
    assert isinstance(mx, FirstMatch)
    assert mx.name == "mx"
    assert [type(policy) for policy in mx.policies] == [
        TrustedNetworks,
        SmtpAuthRequired,
        LocalDomainOnly,
    ]
    auth = mx.policies[1]
    assert isinstance(auth, SmtpAuthRequired)
    assert auth.otherwise is Verdict.NEXT
    assert not auth.require_tls


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (req("taro@local.test"), (Verdict.ACCEPT, "LocalDomainOnly", "local")),
        (req("x@mx2.relay.test"), (Verdict.ACCEPT, "LocalDomainOnly", "relay-domain")),
        (req("taro@aho.jp"), (Verdict.REJECT, "LocalDomainOnly", "not-local")),
        (req("u%aho.jp@local.test"), (Verdict.REJECT, "LocalDomainOnly", "routing")),
        (req("taro@aho.jp", "192.0.2.9"), (Verdict.ACCEPT, "TrustedNetworks", "trusted-network")),
        (
            req("u%aho.jp@local.test", sasl_username="yomogi"),
            (Verdict.ACCEPT, "SmtpAuthRequired", "sasl-authenticated"),
        ),
        (req("bad\x00@local.test", "192.0.2.9"), (Verdict.REJECT, "mx", "syntax")),
    ],
)
def test_mx_policy_decisions(request_: Request, expected: tuple[Verdict, str, str]) -> None:
    decision = mx.check(request_)
    assert (decision.verdict, decision.policy, decision.reason) == expected


def test_mx_policy_without_networks_or_table() -> None:
    plain = mx_policy(["local.test"])
    assert [type(policy) for policy in plain.policies] == [SmtpAuthRequired, LocalDomainOnly]
    assert plain.check(req("taro@aho.jp", "192.0.2.9")).reason == "not-local"
    with pytest.raises(TypeError, match="not one string"):
        mx_policy(["local.test"], trusted_networks="192.0.2.0/24")


def test_mx_policy_with_pop_before_smtp() -> None:
    # Needs the POP-before-SMTP issue's modules; imported here so the rest runs without them.
    from relaypolicy import iptable
    from relaypolicy.policies import popbeforesmtp

    now = [1000.0]
    table = iptable.ExpiringIpTable(ttl=1800.0, clock=lambda: now[0])
    policy = mx_policy(["local.test"], pop_table=table)
    assert [type(p) for p in policy.policies] == [
        SmtpAuthRequired,
        popbeforesmtp.PopBeforeSmtp,
        LocalDomainOnly,
    ]

    assert policy.check(req("taro@aho.jp")).reason == "not-local"
    table.record("203.0.113.7", user="yomogi")
    relayed = policy.check(req("taro@aho.jp"))
    assert relayed.verdict is Verdict.ACCEPT
    assert relayed.policy == policy.policies[1].name
    assert policy.check(req("taro@aho.jp", "203.0.113.8")).reason == "not-local"
    now[0] += 3600.0  # the login has expired
    assert policy.check(req("taro@aho.jp")).reason == "not-local"
    # Authentication still outranks everything but trusted networks.
    assert policy.check(req("taro@aho.jp", sasl_username="yomogi")).policy == "SmtpAuthRequired"


# --- submission_policy --------------------------------------------------------------------


def test_submission_policy_defaults_to_tls() -> None:
    submission = submission_policy()
    assert submission.name == "submission"
    (auth,) = submission.policies
    assert isinstance(auth, SmtpAuthRequired)
    assert auth.require_tls
    assert auth.otherwise is Verdict.REJECT
    assert auth.sender_logins is None

    assert str(submission.check(req("taro@aho.jp"))) == (
        "530 5.7.0 Must issue a STARTTLS command first"
    )
    assert str(submission.check(req("taro@aho.jp", **TLS))) == "530 5.7.0 Authentication required"
    assert submission.check(req("taro@aho.jp", sasl_username="yomogi")).reason == "tls-required"
    accepted = submission.check(req("taro@aho.jp", sasl_username="yomogi", **TLS))
    assert (accepted.verdict, accepted.reason) == (Verdict.ACCEPT, "sasl-authenticated")
    # Even an authenticated client cannot send to a malformed recipient.
    bad = submission.check(req("bad\r\n@aho.jp", sasl_username="yomogi", **TLS))
    assert (str(bad), bad.policy) == ("501 5.1.3 Bad recipient address syntax", "submission")


def test_submission_policy_without_tls_and_with_sender_logins() -> None:
    submission = submission_policy(require_tls=False, sender_logins={"@local.test": "yomogi"})
    ok = submission.check(req("taro@aho.jp", sasl_username="yomogi", sender="a@local.test"))
    assert ok.verdict is Verdict.ACCEPT
    refused = submission.check(req("taro@aho.jp", sasl_username="saya", sender="a@local.test"))
    assert str(refused) == (
        "553 5.7.1 <a@local.test>: Sender address rejected: not owned by user saya"
    )


def test_one_service_for_every_port() -> None:
    service = ByServerPort({587: submission_policy(), 465: submission_policy()}, default=mx)
    stranger = {"server_port": "25"}
    assert service.check(req("taro@local.test", **stranger)).verdict is Verdict.ACCEPT
    assert service.check(req("taro@aho.jp", **stranger)).reason == "not-local"
    on_465 = {"server_port": "465", **TLS}
    assert service.check(req("taro@local.test", **on_465)).reason == "auth-required"
    user = service.check(req("taro@aho.jp", sasl_username="yomogi", **on_465))
    assert user.verdict is Verdict.ACCEPT
