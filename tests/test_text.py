"""Text from strangers: one line in a log, safe in a reply, one decision-log format."""

from __future__ import annotations

import json

import pytest

from relaypolicy import FirstMatch, LocalDomainOnly, Request
from relaypolicy.text import DECISION_LINE, decision_line, log_safe, reply_safe


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("user@example.org", "user@example.org"),
        ("a\r\nfake: line", "a\\x0d\\x0afake: line"),
        ("tab\there", "tab\\x09here"),
        ("line\u2028sep", "line\\x2028sep"),
        ("ünïcode", "ünïcode"),
    ],
)
def test_log_safe_keeps_one_line(text: str, expected: str) -> None:
    assert log_safe(text) == expected
    assert log_safe(text).isprintable()


def test_reply_safe() -> None:
    assert reply_safe("yōko") == "y?ko"
    assert reply_safe("yōko", ascii_only=False) == "yōko"
    assert reply_safe("a\r\n250 ok", ascii_only=False) == "a??250 ok"
    assert reply_safe("x" * 10, 4) == "xxxx..."
    assert reply_safe("plain name") == "plain name"


def test_decision_line_text_and_json() -> None:
    policy = FirstMatch(LocalDomainOnly(["example.org"]))
    request = Request(client_address="203.0.113.7", sender="a\nb@x.org", recipient="u@aho.jp")
    decision = policy.check(request)
    message, args = decision_line(request, decision, json=False)
    line = message % args
    assert message == DECISION_LINE
    assert line == (
        "client=203.0.113.7 sender=<a\\x0ab@x.org> recipient=<u@aho.jp> verdict=REJECT "
        "policy=LocalDomainOnly reason=not-local"
    )
    message, args = decision_line(request, decision, json=True, stage="RCPT")
    assert args == ()
    fields = json.loads(message)
    assert fields["sender"] == "a\nb@x.org" and fields["stage"] == "RCPT"
    assert fields["reply"] == "554 5.7.1 <u@aho.jp>: Relay access denied"
    assert "\n" not in message
