"""SQLite EventStore: WAL, ``synchronous=NORMAL``, batched transactions.

Two connections: the writer commits batches; the reader (aiosqlite) serves replays and
lookups, so a long replay never queues behind a commit (WAL lets them run together).

The writer is a plain ``sqlite3`` connection owned by one thread, and a whole batch
(BEGIN, inserts, upserts, COMMIT) is one hop to that thread. Events go in as multi-row
``INSERT`` statements rather than ``executemany``: the sqlite3 module releases and re-takes
the GIL around every row it steps, and with a busy event loop each re-take waits for the
loop, so ``executemany`` of 2,000 rows under load took ~100 ms (profiled) where 8 statements
of 256 rows take a few ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiosqlite

from app.clock import now_ms
from app.ids import scoped
from app.store.base import EventStore, StoreLocked, StoreUnavailable
from app.store.ops import (
    AppendEvent,
    ExpireConversations,
    Op,
    PutConversation,
    PutIdempotency,
    PutOutbox,
    PutRun,
    UpdateOutbox,
    UseAnswerToken,
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
-- A rowid table plus a unique index, not a WITHOUT ROWID table keyed on (conversation, seq):
-- rows then append in commit order, and only the small index entries land in each
-- conversation's place, so interleaved conversations insert ~2x faster (P6, 500 runs).
-- A file made with the older layout keeps it and works unchanged (same columns).
CREATE TABLE IF NOT EXISTS events (
    conversation_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    run_id TEXT,
    type TEXT NOT NULL,
    item_id TEXT,
    ts INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_seq ON events(conversation_id, seq);
-- Ids removed by retention, so a late resume gets 410 rather than a puzzling 404.
-- Idempotency-Key -> the run its first start made (deleted with the conversation).
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    run_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_by_conversation ON idempotency(conversation_id);
CREATE INDEX IF NOT EXISTS conversations_by_owner ON conversations(owner, created_at, id);
-- Webhook deliveries, written in the transaction of the event they report (webhooks/).
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    url TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    next_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    status TEXT NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(status, next_at);
CREATE INDEX IF NOT EXISTS outbox_by_conversation ON outbox(conversation_id);
-- One-time answer tokens of webhook answer links (SHA-256 of the token only).
CREATE TABLE IF NOT EXISTS answer_tokens (
    token_hash TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS answer_tokens_by_conversation ON answer_tokens(conversation_id);
CREATE TABLE IF NOT EXISTS expired (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    expired_at INTEGER NOT NULL
) WITHOUT ROWID;
"""

# Rows per multi-row INSERT (7 parameters each; capped by the library's variable limit).
INSERT_CHUNK = 256



async def _connect(path: str) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path, isolation_level=None)
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute("PRAGMA synchronous=NORMAL")
    await db.execute("PRAGMA busy_timeout=5000")
    return db


def _connect_writer(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=5000")
    db.executescript(SCHEMA)
    return db


def _insert_sql(rows: int) -> str:
    return "INSERT INTO events VALUES " + ",".join(["(?,?,?,?,?,?,?)"] * rows)


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
        self._w = await loop.run_in_executor(self._wexec, _connect_writer, self.path)
        limit = self._w.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._chunk = max(1, min(INSERT_CHUNK, limit // 7))
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
        """On the writer thread: the whole batch in one transaction."""
        db = self._w
        assert db is not None
        db.execute("BEGIN")
        try:
            rows: list[Any] = []
            faults = self.writer.faults
            for op in ops:
                if type(op) is AppendEvent:
                    ev = op.event
                    if faults.marker is not None:
                        faults.check_event(ev.body)
                    rows += (ev.conversation_id, ev.seq, ev.run_id, ev.type, ev.item_id, op.ts,
                             ev.body)
                    continue
                if rows:
                    self._insert_events(db, rows)
                    rows = []
                if isinstance(op, PutRun):
                    db.execute(
                        "INSERT OR REPLACE INTO runs VALUES (?,?,?,?)",
                        (op.run_id, op.conversation_id, op.status, op.body),
                    )
                elif isinstance(op, PutConversation):
                    db.execute(
                        "INSERT OR REPLACE INTO conversations VALUES (?,?,?,?,?)",
                        (op.conversation_id, op.owner, op.created_at, op.updated_at, op.body),
                    )
                elif isinstance(op, PutIdempotency):
                    k = op.record
                    # Plain INSERT: a taken key fails the transaction (the engine's
                    # single-flight makes that unreachable; this is the backstop).
                    db.execute("INSERT INTO idempotency VALUES (?,?,?,?,?,?)",
                               (k.scope, k.key, k.fingerprint, k.run_id, k.conversation_id,
                                k.created_at))
                elif isinstance(op, PutOutbox | UpdateOutbox | UseAnswerToken):
                    _apply_webhook_op(db, op)
                elif isinstance(op, ExpireConversations):
                    op.deleted = self._expire(db, op.ids, op.cutoff)
            if rows:
                self._insert_events(db, rows)
            db.execute("COMMIT")
        except BaseException:
            # A failed ROLLBACK (the disk is gone too) must not hide the error that matters.
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    def _insert_events(self, db: sqlite3.Connection, flat: list[Any]) -> None:
        """Insert rows given as one flat parameter list, ``self._chunk`` rows a statement."""
        step = self._chunk * 7
        full = _insert_sql(self._chunk)
        for start in range(0, len(flat), step):
            part = flat[start:start + step]
            db.execute(full if len(part) == step else _insert_sql(len(part) // 7), part)

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
        count, done_seq = (rows[0][0], rows[0][1]) if rows else (0, None)
        if done_seq is None:
            return int(count or 0), None
        done = await self.read_events(run.conversation_id, done_seq - 1, 1)
        return int(count), done[0] if done else None

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

    def _expire(self, db: sqlite3.Connection, candidates: list[str], cutoff: int) -> list[str]:
        marks = ",".join("?" * len(UNFINISHED))
        ids = [cid for cid in candidates if db.execute(
            "SELECT 1 FROM conversations WHERE id=? AND updated_at < ? AND id NOT IN "
            f"(SELECT conversation_id FROM runs WHERE conversation_id=? AND status IN ({marks}))",
            (cid, cutoff, cid, *UNFINISHED),
        ).fetchone() is not None]
        # An expired run is remembered in its owner's namespace (app/ids.py): only the owner
        # is told 410, a stranger gets the unknown id's 404.
        run_ids = [(scoped(r[1], str(r[0])),) for cid in ids for r in db.execute(
            "SELECT runs.id, conversations.owner FROM runs JOIN conversations"
            " ON conversations.id = runs.conversation_id WHERE runs.conversation_id=?",
            (cid,)).fetchall()]
        stamp = now_ms()
        db.executemany("INSERT OR REPLACE INTO expired VALUES (?, 'conversation', ?)",
                       [(i, stamp) for i in ids])
        db.executemany("INSERT OR REPLACE INTO expired VALUES (?, 'run', ?)",
                       [(r, stamp) for (r,) in run_ids])
        for table, column in (("events", "conversation_id"), ("runs", "conversation_id"),
                              ("idempotency", "conversation_id"), ("outbox", "conversation_id"),
                              ("answer_tokens", "conversation_id"), ("conversations", "id")):
            db.executemany(f"DELETE FROM {table} WHERE {column}=?", [(i,) for i in ids])
        return ids

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
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE status='pending' AND next_at<=? "
            "ORDER BY next_at, id LIMIT ?", (now, limit))
        return [_outbox_entry(r) for r in rows]

    async def get_outbox(self, delivery_id: str) -> OutboxEntry | None:
        row = await self._read_one(f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE id=?",
                                   (delivery_id,))
        return _outbox_entry(row) if row else None

    async def get_answer_token(self, token_hash: str) -> AnswerToken | None:
        row = await self._read_one(
            "SELECT token_hash, run_id, request_id, conversation_id, expires_at "
            "FROM answer_tokens WHERE token_hash=?", (token_hash,))
        return AnswerToken(*row) if row else None


_OUTBOX_COLUMNS = ("id, conversation_id, url, body, created_at, next_at, attempts, status, "
                   "last_error")


def _outbox_entry(row: Any) -> OutboxEntry:
    return OutboxEntry(row[0], row[1], row[2], bytes(row[3]), *row[4:])


def _apply_webhook_op(db: sqlite3.Connection,
                      op: PutOutbox | UpdateOutbox | UseAnswerToken) -> None:
    """The webhook outbox's writes, on the writer thread inside the batch's transaction."""
    if isinstance(op, PutOutbox):
        e = op.entry
        # OR IGNORE: the id is stable; a delivery is queued once.
        db.execute("INSERT OR IGNORE INTO outbox VALUES (?,?,?,?,?,?,?,?,?)",
                   (e.delivery_id, e.conversation_id, e.url, e.body, e.created_at, e.next_at,
                    e.attempts, e.status, e.last_error))
        if op.token is not None:
            t = op.token
            db.execute("INSERT OR REPLACE INTO answer_tokens VALUES (?,?,?,?,?)",
                       (t.token_hash, t.run_id, t.request_id, t.conversation_id, t.expires_at))
    elif isinstance(op, UpdateOutbox):
        db.execute("UPDATE outbox SET status=?, attempts=?, next_at=?, last_error=? WHERE id=?",
                   (op.status, op.attempts, op.next_at, op.last_error, op.delivery_id))
    else:
        cur = db.execute("DELETE FROM answer_tokens WHERE token_hash=?", (op.token_hash,))
        op.used = cur.rowcount == 1


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
        # Keys are checked against [A-Za-z0-9_-] by the API: safe inside a JSON path.
        run_checks.append(
            f"CAST(json_extract(CAST(r.record AS TEXT), '$.metadata.\"{key}\"') AS TEXT) = ?")
        args.append(value)
    if run_checks:
        where.append("EXISTS (SELECT 1 FROM runs r WHERE r.conversation_id = c.id AND "
                     + " AND ".join(run_checks) + ")")
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    args.append(query.limit)
    return (f"SELECT c.record FROM conversations c {clause} "
            "ORDER BY c.created_at DESC, c.id DESC LIMIT ?", args)
