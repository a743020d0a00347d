"""`relaypolicy opensmtpd-filter` through its stdin/stdout, beside `relaypolicy serve`, same run.

The filter is started as ``smtpd`` starts it: one ``AF_UNIX`` stream socket as both its
stdin and stdout. This process plays ``smtpd``: the handshake, then for every decision one
SMTP session's report events (``link-connect``, ``link-identify``, ``link-tls`` when the
client used TLS, ``link-auth`` when it authenticated, ``tx-begin``, ``tx-mail``), the
``rcpt-to`` filter request, and after the answer ``link-disconnect`` -- one recipient per
session, the most lines per decision. With C concurrent sessions, C requests are in flight,
one per session, as ``smtpd`` asks for each of its sessions in turn.

``relaypolicy serve`` gets the same requests over loopback with C persistent connections
(``bench_serve.run_load``), from the same workload (``bench_serve.make_workload``, its RCPT
requests: the filter is never asked at other stages), with the same policy. Every answer
of both is checked against the verdict it must get. Both run at log level ``warning`` and
at ``info`` (one decision line each, to a file). Read the ratios: the machine is shared.

    python benchmarks/bench_opensmtpd.py [--duration S] [--connections 1,8,64]

Exit status 0; 1 when an answer is wrong.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadgen import (
    Run,
    Server,
    cpu_seconds,
    print_table,
    report_noise,
    run_load,
    system_busy_seconds,
)
from workload import RELAYPOLICY_CONFIG, Workload, make_workload, policy_client, start_serve

HANDSHAKE = (
    b"config|smtpd-version|6.8.0p2\nconfig|smtp-session-timeout|300\n"
    b"config|subsystem|smtp-in\nconfig|admd|bench\nconfig|ready\n"
)
FILTER_TOKEN = "b06ff848e1a499f1"  # noqa: S105 -- smtpd's id of the filter, not a secret


def session_lines(request: bytes, session: str) -> tuple[bytes, bytes]:
    """What smtpd writes for one session: its report events and its rcpt-to request;
    and the link-disconnect that ends it."""
    attributes = dict(line.split("=", 1) for line in request.decode().splitlines() if "=" in line)
    prefix = "report|0.6|1.0|smtp-in"
    lines = [
        f"{prefix}|link-connect|{session}|{attributes['client_name']}|pass|"
        f"{attributes['client_address']}:{attributes['client_port']}|"
        f"{attributes['server_address']}:{attributes['server_port']}",
        f"{prefix}|link-identify|{session}|EHLO|{attributes['helo_name']}",
    ]
    if attributes["encryption_protocol"]:
        lines.append(
            f"{prefix}|link-tls|{session}|{attributes['encryption_protocol']}:"
            f"{attributes['encryption_cipher']}:256"
        )
    if attributes["sasl_username"]:
        lines.append(f"{prefix}|link-auth|{session}|{attributes['sasl_username']}|pass")
    lines += [
        f"{prefix}|tx-begin|{session}|00000001",
        f"{prefix}|tx-mail|{session}|00000001|ok|{attributes['sender']}",
        f"filter|0.6|1.0|smtp-in|rcpt-to|{session}|{FILTER_TOKEN}|{attributes['recipient']}",
    ]
    return ("\n".join(lines) + "\n").encode(), f"{prefix}|link-disconnect|{session}\n".encode()


class Filter:
    """A running filter on a socketpair."""

    def __init__(self, tmp: Path, level: str) -> None:
        config = tmp / f"filter-{level}.toml"
        # serve's policy and [log]; no [serve] section.
        policy = RELAYPOLICY_CONFIG.split("[serve]")[0]
        config.write_text(f'{policy}[log]\nlevel = "{level}"\nformat = "text"\n')
        ours, theirs = socket.socketpair()
        log = (tmp / f"filter-{level}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relaypolicy", "opensmtpd-filter", "--config", str(config)],
            stdin=theirs.fileno(),
            stdout=theirs.fileno(),
            stderr=log,
        )
        theirs.close()
        log.close()
        self.sock = ours
        self.server = Server(
            f"relaypolicy filter ({level})", 0, self.proc.pid, f"log level {level}", self.proc
        )
        ours.sendall(HANDSHAKE)
        got = b""
        while not got.endswith(b"register|ready\n"):
            chunk = ours.recv(65536)
            if not chunk:
                raise RuntimeError("the filter closed its stdout during the handshake")
            got += chunk

    def stop(self) -> None:
        self.sock.close()  # smtpd gone: the filter's stdin ends, it exits
        self.proc.wait(30)


def filter_load(
    flt: Filter, workload: Workload, connections: int, duration: float, warmup: float
) -> Run:
    """``connections`` sessions with one request in flight each, as smtpd would keep them."""
    run = Run(flt.server.label, connections)
    pool = len(workload.requests)
    expected = ["proceed" if v == "OK" else "reject|554 " for v in workload.verdicts]
    sock = flt.sock
    sock.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    clock = time.perf_counter_ns
    serial = 0
    in_flight: dict[str, tuple[int, int, bytes]] = {}  # session -> (index, sent_at, bye)
    outgoing = bytearray()

    def start(index: int) -> None:
        nonlocal serial
        serial += 1
        session = f"{connections:04x}{serial:012x}"
        lines, bye = session_lines(workload.requests[index], session)
        in_flight[session] = (index, clock(), bye)
        outgoing.extend(lines)

    for c in range(connections):
        start(c * pool // connections)
    warm_until = clock() + int(warmup * 1e9)
    begin = stop = 0
    measuring = draining = False
    buffer = b""
    cpu_start = gen_start = busy_start = 0.0
    answered_once = 0
    try:
        while in_flight:
            if outgoing:
                try:
                    sent = sock.send(outgoing)
                    del outgoing[:sent]
                except BlockingIOError:
                    pass
            if not selector.select(10.0):
                raise RuntimeError("the filter gave no answer for 10 s")
            data = sock.recv(1 << 20)
            if not data:
                raise RuntimeError("the filter closed its stdout")
            now = clock()
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                _, session, _, answer = line.decode().split("|", 3)
                index, sent_at, bye = in_flight.pop(session)
                outgoing.extend(bye)
                if answer.startswith(expected[index]):
                    run.answers[workload.verdicts[index]] += 1
                else:
                    run.answers["wrong"] += 1
                    if len(run.wrong) < 3:
                        run.wrong.append(f"request {index}: {answer!r}")
                if measuring and now >= stop:
                    run.server_cpu = cpu_seconds(flt.server.pids) - cpu_start
                    run.generator_cpu = time.process_time() - gen_start
                    busy = system_busy_seconds() - busy_start
                    run.other_cpu = max(0.0, busy - run.server_cpu - run.generator_cpu)
                    run.seconds = (stop - begin) / 1e9
                    measuring, draining = False, True
                if draining:
                    continue
                if measuring:
                    run.requests += 1
                    run.latencies_ns.append(now - sent_at)
                else:
                    answered_once += 1
                    if answered_once >= connections and now >= warm_until:
                        flt.server.refresh_pids()
                        cpu_start = cpu_seconds(flt.server.pids)
                        gen_start = time.process_time()
                        busy_start = system_busy_seconds()
                        begin = clock()
                        stop = begin + int(duration * 1e9)
                        measuring = True
                start((index + connections) % pool)
        if outgoing:  # the last link-disconnects
            sock.setblocking(True)
            sock.sendall(outgoing)
    finally:
        selector.close()
        sock.setblocking(True)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per row")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", default="1,8,64", help="concurrent sessions/connections")
    parser.add_argument("--requests", type=int, default=20_000, help="workload size")
    args = parser.parse_args()
    counts = [int(c) for c in args.connections.split(",")]
    workload = make_workload(args.requests, seed=1).rcpt_only()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-opensmtpd-") as tmp_name:
        tmp = Path(tmp_name)
        for level in ("warning", "info"):
            serve = start_serve(tmp, level)
            flt = Filter(tmp, level)
            try:
                for connections in counts:
                    runs.append(
                        run_load(
                            serve, policy_client(workload), connections, args.duration, args.warmup
                        )
                    )
                    runs.append(filter_load(flt, workload, connections, args.duration, args.warmup))
            finally:
                flt.stop()
                serve.stop()
    print(
        f"{len(workload.requests)} RCPT requests; filter: one recipient per SMTP session "
        f"({os.cpu_count()} CPUs, Python {sys.version.split()[0]}; * = noisy row)\n"
    )
    rates = {(r.server, r.connections): r.rate for r in runs}

    def ratio(run: Run) -> str:
        """The filter's rate over serve's at the same log level and count."""
        if not run.server.startswith("relaypolicy filter"):
            return ""
        level = run.server.rsplit("(", 1)[1]
        base = rates.get((f"relaypolicy ({level}", run.connections))
        return f"{run.rate / base:.2f}" if base else ""

    print_table(runs, width=26, columns=[("x serve", 8, ratio)])
    report_noise(runs)
    wrong = [r for r in runs if r.answers["wrong"]]
    for run in wrong:
        print(f"WRONG ANSWERS from {run.server}: {run.wrong}", file=sys.stderr)
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()
