"""The SMTP AUTH password file and `relaypolicy passwd`."""

from __future__ import annotations

import io
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from relaypolicy.cli import main
from relaypolicy.smtpd import passwords as passwords_module
from relaypolicy.smtpd.passwords import (
    DEFAULT_N,
    PasswordFile,
    PasswordFileError,
    hash_password,
    verify_password,
)

FAST = 2**10  # the smallest cost the file accepts: keeps these tests quick
GOOD = hash_password("x", n=FAST)


def test_hash_format_and_round_trip() -> None:
    hashed = hash_password("s3cret", n=FAST)
    scheme, n, r, p, salt, key = hashed.split("$")
    assert (scheme, n, r, p) == ("scrypt", str(FAST), "8", "1")
    assert len(salt) == 24 and len(key) == 44  # 16 and 32 bytes, base64
    assert verify_password("s3cret", hashed)
    assert not verify_password("s3cret ", hashed)
    assert hash_password("s3cret", n=FAST) != hashed  # a fresh salt each time


def test_default_cost() -> None:
    assert hash_password("pw").startswith(f"scrypt${DEFAULT_N}$8$1$")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("taro", "expected user:scrypt"),
        ("taro:md5$abc", "expected scrypt$N$r$p$salt$hash"),
        ("taro:scrypt$1000$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 44, "power of two"),
        ("taro:scrypt$512$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 44, "at least 1024"),
        ("taro:scrypt$1048576$64$1$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 44, "256 MiB"),
        ("taro:scrypt$1024$8$x$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 44, "decimal integers"),
        ("taro:scrypt$1024$8$1$not base64!$" + "A" * 44, "base64"),
        ("taro:scrypt$1024$8$1$AAAA$" + "A" * 44, "too short"),
        ("ta ro:" + GOOD, "may not start with '#' or hold"),
        (":" + GOOD, "empty user name"),
    ],
)
def test_bad_lines_name_their_number(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "passwd"
    path.write_text(f"# users\nhanako:{GOOD}\n\n{line}\n")
    with pytest.raises(PasswordFileError, match=re.escape(message)) as error:
        PasswordFile.load(path)
    assert f"{path}, line 4:" in str(error.value)


def test_duplicate_user_and_bad_encoding(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text(f"taro:{GOOD}\ntaro:{GOOD}\n")
    with pytest.raises(PasswordFileError, match="line 2: user 'taro' is listed twice"):
        PasswordFile.load(path)
    path.write_bytes(f"taro:{GOOD}\n".encode() + b"\xff\n")
    with pytest.raises(PasswordFileError, match="line 2: not UTF-8"):
        PasswordFile.load(path)
    with pytest.raises(PasswordFileError, match="no such file"):
        PasswordFile.load(tmp_path / "missing")
    assert len(PasswordFile.load(tmp_path / "missing", missing_ok=True)) == 0


def test_set_verify_delete_and_save_keep_comments(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text(f"# SMTP AUTH users\nhanako:{GOOD}\n\n# the end\n")
    path.chmod(0o640)
    passwords = PasswordFile.load(path)
    passwords.set("taro", "tarō's password", n=FAST)
    passwords.set("hanako", "new", n=FAST)
    passwords.save()
    lines = path.read_text().splitlines()
    assert lines[0] == "# SMTP AUTH users"
    assert lines[1].startswith("hanako:scrypt$") and lines[2] == "" and lines[3] == "# the end"
    assert lines[4].startswith("taro:scrypt$")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # the mode is kept
    again = PasswordFile.load(path)
    assert again.users == ["hanako", "taro"]
    assert again.verify("taro", "tarō's password") and again.verify("hanako", "new")
    assert not again.verify("hanako", "x") and not again.verify("nobody", "new")
    assert again.delete("hanako") and not again.delete("hanako")
    again.save()
    assert "hanako" not in path.read_text()
    assert sorted(os.listdir(tmp_path)) == ["passwd"]  # no temporary file left behind


def test_new_file_is_private_and_bad_names_refused(tmp_path: Path) -> None:
    passwords = PasswordFile(tmp_path / "passwd")
    passwords.set("taro", "pw", n=FAST)
    passwords.save()
    assert stat.S_IMODE((tmp_path / "passwd").stat().st_mode) == 0o600
    for name in ("", "a:b", "a b", "#root", "tab\there", "x" * 256):
        with pytest.raises(PasswordFileError):
            passwords.set(name, "pw", n=FAST)
    with pytest.raises(PasswordFileError, match="empty password"):
        passwords.set("jiro", "", n=FAST)


def test_unknown_user_costs_a_computation(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = passwords_module.verify_password

    def counting(password: str, hashed: str) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(passwords_module, "verify_password", counting)
    assert not PasswordFile("p").verify("nobody", "pw")
    assert len(calls) == 1 and calls[0].startswith(f"scrypt${DEFAULT_N}$")


# --- relaypolicy passwd ------------------------------------------------------------------


def test_passwd_adds_and_changes_from_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "passwd"
    monkeypatch.setattr(sys, "stdin", io.StringIO("first secret\n"))
    assert main(["passwd", str(path), "taro", "--password-stdin"]) == 0
    assert "added taro" in capsys.readouterr().out
    monkeypatch.setattr(sys, "stdin", io.StringIO("second secret\n"))
    assert main(["passwd", str(path), "taro", "--password-stdin"]) == 0
    assert "changed the password of taro" in capsys.readouterr().out
    passwords = PasswordFile.load(path)
    assert passwords.verify("taro", "second secret") and not passwords.verify(
        "taro", "first secret"
    )
    assert "secret" not in path.read_text()


def test_passwd_asks_twice_without_echo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "passwd"
    answers = iter(["pw one", "pw one", "pw one", "pw two"])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    assert main(["passwd", str(path), "hanako"]) == 0
    assert prompts == ["New password for hanako: ", "Again: "]
    assert PasswordFile.load(path).verify("hanako", "pw one")
    assert main(["passwd", str(path), "hanako"]) == 1
    assert "do not match" in capsys.readouterr().err
    assert PasswordFile.load(path).verify("hanako", "pw one")  # unchanged


def test_passwd_delete_and_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "passwd"
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    assert main(["passwd", str(path), "taro", "--password-stdin"]) == 0
    assert main(["passwd", str(path), "taro", "--delete"]) == 0
    assert main(["passwd", str(path), "taro", "--delete"]) == 1
    assert "no user 'taro'" in capsys.readouterr().err
    assert main(["passwd", str(path), "bad name", "--password-stdin"]) == 1
    path.write_text("garbage\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    assert main(["passwd", str(path), "taro", "--password-stdin"]) == 1
    assert "line 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["passwd", str(path)])
    assert usage.value.code == 64


def test_passwd_as_a_command(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "relaypolicy",
            "passwd",
            str(path),
            "taro",
            "--password-stdin",
        ],
        input="from a pipe\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "from a pipe" not in done.stdout + done.stderr
    assert PasswordFile.load(path).verify("taro", "from a pipe")
