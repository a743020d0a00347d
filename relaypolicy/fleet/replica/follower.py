"""The follower thread: load the shared table from Redis, then apply its stream of changes.

See the theory of operation in :mod:`relaypolicy.fleet.replica`: one ``MULTI`` loads the
set, the hash and the position of the last change; ``XREAD BLOCK`` reads on from there;
a gap in the change numbers, or a new Redis ``run_id``, means a reload; a change to an
entry with a write of this replica's own still unread goes beneath that write.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from relaypolicy.fleet.replica.state import _START, _ReplicaState
from relaypolicy.fleet.store import parse_stream_id
from relaypolicy.fleet.writes import Write
from relaypolicy.iptable.memory import ExpiringIpTable

log = logging.getLogger("relaypolicy.fleet")


class _Follower(_ReplicaState):
    """The follower's loop and steps, for :class:`~relaypolicy.fleet.replica.ReplicaTable`."""

    __slots__ = ()

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
