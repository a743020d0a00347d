"""The ``request`` target: fuzzed requests through the policies and chains.

An input is a mapping of request fields (``client_address``, ``recipient``, ``sender``,
``helo_name``, ``sasl_username``, ...). It is built into a :class:`~relaypolicy.Request`
and given to each :class:`Guarded` policy: the basic policies, a hand-built chain, the
recipes, POP-before-SMTP with an :class:`~relaypolicy.iptable.ExpiringIpTable` on a fake
clock. The oracle:

- ``Request(...)`` raises nothing but a :class:`ValueError` that names the client or
  server address or port (the recipient and sender never raise: a bad one is analysed
  as such); ``check`` raises nothing;
- a decision's reply is one line, and its code fits its verdict;
- no *unsafe accept*: an ACCEPT needs a client the policy was told to trust (in a
  trusted network, in the table, authenticated), or a recipient that is *plainly local*
  by a check written apart from :mod:`relaypolicy.address`: one ``@``, no ``%`` or
  ``!`` (no sender-specified routing), a domain that is one of the configured local
  domains (in lower case, A-label or U-label, one trailing dot allowed) or below a relay
  domain, or a domainless ``postmaster`` (RFC 5321 section 4.5.1). A source route
  (``@a,@b:``) is read as RFC 5321 section 4.1.1.3 allows, by dropping it: the mailbox
  after it must pass the same check. The check is conservative: a hit is a finding for a
  human to read, with the input.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import attrs
import idna

from relaypolicy.iptable.memory import ExpiringIpTable
from relaypolicy.model import Request, Verdict
from relaypolicy.policies import (
    FirstMatch,
    LocalDomainOnly,
    Policy,
    PopBeforeSmtp,
    SmtpAuthRequired,
    TrustedNetworks,
    mx_policy,
    submission_policy,
)
from relaypolicy.testing.clock import FakeClock
from relaypolicy.testing.fuzz.engine import ORACLE, UNSAFE_ACCEPT, Problem
from relaypolicy.testing.fuzz.mutate import (
    IDNA_REFUSED,
    INTERESTING_TOKENS,
    mutate_text,
    random_text,
)
from relaypolicy.testing.probes import probe_battery

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = ["Guarded", "RequestTarget", "Trust", "standard_policies"]

Fields = dict[str, str]

LOCAL_DOMAINS = ("example.org", "例え.jp", "[192.0.2.1]")
RELAY_DOMAINS = ("backup.example.net",)
TRUSTED_NETWORKS = ("10.0.0.0/8", "2001:db8:1::/48", "192.0.2.128/25")
TABLE_CLIENTS = {"198.51.100.7": "taro", "2001:db8:2::7": "hana", "203.0.113.9": None}
CLIENTS = (
    "203.0.113.50",  # a stranger
    "2001:db8:ff::1",  # a stranger over IPv6
    "10.1.2.3",  # trusted
    "::ffff:10.1.2.3",  # trusted, IPv4-mapped
    "198.51.100.7",  # in the table, as taro
    "::ffff:198.51.100.7",
    "2001:db8:2::7",  # in the table, as hana
    "203.0.113.9",  # in the table, no login
    "192.0.2.200",  # trusted: the server's own network
)
# The fields a Postfix request carries that the fuzzer varies, and their usual values.
FIELDS = ("client_address", "recipient", "sender", "helo_name", "sasl_username", "sasl_method")
_CONTRACT_ERRORS = ("client_address:", "server_address:", "client_port:", "server_port:")


@attrs.frozen
class Trust:
    """Whom a policy may accept a relay for, as the oracle reads it."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    table: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address] = frozenset()
    authenticated: bool = False  # a sasl_username is trusted
    tls_for_auth: bool = False  # ... only with TLS


@attrs.frozen
class Guarded:
    """A policy under test and the trust the oracle grants it."""

    name: str
    policy: Policy
    trust: Trust


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The client an address names: IPv4-mapped IPv6 is IPv4; a zone index is dropped."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return ipaddress.IPv6Address(address.packed)
    return address


def standard_policies() -> list[Guarded]:
    """The policies and chains the ``request`` target runs, each with its trust."""
    clock = FakeClock(1000.0)
    table = ExpiringIpTable(1800, clock=clock)
    for address, user in TABLE_CLIENTS.items():
        table.record(address, user=user)
    networks = tuple(ipaddress.ip_network(net) for net in TRUSTED_NETWORKS)
    in_table = frozenset(_ip(address) for address in TABLE_CLIENTS)
    local = LocalDomainOnly(LOCAL_DOMAINS, RELAY_DOMAINS)
    nobody = Trust()
    return [
        Guarded("LocalDomainOnly", local, nobody),
        Guarded("TrustedNetworks", TrustedNetworks(TRUSTED_NETWORKS), Trust(networks=networks)),
        Guarded("PopBeforeSmtp", PopBeforeSmtp(table), Trust(table=in_table)),
        Guarded(
            "PopBeforeSmtp(bind_sender)",
            FirstMatch(
                PopBeforeSmtp(table, bind_sender={"taro": ["@example.org"], "hana": "h@aho.jp"}),
                local,
            ),
            Trust(table=in_table),
        ),
        Guarded("SmtpAuthRequired", SmtpAuthRequired(), Trust(authenticated=True)),
        Guarded(
            "FirstMatch",
            FirstMatch(
                TrustedNetworks(TRUSTED_NETWORKS),
                SmtpAuthRequired(otherwise=Verdict.NEXT),
                PopBeforeSmtp(table),
                local,
            ),
            Trust(networks=networks, table=in_table, authenticated=True),
        ),
        Guarded(
            "mx_policy",
            mx_policy(
                LOCAL_DOMAINS,
                relay_domains=RELAY_DOMAINS,
                trusted_networks=TRUSTED_NETWORKS,
                pop_table=table,
            ),
            Trust(networks=networks, table=in_table, authenticated=True),
        ),
        Guarded(
            "submission_policy", submission_policy(), Trust(authenticated=True, tls_for_auth=True)
        ),
        Guarded(
            "submission_policy(sender_logins)",
            submission_policy(require_tls=False, sender_logins={"@example.org": "taro"}),
            Trust(authenticated=True),
        ),
    ]


@attrs.frozen
class _Destinations:
    """The configured destinations in the forms the oracle compares."""

    names: frozenset[str]
    literals: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]
    relay: tuple[str, ...]

    @classmethod
    def of(cls, local: Sequence[str], relay: Sequence[str]) -> _Destinations:
        names: set[str] = set()
        literals = set()
        for domain in local:
            if domain.startswith("["):
                literals.add(_ip(domain[1:-1]))
                continue
            ascii_form = idna.encode(domain).decode("ascii")
            names |= {domain.lower(), ascii_form, idna.decode(ascii_form)}
        relay_forms = {r.lower() for r in relay} | {idna.encode(r).decode("ascii") for r in relay}
        return cls(frozenset(names), frozenset(literals), tuple(relay_forms))

    def plainly_local(self, recipient: str) -> bool:
        text = recipient
        if text[:1] == "<" and text[-1:] == ">":
            text = text[1:-1]
        if text[:1] == "@":  # a source route: RFC 5321 section 4.1.1.3 lets us drop it
            text = text.partition(":")[2]
        if "%" in text or "!" in text:
            return False
        if "@" not in text:
            return text.strip('"').lower() == "postmaster"
        local, _, domain = text.partition("@")
        if not local or "@" in domain:
            return False
        domain = domain.removesuffix(".").lower()
        if domain in self.names:
            return True
        if domain[:1] == "[" and domain[-1:] == "]":
            inner = domain[1:-1].removeprefix("ipv6:")
            try:
                return _ip(inner) in self.literals
            except ValueError:
                return False
        return any(domain == r or domain.endswith("." + r) for r in self.relay)


def _trusted(request: Request, trust: Trust) -> bool:
    client = _ip(request.client_address)
    if client in trust.table or any(client in net for net in trust.networks):
        return True
    return (
        trust.authenticated
        and bool(request.sasl_username)
        and (not trust.tls_for_auth or bool(request.encryption_protocol))
    )


_CODES = {Verdict.ACCEPT: 2, Verdict.REJECT: 5, Verdict.DEFER: 4, Verdict.NEXT: 0}


class RequestTarget:
    """Requests over the whole of Unicode through the policies of :func:`standard_policies`
    (or the ones given: a test gives a broken one to see the oracle fire)."""

    name = "request"

    def __init__(self, policies: Sequence[Guarded] | None = None) -> None:
        self.policies = list(policies) if policies is not None else standard_policies()
        self.destinations = _Destinations.of(LOCAL_DOMAINS, RELAY_DOMAINS)
        self._corpus = _seeds()
        self._strings = [fields[name] for fields in self._corpus for name in FIELDS]

    def corpus(self) -> Sequence[Fields]:
        return self._corpus

    def mutate(self, rng: random.Random, corpus: Sequence[Fields]) -> Fields:
        fields = dict(rng.choice(corpus))
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            name = rng.choices(FIELDS, (2, 10, 3, 1, 2, 1))[0]
            if name == "client_address" and rng.random() < 0.7:
                fields[name] = rng.choice(CLIENTS)
            elif name == "sasl_username" and rng.random() < 0.5:
                fields[name] = rng.choice(("", "taro", "hana", "mallory"))
            else:
                fields[name] = mutate_text(rng, fields[name], self._strings)
        if rng.random() < 0.1:
            fields["encryption_protocol"] = "" if fields.get("encryption_protocol") else "TLSv1.3"
        return fields

    def check(self, value: Mapping[str, str]) -> list[Problem]:
        try:
            request = Request(**value)
        except ValueError as exc:
            if str(exc).startswith(_CONTRACT_ERRORS):
                return []
            raise
        problems = _model_problems(value, request)
        for guarded in self.policies:
            decision = guarded.policy.check(request)
            verdict = decision.verdict
            if _CODES[verdict] != decision.code // 100:
                problems.append(
                    Problem(ORACLE, f"{guarded.name}: code {decision.code} for {verdict.name}")
                )
            reply = str(decision)
            if "\n" in reply or "\r" in reply or "\x00" in reply:
                problems.append(Problem(ORACLE, f"{guarded.name}: reply is not one line", reply))
            if (
                verdict is Verdict.ACCEPT
                and not _trusted(request, guarded.trust)
                and not self.destinations.plainly_local(request.recipient)
            ):
                problems.append(
                    Problem(
                        UNSAFE_ACCEPT,
                        f"{guarded.name} accepted a relay ({decision.reason})",
                        f"recipient {request.recipient!r} from {request.client_address}",
                    )
                )
        return problems

    def strategy(self) -> SearchStrategy[Fields]:
        # Hypothesis is a development extra: its strategies load only for that engine.
        from relaypolicy.testing.fuzz.strategies import request_fields

        return request_fields(self._corpus)


def _model_problems(value: Mapping[str, str], request: Request) -> list[Problem]:
    """The request's client address is the one ``ipaddress`` reads in the text."""
    try:
        expected = _ip(value["client_address"])
    except ValueError:
        return []
    if request.client_ip != expected:
        return [Problem(ORACLE, "client address misread", f"{request.client_ip} != {expected}")]
    return []


def _seeds() -> list[Fields]:
    """The relay-abuse battery, from strangers, trusted and logged-in clients, plus plain
    mail, long and IDNA-refused recipients."""
    probes = probe_battery(
        ["example.org", "例え.jp"], relay_domains=RELAY_DOMAINS, server_ip="192.0.2.1"
    )
    recipients = [(probe.recipient, probe.sender) for probe in probes]
    recipients += [
        ("user@example.org", "friend@aho.jp"),
        ("<user@example.org>", ""),
        ("postmaster", ""),
        ('"john doe"@example.org', ""),
        ("user@[192.0.2.1]", ""),
        ("user@[IPv6:::ffff:192.0.2.1]", ""),
        ("user@mx.backup.example.net", ""),
        ("user@例え.jp", "taro@example.org"),
        ("user@xn--r8jz45g.jp.", ""),
        ("a" * 64 + "@example.org", ""),
        ("a" * 65 + "@example.org", ""),
        ("user@" + "a." * 126 + "org", ""),
        *((f"user@ex{char}ample.org", "") for char in IDNA_REFUSED[:6]),
        *((f"user@{char}", "") for char in IDNA_REFUSED[6:]),
        *((f"user{token}@example.org", "") for token in INTERESTING_TOKENS[:12]),
    ]
    seeds: list[Fields] = []
    for index, (recipient, sender) in enumerate(recipients):
        client = CLIENTS[index % len(CLIENTS)]
        login = ("", "", "taro")[index % 3]
        seeds.append(
            {
                "client_address": client,
                "recipient": recipient,
                "sender": sender,
                "helo_name": "mail.aho.jp",
                "sasl_username": login,
                "sasl_method": "PLAIN" if login else "",
            }
        )
    seeds.append({name: "" for name in FIELDS} | {"client_address": "203.0.113.50"})
    seeds.append({name: random_text(random.Random(0)) for name in FIELDS})  # noqa: S311
    return seeds
