"""`relaypolicy milter` on the command line and its `[milter]` section: exit statuses,
error lines, and the settings a file gives."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cli_exits import BROKEN, VALID, relaypolicy

from relaypolicy.config import ConfigError, parse_config
from relaypolicy.milter.settings import MilterSettings, parse_milter


def test_a_missing_file_exits_66(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.toml")
    done = relaypolicy("milter", "--config", missing)
    assert done.returncode == 66, done.stderr
    assert done.stderr.startswith("relaypolicy milter: error: "), done.stderr
    assert missing in done.stderr


def test_a_broken_file_exits_78(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text(BROKEN, encoding="utf-8")
    done = relaypolicy("milter", "--config", str(config))
    assert done.returncode == 78, done.stderr
    assert done.stderr.startswith("relaypolicy milter: error: "), done.stderr


def test_a_bad_listen_exits_64(tmp_path: Path) -> None:
    config = tmp_path / "milter.toml"
    config.write_text(VALID, encoding="utf-8")
    done = relaypolicy("milter", "--config", str(config), "--listen", "unix:relative.sock")
    assert done.returncode == 64, done.stderr
    assert done.stderr.startswith("relaypolicy milter: error: listener"), done.stderr
    assert "Traceback" not in done.stderr


def test_a_unix_listener_it_cannot_bind_exits_71(tmp_path: Path) -> None:
    config = tmp_path / "milter.toml"
    config.write_text(VALID, encoding="utf-8")
    path = tmp_path / "missing" / "milter.sock"
    done = relaypolicy("milter", "--config", str(config), "--listen", f"unix:{path}")
    assert done.returncode == 71, done.stderr
    assert done.stderr.startswith(f"relaypolicy milter: error: cannot listen on unix:{path}: ")


def test_a_control_socket_over_a_file_exits_71(tmp_path: Path) -> None:
    control = tmp_path / "control.sock"
    control.write_text("not a socket\n", encoding="utf-8")
    config = tmp_path / "milter.toml"
    config.write_text(VALID + f'\n[milter]\ncontrol_socket = "{control}"\n', encoding="utf-8")
    listen = f"unix:{tmp_path / 'milter.sock'}"
    done = relaypolicy("milter", "--config", str(config), "--listen", listen)
    assert done.returncode == 71, done.stderr
    assert done.stderr.startswith(
        f"relaypolicy milter: error: cannot create the control socket {control}: it exists "
        "and is not a socket"
    )
    assert control.read_text(encoding="utf-8") == "not a socket\n"


def test_the_section_and_its_defaults() -> None:
    assert parse_milter(None) == MilterSettings()
    settings = parse_milter(
        {
            "listen": ["inet:127.0.0.1:9997", "[::1]:9997", "unix:/run/rp/milter.sock"],
            "socket_mode": "0660",
            "control_socket": "/run/rp/control.sock",
            "idle_timeout": 600,
            "packet_timeout": 5,
            "max_connections": 50,
            "max_packet": 4096,
            "daemon_ports": {"MTA": 25, "MSA": 587},
            "request_macros": False,
        }
    )
    assert settings.request_macros is False
    assert settings.socket_mode == 0o660
    assert settings.daemon_ports == (("MTA", 25), ("MSA", 587))
    assert settings.max_packet == 4096
    config = parse_config({"domains": {"local": ["example.org"]}, "milter": {}})
    assert config.milter == MilterSettings()
    assert parse_config({"domains": {"local": ["example.org"]}}).milter is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"listen": []}, "milter.listen: expected at least one address"),
        ({"listen": ["unix:relative"]}, "milter.listen[0]: listener 'unix:relative'"),
        ({"socket_mode": "999"}, "milter.socket_mode: expected an octal string"),
        ({"socket_mode": "1777"}, "milter.socket_mode: expected a permission mode up to 0777"),
        ({"max_packet": 10}, "milter.max_packet: expected an integer from 1024"),
        ({"daemon_ports": {"MSA": 0}}, "milter.daemon_ports.MSA: expected an integer from 1"),
        ({"daemon_ports": [587]}, "milter.daemon_ports: expected a table"),
        ({"liste": ["x"]}, "milter.liste: unknown key"),
        ({"request_macros": 1}, "milter.request_macros: expected true or false"),
    ],
)
def test_bad_settings_name_the_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_milter(table)
