"""A local replica of the shared POP-before-SMTP table, kept in step with Redis.

Theory of operation
-------------------
:class:`ReplicaTable` *holds* an :class:`~relaypolicy.iptable.ExpiringIpTable` and uses
only its public methods: decisions read that local table and never wait on the network.
Two daemon threads talk to Redis (layout in :mod:`relaypolicy.fleet.store`):

- the *follower* loads the sorted set and the hash in one ``MULTI`` together with the ID
  and number of the last change, then reads the stream after that ID (``XREAD BLOCK``),
  so no change is lost or applied twice. Every round also asks ``TIME``, to turn Redis
  expiry times into times on the local clock (machine clocks may be skewed: only Redis'
  counts). A change whose number is not the next one means some were trimmed from the
  stream before it read them, or lost: it reloads. After an error it reconnects and
  resumes from its last ID, unless Redis' ``run_id`` changed (a restart from the
  append-only file, a failover): then it reloads. A reload builds the new content aside
  and swaps it in with :meth:`ExpiringIpTable.replace`, so a reader never sees it
  half-done.
- the *writer* sends what :meth:`record` and :meth:`remove` queue, in order, each as one
  Lua script that changes the set and appends the event. The change applies to the local
  table at once; while Redis cannot be reached the queue waits (bounded: the oldest are
  dropped and counted), and a login is sent with what remains of its time.

A write wins over everything older, removals included. Until the follower has read a write
of its own back from the stream, Redis' word on that entry is older than the write
(:mod:`relaypolicy.fleet.writes` holds them): a reload applies the held writes, in order,
over what it loaded before it swaps, and a change from another server to an entry with a
held write is applied beneath them. So an address removed here while Redis was away does
not come back when Redis returns from its append-only file with the address still in it,
not even for the moment before the removal reaches Redis.

Failing closed: the follower notes, on the local clock, when it last heard from Redis.
While that is more than ``max_staleness`` seconds ago (and before the first load), an
address the replica does not know makes :meth:`has_client` and :meth:`client_login` raise
:class:`StaleTable`, which :class:`~relaypolicy.policies.PopBeforeSmtp` turns into a
:class:`~relaypolicy.model.LookupFailure` (``451 4.3.0``): a chain defers a relay from
that client and still takes mail for its own domains. A known address is still accepted
until its entry expires. The replica recovers by itself when Redis answers.

Where things are: the fields and the constructor are in
:mod:`~relaypolicy.fleet.replica.state`, the follower thread in
:mod:`~relaypolicy.fleet.replica.follower`, the writer thread in
:mod:`~relaypolicy.fleet.replica.writer`; what the table offers (the local table's
settings, the decision path, writing, running) is here.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relaypolicy.errors import StaleTable
from relaypolicy.fleet.replica.follower import _Follower
from relaypolicy.fleet.replica.state import _ReplicaState
from relaypolicy.fleet.replica.writer import _Writer
from relaypolicy.fleet.writes import Write
from relaypolicy.iptable.base import IpEntry, Login
from relaypolicy.networks import normalize_ip

if TYPE_CHECKING:
    from os import PathLike

    from relaypolicy.model import Request

__all__ = ["ReplicaTable", "StaleTable"]


class ReplicaTable(_Follower, _Writer, _ReplicaState):
    """An IP table shared by a fleet through Redis (see the module doc).

    ``state`` is a Redis state URL (:mod:`relaypolicy.fleet.urls`). Nothing connects until
    :meth:`start` (or the first :meth:`record` or :meth:`remove`, for a writer that nobody
    started); :meth:`close` stops the threads, and it may be started again. ``ttl``,
    ``clock``, ``max_entries`` and ``ipv6_prefix`` are the local table's. ``stream_length``
    is how many change events Redis keeps: a replica cut off for longer than that many
    changes reloads the whole table. ``timeout`` bounds every Redis call.
    """

    __slots__ = ()

    # --- the local table's settings -----------------------------------------------------

    @property
    def ttl(self) -> float:
        """The default lifetime of an entry, in seconds."""
        return self._table.ttl

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    @property
    def max_entries(self) -> int | None:
        return self._table.max_entries

    @property
    def ipv6_prefix(self) -> int:
        return self._table.ipv6_prefix

    @property
    def evictions(self) -> int:
        return self._table.evictions

    @property
    def changes(self) -> int:
        """Grows whenever the local entries may have changed (see
        :attr:`ExpiringIpTable.changes`), whether by this server or through Redis."""
        return self._table.changes

    @property
    def max_staleness(self) -> float:
        return self._max_staleness

    # --- the decision path: local reads, failing closed when stale ---------------------

    @property
    def stale(self) -> bool:
        """Whether Redis has not been heard from for longer than ``max_staleness``."""
        return self._clock() - self._contact > self._max_staleness

    def _stale_error(self) -> StaleTable:
        since = self._clock() - self._contact
        heard = f"{since:.1f} s ago" if since < math.inf else "never"
        return StaleTable(f"shared table stale: Redis last heard from {heard}")

    def has_client(self, request: Request) -> bool:
        """Whether the request's client has a live entry; :class:`StaleTable` when it has
        none and the replica is stale (it cannot know of logins elsewhere)."""
        if self._has_client(request):
            return True
        if self._clock() > self._fresh_until:
            raise self._stale_error()
        return False

    def client_login(self, request: Request) -> Login | None:
        """As :meth:`ExpiringIpTable.client_login`, failing closed as :meth:`has_client`."""
        login = self._client_login(request)
        if login is None and self._clock() > self._fresh_until:
            raise self._stale_error()
        return login

    def lookup(self, address: str) -> IpEntry | None:
        """The local entry for ``address`` (what this replica knows; never raises)."""
        return self._table.lookup(address)

    def __contains__(self, address: object) -> bool:
        return address in self._table

    def entries(self) -> list[IpEntry]:
        """The live local entries, soonest expiry first (a snapshot)."""
        return self._table.entries()

    def __len__(self) -> int:
        return len(self._table)

    def expire(self) -> int:
        """Remove the local entries that have expired (Redis drops its own)."""
        return self._table.expire()

    def clear(self) -> None:
        """Forget every local entry (Redis keeps them; a reload brings them back)."""
        self._table.clear()

    def save(self, path: str | PathLike[str]) -> int:
        """Write the local entries to ``path`` (see :meth:`ExpiringIpTable.save`)."""
        return self._table.save(path)

    # --- writing: local at once, Redis in the background ------------------------------

    def record(self, address: str, *, user: str | None = None, ttl: float | None = None) -> None:
        """Allow ``address`` here at once, and in the whole fleet as soon as Redis has it."""
        text = normalize_ip(address)
        self._start_writer()
        with self._wake:
            self._table.record(text, user=user, ttl=ttl)
            deadline = self._clock() + (self.ttl if ttl is None else float(ttl))
            entry = self._table.entry_address(text)
            self._queue(Write("record", text, entry, user or "", deadline))

    def remove(self, address: str) -> bool:
        """Forget ``address`` here at once, and in the whole fleet as soon as Redis has it."""
        text = normalize_ip(address)
        self._start_writer()
        with self._wake:
            removed = self._table.remove(text)
            self._queue(Write("remove", text, self._table.entry_address(text)))
        return removed

    def _start_writer(self) -> None:
        if self._writer is None and not self._closed:
            self.start()  # a writer nobody started (a standalone watcher): start on first use

    def _queue(self, write: Write) -> None:
        # Call with the lock held.
        self._counters["dropped-writes"] += self._writes.add(write)
        self._wake.notify()

    # --- running ----------------------------------------------------------------------

    def start(self) -> None:
        """Start following Redis and sending writes (idempotent)."""
        if self._follower is not None and self._follower.is_alive():
            return
        self._stopping.clear()
        self._closed = False
        self._need_server_check = not self._need_load
        self._follower = threading.Thread(
            target=self._follow_loop, name="relaypolicy-replica", daemon=True
        )
        self._writer = threading.Thread(
            target=self._write_loop, name="relaypolicy-writer", daemon=True
        )
        self._follower.start()
        self._writer.start()

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (for up to ``timeout`` s), then stop both threads."""
        self._closed = True
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
        if self._writer is not None:
            self._writer.join(timeout)
        # Closing the sockets wakes a follower blocked in XREAD.
        self._client.connection_pool.disconnect()
        if self._follower is not None:
            self._follower.join(timeout)
        self._follower = self._writer = None

    def __enter__(self) -> ReplicaTable:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_synced(self, timeout: float = 10.0) -> bool:
        """Wait (really, on :func:`time.monotonic`) until the first load; whether done."""
        deadline = time.monotonic() + timeout
        while self._counters["loads"] == 0 or self._need_load:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the shared table is loaded from Redis (see :meth:`wait_synced`)."""
        return self.wait_synced(timeout)

    def maintain(self) -> None:
        """Remove the local entries that have expired (Redis drops its own)."""
        self._table.expire()

    def sync(self) -> bool:
        """``True``: a change is queued for Redis when made, and Redis's own persistence
        (its append-only file) is what keeps it; see ``docs/fleet.md``."""
        return True

    def stats(self) -> dict[str, object]:
        """``table-entries``, ``pop-ttl`` and the ``fleet-…`` counters."""
        fleet = {f"fleet-{key}": value for key, value in self.fleet_stats().items()}
        return {"table-entries": len(self._table), "pop-ttl": self._table.ttl, **fleet}

    def fleet_stats(self) -> dict[str, Any]:
        """What ``relaypolicy ctl stats`` shows of the replica."""
        since = self._clock() - self._contact
        with self._lock:
            unread = self._writes.unread(self._last_id)
        return {
            "state": self._state.redacted,
            "stale": since > self._max_staleness,
            "seconds-since-redis": round(since, 1) if since < math.inf else None,
            "stream-position": str(self._last_id),
            "pending-writes": len(self._writes.queued),
            "unread-writes": unread,
            **self._counters,
            "last-error": self._last_error,
        }

    def __repr__(self) -> str:
        return f"ReplicaTable({self._state.redacted!r}, entries={len(self._table)})"
