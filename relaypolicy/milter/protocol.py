"""The milter protocol's words (version 6, as Postfix and Sendmail 8.14+ speak it): the
command and reply letters, the protocol and action flags, packet framing and the answers
relaypolicy gives. :mod:`relaypolicy.milter.codec` is the state machine that uses them.

The values are those of libmilter's ``mfdef.h`` and Postfix's ``milter8.c``; their
meaning is in the codec's theory of operation.
"""

from __future__ import annotations

import struct

from relaypolicy.model import Decision, Verdict
from relaypolicy.text import reply_safe

__all__ = [
    "MACRO_REQUESTS",
    "MAX_PACKET",
    "MILTER_VERSION",
    "SMFIC_ABORT",
    "SMFIC_BODY",
    "SMFIC_BODYEOB",
    "SMFIC_CONNECT",
    "SMFIC_DATA",
    "SMFIC_EOH",
    "SMFIC_HEADER",
    "SMFIC_HELO",
    "SMFIC_MACRO",
    "SMFIC_MAIL",
    "SMFIC_OPTNEG",
    "SMFIC_QUIT",
    "SMFIC_QUIT_NC",
    "SMFIC_RCPT",
    "SMFIC_UNKNOWN",
    "SMFIF_SETSYMLIST",
    "SMFIP_NOBODY",
    "SMFIP_NODATA",
    "SMFIP_NOEOH",
    "SMFIP_NOHDRS",
    "SMFIP_NOUNKNOWN",
    "SMFIP_NR_CONN",
    "SMFIP_NR_HELO",
    "SMFIP_NR_MAIL",
    "SMFIR_CONTINUE",
    "SMFIR_REPLYCODE",
    "SMFIR_TEMPFAIL",
    "WANTED_PROTOCOL",
    "encode_decision",
    "encode_packet",
    "encode_reply",
    "macro_name",
]

MILTER_VERSION = 6

# SMFIC_*: commands from the MTA.
SMFIC_ABORT = b"A"
SMFIC_BODY = b"B"
SMFIC_CONNECT = b"C"
SMFIC_MACRO = b"D"
SMFIC_BODYEOB = b"E"
SMFIC_HELO = b"H"
SMFIC_QUIT_NC = b"K"
SMFIC_HEADER = b"L"
SMFIC_MAIL = b"M"
SMFIC_EOH = b"N"
SMFIC_OPTNEG = b"O"
SMFIC_QUIT = b"Q"
SMFIC_RCPT = b"R"
SMFIC_DATA = b"T"
SMFIC_UNKNOWN = b"U"

# SMFIR_*: our replies.
SMFIR_CONTINUE = b"c"
SMFIR_REPLYCODE = b"y"
SMFIR_TEMPFAIL = b"t"

# SMFIP_*: protocol steps to skip, and steps that need no reply (version 6).
SMFIP_NOBODY = 0x10
SMFIP_NOHDRS = 0x20
SMFIP_NOEOH = 0x40
SMFIP_NOUNKNOWN = 0x100
SMFIP_NODATA = 0x200
SMFIP_NR_CONN = 0x1000
SMFIP_NR_HELO = 0x2000
SMFIP_NR_MAIL = 0x4000
# What we ask for, of what the MTA offers.
WANTED_PROTOCOL = (
    SMFIP_NOBODY
    | SMFIP_NOHDRS
    | SMFIP_NOEOH
    | SMFIP_NOUNKNOWN
    | SMFIP_NODATA
    | SMFIP_NR_CONN
    | SMFIP_NR_HELO
    | SMFIP_NR_MAIL
)
# SMFIF_SETSYMLIST: the one action we ask for, when offered; with it the answer to OPTNEG
# lists, per stage (SMFIM_CONNECT 0, SMFIM_HELO 1, SMFIM_ENVFROM 2), the macros we read,
# which the MTA then sends instead of its configured lists for that stage.
SMFIF_SETSYMLIST = 0x100
MACRO_REQUESTS: tuple[tuple[int, str], ...] = (
    (0, "{client_addr} {client_port} {daemon_addr} {daemon_port} {daemon_name}"),
    (1, "{tls_version} {cipher} {cert_subject}"),
    (2, "{auth_type} {auth_authen}"),
)
_NO_REPLY = {SMFIC_CONNECT: SMFIP_NR_CONN, SMFIC_HELO: SMFIP_NR_HELO, SMFIC_MAIL: SMFIP_NR_MAIL}

# The largest packet an MTA sends when no SMFIP_MDS_* size was negotiated (we negotiate
# none, and no body): a 64 KiB body chunk and its command letter.
MAX_PACKET = 65536
_MAX_STRINGS = 2048  # NUL-terminated strings in one packet (macro names and values)

# Commands the MTA waits on that we have no use for: answered "continue".
_CONTINUE = frozenset(
    {SMFIC_BODY, SMFIC_BODYEOB, SMFIC_HEADER, SMFIC_EOH, SMFIC_DATA, SMFIC_UNKNOWN}
)
# Macro stages that end with a transaction (dropped at MAIL and ABORT).
_TRANSACTION_STAGES = (SMFIC_MAIL, SMFIC_RCPT, SMFIC_DATA, SMFIC_EOH, SMFIC_BODYEOB)
# Where a macro is looked up, latest stage first.
_LOOKUP_ORDER = (SMFIC_RCPT, SMFIC_MAIL, SMFIC_HELO, SMFIC_CONNECT)
_KNOWN = frozenset(
    {
        SMFIC_ABORT,
        SMFIC_BODY,
        SMFIC_CONNECT,
        SMFIC_MACRO,
        SMFIC_BODYEOB,
        SMFIC_HELO,
        SMFIC_QUIT_NC,
        SMFIC_HEADER,
        SMFIC_MAIL,
        SMFIC_EOH,
        SMFIC_OPTNEG,
        SMFIC_QUIT,
        SMFIC_RCPT,
        SMFIC_DATA,
        SMFIC_UNKNOWN,
    }
)
_LENGTH = struct.Struct(">I")
_OPTNEG = struct.Struct(">III")


def macro_name(name: str) -> str:
    """A macro's name without its braces: ``{auth_authen}`` and ``auth_authen`` are one."""
    if name.startswith("{") and name.endswith("}"):
        return name[1:-1]
    return name


def encode_packet(command: bytes, data: bytes = b"") -> bytes:
    """One packet: the length of command and data, the command letter, the data."""
    return _LENGTH.pack(len(command) + len(data)) + command + data


_CONTINUE_PACKET = encode_packet(SMFIR_CONTINUE)


def encode_decision(decision: Decision) -> bytes:
    """The answer to ``R`` for a decision.

    ACCEPT and NEXT continue (the MTA's own checks go on; an ``a``, accept, would end
    filtering for the whole message and leave the next recipients unchecked); REJECT
    and DEFER are ``SMFIR_REPLYCODE`` with the decision's code, status and text, made
    safe for a reply line, ``%`` doubled (both MTAs read the text as a format).
    """
    if decision.verdict in (Verdict.ACCEPT, Verdict.NEXT):
        return _CONTINUE_PACKET
    return encode_reply(decision.code, decision.status, decision.text)


def encode_reply(code: int, status: str, text: str) -> bytes:
    """``SMFIR_REPLYCODE`` with ``code status text``; a code that is not 4xx or 5xx (which
    the MTA would refuse, falling back to its default action) becomes 451 4.3.0."""
    if not 400 <= code <= 599 or not status.startswith(str(code)[0]):
        code, status = 451, "4.3.0"
    line = f"{code} {status} {reply_safe(text, 400)}".replace("%", "%%")
    return encode_packet(SMFIR_REPLYCODE, line.encode("ascii") + b"\0")
