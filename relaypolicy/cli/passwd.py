"""``relaypolicy passwd FILE USER``: manage the SMTP AUTH password file of ``smtpd``.

Exit status 0 when done, 1 when not (the message says why), 66 when ``--delete`` finds no
file to read.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from relaypolicy.cli._common import EX_NOINPUT, error, file_status
from relaypolicy.smtpd.passwords import PasswordFile, check_user_name

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``passwd`` to a ``add_subparsers()`` object; the new parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "passwd",
        help="add a user to an SMTP AUTH password file, or change its password",
        description="Add USER to FILE (created, mode 0600, when missing) or change its "
        "password. The password is asked twice without echo; the file keeps a salted "
        "scrypt hash. Exit status 0 when done, 1 when not, 66 when --delete finds no "
        "FILE.",
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


def _read_password(user: str, from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    first = getpass.getpass(f"New password for {user}: ")
    if getpass.getpass("Again: ") != first:
        raise ValueError("the passwords do not match")
    return first


def run(args: argparse.Namespace) -> int:
    try:
        check_user_name(args.user)
        try:
            passwords = PasswordFile.load(args.file, missing_ok=not args.delete)
        except ValueError as exc:  # the file to read is not there, or not a password file
            unread = file_status(args.file) == EX_NOINPUT
            return error("passwd", str(exc), EX_NOINPUT if unread else 1)
        if args.delete:
            if not passwords.delete(args.user):
                return error("passwd", f"{args.file}: no user {args.user!r}", 1)
            passwords.save()
            print(f"removed {args.user} from {args.file}")
            return 0
        existed = args.user in passwords
        passwords.set(args.user, _read_password(args.user, args.password_stdin))
        passwords.save()
    except ValueError as exc:
        return error("passwd", str(exc), 1)
    except OSError as exc:
        return error("passwd", f"{args.file}: {exc.strerror or exc}", 1)
    except (EOFError, KeyboardInterrupt):
        return error("passwd", "no password given", 1)
    print(f"{'changed the password of' if existed else 'added'} {args.user} in {args.file}")
    return 0
