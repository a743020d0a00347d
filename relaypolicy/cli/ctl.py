"""``relaypolicy ctl``: one command to a running service's control socket."""

from __future__ import annotations

import argparse
import json
from typing import Any

from relaypolicy.cli._common import EX_UNAVAILABLE, error
from relaypolicy.daemon.control import ask

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``ctl`` to the subcommands; the new parser."""
    ctl: argparse.ArgumentParser = commands.add_parser(
        "ctl",
        help="talk to a running service through its control socket",
        description="Send one command to the control socket (serve.control_socket) of a "
        "running `relaypolicy serve` and print the JSON answer.",
    )
    ctl.add_argument("--socket", required=True, metavar="PATH", help="the control socket")
    ctl_commands = ctl.add_subparsers(dest="ctl_command", metavar="ACTION")
    ctl_commands.add_parser("table", help="list the live POP-before-SMTP table")
    ctl_commands.add_parser("stats", help="show counters")
    ctl_commands.add_parser("reload", help="reload the configuration")
    ctl_add = ctl_commands.add_parser(
        "add",
        aliases=["record"],
        help="allow an address to relay for a while ('record' is the same, for login hooks "
        "such as a Dovecot post-login script)",
    )
    ctl_add.add_argument("address")
    ctl_add.add_argument("--ttl", type=float, help="seconds (default: the table's ttl)")
    ctl_add.add_argument("--user", help="the login to record with it")
    ctl_remove = ctl_commands.add_parser(
        "remove", help="withdraw an address (e.g. a compromised one)"
    )
    ctl_remove.add_argument("address")
    return ctl


def run(args: argparse.Namespace) -> int:
    """0 when the service answered ``ok``, 1 when it refused, 69 when it cannot be reached."""
    if args.ctl_command is None:
        args.parser.error("ctl needs an action: table, add, remove, stats or reload")
    command = "add" if args.ctl_command == "record" else args.ctl_command
    message: dict[str, object] = {"command": command}
    if command in ("add", "remove"):
        message["address"] = args.address
    if command == "add":
        if args.ttl is not None:
            message["ttl"] = args.ttl
        if args.user is not None:
            message["user"] = args.user
    try:
        reply = ask(args.socket, message)
    except OSError as exc:
        return error("ctl", f"cannot talk to {args.socket}: {exc}", EX_UNAVAILABLE)
    print(json.dumps(reply, indent=2, ensure_ascii=False))
    return 0 if reply.get("ok") else 1
