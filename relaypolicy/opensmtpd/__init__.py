"""OpenSMTPD's filter protocol: a sans-I/O codec and the ``[opensmtpd]`` section."""

from relaypolicy.opensmtpd.codec import (
    FilterCodec,
    Problem,
    ProtocolError,
    Query,
    SessionFacts,
    Write,
    encode_result,
    registration,
)

__all__ = [
    "FilterCodec",
    "Problem",
    "ProtocolError",
    "Query",
    "SessionFacts",
    "Write",
    "encode_result",
    "registration",
]
