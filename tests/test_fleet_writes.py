"""The writes a replica holds until it reads them back from Redis (relaypolicy.fleet.writes)."""

from __future__ import annotations

from relaypolicy.fleet.store import StreamId
from relaypolicy.fleet.writes import Write, Writes


def remove(address: str) -> Write:
    return Write("remove", address, address)


def record(address: str, deadline: float = 100.0) -> Write:
    return Write("record", address, address, "taro", deadline)


def test_writes_are_held_in_order_sent_then_queued() -> None:
    writes = Writes(10)
    first, second, third = remove("192.0.2.1"), record("192.0.2.2"), record("192.0.2.1")
    for write in (first, second, third):
        assert writes.add(write) == 0
    batch = writes.batch(2)
    assert batch == [first, second]
    writes.sent_as(batch, [StreamId(5, 0), StreamId(6, 0)])
    assert list(writes) == [first, second, third] and len(writes) == 3
    assert (first.id, len(writes.sent), len(writes.queued)) == (StreamId(5, 0), 2, 1)
    assert list(writes.on("192.0.2.1")) == [first, third]
    assert writes.touches("192.0.2.2") and not writes.touches("192.0.2.3")
    assert writes.unread(StreamId(5, 0)) == 1


def test_a_write_leaves_when_the_stream_reaches_it() -> None:
    writes = Writes(10)
    first, second = remove("192.0.2.1"), remove("192.0.2.1")
    writes.add(first)
    writes.add(second)
    writes.sent_as([first, second], [StreamId(5, 0), StreamId(7, 0)])
    writes.read_back(StreamId(4, 9))
    assert len(writes) == 2
    writes.read_back(StreamId(6, 0))  # past the first: in what the replica has
    assert list(writes) == [second] and writes.touches("192.0.2.1")
    writes.read_back(StreamId(7, 0))
    assert len(writes) == 0 and not writes.touches("192.0.2.1")


def test_a_record_not_sent_is_not_held() -> None:
    writes = Writes(10)
    late = record("192.0.2.1", deadline=1.0)
    writes.add(late)
    writes.sent_as([late], [None])  # its time ran out while it waited
    assert len(writes) == 0 and not writes.touches("192.0.2.1")


def test_the_oldest_queued_writes_are_dropped_for_room() -> None:
    writes = Writes(2)
    batch = [remove("192.0.2.1"), remove("192.0.2.2")]
    for write in batch:
        writes.add(write)
    assert writes.add(remove("192.0.2.3")) == 1
    assert not writes.touches("192.0.2.1")
    # The dropped one was in a batch being sent: it is not held again when that returns.
    writes.sent_as(batch, [StreamId(1, 0), StreamId(2, 0)])
    assert [w.address for w in writes.sent] == ["192.0.2.2"]
    assert [w.address for w in writes.queued] == ["192.0.2.3"]
    assert not writes.touches("192.0.2.1")


def test_a_queued_write_dropped_behind_a_sent_one_leaves_its_entry_in_order() -> None:
    writes = Writes(2)
    w1, w2, w3, w4 = remove("a"), record("a"), remove("b"), record("a")
    writes.add(w1)
    writes.sent_as([w1], [StreamId(1, 0)])
    for write in (w2, w3):
        writes.add(write)
    assert writes.add(w4) == 1  # w2 goes, from the middle of entry a's writes
    assert list(writes.on("a")) == [w1, w4] and list(writes.on("b")) == [w3]
    writes.read_back(StreamId(1, 0))
    assert list(writes.on("a")) == [w4] and list(writes) == [w3, w4]
