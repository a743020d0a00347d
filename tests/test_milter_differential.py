"""Differential: the same relaypolicy decides through the milter as through the policy
service, for every recipient of Postfix's differential corpus.

Two private Postfix instances, configured alike (:mod:`test_postfix_differential`'s
domains and network): one asks `relaypolicy serve` (``check_policy_service``), the other
`relaypolicy milter` (``smtpd_milters``, the only relay gate); both relaypolicy processes
read the same policy. Every case of ``ALL_CASES`` is sent from the untrusted 127.0.0.10 to
both. The laws: through the milter, relaypolicy decides on the address as the client
sent it (so the laws of the Postfix differential test hold for it), and the answers
differ from the policy service's only where the service is given Postfix's internal
form of the address instead, each case listed and documented in docs/milter.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from milter_process import postfix_milter_settings, start_milter
from postfix_instance import PostfixConfig, RcptSession, Reply, running_postfix
from realservers import require_loopback_address
from serve_process import start_service
from test_postfix_differential import (
    ALL_CASES,
    MYDESTINATION,
    MYNETWORKS,
    RELAY_DOMAINS,
    UNTRUSTED,
    Case,
    decide,
)

from relaypolicy import Verdict

pytestmark = pytest.mark.real


def toml_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{value}"' for value in values) + "]"


CONFIG = f"""\
[domains]
local = {toml_list(MYDESTINATION)}
relay = {toml_list(RELAY_DOMAINS)}

[networks]
trusted = {toml_list(MYNETWORKS)}

[chain]
steps = ["trusted_networks", "local_domains"]

[log]
level = "warning"
"""


DOC = Path(__file__).resolve().parent.parent / "docs" / "milter.md"

# Postfix refuses these itself, before any milter is asked (its own reply).
POSTFIX_REFUSES_FIRST = {"user@@local.test": "501 5.1.3 Bad recipient address syntax"}

# Through the policy service relaypolicy judges Postfix's internal form of the address,
# through the milter the client's text: recipient -> why the answers differ.
SERVICE_SEES_POSTFIX_FORM: dict[str, str] = {
    # Quotes removed: the internal form has a space, a quote or nothing before the @.
    '"saya yomogi"@local.test': "service 501 (unquoted space); milter 250 (local)",
    '"saya yomogi"@aho.jp': "service 501 (unquoted space); milter 554 (foreign)",
    '"a\\"b"@local.test': "service 501 (unquoted quote); milter 250 (local)",
    '""@local.test': "service 501 (empty local part); milter 250 (local)",
    '" "@local.test': "service 501 (unquoted space); milter 250 (local)",
    '" -user"@local.test': "service 501 (unquoted space); milter 250 (local)",
    '"us\\"er@aho.jp"@local.test': "service 501 (unquoted); milter 554 (routing)",
    # Quotes removed: a quoted address becomes a plain local one.
    '"user@local.test"': "service 250 (user@local.test); milter 554 (quoted @, no domain)",
    '@aho.jp:"user@local.test"': "service 250 (route dropped, unquoted); milter 554",
    # What Postfix's tokenizer drops or repairs, relaypolicy's RFC 5321 parser refuses.
    "p\\ostmaster": "service 250 (backslash dropped); milter 501",
    "us\\er@local.test": "service 250 (backslash dropped); milter 501",
    "user\\@aho.jp@local.test": "service 554 (backslash dropped, routing); milter 501",
    "user@local.test ": "service 250 (space dropped); milter 501",
    " user@local.test": "service 250 (space dropped); milter 501",
    "user @local.test": "service 250 (space dropped); milter 501",
    "user(comment)@local.test": "service 250 (comment dropped); milter 501",
    'user@"local.test"': "service 250 (quotes dropped); milter 501",
    "user@local.test>": "service 250 (stray > dropped); milter 501",
    "user@local.test;": "service 250 (stray ; dropped); milter 501",
    "@aho.jp:<user@local.test>": "service 250 (route and brackets dropped); milter 501",
    "@a:<@b:user@local.test>": "service 250 (routes and brackets dropped); milter 501",
    "@aho.jp:<user@aho.jp>": "service 554 (route and brackets dropped); milter 501",
}


def status(reply: Reply) -> tuple[int, str]:
    """The code and the enhanced status code."""
    return reply.code, reply.text.split(" ", 1)[0]


@pytest.fixture(scope="module")
def replies(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[tuple[Case, Reply, Reply]]]:
    """For each case: the reply through the policy service and through the milter."""
    require_loopback_address(UNTRUSTED)
    with contextlib.ExitStack() as cleanup:
        service = start_service(tmp_path_factory.mktemp("serve"), CONFIG)
        cleanup.callback(service.stop)
        milter = start_milter(tmp_path_factory.mktemp("milter"), CONFIG)
        cleanup.callback(milter.stop)

        def like_the_corpus(extra: dict[str, str]) -> PostfixConfig:
            return PostfixConfig(
                mydestination=MYDESTINATION,
                relay_domains=RELAY_DOMAINS,
                mynetworks=MYNETWORKS,
                extra=extra,
            )

        gate = f"check_policy_service {{ {service.policy_service}, default_action=DEFER }}, reject"
        through_service = cleanup.enter_context(
            running_postfix(like_the_corpus({"smtpd_relay_restrictions": gate}))
        )
        through_milter = cleanup.enter_context(
            running_postfix(like_the_corpus(postfix_milter_settings(milter.port)))
        )
        results = []
        with (
            RcptSession(through_service.host, through_service.port, UNTRUSTED) as first,
            RcptSession(through_milter.host, through_milter.port, UNTRUSTED) as second,
        ):
            for case in ALL_CASES:
                results.append(
                    (
                        case,
                        first.ask(case.recipient, case.sender),
                        second.ask(case.recipient, case.sender),
                    )
                )
        yield results


def test_the_milter_answers_as_relaypolicy_decides_on_the_address_as_sent(
    replies: list[tuple[Case, Reply, Reply]],
) -> None:
    """Through the milter, every answer is relaypolicy's own decision on the recipient as
    the client wrote it (``decide`` of the Postfix differential test, whose laws hold for
    it: never an accept where Postfix's reject_unauth_destination refuses), except where
    Postfix refused the command itself before asking any milter: there both instances
    give Postfix's own reply."""
    assert len(replies) == len(ALL_CASES)
    postfix_first = {}
    for case, service, milter in replies:
        decision = decide(case)
        expected = (
            (250, "2.1.5")
            if decision.verdict is Verdict.ACCEPT
            else (
                decision.code,
                decision.status,
            )
        )
        if status(milter) != expected:
            assert str(milter) == str(service), (case, service, milter, decision)
            postfix_first[case.recipient] = str(milter)
    assert postfix_first == POSTFIX_REFUSES_FIRST
    # Not a vacuous agreement: it accepted some and refused others, never for now.
    codes = {milter.code for _, _, milter in replies}
    assert {250, 501, 554} <= codes, codes
    assert not [m for _, _, m in replies if 400 <= m.code < 500], "a temporary failure"


def test_milter_and_policy_service_differ_only_where_documented(
    replies: list[tuple[Case, Reply, Reply]],
) -> None:
    """The policy service is given Postfix's internal, unquoted form of the recipient
    (``"saya yomogi"@local.test`` arrives as ``saya yomogi@local.test``, a comment or a
    stray ``>`` is gone); the milter the address as the client sent it. Where that
    changes the answer, the case is in :data:`SERVICE_SEES_POSTFIX_FORM` (and, in
    backticks, in docs/milter.md); the milter accepts only local recipients there."""
    different = {
        case.recipient: (service, milter)
        for case, service, milter in replies
        if status(service) != status(milter)
    }
    assert set(different) == set(SERVICE_SEES_POSTFIX_FORM), different
    for recipient, (_, milter) in different.items():
        if milter.code == 250:
            decision = decide(Case(recipient))
            assert decision.reason == "local", (recipient, decision)


def test_every_difference_is_documented() -> None:
    doc = DOC.read_text(encoding="utf-8")
    missing = [r for r in SERVICE_SEES_POSTFIX_FORM if f"`{r}`" not in doc]
    assert not missing, f"not in {DOC.name} (verbatim, in backticks): {missing}"


def test_a_milter_refusal_is_its_own_reply(replies: list[tuple[Case, Reply, Reply]]) -> None:
    """Where the policy refused, the milter's reply is relaypolicy's own text, not a
    default action of Postfix."""
    for case, _, milter in replies:
        if case.recipient == "user@aho.jp":
            assert str(milter) == "554 5.7.1 <user@aho.jp>: Relay access denied"
            return
    raise AssertionError("user@aho.jp is not in the corpus")
