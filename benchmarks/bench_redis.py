"""The shared table: propagation through a real Redis, and decisions on a replica.

Starts a private ``redis-server`` on a free loopback port (its own temporary directory,
append-only file on), then measures in one run:

- propagation: a writer records a fresh address; the time until *every* replica has it,
  p50 / p99 / max over many records (target: p99 under 100 ms on loopback);
- decisions per second through ``FirstMatch(PopBeforeSmtp, LocalDomainOnly)`` with the
  same entries in a memory :class:`ExpiringIpTable` and in a :class:`ReplicaTable` that is
  following Redis meanwhile, half the clients known, half not (target: the replica within
  10 % of the memory table). Runs alternate and the best of each is kept; the machine is
  shared, so read the ratio first.

    python benchmarks/bench_redis.py [--replicas N] [--records N] [--entries N] [--quick]
"""

from __future__ import annotations

import argparse
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from relaypolicy import FirstMatch, LocalDomainOnly, Request
from relaypolicy.fleet import ReplicaTable
from relaypolicy.iptable import ExpiringIpTable
from relaypolicy.iptable.base import IpTable
from relaypolicy.policies.popbeforesmtp import PopBeforeSmtp


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    import socket

    import redis

    binary = shutil.which("redis-server", path="/usr/bin:/usr/sbin:/usr/local/bin")
    if binary is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = directory / "redis.conf"
    config.write_text(
        f'bind 127.0.0.1\nport {port}\ndir {directory}\nappendonly yes\nsave ""\n'
        f"logfile {directory / 'redis.log'}\n"
    )
    process = subprocess.Popen([binary, str(config)], stdout=subprocess.DEVNULL)
    for _ in range(500):
        try:
            redis.Redis(port=port).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.01)
    return process, f"redis://127.0.0.1:{port}/0"


def propagation(url: str, replicas: int, records: int) -> list[float]:
    writer = ReplicaTable(url)
    followers = [ReplicaTable(url) for _ in range(replicas)]
    for table in (writer, *followers):
        table.start()
        table.wait_synced()
    delays = []
    try:
        for n in range(records):
            address = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
            started = time.perf_counter()
            writer.record(address, ttl=600)
            for table in followers:
                while address not in table:
                    time.sleep(0.0001)
            delays.append(time.perf_counter() - started)
    finally:
        for table in (writer, *followers):
            table.close()
    return delays


def decisions(url: str, entries: int, requests: int, repeat: int) -> tuple[float, float]:
    rng = random.Random(7)
    known = [f"172.{16 + (n >> 16 & 15)}.{n >> 8 & 255}.{n & 255}" for n in range(entries)]
    memory = ExpiringIpTable(1800)
    writer = ReplicaTable(url)
    replica = ReplicaTable(url)
    writer.start()
    replica.start()
    replica.wait_synced()
    for address in known:
        memory.record(address)
        writer.record(address)
    while len(replica) < entries:
        time.sleep(0.01)
    batch = [
        Request(
            client_address=rng.choice(known) if n % 2 else f"198.18.{n >> 8 & 255}.{n & 255}",
            recipient="friend@elsewhere.example",
        )
        for n in range(requests)
    ]
    best = {"memory": float("inf"), "replica": float("inf")}
    tables: dict[str, IpTable] = {"memory": memory, "replica": replica}
    try:
        for _ in range(repeat):
            for name in ("memory", "replica"):
                check = FirstMatch(PopBeforeSmtp(tables[name]), LocalDomainOnly(["ours.example"]))
                decide = check.check
                started = time.perf_counter()
                for request in batch:
                    decide(request)
                best[name] = min(best[name], time.perf_counter() - started)
    finally:
        writer.close()
        replica.close()
    return requests / best["memory"], requests / best["replica"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.records, args.entries, args.requests, args.repeat = 200, 5000, 20_000, 3
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as directory:
        process, url = start_redis(Path(directory))
        try:
            delays = propagation(url, args.replicas, args.records)
            memory_rate, replica_rate = decisions(url, args.entries, args.requests, args.repeat)
        finally:
            process.kill()
            process.wait()
    delays.sort()
    p50 = statistics.median(delays) * 1e3
    p99 = delays[int(len(delays) * 0.99) - 1] * 1e3
    print(f"Python {platform.python_version()}, {platform.machine()}; Redis on loopback")
    print(f"\npropagation, writer -> all {args.replicas} replicas, {len(delays):,} records")
    print(f"{'p50 ms':>10} {'p99 ms':>10} {'max ms':>10} {'target p99':>12}")
    print(f"{p50:>10.2f} {p99:>10.2f} {delays[-1] * 1e3:>10.2f} {'< 100 ms':>12}")
    print(
        f"\ndecisions, {args.entries:,} entries, {args.requests:,} requests "
        f"(half known), best of {args.repeat}"
    )
    print(f"{'table':<22} {'decisions/s':>14} {'vs memory':>10}")
    print(f"{'memory ExpiringIpTable':<22} {memory_rate:>14,.0f} {1.0:>10.3f}")
    print(f"{'Redis ReplicaTable':<22} {replica_rate:>14,.0f} {replica_rate / memory_rate:>10.3f}")
    print("target: replica within 10 % of memory (ratio >= 0.90)")


if __name__ == "__main__":
    main()
