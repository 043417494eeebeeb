"""The SQLite schema: created at open (``CREATE ... IF NOT EXISTS``), so files made by
older versions open unchanged (new tables and indexes are added, nothing is migrated)."""

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
