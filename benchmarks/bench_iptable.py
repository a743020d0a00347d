"""The POP-before-SMTP table at scale, beside cachetools.TTLCache doing the same work.

Fills an ExpiringIpTable and a TTLCache with the same N distinct client addresses (IPv4
text, as a log line or an MTA gives it), then measures in one run:

- record, amortised: N more new addresses into the full structure, while the first
  generation expires at the same rate, so every record also pays for one expiry;
- lookup hit and miss: ``table.lookup(text)`` (the live entry and its login) beside
  ``cache.get(text)``; membership, ``table.has_client(request)`` (what the policy asks,
  from a Request's parsed address) and ``text in table`` beside ``text in cache``;
- expiry of a whole generation: the clock jumps past every expiry, then ``expire()``;
- bytes per entry (tracemalloc), fed fresh strings as from a log line, so what each
  structure keeps (TTLCache keeps the string, the table an int) is counted.

Both structures get the same clock: a counter that moves one step per call, so time passes
at the same rate for both and no Python-level clock skews the numbers. TTLCache gets text
that is already canonical and does not normalise it; the table normalises what it is given.
Lookups are at random over the live entries, so at a million entries most of them miss the
CPU caches; the dict.get row is the floor that sets on this machine. Timed loops run
several times and keep the best; the machine is shared, so read the ratios first.

    python benchmarks/bench_iptable.py [--entries N] [--quick] [--seed S]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import platform
import random
import socket
import sys
import time
import tracemalloc
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from cachetools import Cache, TTLCache

from relaypolicy import Request
from relaypolicy.iptable import ExpiringIpTable

STEP = 1e-3  # seconds per clock call

TARGETS = {
    "record": (1000.0, 5.0),
    "lookup hit": (250.0, 3.0),
    "lookup miss": (250.0, 3.0),
}
MAX_BYTES = 160.0


def addresses(count: int, rng: random.Random, exclude: set[int]) -> list[str]:
    """Distinct random public-looking IPv4 addresses, as canonical text."""
    found: list[str] = []
    while len(found) < count:
        value = rng.getrandbits(32)
        if value in exclude or not 0x01000000 <= value < 0xE0000000:
            continue
        exclude.add(value)
        found.append(socket.inet_ntoa(value.to_bytes(4)))
    return found


class Ticks:
    """A clock that moves one STEP per call (C speed), and can jump forward."""

    def __init__(self) -> None:
        self._count = itertools.count(0.0, STEP)
        self.clock: Callable[[], float] = self._count.__next__

    def jump(self, steps: int) -> None:
        deque(itertools.islice(self._count, steps), maxlen=0)


def best(repeat: int, run: Callable[[], Any], operations: int) -> float:
    """The fastest of ``repeat`` runs, in ns per operation."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times) / operations * 1e9


def fresh(texts: list[str]) -> list[str]:
    """Equal strings in new objects, with no hash computed yet: what a lookup is given in
    real use (the text of a new policy request or log line), never the very object a
    structure stored as its key (which a dict finds by identity, without hashing the
    text or reading the stored key)."""
    return [(text + " ")[:-1] for text in texts]


def best_fresh(
    repeat: int, make_run: Callable[[list[str]], Callable[[], Any]], texts: list[str]
) -> float:
    """:func:`best`, each run given fresh copies of ``texts`` (made outside the timing)."""
    times = []
    for _ in range(repeat):
        run = make_run(fresh(texts))
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times) / len(texts) * 1e9


def once(run: Callable[[], Any], operations: int) -> float:
    return best(1, run, operations)


def loop(function: Callable[[Any], Any], items: list[Any]) -> Callable[[], None]:
    def run() -> None:
        for item in items:
            function(item)

    return run


def contains_loop(container: Any, items: list[Any]) -> Callable[[], None]:
    def run() -> None:
        for item in items:
            item in container  # noqa: B015 - the membership test is what is timed

    return run


class Workload:
    """The addresses and requests both structures are given."""

    def __init__(self, n: int, repeat: int, seed: int) -> None:
        rng = random.Random(seed)
        taken: set[int] = set()
        self.n = n
        self.repeat = repeat
        self.first = addresses(n, rng, taken)
        self.second = addresses(n, rng, taken)
        # Hits: entries of the second generation young enough to outlive the lookups. A
        # lookup moves the clock a step (TTLCache.get even when it misses), so all the
        # lookups together must take fewer than n/2 steps.
        probes = min(n // (8 * repeat), 200_000)
        self.hits = rng.sample(self.second[n // 2 :], probes)
        self.missing = addresses(probes, rng, taken)
        self.hit_requests = [
            Request(client_address=a, recipient="friend@aho.jp") for a in self.hits[: probes // 2]
        ]
        self.miss_requests = [
            Request(client_address=a, recipient="friend@aho.jp")
            for a in self.missing[: probes // 2]
        ]
        self.ttl = n * STEP  # one generation of records spans one ttl


def measure_table(w: Workload) -> tuple[dict[str, float], float]:
    """ExpiringIpTable's timings, and the dict.get floor measured on its dict."""
    n, repeat, hits, missing = w.n, w.repeat, w.hits, w.missing
    ticks = Ticks()
    table = ExpiringIpTable(w.ttl, clock=ticks.clock)
    record = table.record
    once(loop(record, w.first), n)
    ours = {"record": once(loop(record, w.second), n)}
    assert len(table._expiry) <= n + 2
    ours["lookup hit"] = best_fresh(repeat, lambda texts: loop(table.lookup, texts), hits)
    ours["lookup miss"] = best_fresh(repeat, lambda texts: loop(table.lookup, texts), missing)
    has_client = table.has_client
    ours["has_client hit"] = best(repeat, loop(has_client, w.hit_requests), len(w.hit_requests))
    ours["has_client miss"] = best(repeat, loop(has_client, w.miss_requests), len(w.miss_requests))
    ours["in hit"] = best_fresh(repeat, lambda texts: contains_loop(table, texts), hits)
    ours["in miss"] = best_fresh(repeat, lambda texts: contains_loop(table, texts), missing)
    assert all(table.lookup(a) is not None for a in hits[:1000])
    keys = [int.from_bytes(socket.inet_aton(a)) for a in hits]
    floor = best(repeat, loop(table._expiry.get, keys), len(keys))
    ticks.jump(4 * n)
    live = len(table._expiry)
    ours["expire"] = once(table.expire, live)
    assert len(table._expiry) == 0
    return ours, floor


def measure_cache(w: Workload) -> dict[str, float]:
    """TTLCache doing the same work: keyed by the same (canonical) text."""
    n, repeat, hits, missing = w.n, w.repeat, w.hits, w.missing
    ticks = Ticks()
    cache: TTLCache[str, str | None] = TTLCache(maxsize=4 * n, ttl=w.ttl, timer=ticks.clock)

    def put(address: str) -> None:
        cache[address] = None

    once(loop(put, w.first), n)
    theirs = {"record": once(loop(put, w.second), n)}
    assert len(cache) <= n + 2
    theirs["lookup hit"] = best_fresh(repeat, lambda texts: loop(cache.get, texts), hits)
    theirs["lookup miss"] = best_fresh(repeat, lambda texts: loop(cache.get, texts), missing)
    hit_texts = [r.client_address for r in w.hit_requests]
    miss_texts = [r.client_address for r in w.miss_requests]
    theirs["has_client hit"] = best_fresh(
        repeat, lambda texts: contains_loop(cache, texts), hit_texts
    )
    theirs["has_client miss"] = best_fresh(
        repeat, lambda texts: contains_loop(cache, texts), miss_texts
    )
    theirs["in hit"] = best_fresh(repeat, lambda texts: contains_loop(cache, texts), hits)
    theirs["in miss"] = best_fresh(repeat, lambda texts: contains_loop(cache, texts), missing)
    assert all(hit in cache for hit in hits[:1000])
    ticks.jump(4 * n)
    stored = Cache.__len__(cache)  # without expiring first, as len(cache) would
    theirs["expire"] = once(cache.expire, stored)
    assert Cache.__len__(cache) == 0
    return theirs


def measure(
    n: int, repeat: int, seed: int
) -> tuple[dict[str, tuple[float, float]], dict[str, tuple[float, float]], float]:
    w = Workload(n, repeat, seed)
    gc.collect()
    ours, floor = measure_table(w)
    gc.collect()
    theirs = measure_cache(w)
    gc.collect()
    rows = {name: (value, theirs[name]) for name, value in ours.items()}
    first = [socket.inet_aton(a) for a in w.first]
    second = [socket.inet_aton(a) for a in w.second]
    users = [f"user{i:05d}" for i in range(10_000)]
    memory = {
        "table": bytes_per_entry("table", first, second, None),
        "table, with user": bytes_per_entry("table", first, second, users),
        "TTLCache": bytes_per_entry("TTLCache", first, second, users),
    }
    return rows, memory, floor


def bytes_per_entry(
    kind: str, first: list[bytes], second: list[bytes], users: list[str] | None
) -> tuple[float, float]:
    """Memory kept per live entry: after a fresh fill, and in the steady state.

    Each record gets a fresh address string, as from a log line, so what the structure
    keeps of it counts. The steady state is after a second generation of records has
    replaced the first: dicts that have had deletions sit larger than freshly filled ones.
    """
    n = len(first)
    ntoa = socket.inet_ntoa
    names: Iterator[str | None] = itertools.cycle(users) if users else itertools.repeat(None)
    ticks = Ticks()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    record: Callable[[str, str | None], None]
    if kind == "table":
        table = ExpiringIpTable(n * STEP, clock=ticks.clock)

        def record(address: str, user: str | None) -> None:
            table.record(address, user=user)

        size: Callable[[], int] = table._expiry.__len__
    else:
        cache: TTLCache[str, str | None] = TTLCache(4 * n, n * STEP, timer=ticks.clock)
        record = cache.__setitem__
        size = cache.__len__
    results = []
    for generation in (first, second):
        for address, user in zip(generation, names, strict=False):
            record(ntoa(address), user)
        gc.collect()
        results.append((tracemalloc.get_traced_memory()[0] - before) / size())
    tracemalloc.stop()
    return results[0], results[1]


def report(
    n: int,
    rows: dict[str, tuple[float, float]],
    memory: dict[str, tuple[float, float]],
    floor: float,
) -> None:
    labels = {
        "record": "record (amortised, incl. expiry)",
        "lookup hit": "lookup hit: lookup() / get()",
        "lookup miss": "lookup miss: lookup() / get()",
        "has_client hit": "has_client(request) hit / in",
        "has_client miss": "has_client(request) miss / in",
        "in hit": "'in' hit, text",
        "in miss": "'in' miss, text",
        "expire": "expire a generation, per entry",
    }
    print(
        f"ExpiringIpTable vs cachetools.TTLCache at {n:,} live entries "
        f"(Python {platform.python_version()}, {platform.machine()})"
    )
    print(f"{'operation':36} {'table ns':>9} {'TTLCache ns':>12} {'speed-up':>9}  target")
    for name, (ours, theirs) in rows.items():
        target = ""
        if name in TARGETS:
            limit, ratio = TARGETS[name]
            met = ours <= limit and theirs / ours >= ratio
            target = f"<= {limit:.0f} ns, >= {ratio:.0f}x: {'met' if met else 'MISSED'}"
        print(f"{labels[name]:36} {ours:9.0f} {theirs:12.0f} {theirs / ours:8.1f}x  {target}")
    print(f"{'floor: dict.get of an int key':36} {floor:9.0f}")
    print(f"{'bytes per live entry':36} {'table':>9} {'TTLCache':>12}")
    for name, label in (("table", "no login name"), ("table, with user", "with a login name")):
        for state, phase in ((0, "fresh fill"), (1, "steady state")):
            ours, theirs = memory[name][state], memory["TTLCache"][state]
            verdict = "met" if ours <= MAX_BYTES else "MISSED"
            print(
                f"{'  ' + label + ', ' + phase:36} {ours:9.0f} {theirs:12.0f}"
                f" {theirs / ours:8.1f}x  <= {MAX_BYTES:.0f}: {verdict}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100,000 entries, fewer repeats")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    n = 100_000 if args.quick else args.entries
    repeat = 1 if args.quick else args.repeat
    if n < 1000:
        parser.error("--entries: at least 1000")
    started = time.perf_counter()
    rows, memory, floor = measure(n, repeat, args.seed)
    report(n, rows, memory, floor)
    print(f"(ran in {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
