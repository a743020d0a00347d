"""Relay policies: one module per family, plus the chain."""

from relaypolicy.policies.base import Policy, bad_recipient_syntax, relay_access_denied
from relaypolicy.policies.basic import LocalDomainOnly, OpenRelay, TrustedNetworks
from relaypolicy.policies.chain import FirstMatch

__all__ = [
    "FirstMatch",
    "LocalDomainOnly",
    "OpenRelay",
    "Policy",
    "TrustedNetworks",
    "bad_recipient_syntax",
    "relay_access_denied",
]
