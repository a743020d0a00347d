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
"""

from __future__ import annotations

import ipaddress
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from heapq import heappop, heappush
from operator import itemgetter
from os import PathLike
from typing import TYPE_CHECKING

from relaypolicy.iptable.base import IpEntry, Login
from relaypolicy.iptable.persist import read_entries, write_entries
from relaypolicy.networks import parse_ip

if TYPE_CHECKING:
    from relaypolicy.model import Request

__all__ = ["ExpiringIpTable"]

_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_from_bytes = int.from_bytes
_new = tuple.__new__
_MAPPED = 0xFFFF  # ::ffff:0:0/96, IPv4-mapped IPv6 (RFC 4291 section 2.5.5.2)
_V4_MASK = 0xFFFFFFFF


def _strict_pton() -> bool:
    """Whether this platform's ``inet_pton`` accepts exactly canonical IPv4 text."""
    for text in ("01.2.3.4", "1.2.3", "1.2.3.256", " 1.2.3.4", "0x1.2.3.4", "1.2.3.4.5"):
        try:
            socket.inet_pton(_AF_INET, text)
        except OSError:
            continue
        return False
    return socket.inet_pton(_AF_INET, "203.0.113.7") == b"\xcb\x00\x71\x07"


def _no_pton(family: int, text: str) -> bytes:
    raise OSError("fast path disabled")


# Canonical IPv4 text -> packed bytes, or OSError/ValueError/TypeError for anything else.
_pton4: Callable[[int, str], bytes] = socket.inet_pton if _strict_pton() else _no_pton


_ANONYMOUS = Login(None)
_second = itemgetter(1)


def _check_time(when: object) -> float:
    if isinstance(when, bool) or not isinstance(when, int | float):
        raise TypeError(f"expires_at: expected a time as a number, got {type(when).__name__}")
    if not math.isfinite(when):
        raise ValueError(f"expires_at: must be finite, not {when!r}")
    # A float object of its own: the expiry queue tells versions apart by identity.
    return float(when) + 0.0


def _check_user(user: object) -> None:
    if user is not None and (user.__class__ is not str or not user):
        raise TypeError(f"user: expected a login name or None, got {user!r}")


def _check_ttl(ttl: object, field: str = "ttl") -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError(f"{field}: expected seconds as a number, got {type(ttl).__name__}")
    if not (0 < ttl < math.inf):
        raise ValueError(f"{field}: must be positive and finite, not {ttl!r}")
    return float(ttl)


class ExpiringIpTable:
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

    __slots__ = (
        "_changes",
        "_clock",
        "_evictions",
        "_expiry",
        "_heap",
        "_ipv6_prefix",
        "_keys",
        "_lock",
        "_max_entries",
        "_times",
        "_ttl",
        "_users",
        "_v6_shift",
    )

    def __init__(
        self,
        ttl: float = 1800.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int | None = None,
        ipv6_prefix: int = 128,
    ) -> None:
        self._ttl = _check_ttl(ttl)
        if not callable(clock):
            raise TypeError(f"clock: expected a callable returning seconds, not {clock!r}")
        if max_entries is not None and (
            isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1
        ):
            raise ValueError(f"max_entries: expected a positive integer, not {max_entries!r}")
        if isinstance(ipv6_prefix, bool) or not isinstance(ipv6_prefix, int):
            raise TypeError(f"ipv6_prefix: expected an integer, not {ipv6_prefix!r}")
        if not 1 <= ipv6_prefix <= 128:
            raise ValueError(f"ipv6_prefix: must be 1 to 128, not {ipv6_prefix}")
        self._clock = clock
        self._max_entries = max_entries
        self._ipv6_prefix = ipv6_prefix
        self._v6_shift = 128 - ipv6_prefix
        self._expiry: dict[int, float] = {}
        self._users: dict[int, str] = {}
        # The expiry queue: a FIFO of expiries in order (two parallel deques, times and
        # keys), and a heap for the ones that came out of order.
        self._times: deque[float] = deque()
        self._keys: deque[int] = deque()
        self._heap: list[tuple[float, int]] = []
        self._lock = threading.Lock()
        self._evictions = 0
        self._changes = 0

    # --- configuration ----------------------------------------------------------------

    @property
    def ttl(self) -> float:
        """The default lifetime of an entry, in seconds."""
        return self._ttl

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    @property
    def max_entries(self) -> int | None:
        return self._max_entries

    @property
    def ipv6_prefix(self) -> int:
        return self._ipv6_prefix

    @property
    def evictions(self) -> int:
        """How many live entries were evicted because the table was full."""
        return self._evictions

    @property
    def changes(self) -> int:
        """A count that grows whenever an entry is added, extended or removed (by
        :meth:`remove`, expiry, eviction or :meth:`clear`). Compare two readings to know
        whether the entries may differ: exported maps are rewritten only then."""
        return self._changes

    # --- keys -------------------------------------------------------------------------

    def _key(self, address: str) -> int:
        """The dict key of an address, from any text :func:`parse_ip` accepts."""
        if not isinstance(address, str):
            raise ValueError(f"not an IP address: {address!r}")
        try:
            if ":" in address:
                version, value = 6, _from_bytes(socket.inet_pton(_AF_INET6, address))
            else:
                version, value = 4, _from_bytes(_pton4(_AF_INET, address))
        except (OSError, ValueError):
            # Brackets, an "IPv6:" tag, a zone index, surrounding blanks, or not an address.
            _, _, version, value = parse_ip(address)
        if version == 4:
            return value
        if value >> 32 == _MAPPED:
            return value & _V4_MASK
        return ~(value >> self._v6_shift)

    def _text(self, key: int) -> str:
        """The canonical text of a key: an address, or an IPv6 network when grouped."""
        if key >= 0:
            return socket.inet_ntop(_AF_INET, key.to_bytes(4))
        text = str(ipaddress.IPv6Address((~key) << self._v6_shift))
        return text if self._v6_shift == 0 else f"{text}/{self._ipv6_prefix}"

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

    def _put(self, key: int, expires: float, user: str | None, now: float) -> None:
        # Call with the lock held. The login name is stored before the expiry (see the
        # class docstring on threads).
        users = self._users
        if user is not None:
            users[key] = user
        elif users:
            users.pop(key, None)
        expiry = self._expiry
        old = expiry.get(key)
        if old is None:
            if self._max_entries is not None and len(expiry) >= self._max_entries:
                self._make_room(now)
        elif old >= expires:
            return  # live, and it lasts at least as long already
        expiry[key] = expires
        self._changes += 1
        times = self._times
        keys = self._keys
        heap = self._heap
        if not times or expires >= times[-1]:
            times.append(expires)  # the usual case: expiries come in order
            keys.append(key)
        else:
            heappush(heap, (expires, key))
        # Amortised expiry: take up to two due items off the queue on every record.
        if heap:
            if heap[0][0] <= now or times[0] <= now:
                self._drain(now, 2)
        elif times[0] <= now:
            # _drain(now, 2), with its first step inlined: the common case at scale.
            due = times.popleft()
            due_key = keys.popleft()
            if expiry.get(due_key) is due:
                del expiry[due_key]
                if users:
                    users.pop(due_key, None)
            if times and times[0] <= now:
                self._drain(now, 1)
        if old is not None:  # its old queue item went stale
            self._compact()

    def _compact(self) -> None:
        """Rebuild the queue once stale items outnumber live ones (amortised O(1))."""
        if len(self._times) + len(self._heap) > 2 * len(self._expiry) + 64:
            self._rebuild()

    def _drain(self, now: float, budget: int) -> int:
        """Take due items off the queue (at most ``budget``, or all when negative) and
        remove their entries; how many live entries were removed."""
        times = self._times
        keys = self._keys
        heap = self._heap
        expiry = self._expiry
        users = self._users
        removed = 0
        while budget != 0:
            if heap and (not times or heap[0][0] < times[0]):
                expires, key = heap[0]
                if expires > now:
                    break
                heappop(heap)
            elif times and times[0] <= now:
                expires = times.popleft()
                key = keys.popleft()
            else:
                break
            if expiry.get(key) is expires:  # else a stale item: see the module docstring
                del expiry[key]
                if users:
                    users.pop(key, None)
                removed += 1
            budget -= 1
        self._changes += removed
        return removed

    def _make_room(self, now: float) -> None:
        """Free a slot: remove what has expired, else evict what expires soonest."""
        self._drain(now, -1)
        limit: int = self._max_entries  # type: ignore[assignment]
        while len(self._expiry) >= limit:
            self._evictions += self._drain(math.inf, 1)

    def _rebuild(self) -> None:
        """Requeue the live entries only, in order: a valid FIFO with no stale items."""
        items = sorted(self._expiry.items(), key=_second)
        self._times = deque(expires for _, expires in items)
        self._keys = deque(key for key, _ in items)
        self._heap = []

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

    def _pop(self, key: int) -> None:
        # Call with the lock held: the expiry goes before the login name.
        del self._expiry[key]
        self._users.pop(key, None)
        self._changes += 1
        self._compact()

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

    # --- persistence ------------------------------------------------------------------

    def save(
        self, path: str | PathLike[str], *, wall_clock: Callable[[], float] = time.time
    ) -> int:
        """Write the live entries to ``path`` atomically; how many were written.

        Expiry times are stored as wall-clock time (``wall_clock``, default
        :func:`time.time`), so a restart keeps what has not expired yet. The format is
        described in :mod:`relaypolicy.iptable.persist`.
        """
        with self._lock:
            items = list(self._expiry.items())
            users = dict(self._users)
            now = self._clock()
            offset = wall_clock() - now
        items.sort(key=_second)
        rows = [
            (self._text(key), expires + offset, users.get(key))
            for key, expires in items
            if expires > now
        ]
        write_entries(path, rows, ipv6_prefix=self._ipv6_prefix)
        return len(rows)

    @classmethod
    def load(
        cls,
        path: str | PathLike[str],
        ttl: float = 1800.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        max_entries: int | None = None,
        ipv6_prefix: int = 128,
    ) -> ExpiringIpTable:
        """A table holding the entries saved in ``path`` that have not expired yet.

        A missing file gives an empty table. A file that is not a saved table, or is
        damaged, raises :class:`~relaypolicy.iptable.base.TableFileError` naming the path
        and the fault. No entry comes back with more than ``ttl`` seconds left, whatever
        the file says (a wall clock set back, a file edited by hand). IPv6 entries saved
        with a coarser prefix than ``ipv6_prefix`` cannot be split into addresses and are
        dropped; finer ones are grouped. The changes a running server journalled since
        this snapshot are replayed by :class:`relaypolicy.iptable.durable.DurableTable`.
        """
        table = cls(ttl, clock=clock, max_entries=max_entries, ipv6_prefix=ipv6_prefix)
        rows = read_entries(path)
        rows.sort(key=_second)  # so the FIFO takes them in order
        with table._lock:
            now = clock()
            offset = now - wall_clock()
            latest = now + table._ttl
            for address, wall_expiry, user in rows:
                expires = min(wall_expiry + offset, latest)
                if expires <= now:
                    continue
                key = table._saved_key(address)
                if key is not None:
                    table._put(key, expires, user or None, now)
        return table

    def _saved_key(self, address: str) -> int | None:
        """The key of a saved address or IPv6 network; ``None`` if coarser than ours."""
        if "/" not in address:
            return self._key(address)
        network = ipaddress.IPv6Network(address)  # read_entries has validated it
        if network.prefixlen < self._ipv6_prefix:
            return None
        return ~(int(network.network_address) >> self._v6_shift)
