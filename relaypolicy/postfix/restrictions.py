"""Postfix's smtpd restriction lists as relaypolicy chain steps, or the reason they are not.

Theory of operation
-------------------
With ``smtpd_delay_reject = yes`` (the default) Postfix asks, at ``RCPT TO``, each of
``smtpd_client_restrictions``, ``smtpd_helo_restrictions``, ``smtpd_sender_restrictions``,
``smtpd_relay_restrictions`` and ``smtpd_recipient_restrictions`` in turn; a ``permit``
ends only its own list, a ``reject`` ends the request. A recipient is accepted when every
list lets it through. relaypolicy's chain is one list (the first answer wins), so a set of
lists is translated only when it reduces to one:

- each list must read ``P1, P2, ..., T``: client permits (``permit_mynetworks``,
  ``permit_sasl_authenticated``, ``permit_tls_clientcerts``, ``check_client_access`` on a
  POP-before-SMTP map) followed by one terminal: ``reject_unauth_destination`` or
  ``defer_unauth_destination`` (refuse foreign destinations), ``reject`` (refuse the rest),
  ``permit`` or the end of the list (let the rest through);
- a list ending in ``permit`` or its end lets everyone through and drops out;
- the remaining lists must permit nested sets of clients; the chain permits the smallest
  set, then asks ``local_domains`` when every remaining list ends in a destination check,
  or refuses when the lists ending in ``reject`` permit that same smallest set.

``reject_sender_login_mismatch`` is honoured where relaypolicy has it: on a service whose
chain comes to "authenticated clients only", as the ``sasl_required`` step with
``[smtp_auth.sender_logins]``. Everything else -- another restriction, a restriction class,
``permit`` before the end, a ``reject_*`` check that is not a relay decision -- is refused
with the reason, and left out of the chain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

from relaypolicy.errors import ConfigError
from relaypolicy.postfix.postconf import split_list

__all__ = ["LISTS", "POP_MAP_WORDS", "Chain", "Issue", "chain_for"]

#: The restriction lists Postfix asks at RCPT TO (smtpd_delay_reject = yes), in its order.
LISTS = (
    "smtpd_client_restrictions",
    "smtpd_helo_restrictions",
    "smtpd_sender_restrictions",
    "smtpd_relay_restrictions",
    "smtpd_recipient_restrictions",
)

#: A check_client_access map whose name holds one of these is a POP-before-SMTP map
#: (pop-before-smtp, DRAC's dracd, relaypolicy's own exported map).
POP_MAP_WORDS = ("pop-before-smtp", "pop_before_smtp", "popbeforesmtp", "dracd", "relaypolicy")

_PERMITS = {
    "permit_mynetworks": "trusted_networks",
    "permit_sasl_authenticated": "sasl_permit",
    "permit_tls_clientcerts": "client_certificate",
}
_DESTINATION = ("reject_unauth_destination", "defer_unauth_destination")
_WITH_TABLE = frozenset(
    {
        "check_client_access",
        "check_reverse_client_hostname_access",
        "check_client_a_access",
        "check_client_mx_access",
        "check_client_ns_access",
        "check_helo_access",
        "check_helo_a_access",
        "check_helo_mx_access",
        "check_helo_ns_access",
        "check_sender_access",
        "check_sender_a_access",
        "check_sender_mx_access",
        "check_sender_ns_access",
        "check_recipient_access",
        "check_recipient_a_access",
        "check_recipient_mx_access",
        "check_recipient_ns_access",
        "check_ccert_access",
        "check_sasl_access",
        "check_etrn_access",
        "check_policy_service",
        "reject_rbl_client",
        "reject_rhsbl_client",
        "reject_rhsbl_sender",
        "reject_rhsbl_helo",
        "reject_rhsbl_recipient",
        "reject_rhsbl_reverse_client",
        "reject_dnsbl_client",
        "permit_dnswl_client",
        "permit_rhswl_client",
        "warn_if_reject",
        "sleep",
    }
)


class Issue(NamedTuple):
    """Something the translation could not carry over: which list, which item, why."""

    parameter: str
    value: str
    reason: str


class Chain(NamedTuple):
    """The steps for one service, what they rely on, and what could not be translated.

    ``sender_logins`` is true when ``reject_sender_login_mismatch`` was translated (the
    chain is then ``["sasl_required"]``); ``pop_maps`` the POP-before-SMTP maps named.
    """

    steps: tuple[str, ...]
    issues: tuple[Issue, ...]
    notes: tuple[str, ...]
    sender_logins: bool
    pop_maps: tuple[str, ...]


class _List(NamedTuple):
    permits: tuple[str, ...]
    terminal: str  # "destination", "reject" or "pass"
    mismatch: bool  # reject_sender_login_mismatch before the terminal


def _items(text: str) -> list[str]:
    """The restrictions of a list, each with the table or argument it takes."""
    words = split_list(text)
    items: list[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        following = words[index + 1] if index + 1 < len(words) else ""
        if (word in _WITH_TABLE and following) or following.startswith("{"):
            word = f"{word} {words[index + 1]}"
            index += 1
        items.append(word)
        index += 1
    return items


def _reason(item: str, classes: frozenset[str]) -> str:
    name = item.split(" ", 1)[0]
    if name in classes:
        return "a restriction class (smtpd_restriction_classes): not translated"
    if name == "check_policy_service":
        return "a policy service: relaypolicy cannot ask another one"
    if name.startswith("check_") or name.startswith("permit_"):
        return "an access map or permit relaypolicy does not have: it may permit a relay"
    if name.startswith(("reject_", "defer_", "warn_")) or name in ("sleep", "defer", "defer_if"):
        return (
            "not a relay decision relaypolicy makes: it refuses mail relaypolicy would take "
            "(keep it in Postfix, where it stays after the switch)"
        )
    return "an unknown restriction"


def _parse_list(
    parameter: str,
    text: str,
    *,
    sasl: bool,
    classes: frozenset[str],
    issues: list[Issue],
    notes: list[str],
    pop_maps: list[str],
) -> _List:
    permits: list[str] = []
    mismatch = False
    items = _items(text)
    for position, item in enumerate(items):
        name = item.split(" ", 1)[0]
        last = position == len(items) - 1
        if name in _PERMITS:
            if name == "permit_sasl_authenticated" and not sasl:
                notes.append(f"{parameter}: {name} never matches: smtpd_sasl_auth_enable = no")
                continue
            if _PERMITS[name] not in permits:
                permits.append(_PERMITS[name])
        elif name == "check_client_access" and any(w in item.lower() for w in POP_MAP_WORDS):
            pop_maps.append(item.split(" ", 1)[1] if " " in item else "")
            if "pop_before_smtp" not in permits:
                permits.append("pop_before_smtp")
        elif name == "reject_sender_login_mismatch":
            mismatch = True
        elif name in _DESTINATION or name == "reject":
            if name == "defer_unauth_destination":
                notes.append(
                    f"{parameter}: defer_unauth_destination answers 454 4.7.1; relaypolicy "
                    "refuses the same recipients with 554 5.7.1 (permanently)"
                )
            rest = items[position + 1 :]
            if rest and rest[-1] == "permit":
                rest = rest[:-1]  # permit at the end is the end of the list
            if rest and name != "reject":
                for other in rest:
                    why = _reason(other, classes)
                    issues.append(Issue(parameter, other, f"after the destination check: {why}"))
            elif rest:
                notes.append(f"{parameter}: {', '.join(rest)} after reject is never reached")
            return _List(tuple(permits), "reject" if name == "reject" else "destination", mismatch)
        elif name == "permit":
            if not last:
                issues.append(
                    Issue(
                        parameter,
                        item,
                        "permit before the end of the list accepts everything after it; "
                        "left out (relaypolicy is stricter here)",
                    )
                )
                continue
            return _List(tuple(permits), "pass", mismatch)
        else:
            issues.append(Issue(parameter, item, _reason(item, classes)))
    return _List(tuple(permits), "pass", mismatch)


def chain_for(params: Mapping[str, str], label: str, value: Callable[[str], str]) -> Chain:
    """The chain for a service whose effective parameters are ``params``.

    ``value(name)`` gives a parameter's expanded value; ``label`` prefixes the parameter
    names in issues and notes (``""`` for main.cf, ``"submission/inet: "`` for a service).
    """
    issues: list[Issue] = []
    notes: list[str] = []
    pop_maps: list[str] = []
    sasl = value("smtpd_sasl_auth_enable").strip().lower() == "yes"
    classes = frozenset(split_list(value("smtpd_restriction_classes")))
    lists: list[tuple[str, _List]] = []
    for parameter in LISTS:
        text = value(parameter)
        try:
            parsed = _parse_list(
                label + parameter,
                text,
                sasl=sasl,
                classes=classes,
                issues=issues,
                notes=notes,
                pop_maps=pop_maps,
            )
        except ConfigError as exc:
            issues.append(Issue(label + parameter, text, str(exc)))
            continue
        lists.append((parameter, parsed))
    mismatch = any(parsed.mismatch for _, parsed in lists)
    gates = [(name, parsed) for name, parsed in lists if parsed.terminal != "pass"]
    if not gates:
        issues.append(
            Issue(
                label + "smtpd_relay_restrictions",
                value("smtpd_relay_restrictions"),
                "no list refuses anything: an open relay, which relaypolicy will not write",
            )
        )
        return Chain(("local_domains",), tuple(issues), tuple(notes), False, tuple(pop_maps))
    sets = sorted((set(parsed.permits) for _, parsed in gates), key=len)
    smallest = sets[0]
    if any(not smallest <= other for other in sets):
        issues.append(
            Issue(
                label + "smtpd_relay_restrictions",
                "; ".join(f"{n} = {value(n)}" for n, _ in gates),
                "the lists permit different clients (not one inside the other): only "
                "clients every list permits are kept (relaypolicy is stricter here)",
            )
        )
    order = [step for _, parsed in gates for step in parsed.permits]
    permits = tuple(dict.fromkeys(s for s in order if all(s in other for other in sets)))
    rejecting = [set(parsed.permits) for _, parsed in gates if parsed.terminal == "reject"]
    if not rejecting:
        steps = (*permits, "local_domains")
    else:
        steps = permits
        if any(other != set(permits) for other in rejecting):
            issues.append(
                Issue(
                    label + "smtpd_relay_restrictions",
                    "; ".join(f"{n} = {value(n)}" for n, _ in gates),
                    "a list ending in reject permits more clients than the others: only the "
                    "clients every list permits are kept (relaypolicy is stricter here)",
                )
            )
    if mismatch:
        if steps == ("sasl_permit",):
            steps = ("sasl_required",)
        else:
            issues.append(
                Issue(
                    label + "smtpd_sender_login_maps",
                    value("smtpd_sender_login_maps"),
                    "reject_sender_login_mismatch is translated only where every client must "
                    "log in (permit_sasl_authenticated, reject): relaypolicy checks sender "
                    "ownership in its sasl_required step",
                )
            )
    if not steps:
        issues.append(
            Issue(
                label + "smtpd_relay_restrictions",
                value("smtpd_relay_restrictions"),
                "refuses every recipient: nothing to translate",
            )
        )
        steps = ("local_domains",)
    return Chain(
        steps,
        tuple(issues),
        tuple(notes),
        mismatch and steps == ("sasl_required",),
        tuple(pop_maps),
    )
