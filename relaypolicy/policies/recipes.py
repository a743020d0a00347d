"""Ready-made chains for the two jobs of a mail server: the MX and the submission service.

Plain functions returning ordinary policies: print one (``repr``) to see what it built, or
build the same thing by hand. Each mirrors the Postfix configuration it replaces;
``docs/smtp-auth.md`` shows the two side by side.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from relaypolicy.model import Verdict
from relaypolicy.networks import IPNetwork
from relaypolicy.policies.auth import SmtpAuthRequired
from relaypolicy.policies.base import Policy
from relaypolicy.policies.basic import LocalDomainOnly, TrustedNetworks
from relaypolicy.policies.chain import FirstMatch
from relaypolicy.policies.popbeforesmtp import PopBeforeSmtp

if TYPE_CHECKING:
    from relaypolicy.iptable.base import IpTable

__all__ = ["mx_policy", "submission_policy"]


def mx_policy(
    local_domains: Iterable[str],
    *,
    relay_domains: Iterable[str] = (),
    trusted_networks: Iterable[str | IPNetwork] = (),
    pop_table: IpTable | None = None,
) -> FirstMatch:
    """The port-25 chain: anyone may deliver to us; only our own users may relay.

    In order, like Postfix's ``smtpd_relay_restrictions``:

    1. ``TrustedNetworks(trusted_networks)`` — ``permit_mynetworks`` (left out when no
       networks are given);
    2. ``SmtpAuthRequired(otherwise=Verdict.NEXT)`` — ``permit_sasl_authenticated``;
    3. ``PopBeforeSmtp(pop_table)`` — the POP-before-SMTP ``check_client_access`` map
       (only when a table is given, e.g. an ``ExpiringIpTable``; imported only then);
    4. ``LocalDomainOnly(local_domains, relay_domains)`` — ``reject_unauth_destination``.

    The chain is named ``mx``; a recipient with bad syntax is refused by it first.
    """
    if isinstance(trusted_networks, str):
        raise TypeError("trusted_networks must be an iterable of CIDR blocks, not one string")
    networks = tuple(trusted_networks)
    policies: list[Policy] = []
    if networks:
        policies.append(TrustedNetworks(networks))
    policies.append(SmtpAuthRequired(otherwise=Verdict.NEXT))
    if pop_table is not None:
        policies.append(PopBeforeSmtp(pop_table))
    policies.append(LocalDomainOnly(local_domains, relay_domains))
    return FirstMatch(*policies, name="mx")


def submission_policy(
    *,
    require_tls: bool = True,
    sender_logins: Mapping[str, str | Iterable[str]] | None = None,
) -> FirstMatch:
    """The submission chain (ports 587 and 465): authenticated users only, over TLS.

    ``SmtpAuthRequired(require_tls=require_tls, sender_logins=sender_logins)`` in a chain
    named ``submission`` — Postfix's ``smtpd_relay_restrictions =
    permit_sasl_authenticated, reject`` with ``smtpd_tls_security_level = encrypt`` and,
    given ``sender_logins``, ``reject_sender_login_mismatch``. The chain refuses a
    recipient with bad syntax first; everyone else gets ``530 5.7.0``.
    """
    return FirstMatch(
        SmtpAuthRequired(require_tls=require_tls, sender_logins=sender_logins),
        name="submission",
    )
