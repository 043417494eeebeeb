"""What the SQLite and PostgreSQL stores share: the same tables, read the same way."""

from __future__ import annotations

from typing import Any

from app.store.records import OutboxEntry

OUTBOX_COLUMNS = ("id, conversation_id, url, body, created_at, next_at, attempts, status, "
                  "last_error")
# Every table holding a conversation's rows, and its key column: what retention deletes.
CONVERSATION_TABLES = (("events", "conversation_id"), ("runs", "conversation_id"),
                       ("idempotency", "conversation_id"), ("outbox", "conversation_id"),
                       ("answer_tokens", "conversation_id"), ("conversations", "id"))


def outbox_entry(row: Any) -> OutboxEntry:
    """An outbox row read with ``OUTBOX_COLUMNS``."""
    return OutboxEntry(row[0], row[1], row[2], bytes(row[3]), *row[4:])
