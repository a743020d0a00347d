"""The memory table's state: its fields, its address keys and its expiry queue.

``_TableState`` is the base of :class:`~relaypolicy.iptable.memory.ExpiringIpTable`: the
constructor and the settings it keeps, address text to integer keys and back, and the
expiry queue's own steps (``_put``, ``_drain``, ``_compact``, ...), each called with the
lock held. The theory of operation (what the fields hold, why the queue is a FIFO and a
heap, why keys are integers) is in :mod:`relaypolicy.iptable.memory`.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from heapq import heappop, heappush
from operator import itemgetter

from relaypolicy.iptable.base import Login
from relaypolicy.networks import parse_ip

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


class _TableState:
    """The fields of an expiring IP table and the steps that keep them consistent (the
    public class is :class:`~relaypolicy.iptable.memory.ExpiringIpTable`)."""

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

    def _saved_key(self, address: str) -> int | None:
        """The key of a saved address or IPv6 network; ``None`` if coarser than ours."""
        if "/" not in address:
            return self._key(address)
        network = ipaddress.IPv6Network(address)  # read_entries has validated it
        if network.prefixlen < self._ipv6_prefix:
            return None
        return ~(int(network.network_address) >> self._v6_shift)

    # --- the expiry queue (call with the lock held) -------------------------------------

    def _put(self, key: int, expires: float, user: str | None, now: float) -> None:
        # Call with the lock held. The login name is stored before the expiry (see
        # ExpiringIpTable's docstring on threads).
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
            if expiry.get(key) is expires:  # else stale: see the theory of operation
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

    def _pop(self, key: int) -> None:
        # Call with the lock held: the expiry goes before the login name.
        del self._expiry[key]
        self._users.pop(key, None)
        self._changes += 1
        self._compact()
