"""In-memory state of conversations and active runs (the store holds the durable copy)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.ids import public
from app.store.records import ConversationRecord, RunRecord
from protocol.messages import ErrorDetail

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
    # The store rejected a write of this conversation: this object's seq counter is no
    # longer the truth; nothing more may be numbered through it (a fresh one is loaded).
    broken: bool = False
    # Cluster mode: another node owns this conversation; ``seq`` is only the committed
    # mark last read from the store (for checks like Last-Event-ID), never numbered from.
    follower: bool = False
    # The id clients know (the record holds the store key, app/ids.py); events carry it.
    public_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.public_id = public(self.record.conversation_id)


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
    # The run row as last committed: what readers are told (never an uncommitted state).
    visible: RunRecord
    task: asyncio.Task[None] | None = None
    agent_task: asyncio.Task[None] | None = None
    pending: PendingRequest | None = None
    expired: set[str] = field(default_factory=set)
    cancel_requested: bool = False
    shutting_down: bool = False
    # Set when the run must end ``failed`` for a reason outside the agent (store trouble).
    failure: ErrorDetail | None = None
    ended: bool = False
    # Resolved by the run's driver once ``run_started`` committed (or failed): the one
    # decision ``start`` waits for.
    started: asyncio.Future[None] | None = None
    # perf_counter() marks for the emit fairness rule (run_writes.RunWrites.emit).
    burst_started: float = 0.0
    last_emit: float = 0.0

    @property
    def run_id(self) -> str:
        return self.record.run_id
