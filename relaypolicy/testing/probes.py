"""The relay-abuse battery: envelopes a server that is not an open relay must refuse.

Theory of operation
-------------------
Every probe is one ``MAIL FROM`` / ``RCPT TO`` pair, sent by a client the server has no
reason to trust, whose recipient ends up at a *foreign* destination under every reading
that some mail software has given it: plainly, through sender-specified routing
(``user%foreign@ours``, ``foreign!user@ours``, ``"user@foreign"@ours``, a second ``@``,
source routes), through an address literal that is not the server's, or through a domain
that only looks like ours (case, trailing dot, prefix and suffix games, IDN look-alikes).
A server that answers ``2xx`` to any of them relays, or hands the message to software that
might.

The battery starts with the 16 probes of nmap's ``smtp-open-relay`` script (same order,
same senders) and adds the routing forms of RFC 5321 appendix C and RFC 1123 section
5.2.16, address literals, look-alikes, the postmaster exemption and the null sender. The
templates are data (:data:`TEMPLATES`); :func:`relay_probes` fills them in for a server.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import NamedTuple

from relaypolicy.domains import DomainError, normalize_domain

__all__ = [
    "DEFAULT_FOREIGN_DOMAIN",
    "NMAP_PROBES",
    "TEMPLATES",
    "Probe",
    "probe_battery",
    "relay_probes",
]

DEFAULT_FOREIGN_DOMAIN = "nmap.scanme.org"  # nmap's own; it has DNS, so no "unknown domain"
DEFAULT_USER = "relaytest"
FOREIGN_IPV4 = "198.51.100.25"  # TEST-NET-2 (RFC 5737): nobody's mail server
FOREIGN_IPV6 = "2001:db8:25::25"  # the documentation prefix (RFC 3849)
NMAP_PROBES = 16  # the first NMAP_PROBES templates are nmap's, in its order


class Probe(NamedTuple):
    """One relay attempt: send ``sender`` in MAIL FROM and ``recipient`` in RCPT TO.

    ``name`` is short and stable (``nmap-06``, ``percent-quoted``); ``why`` says what the
    trick is. ``smtputf8`` is true when the envelope is not ASCII, so it can only be sent
    to a server that offers the SMTPUTF8 extension (RFC 6531).
    """

    name: str
    why: str
    recipient: str
    sender: str

    @property
    def smtputf8(self) -> bool:
        return not (self.recipient + self.sender).isascii()


class _Template(NamedTuple):
    name: str
    recipient: str
    sender: str
    why: str


_T = _Template
_STRANGER = "antispam@{foreign}"

# Placeholders: {user} {foreign} {local} {ip} (the server's address literal, brackets
# included), {foreign_ip}, {foreign_ip6}, {padded_ip} (the foreign IPv4 with zero-padded
# octets), {upper_*} (upper case), {lookalike} / {lookalike_ace} (the local domain with a
# Cyrillic letter, as a U-label / an A-label), {relay} (a relay domain, only when given).
# fmt: off
TEMPLATES: tuple[_Template, ...] = (
    # nmap smtp-open-relay.nse, its 16 probes in its order.
    _T("nmap-01", "{user}@{foreign}", "",
       "a foreign recipient with the null sender: bounces must not relay either"),
    _T("nmap-02", "{user}@{foreign}", _STRANGER,
       "a stranger writing to a stranger through us: the classic open relay"),
    _T("nmap-03", "{user}@{foreign}", "antispam@{local}",
       "a forged sender of ours: relay control must never trust MAIL FROM"),
    _T("nmap-04", "{user}@{foreign}", "antispam@{ip}",
       "a sender at the server's own address literal"),
    _T("nmap-05", "{user}%{foreign}@{ip}", "antispam@{ip}",
       "percent hack through the server's address literal"),
    _T("nmap-06", "{user}%{foreign}@{local}", "antispam@{ip}",
       "percent hack (RFC 1123 5.2.16): our domain forwards to what follows the %"),
    _T("nmap-07", '"{user}@{foreign}"', "antispam@{ip}",
       "a quoted foreign address without a domain: once ours is appended, the @ routes"),
    _T("nmap-08", '"{user}%{foreign}"', "antispam@{ip}",
       "a quoted percent hack without a domain"),
    _T("nmap-09", "{user}@{foreign}@{ip}", "antispam@{ip}",
       "two @: the last names our literal, the first a foreign domain"),
    _T("nmap-10", '"{user}@{foreign}"@{ip}', "antispam@{ip}",
       "a quoted @ in the local part, at our address literal"),
    _T("nmap-11", "{user}@{foreign}@{local}", "antispam@{ip}",
       "two @: the last names our domain, the first a foreign one"),
    _T("nmap-12", "@{ip}:{user}@{foreign}", "antispam@{ip}",
       "a source route through our literal; RFC 5321 4.1.1.3: the mailbox is foreign"),
    _T("nmap-13", "@{local}:{user}@{foreign}", "antispam@{ip}",
       "a source route through our domain to a foreign mailbox"),
    _T("nmap-14", "{foreign}!{user}", "antispam@{ip}",
       "a UUCP bang path without a domain"),
    _T("nmap-15", "{foreign}!{user}@{ip}", "antispam@{ip}",
       "a bang path at our address literal"),
    _T("nmap-16", "{foreign}!{user}@{local}", "antispam@{ip}",
       "a bang path at our domain (Postfix swap_bangpath makes it user@foreign)"),
    # Sender-specified routing through our domain.
    _T("percent-upper-case", "{upper_user}%{upper_foreign}@{upper_local}", _STRANGER,
       "the percent hack in capitals: a case-sensitive check misses it"),
    _T("percent-twice", "{user}%{foreign}%{local}@{local}", _STRANGER,
       "two percent hops: each peels one %, the last hop is foreign"),
    _T("percent-quoted", '"{user}%{foreign}"@{local}', _STRANGER,
       "the percent hack inside quotes, hidden from a check of the bare text"),
    _T("percent-domainless", "{user}%{foreign}", _STRANGER,
       "a percent hack with no domain: the MTA appends its own, then routes"),
    _T("percent-to-literal", "{user}%[{foreign_ip}]@{local}", _STRANGER,
       "the percent hack to a foreign address literal"),
    _T("bang-quoted", '"{foreign}!{user}"@{local}', _STRANGER,
       "a bang path inside quotes"),
    _T("bang-two-hops", "{local}!{foreign}!{user}@{local}", _STRANGER,
       "a bang path of two hops: the first is ours, the last foreign"),
    _T("bang-two-hops-domainless", "{local}!{foreign}!{user}", _STRANGER,
       "a domainless bang path whose first hop is ours"),
    _T("bang-and-percent", "{foreign}!{user}%{local}@{local}", _STRANGER,
       "bang path and percent hack mixed: every rewrite order ends abroad"),
    _T("at-quoted", '"{user}@{foreign}"@{local}', _STRANGER,
       "a quoted @: RFC 5321 allows any character in a quoted local part"),
    _T("at-quoted-escaped", '"{user}\\@{foreign}"@{local}', _STRANGER,
       "a backslash-escaped @ inside quotes"),
    _T("at-escaped-unquoted", "{user}\\@{foreign}@{local}", _STRANGER,
       "a backslash before @ outside quotes: Postfix drops it and routes abroad"),
    _T("at-after-quoted-user", '"{user}"@{foreign}@{local}', _STRANGER,
       "a quoted user, then a foreign domain, then ours"),
    _T("quote-inside-quotes", '"{user}\\"@{foreign}"@{local}', _STRANGER,
       "an escaped quote, then an @, inside the quoted local part"),
    _T("at-ours-then-foreign", "{user}@{local}@{foreign}", _STRANGER,
       "two @, the last foreign: a parser that splits at the first @ sees ours"),
    _T("source-route-two-hops", "@{local},@{ip}:{user}@{foreign}", _STRANGER,
       "a source route of two hops, both ours, to a foreign mailbox"),
    _T("source-route-percent", "@{local}:{user}%{foreign}@{local}", _STRANGER,
       "a source route, then a percent hack"),
    _T("source-route-quoted", '@{local}:"{user}@{foreign}"', _STRANGER,
       "a source route to a quoted, domainless foreign address"),
    _T("source-route-bang", "@{local}:{foreign}!{user}", _STRANGER,
       "a source route to a domainless bang path"),
    _T("nested-angle-brackets", "<{user}@{foreign}>", _STRANGER,
       "RCPT TO:<<user@foreign>>: a lenient parser strips the second pair"),
    # Address literals that are not the server's own.
    _T("literal-foreign-ipv4", "{user}@[{foreign_ip}]", _STRANGER,
       "mail to someone else's IPv4 address literal"),
    _T("literal-foreign-ipv6", "{user}@[IPv6:{foreign_ip6}]", _STRANGER,
       "mail to someone else's IPv6 address literal"),
    _T("literal-ipv6-lower-tag", "{user}@[ipv6:{foreign_ip6}]", _STRANGER,
       "the IPv6 tag in lower case (RFC 5321 says the tag is case-insensitive)"),
    _T("literal-ipv4-mapped", "{user}@[IPv6:::ffff:{foreign_ip}]", _STRANGER,
       "a foreign IPv4 address written as IPv4-mapped IPv6"),
    _T("literal-leading-zeros", "{user}@[{padded_ip}]", _STRANGER,
       "zero-padded octets: some parsers read them as octal, others as decimal"),
    _T("literal-bare-ip", "{user}@{foreign_ip}", _STRANGER,
       "a bare IP address without brackets (RFC 5321 wants [..])"),
    _T("literal-percent-hack", "{user}%{foreign}@[{foreign_ip}]", _STRANGER,
       "a percent hack at a foreign literal"),
    # Domains that only look like ours.
    _T("upper-case", "{upper_user}@{upper_foreign}", _STRANGER,
       "a foreign domain in capitals: comparisons must fold case both ways"),
    _T("trailing-dot", "{user}@{foreign}.", _STRANGER,
       "the root dot of a fully-qualified name: a foreign domain all the same"),
    _T("ours-as-prefix", "{user}@{local}.{foreign}", _STRANGER,
       "our name as the first labels of a foreign domain: a prefix match says ours"),
    _T("ours-as-suffix", "{user}@evil-{local}", _STRANGER,
       "a foreign domain ending in our name: a suffix match without a dot says ours"),
    _T("ours-glued", "{user}@{local}{foreign}", _STRANGER,
       "our name glued to a foreign one, without a dot"),
    _T("percent-in-domain", "{user}@{foreign}%{local}", _STRANGER,
       "a % in the domain: software that routes on the last % sees ours"),
    _T("lookalike-utf8", "{user}@{lookalike}", _STRANGER,
       "our name with a Cyrillic letter (SMTPUTF8): an IDN look-alike is another domain"),
    _T("lookalike-a-label", "{user}@{lookalike_ace}", _STRANGER,
       "the same look-alike as an A-label (xn--), plain ASCII"),
    _T("utf8-local-part", "ユーザー@{foreign}", _STRANGER,
       "an internationalised mailbox at a foreign domain (SMTPUTF8, RFC 6531)"),
    # The postmaster and abuse exemptions.
    _T("postmaster-foreign", "postmaster@{foreign}", _STRANGER,
       "postmaster of a foreign domain: RFC 5321 4.5.1 exempts only our own"),
    _T("postmaster-percent", "postmaster%{foreign}@{local}", _STRANGER,
       "a percent hack dressed as our postmaster"),
    _T("postmaster-quoted", '"postmaster@{foreign}"', _STRANGER,
       "a quoted foreign postmaster without a domain"),
    _T("abuse-foreign", "abuse@{foreign}", _STRANGER,
       "abuse of a foreign domain: some servers exempt role accounts from relay checks"),
    # Senders: relay control must not depend on MAIL FROM.
    _T("sender-our-postmaster", "{user}@{foreign}", "postmaster@{local}",
       "a forged sender: our own postmaster"),
    _T("sender-our-domain-upper", "{user}@{foreign}", "{upper_user}@{upper_local}",
       "a forged sender of ours, in capitals"),
    _T("sender-is-recipient", "{user}@{foreign}", "{user}@{foreign}",
       "sender and recipient the same foreign address"),
    _T("null-sender-percent", "{user}%{foreign}@{local}", "",
       "the null sender with a percent hack"),
    _T("null-sender-bang", "{foreign}!{user}@{local}", "",
       "the null sender with a bang path"),
    _T("null-sender-quoted", '"{user}@{foreign}"@{local}', "",
       "the null sender with a quoted @"),
    # Syntax a lenient parser repairs.
    _T("comment", "{user}(comment)@{foreign}", _STRANGER,
       "an RFC 822 comment, dropped by lenient parsers"),
    _T("space-before-at", "{user} @{foreign}", _STRANGER,
       "a space before the @, dropped by lenient parsers"),
)
# fmt: on

RELAY_TEMPLATES: tuple[_Template, ...] = (
    _T(
        "relay-percent",
        "{user}%{foreign}@{relay}",
        _STRANGER,
        "a percent hack at a relay domain (Postfix allow_untrusted_routing = no)",
    ),
    _T(
        "relay-bang",
        "{foreign}!{user}@{relay}",
        _STRANGER,
        "a bang path at a relay domain",
    ),
    _T(
        "relay-at-quoted",
        '"{user}@{foreign}"@{relay}',
        _STRANGER,
        "a quoted @ at a relay domain",
    ),
    _T(
        "relay-as-prefix",
        "{user}@{relay}.{foreign}",
        _STRANGER,
        "a relay domain as the first labels of a foreign domain",
    ),
    _T(
        "relay-as-suffix",
        "{user}@evil-{relay}",
        _STRANGER,
        "a foreign domain ending in the relay domain's name, without a dot",
    ),
)

# Latin letters and their Cyrillic twins (UTS 39 confusables).
_CYRILLIC = {
    "a": "\u0430",
    "c": "\u0441",
    "e": "\u0435",
    "i": "\u0456",
    "o": "\u043e",
    "p": "\u0440",
    "x": "\u0445",
    "y": "\u0443",
}


def _literal(ip: str) -> str:
    """``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` for an IP address (brackets optional)."""
    text = ip.strip()
    if text.startswith("[") and text.endswith("]"):
        return text
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address):
        return f"[IPv6:{address.compressed}]"
    return f"[{address}]"


def _lookalike(domain: str) -> tuple[str, str] | None:
    """The domain with its first confusable letter made Cyrillic: (U-label form, A-label)."""
    if domain.startswith("["):
        return None
    for index, char in enumerate(domain):
        twin = _CYRILLIC.get(char)
        if twin is not None:
            unicode_form = domain[:index] + twin + domain[index + 1 :]
            try:
                return unicode_form, normalize_domain(unicode_form)
            except DomainError:
                return None
    return None


def relay_probes(
    local_domain: str,
    *,
    foreign_domain: str = DEFAULT_FOREIGN_DOMAIN,
    server_ip: str = "127.0.0.1",
    relay_domain: str | None = None,
    user: str = DEFAULT_USER,
) -> list[Probe]:
    """The battery for a server whose domain is ``local_domain``.

    ``server_ip`` is the server's own address (the ``[IP]`` of nmap's probes);
    ``foreign_domain`` a domain that is neither the server's nor relayed by it;
    ``relay_domain``, when given, adds probes against a domain the server relays for.
    Probes whose trick does not apply (a look-alike of a domain without a confusable
    letter) are left out. Names are unique.
    """
    local = normalize_domain(local_domain) if not local_domain.startswith("[") else local_domain
    foreign = normalize_domain(foreign_domain)
    if foreign == local:
        raise ValueError(f"foreign_domain {foreign_domain!r} is the local domain")
    foreign_v4 = ipaddress.IPv4Address(FOREIGN_IPV4)
    values = {
        "user": user,
        "foreign": foreign,
        "local": local,
        "ip": _literal(server_ip),
        "foreign_ip": str(foreign_v4),
        "foreign_ip6": FOREIGN_IPV6,
        "padded_ip": ".".join(f"{int(octet):03d}" for octet in str(foreign_v4).split(".")),
        "upper_user": user.upper(),
        "upper_foreign": foreign.upper(),
        "upper_local": local.upper(),
        "relay": normalize_domain(relay_domain) if relay_domain else "",
    }
    lookalike = _lookalike(local)
    if lookalike is not None:
        values["lookalike"], values["lookalike_ace"] = lookalike
    templates = TEMPLATES + (RELAY_TEMPLATES if relay_domain else ())
    probes: list[Probe] = []
    for template in templates:
        if "lookalike" in template.recipient and lookalike is None:
            continue
        if local.startswith("[") and "{local}" in template.recipient and "ours-" in template.name:
            continue  # prefix and suffix games need a name, not a literal
        probes.append(
            Probe(
                template.name,
                template.why,
                template.recipient.format(**values),
                template.sender.format(**values),
            )
        )
    return probes


def probe_battery(
    local_domains: Iterable[str],
    *,
    relay_domains: Iterable[str] = (),
    foreign_domain: str = DEFAULT_FOREIGN_DOMAIN,
    server_ip: str = "127.0.0.1",
) -> list[Probe]:
    """:func:`relay_probes` for every local domain, plus the relay-domain probes for every
    relay domain. With more than one local domain, names are prefixed ``domain:``."""
    if isinstance(local_domains, str) or isinstance(relay_domains, str):
        raise TypeError("local_domains and relay_domains are lists of domains, not one string")
    domains = list(local_domains)
    if not domains:
        raise ValueError("local_domains: give at least one domain")
    probes: list[Probe] = []
    for domain in domains:
        battery = relay_probes(domain, foreign_domain=foreign_domain, server_ip=server_ip)
        if len(domains) > 1:
            battery = [probe._replace(name=f"{domain}:{probe.name}") for probe in battery]
        probes += battery
    for relay in relay_domains:
        extra = relay_probes(
            domains[0], foreign_domain=foreign_domain, server_ip=server_ip, relay_domain=relay
        )
        probes += [
            probe._replace(name=f"{relay}:{probe.name}")
            for probe in extra
            if probe.name.startswith("relay-")
        ]
    return probes
