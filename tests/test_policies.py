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
from relaypolicy.fleet import StaleTable
from relaypolicy.iptable import ExpiringIpTable, Login
from relaypolicy.model import LookupFailure, lookup_failure
from relaypolicy.policies import PopBeforeSmtp, mx_policy

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


# --- a step whose state cannot be read ---------------------------------------------------


class DownTable(ExpiringIpTable):
    """An IP table whose every read fails, as a shared table cut off from its store."""

    reads = 0

    def has_client(self, request: Request) -> bool:
        self.reads += 1
        raise StaleTable("shared table stale: Redis last heard from 60.0 s ago")

    def client_login(self, request: Request) -> Login | None:
        self.reads += 1
        raise StaleTable("shared table stale: Redis last heard from 60.0 s ago")


class Fixed:
    """A policy that always gives ``decision``."""

    name = "fixed"

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        self.asked = 0

    def check(self, request: Request) -> Decision:
        self.asked += 1
        return self.decision


LOOKUP_FAILED = (Verdict.DEFER, "451 4.3.0 Temporary lookup failure", "PopBeforeSmtp")


def outcome(decision: Decision) -> tuple[Verdict, str, str]:
    return decision.verdict, str(decision), decision.policy


@pytest.mark.parametrize("bind_sender", [None, {"alice": "@local.test"}])
def test_an_unreadable_table_still_lets_local_mail_in_and_defers_relays(
    bind_sender: dict[str, str] | None,
) -> None:
    pop = PopBeforeSmtp(DownTable(), bind_sender=bind_sender)
    mx = FirstMatch(trusted, pop, local_only)
    for recipient, reason in [("x@local.test", "local"), ("x@mx.relay.test", "relay-domain")]:
        decision = mx.check(req(recipient, sender="alice@local.test"))
        assert (decision.verdict, decision.reason) == (Verdict.ACCEPT, reason)
    relayed = mx.check(req("friend@aho.jp", sender="alice@local.test"))
    assert outcome(relayed) == LOOKUP_FAILED  # never 554: the client may be a POP user
    assert isinstance(relayed, LookupFailure)
    assert relayed.reason.startswith("table-error: StaleTable(")
    assert outcome(mx.check(req("x%aho.jp@local.test"))) == LOOKUP_FAILED  # routing: held
    assert mx.check(req("friend@aho.jp", "192.0.2.1")).reason == "trusted-network"
    assert mx.check(req("x@aho.jp\r\n")).reason == "syntax"  # before any policy


def test_a_lookup_failure_is_a_defer_marked_once_in_the_core() -> None:
    failure = lookup_failure("p", "table-error: boom")
    assert isinstance(failure, LookupFailure) and isinstance(failure, Decision)
    assert outcome(failure) == (Verdict.DEFER, "451 4.3.0 Temporary lookup failure", "p")
    plain = Decision(*failure)
    assert plain == failure and plain.__class__ is Decision  # a plain copy is no marker
    assert FirstMatch(Fixed(plain), local_only).check(req("x@local.test")) is plain


def test_after_a_lookup_failure_only_an_accept_stands() -> None:
    failure = lookup_failure("down", "table-error: boom")
    refused = Decision(Verdict.REJECT, 550, "5.7.1", "No", "later", "no")
    deferred = Decision(Verdict.DEFER, 450, "4.7.1", "Later", "later", "later")
    accepted = Decision(Verdict.ACCEPT, 250, "2.1.5", "Ok", "later", "yes")
    for later in (refused, deferred):
        after = Fixed(accepted)
        chain = FirstMatch(Fixed(failure), Fixed(later), after)
        assert chain.check(req("x@aho.jp")) is failure
        assert after.asked == 0  # first match: the REJECT/DEFER ended the chain
    assert FirstMatch(Fixed(failure), Fixed(accepted)).check(req("x@aho.jp")) is accepted
    # NEXT and another "cannot tell" are passed over; the first failure is the one held.
    other = lookup_failure("other", "table-error: also down")
    passed = FirstMatch(Fixed(failure), trusted, Fixed(other), Fixed(accepted))
    assert passed.check(req("x@aho.jp")) is accepted
    held = FirstMatch(Fixed(failure), Fixed(other), Fixed(refused))
    assert held.check(req("x@aho.jp")) is failure


@pytest.mark.parametrize("default", list(Verdict))
def test_after_a_lookup_failure_a_default_verdict_is_the_held_deferral(
    default: Verdict,
) -> None:
    failure = lookup_failure("down", "table-error: boom")
    chain = FirstMatch(Fixed(failure), trusted, default=default)
    assert chain.check(req("x@aho.jp")) is failure
    assert chain.check(req("x@local.test")) is failure


def test_after_a_lookup_failure_a_default_policy_is_asked() -> None:
    failure = lookup_failure("down", "table-error: boom")
    chain = FirstMatch(Fixed(failure), default=local_only)
    assert chain.check(req("x@local.test")).reason == "local"
    assert chain.check(req("x@aho.jp")) is failure


def test_the_same_policy_twice_is_asked_from_where_it_failed() -> None:
    table = DownTable()
    pop = PopBeforeSmtp(table)
    chain = FirstMatch(pop, trusted, pop, local_only)
    assert chain.check(req("x@local.test")).reason == "local"
    assert table.reads == 2  # both places were asked, each once
    assert outcome(chain.check(req("x@aho.jp"))) == LOOKUP_FAILED


def test_nested_chains_hold_a_lookup_failure_the_same_way() -> None:
    pop = PopBeforeSmtp(DownTable())
    flat = FirstMatch(trusted, pop, local_only)
    inner_pop = FirstMatch(pop, default=Verdict.NEXT, name="inner")
    inner_local = FirstMatch(pop, local_only, name="inner")
    inner_rejecting = FirstMatch(trusted, pop, name="inner")  # default REJECT
    nested = [
        FirstMatch(trusted, inner_pop, local_only, name="outer"),
        FirstMatch(trusted, inner_local, name="outer"),
        FirstMatch(inner_rejecting, local_only, name="outer"),
        FirstMatch(FirstMatch(FirstMatch(trusted, pop, default=Verdict.NEXT)), local_only),
    ]
    for recipient in ["x@local.test", "x@mx.relay.test", "x@aho.jp", "x%aho.jp@local.test"]:
        for client in ["203.0.113.7", "192.0.2.1"]:
            expected = flat.check(req(recipient, client))
            for chain in nested:
                decision = chain.check(req(recipient, client))
                assert (decision.verdict, str(decision), decision.reason) == (
                    expected.verdict,
                    str(expected),
                    expected.reason,
                ), (chain, recipient, client)


def test_the_mx_recipe_with_an_unreadable_table() -> None:
    mx = mx_policy(["local.test"], pop_table=DownTable())
    assert mx.check(req("x@local.test")).reason == "local"
    authenticated = req("friend@aho.jp", sasl_username="alice", sasl_method="PLAIN")
    assert mx.check(authenticated).verdict is Verdict.ACCEPT  # SMTP AUTH needs no table
    assert outcome(mx.check(req("friend@aho.jp"))) == LOOKUP_FAILED


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


@settings(max_examples=500)
@given(recipient=st.text(max_size=60), client=st.sampled_from(["203.0.113.7", "2001:db9::1"]))
def test_an_unreadable_table_never_relays_nor_refuses_for_good(recipient: str, client: str) -> None:
    """With the table down, an untrusted client's recipient is taken exactly when it is
    ours; any other well-formed one is deferred (never 554: the client may be a POP user)."""
    mx = FirstMatch(trusted, PopBeforeSmtp(DownTable()), local_only)
    request = req(recipient, client)
    decision = mx.check(request)
    ours = local_only.check(request)
    if ours.verdict is Verdict.ACCEPT:
        assert decision == ours
    elif ours.reason == "syntax":
        assert str(decision) == "501 5.1.3 Bad recipient address syntax"
    else:
        assert outcome(decision) == LOOKUP_FAILED, (recipient, decision)


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
