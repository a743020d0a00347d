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

Exit status: 0; 1 when an answer is wrong.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import (
    RELAYPOLICY_CONFIG,
    Run,
    Server,
    cpu_seconds,
    free_port,
    make_workload,
    run_load,
    start_relaypolicy,
    system_busy_seconds,
    wait_for_port,
)

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


@dataclass
class EximWorkload:
    """The RCPT requests of bench_serve's workload, in both encodings, with verdicts."""

    postfix: list[bytes] = field(default_factory=list)
    postfix_answers: list[bytes] = field(default_factory=list)
    postfix_verdicts: list[str] = field(default_factory=list)
    exim: list[bytes] = field(default_factory=list)
    accepts: list[bool] = field(default_factory=list)


def make_exim_workload(count: int, seed: int) -> EximWorkload:
    workload = make_workload(count, seed)
    out = EximWorkload()
    for request, answer, verdict in zip(
        workload.requests, workload.answers, workload.verdicts, strict=True
    ):
        if verdict == "DUNNO":  # another protocol state: Exim asks at RCPT only
            continue
        attributes = dict(line.partition("=")[::2] for line in request.decode().split("\n") if line)
        words = [b"v1"]
        for name in EXIM_FIELDS:
            words.append(f"{name}=".encode() + base64.b64encode(attributes[name].encode()))
        rcpt = f"<{attributes['recipient']}>"
        words.append(b"rcpt=" + base64.b64encode(rcpt.encode()))
        out.postfix.append(request)
        out.postfix_answers.append(answer)
        out.postfix_verdicts.append(verdict)
        out.exim.append(b" ".join(words) + b"\n")
        out.accepts.append(verdict == "OK")
    return out


def start_relaypolicy_exim(tmp: Path) -> Server:
    port = free_port()
    text = RELAYPOLICY_CONFIG.format(port=free_port(), level="info")
    text += f'\n[exim]\nlisten = ["127.0.0.1:{port}"]\n'
    config = tmp / "relaypolicy-exim.toml"
    config.write_text(text)
    log = (tmp / "relaypolicy-exim.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "relaypolicy", "exim", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    log.close()
    server = Server("relaypolicy exim", port, proc.pid, "log level info", proc)
    try:
        wait_for_port(port, "relaypolicy exim", proc)
    except RuntimeError:
        server.stop()
        raise
    return server


def run_exim_load(
    server: Server,
    workload: EximWorkload,
    connections: int,
    duration: float,
    warmup: float,
    *,
    persistent: bool,
) -> Run:
    """``connections`` clients, one request in flight on each; with ``persistent``, lines
    on kept connections, else one connection per request (readsocket's way)."""
    label = f"exim ({'persistent' if persistent else 'readsocket'})"
    run = Run(label, connections)
    requests, accepts = workload.exim, workload.accepts
    pool = len(requests)
    selector = selectors.DefaultSelector()
    clock = time.perf_counter_ns
    index = [c * pool // connections for c in range(connections)]
    sent_at = [0] * connections
    buffers = [b""] * connections
    socks: list[socket.socket | None] = [None] * connections

    def send(c: int) -> None:
        sock = socks[c]
        if sock is None or not persistent:
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks[c] = sock
        sent_at[c] = clock()
        sock.sendall(requests[index[c]])
        if not persistent:
            sock.shutdown(socket.SHUT_WR)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, c)

    for c in range(connections):
        send(c)
    warm_until = clock() + int(warmup * 1e9)
    measuring, start, stop = False, 0, 0
    cpu_start = gen_start = busy_start = 0.0
    unanswered = set(range(connections))
    try:
        while True:
            events = selector.select(10.0)
            if not events:
                raise RuntimeError(f"{label}: no answer for 10 s")
            for key, _ in events:
                c = key.data
                sock = socks[c]
                assert sock is not None
                data = sock.recv(65536)
                now = clock()
                answer = buffers[c] + data
                if persistent:
                    if not data:
                        raise RuntimeError(f"{label}: connection closed")
                    if not answer.endswith(b"\n"):
                        buffers[c] = answer
                        continue
                elif data:
                    buffers[c] = answer
                    continue
                buffers[c] = b""
                selector.unregister(sock)
                sock.setblocking(True)
                if not persistent:
                    sock.close()
                i = index[c]
                good = answer == b"accept\n" if accepts[i] else answer.startswith(b"deny 554 ")
                run.answers["OK" if accepts[i] else "REJECT"] += good
                if not good:
                    run.answers["wrong"] += 1
                    if len(run.wrong) < 3:
                        run.wrong.append(f"request {i}: {answer!r}")
                if measuring:
                    if now >= stop:
                        run.server_cpu = cpu_seconds(server.pids) - cpu_start
                        run.generator_cpu = time.process_time() - gen_start
                        busy = system_busy_seconds() - busy_start
                        run.other_cpu = max(0.0, busy - run.server_cpu - run.generator_cpu)
                        run.seconds = (stop - start) / 1e9
                        return run
                    run.requests += 1
                    run.latencies_ns.append(now - sent_at[c])
                else:
                    unanswered.discard(c)
                    if not unanswered and now >= warm_until:
                        server.refresh_pids()
                        cpu_start, gen_start = cpu_seconds(server.pids), time.process_time()
                        busy_start = system_busy_seconds()
                        start = clock()
                        stop = start + int(duration * 1e9)
                        measuring = True
                index[c] = (i + 1) % pool
                send(c)
    finally:
        selector.close()
        for sock in socks:
            if sock is not None:
                sock.close()


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


def print_table(runs: list[Run], baseline: dict[int, float]) -> None:
    print(f"{'front end':<22} {'conns':>5} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'srv CPU':>8} {'gen CPU':>8} {'other':>6} {'x serve':>8}")  # fmt: skip
    print("-" * 88)
    for run in runs:
        ratio = run.rate / baseline[run.connections]
        print(
            f"{run.server:<22} {run.connections:>5} {run.rate:>9,.0f} "
            f"{run.percentile_ms(0.5):>7.2f} {run.percentile_ms(0.99):>7.2f} "
            f"{run.server_cpu / run.seconds:>8.0%} {run.generator_cpu / run.seconds:>8.0%} "
            f"{run.other_cpu / run.seconds:>6.0%} {ratio:>8.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before each one")
    parser.add_argument("--connections", default="1,8", help="comma-separated counts")
    parser.add_argument("--requests", type=int, default=8192, help="requests in the pool")
    parser.add_argument("--rcpts", type=int, default=1000, help="RCPTs per exim -bh session")
    parser.add_argument("--repeat", type=int, default=3, help="exim -bh sessions each way")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    counts = [int(c) for c in args.connections.split(",") if c.strip()]
    workload = make_exim_workload(args.requests, args.seed)
    postfix_bytes = sum(map(len, workload.postfix)) // len(workload.postfix)
    exim_bytes = sum(map(len, workload.exim)) // len(workload.exim)
    accepts = sum(workload.accepts)
    print(
        f"{len(workload.exim):,} RCPT requests; Postfix {postfix_bytes} bytes, Exim line "
        f"{exim_bytes} bytes on average; {accepts:,} accept, {len(workload.exim) - accepts:,} deny"
    )
    print(f"{os.cpu_count()} CPUs; {args.duration:g} s per row after {args.warmup:g} s warm-up\n")
    serve_workload = make_workload(args.requests, args.seed)
    serve_workload.requests = workload.postfix
    serve_workload.answers = workload.postfix_answers
    serve_workload.verdicts = workload.postfix_verdicts
    runs: list[Run] = []
    baseline: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-exim-") as tmp_name:
        tmp = Path(tmp_name)
        serve = start_relaypolicy(tmp, "info")
        exim = start_relaypolicy_exim(tmp)
        try:
            for connections in counts:
                run = run_load(serve, serve_workload, connections, args.duration, args.warmup)
                run.server = "serve (persistent)"
                baseline[connections] = run.rate
                runs.append(run)
                for persistent in (False, True):
                    runs.append(
                        run_exim_load(
                            exim, workload, connections, args.duration, args.warmup,
                            persistent=persistent,
                        )
                    )  # fmt: skip
            wrong = [run for run in runs if run.wrong]
            if wrong:
                sys.exit(f"bench_exim: wrong answers: {[r.wrong for r in wrong]}")
            print(
                "Part 1: decisions per second over loopback, log level info, every answer checked"
            )
            print_table(runs, baseline)
            print()
            rcpt_cost(exim.port, args.rcpts, args.repeat)
        finally:
            exim.stop()
            serve.stop()


if __name__ == "__main__":
    main()
