"""``relaypolicy postfix import`` and ``relaypolicy postfix compare``: move from Postfix.

``import`` reads Postfix's effective settings (``postconf`` run here on a configuration
directory, or its saved output) and prints the relaypolicy configuration that makes the
same relay decisions, listing on stderr and in the file what it could not translate.
``compare`` asks a live Postfix and a relaypolicy configuration the same questions and
prints every difference. Running ``postconf`` is this module's business; the translation
(:mod:`relaypolicy.postfix.importer`) and the comparison (:mod:`relaypolicy.testing.compare`)
are not.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from relaypolicy.cli._common import (
    EX_CONFIG,
    EX_NOINPUT,
    EX_UNAVAILABLE,
    EX_USAGE,
    client_tls,
    error,
    file_status,
)
from relaypolicy.config import ConfigError, load_config
from relaypolicy.postfix.importer import translate
from relaypolicy.postfix.postconf import parse_postconf
from relaypolicy.testing.audit import AuditError
from relaypolicy.testing.compare import Login, compare, compare_table, parse_host_port, summary

__all__ = ["add_parser", "postconf_output", "run"]

POSTCONF_TIMEOUT = 60.0


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``postfix`` (with ``import`` and ``compare``) to the subcommands."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "postfix",
        help="import a Postfix relay configuration; compare one with a live Postfix",
        description="Tools for moving a Postfix's relay rules into relaypolicy.",
    )
    actions = parser.add_subparsers(dest="postfix_command", metavar="ACTION")
    imp = actions.add_parser(
        "import",
        help="print the relaypolicy configuration making Postfix's relay decisions",
        description="Read Postfix's effective settings -- by running postconf -c DIR "
        "(--config-directory, the default /etc/postfix) or from saved postconf output "
        "(--postconf-output FILE: postconf -nx, -x NAME..., -M and -Px output, mixed) -- and "
        "print a relaypolicy TOML configuration with the same relay decisions: mydestination "
        "and relay_domains, mynetworks, the restriction lists and the master.cf -o overrides "
        "of the submission ports. Every setting that cannot be translated exactly is listed "
        "with the reason, in the file and on stderr. Exit status 0 when everything was "
        "translated, 1 when something was not (0 with --allow-partial), 64 for a usage error, "
        "66 for an input that cannot be read, 69 when postconf cannot be run, 78 for output "
        "that is not postconf's.",
        epilog="example: relaypolicy postfix import --config-directory /etc/postfix > "
        "relaypolicy.toml",
    )
    source = imp.add_mutually_exclusive_group()
    source.add_argument(
        "--config-directory",
        metavar="DIR",
        help="run postconf -c DIR here (default /etc/postfix): Postfix expands $names, "
        "defaults and mynetworks_style itself",
    )
    source.add_argument(
        "--postconf-output",
        metavar="FILE",
        help="read saved postconf output instead ('-' for stdin), e.g. "
        "(postconf -nx; postconf -x mynetworks mydestination; postconf -M; postconf -Px)",
    )
    imp.add_argument(
        "--allow-partial",
        action="store_true",
        help="exit 0 even when some settings could not be translated (they are still listed)",
    )
    cmp = actions.add_parser(
        "compare",
        help="ask a live Postfix and a configuration the same questions; print differences",
        description="Send the relay probe battery and a recipient corpus (routing tricks, "
        "literals, IDN, relay domains and their subdomains, postmaster, syntax edge cases) "
        "to a live Postfix, stopping at RCPT TO as audit does, and ask the configuration "
        "the same questions in process with the same client facts. Prints every difference, "
        "classified: relaypolicy stricter, relaypolicy looser, or a different reply code. "
        "Exit status 0 when relaypolicy is nowhere looser, 1 when it is, 64 for a usage "
        "error, 66 for a --config that cannot be read, 69 when the server cannot be asked, "
        "78 for a --config that cannot be used. Ask only servers you run.",
        epilog="examples: relaypolicy postfix compare --config relaypolicy.toml --smtp "
        "127.0.0.1:25 --source-address 127.0.0.10 --trusted-source 127.0.0.1; relaypolicy "
        "postfix compare --config relaypolicy.toml --smtp 127.0.0.1:465 --tls --source-address "
        "127.0.0.10",
    )
    cmp.add_argument("--config", required=True, metavar="FILE", help="the configuration")
    cmp.add_argument("--smtp", required=True, metavar="HOST:PORT", help="the live Postfix")
    cmp.add_argument(
        "--source-address",
        required=True,
        metavar="ADDR",
        help="connect from this local address (one Postfix does not trust)",
    )
    cmp.add_argument(
        "--trusted-source",
        metavar="ADDR",
        help="also ask everything from this address (one in mynetworks)",
    )
    cmp.add_argument(
        "--server-port",
        type=int,
        metavar="PORT",
        help="the server port relaypolicy is told (default: the --smtp port)",
    )
    cmp.add_argument("--helo", default="client.relaypolicy.test", metavar="NAME")
    encryption = cmp.add_mutually_exclusive_group()
    encryption.add_argument(
        "--starttls", action="store_true", help="upgrade with STARTTLS first (port 587)"
    )
    encryption.add_argument(
        "--tls",
        action="store_true",
        help="implicit TLS: the TLS handshake before the greeting (port 465, submissions); "
        "relaypolicy is asked with the session encrypted, as with --starttls",
    )
    cmp.add_argument(
        "--cafile", metavar="FILE", help="verify the certificate with this CA (--starttls, --tls)"
    )
    cmp.add_argument(
        "--insecure", action="store_true", help="do not verify the server's certificate"
    )
    cmp.add_argument(
        "--login",
        metavar="USER",
        help="log in with SMTP AUTH as USER (the password is read from --password-file)",
    )
    cmp.add_argument("--password-file", metavar="FILE", help="the password for --login")
    cmp.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS", help="per reply (default 30)"
    )
    cmp.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def postconf_output(directory: str) -> str:
    """What ``postconf -c DIR`` prints: every parameter expanded (``-x``), the services
    (``-M``) and their overrides, expanded (``-Px``). Raises :class:`OSError` when
    postconf cannot be run or fails."""
    postconf = shutil.which("postconf") or next(
        (p for p in ("/usr/sbin/postconf", "/usr/local/sbin/postconf") if os.access(p, os.X_OK)),
        None,
    )
    if postconf is None:
        raise FileNotFoundError("postconf is not installed here: use --postconf-output")
    parts = []
    for flags in (["-x"], ["-M"], ["-P", "-x"]):
        done = subprocess.run(
            [postconf, "-c", directory, *flags],
            capture_output=True,
            text=True,
            timeout=POSTCONF_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise OSError(f"postconf -c {directory} {' '.join(flags)}: {done.stderr.strip()}")
        parts.append(done.stdout)
    return "\n".join(parts)


def _read(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def _import(args: argparse.Namespace) -> int:
    if args.postconf_output:
        source = args.postconf_output
        try:
            text = sys.stdin.read() if source == "-" else _read(source)
        except (OSError, UnicodeDecodeError) as exc:
            return error("postfix import", f"{source}: {exc}", EX_NOINPUT)
        what = f"postconf output {source}"
    else:
        directory = os.path.abspath(args.config_directory or "/etc/postfix")
        if not os.path.isfile(os.path.join(directory, "main.cf")):
            return error("postfix import", f"{directory}: no main.cf there", EX_NOINPUT)
        try:
            text = postconf_output(directory)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return error("postfix import", str(exc), EX_UNAVAILABLE)
        what = f"postconf -c {directory}"
    try:
        result = translate(parse_postconf(text, source=what), source=what, read_file=_read)
    except ConfigError as exc:
        return error("postfix import", str(exc), EX_CONFIG)
    print(result.toml, end="")
    for refusal in result.refusals:
        print(f"relaypolicy postfix import: not translated: {refusal}", file=sys.stderr)
    if result.refusals and not args.allow_partial:
        count = len(result.refusals)
        print(
            f"relaypolicy postfix import: {count} setting(s) not translated; the "
            "configuration above does not do what they do (--allow-partial to accept it)",
            file=sys.stderr,
        )
        return 1
    return 0


def _compare(args: argparse.Namespace) -> int:
    try:
        host, port = parse_host_port(args.smtp)
        config = load_config(args.config)
    except ConfigError as exc:
        return error("postfix compare", str(exc), file_status(args.config))
    except ValueError as exc:
        return error("postfix compare", str(exc), EX_USAGE)
    clients = [args.source_address] + ([args.trusted_source] if args.trusted_source else [])
    if bool(args.login) != bool(args.password_file):
        return error("postfix compare", "--login and --password-file go together", EX_USAGE)
    login = None
    if args.login:
        try:
            password = Path(args.password_file).read_text(encoding="utf-8").strip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            return error("postfix compare", f"--password-file: {exc}", EX_NOINPUT)
        login = Login(args.login, password)
    try:
        tls, context = client_tls(args)
        rows = compare(
            config,
            host,
            port,
            clients,
            server_port=args.server_port or port,
            helo=args.helo,
            tls=tls,
            tls_context=context,
            login=login,
            timeout=args.timeout,
        )
    except AuditError as exc:
        return error("postfix compare", str(exc), EX_UNAVAILABLE)
    except ValueError as exc:
        return error("postfix compare", str(exc), EX_USAGE)
    differences = [row for row in rows if row.kind != "same"]
    looser = sum(row.kind == "looser" for row in rows)
    if args.json:
        report = {
            "target": f"{host}:{port}",
            "config": config.source,
            "asked": len(rows),
            "looser": looser,
            "summary": summary(rows),
            "differences": [row.as_dict() for row in differences],
        }
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print(f"Postfix at {host}:{port} against {config.source}")
        if differences:
            print(compare_table(differences))
        print(summary(rows))
    return 1 if looser else 0


def run(args: argparse.Namespace) -> int:
    if args.postfix_command == "import":
        return _import(args)
    if args.postfix_command == "compare":
        return _compare(args)
    args.parser.error("postfix needs an action: import or compare")
    return EX_USAGE  # pragma: no cover (error() exits)
