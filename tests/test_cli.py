"""The relaypolicy command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from relaypolicy.cli import main

BASE = ["check", "--local-domain", "local.test", "--trusted-network", "192.0.2.0/24"]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main([*BASE, *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_accept_local(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--client-address", "203.0.113.7", "--recipient", "u@local.test")
    assert status == 0
    assert out.splitlines()[0] == "250 2.1.5 Ok"
    assert "policy: LocalDomainOnly" in out
    assert "reason: local" in out


def test_reject_routing(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        capsys, "--client-address", "203.0.113.7", "--recipient", "u%aho.jp@local.test"
    )
    assert status == 1
    assert out.splitlines()[0] == "554 5.7.1 <u%aho.jp@local.test>: Relay access denied"
    assert "reason: routing" in out


def test_trusted_client_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        capsys, "--client-address", "192.0.2.9", "--recipient", "u@aho.jp", "--json"
    )
    assert status == 0
    payload = json.loads(out)
    assert payload["verdict"] == "accept"
    assert payload["reason"] == "trusted-network"
    assert payload["policy"] == "TrustedNetworks"
    assert payload["client_address"] == "192.0.2.9"


def test_syntax_json(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--client-address", "203.0.113.7", "--recipient", "u@", "--json")
    assert status == 1
    assert json.loads(out)["reply"] == "501 5.1.3 Bad recipient address syntax"


def status_of(argv: list[str]) -> int:
    """main()'s status, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--client-address", "not-an-ip", "--recipient", "u@local.test"], "client_address"),
        (["--recipient", "u@local.test"], "--client-address"),
        (["--client-address", "10.0.0.1", "--recipient", "u@x", "--bogus"], "unrecognized"),
    ],
)
def test_usage_errors_exit_64(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert status_of([*BASE, *args]) == 64
    assert message in capsys.readouterr().err


def test_bad_configuration_exits_64(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--client-address", "10.0.0.1", "--recipient", "u@x.test"]) == 64
    assert "--local-domain" in capsys.readouterr().err
    args = ["check", "--local-domain", "a..b", "--client-address", "10.0.0.1", "--recipient", "u"]
    assert main(args) == 64
    assert "bad domain 'a..b'" in capsys.readouterr().err
    args = [
        "check",
        "--local-domain",
        "a.test",
        "--trusted-network",
        "10.0.0.1/8",
        "--client-address",
        "10.0.0.1",
        "--recipient",
        "u@a.test",
    ]
    assert main(args) == 64
    assert "--trusted-network" in capsys.readouterr().err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 64
    assert "check" in capsys.readouterr().err


def test_installed_console_script() -> None:
    """The entry point a user runs, in a fresh interpreter."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "relaypolicy",
            *BASE,
            "--client-address",
            "::ffff:203.0.113.7",
            "--recipient",
            "yoshino_yomogiya@aho.jp",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout.startswith("554 5.7.1 <yoshino_yomogiya@aho.jp>: Relay access denied")
    helped = subprocess.run(
        [sys.executable, "-m", "relaypolicy", "check", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert helped.returncode == 0
    assert "Exit status" in helped.stdout
