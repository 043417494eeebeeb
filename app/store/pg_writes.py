"""PostgreSQL's write side: one batch inside the writer connection's transaction.

First the fence (cluster mode: ``FOR SHARE`` on the ownership rows of every conversation in
the batch, which must all name this node, else ``Fenced``), then the ops in order: events by
binary ``COPY`` (one stream per run of rows), run and conversation rows as pipelined
upserts (the latest snapshot of a row wins), and the API issue's rows (idempotency keys, the
webhook outbox, answer tokens) with SQLite's semantics. ``again`` is the retry of a batch
whose COMMIT's outcome was unknown: rows already there can only be this batch's own.
"""

from __future__ import annotations

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

EVENT_COLUMNS = ("conversation_id", "seq", "run_id", "type", "item_id", "ts", "body")
# The retry after a commit whose outcome is unknown (see ``PostgresEventStore._apply``).
INSERT_EVENTS_AGAIN = (
    "INSERT INTO events (conversation_id, seq, run_id, type, item_id, ts, body) "
    "SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], "
    "$6::bigint[], $7::bytea[]) ON CONFLICT (conversation_id, seq) DO NOTHING"
)
UPSERT_RUN = (
    "INSERT INTO runs (id, conversation_id, status, record) VALUES ($1, $2, $3, $4) "
    "ON CONFLICT (id) DO UPDATE SET conversation_id = EXCLUDED.conversation_id, "
    "status = EXCLUDED.status, record = EXCLUDED.record"
)
UPSERT_CONVERSATION = (
    "INSERT INTO conversations (id, owner, created_at, updated_at, record) "
    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, "
    "created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at, "
    "record = EXCLUDED.record"
)
FENCE = (
    "SELECT conversation_id FROM conversation_owners "
    "WHERE conversation_id = ANY($1::text[]) AND node_id = $2 FOR SHARE"
)


class Fenced(ValueError):
    """This node no longer owns a conversation it tried to write (it was taken over)."""


async def write_batch(conn: Any, ops: Sequence[Op], *, fence_node: str | None,
                      faults: Faults, again: bool) -> None:
    """The batch's statements, inside the caller's transaction."""
    await check_fence(conn, ops, fence_node)
    await _write(conn, ops, fence_node, faults, again)


async def check_fence(conn: Any, ops: Sequence[Op], fence_node: str | None) -> None:
    if fence_node is None:
        return
    wanted = {op.conversation_id for op in ops if op.conversation_id is not None}
    if not wanted:
        return
    rows = await conn.fetch(FENCE, list(wanted), fence_node)
    owned = {r[0] for r in rows}
    if owned != wanted:
        raise Fenced(f"node {fence_node} does not own {sorted(wanted - owned)[:3]}")


class _Rows:
    """Rows gathered between ops that must see them written first."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.runs: dict[str, PutRun] = {}
        self.convs: dict[str, PutConversation] = {}

    async def flush(self, conn: Any, again: bool) -> None:
        rows, runs, convs = self.events, self.runs, self.convs
        self.events, self.runs, self.convs = [], {}, {}
        if rows and again:
            await conn.execute(INSERT_EVENTS_AGAIN, *(list(col) for col in zip(*rows,
                                                                             strict=True)))
        elif rows:
            await conn.copy_records_to_table("events", records=rows, columns=EVENT_COLUMNS)
        if convs:
            await conn.executemany(UPSERT_CONVERSATION, [
                (c.conversation_id, c.owner, c.created_at, c.updated_at, c.body)
                for c in convs.values()])
        if runs:
            await conn.executemany(UPSERT_RUN, [
                (r.run_id, r.conversation_id, r.status, r.body) for r in runs.values()])


async def _write(conn: Any, ops: Sequence[Op], fence_node: str | None, faults: Faults,
                 again: bool) -> None:
    """Apply in order; rows are written in runs between retention operations (an expiry
    must see everything queued before it)."""
    rows = _Rows()
    for op in ops:
        if type(op) is AppendEvent:
            ev = op.event
            if faults.marker is not None:
                faults.check_event(ev.body)
            rows.events.append((ev.conversation_id, ev.seq, ev.run_id, ev.type, ev.item_id,
                                op.ts, ev.body))
        elif isinstance(op, PutRun):
            rows.runs[op.run_id] = op  # the latest snapshot of a row wins, as in order
        elif isinstance(op, PutConversation):
            rows.convs[op.conversation_id] = op
        elif isinstance(op, ExpireConversations):
            await rows.flush(conn, again)
            op.deleted = await expire(conn, op.ids, op.cutoff, fence_node)
        elif isinstance(op, PutIdempotency | PutOutbox | UpdateOutbox | UseAnswerToken):
            # In order with the rows before it (an outbox row reports a run's done).
            await rows.flush(conn, again)
            await _apply_api_op(conn, op, again)
    await rows.flush(conn, again)


async def expire(conn: Any, candidates: list[str], cutoff: int,
                 fence_node: str | None) -> list[str]:
    """Delete the candidates still idle (locked and re-checked in this transaction);
    remember their ids (and their runs') as expired, for 410s."""
    ids = [r[0] for r in await conn.fetch(
        "SELECT id FROM conversations WHERE id = ANY($1::text[]) AND updated_at < $2 "
        "AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.conversation_id = conversations.id "
        "AND status = ANY($3::text[])) FOR UPDATE", candidates, cutoff, list(UNFINISHED))]
    if not ids:
        return []
    stamp = now_ms()
    # An expired run is remembered in its owner's namespace (app/ids.py), as on SQLite:
    # only the owner is told 410, a stranger gets the unknown id's 404.
    run_ids = [scoped(r[1], r[0]) for r in await conn.fetch(
        "SELECT runs.id, conversations.owner FROM runs JOIN conversations "
        "ON conversations.id = runs.conversation_id "
        "WHERE runs.conversation_id = ANY($1::text[])", ids)]
    await conn.execute(
        "INSERT INTO expired SELECT unnest($1::text[]), 'run', $2 "
        "ON CONFLICT (id) DO UPDATE SET expired_at = EXCLUDED.expired_at", run_ids, stamp)
    await conn.execute(
        "INSERT INTO expired SELECT unnest($1::text[]), 'conversation', $2 "
        "ON CONFLICT (id) DO UPDATE SET expired_at = EXCLUDED.expired_at", ids, stamp)
    for table, column in CONVERSATION_TABLES:
        await conn.execute(f"DELETE FROM {table} WHERE {column} = ANY($1::text[])", ids)
    if fence_node is not None:
        await conn.execute(
            "DELETE FROM conversation_owners WHERE conversation_id = ANY($1::text[])", ids)
    return ids


async def _apply_api_op(conn: Any, op: PutIdempotency | PutOutbox | UpdateOutbox |
                        UseAnswerToken, again: bool) -> None:
    """The API issue's writes inside the batch's transaction, with SQLite's semantics."""
    if isinstance(op, PutIdempotency):
        k = op.record
        # Plain INSERT: a taken key fails the transaction (the engine's single flight on the
        # conversation's owner makes that unreachable; this is the backstop). The retry of a
        # batch whose commit was uncertain may find its own row: that one is the same key.
        await conn.execute(
            "INSERT INTO idempotency VALUES ($1,$2,$3,$4,$5,$6)"
            + (" ON CONFLICT (scope, key) DO NOTHING" if again else ""),
            k.scope, k.key, k.fingerprint, k.run_id, k.conversation_id, k.created_at)
    elif isinstance(op, PutOutbox):
        e = op.entry
        # DO NOTHING: the id is stable; a delivery is queued once.
        await conn.execute(
            "INSERT INTO outbox VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) ON CONFLICT (id) DO NOTHING",
            e.delivery_id, e.conversation_id, e.url, e.body, e.created_at, e.next_at,
            e.attempts, e.status, e.last_error)
        if op.token is not None:
            t = op.token
            await conn.execute(
                "INSERT INTO answer_tokens VALUES ($1,$2,$3,$4,$5) ON CONFLICT (token_hash) "
                "DO UPDATE SET run_id = EXCLUDED.run_id, request_id = EXCLUDED.request_id, "
                "conversation_id = EXCLUDED.conversation_id, expires_at = EXCLUDED.expires_at",
                t.token_hash, t.run_id, t.request_id, t.conversation_id, t.expires_at)
    elif isinstance(op, UpdateOutbox):
        await conn.execute(
            "UPDATE outbox SET status=$1, attempts=$2, next_at=$3, last_error=$4 WHERE id=$5",
            op.status, op.attempts, op.next_at, op.last_error, op.delivery_id)
    else:
        deleted = await conn.fetchval(
            "WITH d AS (DELETE FROM answer_tokens WHERE token_hash=$1 RETURNING 1) "
            "SELECT count(*) FROM d", op.token_hash)
        op.used = deleted == 1
