"""EventStore behaviour on the real SQLite file, the memory twin and real PostgreSQL
(a fresh schema per test; skipped with a reason when PostgreSQL is unreachable, failed
instead under ``AGENTSTREAM_REQUIRE_SERVICES=1``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.ids import scoped
from app.store.base import EventStore
from app.store.memory import MemoryEventStore
from app.store.ops import (
    AppendEvent,
    PutConversation,
    PutIdempotency,
    PutOutbox,
    PutRun,
    UpdateOutbox,
    UseAnswerToken,
)
from app.store.postgres import PostgresEventStore
from app.store.records import (
    AnswerToken,
    ConversationQuery,
    ConversationRecord,
    IdempotencyRecord,
    OutboxEntry,
    RunRecord,
)
from app.store.sqlite import SqliteEventStore
from app.store.writer import StoreUnavailable
from protocol.codec import EncodedEvent
from tests.services import PG_DSN, pg_schema


def ev(conv: str, seq: int, run: str | None = "r1", typ: str = "message_chunk") -> EncodedEvent:
    return EncodedEvent(seq, typ, conv, run, b'{"seq":%d}' % seq, "m1")


@pytest.fixture(params=["sqlite", "memory", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    s: EventStore
    if request.param == "postgres":
        async with pg_schema() as schema:
            s = PostgresEventStore(PG_DSN, schema=schema, batch_max=100)
            await s.open()
            yield s
            await s.close()
        return
    if request.param == "sqlite":
        s = SqliteEventStore(tmp_path / "s.db", batch_max=100)
    else:
        s = MemoryEventStore(batch_max=100)
    await s.open()
    yield s
    await s.close()


async def test_append_batches_and_publishes_after_commit(store: EventStore) -> None:
    committed: list[list[EncodedEvent]] = []
    store.add_commit_listener(committed.append)
    for i in range(1, 251):
        store.enqueue(AppendEvent(ev("c1", i), i))
    await store.flush()
    flat = [e.seq for batch in committed for e in batch]
    assert flat == list(range(1, 251))
    assert max(len(b) for b in committed) <= 100
    assert len(committed) >= 3  # batch_max bounds a transaction
    assert await store.last_seq("c1") == 250
    page = await store.read_events("c1", 100, 10)
    assert [e.seq for e in page] == list(range(101, 111))
    assert page[0].body == b'{"seq":101}' and page[0].type == "message_chunk"


async def test_read_filters_by_run_and_until(store: EventStore) -> None:
    for i in range(1, 11):
        store.enqueue(AppendEvent(ev("c1", i, run="a" if i % 2 else "b"), i))
    await store.flush()
    assert [e.seq for e in await store.read_events("c1", 0, 100, run_id="b")] == [2, 4, 6, 8, 10]
    assert [e.seq for e in await store.read_events("c1", 3, 100, until=6)] == [4, 5, 6]
    assert await store.read_events("nope", 0, 10) == []
    assert await store.last_seq("nope") == 0


async def test_runs_conversations_and_unfinished(store: EventStore) -> None:
    store.enqueue(PutConversation.of(ConversationRecord("c1", 1, 1, owner="u")))
    store.enqueue(PutRun.of(RunRecord("r1", "c1", "demo", "running", 1)))
    store.enqueue(PutRun.of(RunRecord("r2", "c1", "demo", "completed", 1)))
    await store.flush()
    conv = await store.get_conversation("c1")
    assert conv is not None and conv.owner == "u"
    assert [r.run_id for r in await store.unfinished_runs()] == ["r1"]
    store.enqueue(PutRun.of(RunRecord("r1", "c1", "demo", "cancelled", 1)))
    await store.flush()
    assert await store.unfinished_runs() == []
    got = await store.get_run("r1")
    assert got is not None and got.status == "cancelled"
    assert await store.get_run("zzz") is None


async def test_producers_wait_at_high_water(tmp_path: Path) -> None:
    s = MemoryEventStore(batch_max=10, high_water=50, low_water=10, stall_timeout=0.2)
    await s.open()
    try:
        for i in range(1, 60):
            s.enqueue(AppendEvent(ev("c", i), i))
        # the writer has not run yet: room is closed until it drains under low water
        assert not s.has_room()  # the emit hot path's synchronous check agrees
        waiter = asyncio.create_task(s.wait_for_room())
        await asyncio.wait_for(waiter, 2)
        assert s.pending <= 10
        assert s.has_room()
    finally:
        await s.close()


async def test_wait_for_room_times_out_when_writer_is_stuck() -> None:
    s = MemoryEventStore(high_water=5, low_water=1, stall_timeout=0.1)
    await s.open()
    gate = asyncio.Event()
    real = s._apply

    async def stuck(ops):  # type: ignore[no-untyped-def]
        await gate.wait()
        await real(ops)

    s.writer._apply = stuck  # type: ignore[method-assign]
    for i in range(1, 10):
        s.enqueue(AppendEvent(ev("c", i), i))
    with pytest.raises(StoreUnavailable):
        await s.wait_for_room()
    gate.set()
    await s.close()


async def test_reopened_file_holds_every_acknowledged_event(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    s = SqliteEventStore(path)
    await s.open()
    for i in range(1, 1001):
        s.enqueue(AppendEvent(ev("c1", i), i))
    await s.flush()
    await s.close()
    again = SqliteEventStore(path)
    await again.open()
    try:
        assert await again.last_seq("c1") == 1000
        assert len(await again.read_events("c1", 0, 5000)) == 1000
    finally:
        await again.close()


async def test_expire_drops_only_idle_finished_conversations(store: EventStore) -> None:
    store.enqueue(PutConversation.of(ConversationRecord("old", 1, 10)))
    store.enqueue(PutConversation.of(ConversationRecord("busy", 1, 10)))
    store.enqueue(PutConversation.of(ConversationRecord("new", 1, 1000)))
    store.enqueue(PutRun.of(RunRecord("r", "busy", "demo", "running", 1)))
    store.enqueue(AppendEvent(ev("old", 1), 1))
    await store.flush()
    assert sorted(await store.expirable(500, 10)) == ["old"]
    # "busy" is offered anyway: the transaction re-checks and keeps it
    deleted = await store.expire_conversations(["old", "busy", "new"], cutoff=500)
    assert deleted == ["old"]
    assert await store.get_conversation("old") is None
    assert await store.read_events("old", 0, 10) == []
    assert await store.get_conversation("busy") is not None



# ---- the API issue (16): listings, idempotency keys, outbox, answer tokens, on every store ----


def _run(run_id: str, conv: str, first_seq: int, status: str = "completed",
         agent: str = "demo", **meta: Any) -> RunRecord:
    return RunRecord(run_id, conv, agent, status, 1, first_seq=first_seq,
                     metadata=dict(meta) or None)


async def test_list_conversations_keyset_and_filters(store: EventStore) -> None:
    for i, owner in enumerate(["ann", "ann", "bob", "ann"]):
        store.enqueue(PutConversation.of(ConversationRecord(f"c{i}", 100 + i, 100 + i, owner)))
    store.enqueue(PutRun.of(_run("r0a", "c0", 1, agent="echo", team="red")))
    store.enqueue(PutRun.of(_run("r0b", "c0", 5, status="running")))
    store.enqueue(PutRun.of(_run("r1", "c1", 1, team="blue", vip=True, seats=5)))
    store.enqueue(PutRun.of(_run("r3", "c3", 1, status="failed", vip=False, seats=1.5)))
    await store.flush()

    def ids(page: list[ConversationRecord]) -> list[str]:
        return [c.conversation_id for c in page]

    assert ids(await store.list_conversations(ConversationQuery("ann", 10))) == ["c3", "c1", "c0"]
    assert ids(await store.list_conversations(ConversationQuery(None, 10))) == [
        "c3", "c2", "c1", "c0"]
    first = await store.list_conversations(ConversationQuery("ann", 2))
    assert ids(first) == ["c3", "c1"]
    last = first[-1]
    after = ConversationQuery("ann", 2, before=(last.created_at, last.conversation_id))
    assert ids(await store.list_conversations(after)) == ["c0"]
    # agent / metadata: some run matches; status: the latest run (by first seq) has it
    assert ids(await store.list_conversations(ConversationQuery("ann", 10, agent="echo"))) == [
        "c0"]
    assert ids(await store.list_conversations(
        ConversationQuery("ann", 10, metadata={"team": "blue"}))) == ["c1"]
    # Non-string values compare as their JSON text, the same on every store.
    for meta, want in (({"vip": "true"}, ["c1"]), ({"vip": "false"}, ["c3"]), ({"vip": "1"}, []),
                       ({"seats": "5"}, ["c1"]), ({"seats": "1.5"}, ["c3"])):
        assert ids(await store.list_conversations(
            ConversationQuery("ann", 10, metadata=meta))) == want, meta
    assert ids(await store.list_conversations(
        ConversationQuery("ann", 10, status="running"))) == ["c0"]
    assert ids(await store.list_conversations(
        ConversationQuery("ann", 10, status="completed"))) == ["c1"]
    runs = await store.list_runs("c0", 0, 10)
    assert [r.run_id for r in runs] == ["r0a", "r0b"]
    assert [r.run_id for r in await store.list_runs("c0", 1, 10)] == ["r0b"]
    assert [r.run_id for r in await store.list_runs("c0", 0, 1)] == ["r0a"]


async def test_idempotency_outbox_and_answer_tokens(store: EventStore) -> None:
    store.enqueue(PutConversation.of(ConversationRecord("c", 1, 10, "ann")))
    store.enqueue(PutRun.of(_run("r", "c", 1)))
    key = IdempotencyRecord("ann", "k1", "fp", "r", "c", 5)
    await store.apply_now(PutIdempotency(key))
    assert await store.get_idempotency("ann", "k1") == key
    assert await store.get_idempotency("bob", "k1") is None

    token = AnswerToken("h1", "r", "q1", "c", 10_000)
    late = OutboxEntry("r.2", "c", "http://x/", b"{}", 1, next_at=50)
    soon = OutboxEntry("r.1", "c", "http://x/", b'{"a":1}', 1, next_at=20)
    await store.apply_now(PutOutbox(late))
    await store.apply_now(PutOutbox(soon, token))
    await store.apply_now(PutOutbox(soon))  # a delivery is queued once
    assert [e.delivery_id for e in await store.due_outbox(100, 10)] == ["r.1", "r.2"]
    assert [e.delivery_id for e in await store.due_outbox(30, 10)] == ["r.1"]
    assert await store.get_outbox("r.1") == soon
    await store.apply_now(UpdateOutbox("r.1", "delivered", 1, 20))
    await store.apply_now(UpdateOutbox("r.2", "pending", 1, 500, "HTTP 500"))
    assert await store.due_outbox(100, 10) == []
    retry = await store.get_outbox("r.2")
    assert retry is not None and (retry.attempts, retry.next_at, retry.last_error) == (
        1, 500, "HTTP 500")

    assert await store.get_answer_token("h1") == token
    first, second = UseAnswerToken("h1"), UseAnswerToken("h1")
    await store.apply_now(first)
    await store.apply_now(second)
    assert (first.used, second.used) == (True, False)
    assert await store.get_answer_token("h1") is None


async def test_expire_takes_keys_outbox_and_tokens_and_scopes_run_ids(
    store: EventStore,
) -> None:
    store.enqueue(PutConversation.of(ConversationRecord(scoped("ann", "c"), 1, 10, "ann")))
    store.enqueue(PutRun.of(_run("r", scoped("ann", "c"), 1)))
    store.enqueue(PutIdempotency(IdempotencyRecord("ann", "k", "fp", "r", scoped("ann", "c"),
                                                   5)))
    store.enqueue(PutOutbox(OutboxEntry("r.1", scoped("ann", "c"), "http://x/", b"{}", 1, 1),
                            AnswerToken("h", "r", "q", scoped("ann", "c"), 10_000)))
    await store.flush()
    assert await store.expire_conversations([scoped("ann", "c")], cutoff=500) == [
        scoped("ann", "c")]
    assert await store.get_idempotency("ann", "k") is None
    assert await store.get_outbox("r.1") is None and await store.due_outbox(100, 10) == []
    assert await store.get_answer_token("h") is None
    assert await store.is_expired(scoped("ann", "c"))
    # The run is remembered in its owner's namespace only (a stranger gets 404, not 410).
    assert await store.is_expired(scoped("ann", "r"))
    assert not await store.is_expired("r")
    assert not await store.is_expired(scoped("bob", "r"))
