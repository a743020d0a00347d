"""The expiring IP table of POP-before-SMTP: who logged in to POP3/IMAP recently.

:class:`ExpiringIpTable` is the in-memory table (a dict plus a binary heap); a shared
table for a fleet of MTAs implements the same :class:`IpTable` protocol.
"""

from relaypolicy.iptable.base import IpEntry, IpTable, Login, TableFileError
from relaypolicy.iptable.memory import ExpiringIpTable

__all__ = ["ExpiringIpTable", "IpEntry", "IpTable", "Login", "TableFileError"]
