"""The ``relaypolicy`` command: one module per subcommand, registered here.

Each module in this package has ``add_parser(commands)``, which adds its subcommand to the
argparse subparsers, and ``run(args)``, which runs it and returns the exit status. Nothing
in the library imports this package: it is the outermost layer.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from relaypolicy import __version__
from relaypolicy.cli import (
    audit,
    check,
    config,
    ctl,
    exim,
    milter,
    passwd,
    postfix,
    serve,
    smtpd,
    test,
    watch,
)
from relaypolicy.cli import opensmtpd as opensmtpd_filter
from relaypolicy.cli._common import EX_USAGE, Parser

__all__ = ["COMMANDS", "main"]

# name -> (add the parser, run): the order is the order of `relaypolicy --help`.
COMMANDS: dict[str, tuple[Callable[[Any], argparse.ArgumentParser], Callable[..., int]]] = {
    module.__name__.rsplit(".", 1)[1]: (module.add_parser, module.run)
    for module in (
        check,
        serve,
        config,
        ctl,
        smtpd,
        passwd,
        test,
        audit,
        watch,
        postfix,
        milter,
        exim,
    )
}
COMMANDS[opensmtpd_filter.COMMAND] = (opensmtpd_filter.add_parser, opensmtpd_filter.run)


def _build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="relaypolicy",
        description="Pluggable SMTP relay policies: decide whether a mail server may "
        "accept a recipient, and in particular whether it may relay it.",
    )
    parser.add_argument("--version", action="version", version=f"relaypolicy {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for add_parser, _ in COMMANDS.values():
        add_parser(commands).set_defaults(parser=parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EX_USAGE
    return COMMANDS[args.command][1](args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
