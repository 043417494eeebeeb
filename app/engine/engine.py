"""The session engine's front door: what the API and the scheduler call.

It wires three parts with one job each and adds the read side:

- ``Conversations`` (conversations.py): live seq counters, loaded once, bounded, fenced
  during retention;
- ``RunLifecycle`` (lifecycle.py): start, drive, ``done``, cancel, recovery, shutdown;
- ``InputBroker`` (inputs.py): questions and first-wins answers.

Commit -> publish is wired here, in plain sight: the store's commit listener is the bus
(``LocalBus``: straight to the hub; ``RedisBus``: the hub and every other node).
Errors are domain errors (``app.errors``); the API maps them to HTTP and WebSocket.

In a cluster (``peers``), a command for a run or conversation owned by another node is
forwarded to it and answered from there (``routing.py`` finds the node), so no client needs
a sticky session.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import structlog

from app import metrics
from app.agents.registry import AgentRegistry
from app.bus.base import Bus
from app.bus.local import LocalBus
from app.clock import now_ms
from app.engine.conversations import Conversations
from app.engine.deletion import delete_conversation
from app.engine.lifecycle import RunLifecycle
from app.engine.opening import new_id
from app.engine.peers import LocalPeers, Peers, RemoteRun
from app.engine.reads import Reads
from app.engine.routing import Routing
from app.engine.starts import Started, Starts
from app.engine.state import ActiveRun, Conversation
from app.errors import AgentstreamError, Expired, NotFound, Unavailable, not_found
from app.fanout.hub import Hub
from app.ids import public, scoped
from app.store.base import EventStore
from app.store.ops import UseAnswerToken
from app.store.records import UNFINISHED, ConversationQuery, ConversationRecord, RunRecord
from protocol.codec import EncodedEvent
from protocol.messages import RunInfo, StartRunRequest
from protocol.output import RunOutput

__all__ = ["Engine", "RemoteRun", "new_id"]
log = structlog.get_logger(__name__)


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
        bus: Bus | None = None,
        peers: Peers | None = None,
    ) -> None:
        self.store = store
        self.hub = hub
        self.agents = agents
        self.bus: Bus = bus if bus is not None else LocalBus(hub)
        self.peers: Peers = peers if peers is not None else LocalPeers()
        self.clustered = peers is not None
        self.conversations = Conversations(
            store, hub, max_in_memory=max_conversations, idle_seconds=conversation_idle,
            peers=self.peers)
        self.runs = RunLifecycle(
            store, self.conversations, agents, input_timeout=input_timeout,
            run_timeout=run_timeout, ack_timeout=ack_timeout)
        self.reads = Reads(store)
        self.starts = Starts(self.runs, store)
        self.routing = Routing(self.runs, self.bus, self.peers, self.clustered)
        # Fire-and-forget cancels forwarded from cleanup paths; ended in ``shutdown``.
        self._forwards: set[asyncio.Task[None]] = set()
        store.add_commit_listener(self.bus.committed)

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
        await self.starts.shutdown()
        for task in list(self._forwards):
            task.cancel()
        if self._forwards:
            await asyncio.gather(*self._forwards, return_exceptions=True)

    # ---- commands -----------------------------------------------------------------------

    async def start_run(
        self, req: StartRunRequest, owner: str | None = None, admin: bool = True,
        forwarded: bool = False,
    ) -> ActiveRun | RemoteRun:
        """Start a run; ``owner`` (None without auth) owns a new conversation, and only it (or
        an admin) may start runs in an existing one. Returns once the start is durable.
        In a cluster the run starts on the conversation's owning node (this one if no live
        node owns it); ``forwarded`` marks a start another node sent here."""
        if not self.clustered:
            return await self.runs.start(req, owner, admin)
        req, node = await self.routing.owner_for_start(req, owner, None, forwarded)
        if node is None:
            return await self.runs.start(req, owner, admin)
        result = await self.peers.forward(node, "start", {
            "req": msgspec.to_builtins(req), "owner": owner, "admin": admin})
        return RemoteRun(msgspec.convert(result, RunRecord))

    async def start(self, req: StartRunRequest, owner: str | None = None, admin: bool = True,
                    idempotency_key: str | None = None, forwarded: bool = False) -> Started:
        """A start as clients ask for it: idempotency key, then the conversation's multitask
        policy (engine/starts.py). May return an existing run (``Started.replayed``). In a
        cluster both are decided by the conversation's owning node: the start, its key and
        its policy are forwarded there (``forwarded``: this node is that owner)."""
        if not self.clustered:
            return await self.starts.start(req, owner, admin, idempotency_key)
        req, node = await self.routing.owner_for_start(req, owner, idempotency_key, forwarded)
        if node is None:
            return await self.starts.start(req, owner, admin, idempotency_key)
        result = await self.peers.forward(node, "start", {
            "req": msgspec.to_builtins(req), "owner": owner, "admin": admin,
            "idempotency_key": idempotency_key, "policy": True})
        return Started(msgspec.convert(result["record"], RunRecord), int(result["after"]),
                       bool(result["replayed"]))

    async def answer(self, run_id: str, request_id: str, value: Any) -> None:
        """First answer wins, across every transport and node; returns once it is durable."""
        run = self.runs.active.get(run_id)
        if run is None:
            record = await self.get_run(run_id)  # 404 when unknown
            node = await self.routing.remote_owner(record)
            if node is not None:
                await self.peers.forward(node, "answer", {
                    "run_id": run_id, "request_id": request_id, "value": value})
                return
            if record.status in UNFINISHED:
                # Ended here a moment ago, its last rows still queued: judge by those.
                await self.runs.ack(asyncio.ensure_future(self.store.flush()))
                record = await self.get_run(run_id)
            raise self.runs.inputs.not_pending(record, request_id, set())
        await self.runs.ack(self.runs.inputs.answer(run, request_id, value))

    async def answer_with_token(self, token_hash: str, value: Any) -> RunRecord:
        """A webhook's one-time answer link: answer (first wins, as any answer), then take
        the token, so a refused value does not burn it and a second use finds nothing."""
        token = await self.store.get_answer_token(token_hash)
        if token is None or token.expires_at < now_ms():
            raise NotFound("answer_token_not_found", "no such answer link (used or expired)")
        await self.answer(token.run_id, token.request_id, value)
        await self.store.apply_now(UseAnswerToken(token_hash))
        return await self.get_run(token.run_id)

    async def cancel(self, run_id: str, reason: str = "requested") -> tuple[bool, RunRecord]:
        """Idempotent. Returns (still_running, record) once the cancel is durable."""
        run = self.runs.active.get(run_id)
        if run is None:
            queued = self.starts.queued(run_id)
            if queued is not None:
                return False, await self.starts.cancel_queued(queued)
            record = await self.get_run(run_id)
            node = await self.routing.remote_owner(record)
            if node is None:
                return False, record
            running, body = await self.peers.forward(
                node, "cancel", {"run_id": run_id, "reason": reason})
            return bool(running), msgspec.convert(body, RunRecord)
        committed = self.runs.request_cancel(run_id, reason)
        if committed is not None:
            await self.runs.ack(committed)
        return True, run.visible

    def request_cancel(self, run_id: str, reason: str) -> bool:
        """Synchronous cancel for cleanup paths (a client gone with ``on_disconnect:
        cancel``). A run queued here (multitask ``enqueue``) is ended before it starts, and
        in a cluster a run not here is cancelled on its node: both in the background, owned
        by the engine. False if the run is not active here."""
        if run_id not in self.runs.active:
            if self.clustered or self.starts.queued(run_id) is not None:
                task = asyncio.create_task(self._cancel_quietly(run_id, reason))
                self._forwards.add(task)
                task.add_done_callback(self._forwards.discard)
            return False
        self.runs.request_cancel(run_id, reason)
        return True

    async def _cancel_quietly(self, run_id: str, reason: str) -> None:
        try:
            async with asyncio.timeout(self.runs.ack_timeout):
                await self.cancel(run_id, reason)
        except (AgentstreamError, TimeoutError) as exc:
            log.warning("background_cancel_failed", run_id=run_id, error=str(exc))

    # ---- reads --------------------------------------------------------------------------

    async def get_run(self, run_id: str, namespace: str | None = None) -> RunRecord:
        """The run as committed (an active run's last committed row, never one ahead).
        ``namespace`` is the caller's owner: only its own expired runs answer 410."""
        run = self.runs.active.get(run_id)
        if run is not None:
            return run.visible
        record = await self.store.get_run(run_id)
        if record is None:
            await self._raise_missing("run", run_id, scoped(namespace, run_id))
        assert record is not None
        return record

    async def conversation(self, conversation_id: str) -> Conversation | None:
        return await self.conversations.get(conversation_id)

    async def require_conversation(self, conversation_id: str) -> Conversation:
        """By store key (``app.ids.scoped``); errors name the public id."""
        conv = await self.conversations.get(conversation_id)
        if conv is None:
            await self._raise_missing("conversation", public(conversation_id), conversation_id)
        assert conv is not None
        return conv

    async def _raise_missing(self, kind: str, ident: str, key: str) -> None:
        """404 for an id never seen; 410 for one that retention removed. ``key`` is scoped
        to the caller, so a stranger never learns that someone else's id expired."""
        if await self.store.is_expired(key):
            raise Expired(f"{kind}_expired",
                          f"{kind} {ident!r} has expired and its events were deleted")
        raise not_found(kind, ident)

    async def list_conversations(self, query: ConversationQuery) -> list[ConversationRecord]:
        return await self.reads.conversations(query)

    async def list_runs(self, conversation_id: str, after_first_seq: int,
                        limit: int) -> list[RunRecord]:
        return await self.reads.runs(conversation_id, after_first_seq, limit)

    async def read_events(self, conversation_id: str, after: int, limit: int,
                          run_id: str | None = None) -> list[EncodedEvent]:
        return await self.reads.events(conversation_id, after, limit, run_id)

    async def run_output(self, record: RunRecord) -> RunOutput:
        return await self.reads.output(record)

    async def delete_conversation(self, conversation_id: str,
                                  forwarded: bool = False) -> list[str]:
        """End the conversation's open runs, then delete it as retention would (later
        lookups: 410). Returns the runs it cancelled. The caller checked ownership. In a
        cluster the conversation's owning node does it (its runs and queue live there)."""
        await self.require_conversation(conversation_id)
        if self.clustered:
            node = await self.peers.acquire(conversation_id)
            if node is not None:
                if forwarded:
                    raise Unavailable("node_unavailable",
                                      "the conversation's owner changed; retry")
                cancelled = await self.peers.forward(
                    node, "delete", {"conversation_id": conversation_id})
                self.conversations.deleted_elsewhere(conversation_id)
                return [str(r) for r in cancelled]
        dropped = await self.starts.drop_queue(conversation_id, "cancelled", None)
        return dropped + await delete_conversation(self.store, self.conversations, self.runs,
                                         conversation_id, self.runs.ack_timeout)

    @property
    def conversations_in_memory(self) -> int:
        return len(self.conversations)

    @staticmethod
    def run_info(record: RunRecord) -> RunInfo:
        """The public view of a run row: the same fields, minus owner, input and bookkeeping,
        with the conversation's public id."""
        fields = msgspec.to_builtins(record)
        fields["conversation_id"] = public(record.conversation_id)
        return msgspec.convert(fields, RunInfo)

    def refresh_gauges(self) -> None:
        counts: dict[str, int] = {"running": 0, "waiting_input": 0, "queued": 0}
        for run in self.runs.active.values():
            counts[run.visible.status] = counts.get(run.visible.status, 0) + 1
        for status, n in counts.items():
            metrics.RUNS_ACTIVE.labels(status).set(n)

