"""What an IP table is: the protocols its readers, writers and owners use.

Three roles, each a :class:`typing.Protocol` (nothing needs to inherit from them: any
object of this shape will do):

- :class:`TableReader`, what the POP-before-SMTP policy reads (the hot path);
- :class:`TableWriter`, what the watcher, the control socket and a fleet write through;
- :class:`TableLifecycle`, what a long-running command does with its table: start it,
  maintain it every few seconds, make it durable, close it, report it.

:class:`IpTable` is a reader and a writer; :class:`ManagedTable` is all three. The
in-memory :class:`~relaypolicy.iptable.memory.ExpiringIpTable` (whose lifecycle is mostly
no-ops), the journalled :class:`~relaypolicy.iptable.durable.DurableTable` and the table a
fleet shares through Redis (:class:`relaypolicy.fleet.ReplicaTable`) are each a
:class:`ManagedTable`; the daemon never asks which one it holds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

from relaypolicy.errors import TableFileError

if TYPE_CHECKING:
    from relaypolicy.model import Request

__all__ = [
    "IpEntry",
    "IpTable",
    "Login",
    "ManagedTable",
    "TableFileError",
    "TableLifecycle",
    "TableReader",
    "TableWriter",
]


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


class TableReader(Protocol):
    """What the POP-before-SMTP policy reads: the hot path, no text parsed."""

    def has_client(self, request: Request) -> bool:
        """Whether the request's client has a live entry.

        This and :meth:`client_login` read the request's parsed address
        (``client_ip_version``, ``client_ip_value``) and parse no text. They may raise when
        the table cannot be read (a shared table cut off from Redis); the policy then
        defers.
        """
        ...

    def client_login(self, request: Request) -> Login | None:
        """Who logged in from the request's client, if it has a live entry; else ``None``."""
        ...


class TableWriter(Protocol):
    """What the watcher, the control socket and a fleet write through."""

    @property
    def ttl(self) -> float:
        """The lifetime of an entry recorded without a ``ttl``, in seconds."""
        ...

    @property
    def clock(self) -> Callable[[], float]:
        """The table's clock: expiry times in :meth:`entries` are on it."""
        ...

    @property
    def changes(self) -> int:
        """A count that moves on every change of the content (for exporters)."""
        ...

    def record(self, address: str, *, user: str | None = None, ttl: float | None = None) -> None:
        """Add ``address``, or extend its entry (never shorten it)."""
        ...

    def remove(self, address: str) -> bool:
        """Forget ``address``; whether a live entry was removed."""
        ...

    def expire(self) -> int:
        """Remove the entries that have expired; how many were removed."""
        ...

    def entries(self) -> list[IpEntry]:
        """The live entries."""
        ...

    def __len__(self) -> int: ...


class TableLifecycle(Protocol):
    """What a long-running command does with its table (the daemon runtime calls these).

    All of them may block: the runtime calls them from a worker thread, never on the
    event loop.
    """

    def start(self) -> None:
        """Begin: a shared table connects and follows its fleet. Idempotent."""
        ...

    def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until the table holds its full content (a shared
        table has loaded it from Redis); whether it does."""
        ...

    def maintain(self) -> None:
        """Housekeeping, every few seconds: expire entries, write a snapshot when due."""
        ...

    def sync(self) -> bool:
        """Make every change made so far durable before it is acknowledged; ``True`` when
        it is. Raises :class:`OSError` when it cannot be written."""
        ...

    def close(self) -> object:
        """End: save the state, send what is queued. Raises :class:`OSError` when the
        state could not be saved (the command then exits non-zero)."""
        ...

    def stats(self) -> dict[str, object]:
        """Counters for ``relaypolicy ctl stats``: ``table-entries``, ``pop-ttl``, ..."""
        ...


@runtime_checkable
class IpTable(TableReader, TableWriter, Protocol):
    """The expiring set of client addresses that logged in to POP3/IMAP recently.

    Addresses are normalised as :attr:`Request.client_address
    <relaypolicy.model.Request.client_address>` is. An entry is live until its expiry
    time; an expired entry is never reported, whether or not :meth:`expire` has run.
    """

    def lookup(self, address: str) -> IpEntry | None:
        """The live entry for ``address``, or ``None``."""
        ...

    def __contains__(self, address: object) -> bool: ...


@runtime_checkable
class ManagedTable(IpTable, TableLifecycle, Protocol):
    """A table a long-running command owns: read, written, started, maintained, closed."""
