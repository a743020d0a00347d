"""Parsing a mail log for Dovecot logins, beside the classic Perl loop doing the same.

Writes a mixed mail log (default 1,000,000 lines, classic syslog framing): about 5%
Dovecot logins (IPv4, and some IPv4-mapped IPv6 as a dual-stack listener logs them),
Dovecot logouts and failed logins, and Postfix smtpd, cleanup, qmgr and smtp lines,
among them ``NOQUEUE: reject`` lines whose envelope sender is a crafted Dovecot login
sentence (which neither side may count). Then, in the same run, over the same file:

- relaypolicy's :class:`~relaypolicy.watch.DovecotParser`, three ways, each timed from
  opening the file to the last ``LoginEvent`` (epoch time, canonical address, user)
  built and counted:

  - ``parse(line)``: the file opened in text mode (UTF-8, ``errors="replace"``),
    iterated line by line, ``parser.parse(line)`` for each;
  - ``parse_lines(file)``: the same file object handed to ``parse_lines``;
  - ``parse_block``: the file read as :class:`~relaypolicy.watch.LogFollower` reads
    it: ``os.read`` of 64 KiB at a time (its read size), each read cut after its last
    newline (the rest waits for the next read) and decoded as UTF-8 with
    ``errors="replace"`` into one string, then ``parser.parse_block(text)``;
- the pop-before-smtp daemon's Dovecot pattern (pop-before-smtp-conf.pl, 1.4x, "For
  Dovecot POP3/IMAP when using syslog", with its default ``[LOGTIME]``)::

      $pat = '^[LOGTIME] \\S+ (?:dovecot: )?(?:imap|pop3)-login: ' .
          'Login: .*? (?:\\[|rip=)[:f]*(\\d+\\.\\d+\\.\\d+\\.\\d+)[],]';
      $logtime_pat = '(\\w\\w\\w +\\d+ \\d+:\\d+:\\d+)';

  run as a ``perl -ne`` one-liner that counts the lines it matches (it only matches;
  it builds nothing). Its time is the whole command: starting perl (printed apart,
  for scale), reading the file line by line, matching every line.

All counts must agree, and (untimed) the events of ``parse_block`` must equal those of
``parse_lines``. Each timed run is repeated and the best kept; the machine is shared,
so read the ratio first; the runs take turns.

    python benchmarks/bench_watch_parse.py [--lines N] [--repeat R] [--keep PATH]
"""

from __future__ import annotations

import argparse
import codecs
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from relaypolicy.watch import DovecotParser, LoginEvent

PERL_REGEX = (
    r"^(\w\w\w +\d+ \d+:\d+:\d+) \S+ (?:dovecot: )?(?:imap|pop3)-login: "
    r"Login: .*? (?:\[|rip=)[:f]*(\d+\.\d+\.\d+\.\d+)[],]"
)
PERL_PROGRAM = f"$n++ if /{PERL_REGEX}/; END {{ print $n + 0, qq(\\n) }}"

READ_SIZE = 64 * 1024  # LogFollower's os.read size
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def write_log(path: Path, lines: int, seed: int) -> int:
    """Write the mixed log; return how many Dovecot logins it holds."""
    rng = random.Random(seed)
    clients = [f"203.0.{rng.randrange(113, 116)}.{rng.randrange(1, 255)}" for _ in range(2000)]
    users = [f"user{i}@example.org" for i in range(3000)]
    relays = [f"198.51.100.{i}" for i in range(1, 255)]
    start = time.time() - 86400.0
    step = 86400.0 / lines
    logins = 0
    with path.open("w", encoding="utf-8") as out:
        for i in range(lines):
            moment = time.localtime(start + i * step)
            stamp = (
                f"{MONTHS[moment.tm_mon - 1]} {moment.tm_mday:2d} "
                f"{moment.tm_hour:02d}:{moment.tm_min:02d}:{moment.tm_sec:02d} mail "
            )
            roll = rng.random()
            client = rng.choice(clients)
            user = rng.choice(users)
            pid = rng.randrange(1000, 99999)
            queue_id = f"{rng.getrandbits(40):010X}"
            if roll < 0.05:
                logins += 1
                service = "imap" if rng.random() < 0.7 else "pop3"
                rip = client if rng.random() < 0.9 else f"::ffff:{client}"
                line = (
                    f"dovecot: {service}-login: Login: user=<{user}>, method=PLAIN, "
                    f"rip={rip}, lip=192.0.2.1, mpid={pid}, TLS, session=<{queue_id}Ab/AAAB>"
                )
            elif roll < 0.12:
                line = (
                    f"dovecot: imap({user})<{pid}><{queue_id}Ab/AAAB>: Logged out "
                    f"in={rng.randrange(9999)} out={rng.randrange(99999)} deleted=0 expunged=0"
                )
            elif roll < 0.14:
                line = (
                    "dovecot: imap-login: Disconnected: Aborted login by logging out "
                    f"(auth failed, 1 attempts in 2 secs): user=<{user}>, method=PLAIN, "
                    f"rip={client}, lip=192.0.2.1, TLS, session=<{queue_id}Ab/AAAB>"
                )
            elif roll < 0.141:
                line = (
                    f"postfix/smtpd[{pid}]: NOQUEUE: reject: RCPT from unknown[{client}]: "
                    f"554 5.7.1 <x@aho.jp>: Relay access denied; from=<imap-login: Login: "
                    "user=<x>, method=PLAIN, rip=6.6.6.6, lip=1.2.3.4> to=<x@aho.jp> "
                    "proto=ESMTP helo=<[6.6.6.6]>"
                )
            elif roll < 0.35:
                line = f"postfix/smtpd[{pid}]: connect from unknown[{rng.choice(relays)}]"
            elif roll < 0.55:
                line = (
                    f"postfix/smtpd[{pid}]: disconnect from unknown[{rng.choice(relays)}] "
                    "ehlo=2 starttls=1 mail=1 rcpt=1 data=1 quit=1 commands=7"
                )
            elif roll < 0.65:
                line = f"postfix/smtpd[{pid}]: {queue_id}: client=unknown[{rng.choice(relays)}]"
            elif roll < 0.75:
                line = (
                    f"postfix/cleanup[{pid}]: {queue_id}: "
                    f"message-id=<{rng.getrandbits(64):x}@example.net>"
                )
            elif roll < 0.85:
                line = (
                    f"postfix/qmgr[{pid}]: {queue_id}: from=<{user}>, "
                    f"size={rng.randrange(1000, 99999)}, nrcpt=1 (queue active)"
                )
            else:
                line = (
                    f"postfix/smtp[{pid}]: {queue_id}: to=<friend@aho.jp>, "
                    f"relay=mx.aho.jp[{rng.choice(relays)}]:25, delay=0.4, "
                    "delays=0.1/0/0.1/0.2, dsn=2.0.0, status=sent (250 2.0.0 Ok)"
                )
            out.write(stamp + line + "\n")
    return logins


def best_of(repeat: int, runs: list[Callable[[], int]]) -> list[tuple[float, int]]:
    """For each run, the shortest wall time of ``repeat`` and what it returned. The runs
    take turns, so that a busy moment on a shared machine hits them all alike."""
    best = [(float("inf"), -1)] * len(runs)
    for _ in range(repeat):
        for index, run in enumerate(runs):
            started = time.perf_counter()
            result = run()
            best[index] = (min(best[index][0], time.perf_counter() - started), result)
    return best


def python_per_line(path: Path) -> int:
    parse = DovecotParser().parse
    found = 0
    with path.open(encoding="utf-8", errors="replace") as log:
        for line in log:
            if parse(line) is not None:
                found += 1
    return found


def python_parse_lines(path: Path) -> int:
    with path.open(encoding="utf-8", errors="replace") as log:
        return sum(1 for _ in DovecotParser().parse_lines(log))


def read_blocks(path: Path) -> Iterator[str]:
    """The file's complete lines, one decoded string per read, as LogFollower reads."""
    decode = codecs.utf_8_decode
    fd = os.open(path, os.O_RDONLY)
    try:
        carry = b""
        while chunk := os.read(fd, READ_SIZE):
            cut = chunk.rfind(b"\n") + 1
            if cut == 0:
                carry += chunk
                continue
            view = memoryview(chunk)
            yield decode(carry + view[:cut] if carry else view[:cut], "replace", True)[0]
            carry = chunk[cut:]
    finally:
        os.close(fd)
    # A last line without its newline waits for the rest of it, as in the follower.


def python_parse_block(path: Path) -> int:
    parser, found = DovecotParser(), 0
    for text in read_blocks(path):
        for _ in parser.parse_block(text):
            found += 1
    return found


def same_events(path: Path) -> bool:
    """Whether parse_block, over the blocks read as above, gives parse_lines' events."""
    blocks: list[LoginEvent] = []
    parser = DovecotParser()
    for text in read_blocks(path):
        blocks.extend(parser.parse_block(text))
    with path.open(encoding="utf-8", errors="replace") as log:
        return blocks == list(DovecotParser(framing=parser.framing).parse_lines(log))


def perl_start(perl: str) -> int:
    subprocess.run([perl, "-e", "1"], check=True)
    return 0


def perl_count(perl: str, path: Path) -> int:
    done = subprocess.run(
        [perl, "-ne", PERL_PROGRAM, str(path)], check=True, capture_output=True, text=True
    )
    return int(done.stdout.strip())


def main(argv: list[str] | None = None) -> int:
    options = argparse.ArgumentParser(
        description="Parse a mail log for Dovecot logins, beside Perl."
    )
    options.add_argument("--lines", type=int, default=1_000_000)
    options.add_argument("--repeat", type=int, default=3)
    options.add_argument("--seed", type=int, default=6)
    options.add_argument("--keep", type=Path, help="write the log here and keep it")
    args = options.parse_args(argv)
    perl = shutil.which("perl")
    if perl is None:
        print("perl not found: cannot run the comparison", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as scratch:
        path = args.keep if args.keep is not None else Path(scratch) / "mail.log"
        expected = write_log(path, args.lines, args.seed)
        size = os.path.getsize(path)
        print(f"{args.lines:,} lines, {size / 1e6:.1f} MB, {expected:,} Dovecot logins")
        print(f"Python {platform.python_version()}, {platform.machine()}; best of {args.repeat}")
        runs: list[tuple[str, Callable[[], int]]] = [
            ("relaypolicy parse(line)", lambda: python_per_line(path)),
            ("relaypolicy parse_lines(file)", lambda: python_parse_lines(path)),
            ("relaypolicy parse_block(64 KiB reads)", lambda: python_parse_block(path)),
            ("perl -ne (pop-before-smtp regex)", lambda: perl_count(perl, path)),
        ]
        timed = best_of(args.repeat, [run for _, run in runs] + [lambda: perl_start(perl)])
        rows = [(label, *result) for (label, _), result in zip(runs, timed, strict=False)]
        startup = timed[-1][0]
        agree = same_events(path)
    perl_seconds = rows[-1][1]
    print(f"{'':38} {'seconds':>8} {'lines/s':>12} {'logins':>8} {'vs perl':>8}")
    for label, seconds, found in rows:
        print(
            f"{label:38} {seconds:8.3f} {args.lines / seconds:12,.0f} {found:8,} "
            f"{perl_seconds / seconds:7.2f}x"
        )
    print(f"(perl start-up alone, included above: {startup:.3f} s)")
    counts = {found for _, _, found in rows}
    if counts != {expected}:
        print(f"MISMATCH: expected {expected} logins, got {sorted(counts)}", file=sys.stderr)
        return 1
    if not agree:
        print("MISMATCH: parse_block and parse_lines gave different events", file=sys.stderr)
        return 1
    print("parse_block gave the same events as parse_lines")
    fastest_python = min(seconds for _, seconds, _ in rows[:-1])
    verdict = "met" if fastest_python <= perl_seconds else "NOT met"
    print(f"target (at least as fast as the Perl loop): {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
