"""A real OpenSMTPD 6.8 with `relaypolicy opensmtpd-filter` as its filter, over TCP.

Every test speaks SMTP to ``smtpd``'s listener on 127.0.0.1, from 127.0.0.1 (trusted) or
127.0.0.10 (not); ``smtpd`` asks the filter at ``RCPT TO``. Its configuration relays any
recipient for anyone (:mod:`opensmtpd_instance`): every refusal below is the filter's.

- trusted and untrusted clients, local and foreign recipients, routing tricks
  (:func:`relaypolicy.testing.probes.relay_probes`);
- the Postfix differential corpus (``test_postfix_differential``): OpenSMTPD+relaypolicy
  gives, for each recipient, the verdict relaypolicy gives in process for the recipient
  ``smtpd`` hands to its filter, and never accepts one relaypolicy refuses;
- POP-before-SMTP: a login added through the filter's control socket lets 127.0.0.10
  relay, then expires;
- ``relaypolicy audit --smtp`` from 127.0.0.10: not an open relay.

What the filter cannot decide, and the filter stopped, are in
``test_opensmtpd_e2e_failures`` (each needs an instance of its own).
"""

from __future__ import annotations

import contextlib
import json
import smtplib
import socket
import time
import tomllib
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
from opensmtpd_instance import OpenSmtpdInstance, running_opensmtpd
from realservers import audit_json, require_loopback_address, wait_until
from test_postfix_differential import (
    ALL_CASES,
    MYDESTINATION,
    MYNETWORKS,
    POLICY,
    RELAY_DOMAINS,
    Case,
)

from relaypolicy import Decision, Request, Verdict
from relaypolicy.config import parse_config
from relaypolicy.daemon.control import ask
from relaypolicy.testing.probes import relay_probes

pytestmark = pytest.mark.real

TRUSTED = "127.0.0.1"
UNTRUSTED = "127.0.0.10"


def _toml_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(item, ensure_ascii=False) for item in items) + "]"


# The differential test's policy, as a configuration file.
POLICY_TOML = f"""
[domains]
local = {_toml_list(MYDESTINATION)}
relay = {_toml_list(RELAY_DOMAINS)}

[networks]
trusted = {_toml_list(MYNETWORKS)}

[pop_before_smtp]
ttl = 600

[chain]
steps = ["trusted_networks", "pop_before_smtp", "local_domains"]
"""
_CONFIG = parse_config(tomllib.loads(POLICY_TOML), source="<test>")
IN_PROCESS = _CONFIG.build_policy(_CONFIG.make_pop_table())  # an empty table


class Reply(NamedTuple):
    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class Client:
    """An SMTP client asking one recipient at a time (MAIL, RCPT, RSET), the addresses
    sent as given in angle brackets, UTF-8 as is (OpenSMTPD 6.8 offers no SMTPUTF8 but
    reads the bytes)."""

    def __init__(self, instance: OpenSmtpdInstance, source: str) -> None:
        self.instance = instance
        self.source = source
        self.smtp: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        smtp = smtplib.SMTP(
            self.instance.host, self.instance.port, timeout=30, source_address=(self.source, 0)
        )
        smtp.command_encoding = "utf-8"
        code, text = smtp.ehlo("client.relaypolicy.test")
        assert code == 250, (code, text)
        self.smtp = smtp
        return smtp

    def ask(self, recipient: str, sender: str = "") -> Reply:
        for _attempt in range(3):
            smtp = self.smtp or self._connect()
            try:
                code, text = smtp.docmd("MAIL", f"FROM:<{sender}>")
                if code != 250:
                    return Reply(code, "MAIL: " + text.decode("utf-8", "replace"))
                code, text = smtp.docmd("RCPT", f"TO:<{recipient}>")
                smtp.docmd("RSET")
            except (smtplib.SMTPServerDisconnected, ConnectionError):
                self.smtp = None
                continue
            return Reply(code, text.decode("utf-8", "replace").replace("\n", " "))
        raise AssertionError(f"smtpd hung up three times on RCPT TO:<{recipient}>")

    def close(self) -> None:
        if self.smtp is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self.smtp.quit()
            self.smtp = None


@pytest.fixture(scope="module")
def opensmtpd() -> Iterator[OpenSmtpdInstance]:
    require_loopback_address(UNTRUSTED)
    with running_opensmtpd(POLICY_TOML) as instance:
        yield instance


@pytest.fixture
def untrusted(opensmtpd: OpenSmtpdInstance) -> Iterator[Client]:
    client = Client(opensmtpd, UNTRUSTED)
    yield client
    client.close()


@pytest.fixture
def trusted(opensmtpd: OpenSmtpdInstance) -> Iterator[Client]:
    client = Client(opensmtpd, TRUSTED)
    yield client
    client.close()


def test_it_is_a_real_opensmtpd_with_our_filter(opensmtpd: OpenSmtpdInstance) -> None:
    with socket.create_connection((opensmtpd.host, opensmtpd.port), timeout=30) as sock:
        banner = sock.recv(512)
    assert banner.startswith(b"220 ") and b"ESMTP OpenSMTPD" in banner
    wait_until(
        lambda: "handshake with smtpd 6.8.0p2 done" in opensmtpd.log.read_text(), "handshake"
    )
    assert len(opensmtpd.filter_pids()) == 1


def test_untrusted_client_local_and_foreign(untrusted: Client) -> None:
    assert untrusted.ask("user@local.test").code == 250
    assert untrusted.ask("user@sub.relay.test").code == 250
    assert str(untrusted.ask("user@foreign.example")) == (
        "554 5.7.1 <user@foreign.example>: Relay access denied"
    )


def test_trusted_client_relays(trusted: Client) -> None:
    assert trusted.ask("user@foreign.example").code == 250
    assert trusted.ask("user@local.test").code == 250


def test_routing_tricks_are_refused_to_an_untrusted_client(untrusted: Client) -> None:
    accepted = []
    for probe in relay_probes("local.test", relay_domain="relay.test"):
        if probe.smtputf8:
            continue  # OpenSMTPD 6.8 offers no SMTPUTF8; the corpus test sends UTF-8 raw
        reply = untrusted.ask(probe.recipient, probe.sender)
        if reply.code // 100 == 2:
            accepted.append((probe.name, probe.recipient, str(reply)))
    assert accepted == []


def smtpd_parameter(recipient: str) -> str:
    """What ``smtpd`` hands its filter for ``RCPT TO:<recipient>``: the text between the
    first ``<`` and the first ``>`` (``smtp_mailaddr``, ``filter_protocol``)."""
    return f"<{recipient}>"[1:].split(">", 1)[0]


def in_process(case: Case, client: str = UNTRUSTED) -> Decision:
    request = Request(
        client_address=client, recipient=smtpd_parameter(case.recipient), sender=case.sender
    )
    return IN_PROCESS.check(request)


def test_in_process_policy_is_the_differential_tests_policy() -> None:
    for case in ALL_CASES:
        request = Request(client_address=UNTRUSTED, recipient=case.recipient, sender=case.sender)
        assert IN_PROCESS.check(request)[:4] == POLICY.check(request)[:4], case


# smtpd's own refusals: its recipient syntax check (before the filter is asked) and its
# check of the RCPT parameters after the address (after the filter said proceed:
# ``RCPT TO:<user@local.test>>`` is ``user@local.test`` with a parameter ``>``).
SMTPD_OWN = ("5.1.3 Recipient address syntax error", "Unsupported option ")


def test_postfix_corpus_same_verdicts_as_in_process(
    opensmtpd: OpenSmtpdInstance, untrusted: Client
) -> None:
    before = ask(opensmtpd.control, {"command": "stats"})["stats"].get("requests", 0)
    mismatches = []
    asked = 0  # the recipients smtpd handed to the filter
    for case in ALL_CASES:
        if any(c in case.recipient + case.sender for c in "\r\n"):
            continue
        reply = untrusted.ask(case.recipient, case.sender)
        decision = in_process(case)
        if reply.text.startswith(("MAIL: ", SMTPD_OWN[0])):
            assert reply.code // 100 == 5, (case, str(reply))  # smtpd refused it itself
            continue
        asked += 1
        if reply.text.startswith(SMTPD_OWN[1]):
            assert reply.code // 100 == 5, (case, str(reply))
            continue
        if decision.verdict is Verdict.ACCEPT:
            same = reply.code == 250
        else:
            same = (reply.code, reply.text) == (decision.code, f"{decision.status} {decision.text}")
        if not same:
            mismatches.append((case.recipient, case.sender, str(reply), str(decision)))
    assert mismatches == []
    # Exactly the recipients smtpd did not refuse itself reached the filter.
    after = ask(opensmtpd.control, {"command": "stats"})["stats"]["requests"]
    assert after - before == asked
    assert asked >= 80


def test_never_accepts_what_relaypolicy_refuses_as_sent(untrusted: Client) -> None:
    """The safety law against the corpus as written: where smtpd's reading of the
    brackets differs from ours (``<user@local.test>>`` is ``user@local.test`` to smtpd),
    OpenSMTPD+relaypolicy still relays nothing relaypolicy refuses as a relay."""
    for case in ALL_CASES:
        if any(c in case.recipient + case.sender for c in "\r\n"):
            continue
        reply = untrusted.ask(case.recipient, case.sender)
        if reply.code != 250:
            continue
        decision = in_process(case)
        assert decision.verdict is Verdict.ACCEPT, (case, str(reply), str(decision))


def test_pop_before_smtp_login_then_expiry(opensmtpd: OpenSmtpdInstance, untrusted: Client) -> None:
    assert untrusted.ask("user@foreign.example").code == 554
    added = ask(
        opensmtpd.control, {"command": "add", "address": UNTRUSTED, "user": "taro", "ttl": 3}
    )
    assert added["ok"], added
    assert untrusted.ask("user@foreign.example").code == 250
    # real-time: the table's clock is the filter's; wait (bounded) for the entry to expire.
    deadline = time.monotonic() + 60
    while untrusted.ask("user@foreign.example").code == 250:
        assert time.monotonic() < deadline, "the POP-before-SMTP entry never expired"
        time.sleep(0.5)
    assert str(untrusted.ask("user@foreign.example")).startswith("554 5.7.1 ")


def test_stats_count_the_decisions(opensmtpd: OpenSmtpdInstance, untrusted: Client) -> None:
    before = ask(opensmtpd.control, {"command": "stats"})["stats"]
    untrusted.ask("user@foreign.example")
    after = ask(opensmtpd.control, {"command": "stats"})["stats"]
    assert after["requests"] == before["requests"] + 1
    assert after["verdict:reject"] == before.get("verdict:reject", 0) + 1
    assert after["sessions-open"] >= 1


def audit(source: str, instance: OpenSmtpdInstance, capsys: pytest.CaptureFixture[str]) -> Any:
    return audit_json(instance.host, instance.port, source, capsys, "--relay-domain", "relay.test")


def test_audit_from_an_untrusted_address_says_not_an_open_relay(
    opensmtpd: OpenSmtpdInstance, capsys: pytest.CaptureFixture[str]
) -> None:
    report = audit(UNTRUSTED, opensmtpd, capsys)
    assert report["status"] == 0, report["summary"]
    assert report["summary"].startswith("not an open relay: 0/")
    asked = [probe for probe in report["probes"] if probe["code"]]
    assert {probe["code"] // 100 for probe in asked} == {5}
    # The rest could not be sent: OpenSMTPD 6.8 offers no SMTPUTF8.
    skipped = {probe["name"] for probe in report["probes"] if not probe["code"]}
    utf8 = {p.name for p in relay_probes("local.test", relay_domain="relay.test") if p.smtputf8}
    assert skipped == utf8, [p for p in report["probes"] if p["name"] in skipped - utf8]
