"""What the front-end benchmarks share: servers as processes, the load run, the table.

``bench_serve.py``, ``bench_milter.py`` and ``bench_exim.py`` measure a server over
loopback the same way; only the bytes on the wire differ. This module holds the rest, so
the three measure, account and print alike:

- :class:`Server`, a running server by its root process, and
  :func:`start_relaypolicy`: ``python -m relaypolicy <command> --config FILE`` on a free
  port, its log in a file, waited for (a failure says the log's last lines);
- :func:`run_load`: N clients, one request in flight on each (as an MTA asks), every answer
  judged, timing after every client had an answer and the warm-up passed; a
  :class:`Client` says how to connect, when an answer is complete and what it must be;
- the CPU accounting of a timed window from /proc: the server's processes, this generator,
  and the rest of the machine (the noise: a row where other work took more than
  :data:`NOISY_OTHER_CPU` of a core is marked ``*``);
- :class:`Run`, one measured row, and :func:`print_table`, the rows with the same columns
  in every benchmark; :func:`plot_runs` draws them (``--plot``, ``benchmarks/plot.py``).

Benchmarks run as ``python benchmarks/bench_x.py``: this directory is on ``sys.path``.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing.process
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from plot import Point, plot_connections

NOISY_OTHER_CPU = 0.25  # of one core, used by other processes during a row
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- processes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if proc is not None and proc.poll() not in (None, 0):
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"{what} is not listening on 127.0.0.1:{port} after 20 s")


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants, from /proc (postfwd forks a master, daemons, children)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                children.setdefault(int(stat[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _stat(pid: int) -> list[str] | None:
    """Fields 3 onwards of /proc/PID/stat (the name may hold spaces: skip past ")")."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def cpu_seconds(pids: Sequence[int]) -> float:
    """CPU time used by these processes and their reaped children."""
    ticks = 0
    for pid in pids:
        stat = _stat(pid)
        if stat is not None:  # utime, stime, cutime, cstime
            ticks += int(stat[11]) + int(stat[12]) + int(stat[13]) + int(stat[14])
    return ticks / CLOCK_TICKS


def system_busy_seconds() -> float:
    """CPU time used by everything on the machine (all CPUs), stolen time included."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


@dataclass
class Server:
    """A running server: its label, port, root process and a line on its configuration."""

    label: str
    port: int
    root: int
    note: str
    proc: subprocess.Popen[bytes] | multiprocessing.process.BaseProcess | None = None
    pids: list[int] = field(default_factory=list)
    metrics_port: int | None = None  # relaypolicy with [metrics]: where /metrics is served

    def refresh_pids(self) -> None:
        self.pids = process_tree(self.root)

    def stop(self) -> None:
        tree = process_tree(self.root)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.root, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in tree):
            if isinstance(self.proc, subprocess.Popen):
                self.proc.poll()  # reap our direct child
            time.sleep(0.05)
        for pid in tree:  # only processes this benchmark started, by id
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if isinstance(self.proc, subprocess.Popen):
            self.proc.wait(5)
        elif self.proc is not None:
            self.proc.join(5)


def log_note(level: str) -> str:
    """The table's note on a relaypolicy server's log level."""
    return f"log level {level}" + (" (one line per decision, to a file)" if level == "info" else "")


def start_relaypolicy(
    tmp: Path,
    command: str,
    name: str,
    config_text: str,
    *,
    port: int,
    label: str,
    note: str,
    more_ports: Sequence[tuple[int, str]] = (),
) -> Server:
    """``python -m relaypolicy <command> --config tmp/<name>.toml`` (``config_text``), its
    stdout and stderr in ``tmp/<name>.log`` (the decision log goes to a file, as journald
    would take it), once listening on ``port`` and ``more_ports`` (port, what).

    Raises :class:`RuntimeError` with the log's last lines when it does not start.
    """
    config = tmp / f"{name}.toml"
    config.write_text(config_text)
    log_path = tmp / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relaypolicy", command, "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    server = Server(label, port, proc.pid, note, proc)
    try:
        wait_for_port(port, f"relaypolicy {command}", proc)
        for other, what in more_ports:
            wait_for_port(other, what, proc)
    except RuntimeError as exc:
        server.stop()
        lines = log_path.read_text(errors="replace").splitlines()[-20:]
        raise RuntimeError(f"{exc}; {log_path} ends:\n" + "\n".join(lines)) from exc
    return server


# --- the load run ----------------------------------------------------------------------


@dataclass
class Run:
    """One measured configuration."""

    server: str
    connections: int
    requests: int = 0
    seconds: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)
    server_cpu: float = 0.0
    generator_cpu: float = 0.0
    other_cpu: float = 0.0  # everything else on the machine meanwhile: noise
    answers: Counter[str] = field(default_factory=Counter)  # OK, REJECT, DUNNO, wrong
    wrong: list[str] = field(default_factory=list)  # the first few
    scrapes: int = 0  # bench_serve --metrics: successful scrapes of /metrics during the run
    slowest_scrape_ms: float = 0.0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def noisy(self) -> bool:
        return self.other_cpu / self.seconds > NOISY_OTHER_CPU

    def percentile_ms(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ns)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1e6


def open_tcp(port: int) -> socket.socket:
    """A connection to 127.0.0.1:``port``, Nagle off (one small request at a time)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def ends_with_blank_line(answer: bytes) -> bool:
    """A Postfix policy answer is complete (``action=...`` and an empty line)."""
    return answer[-2:] == b"\n\n"


@dataclass(frozen=True)
class Client:
    """How a load run talks to one kind of server.

    ``requests`` is the pool, sent round robin; ``judge(i, answer)`` gives the verdict to
    count for request ``i`` (``OK``, ``REJECT``, ``DUNNO``) or ``wrong``, with
    ``expected(i)`` for the message (``judge`` None: answers are not checked, the null
    server's). On a persistent connection (``connect`` opens one, ready for requests)
    ``complete`` says when an answer has arrived whole; with ``per_request``, each request
    gets a new connection, half-closed after it, and its answer ends at end of file (what
    Exim's ``${readsocket}`` does).
    """

    requests: Sequence[bytes]
    judge: Callable[[int, bytes], str] | None
    expected: Callable[[int], str] = repr
    complete: Callable[[bytes], bool] = ends_with_blank_line
    connect: Callable[[int], socket.socket] = open_tcp
    per_request: bool = False


class _Window:
    """The CPU a timed window used: the server's processes (all of them, as they are when
    it opens), this generator, and everything else on the machine."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.server_cpu = self.generator_cpu = self.busy = 0.0

    def open(self) -> None:
        self.server.refresh_pids()
        self.server_cpu = cpu_seconds(self.server.pids)
        self.generator_cpu = time.process_time()
        self.busy = system_busy_seconds()

    def close(self, run: Run, seconds: float) -> None:
        run.server_cpu = cpu_seconds(self.server.pids) - self.server_cpu
        run.generator_cpu = time.process_time() - self.generator_cpu
        busy = system_busy_seconds() - self.busy
        run.other_cpu = max(0.0, busy - run.server_cpu - run.generator_cpu)
        run.seconds = seconds


def ask_all(port: int, client: Client) -> list[bytes]:
    """Every request once, in order, on one persistent connection: the agreement pass."""
    assert not client.per_request
    answers: list[bytes] = []
    with client.connect(port) as sock:
        for request in client.requests:
            sock.sendall(request)
            answer = b""
            while not client.complete(answer):
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError("the server closed the connection")
                answer += chunk
            answers.append(answer)
    return answers


def run_load(
    server: Server, client: Client, connections: int, duration: float, warmup: float
) -> Run:
    """``connections`` clients, one request in flight on each.

    Timing starts once every client has had an answer and ``warmup`` has passed, and stops
    ``duration`` later; answers arriving in that window are counted, and the ones in
    flight then are collected before the connections close. Every answer, warm-up
    included, is judged (unless ``client.judge`` is None).
    """
    run = Run(server.label, connections)
    requests, judge, complete = client.requests, client.judge, client.complete
    per_request = client.per_request
    pool = len(requests)
    selector = selectors.DefaultSelector()
    socks: list[socket.socket | None] = [None] * connections
    index = [c * pool // connections for c in range(connections)]
    sent_at = [0] * connections
    buffers = [b""] * connections
    unanswered = set(range(connections))
    clock = time.perf_counter_ns

    def send_new(c: int) -> None:  # per_request: a connection for this request only
        sock = socks[c] = client.connect(server.port)
        sent_at[c] = clock()
        sock.sendall(requests[index[c]])
        sock.shutdown(socket.SHUT_WR)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, c)

    try:
        for c in range(connections):
            if per_request:
                send_new(c)
                continue
            sock = socks[c] = client.connect(server.port)
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, c)
            sent_at[c] = clock()
            sock.send(requests[index[c]])
        warm_until = clock() + int(warmup * 1e9)
        start = stop = 0
        measuring = draining = False
        open_connections = connections
        latencies = run.latencies_ns
        window = _Window(server)
        while open_connections:
            events = selector.select(10.0)
            if not events:
                raise RuntimeError(f"{server.label}: no answer for 10 s")
            for key, _ in events:
                c = key.data
                sock = socks[c]
                assert sock is not None
                data = sock.recv(65536)
                now = clock()
                if per_request:
                    if data:
                        buffers[c] += data
                        continue
                    answer, buffers[c] = buffers[c], b""
                    selector.unregister(sock)
                    sock.close()
                    socks[c] = None
                else:
                    if not data:
                        raise RuntimeError(f"{server.label} closed a connection")
                    answer = buffers[c] + data if buffers[c] else data
                    if not complete(answer):
                        buffers[c] = answer
                        continue
                    buffers[c] = b""
                i = index[c]
                if judge is not None:
                    verdict = judge(i, answer)
                    run.answers[verdict] += 1
                    if verdict == "wrong" and len(run.wrong) < 3:
                        run.wrong.append(f"request {i}: {answer!r}, expected {client.expected(i)}")
                if measuring and now >= stop:
                    window.close(run, (stop - start) / 1e9)
                    measuring, draining = False, True
                if draining:  # past the window: collect the answers in flight, then close
                    if not per_request:
                        selector.unregister(sock)
                    open_connections -= 1
                    continue
                if measuring:
                    run.requests += 1
                    latencies.append(now - sent_at[c])
                else:
                    unanswered.discard(c)
                    if not unanswered and now >= warm_until:
                        window.open()
                        start = clock()
                        stop = start + int(duration * 1e9)
                        measuring = True
                i = (i + 1) % pool
                index[c] = i
                if per_request:
                    send_new(c)
                else:
                    sent_at[c] = clock()
                    sock.send(requests[i])
    finally:
        selector.close()
        for open_sock in socks:
            if open_sock is not None:
                open_sock.close()
    return run


# --- the command line and the report ---------------------------------------------------


def add_load_arguments(parser: argparse.ArgumentParser, connections: str) -> None:
    """The options every load benchmark has: --duration, --warmup, --connections,
    --requests, --seed, --plot."""
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before each one")
    parser.add_argument("--connections", default=connections, help="comma-separated counts")
    parser.add_argument("--requests", type=int, default=8192, help="distinct requests in the pool")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="also draw throughput and p99 against connections, every server (needs the "
        "bench extra: matplotlib)",
    )


def connection_counts(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[int]:
    """--connections as integers; a usage error when it, --duration or --requests is not
    positive."""
    try:
        counts = [int(c) for c in args.connections.split(",") if c.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1 or args.duration <= 0 or args.requests < 1:
        parser.error("--connections: positive integers, --duration and --requests: positive")
    return counts


Column = tuple[str, int, Callable[[Run], str]]  # title, width, the cell of a row


def print_table(
    runs: Sequence[Run],
    *,
    first: str = "server",
    unit: str = "req/s",
    width: int = 22,
    columns: Sequence[Column] = (),
) -> None:
    """One row per server and connection count: throughput, p50 and p99, the CPU of the
    server, the generator and the rest of the machine (``*``: noisy), then ``columns``."""
    width = max(width, *(len(r.server) for r in runs))
    header = (
        f"{first:<{width}} {'conns':>5} {unit:>9} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'srv CPU':>8} {'gen CPU':>8} {'other':>6} "
        + "".join(f" {title:>{size}}" for title, size, _ in columns)
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        cells = "".join(f" {cell(run):>{size}}" for _, size, cell in columns)
        print(
            f"{run.server:<{width}} {run.connections:>5} {run.rate:>9,.0f} "
            f"{run.percentile_ms(0.50):>7.2f} {run.percentile_ms(0.99):>7.2f} "
            f"{100 * run.server_cpu / run.seconds:>7.0f}% "
            f"{100 * run.generator_cpu / run.seconds:>7.0f}% "
            f"{100 * run.other_cpu / run.seconds:>5.0f}%"
            f"{'*' if run.noisy else ' '}{cells}"
        )


def report_noise(runs: Sequence[Run], advice: str = "read those rows loosely.") -> None:
    """Say how many rows ran while other work took more than :data:`NOISY_OTHER_CPU`."""
    noisy = [r for r in runs if r.noisy]
    if noisy:
        print(
            f"NOISY (*): {len(noisy)} of {len(runs)} rows ran while other work took more than "
            f"{NOISY_OTHER_CPU:.0%} of a core;\n{advice}"
        )


def plot_runs(runs: Sequence[Run], path: Path, title: str, unit: str = "req/s") -> None:
    """``--plot``: throughput and p99 against connections, a line per server; the title
    says how many points were noisy."""
    noisy = sum(r.noisy for r in runs)
    plot_connections(
        [Point(r.server, r.connections, r.rate, r.percentile_ms(0.99)) for r in runs],
        path,
        title + (f" (NOISY: {noisy} of {len(runs)} points)" if noisy else ""),
        unit,
    )
    print(f"\nPicture: {path}")
