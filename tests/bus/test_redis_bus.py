"""RedisBus on a real Redis: two buses (two nodes) sharing one store, doorbells lost on
purpose, the link to Redis cut through a TCP proxy, commands answered and unanswered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.bus.base import NodeUnreachable
from app.bus.redis import RedisBus
from app.bus.relay import Relay
from app.fanout.hub import Hub
from app.store.memory import MemoryEventStore
from app.store.ops import AppendEvent
from protocol.codec import EncodedEvent
from tests.agents.tcp_proxy import TcpProxy
from tests.bus.test_relay import Collector, ev
from tests.services import REDIS_URL, redis_prefix


async def last_seqs_of(store: MemoryEventStore, cids: list[str]) -> dict[str, int]:
    return {c: await store.last_seq(c) for c in cids}


def make_bus(url: str, node: str, prefix: str, store: MemoryEventStore,
             resync: float = 60.0) -> tuple[RedisBus, Hub]:
    hub = Hub()
    bus = RedisBus(url, node, Relay(hub, store.read_events),
                   lambda cids: last_seqs_of(store, cids), hub.conversations,
                   prefix=prefix, resync_interval=resync, op_timeout=1.0)
    return bus, hub


@pytest.fixture
async def store() -> AsyncIterator[MemoryEventStore]:
    s = MemoryEventStore()
    await s.open()
    yield s
    await s.close()


async def wait_for(cond, what: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(500):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def commit(store: MemoryEventStore, events: list[EncodedEvent]) -> None:
    for e in events:
        store.enqueue(AppendEvent(e, 0))
    await store.flush()


async def test_commits_on_a_reach_b_gap_free_even_when_doorbells_are_lost(
    store: MemoryEventStore,
) -> None:
    async with redis_prefix() as prefix:
        a, hub_a = make_bus(REDIS_URL, "a", prefix, store)
        b, hub_b = make_bus(REDIS_URL, "b", prefix, store)
        store.add_commit_listener(a.committed)
        await a.start()
        await b.start()
        try:
            sub = Collector("c")
            hub_b.add(sub)
            await commit(store, [ev(1), ev(2)])
            await wait_for(lambda: sub.seqs == [1, 2], "first batch on b")
            # Three doorbells lost: committed without telling the bus.
            store.writer.listeners.remove(a.committed)
            await commit(store, [ev(3), ev(4), ev(5)])
            store.add_commit_listener(a.committed)
            await commit(store, [ev(6)])
            await wait_for(lambda: sub.seqs == [1, 2, 3, 4, 5, 6], "gap filled on b")
            assert hub_a.published_seq("c") == 6, "a's own hub got its commits at once"
        finally:
            await a.close()
            await b.close()


async def test_a_node_cut_off_from_redis_catches_up_when_it_is_back(
    store: MemoryEventStore,
) -> None:
    proxy = TcpProxy("127.0.0.1", 6379)
    await proxy.start()
    async with redis_prefix() as prefix:
        a, _ = make_bus(REDIS_URL, "a", prefix, store)
        b, hub_b = make_bus(f"redis://127.0.0.1:{proxy.port}/0", "b", prefix, store)
        store.add_commit_listener(a.committed)
        await a.start()
        await b.start()
        try:
            assert b.healthy
            sub = Collector("c")
            hub_b.add(sub)
            await commit(store, [ev(1)])
            await wait_for(lambda: sub.seqs == [1], "first event")
            proxy.cut()  # b loses Redis; what a publishes now never reaches b
            await wait_for(lambda: not b.healthy, "b to notice")
            await commit(store, [ev(2), ev(3)])  # the last events: no later doorbell
            await wait_for(lambda: b.healthy, "b to resubscribe")
            await wait_for(lambda: sub.seqs == [1, 2, 3], "b to resync from the store")
        finally:
            await a.close()
            await b.close()
            await proxy.close()


async def test_commands_are_answered_and_a_missing_node_fails_fast(
    store: MemoryEventStore,
) -> None:
    async with redis_prefix() as prefix:
        a, _ = make_bus(REDIS_URL, "a", prefix, store)
        b, _ = make_bus(REDIS_URL, "b", prefix, store)

        async def echo(body: bytes) -> bytes:
            return b"b says " + body

        b.on_request = echo
        await a.start()
        await b.start()
        try:
            assert await a.request("b", b"hi", timeout=2) == b"b says hi"
            with pytest.raises(NodeUnreachable, match="not listening"):
                await a.request("nobody", b"hi", timeout=2)
        finally:
            await a.close()
            await b.close()


async def test_redis_down_at_start_leaves_the_bus_unready_not_crashed(
    store: MemoryEventStore,
) -> None:
    proxy = TcpProxy("127.0.0.1", 6379)
    await proxy.start()
    port = proxy.port
    await proxy.close()  # nothing listens there now
    async with redis_prefix() as prefix:
        bus, _ = make_bus(f"redis://127.0.0.1:{port}/0", "x", prefix, store)
        await bus.start()
        try:
            assert not bus.healthy
            bus.committed([ev(1)])  # a commit while Redis is down is not an error
            with pytest.raises(NodeUnreachable):
                await bus.request("y", b"", timeout=0.5)
        finally:
            await bus.close()
