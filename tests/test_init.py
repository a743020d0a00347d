"""The public surface: ``relaypolicy.__all__`` is pinned, so a change to it is deliberate."""

from __future__ import annotations

import relaypolicy

PUBLIC = {
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
}


def test_the_public_names_are_pinned() -> None:
    assert set(relaypolicy.__all__) == PUBLIC
    for name in relaypolicy.__all__:
        assert hasattr(relaypolicy, name), name
