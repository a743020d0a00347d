"""``relaypolicy config check FILE``: validate a configuration and say what it does."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from relaypolicy.cli._common import EX_NOINPUT, error, file_status
from relaypolicy.config import ConfigError, load_config

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``config`` to the subcommands; the new parser."""
    config: argparse.ArgumentParser = commands.add_parser(
        "config", help="validate a configuration file", description="Configuration tools."
    )
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION")
    config_check = config_commands.add_parser(
        "check",
        help="validate FILE and print the effective chain in words",
        description="Validate FILE and print the effective chain in words. Exit status 0 "
        "when valid, 1 when not (the error names the line and the key), 66 when FILE "
        "cannot be read.",
    )
    config_check.add_argument("file", metavar="FILE")

    return config


def run(args: argparse.Namespace) -> int:
    """0 and the chain in words when the file is valid; 1 and the error when not; 66
    when there is no file to read."""
    if args.config_command != "check":
        args.parser.error("config needs an action: check FILE")
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        if file_status(args.file) == EX_NOINPUT:
            return error("config check", str(exc), EX_NOINPUT)
        # Not an error of the command: the answer to its question, as 1 is.
        print(f"relaypolicy config check: invalid: {exc}", file=sys.stderr)
        return 1
    print(config.describe())
    return 0
