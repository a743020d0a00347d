"""Relay policies: one module per family, plus the chain."""

from relaypolicy.policies.auth import ClientCertificate, SmtpAuthRequired
from relaypolicy.policies.base import Policy, bad_recipient_syntax, relay_access_denied
from relaypolicy.policies.basic import LocalDomainOnly, OpenRelay, TrustedNetworks
from relaypolicy.policies.chain import FirstMatch
from relaypolicy.policies.popbeforesmtp import PopBeforeSmtp, SenderBinding
from relaypolicy.policies.ports import ByServerPort
from relaypolicy.policies.recipes import mx_policy, submission_policy

__all__ = [
    "ByServerPort",
    "ClientCertificate",
    "FirstMatch",
    "LocalDomainOnly",
    "OpenRelay",
    "Policy",
    "PopBeforeSmtp",
    "SenderBinding",
    "SmtpAuthRequired",
    "TrustedNetworks",
    "bad_recipient_syntax",
    "mx_policy",
    "relay_access_denied",
    "submission_policy",
]
