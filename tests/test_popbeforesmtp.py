"""PopBeforeSmtp: the classic chain, failing closed, and the NAT mitigation (bind_sender)."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaypolicy import (
    Decision,
    FirstMatch,
    LocalDomainOnly,
    Policy,
    Request,
    TrustedNetworks,
    Verdict,
)
from relaypolicy.iptable import ExpiringIpTable, IpEntry, Login
from relaypolicy.policies.popbeforesmtp import PopBeforeSmtp
from relaypolicy.testing import FakeClock

TTL = 1800.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def table(clock: FakeClock) -> ExpiringIpTable:
    return ExpiringIpTable(TTL, clock=clock)


def req(client: str, recipient: str = "friend@aho.jp", sender: str = "") -> Request:
    return Request(client_address=client, recipient=recipient, sender=sender)


# --- the classic setup --------------------------------------------------------------------


def test_chain_relays_for_a_recorded_address_until_it_expires(
    table: ExpiringIpTable, clock: FakeClock
) -> None:
    chain = FirstMatch(
        TrustedNetworks(["192.0.2.0/24"]),
        PopBeforeSmtp(table),
        LocalDomainOnly(["example.org"]),
    )
    relay = req("203.0.113.7", "friend@aho.jp")
    assert str(chain.check(relay)) == "554 5.7.1 <friend@aho.jp>: Relay access denied"

    table.record("::ffff:203.0.113.7", user="alice")  # as a dual-stack POP3 server logs it
    clock.advance(TTL - 1)
    decision = chain.check(relay)
    assert decision.verdict is Verdict.ACCEPT
    assert (decision.policy, decision.reason) == ("PopBeforeSmtp", "pop-before-smtp")
    assert chain.check(req("203.0.113.8")).verdict is Verdict.REJECT  # a neighbour

    clock.advance(2)
    decision = chain.check(relay)
    assert decision.verdict is Verdict.REJECT
    assert str(decision) == "554 5.7.1 <friend@aho.jp>: Relay access denied"
    # Local mail and trusted networks are unaffected.
    assert chain.check(req("203.0.113.7", "taro@example.org")).reason == "local"
    assert chain.check(req("192.0.2.9")).reason == "trusted-network"


def test_chain_still_refuses_routing_tricks_from_strangers(table: ExpiringIpTable) -> None:
    chain = FirstMatch(PopBeforeSmtp(table), LocalDomainOnly(["example.org"]))
    decision = chain.check(req("203.0.113.7", "user%aho.jp@example.org"))
    assert (decision.verdict, decision.reason) == (Verdict.REJECT, "routing")


def test_no_live_entry_is_next(table: ExpiringIpTable) -> None:
    decision = PopBeforeSmtp(table).check(req("203.0.113.7"))
    assert decision == Decision(Verdict.NEXT, 0, "", "", "PopBeforeSmtp", "no-login")


def test_ipv6_clients_by_prefix(clock: FakeClock) -> None:
    table = ExpiringIpTable(TTL, clock=clock, ipv6_prefix=64)
    policy = PopBeforeSmtp(table, name="pop")
    table.record("2001:db8:1:2::5")
    assert policy.check(req("2001:db8:1:2:dead:beef::1")).verdict is Verdict.ACCEPT
    assert policy.check(req("2001:db8:1:3::5")).verdict is Verdict.NEXT


def test_is_a_policy(table: ExpiringIpTable) -> None:
    policy = PopBeforeSmtp(table)
    assert isinstance(policy, Policy)
    assert policy.table is table
    assert repr(policy).startswith("PopBeforeSmtp(ExpiringIpTable(")


def test_refuses_something_that_is_not_a_table() -> None:
    with pytest.raises(TypeError, match="not an IP table"):
        PopBeforeSmtp({"203.0.113.7": 1})  # type: ignore[arg-type]


# --- failing closed -----------------------------------------------------------------------


class BrokenTable(ExpiringIpTable):
    """A table whose reads fail, as a remote table does when its server is down."""

    def has_client(self, request: Request) -> bool:
        raise ConnectionError("redis: connection refused")

    def client_login(self, request: Request) -> Login | None:
        raise ConnectionError("redis: connection refused")


@pytest.mark.parametrize("bind_sender", [None, {"alice": "@example.org"}])
def test_unreadable_table_defers_never_accepts(bind_sender: dict[str, str] | None) -> None:
    table = BrokenTable()
    table.record("203.0.113.7", user="alice")
    policy = PopBeforeSmtp(table, bind_sender=bind_sender)
    decision = policy.check(req("203.0.113.7", sender="alice@example.org"))
    assert decision.verdict is Verdict.DEFER
    assert str(decision) == "451 4.3.0 Temporary lookup failure"
    assert decision.reason.startswith("table-error: ConnectionError(")
    assert "connection refused" in decision.reason
    chain = FirstMatch(policy, LocalDomainOnly(["example.org"]))
    assert chain.check(req("203.0.113.7")).verdict is Verdict.DEFER


def test_failing_binding_defers(table: ExpiringIpTable) -> None:
    def directory(login: str) -> Iterable[str]:
        raise TimeoutError("LDAP did not answer")

    table.record("203.0.113.7", user="alice")
    decision = PopBeforeSmtp(table, bind_sender=directory).check(
        req("203.0.113.7", sender="alice@example.org")
    )
    assert decision.verdict is Verdict.DEFER
    assert decision.reason.startswith("binding-error: TimeoutError(")


# --- the NAT mitigation -------------------------------------------------------------------

BINDING = {
    "alice": ["Alice@Example.ORG", "@alice.example"],
    "bob": "bob@example.org",
    "nobody": [],
}


@pytest.mark.parametrize(
    ("user", "sender", "verdict", "reason"),
    [
        ("alice", "alice@example.org", Verdict.ACCEPT, "pop-before-smtp"),
        ("alice", "ALICE@EXAMPLE.ORG.", Verdict.ACCEPT, "pop-before-smtp"),  # case, root dot
        ("alice", "<alice@example.org>", Verdict.ACCEPT, "pop-before-smtp"),
        ("alice", '"alice"@example.org', Verdict.ACCEPT, "pop-before-smtp"),
        ("alice", "anything@alice.example", Verdict.ACCEPT, "pop-before-smtp"),
        ("alice", "anything@ALICE.example", Verdict.ACCEPT, "pop-before-smtp"),
        ("alice", "alice@sub.alice.example", Verdict.NEXT, "sender-not-bound"),
        ("alice", "bob@example.org", Verdict.NEXT, "sender-not-bound"),
        ("alice", "alice", Verdict.NEXT, "sender-not-bound"),
        ("alice", "alice@", Verdict.NEXT, "sender-not-bound"),  # malformed sender
        ("alice", "", Verdict.NEXT, "null-sender"),
        ("alice", "<>", Verdict.NEXT, "null-sender"),
        ("bob", "bob@example.org", Verdict.ACCEPT, "pop-before-smtp"),
        ("bob", "alice@example.org", Verdict.NEXT, "sender-not-bound"),
        ("nobody", "nobody@example.org", Verdict.NEXT, "sender-not-bound"),
        ("mallory", "mallory@example.org", Verdict.NEXT, "unknown-user"),
        (None, "alice@example.org", Verdict.NEXT, "unknown-user"),
    ],
)
def test_bind_sender(
    table: ExpiringIpTable, user: str | None, sender: str, verdict: Verdict, reason: str
) -> None:
    table.record("203.0.113.7", user=user)
    for policy in (
        PopBeforeSmtp(table, bind_sender=BINDING),
        PopBeforeSmtp(table, bind_sender=BINDING.get),  # a callable
    ):
        decision = policy.check(req("203.0.113.7", sender=sender))
        assert (decision.verdict, decision.reason) == (verdict, reason)


def test_bound_client_behind_nat_is_the_latest_login(table: ExpiringIpTable) -> None:
    policy = PopBeforeSmtp(table, bind_sender=BINDING)

    def reason(sender: str) -> str:
        return policy.check(req("203.0.113.7", sender=sender)).reason

    table.record("203.0.113.7", user="alice")
    assert reason("alice@example.org") == "pop-before-smtp"
    table.record("203.0.113.7", user="bob")  # bob logs in from the same NAT address
    assert reason("alice@example.org") == "sender-not-bound"
    assert reason("bob@example.org") == "pop-before-smtp"


def test_unbound_policy_ignores_the_sender(table: ExpiringIpTable) -> None:
    table.record("203.0.113.7")
    policy = PopBeforeSmtp(table)
    assert policy.check(req("203.0.113.7", sender="")).verdict is Verdict.ACCEPT
    assert policy.check(req("203.0.113.7", sender="anyone@anywhere")).verdict is Verdict.ACCEPT


def test_binding_callable_may_answer_none(table: ExpiringIpTable) -> None:
    table.record("203.0.113.7", user="alice")
    policy = PopBeforeSmtp(table, bind_sender=lambda login: None)
    assert policy.check(req("203.0.113.7", sender="alice@example.org")).reason == "unknown-user"


@pytest.mark.parametrize(
    ("binding", "message"),
    [
        ({"alice": ["example.org"]}, r"bind_sender\['alice'\]: 'example.org': no domain"),
        ({"Bob": ["bob@example.org"], "bob": []}, "'Bob' and 'bob' are the same login"),
        ({5: ["bob@example.org"]}, "login names must be str"),
        ({"alice": ["@"]}, "'@'"),
        ({"alice": ["@exa mple.org"]}, "'@exa mple.org'"),
        ({"alice": ["alice@"]}, "'alice@'"),
        ({"alice": [5]}, "expected sender text"),
    ],
)
def test_bad_binding_is_refused_at_construction(
    table: ExpiringIpTable, binding: dict[str, list[object]], message: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        PopBeforeSmtp(table, bind_sender=binding)  # type: ignore[arg-type]


def test_bad_binding_type(table: ExpiringIpTable) -> None:
    with pytest.raises(TypeError, match="bind_sender"):
        PopBeforeSmtp(table, bind_sender=5)  # type: ignore[arg-type]


# --- laws ---------------------------------------------------------------------------------

clients = st.sampled_from(["203.0.113.7", "203.0.113.8", "::ffff:203.0.113.9", "2001:db8::1"])
senders = st.sampled_from(
    ["", "alice@example.org", "bob@example.org", "x@alice.example", "mallory@evil.example"]
)


@settings(max_examples=200, deadline=None)
@given(
    recorded=st.lists(st.tuples(clients, st.sampled_from([None, "alice", "bob"]))),
    elapsed=st.floats(0, 2 * TTL),
    client=clients,
    sender=senders,
)
def test_never_accepts_without_a_live_entry_or_with_an_unbound_sender(
    recorded: list[tuple[str, str | None]], elapsed: float, client: str, sender: str
) -> None:
    clock = FakeClock()
    table = ExpiringIpTable(TTL, clock=clock)
    for address, user in recorded:
        table.record(address, user=user)
    clock.advance(elapsed)
    entry: IpEntry | None = table.lookup(client)
    request = req(client, sender=sender)
    plain = PopBeforeSmtp(table).check(request)
    assert (plain.verdict is Verdict.ACCEPT) is (entry is not None)
    bound = PopBeforeSmtp(table, bind_sender=BINDING).check(request)
    if bound.verdict is Verdict.ACCEPT:
        assert entry is not None
        assert entry.user in ("alice", "bob")
        assert sender and sender != "mallory@evil.example"
        assert sender.startswith(entry.user) or sender.endswith("@alice.example")
