"""``relaypolicy serve``: the Postfix policy service."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from relaypolicy.cli._common import EX_OSERR, EX_USAGE, error
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
    """Serve until SIGTERM or SIGINT; 0, or 64 for a configuration that cannot be used,
    71 when a socket cannot be bound."""

    async def serve() -> int:
        try:
            service = Service(args.config, listen=args.listen)
        except (OSError, ValueError) as exc:
            return error("serve", str(exc), EX_USAGE)
        configure_logging(service.config.log)
        service.manages_logging = True  # a reload applies [log] changes
        try:
            return await service.run()
        except OSError as exc:
            print(f"relaypolicy serve: cannot listen: {exc}", file=sys.stderr)
            return EX_OSERR

    return asyncio.run(serve())
