"""SQLite's write side, on the writer thread: a whole batch in one transaction.

Events go in as multi-row ``INSERT`` statements rather than ``executemany``: the sqlite3
module releases and re-takes the GIL around every row it steps, and with a busy event loop
each re-take waits for the loop, so ``executemany`` of 2,000 rows under load took ~100 ms
(profiled) where 8 statements of 256 rows take a few ms. Other ops are written in order
between runs of events (an expiry must see everything queued before it).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from typing import Any

from app.clock import now_ms
from app.ids import scoped
from app.store.faults import Faults
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
from app.store.records import UNFINISHED
from app.store.sql_shared import CONVERSATION_TABLES
from app.store.sqlite_schema import SCHEMA

# Rows per multi-row INSERT (7 parameters each; capped by the library's variable limit).
INSERT_CHUNK = 256


def connect_writer(path: str) -> sqlite3.Connection:
    """The writer's connection (on its thread); creates the schema."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=5000")
    db.executescript(SCHEMA)
    return db


def chunk_for(db: sqlite3.Connection) -> int:
    """Rows per INSERT this library allows (7 parameters a row)."""
    return max(1, min(INSERT_CHUNK, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 7))


def apply_batch(db: sqlite3.Connection, ops: Sequence[Op], chunk: int, faults: Faults) -> None:
    """The whole batch in one transaction; any failure rolls all of it back."""
    db.execute("BEGIN")
    try:
        _write(db, ops, chunk, faults)
        db.execute("COMMIT")
    except BaseException:
        # A failed ROLLBACK (the disk is gone too) must not hide the error that matters.
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise


def _write(db: sqlite3.Connection, ops: Sequence[Op], chunk: int, faults: Faults) -> None:
    """Events gathered into multi-row INSERTs; any other op flushes them first (order)."""
    rows: list[Any] = []
    for op in ops:
        if type(op) is AppendEvent:
            ev = op.event
            if faults.marker is not None:
                faults.check_event(ev.body)
            rows += (ev.conversation_id, ev.seq, ev.run_id, ev.type, ev.item_id, op.ts, ev.body)
            continue
        if rows:
            insert_events(db, rows, chunk)
            rows = []
        _write_row(db, op)
    if rows:
        insert_events(db, rows, chunk)


def _write_row(db: sqlite3.Connection, op: Op) -> None:
    if isinstance(op, PutRun):
        db.execute("INSERT OR REPLACE INTO runs VALUES (?,?,?,?)",
                   (op.run_id, op.conversation_id, op.status, op.body))
    elif isinstance(op, PutConversation):
        db.execute("INSERT OR REPLACE INTO conversations VALUES (?,?,?,?,?)",
                   (op.conversation_id, op.owner, op.created_at, op.updated_at, op.body))
    elif isinstance(op, PutIdempotency):
        k = op.record
        # Plain INSERT: a taken key fails the transaction (the engine's single-flight makes
        # that unreachable; this is the backstop).
        db.execute("INSERT INTO idempotency VALUES (?,?,?,?,?,?)",
                   (k.scope, k.key, k.fingerprint, k.run_id, k.conversation_id, k.created_at))
    elif isinstance(op, PutOutbox | UpdateOutbox | UseAnswerToken):
        _write_webhook_op(db, op)
    elif isinstance(op, ExpireConversations):
        op.deleted = expire(db, op.ids, op.cutoff)


def insert_sql(rows: int) -> str:
    return "INSERT INTO events VALUES " + ",".join(["(?,?,?,?,?,?,?)"] * rows)


def insert_events(db: sqlite3.Connection, flat: list[Any], chunk: int) -> None:
    """Insert rows given as one flat parameter list, ``chunk`` rows a statement."""
    step = chunk * 7
    full = insert_sql(chunk)
    for start in range(0, len(flat), step):
        part = flat[start:start + step]
        db.execute(full if len(part) == step else insert_sql(len(part) // 7), part)


def expire(db: sqlite3.Connection, candidates: list[str], cutoff: int) -> list[str]:
    """Delete the candidates still idle (re-checked inside the transaction); remember their
    ids (and their runs') as expired, for 410s."""
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
    for table, column in CONVERSATION_TABLES:
        db.executemany(f"DELETE FROM {table} WHERE {column}=?", [(i,) for i in ids])
    return ids


def _write_webhook_op(db: sqlite3.Connection,
                      op: PutOutbox | UpdateOutbox | UseAnswerToken) -> None:
    """The webhook outbox's writes, inside the batch's transaction."""
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
