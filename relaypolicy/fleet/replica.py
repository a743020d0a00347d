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
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from relaypolicy.errors import StaleTable
from relaypolicy.fleet.store import (
    RECORD_SCRIPT,
    REMOVE_SCRIPT,
    Keys,
    StreamId,
    parse_stream_id,
)
from relaypolicy.fleet.urls import StateUrl, connect, parse_state_url
from relaypolicy.fleet.writes import Write, Writes
from relaypolicy.iptable.base import IpEntry, Login
from relaypolicy.iptable.memory import ExpiringIpTable
from relaypolicy.networks import normalize_ip

if TYPE_CHECKING:
    from os import PathLike

    import redis

    from relaypolicy.model import Request

__all__ = ["ReplicaTable", "StaleTable"]

log = logging.getLogger("relaypolicy.fleet")

_START = StreamId(0, 0)
_BATCH = 256  # writes per pipeline


class ReplicaTable:
    """An IP table shared by a fleet through Redis (see the module doc).

    ``state`` is a Redis state URL (:mod:`relaypolicy.fleet.urls`). Nothing connects until
    :meth:`start` (or the first :meth:`record` or :meth:`remove`, for a writer that nobody
    started); :meth:`close` stops the threads, and it may be started again. ``ttl``,
    ``clock``, ``max_entries`` and ``ipv6_prefix`` are the local table's. ``stream_length``
    is how many change events Redis keeps: a replica cut off for longer than that many
    changes reloads the whole table. ``timeout`` bounds every Redis call.
    """

    __slots__ = (
        "_block",
        "_client",
        "_client_login",
        "_clock",
        "_closed",
        "_contact",
        "_counters",
        "_follower",
        "_fresh_until",
        "_has_client",
        "_last_error",
        "_last_id",
        "_last_seq",
        "_lock",
        "_max_staleness",
        "_names",
        "_need_load",
        "_need_server_check",
        "_offset",
        "_record_script",
        "_remove_script",
        "_run_id",
        "_state",
        "_stopping",
        "_stream_length",
        "_table",
        "_wake",
        "_writer",
        "_writes",
    )

    def __init__(
        self,
        state: StateUrl | str,
        ttl: float = 1800.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int | None = None,
        ipv6_prefix: int = 128,
        max_staleness: float = 10.0,
        key_prefix: str = "relaypolicy:pop",
        stream_length: int = 10_000,
        timeout: float = 2.0,
        max_pending: int = 100_000,
    ) -> None:
        self._table = ExpiringIpTable(
            ttl, clock=clock, max_entries=max_entries, ipv6_prefix=ipv6_prefix
        )
        self._clock = clock
        self._state = parse_state_url(state) if isinstance(state, str) else state
        if not self._state.shared:
            raise ValueError(f"state: a replica needs a Redis URL, not {self._state.url!r}")
        if not (0 < max_staleness < math.inf):
            raise ValueError(f"max_staleness: expected positive seconds, not {max_staleness!r}")
        if not isinstance(stream_length, int) or stream_length < 1:
            raise ValueError(f"stream_length: expected a positive integer, not {stream_length!r}")
        self._max_staleness = float(max_staleness)
        self._stream_length = str(stream_length)
        self._names = Keys.for_prefix(key_prefix)
        # XREAD blocks at most this long, so a quiet Redis is heard from well within
        # max_staleness; the socket timeout adds ``timeout`` on top.
        self._block = min(0.5, self._max_staleness / 4)
        self._client: redis.Redis = connect(self._state, timeout=self._block + timeout)
        self._record_script = self._client.register_script(RECORD_SCRIPT)
        self._remove_script = self._client.register_script(REMOVE_SCRIPT)
        # The decision path: the local table's bound readers, looked up once.
        self._has_client = self._table.has_client
        self._client_login = self._table.client_login
        self._contact = -math.inf  # local time of the last round that reached Redis
        self._fresh_until = -math.inf  # _contact + max_staleness, for the decision path
        self._offset = 0.0  # Redis time minus local time
        self._last_id = _START
        self._last_seq = 0
        self._run_id = ""
        self._need_load = True
        self._need_server_check = False
        # One lock orders local writes, the follower's changes and the writer's
        # bookkeeping; readers never take it. The writer waits on it for work.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._writes = Writes(max_pending)
        self._stopping = threading.Event()
        self._follower: threading.Thread | None = None
        self._closed = False
        self._writer: threading.Thread | None = None
        self._last_error = ""
        self._counters = dict.fromkeys(
            ("loads", "events", "writes", "dropped-writes", "errors", "bad-events"), 0
        )

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

    # --- the follower -----------------------------------------------------------------

    def _failed(self, where: str, exc: Exception) -> None:
        self._counters["errors"] += 1
        message = f"{where}: {exc.__class__.__name__}: {exc}"
        if message != self._last_error:
            log.error("shared table (%s) %s", self._state.redacted, message)
        self._last_error = message

    def _recovered(self) -> None:
        if self._last_error:
            log.info("shared table (%s): Redis reachable again", self._state.redacted)
            self._last_error = ""

    def _follow_loop(self) -> None:
        import redis

        backoff = 0.05
        while not self._stopping.is_set():
            try:
                if self._need_server_check:
                    self._check_server()
                if self._need_load:
                    self._load()
                self._round()
                self._recovered()
                backoff = 0.05
            except Exception as exc:  # whatever it is, keep trying: stale means deferring
                if self._stopping.is_set():
                    return
                if not isinstance(exc, redis.RedisError | OSError):
                    log.exception("shared table (%s): follower failed", self._state.redacted)
                self._failed("follower", exc)
                self._need_server_check = not self._need_load
                if self._stopping.wait(backoff):
                    return
                backoff = min(backoff * 2, 1.0)

    def _check_server(self) -> None:
        """After a disconnect: the same Redis (resume), or a new one (reload)."""
        run_id = self._client.info("server").get("run_id", "")
        if run_id != self._run_id:
            log.warning(
                "shared table (%s): Redis restarted or failed over, reloading",
                self._state.redacted,
            )
            self._need_load = True
        self._need_server_check = False

    def _load(self) -> None:
        """Load the whole table, put this replica's own unread writes over it, swap it in."""
        names = self._names
        sent = self._clock()
        pipe = self._client.pipeline(transaction=True)
        pipe.info("server")
        pipe.time()
        pipe.xrevrange(names.events, count=1)
        pipe.get(names.seq)
        pipe.zrange(names.expiry, 0, -1, withscores=True)
        pipe.hgetall(names.users)
        info, (seconds, micros), last, seq, scored, users = pipe.execute()
        offset = seconds + micros / 1e6 - sent
        position = parse_stream_id(last[0][0]) if last else _START
        table = self._table
        staged = ExpiringIpTable(
            table.ttl,
            clock=self._clock,
            max_entries=table.max_entries,
            ipv6_prefix=table.ipv6_prefix,
        )
        now = self._clock()
        for address, expires in scored:  # ascending expiry: the FIFO takes them in order
            try:
                staged.record_until(
                    address, float(expires) - offset, user=users.get(address) or None
                )
            except (ValueError, TypeError):
                self._counters["bad-events"] += 1
        with self._lock:
            writes = self._writes
            writes.read_back(position)  # those are in what was loaded
            for write in writes:  # the rest is newer than what was loaded: over it, in order
                if write.op == "remove":
                    staged.remove(write.address)
                elif write.deadline > now:
                    staged.record_until(write.address, write.deadline, user=write.user or None)
            loaded = table.replace(staged)
            self._run_id = info.get("run_id", "")
            self._last_id = position
            self._last_seq = int(seq or 0)
            self._offset = offset
            self._touch(sent)
            self._need_load = False
        self._counters["loads"] += 1
        log.info(
            "shared table (%s): loaded %d entries at %s", self._state.redacted, loaded, position
        )

    def _round(self) -> None:
        """One read of the stream: apply what came, or notice a gap and ask for a reload."""
        position = self._last_id
        sent = self._clock()
        pipe = self._client.pipeline(transaction=False)
        pipe.time()
        pipe.xread({self._names.events: str(position)}, count=1000, block=int(self._block * 1000))
        (seconds, micros), read = pipe.execute()
        self._offset = offset = seconds + micros / 1e6 - sent
        for _stream, entries in read or ():
            with self._lock:
                for entry_id, fields in entries:
                    seq = fields.get("seq", "")
                    if not seq.isdigit() or int(seq) != self._last_seq + 1:
                        log.warning(
                            "shared table (%s): change %s follows %d: changes were trimmed "
                            "or lost, reloading",
                            self._state.redacted,
                            seq or "without a number",
                            self._last_seq,
                        )
                        self._need_load = True
                        return
                    change = parse_stream_id(entry_id)
                    self._writes.read_back(change)
                    self._apply(fields, offset)
                    self._last_id = change
                    self._last_seq += 1
                    self._counters["events"] += 1
        self._touch(sent)

    def _touch(self, sent: float) -> None:
        """Redis answered a request sent at ``sent`` (local clock)."""
        self._contact = sent
        self._fresh_until = sent + self._max_staleness

    def _apply(self, fields: dict[str, str], offset: float) -> None:
        """One change from the stream (call with the lock held)."""
        table = self._table
        try:
            address = fields["address"]
            op = fields["op"]
            if op not in ("record", "remove"):
                raise ValueError(f"unknown op {op!r}")
            expires = float(fields["expires"]) - offset if op == "record" else -math.inf
            user = fields.get("user") or None
            writes = self._writes
            if writes and writes.touches(entry := table.entry_address(address)):
                self._beneath(address, expires, user, writes.on(entry))
            elif op == "remove":
                table.remove(address)
            else:
                table.record_until(address, expires, user=user)
        except (KeyError, ValueError, TypeError):
            self._counters["bad-events"] += 1

    def _beneath(
        self, address: str, expires: float, user: str | None, writes: Sequence[Write]
    ) -> None:
        """Apply a change from Redis under this replica's unread writes to that entry:
        they are newer, so the entry ends as they make it (``expires`` is ``-inf`` for a
        removal). Set in one step, so a reader never sees the change without them."""
        now = self._clock()
        state = (expires, user) if expires > now else None
        for write in writes:
            if write.op == "remove":
                state = None
            elif write.deadline > now:
                until = write.deadline if state is None else max(state[0], write.deadline)
                state = (until, write.user or None)
        if state is None:
            self._table.remove(address)
        else:
            self._table.put(address, state[0], user=state[1])

    # --- the writer -------------------------------------------------------------------

    def _write_loop(self) -> None:
        import redis

        backoff = 0.05
        while True:
            with self._wake:
                while not self._writes.queued and not self._stopping.is_set():
                    self._wake.wait()
                if not self._writes.queued:
                    return
            try:
                self._send_batch()
                backoff = 0.05
            except (redis.RedisError, OSError) as exc:
                self._failed("writer", exc)
                if self._stopping.is_set():
                    return
                time.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    def _send_batch(self) -> None:
        with self._lock:
            batch = self._writes.batch(_BATCH)
        names = list(self._names)
        pipe = self._client.pipeline(transaction=False)
        now = self._clock()
        sent: list[bool] = []
        for write in batch:
            if write.op == "remove":
                self._remove_script(names, [write.address, self._stream_length], client=pipe)
            elif write.deadline > now:  # a login waiting gets what remains of its time
                remaining = f"{write.deadline - now:.6f}"
                args = [write.address, remaining, write.user, self._stream_length]
                self._record_script(names, args, client=pipe)
            sent.append(write.op == "remove" or write.deadline > now)
        # In order, up to the first error: what failed waits with the rest (and Redis'
        # error makes the writer back off).
        results = pipe.execute(raise_on_error=False)
        done: list[Write] = []
        ids: list[StreamId | None] = []
        error: Exception | None = None
        replies = iter(results)
        for write, went in zip(batch, sent, strict=True):
            reply = next(replies) if went else None
            if isinstance(reply, Exception):
                error = reply
                break
            done.append(write)
            ids.append(None if reply is None else parse_stream_id(reply))
        with self._lock:
            self._writes.sent_as(done, ids)
        self._counters["writes"] += len(done)
        if error is not None:
            raise error
