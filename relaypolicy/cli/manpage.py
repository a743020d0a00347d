"""Man pages for the ``relaypolicy`` command, generated from its argparse definitions.

One source of truth: the pages are built from the same parsers ``relaypolicy --help``
prints, so an option cannot be documented in one and missing from the other. The output
is troff with the ``man`` macros (man(7)): ``relaypolicy.1`` for the command and
``relaypolicy-<command>.1`` for each subcommand, with NAME, SYNOPSIS, DESCRIPTION, OPTIONS,
the actions of a command that has them, EXIT STATUS where the description states it,
EXAMPLE from the epilog, and SEE ALSO.

The wheel's build hook (``hatch_build.py``) runs ``python -m relaypolicy.cli.manpage DIR``
and installs the pages under ``share/man/man1``; a packager can run the same command.
Standard library only. ``SOURCE_DATE_EPOCH`` (reproducible builds) dates the pages; without
it the date is left empty so two builds of one tree give the same bytes.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from relaypolicy import __version__
from relaypolicy.cli import _build_parser

__all__ = ["escape", "render_pages", "write_man_pages"]

_EXIT_STATUS = re.compile(r"\s*\bExit status\b[:\s]*", re.IGNORECASE)


def escape(text: str) -> str:
    """``text`` as troff input text: a backslash is ``\\e``, a hyphen ``\\-`` (so option
    names stay ASCII hyphen-minus when copied from the rendered page, groff_man(7)), and a
    line that would start with ``.`` or ``'`` (a control line) is guarded by ``\\&``."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(
        "\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n")
    )


def _bold(text: str) -> str:
    return f"\\fB{escape(text)}\\fR"


def _formatter(parser: argparse.ArgumentParser) -> argparse.HelpFormatter:
    # Wide enough never to wrap: troff fills the lines itself.
    return parser.formatter_class(prog=parser.prog, width=100_000)  # type: ignore[call-arg]


def _synopsis(parser: argparse.ArgumentParser) -> str:
    formatter = _formatter(parser)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return " ".join(formatter.format_help().split())


def _split_exit_status(description: str) -> tuple[str, str]:
    """The description without its "Exit status ..." sentences, and those sentences."""
    match = _EXIT_STATUS.search(description)
    if match is None:
        return description, ""
    status = description[match.end() :].strip()
    return description[: match.start()].strip(), status[:1].upper() + status[1:]


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:  # type: ignore[type-arg]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _options(parser: argparse.ArgumentParser) -> list[str]:
    """``.TP`` paragraphs for the options and positional arguments, as ``--help`` lists them."""
    formatter = _formatter(parser)
    lines: list[str] = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        invocation = formatter._format_action_invocation(action)
        lines += [".TP", _bold(invocation)]
        if action.help:
            lines.append(escape(formatter._expand_help(action)))
    return lines


def _actions(parser: argparse.ArgumentParser, heading: str) -> list[str]:
    """A section for the subcommands (``ACTIONS`` of ``config``, ``ctl``), one ``.SS`` each."""
    subparsers = _subparsers(parser)
    if subparsers is None:
        return []
    helps = {choice.dest: choice.help or "" for choice in subparsers._choices_actions}
    lines = [f".SH {heading}"]
    seen: set[int] = set()
    for name, sub in subparsers.choices.items():
        if id(sub) in seen:  # an alias: named with its action below
            continue
        seen.add(id(sub))
        aliases = [other for other, p in subparsers.choices.items() if p is sub and other != name]
        lines += [f".SS {escape(' '.join([name, *aliases]))}", _bold(_synopsis(sub)), ".PP"]
        text = sub.description or helps.get(name, "")
        if text:
            lines.append(escape(text))
        lines += _options(sub)
    return lines


def _page(
    parser: argparse.ArgumentParser, name: str, summary: str, see_also: Sequence[str], date: str
) -> str:
    description, exit_status = _split_exit_status(parser.description or summary)
    lines = [
        f'.TH "{name.upper()}" "1" "{date}" "relaypolicy {__version__}" "User Commands"',
        ".SH NAME",
        f"{escape(name)} \\- {escape(summary)}",
        ".SH SYNOPSIS",
        _bold(_synopsis(parser)),
        ".SH DESCRIPTION",
        escape(description),
    ]
    options = _options(parser)
    if options:
        lines += [".SH OPTIONS", *options]
    subparsers = _subparsers(parser)
    if subparsers is not None and parser.prog == "relaypolicy":
        lines.append(".SH COMMANDS")
        for choice in subparsers._choices_actions:
            # \% : no hyphenation inside a page name.
            page = f"\\%(\\fBrelaypolicy\\-{escape(choice.dest)}\\fR(1))"
            lines += [".TP", _bold(choice.dest), f"{escape(choice.help or '')} {page}"]
    else:
        lines += _actions(parser, "ACTIONS")
    if exit_status:
        lines += [".SH EXIT STATUS", escape(exit_status)]
    if parser.epilog:
        example = re.sub(r"^examples?:\s*", "", parser.epilog, flags=re.IGNORECASE)
        lines += [".SH EXAMPLE", ".PP", ".nf", escape(example), ".fi"]
    if see_also:
        lines += [".SH SEE ALSO", ",\n".join(f"\\%\\fB{escape(page)}\\fR(1)" for page in see_also)]
    return "\n".join(lines) + "\n"


def _date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not epoch.isdigit():
        return ""
    return time.strftime("%Y-%m-%d", time.gmtime(int(epoch)))


def render_pages() -> dict[str, str]:
    """File name -> troff text, for ``relaypolicy`` and every subcommand in ``COMMANDS``."""
    parser = _build_parser()
    subparsers = _subparsers(parser)
    assert subparsers is not None  # the command line is built of subcommands
    helps = {choice.dest: choice.help or "" for choice in subparsers._choices_actions}
    date = _date()
    commands = list(helps)
    pages = {
        "relaypolicy.1": _page(
            parser,
            "relaypolicy",
            "pluggable SMTP relay policies",
            [f"relaypolicy-{command}" for command in commands],
            date,
        )
    }
    for command in commands:
        pages[f"relaypolicy-{command}.1"] = _page(
            subparsers.choices[command],
            f"relaypolicy-{command}",
            helps[command],
            ["relaypolicy"],
            date,
        )
    return pages


def write_man_pages(directory: str | os.PathLike[str]) -> list[Path]:
    """Write every page into ``directory`` (created if missing); the paths written."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_pages().items():
        path = target / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m relaypolicy.cli.manpage DIR``: write the pages into DIR."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m relaypolicy.cli.manpage DIR", file=sys.stderr)
        return 64  # EX_USAGE, as every relaypolicy command
    for path in write_man_pages(args[0]):
        print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
