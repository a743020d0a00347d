"""IP addresses and CIDR sets, IPv4 and IPv6, with IPv4-mapped IPv6 folded to IPv4.

Every address that enters the library goes through :func:`parse_ip`, so a client seen as
``::ffff:192.0.2.1`` by one program and ``192.0.2.1`` by another is the same client
everywhere: in a request, in a trusted-network set and in the POP-before-SMTP table.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache
from typing import NamedTuple, TypeAlias

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = ["IPAddress", "IPNetwork", "NetworkSet", "ParsedIp", "normalize_ip", "parse_ip"]


class ParsedIp(NamedTuple):
    """An address in its canonical text, as an object, and as (version, integer)."""

    text: str
    ip: IPAddress
    version: int
    value: int


def _fold(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return mapped
        if ip.scope_id is not None:
            # A zone index names an interface on *this* host; it is not part of who the
            # client is, and two programs print it differently.
            return ipaddress.IPv6Address(ip.packed)
    return ip


@lru_cache(maxsize=65536)
def parse_ip(text: str) -> ParsedIp:
    """Parse IPv4 or IPv6 text; fold IPv4-mapped IPv6 to IPv4; compress IPv6.

    Raises :class:`ValueError` for anything that is not an address. Surrounding brackets
    and an ``IPv6:`` tag (the SMTP address-literal forms) are accepted, because log files
    print addresses that way.
    """
    if not isinstance(text, str):
        raise ValueError(f"not an IP address: {text!r}")
    candidate = text.strip()
    if candidate.startswith("[") and candidate.endswith("]"):
        candidate = candidate[1:-1]
    if candidate[:5].lower() == "ipv6:":
        candidate = candidate[5:]
    try:
        ip = _fold(ipaddress.ip_address(candidate))
    except ValueError:
        raise ValueError(f"not an IP address: {text!r}") from None
    return ParsedIp(str(ip), ip, ip.version, int(ip))


def normalize_ip(text: str) -> str:
    """The canonical text of an address: ``::ffff:192.0.2.1`` -> ``192.0.2.1``."""
    return parse_ip(text).text


def parse_network(text: str) -> IPNetwork:
    """A CIDR block (or a single address); host bits must be zero.

    ``::ffff:10.0.0.0/104`` is folded to ``10.0.0.0/8`` so that it matches the folded
    client addresses.
    """
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"not a CIDR network: {text!r} ({exc})") from None
    if isinstance(net, ipaddress.IPv6Network):
        mapped = net.network_address.ipv4_mapped
        if mapped is not None and net.prefixlen >= 96:
            return ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return net


class NetworkSet:
    """A set of CIDR blocks answering membership in a few set lookups.

    Blocks are grouped by (IP version, prefix length); a lookup shifts the address once per
    distinct prefix length in use, so the cost does not grow with the number of blocks.
    """

    __slots__ = ("_v4", "_v6", "networks")

    def __init__(self, networks: Iterable[str | IPNetwork]) -> None:
        parsed: list[IPNetwork] = []
        for net in networks:
            parsed.append(parse_network(net) if isinstance(net, str) else net)
        self.networks: tuple[IPNetwork, ...] = tuple(parsed)
        buckets: dict[tuple[int, int], set[int]] = {}
        for net in parsed:
            bits = 32 if net.version == 4 else 128
            shift = bits - net.prefixlen
            buckets.setdefault((net.version, shift), set()).add(int(net.network_address) >> shift)
        ordered = sorted(buckets.items())
        self._v4: tuple[tuple[int, frozenset[int]], ...] = tuple(
            (shift, frozenset(values)) for (version, shift), values in ordered if version == 4
        )
        self._v6: tuple[tuple[int, frozenset[int]], ...] = tuple(
            (shift, frozenset(values)) for (version, shift), values in ordered if version == 6
        )

    def buckets(
        self,
    ) -> tuple[tuple[tuple[int, frozenset[int]], ...], tuple[tuple[int, frozenset[int]], ...]]:
        """The IPv4 and IPv6 (shift, network values) buckets, for callers that inline
        :meth:`contains` on a hot path."""
        return self._v4, self._v6

    def contains(self, version: int, value: int) -> bool:
        """Whether the address (as :class:`ParsedIp` version and value) is in a block."""
        for shift, values in self._v4 if version == 4 else self._v6:
            if (value >> shift) in values:
                return True
        return False

    def __contains__(self, address: object) -> bool:
        if isinstance(address, str):
            try:
                parsed = parse_ip(address)
            except ValueError:
                return False
        elif isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            parsed = parse_ip(str(address))
        else:
            return False
        return self.contains(parsed.version, parsed.value)

    def __len__(self) -> int:
        return len(self.networks)

    def __repr__(self) -> str:
        return f"NetworkSet({[str(n) for n in self.networks]!r})"
