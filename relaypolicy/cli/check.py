"""``relaypolicy check``: decide one recipient from the command line.

Exit status follows the decision so a shell script can branch on it: 0 ACCEPT, 1 REJECT,
2 DEFER, 3 NEXT (only possible for a chain whose default passes), 64 (EX_USAGE) for a
command line that cannot be understood, 66 (EX_NOINPUT) for a ``--config`` that cannot be
read and 78 (EX_CONFIG) for one that cannot be used.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from relaypolicy.cli._common import EX_USAGE, error, file_status
from relaypolicy.config import load_config
from relaypolicy.errors import DomainError, UsageError
from relaypolicy.model import Decision, Request, Verdict
from relaypolicy.policies import FirstMatch, LocalDomainOnly, Policy, TrustedNetworks

__all__ = ["EXIT_BY_VERDICT", "add_parser", "run"]

EXIT_BY_VERDICT = {Verdict.ACCEPT: 0, Verdict.REJECT: 1, Verdict.DEFER: 2, Verdict.NEXT: 3}


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``check`` to the subcommands; the new parser."""
    check: argparse.ArgumentParser = commands.add_parser(
        "check",
        help="decide one recipient with TrustedNetworks -> LocalDomainOnly",
        description="Decide one recipient the way `FirstMatch(TrustedNetworks(...), "
        "LocalDomainOnly(...))` does and print the SMTP reply, the deciding policy and "
        "the reason. With --config FILE the chain of that configuration decides instead. Exit "
        "status: 0 accept, 1 reject, 2 defer, 3 no decision (a chain whose otherwise is "
        "'next'), 64 usage error, 66 no such --config, 78 a --config that cannot be used.",
        epilog="example: relaypolicy check --local-domain example.org "
        "--trusted-network 192.0.2.0/24 --client-address 203.0.113.7 "
        "--recipient 'user%other.example@example.org'",
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
    check.add_argument(
        "--config",
        metavar="FILE",
        help="decide with the chain of this TOML file instead of the options above",
    )
    for flag, help_text in (
        ("--sasl-username", "the SMTP AUTH login, when the client authenticated"),
        ("--server-port", "the port the client connected to (chooses a per-port chain)"),
        ("--encryption-protocol", "the TLS protocol in use, e.g. TLSv1.3 (empty: no TLS)"),
        ("--ccert-fingerprint", "the client certificate's SHA-256 fingerprint"),
    ):
        check.add_argument(flag, default="", help=help_text)
    check.add_argument("--json", action="store_true", help="print one JSON object")

    return check


class _UnusableConfig(Exception):
    """A ``--config`` that cannot be read (66) or used (78): ``status`` says which."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _check_policy(args: argparse.Namespace) -> Policy:
    if args.config:
        if args.local_domain or args.relay_domain or args.trusted_network:
            raise UsageError("give either --config or the domain/network options, not both")
        try:
            config = load_config(args.config)
            table = config.make_pop_table()
            if table is not None:  # a shared table loads its content from Redis first
                table.start()
                if not table.wait_ready(10):
                    print("relaypolicy check: warning: Redis did not answer", file=sys.stderr)
            return config.build_policy(table)
        except (OSError, ValueError) as exc:
            raise _UnusableConfig(str(exc), file_status(args.config)) from None
    if not args.local_domain and not args.relay_domain:
        raise UsageError("give at least one --local-domain (or --relay-domain)")
    try:
        local = LocalDomainOnly(
            args.local_domain, relay_domains=args.relay_domain, name="local_domains"
        )
    except DomainError as exc:
        raise UsageError(str(exc)) from None
    try:
        trusted = TrustedNetworks(args.trusted_network, name="trusted_networks")
    except ValueError as exc:
        raise UsageError(f"--trusted-network: {exc}") from None
    # The options describe the chain ["trusted_networks", "local_domains"] of a file, and
    # its decisions carry the same names as that file's would.
    return FirstMatch(trusted, local, name="chain")


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


def _request(args: argparse.Namespace) -> Request:
    try:
        return Request(
            client_address=args.client_address,
            recipient=args.recipient,
            sender=args.sender,
            sasl_username=args.sasl_username,
            server_port=args.server_port or 0,
            encryption_protocol=args.encryption_protocol,
            ccert_fingerprint=args.ccert_fingerprint,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    """Decide; the exit status of the verdict."""
    try:
        policy = _check_policy(args)
        request = _request(args)
    except UsageError as exc:
        return error("check", str(exc), EX_USAGE)
    except _UnusableConfig as exc:
        return error("check", str(exc), exc.status)
    decision = policy.check(request)
    _print_decision(decision, request, args.json)
    return EXIT_BY_VERDICT[decision.verdict]
