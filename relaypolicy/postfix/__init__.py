"""Postfix's SMTP access policy delegation protocol: a sans-I/O codec and a server."""

from relaypolicy.postfix.codec import (
    PolicyConnection,
    PolicyRequest,
    ProtocolError,
    decision_action,
    encode_action,
)

__all__ = [
    "PolicyConnection",
    "PolicyRequest",
    "ProtocolError",
    "decision_action",
    "encode_action",
]
