"""One sender-ownership rule: the same table of cases through both policies that use it.

:class:`SmtpAuthRequired` takes the table as ``sender_logins`` (sender -> logins),
:class:`PopBeforeSmtp` as ``bind_sender`` (login -> senders, a mapping or a callable).
Both compile it into :class:`relaypolicy.senders.SenderOwnership`; every row below must
give the same ownership answer through each, in each policy's own words.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import Enum

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaypolicy import Request, Verdict, parse_address
from relaypolicy.iptable import ExpiringIpTable
from relaypolicy.model import Decision
from relaypolicy.policies.auth import SmtpAuthRequired
from relaypolicy.policies.popbeforesmtp import PopBeforeSmtp
from relaypolicy.senders import (
    SenderForm,
    SenderOwnership,
    login_key,
    sender_form,
    sender_key,
)
from relaypolicy.testing.strategies import mailboxes, unicode_text

CLIENT = "203.0.113.7"

# (sender, login): who owns what, written once, in the spellings a configuration might use.
OWNERSHIP = [
    ("straße@example.org", "Bob"),
    ("ceo@example.org", "Carol"),
    ("@example.org", "admin"),
    ("Alice@Example.ORG.", "alice"),
    ("@例え.jp", "Saya"),
    ("shared@xn--r8jz45g.jp", "alice"),
    ("shared@xn--r8jz45g.jp", "Bob"),
]


def as_sender_logins() -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    for sender, login in OWNERSHIP:
        table.setdefault(sender, []).append(login)
    return table


def as_bind_sender() -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    for sender, login in OWNERSHIP:
        table.setdefault(login, []).append(sender)
    return table


class Owned(Enum):
    YES = "owned"
    NO = "not owned"  # a known login, somebody else's sender (or nobody's)
    UNKNOWN_LOGIN = "the login owns nothing at all"
    NULL = "the null sender"
    INVALID = "not an address"
    UNQUALIFIED = "no domain"


# (login, sender, answer)
# fmt: off
CASES: list[tuple[str, str, Owned]] = [
    # Local parts casefolded: ß is ss, whatever the case.
    ("Bob", "straße@example.org", Owned.YES),
    ("bob", "straße@example.org", Owned.YES),
    ("BOB", "STRASSE@example.org", Owned.YES),
    ("bob", "strasse@EXAMPLE.org.", Owned.YES),
    ("bob", "Straße@Example.Org", Owned.YES),
    ("bob", '"straße"@example.org', Owned.YES),
    ("bob", "<STRAßE@example.org>", Owned.YES),
    ("bob", "strasse+tag@example.org", Owned.NO),  # no address extensions: admin's domain
    # The exact address is looked up first; the domain entry only for unlisted addresses.
    ("admin", "other@example.org", Owned.YES),
    ("admin", "straße@example.org", Owned.NO),
    ("admin", "STRASSE@example.org", Owned.NO),
    ("admin", "ceo@example.org", Owned.NO),
    ("carol", "CEO@example.org", Owned.YES),
    ("carol", "other@example.org", Owned.NO),
    ("bob", "other@example.org", Owned.NO),
    ("Alice", "alice@example.org", Owned.YES),
    ("alice", "ALICE@EXAMPLE.ORG", Owned.YES),
    ("admin", "sub@mx.example.org", Owned.NO),  # no entry: subdomains are not in it
    # Internationalised domains: U-label and A-label, any case, a trailing dot.
    ("saya", "saya@例え.jp", Owned.YES),
    ("SAYA", "anyone@xn--r8jz45g.jp", Owned.YES),
    ("Saya", "x@例え.JP.", Owned.YES),
    ("saya", "x@XN--R8JZ45G.JP", Owned.YES),
    ("saya", "x@sub.例え.jp", Owned.NO),
    ("saya", "x@例え.jp.evil", Owned.NO),
    ("saya", "shared@例え.jp", Owned.NO),  # listed on its own: alice's and Bob's only
    ("bob", "SHARED@例え.jp", Owned.YES),
    ("Alice", "shared@xn--r8jz45g.jp", Owned.YES),
    # Logins nobody listed.
    ("mallory", "mallory@example.org", Owned.UNKNOWN_LOGIN),
    ("mallory", "straße@example.org", Owned.UNKNOWN_LOGIN),
    ("bob2", "straße@example.org", Owned.UNKNOWN_LOGIN),
    # Senders nobody owns.
    ("bob", "", Owned.NULL),
    ("bob", "<>", Owned.NULL),
    ("bob", "straße", Owned.UNQUALIFIED),
    ("bob", "straße@", Owned.INVALID),
    ("bob", "straße@ex\u2024ample.org", Owned.INVALID),  # U+2024: UTS 46 disallows it
    ("bob", "-straße@example.org", Owned.INVALID),  # Postfix: allow_min_user = no
    ("bob", "straße @example.org", Owned.INVALID),
]
# fmt: on

# Rows where another login's exact address overrides this login's @domain. A callable
# bind_sender is asked about one login at a time and cannot see the other logins' entries:
# through it these are owned (docs/pop-before-smtp.md says so).
OTHER_LOGINS_EXACT = {
    ("admin", "straße@example.org"),
    ("admin", "STRASSE@example.org"),
    ("admin", "ceo@example.org"),
    ("saya", "shared@例え.jp"),
}

# What each policy answers, given a logged-in client: (verdict, reason).
SMTP_AUTH = {
    Owned.YES: (Verdict.ACCEPT, "sasl-authenticated"),
    Owned.NO: (Verdict.REJECT, "sender-not-owned"),
    Owned.UNKNOWN_LOGIN: (Verdict.REJECT, "sender-not-owned"),
    Owned.NULL: (Verdict.ACCEPT, "sasl-authenticated"),  # RFC 6409 section 3.2
    Owned.INVALID: (Verdict.REJECT, "sender-syntax"),
    Owned.UNQUALIFIED: (Verdict.REJECT, "sender-not-fqdn"),
}
POP_BEFORE_SMTP = {
    Owned.YES: (Verdict.ACCEPT, "pop-before-smtp"),
    Owned.NO: (Verdict.NEXT, "sender-not-bound"),
    Owned.UNKNOWN_LOGIN: (Verdict.NEXT, "unknown-user"),
    Owned.NULL: (Verdict.NEXT, "null-sender"),
    Owned.INVALID: (Verdict.NEXT, "sender-not-bound"),
    Owned.UNQUALIFIED: (Verdict.NEXT, "sender-not-bound"),
}

Decide = Callable[[str, str], Decision]


def smtp_auth() -> Decide:
    policy = SmtpAuthRequired(sender_logins=as_sender_logins())

    def decide(login: str, sender: str) -> Decision:
        return policy.check(
            Request(client_address=CLIENT, recipient="x@aho.jp", sender=sender, sasl_username=login)
        )

    return decide


def pop_before_smtp(callable_binding: bool) -> Decide:
    binding = as_bind_sender()
    # A callable does its own login lookup; this one folds case like the mapping does.
    folded = {login_key(login): senders for login, senders in binding.items()}
    table = ExpiringIpTable()
    policy = PopBeforeSmtp(
        table,
        bind_sender=(lambda login: folded.get(login_key(login))) if callable_binding else binding,
    )

    def decide(login: str, sender: str) -> Decision:
        table.record(CLIENT, user=login)
        return policy.check(Request(client_address=CLIENT, recipient="x@aho.jp", sender=sender))

    return decide


POLICIES: dict[str, tuple[Callable[[], Decide], dict[Owned, tuple[Verdict, str]]]] = {
    "sender_logins": (smtp_auth, SMTP_AUTH),
    "bind_sender": (lambda: pop_before_smtp(False), POP_BEFORE_SMTP),
    "bind_sender-callable": (lambda: pop_before_smtp(True), POP_BEFORE_SMTP),
}


def test_the_table_covers_every_answer() -> None:
    assert {answer for _, _, answer in CASES} == set(Owned)
    assert len({(login, sender) for login, sender, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(
    ("login", "sender", "owned"), CASES, ids=[f"{c[0]}:{c[1]!r}" for c in CASES]
)
def test_one_ownership_rule(policy: str, login: str, sender: str, owned: Owned) -> None:
    make, answers = POLICIES[policy]
    decision = make()(login, sender)
    if policy == "bind_sender-callable" and (login, sender) in OTHER_LOGINS_EXACT:
        owned = Owned.YES
    assert (decision.verdict, decision.reason) == answers[owned], str(decision)


def test_a_login_owns_a_sender_by_the_same_rule_in_both_directions() -> None:
    by_sender = SenderOwnership.from_sender_logins(as_sender_logins())
    by_login = SenderOwnership.from_bound_senders(as_bind_sender())
    assert by_sender.as_table() == by_login.as_table()
    assert by_sender.as_table()["strasse@example.org"] == {"bob"}
    assert by_sender.as_table()["@xn--r8jz45g.jp"] == {"saya"}
    assert by_sender.as_table()["shared@xn--r8jz45g.jp"] == {"alice", "bob"}
    assert by_login.logins == {"bob", "carol", "admin", "alice", "saya"}
    for login, sender, owned in CASES:
        address = parse_address(sender)
        for ownership in (by_sender, by_login):
            assert ownership.owns(login, address) is (owned is Owned.YES), (login, sender)


# --- the pieces ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("Alice@Example.ORG.", ("alice@example.org", False)),
        ("STRAßE@example.org", ("strasse@example.org", False)),
        ('"Straße"@example.org', ("strasse@example.org", False)),
        (" user@例え.jp ", ("user@xn--r8jz45g.jp", False)),
        ("@例え.JP.", ("xn--r8jz45g.jp", True)),
        ("@[192.0.2.1]", ("[192.0.2.1]", True)),
        ("u@[IPv6:2001:DB8::1]", ("u@[ipv6:2001:db8::1]", False)),
    ],
)
def test_sender_key(text: str, key: tuple[str, bool]) -> None:
    assert sender_key(text) == key


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty address"),
        ("<>", "empty address"),
        ("example.org", "no domain"),
        ("@", "bad domain"),
        ("@exa mple.org", "bad domain"),
        ("@ex\u2024ample.org", "U+2024"),
        ("user@ex\u2024ample.org", "U+2024"),
        ("user@", "nothing after"),
        ("-user@example.org", "starts with '-'"),
    ],
)
def test_sender_key_refuses(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)) as raised:
        sender_key(text)
    assert str(raised.value).endswith("use user@domain or @domain")


@pytest.mark.parametrize(
    ("text", "form"),
    [
        ("user@example.org", SenderForm.MAILBOX),
        ("", SenderForm.NULL),
        ("<>", SenderForm.NULL),
        ("user", SenderForm.UNQUALIFIED),
        ("user@", SenderForm.INVALID),
        ("a\x00@example.org", SenderForm.INVALID),
    ],
)
def test_sender_form(text: str, form: SenderForm) -> None:
    assert sender_form(parse_address(text)) is form


def test_login_names_are_casefolded() -> None:
    assert login_key("Bob") == login_key("BOB") == "bob"
    assert login_key("Straße") == login_key("STRASSE")
    assert SenderOwnership.from_sender_logins({"a@b.example": "X, y  z"}).logins == {"x", "y", "z"}


@pytest.mark.parametrize(
    ("table", "error", "message"),
    [
        ({"@bad..example": "x"}, ValueError, "sender_logins['@bad..example']: bad domain"),
        ({"a@b.example": "x", "A@B.EXAMPLE.": "y"}, ValueError, "are the same address"),
        ({"a@b.example": " , "}, ValueError, "sender_logins['a@b.example']: no login names"),
        ({"a@b.example": [3]}, TypeError, "sender_logins['a@b.example']: login names must be str"),
        ({3: "x"}, TypeError, "sender_logins: keys must be str"),
    ],
)
def test_sender_logins_errors_name_the_argument(
    table: dict[object, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        SenderOwnership.from_sender_logins(table)  # type: ignore[arg-type]
    with pytest.raises(error, match=re.escape(message)):
        SmtpAuthRequired(sender_logins=table)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("table", "error", "message"),
    [
        ({"bob": ["@bad..example"]}, ValueError, "bind_sender['bob']: '@bad..example': bad domain"),
        ({"bob": "example.org"}, ValueError, "bind_sender['bob']: 'example.org': no domain"),
        ({"Bob": [], "bob": []}, ValueError, "logins 'Bob' and 'bob' are the same login"),
        ({"bob": [3]}, TypeError, "bind_sender['bob']: expected sender text, got 3"),
        ({3: []}, TypeError, "bind_sender: login names must be str"),
    ],
)
def test_bind_sender_errors_name_the_argument(
    table: dict[object, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        SenderOwnership.from_bound_senders(table)  # type: ignore[arg-type]
    with pytest.raises(error, match=re.escape(message)):
        PopBeforeSmtp(ExpiringIpTable(), bind_sender=table)  # type: ignore[arg-type]


def test_a_login_bound_to_nothing_is_known_but_owns_nothing() -> None:
    ownership = SenderOwnership.from_bound_senders({"nobody": []})
    assert ownership.knows("NOBODY")
    assert not ownership.owns("nobody", parse_address("nobody@example.org"))
    assert len(ownership) == 0
    assert repr(ownership) == "SenderOwnership(<0 senders, 1 logins>)"


# --- laws ---------------------------------------------------------------------------------

LOGINS = st.sampled_from(["Bob", "bob", "BOB", "admin", "Saya", "carol", "mallory", ""])
SENDERS = st.one_of(
    unicode_text(max_size=30),
    mailboxes(["example.org", "例え.jp", "xn--r8jz45g.jp", "EXAMPLE.ORG.", "aho.jp"]),
    st.sampled_from([sender for _, sender, _ in CASES]),
)


@settings(max_examples=400, deadline=None)
@given(login=LOGINS, sender=SENDERS)
def test_both_policies_agree_on_every_sender(login: str, sender: str) -> None:
    """Any sender string, any login: neither policy raises, and a logged-in client may use
    a (non-null) sender through one policy exactly when it may through the other."""
    if not login:
        auth = SmtpAuthRequired(sender_logins=as_sender_logins(), otherwise=Verdict.NEXT)
        decision = auth.check(Request(client_address=CLIENT, recipient="x@aho.jp", sender=sender))
        assert decision.verdict is not Verdict.ACCEPT
        return
    auth_decision = smtp_auth()(login, sender)
    pop_decision = pop_before_smtp(False)(login, sender)
    if sender_form(parse_address(sender)) is SenderForm.NULL:
        assert pop_decision.reason == "null-sender"
        return
    assert (auth_decision.verdict is Verdict.ACCEPT) is (pop_decision.verdict is Verdict.ACCEPT)
