"""Plain-text tables and JUnit XML, shared by `relaypolicy test` and `relaypolicy audit`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple
from xml.etree import ElementTree

from relaypolicy.text import log_safe

__all__ = ["JUnitCase", "format_table", "junit_xml", "write_junit"]


def _cell(text: str) -> str:
    """One line, printable: a stranger's address must not break the table (or a terminal)."""
    return log_safe(text)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, limit: int = 100) -> str:
    """A left-aligned table; cells longer than ``limit`` characters are cut with ``...``."""
    cells = [[_cell(text) for text in row] for row in rows]
    cells = [
        [text if len(text) <= limit else text[: limit - 3] + "..." for text in row] for row in cells
    ]
    widths = [len(header) for header in headers]
    for row in cells:
        for index, text in enumerate(row):
            widths[index] = max(widths[index], len(text))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(t.ljust(w) for t, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


class JUnitCase(NamedTuple):
    """One ``<testcase>``: ``failure`` is the message when it failed, else ``None``."""

    name: str
    classname: str
    failure: str | None = None
    details: str = ""


def _xml_char(char: str) -> bool:
    return char >= " " and not "\ud800" <= char <= "\udfff" and char not in "\ufffe\uffff"


def _xml_text(text: str) -> str:
    # XML 1.0 cannot carry most control characters, not even escaped.
    return "".join(char if char in "\t\n\r" or _xml_char(char) else "?" for char in text)


def junit_xml(suite: str, cases: Sequence[JUnitCase]) -> bytes:
    """A JUnit XML document (the dialect Jenkins, GitLab and GitHub Actions read)."""
    failures = sum(case.failure is not None for case in cases)
    root = ElementTree.Element("testsuites", tests=str(len(cases)), failures=str(failures))
    element = ElementTree.SubElement(
        root,
        "testsuite",
        name=_xml_text(suite),
        tests=str(len(cases)),
        failures=str(failures),
        errors="0",
        skipped="0",
    )
    for case in cases:
        item = ElementTree.SubElement(
            element, "testcase", name=_xml_text(case.name), classname=_xml_text(case.classname)
        )
        if case.failure is not None:
            failure = ElementTree.SubElement(
                item, "failure", message=_xml_text(case.failure), type="AssertionError"
            )
            failure.text = _xml_text(case.details or case.failure)
        elif case.details:
            ElementTree.SubElement(item, "system-out").text = _xml_text(case.details)
    ElementTree.indent(root)
    document: bytes = ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)
    return document + b"\n"


def write_junit(path: str | Path, suite: str, cases: Sequence[JUnitCase]) -> None:
    """Write :func:`junit_xml` to ``path``."""
    Path(path).write_bytes(junit_xml(suite, cases))
