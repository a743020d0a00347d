"""Which name a decision carries: the step for a configuration, the class for Python.

The rule (docs/api.md, ``Decision``): a policy built from a configuration is named after
its chain step, a chain after its key (``chain``, ``chain.ports.587``); a policy built in
Python keeps its class name unless given ``name=``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from relaypolicy import FirstMatch, LocalDomainOnly, Request, TrustedNetworks
from relaypolicy.config import parse_config

FINGERPRINT = "3f" * 32

CONFIG = {
    "domains": {"local": ["example.org"]},
    "networks": {"trusted": ["192.0.2.0/24"]},
    "client_certificates": {"fingerprints": [FINGERPRINT]},
    "pop_before_smtp": {"ttl": 600},
    "chain": {
        "steps": [
            "trusted_networks",
            "client_certificate",
            "sasl_permit",
            "pop_before_smtp",
            "local_domains",
        ],
        "otherwise": "next",
        "ports": {"587": ["sasl_required"], "2525": ["open_relay"]},
    },
}

OUTSIDER = "203.0.113.7"
POP_CLIENT = "198.51.100.5"


@pytest.mark.parametrize(
    ("fields", "policy"),
    [
        ({"client_address": "192.0.2.9"}, "trusted_networks"),
        (
            {"ccert_fingerprint": FINGERPRINT, "encryption_protocol": "TLSv1.3"},
            "client_certificate",
        ),
        ({"sasl_username": "taro"}, "sasl_permit"),
        ({"client_address": POP_CLIENT}, "pop_before_smtp"),
        ({"recipient": "u@example.org"}, "local_domains"),
        ({"recipient": "u@"}, "chain"),  # refused for syntax before any step
        ({"server_port": 587}, "sasl_required"),
        ({"server_port": 587, "recipient": "u@"}, "chain.ports.587"),
        ({"server_port": 2525}, "open_relay"),
    ],
)
def test_a_configured_decision_names_its_step(fields: dict[str, Any], policy: str) -> None:
    config = parse_config(CONFIG)
    table = config.make_pop_table(load=False)
    assert table is not None
    table.record(POP_CLIENT, user="hanako")
    request = Request(**{"client_address": OUTSIDER, "recipient": "u@aho.jp", **fields})
    assert config.build_policy(table).check(request).policy == policy


def test_a_python_policy_keeps_its_class_name_unless_named() -> None:
    policy = FirstMatch(TrustedNetworks(["192.0.2.0/24"]), LocalDomainOnly(["example.org"]))
    assert policy.check(Request(client_address="192.0.2.1", recipient="u@x.test")).policy == (
        "TrustedNetworks"
    )
    assert policy.check(Request(client_address=OUTSIDER, recipient="u@")).policy == "FirstMatch"
    named = TrustedNetworks(["192.0.2.0/24"], name="office")
    assert named.check(Request(client_address="192.0.2.1", recipient="u@x.test")).policy == (
        "office"
    )


def relaypolicy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relaypolicy", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_and_test_name_a_syntax_refusal_alike(tmp_path: Path) -> None:
    """`check` (options or --config) and `test` say `chain` for the chain's own refusal."""
    config = tmp_path / "mx.toml"
    config.write_text(
        '[domains]\nlocal = ["example.org"]\n[networks]\ntrusted = ["192.0.2.0/24"]\n'
        '[chain]\nsteps = ["trusted_networks", "local_domains"]\n',
        encoding="utf-8",
    )
    request = ["--client-address", OUTSIDER, "--recipient", "u@"]
    by_options = relaypolicy(
        "check", "--local-domain", "example.org", "--trusted-network", "192.0.2.0/24", *request
    )
    by_file = relaypolicy("check", "--config", str(config), *request)
    for done in (by_options, by_file):
        assert done.returncode == 1, done.stderr
        assert "policy: chain  reason: syntax" in done.stdout
    scenarios = tmp_path / "mx.scenarios.toml"
    scenarios.write_text(
        f'[[case]]\nname = "bad syntax"\nclient_address = "{OUTSIDER}"\n'
        'recipient = "u@"\nexpect = "501 5.1.3"\n',
        encoding="utf-8",
    )
    tested = relaypolicy("test", str(scenarios), "--config", str(config))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    row = next(line for line in tested.stdout.splitlines() if "bad syntax" in line)
    assert "  chain  " in row and "syntax" in row
    # The same answer from the options and from the equivalent file, name included.
    accepted = ["--client-address", "192.0.2.1", "--recipient", "u@aho.jp"]
    options = relaypolicy(
        "check", "--local-domain", "example.org", "--trusted-network", "192.0.2.0/24", *accepted
    )
    assert options.stdout == relaypolicy("check", "--config", str(config), *accepted).stdout
    assert "policy: trusted_networks" in options.stdout
