"""``relaypolicy test SCENARIOS... --config FILE``: run scenario files against a configuration.

Exit status: 0 every case passed, 1 one did not, 64 a command line that cannot be used,
66 a configuration or scenario file that cannot be read, 78 one that cannot be used.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from relaypolicy.cli._common import EX_CONFIG, EX_NOINPUT, EX_USAGE, error, file_status
from relaypolicy.config import ConfigError, load_config
from relaypolicy.testing.report import write_junit
from relaypolicy.testing.scenarios import (
    ScenarioError,
    junit_cases,
    load_scenarios,
    results_table,
    run_scenarios,
)

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``test`` to a ``add_subparsers()`` object; the new parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "test",
        help="run scenario files against a configuration",
        description="Run every case of the scenario files (TOML: a request and the "
        "expected decision) against the policy the configuration describes, and print a "
        "table: case, expected, got, deciding policy, reason. Exit status 0 when every "
        "case passes, 1 when one does not, 64 for a command line, 66 for a file that "
        "cannot be read, 78 for one that cannot be used.",
        epilog="example: relaypolicy test examples/mx.scenarios.toml --config "
        "examples/mx.toml  (see docs/testing.md)",
    )
    parser.add_argument("scenarios", nargs="+", metavar="SCENARIOS", help="scenario files")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="the TOML configuration (default: the file's own `config` key)",
    )
    parser.add_argument("--junit-xml", metavar="FILE", help="also write JUnit XML for CI")
    parser.add_argument(
        "--failures-only", action="store_true", help="print only the cases that fail"
    )
    return parser


def run(args: argparse.Namespace) -> int:

    junit = []
    failed = total = 0
    for number, path in enumerate(args.scenarios):
        config_path = None
        try:
            scenarios = load_scenarios(path)
            config_path = args.config or scenarios.config
            if config_path is None:
                return error(
                    "test", f"{path}: give --config (the file has no `config` key)", EX_USAGE
                )
            config = load_config(config_path)
            results = run_scenarios(scenarios.cases, config)
        except (ScenarioError, ConfigError) as exc:
            message = str(exc) if str(exc).startswith(path) else f"{path}: {exc}"
            unread = file_status(path) == EX_NOINPUT or (
                isinstance(exc, ConfigError) and file_status(config_path) == EX_NOINPUT
            )
            return error("test", message, EX_NOINPUT if unread else EX_CONFIG)
        except (OSError, ValueError) as exc:  # a table file, a bad value
            return error("test", f"{path}: {exc}", EX_CONFIG)
        if number:
            print()
        print(f"{path} against {config.source}")
        shown = [r for r in results if not r.passed] if args.failures_only else results
        if shown:
            print(results_table(shown))
        bad = sum(not result.passed for result in results)
        print(
            f"{len(results)} cases: {len(results) - bad} passed"
            + (f", {bad} FAILED" if bad else "")
        )
        failed += bad
        total += len(results)
        junit += junit_cases(results, Path(path).name)
    if len(args.scenarios) > 1:
        print(f"\nall files: {total} cases, {failed} failed")
    if args.junit_xml:
        try:
            write_junit(args.junit_xml, "relaypolicy test", junit)
        except OSError as exc:
            return error("test", f"--junit-xml: {exc}", EX_USAGE)
    return 1 if failed else 0
