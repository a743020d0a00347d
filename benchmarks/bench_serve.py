"""`relaypolicy serve` over loopback, beside postfwd doing the same work, same load, same run.

Starts ``python -m relaypolicy serve`` with an ``examples/mx.toml``-like configuration
(trusted 127.0.0.0/8 and 192.0.2.0/24, local domain example.org, relay domain example.net,
chain ``trusted_networks, sasl_permit, local_domains``) and postfwd (the Debian package:
postfwd2, the prefork server the ``postfwd`` command runs, and postfwd1, its single-process
sibling) with rules that do the same. postfwd runs with its request cache off
(``--cache=0``), DNS off, logging off, and postfwd2's per-request statistics message to its
parent off (``--summary=0``, its fastest setting). relaypolicy runs at its default log
level ``info`` (one line per decision, as in production, to a file), and again at
``warning`` in rows of its own. The issue's targets (at least 2x postfwd's throughput, p99
under 5 ms, at 8 connections) are judged for both, the default level first.

One load generator, this process, holds 1, 8 and 64 persistent connections to each server
in turn and sends Postfix requests (Postfix 3.7's full attribute set, 31 attributes) one at
a time per connection, waiting for each answer as Postfix does. Every answer is checked
against the answer its request must get; before timing, every server answers the whole
request pool once, and all must agree request by request.

Printed per server and connection count: requests per second, p50 and p99 latency, CPU
used by the server's processes and by the generator. A "null server" (answers DUNNO without
reading the request) shows how fast the generator alone can go. The machine is shared and
noisy: read the ratios; for each connection count the servers run back to back.

With ``--metrics``, each relaypolicy configuration runs a second time with a ``[metrics]``
section, right after the one without, and a thread of this process scrapes its
``/metrics`` over HTTP once a second during that run (warm-up included), as Prometheus
would. Every scrape must succeed, and the request and decision counters it shows must
never go backwards and must cover the answers the generator got. The throughput lost is
printed as "metrics cost: X % of throughput" (issue 17's target: under 10 %).

    python benchmarks/bench_serve.py [--duration S] [--connections 1,8,64] [--skip-postfwd]
                                     [--metrics] [--plot FILE.png]

Exit status: 0; 1 when an answer is wrong, the servers disagree or a scrape fails or shows
wrong counts; 2 when postfwd is not installed (``apt-get install postfwd``, or measure
relaypolicy alone with --skip-postfwd).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import grp
import multiprocessing
import multiprocessing.synchronize
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from loadgen import (
    Column,
    Run,
    Server,
    add_load_arguments,
    ask_all,
    connection_counts,
    free_port,
    plot_runs,
    print_table,
    report_noise,
    run_load,
    wait_for_port,
)
from workload import (
    METRICS_SUFFIX,
    REJECT_ACTION,
    Workload,
    make_workload,
    policy_client,
    start_serve,
)

TARGET_RATIO = 2.0  # relaypolicy / postfwd throughput, at TARGET_CONNECTIONS
TARGET_P99_MS = 5.0
TARGET_CONNECTIONS = 8
DECIDING_ATTRIBUTES = ("protocol_state", "client_address", "sasl_username", "recipient")
TARGET_METRICS_COST = 10.0  # % of throughput lost with [metrics] scraped every second
SCRAPE_INTERVAL = 1.0  # seconds, as a Prometheus scrape_interval

# The same decisions in postfwd's rule language, first match wins. relaypolicy answers
# DUNNO for states other than RCPT, accepts trusted and authenticated clients before it
# looks at the recipient, refuses routing tricks (a "%", "!" or "@" before the last "@"),
# and matches local domains exactly and relay domains with their subdomains, ignoring
# case. Rejections use relaypolicy's reply text, so both answers are byte for byte equal.
# postfwd's "=~" is not anchored in 1.35 (contrary to its manual): the anchors are explicit.
POSTFWD_RULES = f"""\
id=STATE;   protocol_state!~^RCPT$;                          action=DUNNO
id=TRUSTED; client_address=127.0.0.0/8, 192.0.2.0/24;       action=OK
id=SASL;    sasl_username=.;                                 action=OK
id=ROUTED;  recipient=[%!@].*@;                              action={REJECT_ACTION}
id=LOCAL;   recipient_domain=^example\\.org$;                action=OK
id=RELAY;   recipient_domain=^(.+\\.)?example\\.net$;        action=OK
id=DEFAULT;                                                  action={REJECT_ACTION}
"""


# --- the servers -----------------------------------------------------------------------


def start_postfwd(tmp: Path, binary: str) -> Server:
    """postfwd in its daemon mode (it always forks away; its pid file says where it went)."""
    name = Path(binary).name
    port = free_port()
    rules = tmp / "postfwd.cf"
    rules.write_text(POSTFWD_RULES)
    pidfile = tmp / f"{name}.pid"
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    command = [
        binary,
        f"--file={rules}",
        "--interface=127.0.0.1",
        f"--port={port}",
        f"--pidfile={pidfile}",
        f"--user={user}",
        f"--group={group}",
        "--cache=0",  # no request cache: every request is evaluated
        "--nodns",
        "--perfmon",  # no logging at all (relaypolicy runs at warning)
    ]
    if name == "postfwd2":
        # Its cache daemon (idle with --cache=0) gets a socket of its own; --summary=0 stops
        # the per-request statistics round trip from each child to the prefork parent.
        command += [f"--cache_socket=unix::{tmp / 'postfwd2-cache.socket'}", "--summary=0"]
        note = "prefork; --cache=0 --summary=0 --nodns --perfmon"
    else:
        command += ["--daemon"]
        note = "single process; --cache=0 --nodns --perfmon"
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not pidfile.exists() or not pidfile.read_text().strip().isdigit():
        if proc.poll() not in (None, 0) or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start: {' '.join(command)}")
        time.sleep(0.05)
    root = int(pidfile.read_text())
    version = subprocess.run([binary, "-V"], capture_output=True, text=True, check=False).stdout
    server = Server(name, port, root, f"{version.split(' (')[0].strip()}, {note}", proc)
    try:
        wait_for_port(port, name)
    except RuntimeError:
        server.stop()
        raise
    return server


def _null_server(port: int, ready: multiprocessing.synchronize.Event) -> None:
    """Answer ``action=DUNNO`` to each request without reading it: the generator's ceiling."""

    class Answer(asyncio.Protocol):
        transport: asyncio.Transport
        last = b""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            count = (self.last + data).count(b"\n\n")
            self.last = data[-1:]
            if count:
                self.transport.write(b"action=DUNNO\n\n" * count)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", port)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def start_null_server() -> Server:
    port = free_port()
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    proc = context.Process(target=_null_server, args=(port, ready), daemon=True)
    proc.start()
    if not ready.wait(10) or proc.pid is None:
        raise RuntimeError("the null server did not start")
    return Server("null server", port, proc.pid, "asyncio, answers DUNNO unread", proc)


# --- the scraper -----------------------------------------------------------------------


class Scraper:
    """Scrapes ``/metrics`` every :data:`SCRAPE_INTERVAL` in a thread, as Prometheus would
    (an HTTP GET of the text format), and checks each answer: status 200, the policy
    service's request counter present and never going backwards."""

    def __init__(self, server: Server) -> None:
        assert server.metrics_port is not None
        self.label = server.label
        self.url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        self.scrapes = 0
        self.slowest_ms = 0.0
        self.failures: list[str] = []
        self.requests = 0.0  # relaypolicy_policy_requests_total, last seen
        self.decisions = 0.0  # the sum of relaypolicy_decisions_total, last seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scraper", daemon=True)

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.scrape()
            next_at += SCRAPE_INTERVAL
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def scrape(self) -> None:
        """One scrape; a failure is recorded, not raised (the thread must go on)."""
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(self.url, timeout=5) as answer:  # noqa: S310 - loopback
                status, body = answer.status, answer.read().decode()
        except OSError as exc:
            self.failures.append(f"GET {self.url}: {exc}")
            return
        self.slowest_ms = max(self.slowest_ms, (time.perf_counter() - started) * 1e3)
        self.scrapes += 1
        samples = parse_samples(body)
        requests = samples.get("relaypolicy_policy_requests_total")
        decisions = sum(
            v for k, v in samples.items() if k.startswith("relaypolicy_decisions_total{")
        )
        if status != 200 or requests is None:
            self.failures.append(f"GET {self.url}: status {status}, no request counter")
        elif requests < self.requests or decisions < self.decisions:
            self.failures.append(
                f"counters went backwards: requests {self.requests:.0f} -> {requests:.0f}, "
                f"decisions {self.decisions:.0f} -> {decisions:.0f}"
            )
        else:
            self.requests, self.decisions = requests, decisions


def parse_samples(text: str) -> dict[str, float]:
    """``name{labels} value`` lines of the Prometheus text format (comments skipped)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                samples[name] = float(value)
    return samples


def check_scrapes(scraper: Scraper, run: Run) -> None:
    """After the run, one last scrape: its counters must cover what the generator got (the
    server's counters also hold the agreement pass and earlier runs, hence "at least")."""
    scraper.scrape()
    decided = run.answers["OK"] + run.answers["REJECT"]
    answered = decided + run.answers["DUNNO"]
    if scraper.requests < answered or scraper.decisions < decided:
        scraper.failures.append(
            f"the counters show {scraper.requests:.0f} requests and {scraper.decisions:.0f} "
            f"decisions, fewer than this run's {answered} answers ({decided} decisions)"
        )
    run.scrapes, run.slowest_scrape_ms = scraper.scrapes, scraper.slowest_ms
    if scraper.failures:
        sys.exit(
            f"bench_serve: {len(scraper.failures)} bad scrapes of {scraper.label} at "
            f"{run.connections} connections, e.g. {scraper.failures[0]}"
        )


# --- the report ------------------------------------------------------------------------


def ratio_columns(runs: list[Run], baselines: list[str]) -> list[Column]:
    """A column per postfwd: relaypolicy's throughput over its, at the same connections."""
    rates = {(r.server, r.connections): r.rate for r in runs}

    def ratio(baseline: str) -> Callable[[Run], str]:
        def cell(run: Run) -> str:
            base = rates.get((baseline, run.connections))
            return f"{run.rate / base:.2f}" if base and run.server.startswith("relay") else ""

        return cell

    return [(f"x {b}", 11, ratio(b)) for b in baselines]


def report_targets(runs: list[Run], postfwds: list[str]) -> None:
    """The issue's targets, judged for relaypolicy at its default log level (info: one
    line per decision) and again at warning."""
    by = {(r.server, r.connections): r for r in runs}
    judged = [
        (label, by[(label, TARGET_CONNECTIONS)])
        for label in ("relaypolicy (info)", "relaypolicy (warning)")
        if (label, TARGET_CONNECTIONS) in by
    ]
    if not judged:
        print(f"\nTargets are judged at {TARGET_CONNECTIONS} connections: not measured.")
        return
    print(f"\nTargets (issue), at {TARGET_CONNECTIONS} connections:")
    for label, ours in judged:
        default = " (the default log level)" if label == "relaypolicy (info)" else ""
        print(f"  {label}{default}:")
        p99 = ours.percentile_ms(0.99)
        met = "MET" if p99 < TARGET_P99_MS else "MISSED"
        noisy = " (noisy row)" if ours.noisy else ""
        print(f"    p99 < {TARGET_P99_MS:g} ms: {met} ({p99:.2f} ms){noisy}")
        for name in postfwds:
            theirs = by.get((name, TARGET_CONNECTIONS))
            if theirs is not None:
                ratio = ours.rate / theirs.rate
                met = "MET" if ratio >= TARGET_RATIO else "MISSED"
                noisy = " (noisy rows)" if ours.noisy or theirs.noisy else ""
                print(f"    throughput >= {TARGET_RATIO:g}x {name}: {met} ({ratio:.2f}x){noisy}")
        if not postfwds:
            print("    throughput vs postfwd: not measured (--skip-postfwd)")


def report_metrics_cost(runs: list[Run]) -> None:
    """Each relaypolicy configuration with ``[metrics]`` (scraped every second) beside the
    same one without, at each connection count: the throughput it costs."""
    by = {(r.server, r.connections): r for r in runs}
    pairs = [
        (by[(r.server.removesuffix(METRICS_SUFFIX), r.connections)], r)
        for r in runs
        if r.server.endswith(METRICS_SUFFIX)
        and (r.server.removesuffix(METRICS_SUFFIX), r.connections) in by
    ]
    if not pairs:
        return
    print(
        f"\nMetrics ([metrics], /metrics scraped every {SCRAPE_INTERVAL:g} s) beside the same "
        f"configuration without,\nback to back; target (issue 17): under {TARGET_METRICS_COST:g} %"
    )
    for without, with_metrics in pairs:
        cost = 100 * (1 - with_metrics.rate / without.rate)
        met = "MET" if cost < TARGET_METRICS_COST else "MISSED"
        noisy = " (noisy rows)" if without.noisy or with_metrics.noisy else ""
        print(
            f"  {without.server}, {without.connections} connections: "
            f"{without.rate:,.0f} -> {with_metrics.rate:,.0f} req/s, p99 "
            f"{without.percentile_ms(0.99):.2f} -> {with_metrics.percentile_ms(0.99):.2f} ms; "
            f"{with_metrics.scrapes} scrapes, slowest {with_metrics.slowest_scrape_ms:.1f} ms"
        )
        print(f"    metrics cost: {cost:.1f} % of throughput: {met}{noisy}")


@contextlib.contextmanager
def servers_started(
    tmp: Path, postfwds: list[str], info: bool, null: bool, metrics: bool = False
) -> Iterator[list[Server]]:
    """The servers, in the order they are measured (each relaypolicy with ``[metrics]``
    right after the same configuration without)."""
    started: list[Server] = []
    try:
        for level in ("warning", "info") if info else ("warning",):
            started.append(start_serve(tmp, level))
            if metrics:
                started.append(start_serve(tmp, level, metrics=True))
        for binary in postfwds:
            started.append(start_postfwd(tmp, binary))
        if null:
            started.append(start_null_server())
        yield started
    finally:
        for server in reversed(started):
            server.stop()


def agreement_pass(server: Server, workload: Workload) -> None:
    """Every request once; print the verdict counts; exit 1 on any unexpected answer."""
    answers = ask_all(server.port, policy_client(workload))
    got: Counter[str] = Counter()
    wrong = []
    for i, answer in enumerate(answers):
        if answer == workload.answers[i]:
            got[workload.verdicts[i]] += 1
        else:
            wrong.append(i)
    print(
        f"  {server.label:<30} OK {got['OK']}, REJECT {got['REJECT']}, DUNNO {got['DUNNO']}"
        + (f", WRONG {len(wrong)}" if wrong else "")
    )
    if wrong:
        i = wrong[0]
        shown = [  # the attributes the decision depends on
            line
            for line in workload.requests[i].decode().splitlines()
            if line.partition("=")[0] in DECIDING_ATTRIBUTES
        ]
        sys.exit(
            f"bench_serve: {server.label} answered {len(wrong)} of {len(answers)} requests "
            f"differently, e.g. request {i} ({', '.join(shown)}): "
            f"{answers[i]!r}, expected {workload.answers[i]!r}"
        )


def find_postfwds(choice: str) -> list[str]:
    names = {"postfwd2": ["postfwd2"], "postfwd1": ["postfwd1"]}.get(
        choice, ["postfwd2", "postfwd1"]
    )
    found = [shutil.which(n, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") for n in names]
    if not all(found):
        missing = ", ".join(n for n, f in zip(names, found, strict=True) if not f)
        print(
            f"bench_serve: {missing} not found. Install the Debian package "
            "(apt-get install postfwd) or measure relaypolicy alone with --skip-postfwd.",
            file=sys.stderr,
        )
        sys.exit(2)
    return [f for f in found if f]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_arguments(parser, connections="1,8,64")
    parser.add_argument("--skip-postfwd", action="store_true", help="measure relaypolicy alone")
    parser.add_argument(
        "--postfwd",
        choices=["both", "postfwd2", "postfwd1"],
        default="both",
        help="which postfwd to compare with (postfwd2 is what the postfwd command runs)",
    )
    parser.add_argument("--no-info", action="store_true", help="skip relaypolicy at log info")
    parser.add_argument("--no-null", action="store_true", help="skip the null-server rows")
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="also measure each relaypolicy with [metrics], /metrics scraped every second",
    )
    args = parser.parse_args()
    counts = connection_counts(parser, args)

    postfwds = [] if args.skip_postfwd else find_postfwds(args.postfwd)
    workload = make_workload(args.requests, args.seed)
    expected = Counter(workload.verdicts)
    print(
        f"{len(workload.requests):,} distinct requests, 31 attributes each, "
        f"{sum(map(len, workload.requests)) // len(workload.requests)} bytes on average; "
        f"expected: OK {expected['OK']}, REJECT {expected['REJECT']}, DUNNO {expected['DUNNO']}"
    )
    print(f"{os.cpu_count()} CPUs; {args.duration:g} s per row after {args.warmup:g} s warm-up\n")

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp_name:
        tmp = Path(tmp_name)
        with servers_started(
            tmp, postfwds, not args.no_info, not args.no_null, args.metrics
        ) as servers:
            for server in servers:
                print(f"  {server.label}: {server.note}")
            print("\nAgreement pass: every request once, one connection, each server:")
            for server in servers:
                if server.label != "null server":
                    agreement_pass(server, workload)
            print("  every server gave the expected answer to every request\n")
            runs: list[Run] = []
            for connections in counts:
                for server in servers:
                    is_null = server.label == "null server"
                    scraper = Scraper(server) if server.metrics_port is not None else None
                    with scraper or contextlib.nullcontext():
                        run = run_load(
                            server,
                            policy_client(workload, check=not is_null),
                            connections,
                            args.duration / 3 if is_null else args.duration,
                            args.warmup,
                        )
                    if run.wrong:
                        sys.exit(
                            f"bench_serve: {run.answers['wrong']} wrong answers from "
                            f"{server.label} at {connections} connections, e.g. {run.wrong}"
                        )
                    if scraper is not None:
                        check_scrapes(scraper, run)
                    runs.append(run)
    print_table(runs, columns=ratio_columns(runs, [Path(p).name for p in postfwds]))
    print(
        "srv CPU: the server's processes (100% = one core); gen CPU: this generator; "
        "other: the\nrest of the machine meanwhile (noise: other jobs, stolen time); "
        "null server: what the\ngenerator drives at least (the null server may be "
        "the limit: see their CPU)."
    )
    if args.metrics:
        print("+metrics: with [metrics]; gen CPU includes the scraper thread.")
    report_noise(
        runs,
        "a server that can use both cores (postfwd2) loses most: rerun on a quieter machine "
        "before\ntrusting the ratios.",
    )
    print()
    print("Answers in the timed runs (warm-up included), every one checked:")
    for server in servers:
        if server.label != "null server":
            total: Counter[str] = Counter()
            for run in runs:
                if run.server == server.label:
                    total.update(run.answers)
            print(
                f"  {server.label:<30} OK {total['OK']:,}, REJECT {total['REJECT']:,}, "
                f"DUNNO {total['DUNNO']:,}, wrong {total['wrong']}"
            )
    report_targets(runs, [Path(p).name for p in postfwds])
    report_metrics_cost(runs)
    if args.plot is not None:
        plot_runs(
            runs,
            args.plot,
            f"relaypolicy serve beside postfwd: {os.cpu_count()} CPUs, "
            f"{args.duration:g} s per point, Postfix 3.7 requests",
        )


if __name__ == "__main__":
    main()
