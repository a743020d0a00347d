"""The parameters ``postfix import`` reads, and the domains and networks they give.

Part of the translation in :mod:`relaypolicy.postfix.importer` (its docstring is the
theory of operation). :class:`_Parameters` is the importer's base: ``value`` expands a
parameter with ``$name`` references (``postconf(5)``) or records a :class:`Refusal` when
the output cannot say what it is; ``domains`` turns ``mydestination`` and ``relay_domains``
into ``[domains] local`` and ``relay`` (``parent_domain_matches_subdomains`` decides
which); ``networks`` turns ``mynetworks`` into ``[networks] trusted``. An entry that cannot
be expressed exactly is refused, never widened.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from relaypolicy.domains import DomainSet, normalize_domain
from relaypolicy.errors import ConfigError, DomainError
from relaypolicy.networks import parse_network
from relaypolicy.postfix.postconf import expand, split_list

__all__ = ["Refusal"]

_TABLE = re.compile(r"^[a-z][a-z0-9_]*:(?!:)(?![0-9a-f]{0,4}:)")  # hash:/x, not fe80::/10


class Refusal(NamedTuple):
    """A setting the import did not translate: the parameter, its value, and why."""

    parameter: str
    value: str
    reason: str

    def __str__(self) -> str:
        return f"{self.parameter} = {self.value}: {self.reason}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Parameters:
    """main.cf's parameters (defaults filled in) and what could not be translated."""

    params: dict[str, str]
    refusals: list[Refusal]
    _local_names: set[str]

    def refuse(self, parameter: str, value: str, reason: str) -> None:
        refusal = Refusal(parameter, _one_line(value), reason)
        if refusal not in self.refusals:
            self.refusals.append(refusal)

    def value(self, name: str, params: dict[str, str] | None = None, label: str = "") -> str:
        """The expanded value of ``name``; ``""`` and a refusal when it cannot be known."""
        params = self.params if params is None else params
        raw = params.get(name)
        if raw is None:
            self.refuse(
                label + name,
                "(not in the output)",
                "its value depends on the host: run postconf there (--config-directory), "
                f"or add 'postconf -x {name}' to the output",
            )
            return ""
        try:
            return expand(raw, params)
        except KeyError as exc:
            self.refuse(
                label + name,
                raw,
                f"refers to ${exc.args[0]}, which the output does not hold: run postconf on "
                "the host (--config-directory), or give 'postconf -nx' output",
            )
        except ConfigError as exc:
            self.refuse(label + name, raw, str(exc))
        return ""

    # --- domains and networks -------------------------------------------------------

    def _domain_entries(self, parameter: str) -> list[tuple[str, bool]]:
        """(domain, is a ".domain" pattern) for each usable entry of a domain list."""
        text = self.value(parameter)
        entries = []
        for item in split_list(text):
            if item.startswith("/") or (":" in item and not item.startswith("[")):
                self.refuse(parameter, item, "a lookup table or file: list its domains instead")
                continue
            pattern = item.startswith(".")
            name = item[1:] if pattern else item
            try:
                DomainSet([name])
            except DomainError as exc:
                self.refuse(parameter, item, str(exc))
                continue
            entries.append((name.lower().rstrip("."), pattern))
        return entries

    def domains(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(local, relay): each a list of (domain, where it came from)."""
        parents = set(split_list(self.value("parent_domain_matches_subdomains")))
        local: dict[str, str] = {}
        relay: dict[str, str] = {}
        for parameter in ("mydestination", "relay_domains"):
            entries = self._domain_entries(parameter)
            exact = {name for name, pattern in entries if not pattern}
            below = {name for name, pattern in entries if pattern}
            if parameter in parents:
                below |= exact
            for name, pattern in entries:
                if pattern and name not in exact and _covered(name, exact & below):
                    continue  # a parent and its subdomains are listed already
                if pattern and name not in exact:
                    self.refuse(
                        parameter,
                        f".{name}",
                        f"matches the subdomains of {name} but not {name} itself; relaypolicy "
                        "relay domains match both: list the subdomains you mean",
                    )
                elif name in below:
                    relay.setdefault(name, parameter)
                else:
                    self._local_names.add(name)
                    why = parameter
                    if parameter == "relay_domains":
                        why += " (matched exactly: parent_domain_matches_subdomains omits it)"
                    local.setdefault(name, why)
        self._check_idn([*local, *relay])
        return list(local.items()), list(relay.items())

    def _check_idn(self, names: list[str]) -> None:
        """Postfix matches mydestination and relay_domains as strings: ``例え.jp`` listed
        alone does not make ``xn--r8jz45g.jp`` ours. relaypolicy folds the two forms into
        one domain, so a name listed in one form only would widen what is accepted."""
        listed = set(names)
        for name in names:
            if name.startswith("[") or (name.isascii() and "xn--" not in name):
                continue  # an address literal, or a plain ASCII name
            ace = normalize_domain(name)
            other = ace if not name.isascii() else ace.encode("ascii").decode("idna")
            if other not in listed:
                self.refuse(
                    "mydestination" if name in self._local_names else "relay_domains",
                    name,
                    f"Postfix accepts only this form; relaypolicy would also accept {other}: "
                    "list both forms in Postfix first (then both accept both)",
                )

    def networks(self) -> list[tuple[str, str]]:
        if "mynetworks" not in self.params:
            style = self.params.get("mynetworks_style", "host (compatibility_level >= 2)")
            self.refuse(
                "mynetworks",
                f"(not in the output; mynetworks_style = {style})",
                "Postfix computes it from this host's interfaces: run postconf on the host "
                "(--config-directory) or add 'postconf -x mynetworks' to the output",
            )
            return []
        trusted: list[tuple[str, str]] = []
        for item in split_list(self.value("mynetworks")):
            if item.startswith(("!", "/")) or _TABLE.match(item):
                kind = "a negation" if item.startswith("!") else "a lookup table or file"
                self.refuse("mynetworks", item, f"{kind}: list the networks in [networks] trusted")
                continue
            try:
                network = parse_network(item.replace("[", "").replace("]", ""))
            except ValueError as exc:
                self.refuse("mynetworks", item, f"{exc}; give the network address")
                continue
            if all(str(network) != known for known, _ in trusted):
                trusted.append((str(network), "mynetworks"))
        return trusted


def _covered(name: str, parents: set[str]) -> bool:
    """Whether a strict parent of ``name`` is listed with its subdomains."""
    labels = name.split(".")
    return any(".".join(labels[i:]) in parents for i in range(1, len(labels)))
