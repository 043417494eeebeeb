"""SQLite EventStore: WAL, ``synchronous=NORMAL``, batched transactions.

Two connections: the writer commits batches; the reader (aiosqlite) serves replays and
lookups, so a long replay never queues behind a commit (WAL lets them run together).

The writer is a plain ``sqlite3`` connection owned by one thread, and a whole batch
(BEGIN, inserts, upserts, COMMIT) is one hop to that thread: ``sqlite_writes.py``, with why
events go in as multi-row INSERTs. The schema is ``sqlite_schema.py``.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiosqlite

from app.store.base import EventStore, StoreLocked, StoreUnavailable
from app.store.ops import (
    Op,
)
from app.store.records import (
    UNFINISHED,
    AnswerToken,
    ConversationQuery,
    ConversationRecord,
    IdempotencyRecord,
    OutboxEntry,
    RunRecord,
    decode_conversation,
    decode_run,
)
from app.store.sql_shared import OUTBOX_COLUMNS, outbox_entry
from app.store.sqlite_schema import SCHEMA
from app.store.sqlite_writes import INSERT_CHUNK, apply_batch, chunk_for, connect_writer
from protocol.codec import EncodedEvent

__all__ = ["SCHEMA", "SqliteEventStore"]


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
        self._w: sqlite3.Connection | None = None
        self._wexec: ThreadPoolExecutor | None = None
        self._chunk = INSERT_CHUNK
        self._r: aiosqlite.Connection | None = None
        self._lock_fd: int | None = None

    def take_lock(self) -> None:
        """One process per database: an exclusive ``flock`` on ``<db>.lock``, taken before
        the database is opened (opening it already writes: WAL mode, the schema). The
        kernel drops the lock when the process dies, so a SIGKILL leaves nothing stale."""
        if self._lock_fd is not None:
            return
        lock_path = self.path + ".lock"
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLocked(
                f"{self.path} is in use by another agentstream process (lock {lock_path})"
            ) from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _open(self) -> None:
        if self.path == ":memory:":
            raise ValueError("SQLite needs a file: use MemoryEventStore for :memory:")
        self.take_lock()
        try:
            await self._connect()
        except (sqlite3.Error, OSError) as exc:
            await self._close()
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from None

    async def _connect(self) -> None:
        self._wexec = ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        loop = asyncio.get_running_loop()
        self._w = await loop.run_in_executor(self._wexec, connect_writer, self.path)
        self._chunk = chunk_for(self._w)
        self._r = await _connect(self.path)

    async def _close(self) -> None:
        if self._r is not None:
            await self._r.close()
        if self._w is not None and self._wexec is not None:
            await asyncio.get_running_loop().run_in_executor(self._wexec, self._w.close)
        if self._wexec is not None:
            self._wexec.shutdown(wait=True)
        self._r = self._w = None
        self._wexec = None
        self._release_lock()

    @property
    def _reader(self) -> aiosqlite.Connection:
        assert self._r is not None, "store is not open"
        return self._r

    async def _apply(self, ops: Sequence[Op]) -> None:
        assert self._wexec is not None
        await asyncio.get_running_loop().run_in_executor(self._wexec, self._apply_sync, ops)

    def _apply_sync(self, ops: Sequence[Op]) -> None:
        """On the writer thread: the whole batch in one transaction (sqlite_writes.py)."""
        assert self._w is not None
        apply_batch(self._w, ops, self._chunk, self.writer.faults)

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
        return decode_run(row[0]) if row else None

    async def get_conversation(self, conversation_id: str) -> ConversationRecord | None:
        row = await self._read_one("SELECT record FROM conversations WHERE id=?",
                                   (conversation_id,))
        return decode_conversation(row[0]) if row else None

    async def unfinished_runs(self) -> list[RunRecord]:
        marks = ",".join("?" * len(UNFINISHED))
        rows = await self._read(f"SELECT record FROM runs WHERE status IN ({marks})", UNFINISHED)
        return [decode_run(r[0]) for r in rows]

    async def run_events(self, run: RunRecord) -> tuple[int, EncodedEvent | None]:
        rows = await self._read(
            "SELECT count(*), max(CASE WHEN type='done' THEN seq END) FROM events "
            "WHERE conversation_id=? AND seq>=? AND run_id=?",
            (run.conversation_id, run.first_seq, run.run_id),
        )
        return await self._counted(run, *(rows[0] if rows else (0, None)))

    async def expirable(self, cutoff: int, limit: int) -> list[str]:
        marks = ",".join("?" * len(UNFINISHED))
        rows = await self._read(
            "SELECT id FROM conversations WHERE updated_at < ? AND id NOT IN "
            f"(SELECT conversation_id FROM runs WHERE status IN ({marks})) LIMIT ?",
            (cutoff, *UNFINISHED, limit),
        )
        return [str(r[0]) for r in rows]

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

    async def is_expired(self, ident: str) -> bool:
        return await self._read_one("SELECT 1 FROM expired WHERE id=?", (ident,)) is not None

    async def list_conversations(self, query: ConversationQuery) -> list[ConversationRecord]:
        sql, args = _conversation_sql(query)
        return [decode_conversation(r[0]) for r in await self._read(sql, args)]

    async def list_runs(
        self, conversation_id: str, after_first_seq: int, limit: int
    ) -> list[RunRecord]:
        rows = await self._read(
            f"SELECT record FROM runs WHERE conversation_id=? AND {_FIRST_SEQ} > ? "
            f"ORDER BY {_FIRST_SEQ} LIMIT ?", (conversation_id, after_first_seq, limit))
        return [decode_run(r[0]) for r in rows]

    async def get_idempotency(self, scope: str, key: str) -> IdempotencyRecord | None:
        row = await self._read_one(
            "SELECT scope, key, fingerprint, run_id, conversation_id, created_at "
            "FROM idempotency WHERE scope=? AND key=?", (scope, key))
        return IdempotencyRecord(*row) if row else None

    async def due_outbox(self, now: int, limit: int) -> list[OutboxEntry]:
        rows = await self._read(
            f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE status='pending' AND next_at<=? "
            "ORDER BY next_at, id LIMIT ?", (now, limit))
        return [outbox_entry(r) for r in rows]

    async def get_outbox(self, delivery_id: str) -> OutboxEntry | None:
        row = await self._read_one(f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id=?",
                                   (delivery_id,))
        return outbox_entry(row) if row else None

    async def get_answer_token(self, token_hash: str) -> AnswerToken | None:
        row = await self._read_one(
            "SELECT token_hash, run_id, request_id, conversation_id, expires_at "
            "FROM answer_tokens WHERE token_hash=?", (token_hash,))
        return AnswerToken(*row) if row else None


# Run rows keep their fields in the JSON record; these read them without a schema change
# (so files made by older versions need no migration).
_FIRST_SEQ = "json_extract(CAST(record AS TEXT), '$.first_seq')"


def _conversation_sql(query: ConversationQuery) -> tuple[str, list[Any]]:
    """One page of conversations as SQL: keyset on (created_at, id), newest first; the run
    filters as EXISTS / latest-run subqueries."""
    where: list[str] = []
    args: list[Any] = []
    if query.owner is not None:
        where.append("c.owner = ?")
        args.append(query.owner)
    if query.before is not None:
        where.append("(c.created_at < ? OR (c.created_at = ? AND c.id < ?))")
        args += [query.before[0], query.before[0], query.before[1]]
    if query.status is not None:
        where.append("(SELECT r.status FROM runs r WHERE r.conversation_id = c.id "
                     "ORDER BY json_extract(CAST(r.record AS TEXT), '$.first_seq') DESC "
                     "LIMIT 1) = ?")
        args.append(query.status)
    run_checks: list[str] = []
    if query.agent is not None:
        run_checks.append("json_extract(CAST(r.record AS TEXT), '$.agent') = ?")
        args.append(query.agent)
    for key, value in query.metadata.items():
        # Keys are checked against [A-Za-z0-9_-] by the API: safe inside a JSON path. A value
        # compares as its JSON text, as PostgreSQL's ->> gives it: json_extract turns true
        # and false into 1 and 0, so booleans are spelled out.
        path = f"CAST(r.record AS TEXT), '$.metadata.\"{key}\"'"
        run_checks.append(
            f"CASE json_type({path}) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' "
            f"ELSE CAST(json_extract({path}) AS TEXT) END = ?")
        args.append(value)
    if run_checks:
        where.append("EXISTS (SELECT 1 FROM runs r WHERE r.conversation_id = c.id AND "
                     + " AND ".join(run_checks) + ")")
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    args.append(query.limit)
    return (f"SELECT c.record FROM conversations c {clause} "
            "ORDER BY c.created_at DESC, c.id DESC LIMIT ?", args)
