"""Translate Postfix's relay settings into a relaypolicy configuration (``postfix import``).

Theory of operation
-------------------
The input is what ``postconf`` prints (:mod:`relaypolicy.postfix.postconf`); the output a
TOML text for :func:`relaypolicy.config.load_config` and the list of what could not be
translated, each :class:`Refusal` with the parameter, its value and the reason. Nothing is
dropped in silence and nothing widened: an entry relaypolicy cannot express exactly is
left out of the TOML (which then refuses more than Postfix did, or says plainly where it
does not) and listed, as a comment at the top of the file and for the caller to print.

- ``mydestination`` becomes ``[domains] local`` (exact names); ``relay_domains`` becomes
  ``[domains] relay`` (a domain and its subdomains) when ``parent_domain_matches_subdomains``
  lists ``relay_domains`` (Postfix's default), else ``local`` (exact, as Postfix then
  matches it). A ``.domain`` pattern is kept only beside its parent. Lookup tables and
  files are refused: list their domains.
- ``mynetworks`` becomes ``[networks] trusted``. When the output does not hold it, its
  value depends on ``mynetworks_style`` and this host's interfaces: it must come from
  ``postconf`` on that host (``--config-directory`` does that).
- The restriction lists become ``[chain] steps`` (:mod:`relaypolicy.postfix.restrictions`);
  a ``master.cf`` smtpd service whose ``-o`` overrides give another chain gets
  ``[chain.ports] PORT`` (``submission`` 587, ``submissions``/``smtps`` 465, ``smtp`` 25,
  ``HOST:PORT`` its port).
- ``smtpd_sender_login_maps`` and ``relay_clientcerts`` are read when they are ``hash:``,
  ``btree:``, ``texthash:`` (the source text, through ``read_file``) or ``inline:{...}``.

Defaults: ``postconf -x`` prints every parameter, defaults included. Text without them
(``postconf -n``) gets the defaults of Postfix 3.6+ that depend neither on the host nor,
at the ``compatibility_level`` the text gives (0 when it gives none), on that level; any
other parameter (``mynetworks``, ``myhostname``, ``relay_domains`` below level 2) must be
in the text.

Here: the defaults, the per-port chains and the TOML written out.
:mod:`relaypolicy.postfix.destinations` expands a parameter (or refuses it) and turns the
domains and networks into theirs.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import NamedTuple

from relaypolicy.postfix.destinations import Refusal, _one_line, _Parameters
from relaypolicy.postfix.maps import MapReader
from relaypolicy.postfix.postconf import Postconf, Service
from relaypolicy.postfix.restrictions import LISTS, chain_for

__all__ = ["Refusal", "Translation", "translate"]

# Postfix 3.6+ defaults (compatibility_level >= 2) that are the same on every host.
DEFAULTS = {
    "mydestination": "$myhostname, localhost.$mydomain, localhost",
    "relay_domains": "",
    "parent_domain_matches_subdomains": "debug_peer_list, fast_flush_domains, mynetworks, "
    "permit_mx_backup_networks, qmqpd_authorized_clients, relay_domains, smtpd_access_maps",
    "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated, "
    "defer_unauth_destination",
    "smtpd_recipient_restrictions": "",
    "smtpd_client_restrictions": "",
    "smtpd_helo_restrictions": "",
    "smtpd_sender_restrictions": "",
    "smtpd_restriction_classes": "",
    "smtpd_sasl_auth_enable": "no",
    "smtpd_tls_auth_only": "no",
    "smtpd_tls_wrappermode": "no",
    "smtpd_sender_login_maps": "",
    "relay_clientcerts": "",
    "smtpd_tls_fingerprint_digest": "sha256",
    "smtpd_delay_reject": "yes",
}
# Defaults that hold from this compatibility_level on; below it, the parameter must be in
# the output (postconf -x prints it).
_LEVEL_DEPENDENT = {
    "relay_domains": (2,),
    "smtpd_relay_restrictions": (1,),
    "smtpd_tls_fingerprint_digest": (3, 6),
}


def _level(text: str) -> tuple[int, ...]:
    """``compatibility_level`` as a comparable tuple (``3.6`` -> ``(3, 6)``); ``(0,)`` when
    it is not a number (a ``$name`` postconf did not expand)."""
    try:
        return tuple(int(part) for part in text.strip().split("."))
    except ValueError:
        return (0,)


# Overrides relaypolicy cannot hold per port: its domains and networks are global.
_GLOBAL_ONLY = ("mydestination", "relay_domains", "mynetworks", "parent_domain_matches_subdomains")
_RELEVANT = (
    *LISTS,
    *_GLOBAL_ONLY,
    "smtpd_sasl_auth_enable",
    "smtpd_sender_login_maps",
    "relay_clientcerts",
    "smtpd_restriction_classes",
    "smtpd_tls_auth_only",
    "smtpd_tls_wrappermode",
)
_NOBODY = "@sender-login-maps-not-translated.invalid"  # RFC 2606: matches no sender
_PORTS = {"smtp": 25, "submission": 587, "submissions": 465, "smtps": 465}


class Translation(NamedTuple):
    """The TOML text, the refusals, and the notes (translated, with a caveat)."""

    toml: str
    refusals: list[Refusal]
    notes: list[str]


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


class _Importer(_Parameters):
    def __init__(self, postconf: Postconf, read_file: Callable[[str], str] | None) -> None:
        level = _level(postconf.params.get("compatibility_level", "0"))
        defaults = {
            name: value
            for name, value in DEFAULTS.items()
            if level >= _LEVEL_DEPENDENT.get(name, (0,))
        }
        self.params = {**defaults, **postconf.params}
        if "mydomain" not in self.params and "." in self.params.get("myhostname", ""):
            self.params["mydomain"] = self.params["myhostname"].split(".", 1)[1]
        self.services = postconf.services
        self.read_file = read_file
        self.refusals: list[Refusal] = []
        self.notes: list[str] = []
        self._local_names: set[str] = set()
        self.maps = MapReader(read_file, self.refuse, self.notes)

    # --- services -----------------------------------------------------------------------

    def service_port(self, service: Service) -> int | None:
        name = service.name.rsplit(":", 1)[-1]
        if name.isdigit() and 0 < int(name) < 65536:
            return int(name)
        return _PORTS.get(name)


def _effective(importer: _Importer, service: Service) -> dict[str, str]:
    """main.cf with the service's ``-o`` overrides on top."""
    params = dict(importer.params)
    params.update(service.overrides)
    return params


def _yes(importer: _Importer, service: Service, name: str) -> bool:
    """Whether the boolean parameter ``name`` is on for ``service``."""
    return importer.value(name, _effective(importer, service)).lower() == "yes"


def _array(name: str, values: list[tuple[str, str]]) -> list[str]:
    """``name = [`` one value per line with where it came from ``]``."""
    if not values:
        return [f"{name} = []"]
    return [f"{name} = [", *(f"    {_q(v)},  # {_one_line(why)}" for v, why in values), "]"]


def translate(
    postconf: Postconf,
    *,
    source: str = "postconf",
    read_file: Callable[[str], str] | None = None,
) -> Translation:
    """The relaypolicy configuration for these Postfix settings, and what was refused.

    ``read_file(path)`` returns the text of a map's source file (``smtpd_sender_login_maps``,
    ``relay_clientcerts``); without it such maps are refused. Pure otherwise.
    """
    importer = _Importer(postconf, read_file)
    local, relay = importer.domains()
    main_chain = chain_for(importer.params, "", importer.value)
    chains = {0: ("main.cf", main_chain)}
    for service in postconf.services:
        if service.command != "smtpd" or not set(service.overrides) & set(_RELEVANT):
            continue
        label = f"{service.name}/{service.type}: "
        for name in _GLOBAL_ONLY:
            if name in service.overrides:
                importer.refuse(
                    label + name,
                    service.overrides[name],
                    "relaypolicy's domains and networks are the same on every port",
                )
        params = _effective(importer, service)
        chain = chain_for(
            params, label, functools.partial(importer.value, params=params, label=label)
        )
        port = importer.service_port(service)
        if port is None or service.type != "inet":
            importer.refuse(
                label.rstrip(": "),
                ", ".join(service.overrides),
                "cannot tell which port this smtpd serves",
            )
            continue
        if chain.steps != main_chain.steps:
            if port in chains and chains[port][1].steps != chain.steps:
                importer.refuse(label.rstrip(": "), str(port), "two services on one port")
            chains[port] = (f"{service.name}/{service.type}", chain)
    for _, chain in chains.values():
        for issue in chain.issues:
            importer.refuse(*issue)
        importer.notes.extend(chain.notes)
    used = {step for _, chain in chains.values() for step in chain.steps}
    trusted = importer.networks() if "trusted_networks" in used else []
    logins = []
    if any(c.sender_logins for _, c in chains.values()):
        logins = importer.maps.sender_logins(importer.value("smtpd_sender_login_maps"))
    certificates = []
    if "client_certificate" in used:
        certificates = importer.maps.fingerprints(
            importer.value("smtpd_tls_fingerprint_digest"), importer.value("relay_clientcerts")
        )
    if "client_certificate" in used and not certificates:  # leave the permit out: stricter
        chains = {
            port: (
                where,
                chain._replace(
                    steps=tuple(s for s in chain.steps if s != "client_certificate")
                    or ("local_domains",)
                ),
            )
            for port, (where, chain) in chains.items()
        }
        main_chain = chains[0][1]
        used.discard("client_certificate")
    needs_logins = any(c.sender_logins for _, c in chains.values())
    if needs_logins and not logins:
        # sasl_required without an ownership table would let any login use any sender:
        # a table nobody matches refuses every authenticated sender instead (stricter).
        logins = [(_NOBODY, ["nobody"])]
    if "local_domains" in used and not (local or relay):
        importer.refuse(
            "mydestination",
            importer.value("mydestination") or "(empty)",
            "no local or relay domain: reject_unauth_destination refuses all",
        )
    # AUTH only inside TLS on every service that offers it: smtpd_tls_auth_only, or a
    # port that is TLS from its first byte (smtpd_tls_wrappermode, 465), which needs no
    # smtpd_tls_auth_only (Debian's submissions template has none) and must not turn the
    # requirement off for the other ports.
    auth_only = [
        _yes(importer, s, "smtpd_tls_auth_only") or _yes(importer, s, "smtpd_tls_wrappermode")
        for s in postconf.services
        if s.command == "smtpd" and _yes(importer, s, "smtpd_sasl_auth_enable")
    ]
    lines = ["", "[domains]", *_array("local", local), *_array("relay", relay)]
    if "trusted_networks" in used:
        lines += ["", "[networks]", *_array("trusted", trusted)]
    if (auth_only and all(auth_only)) or logins:
        lines += ["", "[smtp_auth]"]
        if auth_only and all(auth_only):
            lines.append(
                "require_tls = true  # smtpd_tls_auth_only = yes: AUTH only after STARTTLS"
            )
        if logins:
            lines += [
                "",
                f"[smtp_auth.sender_logins]  # smtpd_sender_login_maps = "
                f"{_one_line(importer.value('smtpd_sender_login_maps'))}",
            ]
            lines += [f"{_q(key)} = [{', '.join(_q(n) for n in names)}]" for key, names in logins]
    if certificates:
        lines += [
            "",
            "[client_certificates]",
            *_array("fingerprints", [(f, "relay_clientcerts") for f in certificates]),
        ]
    if "pop_before_smtp" in used:
        maps = sorted({m for _, c in chains.values() for m in c.pop_maps})
        lines += [
            "",
            f"[pop_before_smtp]  # check_client_access {', '.join(maps)}",
            "# Postfix's map is not read: feed this table with [watch] (docs/watcher.md)",
            "ttl = 1800",
        ]
    lines += ["", "[chain]"]
    lines += [
        f"# {name} = {_one_line(importer.value(name))}" for name in LISTS if importer.value(name)
    ]
    lines.append(f"steps = [{', '.join(_q(step) for step in main_chain.steps)}]")
    ports = sorted(port for port in chains if port)
    if ports:
        lines += ["", "[chain.ports]"]
        for port in ports:
            where, chain = chains[port]
            lines.append(f"{port} = [{', '.join(_q(step) for step in chain.steps)}]  # {where}")
    text = "\n".join([*_header(source, importer), *lines]) + "\n"
    return Translation(text, importer.refusals, importer.notes)


def _header(source: str, importer: _Importer) -> list[str]:
    lines = [
        "# relaypolicy configuration imported from Postfix by 'relaypolicy postfix import'",
        f"# from {_one_line(source)}",
        "# Check it: relaypolicy config check FILE; compare it with the running Postfix:",
        "#   relaypolicy postfix compare --config FILE --smtp HOST:PORT --source-address IP",
    ]
    if importer.refusals:
        lines += ["#", "# NOT TRANSLATED -- relaypolicy does not do what these settings do:"]
        lines += [f"#   {_one_line(str(refusal))}" for refusal in importer.refusals]
    if importer.notes:
        lines += ["#", "# Notes:"]
        lines += [f"#   {_one_line(note)}" for note in dict.fromkeys(importer.notes)]
    return lines
