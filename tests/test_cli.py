"""The relaypolicy command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    assert "policy: local_domains" in out  # the step name, as with --config
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
    assert payload["policy"] == "trusted_networks"
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


CHAIN_ONLY_TRUSTED = """
[domains]
local = ["local.test"]

[networks]
trusted = ["192.0.2.0/24"]

[chain]
steps = ["trusted_networks"]
otherwise = "{otherwise}"
"""


@pytest.mark.parametrize(
    ("otherwise", "status", "first_line"),
    [
        ("reject", 1, "554 5.7.1 <u@aho.jp>: Relay access denied"),
        ("defer", 2, "451 4.7.1 Try again later"),
        ("next", 3, "(no reply: no policy had an opinion)"),
    ],
)
def test_check_with_config_exits_by_verdict(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    otherwise: str,
    status: int,
    first_line: str,
) -> None:
    config = tmp_path / "chain.toml"
    config.write_text(CHAIN_ONLY_TRUSTED.format(otherwise=otherwise))
    args = ["check", "--config", str(config), "--client-address", "203.0.113.7"]
    assert main([*args, "--recipient", "u@aho.jp"]) == status
    assert capsys.readouterr().out.splitlines()[0] == first_line
    assert main(["check", "--config", str(config), "--client-address", "192.0.2.1",
                 "--recipient", "u@aho.jp"]) == 0  # fmt: skip
    capsys.readouterr()


def test_check_config_and_domain_options_are_exclusive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "chain.toml"
    config.write_text(CHAIN_ONLY_TRUSTED.format(otherwise="reject"))
    argv = [*BASE, "--config", str(config), "--client-address", "10.0.0.1", "--recipient", "u"]
    assert status_of(argv) == 64
    assert "either --config or" in capsys.readouterr().err
    missing = ["check", "--config", str(tmp_path / "none.toml"), "--client-address", "10.0.0.1"]
    assert status_of([*missing, "--recipient", "u@x.test"]) == 66
    assert "none.toml" in capsys.readouterr().err


def test_config_check_valid_and_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "chain.toml"
    config.write_text(CHAIN_ONLY_TRUSTED.format(otherwise="defer"))
    assert main(["config", "check", str(config)]) == 0
    out = capsys.readouterr().out
    assert "1. accept clients in the trusted networks" in out
    assert "otherwise: defer (451 4.7.1)" in out
    config.write_text(CHAIN_ONLY_TRUSTED.format(otherwise="maybe"))
    assert main(["config", "check", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("relaypolicy config check: invalid: ") and "chain.otherwise" in err


def test_the_installed_relaypolicy_script_runs() -> None:
    """The console script pip installs beside the interpreter (not `python -m`)."""
    import os
    import shutil

    script = shutil.which("relaypolicy", path=str(Path(sys.executable).parent)) or shutil.which(
        "relaypolicy"
    )
    if script is None:
        if os.environ.get("RELAYPOLICY_REQUIRE_REAL") == "1":
            pytest.fail("the relaypolicy console script is not installed")
        pytest.skip("the relaypolicy console script is not installed (pip install .)")
    done = subprocess.run(
        [script, *BASE, "--client-address", "203.0.113.7", "--recipient", "u@local.test"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stdout.splitlines()[0]) == (0, "250 2.1.5 Ok"), done.stderr


@pytest.mark.parametrize("listen", ["127.0.0.1:abc", "unix:relative.sock", "localhost"])
def test_serve_refuses_a_bad_listen_with_one_line(
    listen: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "relaypolicy.toml"
    config.write_text('[domains]\nlocal = ["example.org"]\n', encoding="utf-8")
    assert main(["serve", "--config", str(config), "--listen", listen]) == 64
    err = capsys.readouterr().err
    assert err.startswith("relaypolicy serve: error: listener") and "Traceback" not in err
    assert err.count("\n") == 1


def test_options_are_not_abbreviated(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--conf", "x.toml"])
    assert exited.value.code == 64
    # --conf is not taken for --config: the required option is reported missing
    assert "required: --config" in capsys.readouterr().err


def test_help_examples_paste_as_they_read(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("check", "watch"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        shown = capsys.readouterr().out
        assert "%%" not in shown
        assert shown.count("regex:PATTERN") <= 1
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    assert "'user%other.example@example.org'" in capsys.readouterr().out
