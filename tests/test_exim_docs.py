"""docs/exim.md shows the files of contrib/exim/ as they are shipped (and tested)."""

from __future__ import annotations

import re
from pathlib import Path

from relaypolicy.exim.settings import DEFAULT_LISTEN

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "exim.md"
CONTRIB = ROOT / "contrib" / "exim"


def exim_blocks() -> list[str]:
    return re.findall(r"^```exim\n(.*?)^```$", DOC.read_text(encoding="utf-8"), re.M | re.S)


def test_the_doc_shows_the_shipped_macros_and_acl() -> None:
    blocks = exim_blocks()
    assert (CONTRIB / "relaypolicy-macros").read_text() in blocks
    assert (CONTRIB / "relaypolicy-rcpt.acl").read_text() in blocks


def test_the_doc_names_every_field_the_acl_sends() -> None:
    acl = (CONTRIB / "relaypolicy-rcpt.acl").read_text()
    sent = re.findall(r"^\s+(\w+)=\$\{str2b64:", acl, re.M)
    assert len(sent) == 13
    text = DOC.read_text(encoding="utf-8")
    for name in sent:
        assert f"| `{name}` |" in text, name


def test_the_default_socket_is_the_default_listener() -> None:
    assert (
        f"RELAYPOLICY_SOCKET = inet:{DEFAULT_LISTEN}\n"
        in (CONTRIB / "relaypolicy-macros").read_text()
    )
