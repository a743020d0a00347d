"""The SMTP replies relaypolicy sends, named once.

Each is a :class:`Reply`: the code, the enhanced status code (RFC 3463) and the text, in
Postfix's wording where Postfix has one, so a log reader or a client sees what it would see
from Postfix. Policies build their decisions from these (``reject(*AUTH_REQUIRED, name,
reason)``); front ends answer with them when no policy could be asked.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "AUTH_REQUIRED",
    "AUTH_REQUIRED_LATER",
    "BAD_RECIPIENT_SYNTAX",
    "BAD_SENDER_SYNTAX",
    "CANNOT_EVALUATE",
    "DELIVERED",
    "LOCAL_DELIVERY_FAILED",
    "NON_ASCII_WITHOUT_SMTPUTF8",
    "NO_CLIENT_ADDRESS",
    "NO_SMTPUTF8_AT_SMARTHOST",
    "OK",
    "POLICY_ERROR",
    "RELAY_ACCESS_DENIED",
    "SENDER_NEEDS_DOMAIN",
    "SENDER_NOT_LOGGED_IN",
    "SENDER_NOT_OWNED",
    "SMARTHOST_BUSY",
    "SMARTHOST_REFUSED",
    "SMARTHOST_REFUSED_ALL",
    "SMARTHOST_UNREACHABLE",
    "STARTTLS_FIRST",
    "TEMPORARY_LOOKUP_FAILURE",
    "TRY_AGAIN_LATER",
    "USER_UNKNOWN",
    "Reply",
]


class Reply(NamedTuple):
    """An SMTP reply: ``code``, enhanced ``status`` and ``text``; ``str()`` is the line."""

    code: int
    status: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"

    def about(self, address: str) -> str:
        """The text with the address it is about in front, as Postfix writes it:
        ``<user@example.org>: Relay access denied``."""
        return f"<{address}>: {self.text}"


OK = Reply(250, "2.1.5", "Ok")

# Postfix reject_unauth_destination; the text goes after "<rcpt>: ".
RELAY_ACCESS_DENIED = Reply(554, "5.7.1", "Relay access denied")
# Postfix smtpd on a recipient (RFC 3463 X.1.3) or sender (X.1.7) that is not an address.
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
# Postfix local_recipient_maps: no such mailbox here.
USER_UNKNOWN = Reply(
    550, "5.1.1", "Recipient address rejected: User unknown in local recipient table"
)

# RFC 4954 section 6 (530, and 454 for a temporary refusal); RFC 3207 section 4.
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_REQUIRED_LATER = Reply(454, "4.7.0", "Authentication required")
STARTTLS_FIRST = Reply(530, "5.7.0", "Must issue a STARTTLS command first")

# Postfix reject_sender_login_mismatch and reject_non_fqdn_sender; after "<sender>: ".
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address rejected: not owned by user")  # + login
SENDER_NOT_LOGGED_IN = Reply(553, "5.7.1", "Sender address rejected: not logged in")
SENDER_NEEDS_DOMAIN = Reply(504, "5.5.2", "Sender address rejected: need fully-qualified address")

# Temporary: the state a decision needs cannot be read, or the request cannot be judged.
TEMPORARY_LOOKUP_FAILURE = Reply(451, "4.3.0", "Temporary lookup failure")
TRY_AGAIN_LATER = Reply(451, "4.7.1", "Try again later")
POLICY_ERROR = Reply(451, "4.3.0", "Policy service error")
CANNOT_EVALUATE = Reply(451, "4.3.0", "Policy service cannot evaluate this request")
NO_CLIENT_ADDRESS = Reply(451, "4.3.5", "Cannot determine the client address")

# Delivery by relaypolicy smtpd (after DATA): Maildirs and the smarthost.
DELIVERED = Reply(250, "2.0.0", "Ok: delivered")
LOCAL_DELIVERY_FAILED = Reply(451, "4.3.0", "Local delivery failed, try again later")
NO_SMTPUTF8_AT_SMARTHOST = Reply(554, "5.6.7", "The smarthost does not take SMTPUTF8 mail")
NON_ASCII_WITHOUT_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address without SMTPUTF8")
SMARTHOST_REFUSED_ALL = Reply(554, "5.4.0", "The smarthost refused every recipient")
SMARTHOST_REFUSED = Reply(554, "5.4.0", "Smarthost said:")  # + its code and text
SMARTHOST_BUSY = Reply(451, "4.4.1", "The smarthost is not accepting mail now, try again later")
SMARTHOST_UNREACHABLE = Reply(451, "4.4.1", "The smarthost is not reachable, try again later")
