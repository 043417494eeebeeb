"""The session engine's front door: what the API and the scheduler call.

It wires three parts with one job each and adds the read side:

- ``Conversations`` (conversations.py): live seq counters, loaded once, bounded, fenced
  during retention;
- ``RunLifecycle`` (lifecycle.py): start, drive, ``done``, cancel, recovery, shutdown;
- ``InputBroker`` (inputs.py): questions and first-wins answers.

Commit -> publish is wired here, in plain sight: the store's commit listener is the hub.
Errors are domain errors (``app.errors``); the API maps them to HTTP and WebSocket.
"""

from __future__ import annotations

from typing import Any

import msgspec

from app import metrics
from app.agents.registry import AgentRegistry
from app.engine.conversations import Conversations
from app.engine.lifecycle import RunLifecycle, new_id
from app.engine.state import ActiveRun, Conversation
from app.errors import Expired, not_found
from app.fanout.hub import Hub
from app.store.base import EventStore
from app.store.records import RunRecord
from protocol.messages import RunInfo, StartRunRequest

__all__ = ["Engine", "new_id"]


class Engine:
    def __init__(
        self,
        store: EventStore,
        hub: Hub,
        agents: AgentRegistry,
        *,
        input_timeout: float = 300.0,
        run_timeout: float = 3600.0,
        max_conversations: int = 100_000,
        conversation_idle: float = 60.0,
        ack_timeout: float = 10.0,
    ) -> None:
        self.store = store
        self.hub = hub
        self.agents = agents
        self.conversations = Conversations(
            store, hub, max_in_memory=max_conversations, idle_seconds=conversation_idle)
        self.runs = RunLifecycle(
            store, self.conversations, agents, input_timeout=input_timeout,
            run_timeout=run_timeout, ack_timeout=ack_timeout)
        store.add_commit_listener(hub.publish)

    # ---- lifecycle ----------------------------------------------------------------------

    @property
    def active(self) -> dict[str, ActiveRun]:
        return self.runs.active

    @property
    def accepting(self) -> bool:
        return self.runs.accepting

    async def recover(self) -> int:
        return await self.runs.recover()

    async def shutdown(self, grace: float) -> None:
        await self.runs.shutdown(grace)

    # ---- commands -----------------------------------------------------------------------

    async def start_run(
        self, req: StartRunRequest, owner: str | None = None, admin: bool = True
    ) -> ActiveRun:
        """Start a run; ``owner`` (None without auth) owns a new conversation, and only it (or
        an admin) may start runs in an existing one. Returns once the start is durable."""
        return await self.runs.start(req, owner, admin)

    async def answer(self, run_id: str, request_id: str, value: Any) -> None:
        """First answer wins, across every transport; returns once the answer is durable."""
        run = self.runs.active.get(run_id)
        if run is None:
            record = await self.get_run(run_id)  # 404 when unknown
            raise self.runs.inputs.not_pending(record, request_id, set())
        await self.runs.ack(self.runs.inputs.answer(run, request_id, value))

    async def cancel(self, run_id: str, reason: str = "requested") -> tuple[bool, RunRecord]:
        """Idempotent. Returns (still_running, record) once the cancel is durable."""
        run = self.runs.active.get(run_id)
        if run is None:
            return False, await self.get_run(run_id)
        committed = self.runs.request_cancel(run_id, reason)
        if committed is not None:
            await self.runs.ack(committed)
        return True, run.visible

    def request_cancel(self, run_id: str, reason: str) -> bool:
        """Synchronous cancel for cleanup paths; False if the run is not active."""
        if run_id not in self.runs.active:
            return False
        self.runs.request_cancel(run_id, reason)
        return True

    # ---- reads --------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> RunRecord:
        """The run as committed (an active run's last committed row, never one ahead)."""
        run = self.runs.active.get(run_id)
        if run is not None:
            return run.visible
        record = await self.store.get_run(run_id)
        if record is None:
            await self._raise_missing("run", run_id)
        assert record is not None
        return record

    async def conversation(self, conversation_id: str) -> Conversation | None:
        return await self.conversations.get(conversation_id)

    async def require_conversation(self, conversation_id: str) -> Conversation:
        conv = await self.conversations.get(conversation_id)
        if conv is None:
            await self._raise_missing("conversation", conversation_id)
        assert conv is not None
        return conv

    async def _raise_missing(self, kind: str, ident: str) -> None:
        """404 for an id never seen; 410 for one that retention removed."""
        if await self.store.is_expired(ident):
            raise Expired(f"{kind}_expired",
                          f"{kind} {ident!r} has expired and its events were deleted")
        raise not_found(kind, ident)

    @property
    def conversations_in_memory(self) -> int:
        return len(self.conversations)

    @staticmethod
    def run_info(record: RunRecord) -> RunInfo:
        """The public view of a run row: the same fields, minus owner, input and bookkeeping."""
        return msgspec.convert(msgspec.to_builtins(record), RunInfo)

    def refresh_gauges(self) -> None:
        counts: dict[str, int] = {"running": 0, "waiting_input": 0, "queued": 0}
        for run in self.runs.active.values():
            counts[run.visible.status] = counts.get(run.visible.status, 0) + 1
        for status, n in counts.items():
            metrics.RUNS_ACTIVE.labels(status).set(n)
