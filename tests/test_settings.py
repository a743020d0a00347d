"""The typed getters every section is read with, and the line finder for error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaypolicy.config import ConfigError, load_config
from relaypolicy.settings import Section, locate, parse_host_port, parse_port


@pytest.mark.parametrize(
    ("text", "expected"),
    [("25", 25), ("1", 1), ("65535", 65535), ("00587", 587)],
)
def test_ports(text: str, expected: int) -> None:
    assert parse_port(text) == expected


@pytest.mark.parametrize("text", ["0", "65536", "", "abc", "-1", "+25", " 25", "２５", "1e3"])
def test_bad_ports(text: str) -> None:
    with pytest.raises(ValueError, match="port"):
        parse_port(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:25", ("127.0.0.1", 25)),
        ("[::1]:587", ("::1", 587)),
        ("mail.example.org:2525", ("mail.example.org", 2525)),
    ],
)
def test_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    "text", ["localhost", ":25", "::1:25", "127.0.0.1:abc", "[::1]", "h:0", "h:99999"]
)
def test_bad_host_port(text: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|port out of range"):
        parse_host_port(text)


def test_section_names_every_key() -> None:
    section = Section({"n": True, "s": 3, "l": ["a", 2], "t": 0.0}, "x", ("n", "s", "l", "t"))
    with pytest.raises(ConfigError, match=r"^x\.n: expected an integer from 1 to 9, got True$"):
        section.integer("n", 1, low=1, high=9)
    with pytest.raises(ConfigError, match=r"^x\.s: expected a string, got 3$"):
        section.string("s")
    with pytest.raises(ConfigError, match=r"^x\.l\[1\]: expected a string, got 2$"):
        section.strings("l")
    with pytest.raises(ConfigError, match=r"^x\.t: expected seconds from 1 to 2, got 0$"):
        section.seconds("t", 1.0, low=1, high=2)
    with pytest.raises(ConfigError, match=r"^x\.other: unknown key \(expected one of a\)$"):
        Section({"other": 1}, "x", ("a",))
    with pytest.raises(ConfigError, match=r"^x: expected a table, got 'text'$"):
        Section("text", "x", ())
    assert Section(None, "x", ("a",)).string("a", "dflt") == "dflt"


def test_seconds_refuse_nan() -> None:
    with pytest.raises(ConfigError, match=r"x\.t: expected seconds"):
        Section({"t": float("nan")}, "x", ("t",)).seconds("t", 1.0, low=0, high=10)


TEXT = """\
# relaypolicy
[domains]
local = ["example.org"]

[serve]
listen = ["127.0.0.1:9998"]
"idle_timeout" = 3

[[watch.export]]
path = "a"
[[watch.export]]
format = "postfix"
path = "b"

[chain.ports]
587 = ["sasl_required"]
"""


@pytest.mark.parametrize(
    ("key", "line"),
    [
        ("domains.local", 3),
        ("serve.listen[0]", 6),
        ("serve.idle_timeout", 7),
        ("serve.missing", 5),
        ("watch.export[0].path", 10),
        ("watch.export[1].path", 13),
        ("watch.export[1]", 11),
        ("chain.ports.587[0]", 16),
        ("log.level", None),
    ],
)
def test_locate(key: str, line: int | None) -> None:
    assert locate(TEXT, key) == line


def test_errors_give_the_line(tmp_path: Path) -> None:
    path = tmp_path / "relaypolicy.toml"
    path.write_text(
        '[domains]\nlocal = ["example.org"]\n\n[serve]\nidle_timeout = -1\n', encoding="utf-8"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        f"{path}:5: serve.idle_timeout: expected seconds from 0.001 to 86400, got -1"
    )
