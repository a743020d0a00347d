"""The writes a replica has made and not yet read back from Redis, in order.

A replica applies its own :meth:`~relaypolicy.fleet.ReplicaTable.record` and
:meth:`~relaypolicy.fleet.ReplicaTable.remove` to its local table at once; Redis hears of
them later (the writer sends them in the background, and waits while Redis is away).
Until the replica has read a write back from the stream, what Redis says about that entry
is *older* than the write: a reload, or another server's change arriving first, must not
undo it. :class:`Writes` holds them for that, in the order they were made: first the
*sent* ones (each with the stream ID Redis gave its change), then the *queued* ones. A
sent write leaves when the follower reads a change at or past its ID (its own, or a later
one: then Redis lost it) or loads a table at or past it.

Not thread-safe by itself: the replica holds its lock around every call.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterator, Sequence
from typing import Literal

import attrs

from relaypolicy.fleet.store import StreamId

__all__ = ["Write", "Writes"]


@attrs.define(eq=False)
class Write:
    """One :meth:`record` or :meth:`remove` made on this replica."""

    op: Literal["record", "remove"]
    address: str  #: canonical text, as Redis stores it
    entry: str  #: the local entry it changes (an IPv6 network when grouped)
    user: str = ""  #: the login name of a record ("" for none)
    deadline: float = 0.0  #: when a record expires, on the replica's clock
    id: StreamId | None = None  #: the ID of its change, once Redis has it


class Writes:
    """The replica's writes not yet read back from Redis (see the module doc)."""

    __slots__ = ("_by_entry", "max_queued", "queued", "sent")

    def __init__(self, max_queued: int) -> None:
        self.max_queued = max_queued
        self.sent: collections.deque[Write] = collections.deque()
        self.queued: collections.deque[Write] = collections.deque()
        # The same writes by entry, oldest first: a change from Redis looks up its entry's
        # in O(1), however many are held (a long outage on a busy POP server).
        self._by_entry: dict[str, collections.deque[Write]] = {}

    def __len__(self) -> int:
        return len(self.sent) + len(self.queued)

    def __iter__(self) -> Iterator[Write]:
        """Every write held, oldest first."""
        return itertools.chain(self.sent, self.queued)

    def add(self, write: Write) -> int:
        """Queue ``write``; how many of the oldest queued writes were dropped for room."""
        self.queued.append(write)
        held = self._by_entry.get(write.entry)
        if held is None:
            self._by_entry[write.entry] = collections.deque((write,))
        else:
            held.append(write)
        dropped = 0
        while len(self.queued) > self.max_queued:
            self._forget(self.queued.popleft())
            dropped += 1
        return dropped

    def batch(self, limit: int) -> list[Write]:
        """The oldest ``limit`` queued writes, to send (they stay queued until :meth:`sent_as`)."""
        return list(itertools.islice(self.queued, limit))

    def sent_as(self, writes: list[Write], ids: list[StreamId | None]) -> None:
        """``writes`` (a :meth:`batch`) reached Redis as the changes ``ids``; ``None``: not
        sent (a record whose time ran out while it waited)."""
        for write, change in zip(writes, ids, strict=True):
            if not self.queued or self.queued[0] is not write:
                continue  # dropped for room while it was being sent
            self.queued.popleft()
            if change is None:
                self._forget(write)
            else:
                write.id = change
                self.sent.append(write)

    def read_back(self, position: StreamId) -> None:
        """The replica is at ``position`` of the stream: sent writes up to there are in
        what it has (or Redis lost them, which nothing here can undo)."""
        sent = self.sent
        while sent and sent[0].id is not None and sent[0].id <= position:
            self._forget(sent.popleft())

    def unread(self, position: StreamId) -> int:
        """How many sent writes are past ``position`` (a write the follower read before the
        writer learnt its ID waits here until the next change or load, harmlessly: its
        effect is what Redis has)."""
        return sum(1 for write in self.sent if write.id is not None and write.id > position)

    def touches(self, entry: str) -> bool:
        """Whether a held write changes ``entry``."""
        return entry in self._by_entry

    def on(self, entry: str) -> Sequence[Write]:
        """The held writes that change ``entry``, oldest first."""
        return self._by_entry.get(entry, ())

    def _forget(self, write: Write) -> None:
        held = self._by_entry[write.entry]
        if held[0] is write:  # the usual case: writes leave oldest first
            held.popleft()
        else:  # a queued one dropped or not sent, behind this entry's sent ones
            held.remove(write)
        if not held:
            del self._by_entry[write.entry]
