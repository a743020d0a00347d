"""Scenario files: requests and the decisions a configuration must give them.

A scenario file is TOML: an optional ``config`` (the configuration to test, relative to
the scenario file), an optional ``[defaults]`` table of request fields, and a list of
``[[case]]`` tables. A case is a request, in Postfix's attribute names (``client_address``,
``recipient``, ``sender``, ``sasl_username``, ``encryption_protocol``, ``server_port``,
``ccert_fingerprint``...), plus:

- ``name``: what the case shows (required, unique);
- ``expect``: ``accept``, ``reject``, ``defer``, ``next``, or a reply such as
  ``554 5.7.1`` (required; see :class:`~relaypolicy.testing.assertions.Expectation`);
- ``pop_login_ago``: the client logged in to POP3/IMAP that many seconds ago
  (POP-before-SMTP); ``pop_user``: as whom.

Every case runs against a fresh policy with an empty POP-before-SMTP table on a fake
clock, so cases never depend on each other or on the time of day. Errors name the file,
the case and the key: ``mx.scenarios.toml: case 3 ("relay from outside"): expect: ...``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from relaypolicy.config import Config, ConfigError, read_toml
from relaypolicy.errors import ScenarioError
from relaypolicy.iptable import ExpiringIpTable
from relaypolicy.model import Decision, Request
from relaypolicy.testing.assertions import DEFAULT_CLIENT, Expectation, describe_decision
from relaypolicy.testing.clock import FakeClock
from relaypolicy.testing.report import JUnitCase, format_table

__all__ = [
    "CaseResult",
    "Scenario",
    "ScenarioError",
    "ScenarioFile",
    "load_scenarios",
    "parse_scenarios",
    "results_table",
    "run_scenarios",
]

_STRING_FIELDS = (
    "client_address",
    "recipient",
    "sender",
    "helo_name",
    "client_name",
    "server_address",
    "sasl_method",
    "sasl_username",
    "encryption_protocol",
    "encryption_cipher",
    "ccert_subject",
    "ccert_fingerprint",
    "ccert_pubkey_fingerprint",
)
_PORT_FIELDS = ("client_port", "server_port")
_REQUEST_KEYS = frozenset(_STRING_FIELDS + _PORT_FIELDS)
_CASE_KEYS = _REQUEST_KEYS | {"name", "expect", "pop_login_ago", "pop_user"}
_DEFAULT_KEYS = _REQUEST_KEYS | {"pop_user"}


class Scenario(NamedTuple):
    """One case: a request, what the policy must answer, and the POP login before it."""

    name: str
    expect: Expectation
    request: Request
    pop_login_ago: float | None = None
    pop_user: str | None = None


class ScenarioFile(NamedTuple):
    """A loaded scenario file: where it is, the configuration it names, its cases."""

    source: str
    config: Path | None
    cases: tuple[Scenario, ...]


class CaseResult(NamedTuple):
    """A case and the decision it got."""

    case: Scenario
    decision: Decision

    @property
    def passed(self) -> bool:
        return self.case.expect.matches(self.decision)


def load_scenarios(path: str | Path) -> ScenarioFile:
    """Read and check a scenario file; :class:`ScenarioError` names what is wrong."""
    source = str(path)
    try:
        data = read_toml(path)
    except ConfigError as exc:
        raise ScenarioError(str(exc)) from None
    scenarios = parse_scenarios(data, source=source)
    if scenarios.config is not None and not scenarios.config.is_absolute():
        config = Path(path).parent / scenarios.config
        return scenarios._replace(config=config)
    return scenarios


def parse_scenarios(data: Mapping[str, Any], *, source: str = "<scenarios>") -> ScenarioFile:
    """Check an already-parsed scenario document."""
    unknown = sorted(set(data) - {"config", "defaults", "case"})
    if unknown:
        raise ScenarioError(
            f"{source}: {unknown[0]}: unknown key (expected config, defaults or [[case]])"
        )
    config = data.get("config")
    if config is not None and not isinstance(config, str):
        raise ScenarioError(f"{source}: config: expected a file path, got {config!r}")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ScenarioError(f"{source}: defaults: expected a table, got {defaults!r}")
    for key in sorted(defaults):
        if key not in _DEFAULT_KEYS:
            raise ScenarioError(f"{source}: defaults.{key}: unknown key{_hint(key)}")
        _check_value(key, defaults[key], f"{source}: defaults.{key}")
    cases = data.get("case")
    if not isinstance(cases, list) or not cases:
        raise ScenarioError(f"{source}: expected at least one [[case]] table")
    parsed: list[Scenario] = []
    seen: dict[str, int] = {}
    for number, table in enumerate(cases, 1):
        case = _parse_case(table, defaults, f"{source}: case {number}")
        if case.name in seen:
            raise ScenarioError(
                f"{source}: case {number} ({case.name!r}): name: the same name as "
                f"case {seen[case.name]}"
            )
        seen[case.name] = number
        parsed.append(case)
    return ScenarioFile(source, Path(config) if config else None, tuple(parsed))


def _hint(key: str) -> str:
    close = [name for name in sorted(_CASE_KEYS) if key.replace("-", "_") == name]
    if close:
        return f" (did you mean {close[0]}?)"
    return f" (expected one of {', '.join(sorted(_CASE_KEYS))})"


def _check_value(key: str, value: Any, where: str) -> None:
    if key in _PORT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
            raise ScenarioError(f"{where}: expected a port number, got {value!r}")
    elif key == "pop_login_ago":
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ScenarioError(f"{where}: expected seconds (0 or more), got {value!r}")
    elif not isinstance(value, str):
        raise ScenarioError(f"{where}: expected a string, got {type(value).__name__} {value!r}")


def _parse_case(table: Any, defaults: Mapping[str, Any], where: str) -> Scenario:
    if not isinstance(table, dict):
        raise ScenarioError(f"{where}: expected a table, got {table!r}")
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ScenarioError(f"{where}: name: expected a non-empty string, got {name!r}")
    where = f"{where} ({name!r})"
    for key in sorted(table):
        if key not in _CASE_KEYS:
            raise ScenarioError(f"{where}: {key}: unknown key{_hint(key)}")
        if key != "name":
            _check_value(key, table[key], f"{where}: {key}")
    if "expect" not in table:
        raise ScenarioError(f"{where}: expect: missing (accept, reject, defer, next or a reply)")
    try:
        expect = Expectation.parse(table["expect"])
    except ValueError as exc:
        raise ScenarioError(f"{where}: expect: {exc}") from None
    merged = {**defaults, **table}
    fields = {key: merged[key] for key in _REQUEST_KEYS if key in merged}
    fields.setdefault("client_address", DEFAULT_CLIENT)
    if "recipient" not in fields:
        raise ScenarioError(f"{where}: recipient: missing (give it in the case or in defaults)")
    try:
        request = Request(**fields)
    except (ValueError, TypeError) as exc:
        raise ScenarioError(f"{where}: {exc}") from None  # the message names the field
    pop_login_ago = merged.get("pop_login_ago")
    pop_user = merged.get("pop_user")
    if pop_user is not None and pop_login_ago is None and "pop_user" in table:
        raise ScenarioError(f"{where}: pop_user: needs pop_login_ago (when did they log in?)")
    return Scenario(
        name=name,
        expect=expect,
        request=request,
        pop_login_ago=float(pop_login_ago) if pop_login_ago is not None else None,
        pop_user=pop_user or None,
    )


def run_scenarios(cases: Sequence[Scenario], config: Config) -> list[CaseResult]:
    """Run every case against the policy ``config`` describes, each with a fresh table.

    Raises :class:`ScenarioError` for a case that needs POP-before-SMTP when the
    configuration has none.
    """
    results = []
    for number, case in enumerate(cases, 1):
        clock = FakeClock()
        table = None
        if config.pop is not None:
            table = ExpiringIpTable(
                config.pop.ttl,
                clock=clock,
                max_entries=config.pop.max_entries,
                ipv6_prefix=config.pop.ipv6_prefix,
            )
        if case.pop_login_ago is not None:
            if table is None:
                raise ScenarioError(
                    f"case {number} ({case.name!r}): pop_login_ago: the configuration "
                    f"{config.source} has no [pop_before_smtp] table"
                )
            table.record(case.request.client_address, user=case.pop_user)
            clock.advance(case.pop_login_ago)
        policy = config.build_policy(table)
        results.append(CaseResult(case, policy.check(case.request)))
    return results


def results_table(results: Sequence[CaseResult]) -> str:
    """The table ``relaypolicy test`` prints: case, expected, got, policy, reason."""
    rows = [
        (
            "ok" if result.passed else "FAIL",
            result.case.name,
            str(result.case.expect),
            str(result.decision) or result.decision.verdict.name,
            result.decision.policy,
            result.decision.reason,
        )
        for result in results
    ]
    return format_table(("", "case", "expected", "got", "policy", "reason"), rows)


def junit_cases(results: Sequence[CaseResult], classname: str) -> list[JUnitCase]:
    """The results as JUnit test cases (a failure says expected and got)."""
    cases = []
    for result in results:
        request = result.case.request
        details = f"request: {request!r}\ndecision: {describe_decision(result.decision)}"
        failure = None
        if not result.passed:
            failure = f"expected {result.case.expect}, got {describe_decision(result.decision)}"
        cases.append(JUnitCase(result.case.name, classname, failure, details))
    return cases
