"""The PostgreSQL schema, versioned by the service itself.

``schema_migrations`` holds one row per applied version. ``migrate`` runs every missing
migration in ONE transaction under a transaction-scoped advisory lock, so two nodes starting
at once never race (the second waits, then finds nothing to do) and a failure leaves the
schema exactly as it was (never half-applied). A database whose version is newer than this
build knows is refused with one message rather than used blindly.

To add a migration: append ``(version, sql)`` to ``MIGRATIONS``; never edit a shipped one.
Version 3 brought the API issue's tables (idempotency keys, the webhook outbox, answer tokens)
and the listing index.
"""

from __future__ import annotations

from typing import Any

from app.store.records import UNFINISHED

_UNFINISHED_SQL = ", ".join(f"'{s}'" for s in UNFINISHED)

MIGRATIONS: list[tuple[int, str]] = [
    (1, f"""
CREATE TABLE conversations (
    id TEXT PRIMARY KEY,
    owner TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    record BYTEA NOT NULL
);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    status TEXT NOT NULL,
    record BYTEA NOT NULL
);
CREATE INDEX runs_unfinished ON runs(conversation_id) WHERE status IN ({_UNFINISHED_SQL});
CREATE INDEX runs_by_conversation ON runs(conversation_id);
-- The last line of defence against a duplicate seq; the ownership fence is the mechanism.
CREATE TABLE events (
    conversation_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    run_id TEXT,
    type TEXT NOT NULL,
    item_id TEXT,
    ts BIGINT NOT NULL,
    body BYTEA NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);
CREATE TABLE expired (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    expired_at BIGINT NOT NULL
);
"""),
    (2, """
-- Cluster mode: node leases and conversation ownership (docs/ARCHITECTURE.md, Cluster).
CREATE TABLE nodes (
    node_id TEXT PRIMARY KEY,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL,
    dead BOOLEAN NOT NULL DEFAULT false
);
CREATE TABLE conversation_owners (
    conversation_id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL
);
CREATE INDEX conversation_owners_by_node ON conversation_owners(node_id);
"""),
    (3, """
-- The API issue (16) on PostgreSQL, as on SQLite: listings, idempotency keys, the webhook
-- outbox and one-time answer tokens (all deleted with their conversation).
CREATE INDEX conversations_by_owner ON conversations(owner, created_at, id);
CREATE TABLE idempotency (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    run_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_by_conversation ON idempotency(conversation_id);
CREATE TABLE outbox (
    id TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    url TEXT NOT NULL,
    body BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    next_at BIGINT NOT NULL,
    attempts INTEGER NOT NULL,
    status TEXT NOT NULL,
    last_error TEXT
);
CREATE INDEX outbox_due ON outbox(status, next_at);
CREATE INDEX outbox_by_conversation ON outbox(conversation_id);
CREATE TABLE answer_tokens (
    token_hash TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX answer_tokens_by_conversation ON answer_tokens(conversation_id);
"""),
    (4, """
-- Schedules shared by every node (app/schedules/pg_store.py): next_fire_at is the column a
-- firing is claimed by (compare-and-set), so each due time fires once in the cluster.
CREATE TABLE schedules (
    id TEXT PRIMARY KEY,
    record BYTEA NOT NULL,
    next_fire_at BIGINT NOT NULL
);
"""),
]

LATEST = MIGRATIONS[-1][0]


class SchemaTooNew(Exception):
    """The database was migrated by a newer agentstream than this one."""


async def migrate(conn: Any) -> list[int]:
    """Bring the schema of ``conn``'s search path to ``LATEST``; returns versions applied.

    ``conn`` is an asyncpg connection (typed loosely: asyncpg ships no type hints)."""
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('agentstream.migrate.' || current_schema()))")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
        if current > LATEST:
            raise SchemaTooNew(
                f"the database schema is version {current}, newer than this agentstream "
                f"knows ({LATEST}): run a newer agentstream, or point --store at another "
                "database")
        applied = []
        for version, sql in MIGRATIONS:
            if version <= current:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations(version) VALUES ($1)", version)
            applied.append(version)
        return applied
