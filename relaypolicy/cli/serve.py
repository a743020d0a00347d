"""``relaypolicy serve``: the Postfix policy service."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from relaypolicy.cli._common import EX_OSERR, EX_USAGE, cannot_listen, error, file_status
from relaypolicy.daemon.logging import configure_logging
from relaypolicy.daemon.serve import Service

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``serve`` to the subcommands; the new parser."""
    serve: argparse.ArgumentParser = commands.add_parser(
        "serve",
        help="run the Postfix policy service",
        description="Run the policy service Postfix asks through check_policy_service. "
        "SIGTERM/SIGINT finish the requests in hand and exit 0; SIGHUP reloads the "
        "configuration (a broken file is reported and the old policy keeps serving).",
        epilog="main.cf: smtpd_relay_restrictions = check_policy_service "
        "{ inet:127.0.0.1:9998, default_action=DEFER }, reject  (see docs/postfix.md)",
    )
    serve.add_argument("--config", required=True, metavar="FILE", help="the TOML configuration")
    serve.add_argument(
        "--listen",
        action="append",
        metavar="ADDRESS",
        help="listen here instead of serve.listen (HOST:PORT, [::1]:PORT or unix:/path; "
        "repeat for more)",
    )

    return serve


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; 0, or 66 for a configuration file that cannot be
    read, 78 for one that cannot be used, 64 for a bad ``--listen``, 71 when a socket
    cannot be bound (the message names it)."""

    async def serve() -> int:
        try:
            service = Service(args.config, listen=args.listen)
        except (OSError, ValueError) as exc:
            bad_listen = args.listen and str(exc).startswith("listener ")
            status = EX_USAGE if bad_listen else file_status(args.config)
            return error("serve", str(exc), status)
        configure_logging(service.config.log)
        service.manages_logging = True  # a reload applies [log] changes
        try:
            return await service.run()
        except OSError as exc:
            where = [str(listener) for listener in service.front_end.listeners]
            return error("serve", cannot_listen(exc, where), EX_OSERR)

    return asyncio.run(serve())
