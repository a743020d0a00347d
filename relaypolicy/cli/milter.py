"""``relaypolicy milter``: the milter for Sendmail and Postfix."""

from __future__ import annotations

import argparse
from typing import Any

from relaypolicy.cli._common import add_service_arguments, run_service
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
    add_service_arguments(milter, "milter")
    return milter


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; 0, or 66 for a configuration file that cannot be
    read, 78 for one that cannot be used, 64 for a bad ``--listen``, 71 when a socket
    cannot be bound (the message names it)."""
    return run_service("milter", lambda config, listen: MilterService(config, listen=listen), args)
