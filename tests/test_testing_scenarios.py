"""Scenario files and `relaypolicy test`: tables, exit status, JUnit XML, errors."""

from __future__ import annotations

import re
from pathlib import Path
from xml.etree import ElementTree

import pytest

from relaypolicy.cli import main
from relaypolicy.config import load_config
from relaypolicy.testing.scenarios import ScenarioError, load_scenarios, run_scenarios

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CONFIGS = sorted(p for p in EXAMPLES.glob("*.toml") if not p.name.endswith(".scenarios.toml"))

MX_CONFIG = """
[domains]
local = ["example.org"]

[networks]
trusted = ["192.0.2.0/24"]

[pop_before_smtp]
ttl = 600
"""

GOOD_AND_BAD = """
[defaults]
sender = "someone@aho.jp"

[[case]]
name = "local mail"
recipient = "taro@example.org"
expect = "accept"

[[case]]
name = "wrongly expected to relay"
recipient = "friend@aho.jp"
expect = "accept"

[[case]]
name = "trusted network"
client_address = "192.0.2.1"
recipient = "friend@aho.jp"
expect = "250 2.1.5 Ok"
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.name)
def test_every_example_has_a_passing_scenario_file(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenarios = EXAMPLES / config.name.replace(".toml", ".scenarios.toml")
    assert scenarios.exists(), f"no scenario file for {config.name}"
    assert main(["test", str(scenarios), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    assert out.splitlines()[1].split() == ["case", "expected", "got", "policy", "reason"]
    # Without --config the file's own `config` key names the same configuration.
    assert main(["test", str(scenarios)]) == 0


def test_a_mismatch_exits_1_with_a_table_and_junit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, "relay.toml", MX_CONFIG)
    scenarios = write(tmp_path, "cases.toml", GOOD_AND_BAD)
    junit = tmp_path / "junit.xml"
    status = main(["test", str(scenarios), "--config", str(config), "--junit-xml", str(junit)])
    assert status == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{scenarios} against {config}"
    rows = {re.split(r"\s{2,}", line)[1]: re.split(r"\s{2,}", line) for line in lines[3:6]}
    assert rows["local mail"] == [
        "ok",
        "local mail",
        "accept",
        "250 2.1.5 Ok",
        "local_domains",  # the step name of the configuration
        "local",
    ]
    assert rows["wrongly expected to relay"] == [
        "FAIL",
        "wrongly expected to relay",
        "accept",
        "554 5.7.1 <friend@aho.jp>: Relay access denied",
        "local_domains",
        "not-local",
    ]
    assert rows["trusted network"][0] == "ok"
    assert rows["trusted network"][-2:] == ["trusted_networks", "trusted-network"]
    assert lines[-1] == "3 cases: 2 passed, 1 FAILED"

    suite = ElementTree.parse(junit).getroot()  # noqa: S314 - our own file
    assert suite.tag == "testsuites"
    assert (suite.get("tests"), suite.get("failures")) == ("3", "1")
    cases = suite.findall("testsuite/testcase")
    assert [case.get("name") for case in cases] == [
        "local mail",
        "wrongly expected to relay",
        "trusted network",
    ]
    assert {case.get("classname") for case in cases} == {"cases.toml"}
    failure = cases[1].find("failure")
    assert failure is not None
    assert failure.get("message") == (
        "expected accept, got REJECT 554 5.7.1 <friend@aho.jp>: Relay access denied  "
        "[policy local_domains, reason not-local]"
    )
    assert "request: Request(client_address='203.0.113.7'" in (failure.text or "")
    assert cases[0].find("failure") is None


def test_all_passing_junit_and_failures_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, "relay.toml", MX_CONFIG)
    text = GOOD_AND_BAD.replace(
        'recipient = "friend@aho.jp"\nexpect = "accept"',
        ('recipient = "friend@aho.jp"\nexpect = "reject"'),
    )
    scenarios = write(tmp_path, "cases.toml", text)
    junit = tmp_path / "junit.xml"
    args = ["test", str(scenarios), "--config", str(config), "--junit-xml", str(junit)]
    assert main([*args, "--failures-only"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "3 cases: 3 passed"
    root = ElementTree.parse(junit).getroot()  # noqa: S314
    assert root.get("failures") == "0" and root.find(".//failure") is None


def test_pop_login_ago_uses_a_fake_clock(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "relay.toml", MX_CONFIG))
    scenarios = write(
        tmp_path,
        "pop.toml",
        """
[defaults]
client_address = "198.51.100.7"
recipient = "friend@aho.jp"

[[case]]
name = "just logged in"
pop_login_ago = 0
expect = "accept"

[[case]]
name = "one second before expiry"
pop_login_ago = 599.5
pop_user = "taro"
expect = "accept"

[[case]]
name = "expired"
pop_login_ago = 600
expect = "reject"

[[case]]
name = "never logged in (cases do not share a table)"
expect = "reject"
""",
    )
    results = run_scenarios(load_scenarios(scenarios).cases, config)
    assert [result.passed for result in results] == [True] * 4
    assert results[1].decision.policy == "pop_before_smtp"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            '[[case]]\nname = "a"\nrecipient = "u@x.example"\nexpect = "acept"',
            "case 1 ('a'): expect: expected accept, reject, defer, next or a reply such as "
            "\"554 5.7.1\", got 'acept'",
        ),
        ('[[case]]\nname = "a"\nrecipient = "u@x.example"', "case 1 ('a'): expect: missing"),
        (
            '[[case]]\nname = "a"\nrecipient = "u@x.example"\nexpect = "accept"\n'
            '[[case]]\nname = "b"\nrecipient = "u@x.example"\nexpect = "accept"\n'
            'client = "1.2.3.4"',
            "case 2 ('b'): client: unknown key (expected one of",
        ),
        (
            '[[case]]\nname = "b"\nrecipient = "u@x.example"\nexpect = "accept"\n'
            'client_address = "1.2.3"',
            "case 1 ('b'): client_address: not an IPv4 or IPv6 address: '1.2.3'",
        ),
        (
            '[[case]]\nname = "b"\nrecipient = "u@x.example"\nexpect = "accept"\nserver_port = "x"',
            "case 1 ('b'): server_port: expected a port number, got 'x'",
        ),
        (
            '[[case]]\nname = "b"\nrecipient = "u@x.example"\nexpect = "accept"\n'
            "pop_login_ago = -1",
            "case 1 ('b'): pop_login_ago: expected seconds (0 or more), got -1",
        ),
        ('[[case]]\nname = "b"\nexpect = "accept"', "case 1 ('b'): recipient: missing"),
        (
            '[[case]]\nrecipient = "u@x.example"\nexpect = "accept"',
            "case 1: name: expected a non-empty string",
        ),
        (
            '[[case]]\nname = "a"\nrecipient = "u@x.example"\nexpect = "accept"\n'
            '[[case]]\nname = "a"\nrecipient = "u@x.example"\nexpect = "reject"',
            "case 2 ('a'): name: the same name as case 1",
        ),
        (
            '[defaults]\nsasl_user = "x"\n'
            '[[case]]\nname = "a"\nrecipient = "u@x"\nexpect = "accept"',
            "defaults.sasl_user: unknown key",
        ),
        ("[[cases]]\nname = 1", "cases: unknown key"),
        ("config = 1", "config: expected a file path"),
        ('config = "x.toml"', "expected at least one [[case]] table"),
        ("[[case]\n", "not valid TOML"),
    ],
)
def test_scenario_file_errors_name_the_case_and_key(
    tmp_path: Path, body: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    scenarios = write(tmp_path, "bad.toml", body)
    with pytest.raises(ScenarioError) as failure:
        load_scenarios(scenarios)
    assert str(failure.value).startswith(f"{scenarios}: ")
    assert message in str(failure.value)
    config = write(tmp_path, "relay.toml", MX_CONFIG)
    assert main(["test", str(scenarios), "--config", str(config)]) == 78
    assert message in capsys.readouterr().err


def test_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    no_pop = write(tmp_path, "nopop.toml", '[domains]\nlocal = ["example.org"]\n')
    scenarios = write(
        tmp_path,
        "pop.toml",
        '[[case]]\nname = "p"\nrecipient = "u@aho.jp"\npop_login_ago = 5\nexpect = "accept"\n',
    )
    assert main(["test", str(scenarios), "--config", str(no_pop)]) == 78
    err = capsys.readouterr().err
    assert "case 1 ('p'): pop_login_ago: the configuration" in err
    assert "has no [pop_before_smtp] table" in err
    assert main(["test", str(scenarios)]) == 64
    assert "give --config (the file has no `config` key)" in capsys.readouterr().err
    assert main(["test", str(scenarios), "--config", str(tmp_path / "missing.toml")]) == 66
    assert "missing.toml: no such file" in capsys.readouterr().err
    assert main(["test", str(tmp_path / "none.toml"), "--config", str(no_pop)]) == 66
    assert "none.toml: no such file" in capsys.readouterr().err


def test_several_files(capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(EXAMPLES / "mx.scenarios.toml"), str(EXAMPLES / "submission.scenarios.toml")]
    assert main(["test", *files]) == 0
    out = capsys.readouterr().out
    assert "examples/submission.scenarios.toml against " in out
    assert out.splitlines()[-1] == "all files: 21 cases, 0 failed"


def test_defer_and_next_expectations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A chain whose otherwise is "defer" answers 451: `expect = "defer"` (and "451")
    match it, and "next" or "reject" do not."""
    chain = '\n[chain]\nsteps = ["trusted_networks"]\notherwise = "defer"\n'
    config = write(tmp_path, "defer.toml", MX_CONFIG.replace("[pop_before_smtp]\nttl = 600", chain))
    cases = """
[[case]]
name = "deferred"
recipient = "friend@aho.jp"
expect = "defer"

[[case]]
name = "deferred by code"
recipient = "friend@aho.jp"
expect = "451 4.7.1"

[[case]]
name = "not next"
recipient = "friend@aho.jp"
expect = "next"

[[case]]
name = "not reject"
recipient = "friend@aho.jp"
expect = "reject"
"""
    scenarios = write(tmp_path, "cases.toml", cases)
    results = run_scenarios(load_scenarios(scenarios).cases, load_config(config))
    assert [r.passed for r in results] == [True, True, False, False]
    assert main(["test", str(scenarios), "--config", str(config)]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "4 cases: 2 passed, 2 FAILED"
