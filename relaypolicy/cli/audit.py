"""``relaypolicy audit``: the relay-abuse battery against a configuration or a live server.

``--config FILE`` runs it in process; ``--smtp HOST[:PORT]`` over SMTP (never DATA).
Exit status: 0 no probe was accepted, 1 one was, 64 a usage error, 66 a ``--config`` that
cannot be read, 69 (EX_UNAVAILABLE) a server that cannot be audited, 78 a ``--config``
that cannot be used.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
from typing import Any

from relaypolicy.cli._common import EX_UNAVAILABLE, EX_USAGE, client_tls, error, file_status
from relaypolicy.config import Config, ConfigError, load_config
from relaypolicy.networks import NetworkSet
from relaypolicy.testing.audit import (
    AuditError,
    audit_policy,
    audit_smtp,
    audit_table,
    junit_cases,
    looks_trusted,
    summary,
)
from relaypolicy.testing.probes import DEFAULT_FOREIGN_DOMAIN, probe_battery
from relaypolicy.testing.report import write_junit

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``audit`` to a ``add_subparsers()`` object; the new parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "audit",
        help="check that a policy or a live server is not an open relay",
        description="Run the relay-abuse battery (nmap's 16 probes, routing tricks, "
        "address literals, look-alike domains, the null sender...) against the policy of a "
        "configuration, in process, or over SMTP against a live server: EHLO (after the "
        "TLS handshake with --tls, for an implicit-TLS port such as 465), optional STARTTLS, "
        "then per probe RSET, MAIL FROM, RCPT TO; never DATA. Prints every probe "
        "with its reply and a summary. Exit status 0 when no probe was accepted, 1 when one "
        "was, 64 for a usage error, 66 for a --config that cannot be read, 69 when the "
        "server cannot be audited, 78 for a --config that cannot be used. Audit only servers "
        "you run.",
        epilog="examples: relaypolicy audit --config examples/mx.toml; relaypolicy audit "
        "--smtp mx.example.org --local-domain example.org --source-address 198.51.100.7; "
        "relaypolicy audit --smtp mx.example.org:465 --tls --local-domain example.org",
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--config", metavar="FILE", help="audit this configuration's policy")
    target.add_argument("--smtp", metavar="HOST[:PORT]", help="audit a live server (port 25)")
    parser.add_argument(
        "--local-domain",
        action="append",
        default=[],
        metavar="DOMAIN",
        help="a domain the server delivers for (repeat for more; with --config the default "
        "is every local domain of the file; required with --smtp)",
    )
    parser.add_argument(
        "--relay-domain",
        action="append",
        default=[],
        metavar="DOMAIN",
        help="a domain the server relays for, for routing probes through it (with --config "
        "the default is the file's relay domains)",
    )
    parser.add_argument(
        "--foreign-domain",
        default=None,
        metavar="DOMAIN",
        help="the destination that must not be relayed to (default: nmap.scanme.org, as nmap)",
    )
    parser.add_argument(
        "--server-ip",
        metavar="IP",
        help="the server's own address, for nmap's [IP] probes (default: the --smtp host's "
        "address; with --config an address literal among the local domains, else 127.0.0.1)",
    )
    inproc = parser.add_argument_group("with --config")
    inproc.add_argument(
        "--client-address",
        default="203.0.113.7",
        metavar="IP",
        help="the client the probes come from (default 203.0.113.7, a stranger)",
    )
    inproc.add_argument(
        "--server-port",
        type=int,
        action="append",
        default=[],
        metavar="PORT",
        help="the port the client connects to (repeat for more; default: every port with "
        "its own chain, and the default chain)",
    )
    live = parser.add_argument_group("with --smtp")
    live.add_argument(
        "--source-address",
        metavar="IP",
        help="connect from this local address, e.g. one the server does not trust",
    )
    live.add_argument("--helo", metavar="NAME", help="the EHLO name (default: this host's)")
    encryption = live.add_mutually_exclusive_group()
    encryption.add_argument(
        "--starttls", action="store_true", help="upgrade with STARTTLS first (port 25, 587)"
    )
    encryption.add_argument(
        "--tls",
        action="store_true",
        help="implicit TLS: the TLS handshake before the greeting (port 465, submissions)",
    )
    live.add_argument(
        "--cafile", metavar="FILE", help="verify the certificate with this CA (--starttls, --tls)"
    )
    live.add_argument(
        "--insecure", action="store_true", help="do not verify the server's certificate"
    )
    live.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS", help="per reply (default 30)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--junit-xml", metavar="FILE", help="also write JUnit XML for CI")
    return parser


def _host_port(text: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[IPv6]`` or ``[IPv6]:PORT``; a bare IPv6 address too."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else (rest or "25")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, "25"
    if not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--smtp: expected HOST[:PORT] or [IPv6]:PORT, got {text!r}")
    return host, int(port)


def _address_of(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return str(socket.getaddrinfo(host, 25, type=socket.SOCK_STREAM)[0][4][0])
    except OSError as exc:
        raise ValueError(f"--smtp: cannot resolve {host!r}: {exc}") from None


def _config_hint(config: Config, client: str) -> str:
    """What to say when the probes' client is one the configuration trusts outright."""
    chains = [config.chain, *config.ports.values()]
    if not any("trusted_networks" in steps for steps in chains):
        return ""
    if client not in NetworkSet(config.trusted_networks):
        return ""
    return (
        f"client {client} is in the configuration's trusted networks (networks.trusted: "
        f"{', '.join(config.trusted_networks)}), which may relay anywhere by design; audit "
        "with a --client-address outside them (the default, 203.0.113.7, is a stranger)"
    )


def _smtp_hint(results: list[Any], source: str | None) -> str:
    """What to say when the server relays everything for the address the audit came from."""
    if not looks_trusted(results):
        return ""
    untrusted = "127.0.0.11" if source == "127.0.0.10" else "127.0.0.10"
    who = f"the source address {source}" if source else "this host's address"
    return (
        f"the plainly foreign recipients were accepted too: the server may trust {who} by "
        "its own configuration (Postfix mynetworks, relaypolicy networks.trusted) rather "
        "than relay for everyone; audit again from an address it does not trust, e.g. "
        f"--source-address {untrusted} (a loopback address, for a server on this host)"
    )


def _audit_config(args: argparse.Namespace) -> tuple[str, list[Any], str]:
    """In process: (a description of the target, the results, a hint for the summary)."""

    for flag in ("source_address", "helo", "cafile"):
        if getattr(args, flag):
            raise ValueError(f"--{flag.replace('_', '-')} goes with --smtp")
    if args.starttls or args.tls or args.insecure:
        raise ValueError("--starttls, --tls and --insecure go with --smtp")
    config = load_config(args.config)
    local = args.local_domain or list(config.local_domains)
    relays = args.relay_domain or list(config.relay_domains)
    if not local:
        if not relays:
            raise ValueError(f"{config.source}: no local or relay domain to audit")
        local = relays[:1]
    literals = [domain for domain in local if domain.startswith("[")]
    server_ip = args.server_ip or (literals[0] if literals else "127.0.0.1")
    probes = probe_battery(
        local,
        relay_domains=relays,
        foreign_domain=args.foreign_domain or DEFAULT_FOREIGN_DOMAIN,
        server_ip=server_ip,
    )
    policy = config.build_policy(config.make_pop_table(load=False))
    ports = args.server_port or [0, *sorted(config.ports)]
    results = []
    for port in ports:
        got = audit_policy(policy, probes, client_address=args.client_address, server_port=port)
        if len(ports) > 1:
            label = f"port {port}" if port else "default chain"
            got = [r._replace(probe=r.probe._replace(name=f"{label}:{r.probe.name}")) for r in got]
        results += got
    target = f"the policy of {config.source}, from client {args.client_address}"
    hint = _config_hint(config, args.client_address) if any(r.accepted for r in results) else ""
    return target, results, hint


def _audit_smtp(args: argparse.Namespace) -> tuple[str, list[Any], str]:

    if args.server_port or args.client_address != "203.0.113.7":
        raise ValueError("--client-address and --server-port go with --config")
    if not args.local_domain:
        raise ValueError("--smtp needs --local-domain (a domain the server delivers for)")
    host, port = _host_port(args.smtp)
    tls, context = client_tls(args)
    probes = probe_battery(
        args.local_domain,
        relay_domains=args.relay_domain,
        foreign_domain=args.foreign_domain or DEFAULT_FOREIGN_DOMAIN,
        server_ip=args.server_ip or _address_of(host),
    )
    results = audit_smtp(
        host,
        port,
        probes,
        source_address=args.source_address,
        helo=args.helo,
        tls=tls,
        tls_context=context,
        timeout=args.timeout,
    )
    source = f", from {args.source_address}" if args.source_address else ""
    how = {"none": "", "starttls": " with STARTTLS", "implicit": " over implicit TLS"}[tls]
    hint = _smtp_hint(results, args.source_address)
    return f"SMTP server {host}:{port}{how}{source}", results, hint


def run(args: argparse.Namespace) -> int:

    try:
        target, results, hint = _audit_smtp(args) if args.smtp else _audit_config(args)
    except AuditError as exc:
        return error("audit", str(exc), EX_UNAVAILABLE)
    except ConfigError as exc:
        return error("audit", str(exc), file_status(args.config))
    except (OSError, ValueError) as exc:
        return error("audit", str(exc), EX_USAGE)
    accepted = sum(result.accepted for result in results)
    if args.json:
        print(
            json.dumps(
                {
                    "target": target,
                    "open_relay": bool(accepted),
                    "accepted": accepted,
                    "total": len(results),
                    "summary": summary(results, hint),
                    "probes": [result.as_dict() for result in results],
                },
                ensure_ascii=False,
                indent=2,
            )
        )
    else:
        print(f"relay audit of {target}")
        print(audit_table(results))
        print(summary(results, hint))
    if args.junit_xml:
        try:
            write_junit(
                args.junit_xml, f"relaypolicy audit: {target}", junit_cases(results, "audit")
            )
        except OSError as exc:
            return error("audit", f"--junit-xml: {exc}", EX_USAGE)
    return 1 if accepted else 0
