"""The pytest plugin, through pytester: loaded by its entry point, fixtures, failure output."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


def test_the_plugin_is_registered_by_its_entry_point(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_loaded(request):
            plugin = request.config.pluginmanager.get_plugin("relaypolicy")
            assert plugin is not None
            assert plugin.__name__ == "relaypolicy.testing.pytest_plugin"
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from relaypolicy import ExpiringIpTable, LocalDomainOnly, PopBeforeSmtp, Verdict
        from relaypolicy.testing import assert_not_open_relay

        def test_make_request(make_request):
            request = make_request()
            assert request.client_address == "203.0.113.7"
            assert request.recipient == "user@example.org"
            assert make_request(recipient="x@aho.jp", sasl_username="taro").sasl_username == "taro"

        def test_fake_clock_drives_a_table(fake_clock, make_request):
            table = ExpiringIpTable(60, clock=fake_clock)
            table.record("198.51.100.7")
            policy = PopBeforeSmtp(table)
            request = make_request(client_address="198.51.100.7", recipient="x@aho.jp")
            assert policy.check(request).verdict is Verdict.ACCEPT
            fake_clock.advance(60)
            assert policy.check(request).verdict is Verdict.NEXT

        def test_relay_probes(relay_probes):
            assert_not_open_relay(LocalDomainOnly(["example.org"]), local_domains=["example.org"])
            assert len(relay_probes("example.org")) >= 50
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)


def test_readable_failures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from relaypolicy import LocalDomainOnly, OpenRelay, Verdict
        from relaypolicy.testing import assert_decision, assert_not_open_relay

        policy = LocalDomainOnly(["example.org"])

        def test_two_decisions(make_request):
            got = policy.check(make_request(recipient="u%aho.jp@example.org"))
            assert got == policy.check(make_request())

        def test_decision_against_verdict(make_request):
            assert policy.check(make_request()) == Verdict.ACCEPT

        def test_open_relay():
            assert_not_open_relay(OpenRelay(), local_domains=["example.org"])

        def test_assert_decision():
            assert_decision(policy, "accept", recipient="friend@aho.jp")
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-vv")
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines(
        [
            "*two different decisions (verdict, code, status, text, reason differ)",
            "*left:",
            "*verdict: REJECT",
            "*reply:   554 5.7.1 <u%aho.jp@example.org>: Relay access denied",
            "*reason:  routing",
            "*right:",
            "*verdict: ACCEPT",
            "*reply:   250 2.1.5 Ok",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*a Decision never equals a Verdict: compare decision.verdict with Verdict.ACCEPT",
            "*the decision:",
            "*verdict: ACCEPT",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*OpenRelay() is an open relay: it accepted * relay probes from 203.0.113.7:",
            "*nmap-01: MAIL FROM:<> RCPT TO:<relaytest@nmap.scanme.org> -> ACCEPT 250 2.1.5 Ok*",
            "*why it is a trick: a foreign recipient with the null sender*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: expected accept, got REJECT 554 5.7.1 <friend@aho.jp>: Relay access"
            " denied  ?policy LocalDomainOnly, reason not-local?",
        ]
    )


def test_the_plugin_can_be_disabled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(make_request):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:relaypolicy")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'make_request' not found*"])
