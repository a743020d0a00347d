"""``relaypolicy opensmtpd-filter``: the OpenSMTPD filter process."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from relaypolicy.cli._common import EX_OSERR, error, file_status
from relaypolicy.daemon.logging import configure_logging
from relaypolicy.daemon.opensmtpd import FilterService

__all__ = ["add_parser", "run"]

COMMAND = "opensmtpd-filter"


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``opensmtpd-filter`` to the subcommands; the new parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        COMMAND,
        help="run as an OpenSMTPD filter (smtpd starts it)",
        description="Speak OpenSMTPD's filter protocol on stdin and stdout: follow each "
        "SMTP session through smtpd's report events and answer its rcpt-to requests "
        "(proceed, or reject with the policy's reply; 451 for what cannot be decided). "
        "Logs go to stderr (smtpd logs them) or syslog, never stdout. stdin closing or "
        "SIGTERM stops it (the POP-before-SMTP table is saved); SIGHUP reloads the "
        "configuration.",
        epilog='smtpd.conf: filter relaypolicy proc-exec "/usr/bin/relaypolicy '
        'opensmtpd-filter --config /etc/relaypolicy/relaypolicy.toml"  (see docs/opensmtpd.md)',
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="the TOML configuration")
    return parser


def _protect_stdout() -> int:
    """Move the protocol's stdout to a descriptor of its own and point descriptor 1 (and
    ``sys.stdout``) at stderr, so a stray ``print`` or warning can never reach smtpd as
    protocol; the protocol's descriptor."""
    sys.stdout.flush()
    protocol = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return protocol


def run(args: argparse.Namespace) -> int:
    """Filter until stdin closes, SIGTERM or SIGINT; 0, or 66 for a configuration file
    that cannot be read, 78 for one that cannot be used, 71 when stdin and stdout cannot
    be used, 74 when the table could not be saved."""
    output = _protect_stdout()

    async def filter_() -> int:
        try:
            service = FilterService(args.config, input_fd=0, output_fd=output)
        except (OSError, ValueError) as exc:
            return error(COMMAND, str(exc), file_status(args.config))
        configure_logging(service.config.log)
        service.manages_logging = True  # a reload applies [log] changes
        try:
            return await service.run()
        except OSError as exc:
            return error(COMMAND, f"cannot use stdin/stdout: {exc}", EX_OSERR)

    try:
        return asyncio.run(filter_())
    finally:
        os.close(output)
