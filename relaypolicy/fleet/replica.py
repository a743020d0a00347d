"""A local replica of the shared POP-before-SMTP table, kept in step with Redis.

Theory of operation
-------------------
:class:`ReplicaTable` *is* an :class:`~relaypolicy.iptable.ExpiringIpTable`: decisions
read its dictionaries exactly as they read the memory table's, and never wait on the
network. Two daemon threads talk to Redis (layout in :mod:`relaypolicy.fleet.store`):

- the *follower* loads the sorted set and the hash in one ``MULTI`` together with the ID
  and number of the last change, then reads the stream after that ID (``XREAD BLOCK``),
  so no change is lost or applied twice. Every round also asks ``TIME``, to turn Redis
  expiry times into times on the local clock (machine clocks may be skewed: only Redis'
  counts). A change whose number is not the next one means some were trimmed from the
  stream before it read them, or lost: it reloads. After an error it reconnects and
  resumes from its last ID, unless Redis' ``run_id`` changed (a restart from the
  append-only file, a failover): then it reloads. A reload builds a new table and swaps
  its dictionaries in, so a reader never sees it half-done.
- the *writer* sends what :meth:`record` and :meth:`remove` queue, in order, each as one
  Lua script that changes the set and appends the event. The change applies to the local
  table at once; while Redis cannot be reached the queue waits (bounded: the oldest are
  dropped and counted), and a login is sent with what remains of its time.

Failing closed: the follower notes, on the local clock, when it last heard from Redis.
While that is more than ``max_staleness`` seconds ago (and before the first load), an
address the replica does not know makes :meth:`has_client` and :meth:`client_login` raise
:class:`StaleTable`, which :class:`~relaypolicy.policies.PopBeforeSmtp` turns into
``451 4.3.0`` (DEFER); a known one is still accepted until its entry expires. Nothing
stale is ever turned into an ACCEPT. The replica recovers by itself when Redis answers.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable
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
from relaypolicy.iptable.base import Login
from relaypolicy.iptable.memory import ExpiringIpTable
from relaypolicy.networks import normalize_ip

if TYPE_CHECKING:
    import redis

    from relaypolicy.model import Request

__all__ = ["ReplicaTable", "StaleTable"]

log = logging.getLogger("relaypolicy.fleet")

_START = StreamId(0, 0)
_Op = tuple[str, str, str, float]  # ("record" | "remove", address, user, local deadline)


class ReplicaTable(ExpiringIpTable):
    """An :class:`ExpiringIpTable` shared by a fleet through Redis (see the module doc).

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
        "_closed",
        "_contact",
        "_counters",
        "_follower",
        "_fresh_until",
        "_last_error",
        "_last_id",
        "_last_seq",
        "_max_pending",
        "_max_staleness",
        "_names",
        "_need_load",
        "_need_server_check",
        "_offset",
        "_pending",
        "_record_script",
        "_remove_script",
        "_run_id",
        "_state",
        "_stopping",
        "_stream_length",
        "_wake",
        "_writer",
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
        super().__init__(ttl, clock=clock, max_entries=max_entries, ipv6_prefix=ipv6_prefix)
        self._state = parse_state_url(state) if isinstance(state, str) else state
        if not self._state.shared:
            raise ValueError(f"state: a replica needs a Redis URL, not {self._state.url!r}")
        if not (0 < max_staleness < math.inf):
            raise ValueError(f"max_staleness: expected positive seconds, not {max_staleness!r}")
        if not isinstance(stream_length, int) or stream_length < 1:
            raise ValueError(f"stream_length: expected a positive integer, not {stream_length!r}")
        self._max_staleness = float(max_staleness)
        self._stream_length = str(stream_length)
        self._max_pending = max_pending
        self._names = Keys.for_prefix(key_prefix)
        # XREAD blocks at most this long, so a quiet Redis is heard from well within
        # max_staleness; the socket timeout adds ``timeout`` on top.
        self._block = min(0.5, self._max_staleness / 4)
        self._client: redis.Redis = connect(self._state, timeout=self._block + timeout)
        self._record_script = self._client.register_script(RECORD_SCRIPT)
        self._remove_script = self._client.register_script(REMOVE_SCRIPT)
        self._contact = -math.inf  # local time of the last round that reached Redis
        self._fresh_until = -math.inf  # _contact + max_staleness, for the decision path
        self._offset = 0.0  # Redis time minus local time
        self._last_id = _START
        self._last_seq = 0
        self._run_id = ""
        self._need_load = True
        self._need_server_check = False
        self._pending: collections.deque[_Op] = collections.deque()
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._follower: threading.Thread | None = None
        self._closed = False
        self._writer: threading.Thread | None = None
        self._last_error = ""
        self._counters = dict.fromkeys(
            ("loads", "events", "writes", "dropped-writes", "errors", "bad-events"), 0
        )

    # --- the decision path: local reads, failing closed when stale ---------------------

    @property
    def max_staleness(self) -> float:
        return self._max_staleness

    @property
    def stale(self) -> bool:
        """Whether Redis has not been heard from for longer than ``max_staleness``."""
        return self._clock() - self._contact > self._max_staleness

    def _stale_error(self) -> StaleTable:
        since = self._clock() - self._contact
        heard = f"{since:.1f} s ago" if since < math.inf else "never"
        return StaleTable(f"shared table stale: Redis last heard from {heard}")

    def has_client(self, request: Request) -> bool:
        if request.client_ip_version == 4:
            expires = self._expiry.get(request.client_ip_value)
        else:
            expires = self._expiry.get(~(request.client_ip_value >> self._v6_shift))
        now = self._clock()
        if expires is not None and expires > now:
            return True
        if now > self._fresh_until:
            raise self._stale_error()
        return False

    def client_login(self, request: Request) -> Login | None:
        login = super().client_login(request)
        if login is None and self.stale:
            raise self._stale_error()
        return login

    # --- writing: local at once, Redis in the background ------------------------------

    def record(self, address: str, *, user: str | None = None, ttl: float | None = None) -> None:
        """Allow ``address`` here at once, and in the whole fleet as soon as Redis has it."""
        super().record(address, user=user, ttl=ttl)
        text = normalize_ip(address)
        deadline = self._clock() + (self._ttl if ttl is None else float(ttl))
        self._queue(("record", text, user or "", deadline))

    def remove(self, address: str) -> bool:
        """Forget ``address`` here at once, and in the whole fleet as soon as Redis has it."""
        removed = super().remove(address)
        self._queue(("remove", normalize_ip(address), "", 0.0))
        return removed

    def _queue(self, op: _Op) -> None:
        if self._writer is None and not self._closed:
            self.start()  # a writer nobody started (a standalone watcher): start on first use
        with self._wake:
            self._pending.append(op)
            while len(self._pending) > self._max_pending:
                self._pending.popleft()
                self._counters["dropped-writes"] += 1
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

    def fleet_stats(self) -> dict[str, Any]:
        """What ``relaypolicy ctl stats`` shows of the replica."""
        since = self._clock() - self._contact
        return {
            "state": self._state.redacted,
            "stale": since > self._max_staleness,
            "seconds-since-redis": round(since, 1) if since < math.inf else None,
            "stream-position": str(self._last_id),
            "pending-writes": len(self._pending),
            **self._counters,
            "last-error": self._last_error,
        }

    def __repr__(self) -> str:
        return f"ReplicaTable({self._state.redacted!r}, entries={len(self._expiry)})"

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
        fresh = ExpiringIpTable(
            self._ttl,
            clock=self._clock,
            max_entries=self._max_entries,
            ipv6_prefix=self._ipv6_prefix,
        )
        now = self._clock()
        for address, expires in scored:  # ascending expiry: the FIFO takes them in order
            local = float(expires) - offset
            if local <= now:
                continue
            try:
                key = fresh._key(address)
            except ValueError:
                self._counters["bad-events"] += 1
                continue
            fresh._put(key, local, users.get(address) or None, now)
        for op, address, user, deadline in list(self._pending):  # not in Redis yet
            if op == "record" and deadline > now:
                fresh._put(fresh._key(address), deadline, user or None, now)
        with self._lock:  # swap: the login names first, as writers do
            self._users = fresh._users
            self._expiry = fresh._expiry
            self._times = fresh._times
            self._keys = fresh._keys
            self._heap = fresh._heap
            self._changes += 1
        self._run_id = info.get("run_id", "")
        self._last_id = parse_stream_id(last[0][0]) if last else _START
        self._last_seq = int(seq or 0)
        self._offset = offset
        self._touch(sent)
        self._need_load = False
        self._counters["loads"] += 1
        log.info(
            "shared table (%s): loaded %d entries at %s",
            self._state.redacted,
            len(fresh._expiry),
            self._last_id,
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
            for entry_id, fields in entries:
                seq = fields.get("seq", "")
                if not seq.isdigit() or int(seq) != self._last_seq + 1:
                    log.warning(
                        "shared table (%s): change %s follows %d: changes were trimmed or "
                        "lost, reloading",
                        self._state.redacted,
                        seq or "without a number",
                        self._last_seq,
                    )
                    self._need_load = True
                    return
                self._apply(fields, offset)
                self._last_id = parse_stream_id(entry_id)
                self._last_seq += 1
                self._counters["events"] += 1
        self._touch(sent)

    def _touch(self, sent: float) -> None:
        """Redis answered a request sent at ``sent`` (local clock)."""
        self._contact = sent
        self._fresh_until = sent + self._max_staleness

    def _apply(self, fields: dict[str, str], offset: float) -> None:
        try:
            key = self._key(fields["address"])
            op = fields["op"]
            expires = float(fields["expires"]) - offset if op == "record" else 0.0
        except (KeyError, ValueError):
            self._counters["bad-events"] += 1
            return
        with self._lock:
            if op == "remove":
                if self._expiry.pop(key, None) is not None:
                    self._changes += 1
                    self._compact()
                self._users.pop(key, None)
                return
            now = self._clock()
            if expires > now:
                self._put(key, expires, fields.get("user") or None, now)

    # --- the writer -------------------------------------------------------------------

    def _write_loop(self) -> None:
        import redis

        backoff = 0.05
        while True:
            with self._wake:
                while not self._pending and not self._stopping.is_set():
                    self._wake.wait()
                if not self._pending:
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
        with self._wake:
            ops = [self._pending[i] for i in range(min(256, len(self._pending)))]
        names = list(self._names)
        pipe = self._client.pipeline(transaction=False)
        now = self._clock()
        for op, address, user, deadline in ops:
            if op == "remove":
                self._remove_script(names, [address, self._stream_length], client=pipe)
            elif deadline > now:  # a login waiting gets what remains of its time
                remaining = f"{deadline - now:.6f}"
                args = [address, remaining, user, self._stream_length]
                self._record_script(names, args, client=pipe)
        pipe.execute()
        with self._wake:
            for sent in ops:  # unless dropped meanwhile (the queue overflowed)
                if self._pending and self._pending[0] is sent:
                    self._pending.popleft()
        self._counters["writes"] += len(ops)
