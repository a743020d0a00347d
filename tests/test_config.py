"""The TOML configuration: valid files build the chains they describe; errors name the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from relaypolicy import Request, Verdict
from relaypolicy.config import ConfigError, load_config, parse_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relaypolicy.toml"
    path.write_text(text, encoding="utf-8")
    return path


def decide(config_path: Path, **fields: str | int) -> tuple[Verdict, str]:
    config = load_config(config_path)
    policy = config.build_policy(config.make_pop_table())
    decision = policy.check(Request(**fields))  # type: ignore[arg-type]
    return decision.verdict, decision.reason


CONFIG_EXAMPLES = sorted(
    p for p in EXAMPLES.glob("*.toml") if not p.name.endswith(".scenarios.toml")
)


@pytest.mark.parametrize("example", CONFIG_EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(example: Path, tmp_path: Path) -> None:
    text = example.read_text(encoding="utf-8")
    # The examples persist to /var/lib; keep the test inside its own directory.
    text = text.replace("/var/lib/relaypolicy/", f"{tmp_path}/")
    config = load_config(write(tmp_path, text))
    assert "otherwise: refuse" in config.describe()
    config.build_policy(config.make_pop_table())


def test_mx_example_decides_like_postfix(tmp_path: Path) -> None:
    path = EXAMPLES / "mx.toml"
    outsider = {"client_address": "203.0.113.7"}
    assert decide(path, recipient="u@example.org", **outsider) == (Verdict.ACCEPT, "local")
    assert decide(path, recipient="u@mx.example.net", **outsider) == (
        Verdict.ACCEPT,
        "relay-domain",
    )
    assert decide(path, recipient="u@aho.jp", **outsider) == (Verdict.REJECT, "not-local")
    assert decide(path, recipient="u%aho.jp@example.org", **outsider)[1] == "routing"
    assert decide(path, recipient="u@aho.jp", client_address="192.0.2.9")[1] == ("trusted-network")
    assert decide(path, recipient="u@aho.jp", sasl_username="taro", **outsider)[1] == (
        "sasl-authenticated"
    )


def test_submission_example_chooses_by_port() -> None:
    path = EXAMPLES / "submission.toml"
    base = {"client_address": "203.0.113.7", "recipient": "u@aho.jp"}
    assert decide(path, server_port=587, **base) == (Verdict.REJECT, "tls-required")
    assert decide(path, server_port=587, encryption_protocol="TLSv1.3", **base) == (
        Verdict.REJECT,
        "auth-required",
    )
    logged_in = {"encryption_protocol": "TLSv1.3", "sasl_username": "taro", **base}
    assert decide(path, server_port=587, sender="taro@example.org", **logged_in)[0] is (
        Verdict.ACCEPT
    )
    assert decide(path, server_port=465, sender="someone@example.org", **logged_in)[0] is (
        Verdict.REJECT
    )
    # Port 25: the MX chain; ownership is not enforced on mail from outside.
    assert decide(path, server_port=25, sender="taro@example.org", **base) == (
        Verdict.REJECT,
        "not-local",
    )
    assert decide(
        path,
        server_port=25,
        sender="taro@example.org",
        client_address="203.0.113.7",
        recipient="taro@example.org",
    ) == (Verdict.ACCEPT, "local")


def test_defaults_build_a_safe_chain() -> None:
    config = parse_config({"domains": {"local": ["example.org"]}})
    assert config.chain == ("trusted_networks", "sasl_permit", "local_domains")
    policy = config.build_policy()
    stranger = Request(client_address="203.0.113.7", recipient="u@aho.jp")
    assert policy.check(stranger).verdict is Verdict.REJECT
    assert config.serve.listen == ("127.0.0.1:9998",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[domains]\nlocal = 'example.org'\n", "domains.local: expected a list of strings"),
        ("[domains]\nlocal = ['a..b']\n", "domains.local: bad domain 'a..b'"),
        ("[domains]\nlocal = ['x.test']\nlocals = []\n", "domains.locals: unknown key"),
        ("[domain]\nlocal = ['x.test']\n", "domain: unknown key"),
        ("[networks]\ntrusted = ['10.0.0.1/8']\n", "networks.trusted[0]: not a CIDR"),
        ("[networks]\ntrusted = ['10.0.0.0/8', 7]\n", "networks.trusted[1]: expected a string"),
        (
            "[domains]\nlocal = ['x.test']\n[chain]\nsteps = ['trusted_networks', 'pop']\n",
            "chain.steps[1]: unknown step 'pop'",
        ),
        (
            "[domains]\nlocal = ['x.test']\n[chain]\nsteps = ['pop_before_smtp']\n",
            "chain.steps[0]: pop_before_smtp needs a [pop_before_smtp] table",
        ),
        ("[chain]\nsteps = ['local_domains']\n", "domains.local: the chain uses local_domains"),
        (
            "[domains]\nlocal = ['x.test']\n[chain.ports]\nsmtp = ['sasl_required']\n",
            "chain.ports.smtp: expected a port number",
        ),
        (
            "[domains]\nlocal = ['x.test']\n[chain]\notherwise = 'accept'\n",
            'chain.otherwise: expected "reject", "defer" or "next"',
        ),
        (
            "[domains]\nlocal = ['x.test']\n[serve]\nlisten = ['localhost']\n",
            "serve.listen[0]: listener 'localhost'",
        ),
        (
            "[domains]\nlocal = ['x.test']\n[serve]\nsocket_mode = 660\n",
            "serve.socket_mode: expected an octal string",
        ),
        (
            "[domains]\nlocal = ['x.test']\n[serve]\naccept_action = 'REJECT'\n",
            'serve.accept_action: expected "OK" or "DUNNO"',
        ),
        (
            "[domains]\nlocal = ['x.test']\n[serve]\nrequest_timeout = 0\n",
            "serve.request_timeout: expected seconds from 0.001 to 3600, got 0",
        ),
        (
            "[domains]\nlocal = ['x.test']\n[serve]\nrequest_timeout = nan\n",
            "serve.request_timeout: expected seconds",
        ),
        (
            "[domains]\nlocal = ['x.test']\n[log]\nformat = 'xml'\n",
            'log.format: expected "text" or "json"',
        ),
        (
            "[domains]\nlocal = ['x.test']\n[smtp_auth]\nrequire_tls = 'yes'\n",
            "smtp_auth.require_tls: expected true or false",
        ),
        (
            "[domains]\nlocal = ['x.test']\n[smtp_auth.sender_logins]\n'nodomain' = ['a']\n",
            "sender_logins['nodomain']: no domain; use user@domain or @domain",
        ),
        (
            "[domains]\nlocal = ['x.test']\n[chain]\nsteps = ['client_certificate']\n",
            "client_certificates.fingerprints: the chain uses client_certificate",
        ),
        ("[domains\n", "not valid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        load_config(path)
    assert str(error.value).startswith(str(path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")
