"""The relay-abuse battery: what it holds, and that the policies refuse every probe."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaypolicy import FirstMatch, LocalDomainOnly, OpenRelay, Request, TrustedNetworks, Verdict
from relaypolicy.address import parse_address
from relaypolicy.config import load_config
from relaypolicy.testing import probe_battery, relay_probes
from relaypolicy.testing.probes import NMAP_PROBES

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(
    path for path in (ROOT / "examples").glob("*.toml") if ".scenarios" not in path.name
)

# nmap smtp-open-relay.nse, with DOMAIN = local.test and IP = 192.0.2.1.
NMAP = [
    ("", "relaytest@nmap.scanme.org"),
    ("antispam@nmap.scanme.org", "relaytest@nmap.scanme.org"),
    ("antispam@local.test", "relaytest@nmap.scanme.org"),
    ("antispam@[192.0.2.1]", "relaytest@nmap.scanme.org"),
    ("antispam@[192.0.2.1]", "relaytest%nmap.scanme.org@[192.0.2.1]"),
    ("antispam@[192.0.2.1]", "relaytest%nmap.scanme.org@local.test"),
    ("antispam@[192.0.2.1]", '"relaytest@nmap.scanme.org"'),
    ("antispam@[192.0.2.1]", '"relaytest%nmap.scanme.org"'),
    ("antispam@[192.0.2.1]", "relaytest@nmap.scanme.org@[192.0.2.1]"),
    ("antispam@[192.0.2.1]", '"relaytest@nmap.scanme.org"@[192.0.2.1]'),
    ("antispam@[192.0.2.1]", "relaytest@nmap.scanme.org@local.test"),
    ("antispam@[192.0.2.1]", "@[192.0.2.1]:relaytest@nmap.scanme.org"),
    ("antispam@[192.0.2.1]", "@local.test:relaytest@nmap.scanme.org"),
    ("antispam@[192.0.2.1]", "nmap.scanme.org!relaytest"),
    ("antispam@[192.0.2.1]", "nmap.scanme.org!relaytest@[192.0.2.1]"),
    ("antispam@[192.0.2.1]", "nmap.scanme.org!relaytest@local.test"),
]


def test_the_battery_is_large_named_and_explained() -> None:
    probes = relay_probes("local.test")
    assert len(probes) >= 50
    assert len({probe.name for probe in probes}) == len(probes)
    assert len({(probe.sender, probe.recipient) for probe in probes}) == len(probes)
    for probe in probes:
        assert probe.name and probe.why and probe.recipient, probe
        assert not any(char in probe.recipient + probe.sender for char in "\r\n")


def test_it_starts_with_nmaps_sixteen_probes_in_order() -> None:
    probes = relay_probes("local.test", server_ip="192.0.2.1")[:NMAP_PROBES]
    assert [(probe.sender, probe.recipient) for probe in probes] == NMAP
    assert [probe.name for probe in probes] == [f"nmap-{n:02d}" for n in range(1, 17)]


def test_every_probe_leaves_the_local_domain() -> None:
    """Read plainly, each recipient is foreign, routed, domainless-routed or malformed."""
    for probe in relay_probes("local.test", relay_domain="relay.test"):
        address = parse_address(probe.recipient)
        foreign = address.domain not in ("local.test", "relay.test")
        assert foreign or address.routed or not address.valid, probe


def test_lookalikes_and_smtputf8() -> None:
    names = {probe.name: probe for probe in relay_probes("example.org")}
    assert names["lookalike-utf8"].recipient == "relaytest@\u0435xample.org"
    assert names["lookalike-utf8"].smtputf8
    assert names["lookalike-a-label"].recipient == "relaytest@xn--xample-2of.org"
    assert not names["lookalike-a-label"].smtputf8
    # No confusable letter, no look-alike; an address literal plays no name games.
    assert "lookalike-utf8" not in {p.name for p in relay_probes("mnt.uk")}
    literal = {p.name for p in relay_probes("[192.0.2.1]")}
    assert "ours-as-suffix" not in literal and "nmap-06" in literal


def test_options() -> None:
    probes = relay_probes("Local.Test.", foreign_domain="Elsewhere.Example", user="x")
    assert probes[1].recipient == "x@elsewhere.example"
    assert relay_probes("local.test", server_ip="2001:db8::1")[4].recipient == (
        "relaytest%nmap.scanme.org@[IPv6:2001:db8::1]"
    )
    with pytest.raises(ValueError, match="is the local domain"):
        relay_probes("local.test", foreign_domain="LOCAL.TEST")
    battery = probe_battery(["a.test", "b.test"], relay_domains=["r.test"])
    assert battery[0].name == "a.test:nmap-01"
    assert [p.name for p in battery if p.name.startswith("r.test:")] == [
        "r.test:relay-percent",
        "r.test:relay-bang",
        "r.test:relay-at-quoted",
        "r.test:relay-as-prefix",
        "r.test:relay-as-suffix",
    ]
    with pytest.raises(TypeError):
        probe_battery("a.test")


def _ask(policy: object, client: str, probes: list) -> list[Verdict]:  # type: ignore[type-arg]
    return [
        policy.check(  # type: ignore[attr-defined]
            Request(client_address=client, recipient=p.recipient, sender=p.sender)
        ).verdict
        for p in probes
    ]


def test_local_domain_only_and_a_chain_refuse_every_probe() -> None:
    probes = relay_probes("local.test", relay_domain="relay.test")
    local = LocalDomainOnly(["local.test"], relay_domains=["relay.test"])
    chain = FirstMatch(TrustedNetworks(["192.0.2.0/24"]), local)
    for policy in (local, chain):
        assert Verdict.ACCEPT not in _ask(policy, "203.0.113.7", probes)
    assert set(_ask(OpenRelay(), "203.0.113.7", probes)) == {Verdict.ACCEPT}
    # A trusted client relays (that is what trust means), except for malformed addresses.
    accepted = _ask(chain, "192.0.2.9", probes).count(Verdict.ACCEPT)
    assert len(probes) - 15 <= accepted < len(probes)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_every_example_configuration_refuses_every_probe(path: Path) -> None:
    config = load_config(path)
    policy = config.build_policy(config.make_pop_table(load=False))
    probes = probe_battery(config.local_domains, relay_domains=config.relay_domains)
    for port in (0, 25, *config.ports):
        got = [
            policy.check(
                Request(
                    client_address="203.0.113.7",
                    recipient=p.recipient,
                    sender=p.sender,
                    server_port=port,
                )
            )
            for p in probes
        ]
        assert [d for d in got if d.verdict is Verdict.ACCEPT] == [], (path, port)
