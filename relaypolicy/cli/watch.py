"""``relaypolicy watch``: follow a POP3/IMAP log and feed the POP-before-SMTP table.

Where the logins go:

- with ``--control-socket PATH``: into the table of a running ``relaypolicy serve``
  (its ``serve.control_socket``), each with what remains of its time;
- otherwise into a table of this process, as the configuration describes it
  (``[pop_before_smtp]``: with ``persist``, journalled beside that snapshot, and each
  login durable before the log position moves past it), which is useful with
  exported maps (``[[watch.export]]`` or ``--export FORMAT:PATH``): the classic design,
  for an MTA that reads a map instead of asking a service.

``--scan`` reads the log once from its start, prints the logins it finds and records
nothing: the way to check a format against a real log before trusting it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import sys
from typing import Any

from relaypolicy.cli._common import (
    EX_CONFIG,
    EX_NOINPUT,
    EX_OSERR,
    EX_UNAVAILABLE,
    EX_USAGE,
    file_status,
)
from relaypolicy.config import ConfigError, LogSettings, load_config
from relaypolicy.daemon.control import ControlSocketTable
from relaypolicy.daemon.logging import configure_logging
from relaypolicy.daemon.table import TableHost
from relaypolicy.daemon.watch import watch_alone
from relaypolicy.iptable import ExpiringIpTable
from relaypolicy.watch.export import EXPORT_FORMATS
from relaypolicy.watch.parsers import PARSER_FORMATS
from relaypolicy.watch.runner import ExportSettings, LoginWatch, WatchSettings, parse_watch
from relaypolicy.watch.watcher import LoginTable

__all__ = ["add_parser", "run"]

log = logging.getLogger("relaypolicy.watch")


def add_parser(commands: Any) -> argparse.ArgumentParser:
    watch: argparse.ArgumentParser = commands.add_parser(
        "watch",
        help="follow a POP3/IMAP log and feed the POP-before-SMTP table",
        description=(
            "Follow a POP3/IMAP server's log (through rotation and restarts) and record "
            "each successful login in the POP-before-SMTP table: the table of a running "
            "'relaypolicy serve' (--control-socket), or one kept here and exported as a "
            "map for the MTA. Settings come from the configuration's [watch] table; the "
            "options below override them. SIGTERM/SIGINT stop it, saving its position."
        ),
        epilog=(
            "examples:\n"
            "  relaypolicy watch --log /var/log/dovecot.log --format dovecot --scan\n"
            "  relaypolicy watch --config /etc/relaypolicy/relaypolicy.toml "
            "--control-socket /run/relaypolicy/control.sock\n"
            "  relaypolicy watch --log /var/log/mail.log --format courier "
            "--export postfix:/etc/postfix/pop-before-smtp\n"
            "(see docs/watcher.md)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    watch.add_argument("--config", metavar="FILE", help="the TOML configuration")
    watch.add_argument("--log", metavar="FILE", help="the log to follow (watch.log)")
    watch.add_argument(
        "--format",
        metavar="FORMAT",
        help=f"the log's server: {', '.join(PARSER_FORMATS)} (watch.format)",
    )
    watch.add_argument(
        "--position",
        metavar="FILE",
        help="keep the read position here, to continue after a restart (watch.position)",
    )
    watch.add_argument(
        "--start-at-end",
        action="store_true",
        default=None,
        help="without a saved position, skip what the log already holds",
    )
    watch.add_argument(
        "--export",
        action="append",
        default=[],
        metavar="FORMAT:PATH",
        help=f"keep a map of the live addresses at PATH; FORMAT is one of "
        f"{', '.join(EXPORT_FORMATS)} (repeatable; adds to [[watch.export]])",
    )
    watch.add_argument(
        "--control-socket",
        metavar="PATH",
        help="record the logins in the table of the 'relaypolicy serve' listening here",
    )
    watch.add_argument(
        "--ttl",
        type=float,
        metavar="SECONDS",
        help="allowance per login without --config (default 1800)",
    )
    watch.add_argument(
        "--scan",
        action="store_true",
        help="read the log once, print the logins found, record nothing, exit",
    )
    return watch


def _settings(args: argparse.Namespace, section: WatchSettings | None) -> WatchSettings:
    table: dict[str, Any] = {}
    if section is not None:
        table = {
            "log": section.log,
            "format": section.format,
            "position": section.position,
            "start_at_end": section.start_at_end,
            "interval": section.interval,
        }
        if section.timezone:
            table["timezone"] = section.timezone
    for option, key in (("log", "log"), ("format", "format"), ("position", "position")):
        if getattr(args, option) is not None:
            table[key] = getattr(args, option)
    if args.start_at_end is not None:
        table["start_at_end"] = args.start_at_end
    for key in ("log", "format"):
        if key not in table:
            raise ConfigError(f"give --{key} (or a [watch] table in --config)")
    exports = list(section.exports) if section is not None else []
    for spec in args.export:
        format, colon, path = spec.partition(":")
        if not colon or not path:
            raise ConfigError(f"--export: expected FORMAT:PATH, got {spec!r}")
        exports.append(ExportSettings(path, format))
    table["export"] = [
        {
            key: value
            for key, value in (
                ("path", e.path),
                ("format", e.format),
                ("map_type", e.map_type),
                ("interval", e.interval),
                ("postmap_config", e.postmap_config),
            )
            if value is not None
        }
        for e in exports
    ]
    return parse_watch(table)


def _scan(settings: WatchSettings) -> int:
    parser = settings.parser()
    lines = logins = 0
    try:
        with open(settings.log, encoding="utf-8", errors="replace", newline="\n") as log_file:
            for line in log_file:
                lines += 1
                event = parser.parse(line)
                if event is None:
                    continue
                logins += 1
                when = datetime.datetime.fromtimestamp(event.time).astimezone()
                print(f"{when.isoformat(timespec='seconds')}  {event.address}  {event.user}")
    except OSError as exc:
        print(f"relaypolicy watch: cannot read {settings.log}: {exc.strerror}", file=sys.stderr)
        return EX_NOINPUT
    malformed = getattr(parser, "malformed", 0)
    print(f"{lines} lines, {logins} logins, {malformed} refused as malformed", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    config = None
    try:
        if args.config:
            config = load_config(args.config)
    except ConfigError as exc:  # 66 no such file, 78 a file that cannot be used
        print(f"relaypolicy watch: error: {exc}", file=sys.stderr)
        return file_status(args.config)
    try:
        settings = _settings(args, config.watch if config is not None else None)
    except ConfigError as exc:
        print(f"relaypolicy watch: error: {exc}", file=sys.stderr)
        return EX_USAGE
    if args.scan:
        return _scan(settings)
    if args.ttl is not None and (config is not None or not 0 < args.ttl <= 7 * 86400):
        print(
            "relaypolicy watch: error: --ttl is 1 to 604800 seconds, and only without "
            "--config (use pop_before_smtp.ttl)",
            file=sys.stderr,
        )
        return EX_USAGE
    if config is not None:
        configure_logging(config.log)
    else:
        configure_logging(LogSettings())

    table: LoginTable
    host = TableHost(None)  # a service's table is its own business
    if args.control_socket:
        try:
            table = ControlSocketTable(args.control_socket)
        except (OSError, ValueError) as exc:
            print(f"relaypolicy watch: cannot use {args.control_socket}: {exc}", file=sys.stderr)
            return EX_UNAVAILABLE
    elif config is not None:
        try:  # a replica is started and stopped by the host; persist is journalled
            managed = config.make_pop_table(durable=True)
        except (OSError, ValueError) as exc:  # TableFileError is a ValueError
            print(f"relaypolicy watch: error: {exc}", file=sys.stderr)
            return EX_CONFIG  # the configured persist cannot be used
        if managed is None:
            print("relaypolicy watch: error: no [pop_before_smtp] table", file=sys.stderr)
            return EX_USAGE
        host = TableHost(managed)
        table = managed
    else:
        table = local = ExpiringIpTable(args.ttl or 1800.0)
        host = TableHost(local)
    watch = LoginWatch(settings, table)
    try:
        asyncio.run(watch_alone(watch, host, metrics=config.metrics if config else None))
    except OSError as exc:  # e.g. metrics.listen cannot be bound (the message says so)
        print(f"relaypolicy watch: error: {exc}", file=sys.stderr)
        return EX_OSERR
    counters = ", ".join(f"{key} {value}" for key, value in watch.counters().items())
    log.info("watch: stopped (%s)", counters)
    return host.exit_status
