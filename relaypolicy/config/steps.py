"""The chain steps a configuration may name, and the ``[chain]`` section that names them.

One registry, :data:`STEPS`: each :class:`Step` has its name, what it means in words (for
``relaypolicy config check``), how to build its policy, and the section it needs. Adding a
step is one entry here.

Naming: every policy a step builds is named after the step (``trusted_networks``,
``sasl_permit``, ...), and a chain after its key (``chain``, ``chain.ports.587``), so the
``policy`` of a decision is a word the reader finds in the file; a policy built in Python
keeps its class name unless given ``name=``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import attrs

from relaypolicy.errors import ConfigError
from relaypolicy.iptable.base import IpTable
from relaypolicy.model import Verdict
from relaypolicy.policies import LocalDomainOnly, OpenRelay, Policy, TrustedNetworks
from relaypolicy.policies.auth import ClientCertificate, SmtpAuthRequired
from relaypolicy.policies.popbeforesmtp import PopBeforeSmtp
from relaypolicy.settings import Section, parse_port

if TYPE_CHECKING:
    from relaypolicy.config import Config

__all__ = ["DEFAULT_CHAIN", "STEPS", "Step", "check_needs", "parse_chains"]

_DEFAULTS = {"reject": Verdict.REJECT, "defer": Verdict.DEFER, "next": Verdict.NEXT}


@attrs.frozen
class Step:
    """One step a chain may name: what it means in words, and how to build it.

    ``build`` makes the policy from the configuration and the POP-before-SMTP table (the
    same table across reloads); ``needs`` names the section the step cannot work without.
    """

    name: str
    words: str
    build: Callable[[Config, IpTable | None], Policy]
    needs: str = ""


def _sasl(otherwise: Verdict) -> Callable[[Config, IpTable | None], Policy]:
    def build(config: Config, table: IpTable | None) -> Policy:
        # Sender ownership only where login is required (the submission ports): on port
        # 25, mail from outside legitimately carries our users' addresses (forwarders,
        # mailing lists), and "not logged in" would refuse it.
        required = otherwise is Verdict.REJECT
        return SmtpAuthRequired(
            require_tls=config.auth.require_tls,
            sender_logins=config.auth.sender_logins if required else None,
            otherwise=otherwise,
            name="sasl_required" if required else "sasl_permit",
        )

    return build


def _pop(config: Config, table: IpTable | None) -> Policy:
    if table is None or config.pop is None:
        raise ConfigError(f"{config.source}: pop_before_smtp step without a table")
    return PopBeforeSmtp(table, bind_sender=config.pop.bind_sender, name="pop_before_smtp")


# The steps a chain may name, in the order `config check` and the docs list them.
STEPS: dict[str, Step] = {
    step.name: step
    for step in (
        Step(
            "trusted_networks",
            "accept clients in the trusted networks (permit_mynetworks)",
            lambda config, table: TrustedNetworks(config.trusted_networks, name="trusted_networks"),
        ),
        Step(
            "sasl_permit",
            "accept clients that authenticated with SMTP AUTH (permit_sasl_authenticated)",
            _sasl(Verdict.NEXT),
        ),
        Step(
            "sasl_required",
            "require SMTP AUTH: refuse unauthenticated clients with 530 5.7.0",
            _sasl(Verdict.REJECT),
        ),
        Step(
            "client_certificate",
            "accept clients presenting a listed TLS client certificate (permit_tls_clientcerts)",
            lambda config, table: ClientCertificate(
                config.client_certificates, name="client_certificate"
            ),
            needs="client_certificates.fingerprints",
        ),
        Step(
            "pop_before_smtp",
            "accept clients that logged in to POP/IMAP recently",
            _pop,
            needs="pop_before_smtp",
        ),
        Step(
            "local_domains",
            "accept mail for the local and relay domains, refuse everything else "
            "(reject_unauth_destination)",
            lambda config, table: LocalDomainOnly(
                config.local_domains, relay_domains=config.relay_domains, name="local_domains"
            ),
            needs="domains.local",
        ),
        Step(
            "open_relay",
            "accept everything (an open relay: tests and closed labs only)",
            lambda config, table: OpenRelay(name="open_relay"),
        ),
    )
}
DEFAULT_CHAIN = ("trusted_networks", "sasl_permit", "pop_before_smtp", "local_domains")


def check_needs(
    chain: tuple[str, ...], ports: Mapping[int, tuple[str, ...]], present: Mapping[str, bool]
) -> None:
    """Every step's ``needs`` is configured; the error names the key where it is used."""
    where = [("chain.steps", chain)] + [(f"chain.ports.{p}", s) for p, s in ports.items()]
    for key, steps in where:
        for index, step in enumerate(steps):
            needs = STEPS[step].needs
            if not needs or present[needs]:
                continue
            if needs == "pop_before_smtp":
                raise ConfigError(
                    f"{key}[{index}]: pop_before_smtp needs a [pop_before_smtp] table"
                )
            what = "domain" if needs == "domains.local" else "fingerprint"
            raise ConfigError(f"{needs}: the chain uses {step} but no {what} is listed")


def _steps(section: Section, name: str) -> tuple[str, ...]:
    steps = section.strings(name)
    if not steps:
        raise section.error(name, "expected at least one step")
    for index, step in enumerate(steps):
        if step not in STEPS:
            raise ConfigError(
                f"{section.key(name)}[{index}]: unknown step {step!r} "
                f"(expected one of {', '.join(STEPS)})"
            )
    if len(set(steps)) != len(steps):
        raise section.error(name, "a step is listed twice")
    return steps


def parse_chains(
    section: Section, *, have_pop: bool
) -> tuple[tuple[str, ...], dict[int, tuple[str, ...]], Verdict]:
    if "steps" in section:
        chain = _steps(section, "steps")
    else:  # the default chain asks the POP-before-SMTP table only when there is one
        chain = tuple(s for s in DEFAULT_CHAIN if have_pop or s != "pop_before_smtp")
    port_table = section.table.get("ports")
    ports_section = section.section("ports", port_table.keys() if port_table else ())
    ports: dict[int, tuple[str, ...]] = {}
    for port_text in ports_section.table:
        try:
            port = parse_port(port_text)
        except ValueError:
            raise ports_section.error(port_text, "expected a port number 1-65535") from None
        ports[port] = _steps(ports_section, port_text)
    expected = '"reject", "defer" or "next"'
    otherwise = section.string("otherwise", "reject", expected=expected, choices=_DEFAULTS)
    return chain, ports, _DEFAULTS[otherwise]
