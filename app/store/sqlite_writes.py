"""SQLite's write side, on the writer thread: a whole batch in one transaction.

Events go in as a few large multi-row ``INSERT`` statements. Why large: the sqlite3 module
releases the GIL while a statement steps and must re-take it afterwards, and while the event
loop is busy each re-take waits up to the interpreter's switch interval (5 ms). With a busy
loop, 256-row statements cost ~48 us of wall time per event and 4,096-row ones ~9 us
(measured with a thread spinning beside the writer); ``executemany`` re-takes it per row.
Statement sizes are powers of two up to ``INSERT_CHUNK`` so that every size is compiled once
and then served from the module's statement cache: a batch of n rows is n // chunk full
statements plus one per set bit of the remainder. Other ops are written in order between
runs of events (an expiry must see everything queued before it).
"""

from __future__ import annotations

import contextlib
import functools
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

# Rows per multi-row INSERT (7 parameters each; capped by the library's variable limit, and a
# power of two so the remainder ladder below reaches every size).
INSERT_CHUNK = 4096


# The writer connection's page cache, in KiB (SQLite's default is 2,000).
WRITER_CACHE_KIB = 16_384


def connect_writer(path: str) -> sqlite3.Connection:
    """The writer's connection (on its thread); creates the schema."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=5000")
    # 16 MiB of page cache instead of 2: the (conversation, seq) index takes inserts in as
    # many places as there are live conversations, and with the default cache those pages
    # are evicted and re-read between commits (measured 90k -> 109-134k inserts/s at 1,000
    # interleaved conversations, 155-205k -> 185-275k at one, see docs/PERFORMANCE.md).
    db.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
    db.executescript(SCHEMA)
    return db


def chunk_for(db: sqlite3.Connection) -> int:
    """Rows per INSERT this library allows (7 parameters a row), a power of two."""
    allowed = max(1, min(INSERT_CHUNK, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 7))
    return 1 << (allowed.bit_length() - 1)


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


@functools.cache
def insert_sql(rows: int) -> str:
    return "INSERT INTO events VALUES " + ",".join(["(?,?,?,?,?,?,?)"] * rows)


def statement_sizes(rows: int, chunk: int) -> list[int]:
    """Rows per statement for ``rows`` rows: full ``chunk``s, then the remainder's set bits
    from the largest down (so only log2(chunk) + 1 distinct statements ever exist)."""
    sizes = [chunk] * (rows // chunk)
    rest = rows % chunk
    bit = chunk >> 1
    while rest:
        if rest & bit:
            sizes.append(bit)
            rest -= bit
        bit >>= 1
    return sizes


def insert_events(db: sqlite3.Connection, flat: list[Any], chunk: int) -> None:
    """Insert rows given as one flat parameter list (7 values a row), in as few statements as
    ``statement_sizes`` allows."""
    start = 0
    for size in statement_sizes(len(flat) // 7, chunk):
        end = start + size * 7
        db.execute(insert_sql(size), flat[start:end])
        start = end


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
