"""What every subcommand shares: exit statuses (sysexits.h), the parser, error lines.

One rule for every command (docs/api.md, "Exit status"):

- 64 ``EX_USAGE``: the command line cannot be understood (an unknown or missing option,
  options that exclude each other, a bad ``--listen``);
- 66 ``EX_NOINPUT``: a file the command was told to read does not exist or cannot be
  read (the configuration, a log, a scenario file);
- 69 ``EX_UNAVAILABLE``: a server or socket that cannot be reached;
- 71 ``EX_OSERR``: the system refused (a socket that cannot be bound);
- 78 ``EX_CONFIG``: a configuration or scenario file that was read but cannot be used
  (TOML syntax, with its line; an unknown key; a bad value).

Below 64 each command keeps its own meaning (``check``: the verdict; ``config check``,
``test``, ``audit``, ``passwd``: 0 for yes, 1 for no).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, NoReturn, Protocol

from relaypolicy.config import Config
from relaypolicy.daemon.logging import configure_logging
from relaypolicy.listeners import Listener

if TYPE_CHECKING:
    from relaypolicy.testing.audit import TlsMode

__all__ = [
    "EX_CONFIG",
    "EX_NOINPUT",
    "EX_OSERR",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "Parser",
    "add_service_arguments",
    "cannot_listen",
    "client_tls",
    "error",
    "file_status",
    "run_service",
]

EX_USAGE = 64  # a command line that cannot be understood
EX_NOINPUT = 66  # an input file that does not exist or cannot be read
EX_UNAVAILABLE = 69  # a server or socket that cannot be reached
EX_OSERR = 71  # the system refused (cannot listen)
EX_CONFIG = 78  # a configuration that was read but cannot be used


class Parser(argparse.ArgumentParser):
    """argparse with our usage error (exit 64) and no abbreviated options.

    An abbreviation (``serve --conf``) would start a server on a prefix that a later
    option could make ambiguous; every option is spelled out.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def error(command: str, message: str, status: int) -> int:
    """Print ``relaypolicy COMMAND: error: MESSAGE`` on stderr; ``status``."""
    print(f"relaypolicy {command}: error: {message}", file=sys.stderr)
    return status


def file_status(path: str | os.PathLike[str] | None) -> int:
    """The status for a file that could not be used: 66 when it is not there to be read
    (missing, a directory, no permission), else 78 (it was read, its content is wrong;
    or there is no file: ``None``)."""
    if path is None or (os.path.isfile(path) and os.access(path, os.R_OK)):
        return EX_CONFIG
    return EX_NOINPUT


def cannot_listen(exc: OSError, addresses: Iterable[str]) -> str:
    """The error line for a socket that could not be bound, naming where.

    The operating system's message for a unix socket in a missing directory is only
    ``[Errno 2] No such file or directory``; the addresses tried are added so the reader
    knows which path to create. A message that already says what failed (``cannot create
    the control socket PATH: ...``) is kept as it is.
    """
    text = str(exc)
    if text.startswith("cannot "):
        return text
    return f"cannot listen on {', '.join(addresses)}: {text}"


# --- the long-running front ends (serve, milter, exim) ----------------------------------


class _FrontEnd(Protocol):
    @property
    def listeners(self) -> Sequence[Listener]: ...


class _Service(Protocol):
    """What :func:`run_service` needs of a runtime (``daemon/serve.py`` and its siblings)."""

    manages_logging: bool

    @property
    def config(self) -> Config: ...

    @property
    def front_end(self) -> _FrontEnd: ...

    async def run(self) -> int: ...


def add_service_arguments(parser: argparse.ArgumentParser, section: str) -> None:
    """``--config FILE`` and ``--listen ADDRESS`` (instead of ``<section>.listen``)."""
    parser.add_argument("--config", required=True, metavar="FILE", help="the TOML configuration")
    parser.add_argument(
        "--listen",
        action="append",
        metavar="ADDRESS",
        help=f"listen here instead of {section}.listen (HOST:PORT, [::1]:PORT or "
        "unix:/path; repeat for more)",
    )


def run_service(
    command: str, make: Callable[[str, list[str] | None], _Service], args: argparse.Namespace
) -> int:
    """Build the service from ``args.config`` and ``args.listen`` and serve until SIGTERM
    or SIGINT: 0 (74 when the table could not be saved), or 66 for a configuration file
    that cannot be read, 78 for one that cannot be used, 64 for a bad ``--listen``, 71 when
    a socket cannot be bound (the message names it)."""

    async def serve() -> int:
        try:
            service = make(args.config, args.listen)
        except (OSError, ValueError) as exc:
            bad_listen = args.listen and str(exc).startswith("listener ")
            status = EX_USAGE if bad_listen else file_status(args.config)
            return error(command, str(exc), status)
        configure_logging(service.config.log)
        service.manages_logging = True  # a reload applies [log] changes
        try:
            return await service.run()
        except OSError as exc:
            where = [str(listener) for listener in service.front_end.listeners]
            return error(command, cannot_listen(exc, where), EX_OSERR)

    return asyncio.run(serve())


def client_tls(args: argparse.Namespace) -> tuple[TlsMode, ssl.SSLContext | None]:
    """The client TLS of ``--starttls`` or ``--tls`` (implicit TLS, RFC 8314 section 3),
    with ``--cafile`` and ``--insecure`` (``audit --smtp``, ``postfix compare``): the mode
    and its context, ``("none", None)`` without either. :class:`ValueError` for both modes
    at once, or ``--cafile``/``--insecure`` without a mode."""
    if args.starttls and args.tls:
        raise ValueError(
            "--starttls and --tls exclude each other: STARTTLS upgrades a "
            "plain session, --tls speaks TLS from the start (port 465)"
        )
    if not args.starttls and not args.tls:
        if args.cafile or args.insecure:
            raise ValueError("--cafile and --insecure go with --starttls or --tls")
        return "none", None
    context = ssl.create_default_context(cafile=args.cafile)
    if args.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return ("implicit" if args.tls else "starttls"), context
