"""``relaypolicy smtpd``: the small policy-enforcing SMTP server (aiosmtpd).

Exit status 66 for a configuration file that cannot be read, 78 for one that cannot be
used, 64 for a command line that cannot, 71 when the server cannot listen (the message
names the address). aiosmtpd is an optional extra, imported only when the server starts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import Any

from relaypolicy.cli._common import EX_CONFIG, EX_OSERR, EX_USAGE, cannot_listen, error, file_status
from relaypolicy.config import ConfigError
from relaypolicy.daemon.logging import configure_logging
from relaypolicy.settings import parse_host_port

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``smtpd`` to a ``add_subparsers()`` object; the new parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "smtpd",
        help="run a small SMTP server that enforces the configured relay policy",
        description="Run an SMTP server (aiosmtpd) that applies the configuration's chain "
        "to every recipient: local mail is delivered into a Maildir per listed mailbox "
        "(smtpd.mailboxes; other local addresses go to smtpd.catch_all or are refused with "
        "550 5.1.1), relayed mail is forwarded to the smarthost or kept in an outgoing "
        "Maildir. Without --config it runs an embedded default: local domain localhost "
        "with the mailboxes user and postmaster, trusted network 127.0.0.1, Maildirs under "
        "the current directory. SIGTERM/SIGINT stop it.",
        epilog="try it: relaypolicy smtpd, then in another terminal: swaks --server "
        "127.0.0.1:8025 --to user@localhost  (see docs/aiosmtpd.md)",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="the TOML configuration, with an [smtpd] table"
    )
    parser.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help="listen here instead of smtpd.listen (repeat for more; default 127.0.0.1:8025)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        for spec in args.listen or ():
            parse_host_port(spec)
    except ValueError as exc:
        return error("smtpd", f"--listen: {exc}", EX_USAGE)
    try:  # the optional extra: pip install 'relaypolicy[aiosmtpd]'
        from relaypolicy.daemon.smtpd import SmtpdServer, load_smtpd_config
    except ImportError as exc:
        return error("smtpd", f"{exc} (pip install 'relaypolicy[aiosmtpd]')", EX_USAGE)
    try:
        config, settings = load_smtpd_config(args.config)
    except ConfigError as exc:
        return error("smtpd", str(exc), file_status(args.config))
    configure_logging(config.log)
    if args.config is None:
        logging.getLogger("relaypolicy.smtpd").info(
            "no --config: running the embedded default (local domain localhost, trusted "
            "network 127.0.0.1, Maildirs under %s)",
            os.getcwd(),
        )

    async def serve() -> int:
        try:
            server = SmtpdServer(config, settings, listen=args.listen)
        except (OSError, ValueError) as exc:  # the message names the file
            return error("smtpd", str(exc), EX_CONFIG)
        try:
            return await server.run()
        except OSError as exc:  # run() has closed what it started
            where = [
                f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                for host, port in server.front_end.listen
            ]
            return error("smtpd", cannot_listen(exc, where), EX_OSERR)

    return asyncio.run(serve())
