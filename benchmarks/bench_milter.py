"""`relaypolicy milter` over loopback, beside `relaypolicy serve`: same decisions, same run.

Both servers read the configuration of ``bench_serve.py`` (trusted 127.0.0.0/8 and
192.0.2.0/24, local domain example.org, relay domain example.net, chain
``trusted_networks, sasl_permit, local_domains``), at log level ``info`` (one line per
decision, to a file) and again at ``warning``. The questions are ``bench_serve.py``'s
request pool (its RCPT requests): the policy service gets them as Postfix writes them;
the milter as Postfix's milter client sends the same facts, one SMTP session per
decision on a persistent milter connection: ``K`` (a new session on the connection),
the connect macros (``j``, ``{daemon_name}``, ``{daemon_port}``), CONNECT, HELO, the
mail macros (``i``, ``{auth_type}``, ``{auth_authen}`` when logged in), MAIL, the rcpt
macros (``i``, ``{rcpt_addr}``) and RCPT, in one write, as Postfix writes them once the
filter has asked for no replies to CONNECT, HELO and MAIL. The milter answers once, for
the recipient; each connection has one decision in flight, as an SMTP session has.

Every answer is checked: the milter's ``c`` (continue) where the service says ``OK``,
``y`` ``554 5.7.1`` where it refuses; first an agreement pass, every question once.

Printed per server and connection count: decisions per second, p50 and p99 latency, the
server's and the generator's CPU; then the milter's throughput over the service's.
The target (issue 18): at least half the policy service's throughput at 8 connections.

    python benchmarks/bench_milter.py [--duration S] [--connections 1,8,64] [--no-info]

Exit status: 0; 1 when an answer is wrong.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serve import (
    NOISY_OTHER_CPU,
    RELAYPOLICY_CONFIG,
    Run,
    Server,
    Workload,
    cpu_seconds,
    free_port,
    make_workload,
    run_load,
    start_relaypolicy,
    system_busy_seconds,
    wait_for_port,
)

from relaypolicy.milter.client import connect_packet, macro_packet, optneg
from relaypolicy.milter.codec import encode_packet

TARGET_RATIO = 0.5  # milter / serve throughput at TARGET_CONNECTIONS
TARGET_CONNECTIONS = 8
CONTINUE = encode_packet(b"c")
REFUSED = b"y554 5.7.1 "


def milter_question(request: bytes) -> bytes:
    """What Postfix's milter client sends for one SMTP session with this recipient."""
    attributes = dict(line.split("=", 1) for line in request.decode().splitlines() if "=" in line)
    get = attributes.get

    def strings(command: bytes, *args: str) -> bytes:
        return encode_packet(command, b"".join(a.encode() + b"\0" for a in args))

    mail_macros = {"i": ""}
    if get("sasl_username"):
        mail_macros |= {
            "{auth_type}": get("sasl_method", ""),
            "{auth_authen}": get("sasl_username", ""),
        }
    helo_macros = {}
    if get("encryption_protocol"):
        helo_macros = {
            "{tls_version}": get("encryption_protocol", ""),
            "{cipher}": get("encryption_cipher", ""),
        }
    return b"".join(
        [
            encode_packet(b"K"),
            macro_packet(
                b"C",
                {
                    "j": "mx.example.org",
                    "{daemon_name}": "mx.example.org",
                    "{daemon_port}": get("server_port", "25"),
                },
            ),
            connect_packet(
                get("client_address", ""),
                int(get("client_port", "0")),
                get("client_name", "unknown"),
            ),
            macro_packet(b"H", helo_macros) if helo_macros else b"",
            strings(b"H", get("helo_name", "")),
            macro_packet(b"M", mail_macros),
            strings(b"M", f"<{get('sender', '')}>"),
            macro_packet(b"R", {"i": "", "{rcpt_addr}": get("recipient", "")}),
            strings(b"R", f"<{get('recipient', '')}>"),
        ]
    )


def rcpt_only(workload: Workload) -> Workload:
    """The RCPT requests of the pool (the milter is asked at RCPT only)."""
    kept = Workload([], [], [])
    for request, answer, verdict in zip(
        workload.requests, workload.answers, workload.verdicts, strict=True
    ):
        if verdict != "DUNNO":
            kept.requests.append(request)
            kept.answers.append(answer)
            kept.verdicts.append(verdict)
    return kept


def milter_verdict(answer: bytes) -> str:
    if answer == CONTINUE:
        return "OK"
    if answer[4:].startswith(REFUSED):
        return "REJECT"
    return "wrong"


def start_milter(tmp: Path, level: str) -> Server:
    port = free_port()
    text = RELAYPOLICY_CONFIG.format(port=free_port(), level=level)
    text += f'\n[milter]\nlisten = ["127.0.0.1:{port}"]\n'
    config = tmp / f"milter-{level}.toml"
    config.write_text(text)
    log = (tmp / f"milter-{level}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "relaypolicy", "milter", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    log.close()
    note = f"log level {level}" + (" (one line per decision, to a file)" if level == "info" else "")
    server = Server(f"milter ({level})", port, proc.pid, note, proc)
    try:
        wait_for_port(port, "relaypolicy milter", proc)
    except RuntimeError:
        server.stop()
        raise
    return server


def open_milter(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(optneg())
    reply = b""
    while len(reply) < 4 or len(reply) < 4 + struct.unpack(">I", reply[:4])[0]:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("the milter closed the connection during negotiation")
        reply += chunk
    return sock


def complete(answer: bytes) -> bool:
    return len(answer) >= 4 and len(answer) >= 4 + struct.unpack(">I", answer[:4])[0]


def agreement_pass(server: Server, questions: list[bytes], workload: Workload) -> None:
    sock = open_milter(server.port)
    got: Counter[str] = Counter()
    try:
        for i, question in enumerate(questions):
            sock.sendall(question)
            answer = b""
            while not complete(answer):
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError("the milter closed the connection")
                answer += chunk
            verdict = milter_verdict(answer)
            if verdict != workload.verdicts[i]:
                sys.exit(f"bench_milter: question {i}: {answer!r}, expected {workload.verdicts[i]}")
            got[verdict] += 1
    finally:
        sock.close()
    print(f"  {server.label:<24} OK {got['OK']}, REJECT {got['REJECT']}")


def run_milter_load(
    server: Server,
    questions: list[bytes],
    verdicts: list[str],
    connections: int,
    *,
    duration: float,
    warmup: float,
) -> Run:
    """``bench_serve.run_load`` for the milter's framing: one question in flight per
    connection; every answer checked; timing after every connection answered once."""
    run = Run(server.label, connections)
    pool = len(questions)
    selector = selectors.DefaultSelector()
    socks = [open_milter(server.port) for _ in range(connections)]
    index = [c * pool // connections for c in range(connections)]
    sent_at = [0] * connections
    buffers = [b""] * connections
    unanswered = set(range(connections))
    clock = time.perf_counter_ns
    for c, sock in enumerate(socks):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, c)
        sent_at[c] = clock()
        sock.send(questions[index[c]])
    warm_until = clock() + int(warmup * 1e9)
    start = stop = 0
    measuring = draining = False
    open_connections = connections
    cpu_start = gen_start = busy_start = 0.0
    verdict_of: Callable[[bytes], str] = milter_verdict
    try:
        while open_connections:
            events = selector.select(10.0)
            if not events:
                raise RuntimeError(f"{server.label}: no answer for 10 s")
            for key, _ in events:
                c = key.data
                sock = socks[c]
                data = sock.recv(65536)
                now = clock()
                if not data:
                    raise RuntimeError(f"{server.label} closed a connection")
                answer = buffers[c] + data
                if not complete(answer):
                    buffers[c] = answer
                    continue
                buffers[c] = b""
                i = index[c]
                verdict = verdict_of(answer)
                if verdict == verdicts[i]:
                    run.answers[verdict] += 1
                else:
                    run.answers["wrong"] += 1
                    if len(run.wrong) < 3:
                        run.wrong.append(f"question {i}: {answer!r}, expected {verdicts[i]}")
                if measuring and now >= stop:
                    run.server_cpu = cpu_seconds(server.pids) - cpu_start
                    run.generator_cpu = time.process_time() - gen_start
                    busy = system_busy_seconds() - busy_start
                    run.other_cpu = max(0.0, busy - run.server_cpu - run.generator_cpu)
                    run.seconds = (stop - start) / 1e9
                    measuring, draining = False, True
                if draining:
                    selector.unregister(sock)
                    open_connections -= 1
                    continue
                if measuring:
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
                i = (i + 1) % pool
                index[c] = i
                sent_at[c] = clock()
                sock.send(questions[i])
    finally:
        selector.close()
        for sock in socks:
            sock.close()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before each one")
    parser.add_argument("--connections", default="1,8,64", help="comma-separated counts")
    parser.add_argument("--no-info", action="store_true", help="skip the servers at log info")
    parser.add_argument("--requests", type=int, default=8192, help="distinct questions")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    counts = [int(c) for c in args.connections.split(",") if c.strip()]
    if not counts or min(counts) < 1 or args.duration <= 0:
        parser.error("--connections: positive integers; --duration: positive")
    workload = rcpt_only(make_workload(args.requests, args.seed))
    questions = [milter_question(request) for request in workload.requests]
    expected = Counter(workload.verdicts)
    print(
        f"{len(questions):,} distinct RCPT questions: OK {expected['OK']}, REJECT "
        f"{expected['REJECT']}; milter question {sum(map(len, questions)) // len(questions)} "
        f"bytes, policy request {sum(map(len, workload.requests)) // len(workload.requests)} "
        f"bytes on average"
    )
    print(f"{args.duration:g} s per row after {args.warmup:g} s warm-up\n")
    levels = ("warning",) if args.no_info else ("info", "warning")
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-milter-") as tmp_name:
        tmp = Path(tmp_name)
        servers: list[tuple[Server, Server]] = []
        try:
            for level in levels:
                servers.append((start_relaypolicy(tmp, level), start_milter(tmp, level)))
            print("Agreement pass (milter), every question once:")
            for _, milter in servers:
                agreement_pass(milter, questions, workload)
            for connections in counts:
                for serve, milter in servers:
                    ran = run_load(serve, workload, connections, args.duration, args.warmup)
                    ran.server = f"serve ({serve.label.split('(')[1]}"
                    runs.append(ran)
                    runs.append(
                        run_milter_load(
                            milter,
                            questions,
                            workload.verdicts,
                            connections,
                            duration=args.duration,
                            warmup=args.warmup,
                        )
                    )
                    for run in runs[-2:]:
                        if run.answers["wrong"]:
                            sys.exit(f"bench_milter: wrong answers from {run.server}: {run.wrong}")
        finally:
            for pair in servers:
                for server in pair:
                    server.stop()
    header = (
        f"{'server':<18} {'conns':>5} {'dec/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'srv CPU':>8} {'gen CPU':>8} {'other':>6}  milter/serve"
    )
    print("\n" + header + "\n" + "-" * len(header))
    rates = {(r.server, r.connections): r.rate for r in runs}
    for run in runs:
        ratio = ""
        if run.server.startswith("milter"):
            base = rates.get((run.server.replace("milter", "serve"), run.connections))
            ratio = f"{run.rate / base:.2f}" if base else ""
        print(
            f"{run.server:<18} {run.connections:>5} {run.rate:>9,.0f} "
            f"{run.percentile_ms(0.50):>7.2f} {run.percentile_ms(0.99):>7.2f} "
            f"{100 * run.server_cpu / run.seconds:>7.0f}% "
            f"{100 * run.generator_cpu / run.seconds:>7.0f}% "
            f"{100 * run.other_cpu / run.seconds:>5.0f}%{'*' if run.noisy else ' '} {ratio:>12}"
        )
    if any(run.noisy for run in runs):
        print(f"NOISY (*): other work took more than {NOISY_OTHER_CPU:.0%} of a core meanwhile.")
    print(
        f"\nTarget (issue 18), at {TARGET_CONNECTIONS} connections: "
        f"milter >= {TARGET_RATIO:g}x serve"
    )
    for level in levels:
        serve_rate = rates.get((f"serve ({level})", TARGET_CONNECTIONS))
        milter_rate = rates.get((f"milter ({level})", TARGET_CONNECTIONS))
        if serve_rate and milter_rate:
            times = milter_rate / serve_rate
            met = "MET" if times >= TARGET_RATIO else "MISSED"
            print(
                f"  log level {level}: {milter_rate:,.0f} / {serve_rate:,.0f} = {times:.2f}x: {met}"
            )


if __name__ == "__main__":
    main()
