"""``relaypolicy exim``: the socket Exim's RCPT ACL asks through ``${readsocket}``."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from relaypolicy.cli._common import EX_OSERR, EX_USAGE, cannot_listen, error, file_status
from relaypolicy.daemon.exim import EximService
from relaypolicy.daemon.logging import configure_logging

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
    exim.add_argument("--config", required=True, metavar="FILE", help="the TOML configuration")
    exim.add_argument(
        "--listen",
        action="append",
        metavar="ADDRESS",
        help="listen here instead of exim.listen (HOST:PORT, [::1]:PORT or unix:/path; "
        "repeat for more)",
    )
    return exim


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; 0, or 66 for a configuration file that cannot be
    read, 78 for one that cannot be used (no ``[exim]`` section among others), 64 for a bad
    ``--listen``, 71 when a socket cannot be bound (the message names it)."""

    async def serve() -> int:
        try:
            service = EximService(args.config, listen=args.listen)
        except (OSError, ValueError) as exc:
            bad_listen = args.listen and str(exc).startswith("listener ")
            status = EX_USAGE if bad_listen else file_status(args.config)
            return error("exim", str(exc), status)
        configure_logging(service.config.log)
        service.manages_logging = True  # a reload applies [log] changes
        try:
            return await service.run()
        except OSError as exc:
            where = [str(listener) for listener in service.front_end.listeners]
            return error("exim", cannot_listen(exc, where), EX_OSERR)

    return asyncio.run(serve())
