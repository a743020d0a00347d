"""OpenRelay, LocalDomainOnly, TrustedNetworks and FirstMatch, with Hypothesis laws."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from relaypolicy import (
    Decision,
    FirstMatch,
    LocalDomainOnly,
    OpenRelay,
    Policy,
    Request,
    TrustedNetworks,
    Verdict,
    normalize_domain,
)
from relaypolicy.domains import DomainError

LOCAL = ["local.test", "xn--r8jz45g.jp", "[192.0.2.1]"]
RELAY = ["relay.test"]
local_only = LocalDomainOnly(LOCAL, relay_domains=RELAY)
trusted = TrustedNetworks(["192.0.2.0/24", "10.0.0.0/8", "2001:db8::/32"])
chain = FirstMatch(trusted, local_only)


def req(recipient: str, client: str = "203.0.113.7", **fields: str) -> Request:
    return Request(client_address=client, recipient=recipient, **fields)


# --- plain behaviour ----------------------------------------------------------------------


def test_open_relay_accepts_anything() -> None:
    decision = OpenRelay().check(req("user%aho.jp@aho.jp"))
    assert decision.verdict is Verdict.ACCEPT
    assert decision.reason == "open-relay"


@pytest.mark.parametrize(
    ("client", "verdict"),
    [
        ("192.0.2.44", Verdict.ACCEPT),
        ("10.255.255.255", Verdict.ACCEPT),
        ("::ffff:10.1.2.3", Verdict.ACCEPT),  # mapped IPv6 matches the IPv4 block
        ("2001:db8:ffff::1", Verdict.ACCEPT),
        ("2001:DB8::1", Verdict.ACCEPT),
        ("192.0.3.1", Verdict.NEXT),
        ("11.0.0.1", Verdict.NEXT),
        ("2001:db9::1", Verdict.NEXT),
        ("::1", Verdict.NEXT),
    ],
)
def test_trusted_networks(client: str, verdict: Verdict) -> None:
    decision = trusted.check(req("user@aho.jp", client))
    assert decision.verdict is verdict
    assert decision.policy == "TrustedNetworks"
    assert decision.reason == (
        "trusted-network" if verdict is Verdict.ACCEPT else "untrusted-network"
    )


def test_trusted_networks_accepts_mapped_ipv6_block() -> None:
    policy = TrustedNetworks(["::ffff:198.51.100.0/120"])
    assert policy.check(req("u@aho.jp", "198.51.100.9")).verdict is Verdict.ACCEPT


def test_trusted_networks_rejects_bad_cidr() -> None:
    with pytest.raises(ValueError, match=re.escape("not a CIDR network: '10.0.0.1/8'")):
        TrustedNetworks(["10.0.0.1/8"])
    with pytest.raises(TypeError):
        TrustedNetworks("10.0.0.0/8")


def test_local_domain_only_rejects_bad_domain_config() -> None:
    with pytest.raises(DomainError, match=re.escape("bad domain 'local..test'")):
        LocalDomainOnly(["local..test"])
    with pytest.raises(TypeError):
        LocalDomainOnly("local.test")


def test_chain_first_decisive_answer_wins() -> None:
    assert chain.check(req("x@aho.jp", "192.0.2.1")).reason == "trusted-network"
    assert chain.check(req("x@local.test")).reason == "local"
    refused = chain.check(req("x@aho.jp"))
    assert refused.verdict is Verdict.REJECT
    assert refused.policy == "LocalDomainOnly"


def test_chain_refuses_bad_syntax_even_for_trusted_clients() -> None:
    decision = chain.check(req("x@aho.jp\r\nDATA", "192.0.2.1"))
    assert str(decision) == "501 5.1.3 Bad recipient address syntax"
    assert (decision.policy, decision.reason) == ("FirstMatch", "syntax")


def test_chain_default_when_everyone_passes() -> None:
    only_trusted = FirstMatch(trusted)
    decision = only_trusted.check(req("x@aho.jp"))
    assert str(decision) == "554 5.7.1 <x@aho.jp>: Relay access denied"
    assert (decision.policy, decision.reason) == ("FirstMatch", "default")
    assert FirstMatch(trusted, default=Verdict.DEFER).check(req("x@aho.jp")).code == 451
    assert FirstMatch(trusted, default=Verdict.NEXT).check(req("x@aho.jp")).verdict is Verdict.NEXT
    assert FirstMatch(default=Verdict.ACCEPT).check(req("x@aho.jp")).verdict is Verdict.ACCEPT
    assert FirstMatch(trusted, default=local_only).check(req("x@local.test")).reason == "local"


def test_chains_nest() -> None:
    inner = FirstMatch(trusted, default=Verdict.NEXT, name="inner")
    outer = FirstMatch(inner, local_only, name="outer")
    assert outer.check(req("x@aho.jp", "10.0.0.1")).reason == "trusted-network"
    assert outer.check(req("x@local.test")).reason == "local"
    assert outer.check(req("x@aho.jp")).verdict is Verdict.REJECT


class ByHelo:
    """A user's own policy: no base class, just a name and check()."""

    name = "by-helo"

    def check(self, request: Request) -> Decision:
        if request.helo_name == "friend.example":
            return Decision(Verdict.ACCEPT, 250, "2.1.5", "Ok", self.name, "friend")
        return Decision(Verdict.NEXT, 0, "", "", self.name, "stranger")


def test_user_policy_is_a_policy_without_inheriting() -> None:
    mine = ByHelo()
    assert isinstance(mine, Policy)
    policy = FirstMatch(mine, local_only)
    assert policy.check(req("x@aho.jp", helo_name="friend.example")).reason == "friend"
    assert policy.check(req("x@aho.jp")).verdict is Verdict.REJECT


def test_first_match_rejects_non_policies() -> None:
    with pytest.raises(TypeError, match="not a policy"):
        FirstMatch(object())  # type: ignore[arg-type]


# --- laws ---------------------------------------------------------------------------------

# A configured domain, written in any of the ways that mean it.
configured = st.sampled_from(
    [
        "local.test",
        "LOCAL.test",
        "local.test.",
        "例え.jp",
        "xn--r8jz45g.jp",
        "[192.0.2.1]",
        "relay.test",
        "mx.relay.test",
        "Relay.Test.",
    ]
)
atom_chars = string.ascii_letters + string.digits + "!#$&'*+/=?^_`{|}~-."
atoms = st.text(alphabet=atom_chars + "é日", min_size=0, max_size=12)
quoted_chars = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from("é日"),
    max_size=12,
)


@st.composite
def routed_local_parts(draw: st.DrawFn) -> str:
    """A local part whose dequoted form holds '@', '%' or '!', quoted or not."""
    mark = draw(st.sampled_from("@%!"))
    if draw(st.booleans()):
        inner = draw(quoted_chars) + mark + draw(quoted_chars)
        escaped = inner.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    return draw(atoms) + mark + draw(atoms)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(local=routed_local_parts(), domain=configured, brackets=st.booleans())
def test_routed_local_part_is_never_accepted(local: str, domain: str, brackets: bool) -> None:
    recipient = f"{local}@{domain}"
    if brackets:
        recipient = f"<{recipient}>"
    for policy in (local_only, chain):
        decision = policy.check(req(recipient))
        assert decision.verdict is not Verdict.ACCEPT, (recipient, decision)


@settings(max_examples=300)
@given(local=routed_local_parts())
def test_domainless_routed_is_never_accepted(local: str) -> None:
    assert local_only.check(req(local)).verdict is not Verdict.ACCEPT


def _is_configured(domain: str) -> bool:
    try:
        canonical = normalize_domain(domain)
    except DomainError:
        return False
    return (
        canonical in {"local.test", "xn--r8jz45g.jp"}
        or canonical == "relay.test"
        or (canonical.endswith(".relay.test"))
    )


domains = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\.[a-z0-9]{1,8}){1,3}", fullmatch=True),
    st.text(min_size=1, max_size=30),
    st.builds(
        lambda a, b: a + b,
        st.sampled_from(["local.test", "relay.test", "例え.jp"]),
        st.text(max_size=5),
    ),
    st.builds(
        lambda a, b: a + b,
        st.text(max_size=5),
        st.sampled_from(["local.test", "relay.test", "例え.jp"]),
    ),
)


@settings(max_examples=500)
@given(local=atoms.filter(bool), domain=domains)
def test_unconfigured_domain_is_never_accepted(local: str, domain: str) -> None:
    assume(not _is_configured(domain))
    recipient = f"{local}@{domain}"
    decision = local_only.check(req(recipient))
    assert decision.verdict is not Verdict.ACCEPT, (recipient, decision)


@settings(max_examples=1000)
@given(recipient=st.text(max_size=300), sender=st.text(max_size=40))
def test_check_never_raises(recipient: str, sender: str) -> None:
    request = Request(client_address="203.0.113.7", recipient=recipient, sender=sender)
    for policy in (local_only, chain, trusted, OpenRelay()):
        decision = policy.check(request)
        assert isinstance(decision, Decision)
        assert "\r" not in str(decision) and "\n" not in str(decision)


@settings(max_examples=300)
@given(recipient=st.binary(max_size=80))
def test_check_never_raises_on_decoded_bytes(recipient: bytes) -> None:
    text = recipient.decode("utf-8", "surrogateescape")
    decision = chain.check(req(text))
    assert decision.verdict in (Verdict.ACCEPT, Verdict.REJECT)
    if any(ord(c) < 0x20 for c in text):
        assert decision.reason == "syntax"


def test_relay_domain_answers_are_remembered_boundedly() -> None:
    from relaypolicy.policies import basic

    policy = LocalDomainOnly(["local.test"], relay_domains=["relay.test"])
    for _ in range(2):  # the second time from the memo
        assert policy.check(req("a@mx.relay.test")).reason == "relay-domain"
        assert policy.check(req("a@relay.test.evil.example")).reason == "not-local"
        assert policy.check(req("a@notrelay.test")).reason == "not-local"
    for i in range(basic._REMEMBERED_DOMAINS + 10):
        assert policy.check(req(f"a@host{i}.foreign.example")).verdict is Verdict.REJECT
        assert len(policy._relayed) <= basic._REMEMBERED_DOMAINS
    assert policy.check(req("a@deep.mx.relay.test")).verdict is Verdict.ACCEPT
