"""The classic relay answers: accept everything, accept only our domains, trust networks."""

from __future__ import annotations

from collections.abc import Iterable

from relaypolicy.domains import DomainSet
from relaypolicy.model import Decision, Request, accept, next_policy
from relaypolicy.networks import IPNetwork, NetworkSet
from relaypolicy.policies.base import bad_recipient_syntax, relay_access_denied

__all__ = ["LocalDomainOnly", "OpenRelay", "TrustedNetworks"]

_REMEMBERED_DOMAINS = 8192  # per LocalDomainOnly: relay-domain answers kept, then forgotten


class OpenRelay:
    """ACCEPT every recipient from every client: an open relay.

    The early internet's answer. Today it belongs only in tests and closed labs; it is here
    so that a test can show what a policy prevents.
    """

    __slots__ = ("_accept", "name")

    def __init__(self, *, name: str = "OpenRelay") -> None:
        self.name = name
        self._accept = accept(name, "open-relay")

    def check(self, request: Request) -> Decision:
        return self._accept

    def __repr__(self) -> str:
        return "OpenRelay()"


class LocalDomainOnly:
    """ACCEPT mail for our own domains (and domains we relay for); refuse everything else.

    ``local_domains`` match exactly (Postfix ``mydestination``); ``relay_domains`` match
    themselves and their subdomains (Postfix ``relay_domains``, the backup-MX case). Any
    other destination, and any recipient asking for sender-specified routing
    (``user%other@local``, ``other!user@local``, ``"user@other"@local``), gets
    ``554 5.7.1 <rcpt>: Relay access denied``, as Postfix's ``reject_unauth_destination``.
    A domainless ``postmaster`` is local (RFC 5321 section 4.5.1); a recipient with bad
    syntax gets ``501 5.1.3``.
    """

    __slots__ = (
        "_local",
        "_local_domains",
        "_relay",
        "_relay_domains",
        "_relayed",
        "_syntax",
        "_to_local",
        "_to_relay",
        "name",
    )

    def __init__(
        self,
        local_domains: Iterable[str],
        relay_domains: Iterable[str] = (),
        *,
        name: str = "LocalDomainOnly",
    ) -> None:
        self.name = name
        self._local = DomainSet(local_domains)
        self._relay = DomainSet(relay_domains, subdomains=True)
        self._local_domains = self._local.domains
        self._relay_domains = self._relay.domains
        self._relayed: dict[str, bool] = {}  # canonical domain -> in a relay domain
        self._to_local = accept(name, "local")
        self._to_relay = accept(name, "relay-domain")
        self._syntax = bad_recipient_syntax(name)

    @property
    def local_domains(self) -> frozenset[str]:
        return self._local.domains

    @property
    def relay_domains(self) -> frozenset[str]:
        return self._relay.domains

    def check(self, request: Request) -> Decision:
        address = request.recipient_address
        if address.error is not None:
            return self._syntax
        if address.routed:
            return relay_access_denied(request, self.name, "routing")
        domain = address.domain
        if domain in self._local_domains:
            return self._to_local
        if not domain:
            local_part = address.local_part
            if not local_part:  # the null address
                return self._syntax
            if local_part.lower() == "postmaster":
                return self._to_local
            return relay_access_denied(request, self.name, "not-local")
        if self._relay_domains:
            # Walking up the labels costs ten dict reads; the same few thousand foreign
            # domains come again and again, so their answer is remembered (bounded).
            relayed = self._relayed.get(domain)
            if relayed is None:
                relayed = self._relay.matches(domain)
                if len(self._relayed) >= _REMEMBERED_DOMAINS:
                    self._relayed.clear()
                self._relayed[domain] = relayed
            if relayed:
                return self._to_relay
        return relay_access_denied(request, self.name, "not-local")

    def __repr__(self) -> str:
        return (
            f"LocalDomainOnly({sorted(self._local.domains)!r}, "
            f"relay_domains={sorted(self._relay.domains)!r})"
        )


class TrustedNetworks:
    """ACCEPT clients whose address lies in one of the CIDR blocks; NEXT for the rest.

    Postfix ``permit_mynetworks``. IPv4 and IPv6 blocks; a client seen as IPv4-mapped IPv6
    is matched as IPv4.
    """

    __slots__ = ("_accept", "_networks", "_next", "_v4", "_v6", "name")

    def __init__(
        self, networks: Iterable[str | IPNetwork], *, name: str = "TrustedNetworks"
    ) -> None:
        if isinstance(networks, str):
            raise TypeError("networks must be an iterable of CIDR blocks, not one string")
        self.name = name
        self._networks = NetworkSet(networks)
        self._v4, self._v6 = self._networks.buckets()
        self._accept = accept(name, "trusted-network")
        self._next = next_policy(name, "untrusted-network")

    @property
    def networks(self) -> tuple[IPNetwork, ...]:
        return self._networks.networks

    def check(self, request: Request) -> Decision:
        # NetworkSet.contains, inlined: this runs for every recipient.
        value = request.client_ip_value
        for shift, values in self._v4 if request.client_ip_version == 4 else self._v6:
            if (value >> shift) in values:
                return self._accept
        return self._next

    def __repr__(self) -> str:
        return f"TrustedNetworks({[str(n) for n in self._networks.networks]!r})"
