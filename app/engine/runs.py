"""In-memory state of conversations and active runs (the store holds the durable copy)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.store.base import ConversationRecord, RunRecord

if TYPE_CHECKING:
    from app.agents.base import Agent


@dataclass
class Conversation:
    record: ConversationRecord
    # Last assigned seq: assignment is synchronous, so the event loop serializes it.
    seq: int
    # Runs in progress here: a conversation with one stays in memory.
    active_runs: int = 0
    # time.monotonic() of the last lookup, so a reference just handed out is never evicted.
    used_at: float = field(default_factory=time.monotonic)


@dataclass
class PendingRequest:
    request_id: str
    future: asyncio.Future[Any]
    choices: list[Any] | None
    expires_at: int


@dataclass
class ActiveRun:
    record: RunRecord
    conversation: Conversation
    agent: Agent
    parsed_input: Any
    task: asyncio.Task[None] | None = None
    agent_task: asyncio.Task[None] | None = None
    pending: PendingRequest | None = None
    expired: set[str] = field(default_factory=set)
    cancel_requested: bool = False
    shutting_down: bool = False
    ended: bool = False

    @property
    def run_id(self) -> str:
        return self.record.run_id
