"""Persistence: the EventStore interface, its shared writer, SQLite (default) and memory."""

from app.store.base import EventStore, StoreLocked
from app.store.memory import MemoryEventStore
from app.store.records import ConversationRecord, RunRecord
from app.store.sqlite import SqliteEventStore
from app.store.writer import StoreRejected, StoreUnavailable

__all__ = [
    "ConversationRecord",
    "EventStore",
    "MemoryEventStore",
    "RunRecord",
    "SqliteEventStore",
    "StoreLocked",
    "StoreRejected",
    "StoreUnavailable",
]
