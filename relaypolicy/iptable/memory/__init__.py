"""The in-memory expiring IP table: a dict for lookups, an expiry queue for removal.

Theory of operation
-------------------
``_expiry`` maps a key to the expiry time of its entry (a ``float``); ``_users`` maps it
to the login name, for the entries that have one. The expiry queue orders the entries by
expiry time so that removing what is due never scans: it is a FIFO (two parallel deques,
times and keys) plus a binary heap (:mod:`heapq`) of ``(expires_at, key)``. With one ttl
and a clock that only moves forward, every new expiry is at least the last one queued, so
it is appended to the FIFO in O(1); only an entry recorded with a shorter ``ttl`` than
one before it goes into the heap, O(log n). The soonest expiry is at the front of one of
the two. (A heap alone would make every expiry O(log n): at a million entries, each pop
compares objects scattered over twenty levels of the heap.)

Deletion is lazy. Re-recording an address queues its new expiry and leaves the old queue
item *stale*; removing one leaves its item stale too. A queue item is current only while
``_expiry[key] is expires_at``: each record makes a new float object, and the queue holds
a reference to it, so identity tells the versions apart. Stale items are dropped when they
come off the queue, and the queue is rebuilt from the dict when stale items outnumber live
ones. ``record`` removes up to two due entries per call (amortised expiry);
:meth:`~ExpiringIpTable.expire` removes them all. Readers compare the expiry with the
clock, so an entry that has expired is never reported live, removed or not.

Keys are integers, not text: the address value for IPv4 (``>= 0``), and the bitwise
complement of the value shifted down to the IPv6 prefix for IPv6 (``< 0``), so the two
families never collide. A :class:`~relaypolicy.model.Request` already carries
``client_ip_value``, so the policy's lookup parses nothing. Canonical dotted-quad text,
which is what an MTA and a log line give, becomes a key through :func:`socket.inet_pton`
(strict: four decimal octets without leading zeros, exactly the canonical form, checked
at import); anything else goes through :func:`relaypolicy.networks.parse_ip`.

Ints, floats and strings are not tracked by the cyclic garbage collector and dicts of
them are not either, so a million entries add nothing to collection pauses. Memory at a
million entries (``benchmarks/bench_iptable.py``): dict slot, key, expiry and two queue
slots come to about 115 bytes per entry, and a login name adds a slot in ``_users``,
about 40 more. Once entries have come and gone, each dict sits up to twice that size
(CPython regrows a dict with deleted slots to three times its live size): about 155 and
240 bytes.

Where things are: the constructor, the settings, the address keys and the expiry
queue's steps are in :mod:`~relaypolicy.iptable.memory.state` (``_TableState``), saving
and loading in :mod:`~relaypolicy.iptable.memory.files`; what the table offers (readers,
writers, the lifecycle, absolute expiries and bulk replacement) is here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from heapq import heappush
from typing import TYPE_CHECKING

from relaypolicy.iptable.base import IpEntry, Login
from relaypolicy.iptable.memory.files import _Snapshots
from relaypolicy.iptable.memory.state import (
    _AF_INET,
    _ANONYMOUS,
    _check_time,
    _check_ttl,
    _check_user,
    _from_bytes,
    _new,
    _pton4,
    _second,
    _TableState,
)

if TYPE_CHECKING:
    from relaypolicy.model import Request

__all__ = ["ExpiringIpTable"]


class ExpiringIpTable(_Snapshots, _TableState):
    """Client addresses that logged in recently, each allowed until its expiry time.

    ``ttl`` is the default lifetime of an entry in seconds (classically 30 minutes).
    ``clock`` returns the time in seconds; it defaults to :func:`time.monotonic`, so a
    wall-clock step does not expire or revive entries (use
    :class:`relaypolicy.testing.FakeClock` in tests). ``max_entries`` bounds the table: when
    it is full, the entry that expires soonest is evicted to make room (never the one being
    recorded), and :attr:`evictions` counts them. ``ipv6_prefix`` groups IPv6 clients by
    network: ``64`` lets a client whose privacy address rotates within its /64 keep its
    allowance; ``128`` (the default) matches addresses exactly.

    Addresses are normalised as :attr:`Request.client_address
    <relaypolicy.model.Request.client_address>` is: a login seen as
    ``::ffff:203.0.113.7`` allows the client ``203.0.113.7``. An entry is live while
    ``clock() < expires_at``.

    Threads: one lock serialises the writers (:meth:`record`, :meth:`remove`,
    :meth:`expire`, :meth:`clear`, ``len()``, and the snapshot :meth:`save` takes); the
    readers (:meth:`lookup`, :meth:`has_client`, :meth:`client_login`, ``in``) take no lock.
    A reader does single dictionary reads, each atomic, and compares the expiry it read with
    the clock itself. Writers store the login name before the expiry and delete the expiry
    before the login name; readers read the expiry first, and when they find no login name
    they check that the expiry is still the one they read. So a reader never reports an
    entry that had gone, nor gives an entry the login of one that had gone; at worst, racing
    a new login from the same address, it pairs the new login name with the expiry from just
    before.
    A watcher thread may therefore record while policy threads read, and a housekeeping
    thread may call :meth:`expire` or :meth:`save`. From asyncio, call it directly: nothing
    blocks on I/O except :meth:`save` and :meth:`load`.
    """

    __slots__ = ()

    # --- reading (lock-free) ----------------------------------------------------------

    def lookup(self, address: str) -> IpEntry | None:
        """The live entry for ``address``, or ``None`` (also for text that is no address)."""
        try:
            key = _from_bytes(_pton4(_AF_INET, address))
            text = address  # inet_pton took it, so it is canonical dotted-quad text
        except (OSError, ValueError, TypeError):
            try:
                key = self._key(address)
            except ValueError:
                return None
            text = ""
        expiry = self._expiry
        expires = expiry.get(key)
        if expires is None or expires <= self._clock():
            return None
        user = self._users.get(key)
        if user is None and expiry.get(key) is not expires:
            return None  # removed while we read (see the class docstring on threads)
        return _new(IpEntry, (text or self._text(key), expires, user))

    def __contains__(self, address: object) -> bool:
        try:
            key = _from_bytes(_pton4(_AF_INET, address))  # type: ignore[arg-type]
        except (OSError, ValueError, TypeError):
            try:
                key = self._key(address)  # type: ignore[arg-type]
            except ValueError:
                return False
        expires = self._expiry.get(key)
        return expires is not None and expires > self._clock()

    def has_client(self, request: Request) -> bool:
        """Whether the request's client has a live entry (reads its parsed address)."""
        if request.client_ip_version == 4:
            expires = self._expiry.get(request.client_ip_value)
        else:
            expires = self._expiry.get(~(request.client_ip_value >> self._v6_shift))
        return expires is not None and expires > self._clock()

    def client_login(self, request: Request) -> Login | None:
        """Who logged in from the request's client, if it has a live entry; else ``None``."""
        if request.client_ip_version == 4:
            key = request.client_ip_value
        else:
            key = ~(request.client_ip_value >> self._v6_shift)
        expiry = self._expiry
        expires = expiry.get(key)
        if expires is None or expires <= self._clock():
            return None
        user = self._users.get(key)
        if user is None:
            if expiry.get(key) is not expires:
                return None  # removed while we read (see the class docstring on threads)
            return _ANONYMOUS
        return _new(Login, (user,))

    def entries(self) -> list[IpEntry]:
        """The live entries, soonest expiry first (a snapshot)."""
        with self._lock:
            items = list(self._expiry.items())
            users = dict(self._users)
            now = self._clock()
        items.sort(key=_second)
        return [
            IpEntry(self._text(key), expires, users.get(key))
            for key, expires in items
            if expires > now
        ]

    # --- writing (under the lock) -----------------------------------------------------

    def record(self, address: str, *, user: str | None = None, ttl: float | None = None) -> None:
        """Allow ``address`` until ``ttl`` seconds from now (default: the table's ttl).

        Adds an entry or extends a live one; never shortens it. ``user`` is the login name
        the watcher saw; the entry keeps the user of the latest login. Raises
        :class:`ValueError` when ``address`` is not an IP address.
        """
        try:
            key = _from_bytes(_pton4(_AF_INET, address))
        except (OSError, ValueError, TypeError):
            key = self._key(address)
        ttl = self._ttl if ttl is None else _check_ttl(ttl)
        if user is not None and (user.__class__ is not str or not user):
            raise TypeError(f"user: expected a login name or None, got {user!r}")
        lock = self._lock
        lock.acquire()  # cheaper than "with" on the hot path
        try:
            now = self._clock()
            self._put(key, now + ttl, user, now)
        finally:
            lock.release()

    def remove(self, address: str) -> bool:
        """Forget ``address``; whether a live entry was removed."""
        key = self._key(address)
        with self._lock:
            expires = self._expiry.pop(key, None)
            self._users.pop(key, None)
            if expires is None:
                return False
            self._changes += 1
            self._compact()
            return expires > self._clock()

    def expire(self) -> int:
        """Remove every entry that has expired; how many were removed."""
        with self._lock:
            return self._drain(self._clock(), -1)

    # --- the lifecycle a long-running command drives (TableLifecycle) -------------------

    def start(self) -> None:
        """Nothing to start: a memory table is ready when made."""

    def wait_ready(self, timeout: float) -> bool:
        """Ready when made: ``True``."""
        return True

    def maintain(self) -> None:
        """Remove the expired entries, giving their memory back on a quiet server."""
        self.expire()

    def sync(self) -> bool:
        """Nothing to write: a memory table keeps nothing on disk (see ``persist``)."""
        return True

    def close(self) -> None:
        """Nothing to save (a journalled table, ``persist``, saves itself)."""

    def stats(self) -> dict[str, object]:
        """``table-entries`` and ``pop-ttl``."""
        return {"table-entries": len(self), "pop-ttl": self._ttl}

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._changes += 1
            self._expiry = {}
            self._users = {}
            self._times = deque()
            self._keys = deque()
            self._heap = []

    # --- absolute expiries and bulk replacement (what a replica of a shared table needs) -

    def entry_address(self, address: str) -> str:
        """The address of the entry ``address`` falls in, as :attr:`IpEntry.address
        <relaypolicy.iptable.base.IpEntry.address>` names it: its canonical text, or its
        IPv6 network when the table groups by ``ipv6_prefix``. Raises :class:`ValueError`
        when ``address`` is not an IP address."""
        return self._text(self._key(address))

    def record_until(self, address: str, expires_at: float, *, user: str | None = None) -> None:
        """As :meth:`record`, with the expiry given as a time on the table's clock.

        Adds an entry or extends a live one, never shortens it; the entry keeps ``user``.
        A time already past changes nothing.
        """
        key = self._key(address)
        expires = _check_time(expires_at)
        _check_user(user)
        with self._lock:
            now = self._clock()
            if expires > now:
                self._put(key, expires, user, now)

    def put(self, address: str, expires_at: float, *, user: str | None = None) -> None:
        """Make the entry for ``address`` expire exactly at ``expires_at`` (on the table's
        clock), with ``user``: unlike :meth:`record_until` this may shorten it, and a time
        already past removes it. For a copy that must match its source exactly."""
        key = self._key(address)
        expires = _check_time(expires_at)
        _check_user(user)
        with self._lock:
            now = self._clock()
            old = self._expiry.get(key)
            if expires <= now:
                if old is not None:
                    self._pop(key)
            elif old is None or old <= expires:
                self._put(key, expires, user, now)
            else:  # shorter: overwrite in place, so readers see the old entry or the new
                users = self._users
                if user is not None:
                    users[key] = user
                else:
                    users.pop(key, None)
                self._expiry[key] = expires
                self._changes += 1
                if self._times and expires >= self._times[-1]:
                    self._times.append(expires)
                    self._keys.append(key)
                else:
                    heappush(self._heap, (expires, key))
                self._compact()  # the old queue item went stale

    def replace(self, entries: Iterable[tuple[str, float, str | None]] | ExpiringIpTable) -> int:
        """Make ``entries`` the whole content of the table, at once; how many are live.

        ``entries`` is rows ``(address, expires_at, user)`` as :class:`IpEntry
        <relaypolicy.iptable.base.IpEntry>` has them (an address or IPv6 network, a time on
        the table's clock, a login name or ``None``; past times are skipped), or another
        :class:`ExpiringIpTable` on the same clock and ``ipv6_prefix``, whose content is
        copied as it is (cheaply: no address is parsed again, no limit applied again). The
        new content is built aside and swapped in under the lock, so a reader sees the old
        table or the new one, never a mix of entries from both, and an entry in both is
        never missing. Counts as one change. Raises :class:`ValueError` (before anything
        changes) for an entry that is no address or a table grouped by another prefix,
        :class:`TypeError` for a bad time or user.
        """
        if isinstance(entries, ExpiringIpTable):
            if entries._ipv6_prefix != self._ipv6_prefix:
                raise ValueError(
                    f"entries: a table grouped by /{entries._ipv6_prefix}, not /{self._ipv6_prefix}"
                )
            with entries._lock:
                expiry = dict(entries._expiry)
                users = dict(entries._users)
                times = deque(entries._times)
                keys = deque(entries._keys)
                heap = list(entries._heap)
            evicted = 0
        else:
            fresh = ExpiringIpTable(
                self._ttl,
                clock=self._clock,
                max_entries=self._max_entries,
                ipv6_prefix=self._ipv6_prefix,
            )
            rows = sorted(entries, key=_second)  # so the FIFO takes them in order
            now = self._clock()
            for address, expires_at, user in rows:
                key = fresh._saved_key(address)
                expires = _check_time(expires_at)
                _check_user(user)
                if key is not None and expires > now:
                    fresh._put(key, expires, user, now)
            expiry, users = fresh._expiry, fresh._users
            times, keys, heap = fresh._times, fresh._keys, fresh._heap
            evicted = fresh._evictions
        with self._lock:  # the login names first, as writers do (see the class docstring)
            self._users = users
            self._expiry = expiry
            self._times = times
            self._keys = keys
            self._heap = heap
            self._evictions += evicted
            self._changes += 1
        return len(expiry)

    def __len__(self) -> int:
        """The number of live entries (expired ones are removed first)."""
        with self._lock:
            self._drain(self._clock(), -1)
            return len(self._expiry)

    def __repr__(self) -> str:
        return (
            f"ExpiringIpTable(ttl={self._ttl!r}, entries={len(self._expiry)}, "
            f"max_entries={self._max_entries!r}, ipv6_prefix={self._ipv6_prefix})"
        )
