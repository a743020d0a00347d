"""SmtpAuthRequired and ClientCertificate, with Hypothesis laws."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaypolicy import FirstMatch, LocalDomainOnly, Request, Verdict
from relaypolicy.policies.auth import ClientCertificate, SmtpAuthRequired
from relaypolicy.text import reply_safe

CLIENT = "203.0.113.7"
TLS = {"encryption_protocol": "TLSv1.3"}


def req(recipient: str = "taro@aho.jp", **fields: str) -> Request:
    return Request(client_address=CLIENT, recipient=recipient, **fields)


# --- authentication -----------------------------------------------------------------------


def test_authenticated_client_is_accepted() -> None:
    decision = SmtpAuthRequired().check(req(sasl_username="yomogi", sasl_method="PLAIN"))
    assert decision.verdict is Verdict.ACCEPT
    assert (decision.policy, decision.reason) == ("SmtpAuthRequired", "sasl-authenticated")
    assert str(decision) == "250 2.1.5 Ok"


def test_unauthenticated_client_gets_530() -> None:
    decision = SmtpAuthRequired().check(req())
    assert decision.verdict is Verdict.REJECT
    assert decision.reason == "auth-required"
    assert str(decision) == "530 5.7.0 Authentication required"  # RFC 4954 section 6


def test_otherwise_next_only_permits() -> None:
    policy = SmtpAuthRequired(otherwise=Verdict.NEXT)
    decision = policy.check(req())
    assert decision.verdict is Verdict.NEXT
    assert decision.reason == "not-authenticated"
    assert str(decision) == ""
    assert policy.check(req(sasl_username="yomogi")).verdict is Verdict.ACCEPT


def test_otherwise_defer_is_temporary() -> None:
    decision = SmtpAuthRequired(otherwise=Verdict.DEFER).check(req())
    assert decision.verdict is Verdict.DEFER
    assert str(decision) == "454 4.7.0 Authentication required"
    assert decision.reason == "auth-required"


def test_otherwise_must_be_a_refusal_or_next() -> None:
    with pytest.raises(ValueError, match="OpenRelay"):
        SmtpAuthRequired(otherwise=Verdict.ACCEPT)
    with pytest.raises(TypeError, match="Verdict"):
        SmtpAuthRequired(otherwise="reject")  # type: ignore[arg-type]


def test_authentication_outranks_the_routing_check() -> None:
    # As Postfix: permit_sasl_authenticated before reject_unauth_destination.
    chain = FirstMatch(SmtpAuthRequired(otherwise=Verdict.NEXT), LocalDomainOnly(["local.test"]))
    routed = "user%aho.jp@local.test"
    decision = chain.check(req(routed, sasl_username="yomogi"))
    assert decision.verdict is Verdict.ACCEPT
    assert (decision.policy, decision.reason) == ("SmtpAuthRequired", "sasl-authenticated")
    refused = chain.check(req(routed))
    assert (refused.verdict, refused.policy, refused.reason) == (
        Verdict.REJECT,
        "LocalDomainOnly",
        "routing",
    )
    assert str(refused) == "554 5.7.1 <user%aho.jp@local.test>: Relay access denied"


# --- TLS ----------------------------------------------------------------------------------


def test_require_tls_refuses_even_an_authenticated_client() -> None:
    policy = SmtpAuthRequired(require_tls=True)
    decision = policy.check(req(sasl_username="yomogi"))
    assert decision.verdict is Verdict.REJECT
    assert decision.reason == "tls-required"
    assert str(decision) == "530 5.7.0 Must issue a STARTTLS command first"  # RFC 3207 s. 4
    assert policy.check(req(sasl_username="yomogi", **TLS)).verdict is Verdict.ACCEPT
    assert policy.require_tls


def test_require_tls_asks_for_starttls_before_auth() -> None:
    policy = SmtpAuthRequired(require_tls=True)
    assert policy.check(req()).reason == "tls-required"
    assert policy.check(req(**TLS)).reason == "auth-required"


def test_require_tls_with_next_passes_the_unauthenticated() -> None:
    policy = SmtpAuthRequired(require_tls=True, otherwise=Verdict.NEXT)
    assert policy.check(req()).verdict is Verdict.NEXT
    assert policy.check(req(sasl_username="yomogi")).reason == "tls-required"
    routed_chain = FirstMatch(policy, LocalDomainOnly(["local.test"]))
    same_client = req("user%aho.jp@local.test", sasl_username="yomogi")
    assert routed_chain.check(same_client).reason == "tls-required"
    assert routed_chain.check(same_client.replace(**TLS)).verdict is Verdict.ACCEPT


# --- sender ownership ---------------------------------------------------------------------

LOGINS = {
    "yomogi@local.test": "yomogi",
    "shared@local.test": "yomogi, Saya",  # a Postfix map value: commas and spaces
    "@local.test": ["admin"],
    "saya@例え.jp": ("saya",),
    "@Other.Test.": "relay-user",
}
owned = SmtpAuthRequired(sender_logins=LOGINS, otherwise=Verdict.NEXT)


@pytest.mark.parametrize(
    ("login", "sender"),
    [
        ("yomogi", "yomogi@local.test"),
        ("yomogi", "Yomogi@LOCAL.TEST."),  # domain canonical, local part case-insensitive
        ("yomogi", "<yomogi@local.test>"),
        ("yomogi", '"yomogi"@local.test'),  # the same mailbox, quoted
        ("YOMOGI", "yomogi@local.test"),  # login names compare case-insensitively
        ("yomogi", "shared@local.test"),
        ("saya", "shared@local.test"),
        ("admin", "anyone@local.test"),  # by @domain
        ("saya", "saya@xn--r8jz45g.jp"),  # U-label key, A-label sender
        ("saya", "SAYA@例え.JP"),
        ("relay-user", "x@other.test"),
        ("yomogi", ""),  # the null sender is never refused for being null
        ("yomogi", "<>"),
    ],
)
def test_owner_may_use_the_sender(login: str, sender: str) -> None:
    decision = owned.check(req(sasl_username=login, sender=sender))
    assert decision.verdict is Verdict.ACCEPT, decision
    assert decision.reason == "sasl-authenticated"


@pytest.mark.parametrize(
    ("login", "sender", "reply"),
    [
        (
            "saya",
            "yomogi@local.test",
            "553 5.7.1 <yomogi@local.test>: Sender address rejected: not owned by user saya",
        ),
        # The exact address is looked up first and wins over @domain, as in Postfix.
        (
            "admin",
            "yomogi@local.test",
            "553 5.7.1 <yomogi@local.test>: Sender address rejected: not owned by user admin",
        ),
        # An address nobody owns is not the logged-in user's either (Postfix
        # reject_authenticated_sender_login_mismatch).
        (
            "yomogi",
            "yomogi@aho.jp",
            "553 5.7.1 <yomogi@aho.jp>: Sender address rejected: not owned by user yomogi",
        ),
        (
            "yomogi",
            "<yomogi%aho.jp@aho.jp>",
            "553 5.7.1 <yomogi%aho.jp@aho.jp>: Sender address rejected: not owned by user yomogi",
        ),
    ],
)
def test_non_owner_is_refused(login: str, sender: str, reply: str) -> None:
    decision = owned.check(req(sasl_username=login, sender=sender))
    assert decision.verdict is Verdict.REJECT
    assert decision.reason == "sender-not-owned"
    assert str(decision) == reply


def test_not_logged_in_with_an_owned_sender() -> None:
    decision = owned.check(req("taro@local.test", sender="yomogi@local.test"))
    assert decision.verdict is Verdict.REJECT
    assert decision.reason == "sender-not-logged-in"
    assert str(decision) == "553 5.7.1 <yomogi@local.test>: Sender address rejected: not logged in"
    assert owned.check(req(sender="anyone@LOCAL.test")).reason == "sender-not-logged-in"


def test_not_logged_in_with_an_unowned_or_null_sender_passes() -> None:
    assert owned.check(req(sender="taro@aho.jp")).verdict is Verdict.NEXT
    assert owned.check(req(sender="")).verdict is Verdict.NEXT
    assert owned.check(req(sender="<>")).verdict is Verdict.NEXT


def test_submission_asks_for_authentication_before_the_sender() -> None:
    policy = SmtpAuthRequired(sender_logins=LOGINS)
    assert str(policy.check(req(sender="yomogi@local.test"))) == (
        "530 5.7.0 Authentication required"
    )
    assert policy.check(req(sender="", sasl_username="saya")).verdict is Verdict.ACCEPT


def test_tls_is_checked_before_the_sender() -> None:
    policy = SmtpAuthRequired(require_tls=True, sender_logins=LOGINS)
    assert policy.check(req(sasl_username="saya", sender="yomogi@local.test")).reason == (
        "tls-required"
    )
    assert policy.check(req(sasl_username="saya", sender="yomogi@local.test", **TLS)).reason == (
        "sender-not-owned"
    )


@pytest.mark.parametrize("sender", ["yomogi\r\n@local.test", "yomogi@", "a b@local.test", "<x"])
@pytest.mark.parametrize("login", ["yomogi", ""])
def test_invalid_sender_is_refused_without_echo(sender: str, login: str) -> None:
    decision = owned.check(req(sasl_username=login, sender=sender))
    assert decision.verdict is Verdict.REJECT
    assert decision.reason == "sender-syntax"
    assert str(decision) == "501 5.1.7 Bad sender address syntax"


def test_domainless_sender_is_refused() -> None:
    # The MTA would append its own domain (Postfix myorigin): a sender we cannot see.
    for login in ("yomogi", ""):
        decision = owned.check(req(sasl_username=login, sender="yomogi"))
        assert decision.reason == "sender-not-fqdn"
        assert str(decision) == (
            "504 5.5.2 <yomogi>: Sender address rejected: need fully-qualified address"
        )


def test_without_sender_logins_the_sender_is_not_examined() -> None:
    policy = SmtpAuthRequired()
    assert policy.sender_logins is None
    for sender in ("anyone@aho.jp", "bad\x00", "yomogi"):
        assert policy.check(req(sasl_username="x", sender=sender)).verdict is Verdict.ACCEPT


def test_sender_is_echoed_only_when_printable() -> None:
    # Valid (a quoted local part may hold U+2028), but not echoed: no line separators.
    sender = '"a\u2028b"@local.test'
    assert owned.check(req(sender=sender)).text == "Sender address rejected: not logged in"
    decision = owned.check(req(sasl_username="saya", sender=sender))
    assert decision.text == "Sender address rejected: not owned by user saya"


def test_login_name_is_made_safe_for_the_reply() -> None:
    evil = "saya\r\n250 2.0.0 Ok\x00" + "x" * 500
    decision = owned.check(req(sasl_username=evil, sender="yomogi@local.test"))
    assert decision.reason == "sender-not-owned"
    text = str(decision)
    assert text.isascii() and text.isprintable()
    assert "saya??250 2.0.0 Ok?xxx" in text
    assert text.endswith("...")
    assert len(text) < 200
    assert reply_safe("yōko") == "y?ko"
    assert reply_safe("plain name") == "plain name"


def test_sender_logins_in_lookup_form() -> None:
    assert owned.sender_logins == {
        "yomogi@local.test": frozenset({"yomogi"}),
        "shared@local.test": frozenset({"yomogi", "saya"}),
        "saya@xn--r8jz45g.jp": frozenset({"saya"}),
        "@local.test": frozenset({"admin"}),
        "@other.test": frozenset({"relay-user"}),
    }


@pytest.mark.parametrize(
    ("logins", "error", "match"),
    [
        ({"@bad..test": "x"}, ValueError, "'@bad..test'"),
        ({"user@bad..test": "x"}, ValueError, "'user@bad..test'"),
        ({"yomogi": "x"}, ValueError, re.escape("sender_logins['yomogi']: no domain")),
        ({"": "x"}, ValueError, re.escape("sender_logins['']: empty address")),
        ({"y@local.test": ""}, ValueError, "no login names"),
        ({"y@local.test": []}, ValueError, "no login names"),
        ({"y@local.test": "a", "Y@LOCAL.test.": "b"}, ValueError, "same address"),
        ({"@local.test": "a", "@LOCAL.TEST": "b"}, ValueError, "same address"),
        ({"y@local.test": [1]}, TypeError, "must be str"),
        ({3: "x"}, TypeError, "keys must be str"),
        (["y@local.test"], TypeError, "mapping"),
        ({}, ValueError, "empty"),
    ],
)
def test_bad_sender_logins_fail_at_construction(
    logins: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        SmtpAuthRequired(sender_logins=logins)  # type: ignore[arg-type]


def test_common_paths_return_precomputed_decisions() -> None:
    policy = SmtpAuthRequired(require_tls=True)
    first = policy.check(req(sasl_username="a", **TLS))
    assert policy.check(req(sasl_username="b", **TLS)) is first
    assert policy.check(req()) is policy.check(req(sasl_username="c"))
    permit = SmtpAuthRequired(otherwise=Verdict.NEXT)
    assert permit.check(req()) is permit.check(req("x@local.test"))


def test_repr() -> None:
    assert repr(SmtpAuthRequired()) == (
        "SmtpAuthRequired(require_tls=False, sender_logins=None, otherwise=Verdict.REJECT)"
    )
    assert "sender_logins=<5>" in repr(owned)


# --- client certificates ------------------------------------------------------------------

PLAIN = "3f" * 32
POSTFIX = ":".join(["3F"] * 32)
KEY_PLAIN = "".join(f"{i:02x}" for i in range(32))
KEY_POSTFIX = ":".join(f"{i:02X}" for i in range(32))


@pytest.mark.parametrize(
    ("configured", "field", "presented"),
    [
        (PLAIN, "ccert_fingerprint", POSTFIX),
        (POSTFIX, "ccert_fingerprint", PLAIN),
        (POSTFIX, "ccert_fingerprint", POSTFIX),
        (PLAIN.upper(), "ccert_fingerprint", PLAIN),
        (f"  {PLAIN}\n", "ccert_fingerprint", POSTFIX.lower()),
        (PLAIN, "ccert_fingerprint", f" {POSTFIX[:20].lower()}{POSTFIX[20:]} "),  # odd spelling
        (KEY_PLAIN, "ccert_pubkey_fingerprint", KEY_POSTFIX),
        (KEY_POSTFIX, "ccert_pubkey_fingerprint", KEY_PLAIN),
    ],
)
def test_client_certificate_in_both_notations(configured: str, field: str, presented: str) -> None:
    policy = ClientCertificate([configured])
    decision = policy.check(req(**TLS, **{field: presented}))
    assert decision.verdict is Verdict.ACCEPT
    assert (decision.policy, decision.reason) == ("ClientCertificate", "client-certificate")


def test_unknown_or_missing_certificate_passes() -> None:
    policy = ClientCertificate([PLAIN])
    none = policy.check(req(**TLS))
    assert (none.verdict, none.reason) == (Verdict.NEXT, "no-client-certificate")
    other = policy.check(req(ccert_fingerprint=KEY_POSTFIX, ccert_pubkey_fingerprint="zz", **TLS))
    assert (other.verdict, other.reason) == (Verdict.NEXT, "unknown-client-certificate")
    assert policy.check(req(ccert_pubkey_fingerprint=POSTFIX)).verdict is Verdict.ACCEPT
    assert ClientCertificate([]).check(req(ccert_fingerprint=POSTFIX)).verdict is Verdict.NEXT


def test_certificate_relays_in_a_chain() -> None:
    chain = FirstMatch(ClientCertificate([PLAIN]), LocalDomainOnly(["local.test"]))
    assert chain.check(req("taro@aho.jp", ccert_fingerprint=POSTFIX, **TLS)).verdict is (
        Verdict.ACCEPT
    )
    assert chain.check(req("taro@aho.jp", ccert_fingerprint=KEY_POSTFIX)).reason == "not-local"


def test_fingerprints_are_normalised() -> None:
    assert ClientCertificate([POSTFIX, PLAIN, KEY_POSTFIX]).fingerprints == {PLAIN, KEY_PLAIN}
    assert len(ClientCertificate(["ab" * 48, "AB" * 64]).fingerprints) == 2  # SHA-384, SHA-512


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ("", "not a hex fingerprint"),
        (":", "not a hex fingerprint"),
        ("zz" * 32, "not a hex fingerprint"),
        ("3f-" * 32, "not a hex fingerprint"),
        ("3f" * 16, "32 hex digits; expected a SHA-256"),  # MD5
        ("3F:" * 19 + "3F", "40 hex digits"),  # SHA-1
        ("3f" * 33, "66 hex digits"),
    ],
)
def test_bad_fingerprint_fails_at_construction(bad: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ClientCertificate([bad])


def test_fingerprints_must_be_an_iterable_of_strings() -> None:
    with pytest.raises(TypeError, match="not one string"):
        ClientCertificate(PLAIN)
    with pytest.raises(TypeError, match="not a string"):
        ClientCertificate([b"3f" * 32])  # type: ignore[list-item]
    assert repr(ClientCertificate([PLAIN])) == "ClientCertificate(<1 fingerprints>)"


# --- laws ---------------------------------------------------------------------------------

text = st.text(max_size=80)
senders = st.one_of(
    text,
    st.sampled_from(
        ["", "<>", "yomogi@local.test", "Yomogi@LOCAL.test", "x@aho.jp", "yomogi", '"\u2029"@x.jp']
    ),
)
policies = st.sampled_from(
    [
        SmtpAuthRequired(),
        SmtpAuthRequired(require_tls=True),
        SmtpAuthRequired(otherwise=Verdict.DEFER),
        SmtpAuthRequired(sender_logins=LOGINS),
        SmtpAuthRequired(require_tls=True, sender_logins=LOGINS, otherwise=Verdict.NEXT),
        owned,
    ]
)


@given(policy=policies, sender=senders, login=text, tls=st.booleans(), recipient=text)
def test_check_never_raises_and_replies_are_clean(
    policy: SmtpAuthRequired, sender: str, login: str, tls: bool, recipient: str
) -> None:
    request = req(recipient, sender=sender, sasl_username=login, **(TLS if tls else {}))
    decision = policy.check(request)
    reply = str(decision)
    assert not any(char in reply for char in "\r\n\x00")
    assert reply.isprintable()
    if decision.verdict is Verdict.ACCEPT:
        assert login, "only an authenticated client is accepted"
        if policy.require_tls:
            assert tls, "never accepted without TLS under require_tls"
    if decision.verdict is Verdict.NEXT:
        assert policy.otherwise is Verdict.NEXT


@given(policy=policies, sender=senders, login=text.filter(bool))
def test_owner_never_outranks_tls(policy: SmtpAuthRequired, sender: str, login: str) -> None:
    decision = policy.check(req(sender=sender, sasl_username=login))
    if policy.require_tls:
        assert decision.reason == "tls-required"


@given(fingerprint=text, public_key=text)
def test_certificate_check_never_raises(fingerprint: str, public_key: str) -> None:
    policy = ClientCertificate([PLAIN])
    decision = policy.check(req(ccert_fingerprint=fingerprint, ccert_pubkey_fingerprint=public_key))
    if decision.verdict is Verdict.ACCEPT:
        presented = {fingerprint.strip().replace(":", "").lower()}
        presented.add(public_key.strip().replace(":", "").lower())
        assert PLAIN in presented
