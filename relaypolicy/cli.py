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
from relaypolicy.errors import UsageError
from relaypolicy.model import Decision, Request, Verdict
from relaypolicy.policies import FirstMatch, LocalDomainOnly, Policy, TrustedNetworks

__all__ = ["main"]

EX_USAGE = 64
EXIT_BY_VERDICT = {Verdict.ACCEPT: 0, Verdict.REJECT: 1, Verdict.DEFER: 2, Verdict.NEXT: 3}


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
        "the reason. With --config FILE the chain of that configuration decides instead. Exit "
        "status: 0 accept, 1 reject, 2 defer, 3 no decision (a chain whose otherwise is "
        "'next'), 64 usage error.",
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

    serve = commands.add_parser(
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

    config = commands.add_parser(
        "config", help="validate a configuration file", description="Configuration tools."
    )
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION")
    config_check = config_commands.add_parser(
        "check",
        help="validate FILE and print the effective chain in words",
        description="Validate FILE and print the effective chain in words. Exit status 0 "
        "when valid, 1 when not (the error names the key).",
    )
    config_check.add_argument("file", metavar="FILE")

    ctl = commands.add_parser(
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
    from relaypolicy.smtpd.command import add_passwd_parser, add_smtpd_parser

    add_smtpd_parser(commands)
    add_passwd_parser(commands)
    from relaypolicy.testing.command import add_audit_parser, add_test_parser

    add_test_parser(commands)
    add_audit_parser(commands)

    from relaypolicy.watch.command import add_watch_parser

    add_watch_parser(commands)
    return parser


def _check_policy(args: argparse.Namespace) -> Policy:
    if args.config:
        if args.local_domain or args.relay_domain or args.trusted_network:
            raise UsageError("give either --config or the domain/network options, not both")
        from relaypolicy.config import load_config
        from relaypolicy.fleet import ReplicaTable

        try:
            config = load_config(args.config)
            table = config.make_pop_table()
            if isinstance(table, ReplicaTable):  # a Redis state: load the shared table first
                table.start()
                if not table.wait_synced(10):
                    print("relaypolicy check: warning: Redis did not answer", file=sys.stderr)
            return config.build_policy(table)
        except (OSError, ValueError) as exc:
            raise UsageError(str(exc)) from None
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
    decision = policy.check(request)
    _print_decision(decision, request, args.json)
    return EXIT_BY_VERDICT[decision.verdict]


def _run_serve(args: argparse.Namespace) -> int:
    import asyncio

    from relaypolicy.postfix.service import Service, configure_logging

    async def serve() -> int:
        try:
            service = Service(args.config, listen=args.listen)
        except (OSError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        configure_logging(service.config.log.level, service.config.log.format)
        service.manages_logging = True  # a reload applies [log] changes
        try:
            return await service.run()
        except OSError as exc:
            print(f"relaypolicy serve: cannot listen: {exc}", file=sys.stderr)
            return 71  # EX_OSERR

    return asyncio.run(serve())


def _run_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from relaypolicy.config import ConfigError, load_config

    if args.config_command != "check":
        parser.error("config needs an action: check FILE")
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 1
    print(config.describe())
    return 0


def _run_ctl(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.ctl_command is None:
        parser.error("ctl needs an action: table, add, remove, stats or reload")
    command = "add" if args.ctl_command == "record" else args.ctl_command
    message: dict[str, object] = {"command": command}
    if command in ("add", "remove"):
        message["address"] = args.address
    if command == "add":
        if args.ttl is not None:
            message["ttl"] = args.ttl
        if args.user is not None:
            message["user"] = args.user
    from relaypolicy.control import ask

    try:
        reply = ask(args.socket, message)
    except OSError as exc:
        raise UsageError(f"cannot talk to {args.socket}: {exc}") from None
    print(json.dumps(reply, indent=2, ensure_ascii=False))
    return 0 if reply.get("ok") else 1


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
        if args.command == "serve":
            return _run_serve(args)
        if args.command == "config":
            return _run_config(args, parser)
        if args.command == "ctl":
            return _run_ctl(args, parser)
        if args.command == "smtpd":
            from relaypolicy.smtpd.command import run_smtpd

            return run_smtpd(args)
        if args.command == "passwd":
            from relaypolicy.smtpd.command import run_passwd

            return run_passwd(args)
        if args.command == "test":
            from relaypolicy.testing.command import run_test

            return run_test(args)
        if args.command == "audit":
            from relaypolicy.testing.command import run_audit

            return run_audit(args)
        if args.command == "watch":
            from relaypolicy.watch.command import run_watch

            return run_watch(args)
    except UsageError as exc:
        print(f"relaypolicy {args.command}: error: {exc}", file=sys.stderr)
        return EX_USAGE
    parser.error(f"unknown command {args.command!r}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
