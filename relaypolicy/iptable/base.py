"""What an IP table is: the protocol the POP-before-SMTP policy reads through.

The in-memory :class:`~relaypolicy.iptable.memory.ExpiringIpTable` is the embedded
default; the table a fleet of MTAs shares through Redis
(:class:`relaypolicy.fleet.ReplicaTable`, a local copy that follows Redis) implements the
same protocol.
Nothing needs to inherit from these classes: any object of this shape will do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

from relaypolicy.errors import TableFileError

if TYPE_CHECKING:
    from relaypolicy.model import Request

__all__ = ["IpEntry", "IpTable", "Login", "TableFileError"]


class IpEntry(NamedTuple):
    """One live entry of an IP table.

    ``address`` is the canonical client address (IPv4-mapped IPv6 folded to IPv4,
    compressed IPv6), or the IPv6 network (``2001:db8:1:2::/64``) when the table groups
    IPv6 clients by prefix. ``expires_at`` is on the table's own clock (monotonic by
    default, so not a date). ``user`` is the login name the watcher saw, if any.
    """

    address: str
    expires_at: float
    user: str | None


class Login(NamedTuple):
    """What :meth:`IpTable.client_login` returns for a live client: who logged in.

    ``user`` is ``None`` when the watcher recorded the address without a login name.
    """

    user: str | None


@runtime_checkable
class IpTable(Protocol):
    """The expiring set of client addresses that logged in to POP3/IMAP recently.

    Addresses are normalised as :attr:`Request.client_address
    <relaypolicy.model.Request.client_address>` is. An entry is live until its expiry
    time; an expired entry is never reported, whether or not :meth:`expire` has run.
    """

    def record(self, address: str, *, user: str | None = None, ttl: float | None = None) -> None:
        """Add ``address``, or extend its entry (never shorten it)."""
        ...

    def lookup(self, address: str) -> IpEntry | None:
        """The live entry for ``address``, or ``None``."""
        ...

    def has_client(self, request: Request) -> bool:
        """Whether the request's client has a live entry.

        This and :meth:`client_login` are the policy's hot path: they read the request's
        parsed address (``client_ip_version``, ``client_ip_value``) and parse no text. They
        may raise when the table cannot be read (a remote table that is down); the policy
        then defers.
        """
        ...

    def client_login(self, request: Request) -> Login | None:
        """Who logged in from the request's client, if it has a live entry; else ``None``."""
        ...

    def remove(self, address: str) -> bool:
        """Forget ``address``; whether a live entry was removed."""
        ...

    def expire(self) -> int:
        """Remove the entries that have expired; how many were removed."""
        ...

    def __contains__(self, address: object) -> bool: ...

    def __len__(self) -> int: ...
