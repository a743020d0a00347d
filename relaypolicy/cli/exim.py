"""``relaypolicy exim``: the socket Exim's RCPT ACL asks through ``${readsocket}``."""

from __future__ import annotations

import argparse
from typing import Any

from relaypolicy.cli._common import add_service_arguments, run_service
from relaypolicy.daemon.exim import EximService

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``exim`` to the subcommands; the new parser."""
    exim: argparse.ArgumentParser = commands.add_parser(
        "exim",
        help="run the socket Exim's RCPT ACL asks (${readsocket})",
        description="Answer Exim's acl_smtp_rcpt: one request line per recipient (base64 "
        "fields), one answer line (accept, deny, defer or next). Listens on [exim] listen. "
        "SIGTERM/SIGINT finish the requests in hand and exit 0; SIGHUP reloads the "
        "configuration (a broken file is reported and the old policy keeps serving).",
        epilog="The ACL to paste into Exim's configuration is in docs/exim.md.",
    )
    add_service_arguments(exim, "exim")
    return exim


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; 0, or 66 for a configuration file that cannot be
    read, 78 for one that cannot be used (no ``[exim]`` section among others), 64 for a bad
    ``--listen``, 71 when a socket cannot be bound (the message names it)."""
    return run_service("exim", lambda config, listen: EximService(config, listen=listen), args)
