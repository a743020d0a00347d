"""The fuzz harness: every target runs clean on a small budget (but for the known bugs,
marked), and every oracle fires when the code under test is broken on purpose."""

from __future__ import annotations

import functools
import io
import random
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

from relaypolicy.model import Decision, Request
from relaypolicy.policies import OpenRelay
from relaypolicy.postfix.codec import PolicyConnection, PolicyRequest
from relaypolicy.testing import FakeClock
from relaypolicy.testing.fuzz import (
    EXCEPTION,
    HANG,
    ORACLE,
    TARGETS,
    UNSAFE_ACCEPT,
    EngineUnavailable,
    Problem,
    Report,
    Watchdog,
    main,
    make_target,
    run_hypothesis,
    run_random,
)
from relaypolicy.testing.fuzz import cli as fuzz_cli
from relaypolicy.testing.fuzz.codec import CodecTarget
from relaypolicy.testing.fuzz.loader import LoaderTarget
from relaypolicy.testing.fuzz.logs import PARSERS, ParserTarget
from relaypolicy.testing.fuzz.relay import Guarded, RequestTarget, Trust
from relaypolicy.watch.parsers import DovecotParser, LineParser, LoginEvent

RANDOM_INPUTS = 2000
HYPOTHESIS_EXAMPLES = 100

KNOWN: dict[str, str] = {}  # target -> a finding's rule prefix, for a bug not yet fixed


@functools.cache  # one run per target, read by several tests
def _random(name: str) -> Report:
    return run_random(make_target(name), inputs=RANDOM_INPUTS, seed=0)


def _unknown(report: Report) -> list[str]:
    """The findings other than the known bug of the report's target."""
    known = KNOWN.get(report.target)
    return [
        finding.describe()
        for finding in report.findings.values()
        if known is None or not finding.rule.startswith(known)
    ]


# --- every target, small budget ---------------------------------------------------------


@pytest.mark.parametrize("name", list(TARGETS))
def test_random_engine_finds_no_unknown_bug(name: str) -> None:
    report = _random(name)
    assert report.inputs == RANDOM_INPUTS
    assert _unknown(report) == []


@pytest.mark.parametrize("name", list(TARGETS))
def test_hypothesis_engine_finds_no_unknown_bug(name: str) -> None:
    report = run_hypothesis(make_target(name), inputs=HYPOTHESIS_EXAMPLES, seed=0)
    assert report.inputs > 0
    assert _unknown(report) == []


def test_parsers_are_clean() -> None:
    assert _random("parsers").total == 0


def test_request_target_accepts_no_relay_and_keeps_its_rules() -> None:
    report = _random("request")
    assert report.counts[UNSAFE_ACCEPT] == report.counts[ORACLE] == report.counts[HANG] == 0


def test_request_target_raises_nothing() -> None:
    assert _random("request").counts[EXCEPTION] == 0


def test_codec_keeps_its_rules() -> None:
    report = _random("codec")
    assert report.counts[ORACLE] == report.counts[HANG] == 0


def test_codec_raises_nothing_but_its_documented_errors() -> None:
    assert _random("codec").counts[EXCEPTION] == 0


def test_loader_loads_or_raises_table_file_error() -> None:
    assert _random("loader").total == 0


def test_the_random_engine_repeats_itself_for_a_seed() -> None:
    first = run_random(make_target("request"), inputs=500, seed=3)
    again = run_random(make_target("request"), inputs=500, seed=3)
    assert [f.reproducer for f in first.findings.values()] == [
        f.reproducer for f in again.findings.values()
    ]
    assert first.counts == again.counts


def test_max_seconds_stops_an_engine() -> None:
    # A deadline already passed: each engine stops after its first input.
    assert run_random(make_target("parsers"), inputs=1000, max_seconds=-1).inputs == 1
    assert run_hypothesis(make_target("parsers"), inputs=1000, max_seconds=-1).inputs == 0


# --- the oracles fire -----------------------------------------------------------------


def test_an_open_relay_is_an_unsafe_accept() -> None:
    target = RequestTarget([Guarded("OpenRelay", OpenRelay(), Trust())])
    report = run_random(target, inputs=300, seed=0)
    assert report.counts[UNSAFE_ACCEPT] > 0
    finding = report.findings[(UNSAFE_ACCEPT, "OpenRelay accepted a relay (open-relay)")]
    reproduced = eval(finding.reproducer)  # noqa: S307 - the repr of a dict of strings
    request = Request(**reproduced)
    assert OpenRelay().check(request).verdict.name == "ACCEPT"
    assert not target.destinations.plainly_local(request.recipient)


def test_trust_is_what_excuses_a_relay() -> None:
    # Trusted, the same open relay is fine: the oracle does not fire for every ACCEPT.
    every_client = Trust(networks=(__import__("ipaddress").ip_network("::/0"),))
    target = RequestTarget([Guarded("OpenRelay", OpenRelay(), every_client)])
    assert target.check({"client_address": "2001:db8::1", "recipient": "a@aho.jp"}) == []
    assert target.check({"client_address": "192.0.2.9", "recipient": "a@aho.jp"}) != []


@pytest.mark.parametrize(
    ("recipient", "local"),
    [
        ("user@example.org", True),
        ("<USER@Example.Org.>", True),
        ("user@例え.jp", True),
        ("user@xn--r8jz45g.jp", True),
        ("user@[IPv6:::ffff:192.0.2.1]", True),
        ("user@mx.backup.example.net", True),
        ("Postmaster", True),
        ("@aho.jp:user@example.org", True),
        ("@example.org:user@aho.jp", False),
        ("user%aho.jp@example.org", False),
        ("aho.jp!user@example.org", False),
        ('"user@aho.jp"@example.org', False),
        ("user@aho.jp@example.org", False),
        ("user@example.org.aho.jp", False),
        ("user@notbackup.example.net", False),
        ("postmaster@aho.jp", False),
        ("user@[192.0.2.2]", False),
    ],
)
def test_plainly_local_is_conservative(recipient: str, local: bool) -> None:
    assert RequestTarget([]).destinations.plainly_local(recipient) is local


class _Raises:
    name = "Raises"

    def check(self, request: Request) -> Decision:
        if "%" in request.recipient:
            raise KeyError(request.recipient)
        return OpenRelay().check(request)


def test_a_policy_that_raises_is_an_escaped_exception() -> None:
    target = RequestTarget([Guarded("Raises", _Raises(), Trust(networks=()))])
    report = run_random(target, inputs=300, seed=0)
    rules = [rule for kind, rule in report.findings if kind == EXCEPTION]
    assert any(rule.startswith("KeyError at test_testing_fuzz.py") for rule in rules)


class _BadAddress(DovecotParser):
    """Reports the address as the line gives it, uncanonical."""

    def parse(self, line: str) -> LoginEvent | None:
        event = super().parse(line)
        return event if event is None else event._replace(address=event.address.upper() + " ")

    def parse_block(self, text: str) -> Iterator[LoginEvent]:
        return self.parse_lines(text.split("\n"))

    def parse_lines(self, lines: Any) -> Iterator[LoginEvent]:
        return (event for line in lines if (event := self.parse(line)) is not None)


class _ForgetsLast(DovecotParser):
    """Its block parser drops the last login of a block."""

    def parse_block(self, text: str) -> Iterator[LoginEvent]:
        return iter(list(super().parse_block(text))[:-1])


class _RaisesOnNul(DovecotParser):
    def parse(self, line: str) -> LoginEvent | None:
        if "\x00" in line:
            raise ValueError("NUL")
        return super().parse(line)


@pytest.mark.parametrize(
    ("parser", "kind", "rule"),
    [
        (_BadAddress, ORACLE, "broken: not an IP address"),
        (_ForgetsLast, ORACLE, "broken: parse, parse_lines and parse_block disagree"),
        (_RaisesOnNul, EXCEPTION, "ValueError at test_testing_fuzz.py"),
    ],
)
def test_a_broken_parser_is_found(parser: type[DovecotParser], kind: str, rule: str) -> None:
    def make() -> LineParser:
        return parser(framing=PARSERS["dovecot"]().framing)

    report = run_random(ParserTarget({"broken": make}), inputs=RANDOM_INPUTS, seed=0)
    assert any(k == kind and r.startswith(rule) for k, r in report.findings), report.findings


class _FastPathAddsAnAttribute(PolicyConnection):
    def _whole_request(self, buffer: bytearray, start: int) -> tuple[PolicyRequest, int] | None:
        whole = super()._whole_request(buffer, start)
        if whole is not None:
            whole[0].attributes["extra"] = "1"
        return whole


class _RaisesKeyError(PolicyConnection):
    def receive_data(self, data: bytes) -> list[PolicyRequest]:
        if b"\xff" in data:
            raise KeyError("boom")
        return super().receive_data(data)


def test_a_codec_whose_parsers_disagree_is_found() -> None:
    report = run_random(CodecTarget(_FastPathAddsAnAttribute), inputs=300, seed=0)
    assert (ORACLE, "whole feed parsed other requests") in report.findings


def test_a_codec_that_raises_another_error_is_found() -> None:
    report = run_random(CodecTarget(_RaisesKeyError), inputs=RANDOM_INPUTS, seed=0)
    assert any(rule.startswith("KeyError") for _, rule in report.findings)


def test_a_loader_that_raises_another_error_is_found() -> None:
    def read(path: str) -> list[tuple[str, float, str | None]]:
        with open(path, "rb") as file:
            if not file.read():
                raise OSError("empty")
        return [("not an address", 1.0, None)]

    report = run_random(LoaderTarget(read), inputs=50, seed=0)
    assert any(rule.startswith("OSError") for _, rule in report.findings)
    assert (ORACLE, "loaded a row that is no address") in report.findings


class _Slow:
    """A target whose second input takes five (fake) seconds."""

    name = "slow"

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    def corpus(self) -> Sequence[int]:
        return [0, 1, 2]

    def mutate(self, rng: random.Random, corpus: Sequence[int]) -> int:
        return rng.randrange(100)

    def check(self, value: int) -> list[Problem]:
        if value == 1:
            self.clock.advance(5.0)
        return []

    def strategy(self) -> st.SearchStrategy[int]:
        return st.integers(0, 2)


def test_a_slow_input_is_a_hang() -> None:
    clock = FakeClock()
    report = run_random(_Slow(clock), inputs=3, hang_seconds=1.0, timer=clock)
    assert report.counts[HANG] == 1
    assert report.findings[(HANG, "over 1 s")].reproducer == "1"


def test_the_watchdog_prints_an_input_that_does_not_end() -> None:
    printed = threading.Event()

    class Out(io.StringIO):
        def write(self, text: str) -> int:
            written = super().write(text)
            printed.set()
            return written

    out = Out()

    class Stuck(_Slow):
        def check(self, value: int) -> list[Problem]:
            if value == 1:
                assert printed.wait(60), "the watchdog never spoke"
            return []

    with Watchdog(0.05, out=out) as watchdog:
        report = run_random(Stuck(FakeClock()), inputs=3, watchdog=watchdog)
    assert report.inputs == 3
    assert "slow/random: input still running after" in out.getvalue()
    assert out.getvalue().rstrip().endswith(": 1")


def test_the_hypothesis_engine_says_when_hypothesis_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "hypothesis", None)
    with pytest.raises(EngineUnavailable, match="pip install hypothesis"):
        run_hypothesis(make_target("parsers"), inputs=1)


# --- the command line -------------------------------------------------------------------


def test_the_command_prints_a_table_and_exits_0_when_clean() -> None:
    out = io.StringIO()
    status = main(["--target", "parsers", "--inputs", "50", "--engine", "both"], out)
    assert status == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:4] == ["target", "engine", "inputs", "exceptions"]
    assert lines[1].split()[:3] == ["parsers", "random", "50"]
    assert lines[2].split()[:2] == ["parsers", "hypothesis"]


def test_the_command_prints_each_finding_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = RequestTarget([Guarded("OpenRelay", OpenRelay(), Trust())])
    monkeypatch.setitem(fuzz_cli.TARGETS, "open", (lambda: broken, "an open relay"))
    out = io.StringIO()
    argv = ["--target", "open", "--inputs", "200", "--show", "1", "--save", str(tmp_path)]
    assert main(argv, out) == 1
    text = out.getvalue()
    assert "unsafe-accept: OpenRelay accepted a relay (open-relay)" in text
    assert "    input: {'client_address': " in text
    files = sorted(tmp_path.glob("request-random-*.repr"))
    saved = {
        head: body
        for head, body in (path.read_text(encoding="utf-8").splitlines() for path in files)
    }
    assert len(saved) == len(files) > 0
    reproducer = saved["# unsafe-accept: OpenRelay accepted a relay (open-relay)"]
    fields = eval(reproducer)  # noqa: S307 - the repr of a dict of strings, written above
    assert broken.check(fields)[0].kind == UNSAFE_ACCEPT


def test_help_answers() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "relaypolicy.testing.fuzz", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    for word in ("--target", "--inputs", "--engine", "--seed", "--max-seconds", "loader"):
        assert word in done.stdout
