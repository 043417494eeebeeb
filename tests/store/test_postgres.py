"""PostgreSQL store specifics on a real server: migrations, error classification, a database
that goes away and comes back (through a TCP proxy the test cuts), and the ownership fence."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import pytest

from app.errors import Unavailable
from app.store.ops import AppendEvent, Group, PutConversation, PutIdempotency, PutOutbox
from app.store.pg_schema import LATEST, MIGRATIONS
from app.store.postgres import Fenced, PostgresEventStore
from app.store.records import (
    ConversationQuery,
    ConversationRecord,
    IdempotencyRecord,
    OutboxEntry,
    encode_record,
)
from app.store.writer import StoreRejected, StoreUnavailable
from protocol.codec import EncodedEvent
from tests.agents.tcp_proxy import TcpProxy
from tests.services import PG_DSN, pg_schema


def ev(conv: str, seq: int) -> EncodedEvent:
    return EncodedEvent(seq, "message_chunk", conv, "r1", b'{"seq":%d}' % seq, "m1")


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    async with pg_schema() as name:
        yield name


async def test_schema_is_created_versioned_and_reopened_without_change(schema: str) -> None:
    s = PostgresEventStore(PG_DSN, schema=schema)
    await s.open()
    await s.close()
    again = PostgresEventStore(PG_DSN, schema=schema)
    await again.open()
    await again.close()
    conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": schema})
    try:
        versions = [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")]
    finally:
        await conn.close()
    assert versions == list(range(1, LATEST + 1))


async def test_nodes_starting_at_once_migrate_once(schema: str) -> None:
    stores = [PostgresEventStore(PG_DSN, schema=schema) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    for s in stores:
        await s.close()
    conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": schema})
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == LATEST
    finally:
        await conn.close()


async def test_a_newer_schema_is_refused_with_one_clear_message(schema: str) -> None:
    s = PostgresEventStore(PG_DSN, schema=schema)
    await s.open()
    await s.close()
    conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": schema})
    await conn.execute("INSERT INTO schema_migrations(version) VALUES ($1)", LATEST + 1)
    await conn.close()
    with pytest.raises(StoreUnavailable, match="newer than this agentstream knows"):
        await PostgresEventStore(PG_DSN, schema=schema).open()


async def test_a_failing_migration_leaves_nothing_half_applied(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.store import pg_schema as mod
    broken = [*mod.MIGRATIONS, (LATEST + 1, "CREATE TABLE later (x int); SELECT nonsense;")]
    monkeypatch.setattr(mod, "MIGRATIONS", broken)
    monkeypatch.setattr(mod, "LATEST", LATEST + 1)
    with pytest.raises(StoreUnavailable, match="cannot open PostgreSQL"):
        await PostgresEventStore(PG_DSN, schema=schema).open()
    conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": schema})
    try:
        tables = {r[0] for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema=$1", schema)}
    finally:
        await conn.close()
    assert tables == set(), "one transaction: the first migrations rolled back too"


async def test_a_duplicate_seq_rejects_only_its_conversation(schema: str) -> None:
    s = PostgresEventStore(PG_DSN, schema=schema, batch_max=100)
    rejected: list[set[str]] = []
    s.writer.on_rejected = lambda ids, exc: rejected.append(ids)
    await s.open()
    try:
        s.enqueue(AppendEvent(ev("a", 1), 1))
        await s.flush()
        dup = Group([AppendEvent(ev("a", 1), 1)], notify=True)
        s.enqueue(AppendEvent(ev("b", 1), 1))
        s.enqueue(dup)
        s.enqueue(AppendEvent(ev("b", 2), 1))
        await s.flush()
        assert dup.committed is not None
        with pytest.raises(StoreRejected):
            await dup.committed
        assert rejected == [{"a"}]
        assert [e.seq for e in await s.read_events("b", 0, 10)] == [1, 2]
        assert s.healthy
    finally:
        await s.close()


async def test_database_lost_and_back_recovers_without_restart(schema: str) -> None:
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
    s = PostgresEventStore(dsn, schema=schema, connect_timeout=1, command_timeout=2)
    committed: list[int] = []
    s.add_commit_listener(lambda evs: committed.extend(e.seq for e in evs))
    await s.open()
    try:
        s.enqueue(AppendEvent(ev("c", 1), 1))
        await s.flush()
        assert await s.ping()
        # The link dies and new connections are refused: writes queue, reads are a 503.
        await proxy.close()
        s.enqueue(AppendEvent(ev("c", 2), 1))
        with pytest.raises(TimeoutError):
            await s.flush(timeout=1.5)
        assert not s.healthy and not await s.ping()
        with pytest.raises(Unavailable) as err:
            await s.read_events("c", 0, 10)
        assert err.value.code == "store_unavailable"
        assert committed == [1], "nothing published that did not commit"
        # The database comes back on the same address: the writer reconnects by itself.
        back = TcpProxy("127.0.0.1", 5432)
        back.port = proxy.port
        server = await asyncio.start_server(back._accept, "127.0.0.1", proxy.port)
        try:
            await s.flush(timeout=30)
            assert s.healthy and await s.ping()
            assert committed == [1, 2]
            assert [e.seq for e in await s.read_events("c", 0, 10)] == [1, 2]
        finally:
            server.close()
            await back.close()
    finally:
        await s.close()


async def test_the_fence_refuses_writes_to_a_conversation_this_node_does_not_own(
    schema: str,
) -> None:
    s = PostgresEventStore(PG_DSN, schema=schema)
    await s.open()
    s.fence_node = "n_me"
    rejected: list[set[str]] = []
    s.writer.on_rejected = lambda ids, exc: rejected.append(ids)
    conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": schema})
    try:
        await conn.execute("INSERT INTO conversation_owners VALUES ('mine', 'n_me'), "
                           "('theirs', 'n_other')")
        mine = Group([PutConversation.of(ConversationRecord("mine", 1, 1)),
                      AppendEvent(ev("mine", 1), 1)], notify=True)
        theirs = Group([PutConversation.of(ConversationRecord("theirs", 1, 1)),
                        AppendEvent(ev("theirs", 1), 1)], notify=True)
        s.enqueue(mine)
        s.enqueue(theirs)
        await s.flush()
        assert mine.committed is not None and theirs.committed is not None
        await mine.committed
        with pytest.raises(StoreRejected, match="does not own"):
            await theirs.committed
        assert rejected == [{"theirs"}]
        assert await s.last_seq("theirs") == 0 and await s.last_seq("mine") == 1
        assert s.is_permanent(Fenced("x"))
    finally:
        await conn.close()
        await s.close()


class CommitThenCut(TcpProxy):
    """Drops the server's answer to one COMMIT (its ``CommandComplete`` tag) and cuts the
    link: the commit happened, the store cannot know it (the classic unknown outcome)."""

    armed = False

    async def _pipe(  # type: ignore[override]
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if self.armed and b"COMMIT\x00" in data:
                    self.armed = False
                    self.cut()
                    return
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


async def test_a_commit_whose_answer_was_lost_is_not_rejected_on_retry(schema: str) -> None:
    proxy = CommitThenCut("127.0.0.1", 5432)
    await proxy.start()
    s = PostgresEventStore(f"postgresql://postgres@127.0.0.1:{proxy.port}/test", schema=schema,
                           command_timeout=2)
    rejected: list[set[str]] = []
    s.writer.on_rejected = lambda ids, exc: rejected.append(ids)
    await s.open()
    try:
        s.enqueue(AppendEvent(ev("c", 1), 1))
        await s.flush()
        proxy.armed = True
        group = Group([AppendEvent(ev("c", 2), 1), AppendEvent(ev("c", 3), 1)], notify=True)
        s.enqueue(group)
        s.enqueue(AppendEvent(ev("c", 4), 1))  # may join the retried batch
        await s.flush(timeout=30)
        assert group.committed is not None
        await group.committed  # durable, not "rejected"
        assert rejected == [] and s.healthy
        assert [e.seq for e in await s.read_events("c", 0, 10)] == [1, 2, 3, 4]
    finally:
        await s.close()
        await proxy.close()


async def test_a_version_2_database_of_the_first_cluster_release_upgrades_in_place(
    schema: str,
) -> None:
    conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": schema})
    try:
        await conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                           "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        for version, sql in MIGRATIONS[:2]:
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations(version) VALUES ($1)", version)
        await conn.execute("INSERT INTO conversations VALUES ('old', NULL, 1, 1, $1)",
                           encode_record(ConversationRecord("old", 1, 1)))
        s = PostgresEventStore(PG_DSN, schema=schema)
        await s.open()
        try:
            assert [c.conversation_id for c in await s.list_conversations(
                ConversationQuery(None, 10))] == ["old"]
            assert await s.get_idempotency("x", "k") is None
        finally:
            await s.close()
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == LATEST == 4
    finally:
        await conn.close()


async def test_cluster_mode_delivers_only_its_own_outbox_and_a_taken_key_is_refused(
    schema: str,
) -> None:
    s = PostgresEventStore(PG_DSN, schema=schema)
    await s.open()
    conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": schema})
    try:
        cids = ("mine", "theirs", "dead", "free")
        for cid in cids:
            s.enqueue(PutConversation.of(ConversationRecord(cid, 1, 1)))
            s.enqueue(PutOutbox(OutboxEntry(f"{cid}.1", cid, "http://x/", b"{}", 1, 1)))
        await s.flush()
        await conn.execute("INSERT INTO nodes (node_id, expires_at, dead) VALUES "
                           "('n_me', now() + interval '1 minute', false), "
                           "('n_other', now() + interval '1 minute', false), "
                           "('n_gone', now(), true)")
        await conn.execute("INSERT INTO conversation_owners VALUES ('mine', 'n_me'), "
                           "('theirs', 'n_other'), ('dead', 'n_gone')")
        every = {f"{cid}.1" for cid in cids}
        assert {e.delivery_id for e in await s.due_outbox(10, 10)} == every
        # One sender per delivery: not those of a conversation another live node owns (the
        # others are claimed by the deliverer first: tests/cluster/test_api_on_postgres.py).
        s.fence_node = "n_me"
        assert {e.delivery_id for e in await s.due_outbox(10, 10)} == every - {"theirs.1"}
        key = IdempotencyRecord("ann", "k", "fp", "r1", "mine", 1)
        await s.apply_now(PutIdempotency(key))
        with pytest.raises(StoreRejected):  # the backstop behind the owner's single flight
            await s.apply_now(PutIdempotency(IdempotencyRecord("ann", "k", "fp2", "r2", "mine",
                                                               2)))
        assert await s.get_idempotency("ann", "k") == key
    finally:
        await conn.close()
        await s.close()
