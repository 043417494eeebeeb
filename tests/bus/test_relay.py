"""The relay's gap guard, fed batches by hand: a real Hub, a real subscriber, a real store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.bus.relay import Relay
from app.fanout.batch import Batch
from app.fanout.hub import Hub
from app.store.memory import MemoryEventStore
from app.store.ops import AppendEvent
from protocol.codec import EncodedEvent


class Collector:
    def __init__(self, conversation_id: str) -> None:
        self.conversation_id = conversation_id
        self.seqs: list[int] = []

    def deliver(self, batch: Batch) -> None:
        self.seqs.extend(e.seq for e in batch.events)


def ev(seq: int, cid: str = "c") -> EncodedEvent:
    return EncodedEvent(seq, "message_chunk", cid, "r", b'{"seq":%d}' % seq)


@pytest.fixture
async def store() -> AsyncIterator[MemoryEventStore]:
    s = MemoryEventStore()
    await s.open()
    yield s
    await s.close()


async def commit(store: MemoryEventStore, seqs: range) -> list[EncodedEvent]:
    events = [ev(i) for i in seqs]
    for e in events:
        store.enqueue(AppendEvent(e, 0))
    await store.flush()
    return events


async def settle(relay: Relay) -> None:
    for _ in range(200):
        if not relay._fills:
            relay.hub.flush()
            return
        await asyncio.sleep(0.01)
    raise AssertionError("fill did not finish")


async def test_contiguous_batches_pass_at_once_and_duplicates_are_dropped(
    store: MemoryEventStore,
) -> None:
    hub = Hub()
    sub = Collector("c")
    hub.add(sub)
    relay = Relay(hub, store.read_events)
    relay.remote([ev(1), ev(2)])
    assert hub.accepted_seq("c") == 2, "handed to the hub in the same step"
    hub.flush()  # the hub delivers on its next loop step (fanout/hub.py)
    assert sub.seqs == [1, 2]
    relay.remote([ev(2), ev(3)])
    relay.remote([ev(1)])
    hub.flush()
    assert sub.seqs == [1, 2, 3]
    assert relay.fills == 0


async def test_a_gap_is_filled_from_the_store_before_later_events(store: MemoryEventStore) -> None:
    hub = Hub()
    sub = Collector("c")
    hub.add(sub)
    relay = Relay(hub, store.read_events)
    events = await commit(store, range(1, 11))
    relay.remote(events[:2])
    relay.remote(events[6:8])  # 3..6 were lost
    relay.remote(events[8:])  # arrives while the fill runs: held, then delivered
    await settle(relay)
    assert sub.seqs == list(range(1, 11))
    assert relay.fills == 1


async def test_held_events_over_the_bound_are_read_from_the_store(
    store: MemoryEventStore,
) -> None:
    hub = Hub()
    sub = Collector("c")
    hub.add(sub)
    relay = Relay(hub, store.read_events, page=3, hold_bytes=20)
    events = await commit(store, range(1, 31))
    relay.remote(events[:1])
    for i in range(5, 30, 2):  # every other message lost, and most held ones dropped
        relay.remote(events[i:i + 1])
    await settle(relay)
    assert sub.seqs == list(range(1, 31))


async def test_without_a_local_subscriber_remote_batches_are_dropped_local_ones_published(
    store: MemoryEventStore,
) -> None:
    hub = Hub()
    relay = Relay(hub, store.read_events)
    relay.remote([ev(5)])
    hub.flush()
    assert hub.published_seq("c") == 0 and relay.fills == 0
    relay.local([ev(7)])  # e.g. the first commit after a takeover, nobody listening
    hub.flush()
    assert hub.published_seq("c") == 7 and relay.fills == 0


async def test_a_resync_fills_a_lost_last_message(store: MemoryEventStore) -> None:
    hub = Hub()
    sub = Collector("c")
    hub.add(sub)
    relay = Relay(hub, store.read_events)
    events = await commit(store, range(1, 4))
    relay.remote(events[:2])  # the message with 3 (say, the done) never came
    relay.behind("c", await store.last_seq("c"))
    await settle(relay)
    assert sub.seqs == [1, 2, 3]


async def test_a_failing_store_read_is_retried_until_it_works(store: MemoryEventStore) -> None:
    hub = Hub()
    sub = Collector("c")
    hub.add(sub)
    failures = [2]

    async def flaky(cid: str, after: int, limit: int) -> list[EncodedEvent]:
        if failures[0]:
            failures[0] -= 1
            raise OSError("database unreachable")
        return await store.read_events(cid, after, limit)

    relay = Relay(hub, flaky)
    events = await commit(store, range(1, 6))
    relay.remote(events[4:])
    await settle(relay)
    assert sub.seqs == [1, 2, 3, 4, 5] and failures == [0]


async def test_sync_brings_the_hub_to_the_store_even_without_subscribers(
    store: MemoryEventStore,
) -> None:
    hub = Hub()
    relay = Relay(hub, store.read_events)
    await commit(store, range(1, 8))
    await relay.sync("c")
    assert hub.published_seq("c") == 7


async def test_a_merged_delivery_with_a_hole_inside_is_never_published_with_the_hole(
    store: MemoryEventStore,
) -> None:
    hub = Hub()
    sub = Collector("c")
    hub.add(sub)
    relay = Relay(hub, store.read_events)
    events = await commit(store, range(1, 7))
    relay.remote([events[0], events[1], events[4], events[5]])  # 3 and 4 lost in between
    await settle(relay)
    assert sub.seqs == [1, 2, 3, 4, 5, 6]
