"""The systemd units in ``contrib/systemd``: systemd itself accepts them, they carry the
hardening and directories the docs promise, and every doc, example, unit and help text
names the one control-socket path and the one configuration path."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = sorted((ROOT / "contrib" / "systemd").glob("*.service"))
CONTROL_SOCKET = "/run/relaypolicy/control.sock"
CONFIG = "/etc/relaypolicy/relaypolicy.toml"
INSTALLED = "/usr/local/bin/relaypolicy"  # where the units expect the console script


def directives(unit: Path) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit (comments skipped), each key with all its values."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_three_units_are_shipped() -> None:
    assert [unit.name for unit in UNITS] == [
        "relaypolicy-serve.service",
        "relaypolicy-smtpd.service",
        "relaypolicy-watch.service",
    ]


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_systemd_analyze_verify(unit: Path, tmp_path: Path) -> None:
    """``systemd-analyze verify`` reads the unit as systemd would and reports unknown keys,
    bad values and commands that are not there; it exits 0 even then, so its output
    must be empty. The command is pointed at this interpreter, which exists here."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(INSTALLED, f"{sys.executable} -m relaypolicy"))
    done = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, check=False, timeout=120
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_units_are_hardened(unit: Path) -> None:
    found = directives(unit)
    for key, value in {
        "User": "relaypolicy",
        "RuntimeDirectory": "relaypolicy",
        "StateDirectory": "relaypolicy",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter": "@system-service",
        "Restart": "on-failure",
    }.items():
        assert found.get(key) == [value], (unit.name, key)
    start = found["ExecStart"][0].split()
    assert start[:2] == [INSTALLED, unit.stem.removeprefix("relaypolicy-")]
    assert start[start.index("--config") + 1] == CONFIG
    if unit.stem.endswith("smtpd"):  # ports 25, 465 and 587, and no other privilege
        assert found["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    else:
        assert found["CapabilityBoundingSet"] == [""]


def test_serve_reloads_with_sighup_the_others_do_not() -> None:
    """Only ``serve`` has a reload; ``smtpd`` and ``watch`` log and ignore SIGHUP."""
    reloads = {unit.stem: directives(unit).get("ExecReload") for unit in UNITS}
    assert reloads == {
        "relaypolicy-serve": ["kill -HUP $MAINPID"],
        "relaypolicy-smtpd": None,
        "relaypolicy-watch": None,
    }


def test_units_that_own_the_table_run_one_at_a_time() -> None:
    """Each unit keeps the table in the same ``persist`` file and ``serve`` and ``smtpd``
    bind the same control socket: each conflicts with the other two."""
    names = {unit.name for unit in UNITS}
    for unit in UNITS:
        assert set(directives(unit)["Conflicts"][0].split()) == names - {unit.name}


def test_watch_unit_empties_the_map_it_exports() -> None:
    """A killed watcher cannot empty its map; ``ExecStopPost`` empties and rebuilds the
    very map ``ExecStart`` exports, however the service ended."""
    found = directives(ROOT / "contrib" / "systemd" / "relaypolicy-watch.service")
    start = found["ExecStart"][0].split()
    kind, _, exported = start[start.index("--export") + 1].partition(":")
    assert kind == "postfix"
    assert exported.startswith("/var/lib/relaypolicy/")  # StateDirectory: ours to write
    assert found["ExecStopPost"] == [f"/bin/sh -c ': > {exported} && /usr/sbin/postmap {exported}'"]


def places() -> list[Path]:
    """Every file an administrator copies paths from."""
    return [
        *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "examples").glob("*.toml")),
        ROOT / "README.md",
        *UNITS,
        *sorted((ROOT / "relaypolicy" / "cli").glob("*.py")),
    ]


CONTROL_PATHS = re.compile(
    r"/run/relaypolicy/[\w.-]+"  # a file in the runtime directory
    r"|control_socket\s*=\s*\"(/[^\"]+)\""  # a [serve] / [smtpd] setting
    r"|--(?:control-)?socket[ =]+(/[^\s\"'`\\]+)"  # relaypolicy ctl / watch options
)
CONFIG_PATHS = re.compile(r"/etc/relaypolicy[\w./-]*\.toml")
# The listening sockets of the front ends that may listen on a unix socket in the runtime
# directory (the MTA connects to them): named for their front end, never the control socket.
LISTENING_SOCKETS = {"/run/relaypolicy/milter.sock", "/run/relaypolicy/exim.sock"}


def test_every_place_names_the_canonical_paths() -> None:
    """One control socket, ``/run/relaypolicy/control.sock``, and one configuration file,
    ``/etc/relaypolicy/relaypolicy.toml``, in every doc, example, unit and help text."""
    other: list[str] = []
    seen = {CONTROL_SOCKET: 0, CONFIG: 0}
    for path in places():
        text = path.read_text()
        for match in CONTROL_PATHS.finditer(text):
            named = next((group for group in match.groups() if group), match.group(0))
            if named == CONTROL_SOCKET:
                seen[CONTROL_SOCKET] += 1
            elif named not in LISTENING_SOCKETS:
                other.append(f"{path.relative_to(ROOT)}: {named}")
        for named in CONFIG_PATHS.findall(text):
            if named == CONFIG:
                seen[CONFIG] += 1
            else:
                other.append(f"{path.relative_to(ROOT)}: {named}")
        if "/etc/relaypolicy.toml" in text:
            other.append(f"{path.relative_to(ROOT)}: /etc/relaypolicy.toml")
    assert other == []
    assert min(seen.values()) >= 5, seen  # the check above looked at real mentions


def test_watch_help_names_the_canonical_paths() -> None:
    """What ``relaypolicy watch --help`` prints, as an administrator would copy it."""
    done = subprocess.run(
        [sys.executable, "-m", "relaypolicy", "watch", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert f"--config {CONFIG} --control-socket {CONTROL_SOCKET}" in done.stdout
