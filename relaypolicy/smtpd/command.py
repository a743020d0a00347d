"""The ``smtpd`` and ``passwd`` subcommands of ``relaypolicy``.

``add_smtpd_parser(commands)`` / ``add_passwd_parser(commands)`` add them to the
``relaypolicy`` command's subparsers; ``run_smtpd(args)`` / ``run_passwd(args)`` run them
and return the exit status (64 for a configuration or command line that cannot be used,
71 when the server cannot listen). :func:`main` is the pair on its own
(``python -m relaypolicy.smtpd``). aiosmtpd is imported only when the server starts.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

__all__ = ["add_passwd_parser", "add_smtpd_parser", "main", "run_passwd", "run_smtpd"]

EX_USAGE = 64
EX_OSERR = 71


def add_smtpd_parser(commands: Any) -> argparse.ArgumentParser:
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


def add_passwd_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``passwd`` to a ``add_subparsers()`` object; the new parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "passwd",
        help="add a user to an SMTP AUTH password file, or change its password",
        description="Add USER to FILE (created, mode 0600, when missing) or change its "
        "password. The password is asked twice without echo; the file keeps a salted "
        "scrypt hash. Exit status 0 when done, 1 when not.",
    )
    parser.add_argument("file", metavar="FILE", help="the password file (smtpd.passwords)")
    parser.add_argument("user", metavar="USER", help="the login name")
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input (for scripts)",
    )
    parser.add_argument("--delete", action="store_true", help="remove USER instead")
    return parser


def _error(command: str, message: str, status: int) -> int:
    print(f"relaypolicy {command}: error: {message}", file=sys.stderr)
    return status


def run_smtpd(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from relaypolicy.config import ConfigError
    from relaypolicy.smtpd.settings import load_smtpd_config

    try:
        config, settings = load_smtpd_config(args.config)
    except ConfigError as exc:
        return _error("smtpd", str(exc), EX_USAGE)
    try:
        from relaypolicy.postfix.service import configure_logging
        from relaypolicy.smtpd.passwords import PasswordFileError
        from relaypolicy.smtpd.server import SmtpdServer
    except ImportError as exc:
        return _error("smtpd", f"{exc} (pip install 'relaypolicy[aiosmtpd]')", EX_USAGE)
    configure_logging(config.log.level, config.log.format)
    if args.config is None:
        logging.getLogger("relaypolicy.smtpd").info(
            "no --config: running the embedded default (local domain localhost, trusted "
            "network 127.0.0.1, Maildirs under %s)",
            os.getcwd(),
        )

    async def serve() -> int:
        try:
            server = SmtpdServer(config, settings, listen=args.listen)
        except (PasswordFileError, ValueError, OSError) as exc:  # files named in the message
            return _error("smtpd", str(exc), EX_USAGE)
        try:
            return await server.run()
        except OSError as exc:
            await server.close()
            return _error("smtpd", f"cannot listen: {exc}", EX_OSERR)

    return asyncio.run(serve())


def _read_password(user: str, from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    first = getpass.getpass(f"New password for {user}: ")
    if getpass.getpass("Again: ") != first:
        raise ValueError("the passwords do not match")
    return first


def run_passwd(args: argparse.Namespace) -> int:
    from relaypolicy.smtpd.passwords import PasswordFile, PasswordFileError, check_user_name

    try:
        check_user_name(args.user)
        passwords = PasswordFile.load(args.file, missing_ok=not args.delete)
        if args.delete:
            if not passwords.delete(args.user):
                return _error("passwd", f"{args.file}: no user {args.user!r}", 1)
            passwords.save()
            print(f"removed {args.user} from {args.file}")
            return 0
        existed = args.user in passwords
        passwords.set(args.user, _read_password(args.user, args.password_stdin))
        passwords.save()
    except (PasswordFileError, ValueError) as exc:
        return _error("passwd", str(exc), 1)
    except OSError as exc:
        return _error("passwd", f"{args.file}: {exc.strerror or exc}", 1)
    except (EOFError, KeyboardInterrupt):
        return _error("passwd", "no password given", 1)
    print(f"{'changed the password of' if existed else 'added'} {args.user} in {args.file}")
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``smtpd`` and ``passwd`` without the rest of the ``relaypolicy`` command."""
    parser = _Parser(prog="relaypolicy")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    add_smtpd_parser(commands)
    add_passwd_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "smtpd":
        return run_smtpd(args)
    if args.command == "passwd":
        return run_passwd(args)
    parser.print_help(sys.stderr)
    return EX_USAGE
