"""PostgreSQL EventStore (asyncpg): the truth of a cluster, same semantics as SQLite.

One dedicated writer connection commits each batch the shared ``Writer`` cuts in ONE
transaction: events go in with ``COPY`` (binary, one stream per batch: measured 1.6x an
``INSERT ... SELECT FROM unnest(...)`` of the same rows, ~65x one INSERT per event), run and
conversation rows as pipelined upserts.
A ``Group`` is never cut (the writer's rule), so a run's ``done``, its final row and the
conversation update commit together, as on SQLite.

**Fencing** (cluster mode, ``fence_node`` set): before writing, the transaction takes
``FOR SHARE`` locks on the ownership rows of every conversation in the batch and checks
they name this node. A node that lost a conversation (declared dead, its conversations
taken over) can therefore never commit into it again: its batch fails with ``Fenced``, a
permanent error, and the writer isolates and rejects those units. The takeover's UPDATE of
the same rows waits for (or is waited on by) that lock, so there is no window between check
and write. ``UNIQUE(conversation_id, seq)`` remains only the last line of defence.

The batch's statements (fence, COPY, upserts, retention) are ``pg_writes.py``; this module
holds the connections, the error classification and the reads.

Errors are classified for the writer: constraint and data errors are permanent, a lost
connection, a timeout, a server shutting down or a serialization failure is transient (the
writer retries with backoff, the node reports itself unready, and the next batch
reconnects). A read that cannot reach the database is a coded 503 (``store_unavailable``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg
import structlog

from app.errors import Unavailable
from app.store.base import EventStore, StoreUnavailable
from app.store.ops import (
    Op,
)
from app.store.pg_schema import SchemaTooNew, migrate
from app.store.pg_writes import Fenced, write_batch
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
from protocol.codec import EncodedEvent

log = structlog.get_logger(__name__)
T = TypeVar("T")
__all__ = ["Fenced", "PostgresEventStore"]

# Transient: the server or the network, not the data.
TRANSIENT = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError,
    asyncpg.SerializationError, asyncpg.DeadlockDetectedError, asyncpg.LockNotAvailableError,
    asyncpg.OperatorInterventionError, asyncpg.InsufficientResourcesError,
    asyncpg.QueryCanceledError,
)
PERMANENT = (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError)


class PostgresEventStore(EventStore):
    def __init__(self, dsn: str, *, schema: str | None = None, connect_timeout: float = 5.0,
                 command_timeout: float = 10.0, pool_size: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dsn = dsn
        self.path = dsn  # shown in logs; schedules keep their own store
        self.schema = schema
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.pool_size = pool_size
        # Cluster mode: the node whose ownership every committed conversation must carry.
        self.fence_node: str | None = None
        # Seconds PostgreSQL lets a session sit idle inside a transaction before killing it
        # (None: the server's default). A node frozen mid-commit (SIGSTOP, a VM pause) would
        # otherwise hold its FOR SHARE locks, and the takeover that must wait for them,
        # until it wakes; the cluster sets this below the lease.
        self.idle_tx_timeout: float | None = None
        self._w: Any = None  # asyncpg.Connection of the writer
        # The last batch failed with the connection: it may have committed all the same.
        self._uncertain = False
        self._pool: Any = None  # asyncpg.Pool for reads

    # ---- connections ----------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"timeout": self.connect_timeout,
                                  "command_timeout": self.command_timeout}
        server: dict[str, str] = {}
        if self.schema is not None:
            server["search_path"] = self.schema
        if self.idle_tx_timeout is not None:
            server["idle_in_transaction_session_timeout"] = str(int(self.idle_tx_timeout * 1000))
        if server:
            kwargs["server_settings"] = server
        return kwargs

    async def connect(self) -> Any:
        """A new connection with this store's settings (the cluster's own chores use it)."""
        return await asyncpg.connect(self.dsn, **self._settings())

    async def create_pool(self, size: int) -> Any:
        """A small pool of this store's connections (the cluster's lease and ownership)."""
        return await asyncpg.create_pool(self.dsn, min_size=1, max_size=size,
                                         **self._settings())

    async def _open(self) -> None:
        try:
            conn = await self.connect()
            try:
                applied = await migrate(conn)
            finally:
                await conn.close()
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=self.pool_size, **self._settings())
        except SchemaTooNew as exc:
            raise StoreUnavailable(str(exc)) from None
        except (*TRANSIENT, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(f"cannot open PostgreSQL: {type(exc).__name__}: {exc}"
                                   ) from None
        if applied:
            log.info("schema_migrated", versions=applied)

    async def _close(self) -> None:
        if self._w is not None:
            w, self._w = self._w, None
            await self._quietly(w.close(timeout=2))
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await self._quietly(pool.close())

    @staticmethod
    async def _quietly(aw: Awaitable[Any]) -> None:
        try:
            async with asyncio.timeout(3):
                await aw
        except Exception as exc:
            log.warning("postgres_close_failed", error=f"{type(exc).__name__}: {exc}")

    def is_permanent(self, exc: BaseException) -> bool:
        if isinstance(exc, (*PERMANENT, Fenced)):
            return True
        if isinstance(exc, TRANSIENT):
            return False
        return super().is_permanent(exc)

    async def ping(self) -> bool:
        """Readiness: the writer is healthy AND the database answers now."""
        if not await super().ping():
            return False
        try:
            await self._read(lambda c: c.fetchval("SELECT 1"), timeout=1.0)
        except Unavailable:
            return False
        return True

    # ---- writing --------------------------------------------------------------------------

    async def _writer_conn(self) -> Any:
        if self._w is None or self._w.is_closed():
            self._w = await self.connect()
        return self._w

    async def _apply(self, ops: Sequence[Op]) -> None:
        """One transaction. A connection lost during it (COMMIT included) leaves the outcome
        unknown: the writer retries the same units first, so the retry skips events already
        there. They can only be this very batch's: the fence lets no other node write these
        conversations, and this node numbers each seq once."""
        conn = await self._writer_conn()
        try:
            async with conn.transaction():
                await write_batch(conn, ops, fence_node=self.fence_node,
                                  faults=self.writer.faults, again=self._uncertain)
        except TRANSIENT:
            # The connection may be half-dead: the next batch starts on a fresh one.
            self._w = None
            self._uncertain = True
            conn.terminate()
            raise
        self._uncertain = False

    # ---- reading --------------------------------------------------------------------------

    async def _read(self, query: Callable[[Any], Awaitable[T]],
                    timeout: float | None = None) -> T:
        """One read on a pooled connection; an unreachable database is a coded 503."""
        if self._pool is None:
            raise Unavailable("store_unavailable", "the store is not open")
        try:
            async with asyncio.timeout(timeout or self.command_timeout):
                async with self._pool.acquire() as conn:
                    return await query(conn)
        except TRANSIENT as exc:
            raise Unavailable("store_unavailable",
                              f"PostgreSQL is unreachable: {type(exc).__name__}") from None

    async def read_events(
        self,
        conversation_id: str,
        after: int,
        limit: int,
        run_id: str | None = None,
        until: int | None = None,
    ) -> list[EncodedEvent]:
        upper = until if until is not None else 1 << 62
        sql = ("SELECT seq, type, run_id, item_id, body FROM events WHERE conversation_id=$1 "
               "AND seq>$2 AND seq<=$3 AND ($4::text IS NULL OR run_id=$4) ORDER BY seq LIMIT $5")
        rows = await self._read(
            lambda c: c.fetch(sql, conversation_id, after, upper, run_id, limit))
        return [EncodedEvent(r[0], r[1], conversation_id, r[2], r[4], r[3]) for r in rows]

    async def last_seq(self, conversation_id: str) -> int:
        value = await self._read(lambda c: c.fetchval(
            "SELECT max(seq) FROM events WHERE conversation_id=$1", conversation_id))
        return int(value) if value is not None else 0

    async def last_seqs(self, conversation_ids: list[str]) -> dict[str, int]:
        """Highest committed seq of each conversation (one query; the bus's resync)."""
        rows = await self._read(lambda c: c.fetch(
            "SELECT id, (SELECT max(seq) FROM events WHERE conversation_id = id) "
            "FROM unnest($1::text[]) AS id", conversation_ids))
        return {r[0]: int(r[1] or 0) for r in rows}

    async def get_run(self, run_id: str) -> RunRecord | None:
        body = await self._read(lambda c: c.fetchval(
            "SELECT record FROM runs WHERE id=$1", run_id))
        return decode_run(body) if body is not None else None

    async def get_conversation(self, conversation_id: str) -> ConversationRecord | None:
        body = await self._read(lambda c: c.fetchval(
            "SELECT record FROM conversations WHERE id=$1", conversation_id))
        return decode_conversation(body) if body is not None else None

    async def unfinished_runs(self) -> list[RunRecord]:
        """Open runs; in cluster mode only those of conversations this node owns (the
        others belong to live nodes, or to dead ones whose reaper ends them)."""
        rows = await self._read(lambda c: c.fetch(
            "SELECT record FROM runs WHERE status = ANY($1::text[]) AND ($2::text IS NULL OR "
            "conversation_id IN (SELECT conversation_id FROM conversation_owners "
            "WHERE node_id = $2))", list(UNFINISHED), self.fence_node))
        return [decode_run(r[0]) for r in rows]

    async def run_events(self, run: RunRecord) -> tuple[int, EncodedEvent | None]:
        row = await self._read(lambda c: c.fetchrow(
            "SELECT count(*), max(CASE WHEN type='done' THEN seq END) FROM events "
            "WHERE conversation_id=$1 AND seq>=$2 AND run_id=$3",
            run.conversation_id, run.first_seq, run.run_id))
        return await self._counted(run, *(row if row is not None else (0, None)))

    async def expirable(self, cutoff: int, limit: int) -> list[str]:
        """Idle conversations; in cluster mode only this node's own (each conversation is
        swept by exactly one node: its owner, the only one that may number into it)."""
        rows = await self._read(lambda c: c.fetch(
            "SELECT id FROM conversations WHERE updated_at < $1 AND NOT EXISTS (SELECT 1 "
            "FROM runs WHERE runs.conversation_id = conversations.id AND status = "
            "ANY($2::text[])) AND ($3::text IS NULL OR id IN (SELECT conversation_id FROM "
            "conversation_owners WHERE node_id = $3)) LIMIT $4",
            cutoff, list(UNFINISHED), self.fence_node, limit))
        return [r[0] for r in rows]

    async def is_expired(self, ident: str) -> bool:
        found = await self._read(lambda c: c.fetchval(
            "SELECT 1 FROM expired WHERE id=$1", ident))
        return found is not None

    # ---- the API issue (16): listings, idempotency keys, the webhook outbox -----------------

    async def list_conversations(self, query: ConversationQuery) -> list[ConversationRecord]:
        sql, args = _conversation_sql(query)
        rows = await self._read(lambda c: c.fetch(sql, *args))
        return [decode_conversation(r[0]) for r in rows]

    async def list_runs(
        self, conversation_id: str, after_first_seq: int, limit: int
    ) -> list[RunRecord]:
        rows = await self._read(lambda c: c.fetch(
            f"SELECT record FROM runs WHERE conversation_id=$1 AND {_FIRST_SEQ} > $2 "
            f"ORDER BY {_FIRST_SEQ} LIMIT $3", conversation_id, after_first_seq, limit))
        return [decode_run(r[0]) for r in rows]

    async def get_idempotency(self, scope: str, key: str) -> IdempotencyRecord | None:
        row = await self._read(lambda c: c.fetchrow(
            "SELECT scope, key, fingerprint, run_id, conversation_id, created_at "
            "FROM idempotency WHERE scope=$1 AND key=$2", scope, key))
        return IdempotencyRecord(*row) if row is not None else None

    async def due_outbox(self, now: int, limit: int) -> list[OutboxEntry]:
        """Deliveries due now; in cluster mode not those of conversations another live node
        owns (that node delivers them). A conversation nobody owns (its node stopped cleanly)
        is offered to every node: the deliverer claims it before sending (``may_deliver``),
        so each delivery still has one sender."""
        rows = await self._read(lambda c: c.fetch(
            f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE status='pending' AND next_at<=$1 "
            "AND ($3::text IS NULL OR conversation_id NOT IN (SELECT o.conversation_id FROM "
            "conversation_owners o JOIN nodes n USING (node_id) WHERE NOT n.dead "
            "AND o.node_id <> $3)) ORDER BY next_at, id LIMIT $2",
            now, limit, self.fence_node))
        return [outbox_entry(r) for r in rows]

    async def get_outbox(self, delivery_id: str) -> OutboxEntry | None:
        row = await self._read(lambda c: c.fetchrow(
            f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE id=$1", delivery_id))
        return outbox_entry(row) if row is not None else None

    async def get_answer_token(self, token_hash: str) -> AnswerToken | None:
        row = await self._read(lambda c: c.fetchrow(
            "SELECT token_hash, run_id, request_id, conversation_id, expires_at "
            "FROM answer_tokens WHERE token_hash=$1", token_hash))
        return AnswerToken(*row) if row is not None else None


# Run rows keep their fields in the JSON record, read here as on SQLite (no extra columns).
_RECORD = "convert_from({}.record, 'UTF8')::jsonb"
# A first_seq of 0 is omitted from the record (omit_defaults): coalesce, as SQLite's NULL
# sorts like the smallest value.
_FIRST_SEQ = f"coalesce(({_RECORD.format('runs')} ->> 'first_seq')::bigint, 0)"


def _conversation_sql(query: ConversationQuery) -> tuple[str, list[Any]]:
    """One page of conversations: keyset on (created_at, id), newest first; the run filters
    as EXISTS / latest-run subqueries (the same query as SQLite's)."""
    where: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if query.owner is not None:
        where.append(f"c.owner = {arg(query.owner)}")
    if query.before is not None:
        at, cid = arg(query.before[0]), arg(query.before[1])
        where.append(f"(c.created_at < {at} OR (c.created_at = {at} AND c.id < {cid}))")
    record = _RECORD.format("r")
    if query.status is not None:
        where.append(f"(SELECT r.status FROM runs r WHERE r.conversation_id = c.id "
                     f"ORDER BY coalesce(({record} ->> 'first_seq')::bigint, 0) DESC LIMIT 1) "
                     f"= {arg(query.status)}")
    run_checks: list[str] = []
    if query.agent is not None:
        run_checks.append(f"{record} ->> 'agent' = {arg(query.agent)}")
    for key, value in query.metadata.items():
        run_checks.append(f"{record} -> 'metadata' ->> {arg(key)}::text = {arg(value)}")
    if run_checks:
        where.append("EXISTS (SELECT 1 FROM runs r WHERE r.conversation_id = c.id AND "
                     + " AND ".join(run_checks) + ")")
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    return (f"SELECT c.record FROM conversations c {clause} "
            f"ORDER BY c.created_at DESC, c.id DESC LIMIT {arg(query.limit)}", args)
