"""The ``relaypolicy`` command.

Exit status follows the decision so a shell script can branch on it: 0 ACCEPT, 1 REJECT,
2 DEFER, 3 NEXT (only possible for a chain whose default passes), and 64 (EX_USAGE from
sysexits.h) for a command line that cannot be understood.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import NoReturn

from relaypolicy import __version__
from relaypolicy.domains import DomainError
from relaypolicy.model import Decision, Request, Verdict
from relaypolicy.policies import FirstMatch, LocalDomainOnly, Policy, TrustedNetworks

__all__ = ["main"]

EX_USAGE = 64
EXIT_BY_VERDICT = {Verdict.ACCEPT: 0, Verdict.REJECT: 1, Verdict.DEFER: 2, Verdict.NEXT: 3}


class UsageError(Exception):
    """A command line we cannot act on; exits 64."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="relaypolicy",
        description="Pluggable SMTP relay policies: decide whether a mail server may "
        "accept a recipient, and in particular whether it may relay it.",
    )
    parser.add_argument("--version", action="version", version=f"relaypolicy {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    check = commands.add_parser(
        "check",
        help="decide one recipient with TrustedNetworks -> LocalDomainOnly",
        description="Decide one recipient the way `FirstMatch(TrustedNetworks(...), "
        "LocalDomainOnly(...))` does and print the SMTP reply, the deciding policy and "
        "the reason. Exit status: 0 accept, 1 reject, 2 defer, 64 usage error.",
        epilog="example: relaypolicy check --local-domain example.org "
        "--trusted-network 192.0.2.0/24 --client-address 203.0.113.7 "
        "--recipient 'user%%other.example@example.org'",
    )
    check.add_argument(
        "--local-domain",
        action="append",
        default=[],
        metavar="DOMAIN",
        help="a domain this server delivers for (exact match; repeat for more). "
        "Address literals such as [192.0.2.1] are allowed.",
    )
    check.add_argument(
        "--relay-domain",
        action="append",
        default=[],
        metavar="DOMAIN",
        help="a domain this server relays for, e.g. as backup MX "
        "(matches its subdomains too; repeat for more)",
    )
    check.add_argument(
        "--trusted-network",
        action="append",
        default=[],
        metavar="CIDR",
        help="a client network allowed to relay anywhere (repeat for more)",
    )
    check.add_argument(
        "--client-address", required=True, metavar="IP", help="the SMTP client's IP address"
    )
    check.add_argument(
        "--recipient",
        required=True,
        metavar="ADDRESS",
        help="the RCPT TO address, as sent (quotes kept) or in Postfix's unquoted form",
    )
    check.add_argument(
        "--sender", default="", metavar="ADDRESS", help="the MAIL FROM address (default: <>)"
    )
    check.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _check_policy(args: argparse.Namespace) -> Policy:
    if not args.local_domain and not args.relay_domain:
        raise UsageError("give at least one --local-domain (or --relay-domain)")
    try:
        local = LocalDomainOnly(args.local_domain, relay_domains=args.relay_domain)
    except DomainError as exc:
        raise UsageError(str(exc)) from None
    try:
        trusted = TrustedNetworks(args.trusted_network)
    except ValueError as exc:
        raise UsageError(f"--trusted-network: {exc}") from None
    return FirstMatch(trusted, local)


def _print_decision(decision: Decision, request: Request, as_json: bool) -> None:
    if as_json:
        payload = decision.as_dict()
        payload["recipient"] = request.recipient
        payload["client_address"] = request.client_address
        print(json.dumps(payload, ensure_ascii=False))
        return
    reply = str(decision) or "(no reply: no policy had an opinion)"
    print(reply)
    print(f"verdict: {decision.verdict.name}  policy: {decision.policy}  reason: {decision.reason}")


def _run_check(args: argparse.Namespace) -> int:
    policy = _check_policy(args)
    try:
        request = Request(
            client_address=args.client_address, recipient=args.recipient, sender=args.sender
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    decision = policy.check(request)
    _print_decision(decision, request, args.json)
    return EXIT_BY_VERDICT[decision.verdict]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EX_USAGE
    try:
        if args.command == "check":
            return _run_check(args)
    except UsageError as exc:
        print(f"relaypolicy {args.command}: error: {exc}", file=sys.stderr)
        return EX_USAGE
    parser.error(f"unknown command {args.command!r}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
