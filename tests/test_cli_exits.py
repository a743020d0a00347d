"""The command line's exit statuses and error lines, run as a user runs them.

One rule for every command (docs/api.md, "Exit status"): 64 a command line that cannot be
understood, 66 a file that cannot be read, 69 a server that cannot be reached, 71 a socket
that cannot be bound, 78 a configuration that was read but cannot be used. Each error line
starts with the program and command name and names the file, path or address.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from relaypolicy.config import ConfigError, read_toml

VALID = '[domains]\nlocal = ["example.org"]\n'
BROKEN = '[domains]\nlocal = ["example.org"]\n\n[chain]\nsteps = [\n  "trusted_networks"\n  oops\n'


def relaypolicy(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The installed console script when there is one beside the interpreter, else
    ``python -m relaypolicy``; this tree's package either way (PYTHONPATH)."""
    script = shutil.which("relaypolicy", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "relaypolicy"]
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )


def missing_file_commands(missing: str, valid: str) -> dict[str, list[str]]:
    """Every command that reads a file, with that file missing."""
    return {
        "serve": ["serve", "--config", missing],
        "smtpd": ["smtpd", "--config", missing],
        "config check": ["config", "check", missing],
        "check": [
            "check",
            "--config",
            missing,
            "--client-address",
            "192.0.2.1",
            "--recipient",
            "u@example.org",
        ],
        "audit": ["audit", "--config", missing],
        "test": ["test", missing, "--config", valid],
        "watch": ["watch", "--config", missing],
        "passwd": ["passwd", "--delete", missing, "someone"],
    }


@pytest.mark.parametrize(
    "command",
    ["serve", "smtpd", "config check", "check", "audit", "test", "watch", "passwd"],
)
def test_a_missing_file_exits_66_and_names_it(command: str, tmp_path: Path) -> None:
    valid = tmp_path / "valid.toml"
    valid.write_text(VALID, encoding="utf-8")
    missing = str(tmp_path / "absent.toml")
    done = relaypolicy(*missing_file_commands(missing, str(valid))[command], cwd=tmp_path)
    assert done.returncode == 66, done.stderr
    assert done.stderr.startswith(f"relaypolicy {command}: "), done.stderr
    assert missing in done.stderr and "Traceback" not in done.stderr


def test_test_with_a_missing_configuration_exits_66(tmp_path: Path) -> None:
    scenarios = tmp_path / "s.scenarios.toml"
    scenarios.write_text(
        '[[case]]\nname = "local"\nclient_address = "192.0.2.1"\n'
        'recipient = "u@example.org"\nexpect = "accept"\n',
        encoding="utf-8",
    )
    done = relaypolicy("test", str(scenarios), "--config", str(tmp_path / "absent.toml"))
    assert done.returncode == 66, done.stderr
    assert "absent.toml" in done.stderr


def test_watch_scan_of_a_missing_log_exits_66(tmp_path: Path) -> None:
    log = str(tmp_path / "absent.log")
    done = relaypolicy("watch", "--log", log, "--format", "dovecot", "--scan")
    assert done.returncode == 66, done.stderr
    assert done.stderr.startswith("relaypolicy watch: ") and log in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--config"],
        ["smtpd", "--config"],
        ["check", "--client-address", "192.0.2.1", "--recipient", "u@x.test", "--config"],
        ["audit", "--config"],
        ["watch", "--config"],
    ],
    ids=lambda args: args[0],
)
def test_a_configuration_with_a_toml_syntax_error_exits_78_with_the_line(
    args: list[str], tmp_path: Path
) -> None:
    config = tmp_path / "broken.toml"
    config.write_text(BROKEN, encoding="utf-8")
    done = relaypolicy(*args, str(config), cwd=tmp_path)
    assert done.returncode == 78, done.stderr
    assert done.stderr.startswith(f"relaypolicy {args[0]}: error: {config}: not valid TOML")
    assert "line 7" in done.stderr


def test_config_check_says_invalid_with_the_program_name_and_the_line(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text(BROKEN, encoding="utf-8")
    done = relaypolicy("config", "check", str(config))
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"relaypolicy config check: invalid: {config}: not valid TOML")
    assert "line 7" in done.stderr
    config.write_text(VALID + '\n[chain]\notherwise = "maybe"\n', encoding="utf-8")
    done = relaypolicy("config", "check", str(config))
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"relaypolicy config check: invalid: {config}:5: ")


def test_read_toml_names_the_line_of_a_syntax_error(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text(BROKEN, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML: .*\(at line 7, "):
        read_toml(config)


def test_ctl_without_a_service_exits_69(tmp_path: Path) -> None:
    socket_path = str(tmp_path / "absent.sock")
    done = relaypolicy("ctl", "--socket", socket_path, "stats")
    assert done.returncode == 69, done.stderr
    assert done.stderr.startswith("relaypolicy ctl: error: cannot talk to " + socket_path)


def test_serve_names_a_control_socket_it_cannot_create(tmp_path: Path) -> None:
    """The socket's directory does not exist: the line names the socket, not only ENOENT."""
    control = tmp_path / "run" / "relaypolicy" / "control.sock"
    config = tmp_path / "serve.toml"
    config.write_text(VALID + f'\n[serve]\ncontrol_socket = "{control}"\n', encoding="utf-8")
    listen = f"unix:{tmp_path / 'policy.sock'}"
    done = relaypolicy("serve", "--config", str(config), "--listen", listen, cwd=tmp_path)
    assert done.returncode == 71, done.stderr
    assert f"cannot create the control socket {control}: " in done.stderr
    assert done.stderr.startswith("relaypolicy serve: error: "), done.stderr
    assert not control.parent.exists()


def test_serve_names_a_unix_listener_it_cannot_bind(tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text(VALID, encoding="utf-8")
    path = tmp_path / "missing" / "policy.sock"
    done = relaypolicy("serve", "--config", str(config), "--listen", f"unix:{path}", cwd=tmp_path)
    assert done.returncode == 71, done.stderr
    assert done.stderr.startswith(f"relaypolicy serve: error: cannot listen on unix:{path}: ")


def test_smtpd_names_a_control_socket_it_cannot_create(tmp_path: Path) -> None:
    pytest.importorskip("aiosmtpd")
    control = tmp_path / "missing" / "smtpd.sock"
    with socket.socket() as probe:  # a free port; smtpd binds it before the control socket
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "smtpd.toml"
    config.write_text(
        VALID + f'\n[smtpd]\nlisten = ["127.0.0.1:{port}"]\nmaildir = "{tmp_path / "mail"}"\n'
        f'mailboxes = ["user@example.org"]\ncontrol_socket = "{control}"\n',
        encoding="utf-8",
    )
    done = relaypolicy("smtpd", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 71, done.stderr
    assert f"relaypolicy smtpd: error: cannot create the control socket {control}: " in (
        done.stderr
    )


def test_serve_does_not_replace_a_file_where_the_control_socket_goes(tmp_path: Path) -> None:
    control = tmp_path / "control.sock"
    control.write_text("not a socket\n", encoding="utf-8")
    config = tmp_path / "serve.toml"
    config.write_text(VALID + f'\n[serve]\ncontrol_socket = "{control}"\n', encoding="utf-8")
    listen = f"unix:{tmp_path / 'policy.sock'}"
    done = relaypolicy("serve", "--config", str(config), "--listen", listen, cwd=tmp_path)
    assert done.returncode == 71, done.stderr
    assert done.stderr.startswith(
        f"relaypolicy serve: error: cannot create the control socket {control}: it exists "
        "and is not a socket"
    )
    assert control.read_text(encoding="utf-8") == "not a socket\n"
