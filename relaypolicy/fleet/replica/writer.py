"""The writer thread: send the queued writes to Redis, in order, in batches.

Each write is one Lua script (:mod:`relaypolicy.fleet.store`) that changes the set and
appends the event; a login still waiting is sent with what remains of its time. What
fails waits with the rest, and the writer backs off (see :mod:`relaypolicy.fleet.replica`).
"""

from __future__ import annotations

import time

from relaypolicy.fleet.replica.state import _ReplicaState
from relaypolicy.fleet.store import StreamId, parse_stream_id
from relaypolicy.fleet.writes import Write

_BATCH = 256  # writes per pipeline


class _Writer(_ReplicaState):
    """The writer's loop and batches, for :class:`~relaypolicy.fleet.replica.ReplicaTable`."""

    __slots__ = ()

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
