"""relaypolicy: pluggable SMTP relay policies.

Build a :class:`Request` from what the MTA knows at ``RCPT TO``, ask a policy, send the
decision's reply. The policies and the address analysis are pure: no sockets, no files,
no clock. :class:`ExpiringIpTable` reads its clock (``time.monotonic`` unless given one),
and its ``save``/``load`` write and read a file.
"""

from relaypolicy.address import Address, parse_address
from relaypolicy.domains import DomainSet, normalize_domain
from relaypolicy.errors import ConfigError, DomainError, RelayPolicyError, TableFileError
from relaypolicy.iptable import ExpiringIpTable, IpEntry, IpTable, Login
from relaypolicy.model import Decision, Request, Verdict
from relaypolicy.networks import NetworkSet, normalize_ip
from relaypolicy.policies import (
    ByServerPort,
    ClientCertificate,
    FirstMatch,
    LocalDomainOnly,
    OpenRelay,
    Policy,
    PopBeforeSmtp,
    SmtpAuthRequired,
    TrustedNetworks,
    mx_policy,
    submission_policy,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "Address",
    "ByServerPort",
    "ClientCertificate",
    "ConfigError",
    "Decision",
    "DomainError",
    "DomainSet",
    "ExpiringIpTable",
    "FirstMatch",
    "IpEntry",
    "IpTable",
    "LocalDomainOnly",
    "Login",
    "NetworkSet",
    "OpenRelay",
    "Policy",
    "PopBeforeSmtp",
    "RelayPolicyError",
    "Request",
    "SmtpAuthRequired",
    "TableFileError",
    "TrustedNetworks",
    "Verdict",
    "mx_policy",
    "normalize_domain",
    "normalize_ip",
    "parse_address",
    "submission_policy",
]
