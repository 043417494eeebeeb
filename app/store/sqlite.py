"""SQLite EventStore (aiosqlite): WAL, ``synchronous=NORMAL``, batched transactions.

Two connections: the writer commits batches with ``executemany``; the reader serves replays
and lookups, so a long replay never queues behind a commit (WAL lets them run together).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

from app.store.base import (
    UNFINISHED,
    AppendEvent,
    ConversationRecord,
    EventStore,
    ExpireConversations,
    Op,
    PutConversation,
    PutRun,
    RunRecord,
)
from protocol.codec import EncodedEvent

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    owner TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    record BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    status TEXT NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs(status);
CREATE INDEX IF NOT EXISTS runs_by_conversation ON runs(conversation_id);
CREATE TABLE IF NOT EXISTS events (
    conversation_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    run_id TEXT,
    type TEXT NOT NULL,
    item_id TEXT,
    ts INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (conversation_id, seq)
) WITHOUT ROWID;
"""

_run_decoder = msgspec.json.Decoder(RunRecord)
_conv_decoder = msgspec.json.Decoder(ConversationRecord)
_encoder = msgspec.json.Encoder()


async def _connect(path: str) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path, isolation_level=None)
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute("PRAGMA synchronous=NORMAL")
    await db.execute("PRAGMA busy_timeout=5000")
    return db


class SqliteEventStore(EventStore):
    def __init__(self, path: str | Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = str(path)
        self._w: aiosqlite.Connection | None = None
        self._r: aiosqlite.Connection | None = None

    async def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._w = await _connect(self.path)
        await self._w.executescript(SCHEMA)
        self._r = await _connect(self.path)

    async def _close(self) -> None:
        for db in (self._r, self._w):
            if db is not None:
                await db.close()
        self._r = self._w = None

    @property
    def _reader(self) -> aiosqlite.Connection:
        assert self._r is not None, "store is not open"
        return self._r

    async def _write_batch(self, ops: Sequence[Op]) -> None:
        assert self._w is not None
        db = self._w
        await db.execute("BEGIN")
        try:
            rows: list[tuple[Any, ...]] = []
            for op in ops:
                if type(op) is AppendEvent:
                    ev = op.event
                    rows.append(
                        (ev.conversation_id, ev.seq, ev.run_id, ev.type, ev.item_id, op.ts, ev.body)
                    )
                    continue
                if rows:
                    await db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?)", rows)
                    rows = []
                if isinstance(op, PutRun):
                    r = op.run
                    await db.execute(
                        "INSERT OR REPLACE INTO runs VALUES (?,?,?,?)",
                        (r.run_id, r.conversation_id, r.status, _encoder.encode(r)),
                    )
                elif isinstance(op, PutConversation):
                    c = op.conversation
                    await db.execute(
                        "INSERT OR REPLACE INTO conversations VALUES (?,?,?,?,?)",
                        (c.conversation_id, c.owner, c.created_at, c.updated_at, _encoder.encode(c)),
                    )
                elif isinstance(op, ExpireConversations):
                    op.deleted = await self._expire(db, op.cutoff)
            if rows:
                await db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?)", rows)
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise

    async def read_events(
        self,
        conversation_id: str,
        after: int,
        limit: int,
        run_id: str | None = None,
        until: int | None = None,
    ) -> list[EncodedEvent]:
        upper = until if until is not None else 1 << 62
        if run_id is None:
            sql = (
                "SELECT seq, type, run_id, item_id, body FROM events WHERE conversation_id=? "
                "AND seq>? AND seq<=? ORDER BY seq LIMIT ?"
            )
            args: tuple[Any, ...] = (conversation_id, after, upper, limit)
        else:
            sql = (
                "SELECT seq, type, run_id, item_id, body FROM events WHERE conversation_id=? "
                "AND seq>? AND seq<=? AND run_id=? ORDER BY seq LIMIT ?"
            )
            args = (conversation_id, after, upper, run_id, limit)
        rows = await self._read(sql, args)
        return [
            EncodedEvent(seq, typ, conversation_id, rid, bytes(body), item_id)
            for seq, typ, rid, item_id, body in rows
        ]

    async def last_seq(self, conversation_id: str) -> int:
        row = await self._read_one("SELECT max(seq) FROM events WHERE conversation_id=?",
                                   (conversation_id,))
        return int(row[0]) if row and row[0] is not None else 0

    async def get_run(self, run_id: str) -> RunRecord | None:
        row = await self._read_one("SELECT record FROM runs WHERE id=?", (run_id,))
        return _run_decoder.decode(row[0]) if row else None

    async def get_conversation(self, conversation_id: str) -> ConversationRecord | None:
        row = await self._read_one("SELECT record FROM conversations WHERE id=?",
                                   (conversation_id,))
        return _conv_decoder.decode(row[0]) if row else None

    async def unfinished_runs(self) -> list[RunRecord]:
        marks = ",".join("?" * len(UNFINISHED))
        rows = await self._read(f"SELECT record FROM runs WHERE status IN ({marks})", UNFINISHED)
        return [_run_decoder.decode(r[0]) for r in rows]

    async def count_run_events(self, run: RunRecord) -> int:
        row = await self._read_one(
            "SELECT count(*) FROM events WHERE conversation_id=? AND seq>=? AND run_id=?",
            (run.conversation_id, run.first_seq, run.run_id),
        )
        return int(row[0]) if row else 0

    async def _read(self, sql: str, args: Sequence[Any]) -> list[Any]:
        """Run and fetch in one hop to the reader thread.

        A statement left open across hops (execute, then fetch) keeps the connection's read
        transaction open, and any read queued in between joins that older snapshot: it
        would miss commits already published to the hub, and a catching-up sink would skip
        them (a gap in its stream). One hop per read gives each read its own snapshot.
        """
        return list(await self._reader.execute_fetchall(sql, args))

    async def _read_one(self, sql: str, args: Sequence[Any]) -> Any:
        rows = await self._read(sql, args)
        return rows[0] if rows else None

    async def _expire(self, db: aiosqlite.Connection, cutoff: int) -> list[str]:
        marks = ",".join("?" * len(UNFINISHED))
        async with db.execute(
            "SELECT id FROM conversations WHERE updated_at < ? AND id NOT IN "
            f"(SELECT conversation_id FROM runs WHERE status IN ({marks}))",
            (cutoff, *UNFINISHED),
        ) as cur:
            ids = [str(r[0]) for r in await cur.fetchall()]
        for table, column in (("events", "conversation_id"), ("runs", "conversation_id"),
                              ("conversations", "id")):
            await db.executemany(f"DELETE FROM {table} WHERE {column}=?", [(i,) for i in ids])
        return ids
