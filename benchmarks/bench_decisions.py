"""Relay-check throughput: fresh Requests from raw strings through a typical chain.

Prints decisions per second for ``FirstMatch(TrustedNetworks, LocalDomainOnly)`` deciding
100,000 distinct recipients (a mix of local, relay-domain, foreign, routed and malformed
ones, from a pool of client addresses as an MTA sees them), beside the CPython floor
measured in the same run: one function call doing one frozenset lookup per item. The
machine is shared and noisy, so compare the ratio, not the absolute numbers.

    python benchmarks/bench_decisions.py [--recipients N] [--repeat R] [--seed S]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from relaypolicy import FirstMatch, LocalDomainOnly, Request, TrustedNetworks, Verdict
from relaypolicy.address import parse_address

LOCAL = ["example.org", "mail.example.org", "xn--r8jz45g.jp", "example.net"]
RELAY = ["backup.example", "customer.example"]
TRUSTED = ["192.0.2.0/24", "10.0.0.0/8", "2001:db8::/48"]


def make_workload(count: int, seed: int) -> list[tuple[str, str]]:
    """(client_address, recipient) pairs; recipients are all distinct."""
    rng = random.Random(seed)
    foreign = [
        f"{rng.choice(['mx', 'mail', 'smtp', ''])}{i}.example{i % 7}.com" for i in range(2000)
    ]
    clients = [f"203.0.{rng.randrange(256)}.{rng.randrange(1, 255)}" for _ in range(4000)]
    clients += [
        f"2001:db8:{rng.randrange(1 << 16):x}::{rng.randrange(1 << 16):x}" for _ in range(500)
    ]
    clients += [f"192.0.2.{i}" for i in range(1, 50)] + [f"10.1.{i}.1" for i in range(50)]
    pairs: list[tuple[str, str]] = []
    for i in range(count):
        user = f"{rng.choice(['taro', 'hanako', 'saya.yomogi', 'info', 'sales+x'])}{i}"
        roll = rng.random()
        if roll < 0.50:
            recipient = f"{user}@{rng.choice(LOCAL)}"
        elif roll < 0.60:
            recipient = f"{user}@{rng.choice(['mx1.', 'mx2.', ''])}{rng.choice(RELAY)}"
        elif roll < 0.90:
            recipient = f"{user}@{rng.choice(foreign)}"
        elif roll < 0.95:
            recipient = rng.choice(
                [
                    f"{user}%aho.jp@example.org",
                    f"aho.jp!{user}@example.org",
                    f'"{user}@aho.jp"@example.org',
                    f"<@relay.example:{user}@example.org>",
                ]
            )
        elif roll < 0.98:
            recipient = f"{user}@例え.jp"
        else:
            recipient = rng.choice([f"{user}@", f"{user} x@example.org", f"{user}@a..b"])
        pairs.append((rng.choice(clients), recipient))
    assert len({r for _, r in pairs}) == count
    return pairs


def time_decisions(policy: FirstMatch, pairs: list[tuple[str, str]]) -> tuple[float, int]:
    accepted = 0
    check = policy.check
    accept = Verdict.ACCEPT
    start = time.perf_counter()
    for client, recipient in pairs:
        if check(Request(client_address=client, recipient=recipient)).verdict is accept:
            accepted += 1
    return time.perf_counter() - start, accepted


def time_floor(pairs: list[tuple[str, str]]) -> float:
    domains = frozenset(LOCAL)

    def lookup(item: str) -> bool:
        return item in domains

    start = time.perf_counter()
    for _, recipient in pairs:
        lookup(recipient)
    return time.perf_counter() - start


def time_stage(fn: Callable[[str], object], items: list[str]) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()

    pairs = make_workload(args.recipients, args.seed)
    policy = FirstMatch(TrustedNetworks(TRUSTED), LocalDomainOnly(LOCAL, relay_domains=RELAY))
    n = len(pairs)

    cold, accepted = time_decisions(policy, pairs)  # first pass: address and domain caches cold
    warm = min(time_decisions(policy, pairs)[0] for _ in range(args.repeat))
    floor = min(time_floor(pairs) for _ in range(args.repeat))
    parse = min(time_stage(parse_address, [r for _, r in pairs]) for _ in range(args.repeat))

    rows = [
        ("floor: call + frozenset lookup", floor),
        ("parse_address only", parse),
        ("Request + chain, first pass (cold caches)", cold),
        ("Request + chain, best of repeats", warm),
    ]
    print(f"{n:,} distinct recipients, {accepted:,} accepted; best of {args.repeat} runs\n")
    print(f"{'what':<44} {'ns/op':>8} {'ops/s':>12} {'x floor':>8}")
    print("-" * 75)
    for name, seconds in rows:
        per = seconds / n
        print(f"{name:<44} {per * 1e9:>8.0f} {1 / per:>12,.0f} {seconds / floor:>8.1f}")


if __name__ == "__main__":
    main()
