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
                                      [--plot FILE.png]

Exit status: 0; 1 when an answer is wrong.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import tempfile
from collections import Counter
from pathlib import Path

from loadgen import (
    Client,
    Run,
    Server,
    add_load_arguments,
    ask_all,
    connection_counts,
    free_port,
    log_note,
    open_tcp,
    plot_runs,
    print_table,
    report_noise,
    run_load,
    start_relaypolicy,
)
from workload import RELAYPOLICY_CONFIG, make_workload, policy_client, start_serve

from relaypolicy.milter.client import connect_packet, macro_packet, optneg
from relaypolicy.milter.protocol import encode_packet

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
    return start_relaypolicy(
        tmp, "milter", f"milter-{level}", text, port=port, label=f"milter ({level})",
        note=log_note(level),
    )  # fmt: skip


def open_milter(port: int) -> socket.socket:
    sock = open_tcp(port)
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


def milter_client(questions: list[bytes], verdicts: list[str]) -> Client:
    """The load run's client for the milter: persistent negotiated connections, one
    session's question in flight on each, the answer's verdict checked."""

    def judge(i: int, answer: bytes) -> str:
        verdict = milter_verdict(answer)
        return verdict if verdict == verdicts[i] else "wrong"

    return Client(
        questions, judge, expected=verdicts.__getitem__, complete=complete, connect=open_milter
    )


def agreement_pass(server: Server, client: Client) -> None:
    got: Counter[str] = Counter()
    assert client.judge is not None
    for i, answer in enumerate(ask_all(server.port, client)):
        verdict = client.judge(i, answer)
        if verdict == "wrong":
            sys.exit(f"bench_milter: question {i}: {answer!r}, expected {client.expected(i)}")
        got[verdict] += 1
    print(f"  {server.label:<24} OK {got['OK']}, REJECT {got['REJECT']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_arguments(parser, connections="1,8,64")
    parser.add_argument("--no-info", action="store_true", help="skip the servers at log info")
    args = parser.parse_args()
    counts = connection_counts(parser, args)
    workload = make_workload(args.requests, args.seed).rcpt_only()
    questions = [milter_question(request) for request in workload.requests]
    milter = milter_client(questions, workload.verdicts)
    serve = policy_client(workload)
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
                servers.append((start_serve(tmp, level), start_milter(tmp, level)))
            print("Agreement pass (milter), every question once:")
            for _, milter_server in servers:
                agreement_pass(milter_server, milter)
            for connections in counts:
                for serve_server, milter_server in servers:
                    ran = run_load(serve_server, serve, connections, args.duration, args.warmup)
                    ran.server = f"serve ({serve_server.label.split('(')[1]}"
                    runs.append(ran)
                    runs.append(
                        run_load(milter_server, milter, connections, args.duration, args.warmup)
                    )
                    for run in runs[-2:]:
                        if run.answers["wrong"]:
                            sys.exit(f"bench_milter: wrong answers from {run.server}: {run.wrong}")
        finally:
            for pair in servers:
                for server in pair:
                    server.stop()
    rates = {(r.server, r.connections): r.rate for r in runs}

    def ratio(run: Run) -> str:
        if not run.server.startswith("milter"):
            return ""
        base = rates.get((run.server.replace("milter", "serve"), run.connections))
        return f"{run.rate / base:.2f}" if base else ""

    print()
    print_table(runs, unit="dec/s", width=18, columns=[("milter/serve", 12, ratio)])
    report_noise(runs)
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
    if args.plot is not None:
        plot_runs(
            runs,
            args.plot,
            f"relaypolicy milter beside serve: {os.cpu_count()} CPUs, "
            f"{args.duration:g} s per point, one RCPT decision per milter session",
            unit="dec/s",
        )


if __name__ == "__main__":
    main()
