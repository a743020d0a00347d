"""How the shared table is laid out in Redis, and the scripts that change it.

Three keys, with one hash tag so that Redis Cluster keeps them in one slot:

- ``{prefix}:expiry`` — a sorted set, address -> expiry (Unix seconds on Redis' clock);
- ``{prefix}:users`` — a hash, address -> login name (absent: none recorded);
- ``{prefix}:events`` — a stream of changes, trimmed to a fixed length: ``op=record``
  with ``address``, ``expires`` and ``user`` (empty: none), or ``op=remove`` with
  ``address``; each carries ``seq``, the change's number;
- ``{prefix}:seq`` — the number of the last change (a counter).

A writer changes the set, counts the change and appends the event in one Lua script, so a
reader that loads the set and then reads the stream after the ID it loaded at sees every
change exactly once; and the numbers tell it when one is missing (the stream was trimmed
past it, or Redis lost it), which stream IDs alone cannot: they are not consecutive, and
Redis 7.0 does not report what trimming removed.
Every time comes from ``TIME`` on the Redis server, never from the writer's clock. Addresses
are stored in canonical text (:func:`relaypolicy.networks.normalize_ip`), whole even for
IPv6: each replica groups IPv6 clients by its own ``ipv6_prefix``.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["RECORD_SCRIPT", "REMOVE_SCRIPT", "Keys", "StreamId", "parse_stream_id"]


class Keys(NamedTuple):
    expiry: str
    users: str
    events: str
    seq: str

    @classmethod
    def for_prefix(cls, prefix: str) -> Keys:
        tag = "{" + prefix + "}"
        return cls(f"{tag}:expiry", f"{tag}:users", f"{tag}:events", f"{tag}:seq")


class StreamId(NamedTuple):
    """A stream entry ID (``1700000000000-3``), ordered as Redis orders them."""

    ms: int
    seq: int

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"


def parse_stream_id(text: str) -> StreamId:
    ms, _, seq = text.partition("-")
    return StreamId(int(ms), int(seq or 0))


# KEYS: expiry, users, events, seq. ARGV: address, ttl seconds, user ("" for none), stream
# length. Returns the event's ID.
# Extends an entry, never shortens it (as ExpiringIpTable.record); the latest login's user
# wins. Also drops a few entries that have expired, so the set does not grow without bound.
RECORD_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local expires = now + tonumber(ARGV[2])
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
if old and tonumber(old) > expires then expires = tonumber(old) end
local text = string.format('%.6f', expires)
redis.call('ZADD', KEYS[1], text, ARGV[1])
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
local seq = redis.call('INCR', KEYS[4])
local id = redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[4], '*', 'seq', seq,
  'op', 'record', 'address', ARGV[1], 'expires', text, 'user', ARGV[3])
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 64)
for _, address in ipairs(gone) do
  redis.call('ZREM', KEYS[1], address)
  redis.call('HDEL', KEYS[2], address)
end
return id
"""

# KEYS: expiry, users, events, seq. ARGV: address, stream length. Returns the event's ID,
# as RECORD_SCRIPT does: the writer holds the removal until its replica reads that far.
REMOVE_SCRIPT = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
local seq = redis.call('INCR', KEYS[4])
return redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[2], '*', 'seq', seq, 'op', 'remove',
  'address', ARGV[1])
"""
