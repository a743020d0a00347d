"""``python -m relaypolicy.testing.fuzz``: run the targets, print the score, exit 1 on a
finding."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from relaypolicy.testing.fuzz.codec import CodecTarget
from relaypolicy.testing.fuzz.engine import (
    EXCEPTION,
    HANG,
    ORACLE,
    UNSAFE_ACCEPT,
    EngineUnavailable,
    Report,
    Target,
    Watchdog,
    run_hypothesis,
    run_random,
)
from relaypolicy.testing.fuzz.loader import LoaderTarget
from relaypolicy.testing.fuzz.logs import ParserTarget
from relaypolicy.testing.fuzz.relay import RequestTarget

__all__ = ["TARGETS", "main", "make_target", "print_reports", "save_reproducers"]


# A registry of targets of different input types: Any is the honest element type.
TARGETS: dict[str, tuple[Callable[[], Target[Any]], str]] = {
    "request": (RequestTarget, "fuzzed requests through the policies, chains and recipes"),
    "codec": (CodecTarget, "bytes into the Postfix policy protocol codec"),
    "parsers": (ParserTarget, "log text through every login parser, per line and per block"),
    "loader": (LoaderTarget, "bytes as a saved IP table file"),
}


def make_target(name: str) -> Target[Any]:
    """A fresh target by name (one of :data:`TARGETS`)."""
    return TARGETS[name][0]()


def _parser() -> argparse.ArgumentParser:
    listed = "\n".join(f"  {name:<8} {about}" for name, (_, about) in TARGETS.items())
    parser = argparse.ArgumentParser(
        prog="python -m relaypolicy.testing.fuzz",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Fuzz relaypolicy: feed each target random and mutated inputs and check that "
            "no exception escapes, no input hangs, no relay is accepted that should not be, "
            "and the target's own rules hold. Prints a table per target and each finding "
            "with a reproducer (the repr of the input). Exit status: 0 no finding, 1 "
            "findings, 2 a bad command line or Hypothesis missing for its engine, 3 an "
            "input hung for good (--exit-after).",
            88,
        ),
        epilog=f"targets:\n{listed}\n\nexample: python -m relaypolicy.testing.fuzz "
        "--target request --inputs 1000000 --seed 7   (see docs/testing.md)",
    )
    parser.add_argument(
        "--target",
        action="append",
        choices=list(TARGETS),
        metavar="NAME",
        help=f"a target to run, repeatable (default: all of {', '.join(TARGETS)})",
    )
    parser.add_argument(
        "--inputs",
        type=_positive_int,
        default=10_000,
        metavar="N",
        help="inputs per target and engine (default 10000)",
    )
    parser.add_argument(
        "--engine",
        choices=["random", "hypothesis", "both"],
        default="random",
        help="random: seeded mutations, fast; hypothesis: structured examples (needs "
        "Hypothesis); both (default: random)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the seed of both engines (default 0)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        metavar="S",
        help="stop each target and engine after S seconds, whatever --inputs says",
    )
    parser.add_argument(
        "--hang-seconds",
        type=float,
        default=1.0,
        metavar="S",
        help="an input that takes longer is a hang (default 1)",
    )
    parser.add_argument(
        "--exit-after",
        type=float,
        default=60.0,
        metavar="S",
        help="end the run (status 3) when one input has run S seconds (default 60)",
    )
    parser.add_argument(
        "--show",
        type=_positive_int,
        default=10,
        metavar="N",
        help="print the first N findings of each target (default 10)",
    )
    parser.add_argument(
        "--save",
        metavar="DIR",
        help="also write the whole repr of each finding's input to DIR/TARGET-ENGINE-N.repr "
        "(the printed one is cut after 4000 characters)",
    )
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


COLUMNS = (
    "target",
    "engine",
    "inputs",
    "exceptions",
    "hangs",
    "unsafe accepts",
    "other",
    "inputs/s",
    "seconds",
)


def print_reports(reports: Sequence[Report], out: TextIO, show: int = 10) -> None:
    """The table, then each report's first ``show`` findings."""
    rows = [COLUMNS] + [
        (
            report.target,
            report.engine,
            f"{report.inputs:,}",
            f"{report.counts[EXCEPTION]:,}",
            f"{report.counts[HANG]:,}",
            f"{report.counts[UNSAFE_ACCEPT]:,}",
            f"{report.counts[ORACLE]:,}",
            f"{report.rate:,.0f}",
            f"{report.seconds:.1f}",
        )
        for report in reports
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(COLUMNS))]
    for row in rows:
        cells = [
            cell.ljust(width) if column < 2 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip(), file=out)
    for report in reports:
        findings = list(report.findings.values())
        if not findings:
            continue
        print(
            f"\n{report.target}/{report.engine}: {report.total:,} findings, "
            f"{len(findings)} distinct",
            file=out,
        )
        for finding in findings[:show]:
            print(finding.describe(), file=out)


def save_reproducers(reports: Sequence[Report], directory: str) -> list[str]:
    """Write each finding's whole input (its ``repr``) to a file in ``directory``; the
    paths written."""
    os.makedirs(directory, exist_ok=True)
    written = []
    for report in reports:
        for number, finding in enumerate(report.findings.values(), start=1):
            path = os.path.join(directory, f"{report.target}-{report.engine}-{number}.repr")
            with open(path, "w", encoding="utf-8", errors="backslashreplace") as file:
                file.write(f"# {finding.kind}: {finding.rule}\n{finding.reproducer}\n")
            written.append(path)
    return written


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; the exit status."""
    out = out if out is not None else sys.stdout
    options = _parser().parse_args(argv)
    names = list(dict.fromkeys(options.target or TARGETS))
    engines = {
        "random": [run_random],
        "hypothesis": [run_hypothesis],
        "both": [run_random, run_hypothesis],
    }[options.engine]
    reports = []
    with Watchdog(options.hang_seconds, exit_after=options.exit_after) as watchdog:
        for name in names:
            target = make_target(name)
            for engine in engines:
                try:
                    report = engine(
                        target,
                        inputs=options.inputs,
                        seed=options.seed,
                        max_seconds=options.max_seconds,
                        hang_seconds=options.hang_seconds,
                        watchdog=watchdog,
                    )
                except EngineUnavailable as exc:
                    print(f"fuzz: {exc}", file=sys.stderr)
                    return 2
                reports.append(report)
                print(
                    f"fuzz: {name}/{report.engine}: {report.inputs:,} inputs, "
                    f"{report.total:,} findings, {report.seconds:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
    print_reports(reports, out, options.show)
    if options.save:
        save_reproducers(reports, options.save)
    return 1 if any(report.total for report in reports) else 0
