"""`relaypolicy exim` over loopback beside `relaypolicy serve`, same load, same run; and
what the ``${readsocket}`` round trip costs a real Exim per RCPT.

Part 1, decisions per second. Starts ``python -m relaypolicy serve`` and
``python -m relaypolicy exim`` with the same policy (the configuration of
``bench_serve.py``: trusted 127.0.0.0/8 and 192.0.2.0/24, local domain example.org, relay
domain example.net, chain ``trusted_networks, sasl_permit, local_domains``; log level
``info``, one line per decision to a file, as in production). The requests are
``bench_serve.py``'s workload (its RCPT-state requests): Postfix gets them as its 31
attributes, Exim's socket as the line the ACL of ``contrib/exim/relaypolicy-rcpt.acl``
sends (12 base64 fields). One generator, this process, holds 1 and 8 clients, one request
in flight on each:

- ``serve``: persistent connections, as Postfix's policy client keeps them;
- ``exim (readsocket)``: a new connection per request -- connect, write the line,
  half-close, read to the end -- which is what Exim's ``${readsocket}`` does;
- ``exim (persistent)``: one line after another on persistent connections (the protocol
  allows it; Exim does not do it), to separate the protocol's cost from the connections'.

Every answer is checked against the verdict the request must get (accept, or deny 554).

Part 2, the cost per RCPT (needs root and the Exim of ``.ci/install-mtas``): one
``exim -bh 127.0.0.10`` session sends N RCPTs (local recipients: every answer is
``accept``) with the RCPT ACL of ``contrib/exim/relaypolicy-rcpt.acl`` and again with an
ACL that only accepts; the difference divided by N is what asking relaypolicy costs each
RCPT (the ACL's expansions, a TCP connection, relaypolicy's decision). The best of
``--repeat`` sessions each way is used.

    python benchmarks/bench_exim.py [--duration S] [--connections 1,8] [--rcpts N]
                                    [--repeat K] [--plot FILE.png]

Exit status: 0; 1 when an answer is wrong.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from loadgen import (
    Client,
    Run,
    Server,
    add_load_arguments,
    connection_counts,
    free_port,
    log_note,
    plot_runs,
    print_table,
    report_noise,
    run_load,
    start_relaypolicy,
)
from workload import RELAYPOLICY_CONFIG, make_workload, policy_client, start_serve

ROOT = Path(__file__).resolve().parent.parent
ACL_FILE = ROOT / "contrib" / "exim" / "relaypolicy-rcpt.acl"
EXIM = Path(os.environ.get("RELAYPOLICY_MTA_ROOT") or "/opt/relaypolicy-mta") / "usr/sbin/exim4"

# The Request fields the ACL sends, from the Postfix attribute of the same name.
EXIM_FIELDS = (
    "client_address",
    "client_port",
    "helo_name",
    "sasl_method",
    "sasl_username",
    "encryption_protocol",
    "encryption_cipher",
    "ccert_subject",
    "server_address",
    "server_port",
    "sender",
)


def exim_line(request: bytes) -> bytes:
    """The line the shipped ACL sends for this Postfix request's facts."""
    attributes = dict(line.partition("=")[::2] for line in request.decode().split("\n") if line)
    words = [b"v1"]
    for name in EXIM_FIELDS:
        words.append(f"{name}=".encode() + base64.b64encode(attributes[name].encode()))
    rcpt = f"<{attributes['recipient']}>"
    words.append(b"rcpt=" + base64.b64encode(rcpt.encode()))
    return b" ".join(words) + b"\n"


def exim_client(lines: list[bytes], accepts: list[bool], *, persistent: bool) -> Client:
    """The load run's client for Exim's socket: with ``persistent``, lines on kept
    connections, else one connection per request (readsocket's way); each answer checked
    (``accept``, or ``deny 554 ...``)."""

    def judge(i: int, answer: bytes) -> str:
        if accepts[i]:
            return "OK" if answer == b"accept\n" else "wrong"
        return "REJECT" if answer.startswith(b"deny 554 ") else "wrong"

    return Client(
        lines,
        judge,
        expected=lambda i: "accept" if accepts[i] else "deny 554",
        complete=lambda answer: answer[-1:] == b"\n",
        per_request=not persistent,
    )


def start_relaypolicy_exim(tmp: Path) -> Server:
    port = free_port()
    text = RELAYPOLICY_CONFIG.format(port=free_port(), level="info")
    text += f'\n[exim]\nlisten = ["127.0.0.1:{port}"]\n'
    return start_relaypolicy(
        tmp, "exim", "relaypolicy-exim", text, port=port, label="relaypolicy exim",
        note=log_note("info"),
    )  # fmt: skip


# --- part 2: the cost per RCPT in a real Exim ---------------------------------------------

_EXIM_CONFIG = """\
primary_hostname = mx.exim.test
exim_user = Debian-exim
exim_group = Debian-exim
spool_directory = {directory}/spool
log_file_path = {directory}/log/%slog
host_lookup =
rfc1413_hosts =
local_interfaces = 127.0.0.1
smtp_accept_max_nonmail_hosts =
recipients_max = 0
acl_smtp_rcpt = acl_check_rcpt
RELAYPOLICY_SOCKET = inet:127.0.0.1:{port}
RELAYPOLICY_TIMEOUT = 5s

begin acl

acl_check_rcpt:
{acl}
  deny    message = 550 no opinion

begin routers
begin transports
"""


@contextlib.contextmanager
def exim_configs(port: int) -> Iterator[tuple[Path, Path]]:
    """Two Exim configurations: the RCPT ACL with relaypolicy, and one that only accepts."""
    directory = Path(tempfile.mkdtemp(prefix="bench-exim-"))
    try:
        os.chmod(directory, 0o755)  # noqa: S103 - Exim's children run as Debian-exim
        for sub in ("spool", "log"):
            (directory / sub).mkdir()
            shutil.chown(directory / sub, "Debian-exim", "Debian-exim")
        shutil.copyfile(ACL_FILE, directory / "relaypolicy-rcpt.acl")
        with_acl = directory / "with-relaypolicy.conf"
        with_acl.write_text(
            _EXIM_CONFIG.format(
                directory=directory, port=port, acl=f".include {directory}/relaypolicy-rcpt.acl"
            )
        )
        without = directory / "accept-only.conf"
        without.write_text(_EXIM_CONFIG.format(directory=directory, port=port, acl="  accept"))
        for path in (with_acl, without, directory / "relaypolicy-rcpt.acl"):
            os.chmod(path, 0o644)
        yield with_acl, without
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def time_bh(config: Path, rcpts: int) -> float:
    """Seconds for one ``exim -bh 127.0.0.10`` session of ``rcpts`` RCPTs, each accepted."""
    script = "EHLO bench.test\r\nMAIL FROM:<bench@example.net>\r\n"
    script += "".join(f"RCPT TO:<user{i}@example.org>\r\n" for i in range(rcpts)) + "QUIT\r\n"
    started = time.perf_counter()
    done = subprocess.run(
        [str(EXIM), "-C", str(config), "-bh", "127.0.0.10"],
        input=script.encode(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        timeout=600,
        check=False,
    )
    seconds = time.perf_counter() - started
    accepted = done.stdout.count(b"\n250 Accepted")
    if accepted != rcpts:
        sys.exit(f"bench_exim: {config.name}: {accepted} of {rcpts} RCPTs accepted")
    return seconds


def rcpt_cost(port: int, rcpts: int, repeat: int) -> None:
    if os.geteuid() != 0 or not EXIM.exists():
        print(f"Part 2 skipped: needs root and {EXIM} (.ci/install-mtas)")
        return
    with exim_configs(port) as (with_acl, without):
        best_with = min(time_bh(with_acl, rcpts) for _ in range(repeat))
        best_without = min(time_bh(without, rcpts) for _ in range(repeat))
    per_rcpt_ms = (best_with - best_without) / rcpts * 1000
    print(f"Part 2: one exim -bh session, {rcpts} RCPTs, best of {repeat}:")
    print(f"  {'ACL':<34} {'seconds':>8} {'ms/RCPT':>8}")
    print(f"  {'accept only':<34} {best_without:8.3f} {best_without / rcpts * 1000:8.3f}")
    print(
        f"  {'readsocket to relaypolicy exim':<34} {best_with:8.3f} {best_with / rcpts * 1000:8.3f}"
    )
    print(f"  the round trip costs {per_rcpt_ms:.3f} ms per RCPT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_arguments(parser, connections="1,8")
    parser.add_argument("--rcpts", type=int, default=1000, help="RCPTs per exim -bh session")
    parser.add_argument("--repeat", type=int, default=3, help="exim -bh sessions each way")
    args = parser.parse_args()
    counts = connection_counts(parser, args)
    workload = make_workload(args.requests, args.seed).rcpt_only()  # Exim asks at RCPT only
    lines = [exim_line(request) for request in workload.requests]
    accepts = [verdict == "OK" for verdict in workload.verdicts]
    postfix_bytes = sum(map(len, workload.requests)) // len(workload.requests)
    exim_bytes = sum(map(len, lines)) // len(lines)
    print(
        f"{len(lines):,} RCPT requests; Postfix {postfix_bytes} bytes, Exim line "
        f"{exim_bytes} bytes on average; {sum(accepts):,} accept, "
        f"{len(lines) - sum(accepts):,} deny"
    )
    print(f"{os.cpu_count()} CPUs; {args.duration:g} s per row after {args.warmup:g} s warm-up\n")
    clients = {
        "serve (persistent)": policy_client(workload),
        "exim (readsocket)": exim_client(lines, accepts, persistent=False),
        "exim (persistent)": exim_client(lines, accepts, persistent=True),
    }
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-exim-") as tmp_name:
        tmp = Path(tmp_name)
        serve = start_serve(tmp, "info")
        exim = start_relaypolicy_exim(tmp)
        try:
            for connections in counts:
                for label, client in clients.items():
                    server = serve if label.startswith("serve") else exim
                    run = run_load(server, client, connections, args.duration, args.warmup)
                    run.server = label
                    runs.append(run)
            wrong = [run for run in runs if run.wrong]
            if wrong:
                sys.exit(f"bench_exim: wrong answers: {[r.wrong for r in wrong]}")
            print(
                "Part 1: decisions per second over loopback, log level info, every answer checked"
            )
            serve_rate = {r.connections: r.rate for r in runs if r.server.startswith("serve")}
            print_table(
                runs,
                first="front end",
                columns=[("x serve", 8, lambda r: f"{r.rate / serve_rate[r.connections]:.2f}")],
            )
            report_noise(runs)
            print()
            rcpt_cost(exim.port, args.rcpts, args.repeat)
        finally:
            exim.stop()
            serve.stop()
    if args.plot is not None:
        plot_runs(
            runs,
            args.plot,
            f"relaypolicy exim beside serve: {os.cpu_count()} CPUs, "
            f"{args.duration:g} s per point, log level info",
        )


if __name__ == "__main__":
    main()
