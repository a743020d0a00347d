"""``relaypolicy serve``: the Postfix policy service."""

from __future__ import annotations

import argparse
from typing import Any

from relaypolicy.cli._common import add_service_arguments, run_service
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
    add_service_arguments(serve, "serve")

    return serve


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; 0, or 66 for a configuration file that cannot be
    read, 78 for one that cannot be used, 64 for a bad ``--listen``, 71 when a socket
    cannot be bound (the message names it)."""
    return run_service("serve", lambda config, listen: Service(config, listen=listen), args)
