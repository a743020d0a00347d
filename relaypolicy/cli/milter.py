"""``relaypolicy milter``: the milter for Sendmail and Postfix."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from relaypolicy.cli._common import EX_OSERR, EX_USAGE, cannot_listen, error, file_status
from relaypolicy.daemon.logging import configure_logging
from relaypolicy.daemon.milter import MilterService

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``milter`` to the subcommands; the new parser."""
    milter: argparse.ArgumentParser = commands.add_parser(
        "milter",
        help="run the milter for Sendmail and Postfix",
        description="Run a milter (protocol version 6) that decides each recipient at RCPT "
        "TO. SIGTERM/SIGINT close the connections and exit 0; SIGHUP reloads the "
        "configuration (a broken file is reported and the old policy keeps serving).",
        epilog="main.cf: smtpd_milters = inet:127.0.0.1:9997, milter_default_action = "
        "tempfail; sendmail.mc: INPUT_MAIL_FILTER(`relaypolicy', `S=inet:9997@127.0.0.1, "
        "F=T') (see docs/milter.md)",
    )
    milter.add_argument("--config", required=True, metavar="FILE", help="the TOML configuration")
    milter.add_argument(
        "--listen",
        action="append",
        metavar="ADDRESS",
        help="listen here instead of milter.listen (HOST:PORT, [::1]:PORT or unix:/path; "
        "repeat for more)",
    )
    return milter


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; 0, or 66 for a configuration file that cannot be
    read, 78 for one that cannot be used, 64 for a bad ``--listen``, 71 when a socket
    cannot be bound (the message names it)."""

    async def serve() -> int:
        try:
            service = MilterService(args.config, listen=args.listen)
        except (OSError, ValueError) as exc:
            bad_listen = args.listen and str(exc).startswith("listener ")
            status = EX_USAGE if bad_listen else file_status(args.config)
            return error("milter", str(exc), status)
        configure_logging(service.config.log)
        service.manages_logging = True  # a reload applies [log] changes
        try:
            return await service.run()
        except OSError as exc:
            where = [str(listener) for listener in service.front_end.listeners]
            return error("milter", cannot_listen(exc, where), EX_OSERR)

    return asyncio.run(serve())
