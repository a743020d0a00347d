"""What every subcommand shares: exit statuses (sysexits.h), the parser, error lines."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

__all__ = ["EX_NOINPUT", "EX_OSERR", "EX_UNAVAILABLE", "EX_USAGE", "Parser", "error"]

EX_USAGE = 64  # a command line, configuration or input file that cannot be used
EX_NOINPUT = 66  # an input file that cannot be read
EX_UNAVAILABLE = 69  # a server or socket that cannot be reached
EX_OSERR = 71  # the system refused (cannot listen)


class Parser(argparse.ArgumentParser):
    """argparse with our usage error (exit 64) and no abbreviated options.

    An abbreviation (``serve --conf``) would start a server on a prefix that a later
    option could make ambiguous; every option is spelled out.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def error(command: str, message: str, status: int) -> int:
    """Print ``relaypolicy COMMAND: error: MESSAGE`` on stderr; ``status``."""
    print(f"relaypolicy {command}: error: {message}", file=sys.stderr)
    return status
