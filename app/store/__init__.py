"""Persistence: the EventStore interface, SQLite (default) and memory implementations."""

from app.store.base import ConversationRecord, EventStore, RunRecord, StoreUnavailable
from app.store.memory import MemoryEventStore
from app.store.sqlite import SqliteEventStore

__all__ = [
    "ConversationRecord",
    "EventStore",
    "MemoryEventStore",
    "RunRecord",
    "SqliteEventStore",
    "StoreUnavailable",
]
