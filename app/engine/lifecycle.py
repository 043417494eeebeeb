"""The run orchestrator: start, drive, end (exactly one ``done``), cancel, recover, shut down.

Agents run as background tasks owned here, not by any connection, so a run outlives the
client that started it. What makes the promise hold:

- **Acknowledged means durable.** A start, an answer and a cancel are answered only after
  their events (and the run row) committed; the agent starts only after its ``run_started``
  did. A client is never told a state a crash can take back.
- **Atomic ``done``.** A run's ``done`` event, its final row and the conversation's update
  are one ``Group``: one transaction, never cut between batches. ``_finish`` is the only
  writer of ``done`` for a live run, guarded by ``run.ended``; ``recover`` decides from the
  committed events (a stored ``done`` wins over a row that says otherwise).
- **Store trouble ends runs, it does not wedge them.** A stalled store fails every open run
  (``store_unavailable``); a conversation whose writes were rejected fails its runs, and their
  ``done`` is numbered from the reloaded, committed counter.

This module is the run's life (start, drive, end, cancel, shutdown); its helpers, one job
each: ``opening.py`` (ids, input, the conversation a start runs in), ``run_writes.py`` (how
events and the one ``done`` are queued), ``recovery.py`` (runs a process did not end
itself), ``store_trouble.py`` (the writer's stalled/rejected hooks).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from app import metrics
from app.agents.base import Agent
from app.agents.registry import AgentRegistry
from app.clock import now_ms
from app.engine import recovery
from app.engine.context import AgentContext
from app.engine.conversations import Conversations
from app.engine.event_log import BrokenConversation
from app.engine.inputs import InputBroker
from app.engine.opening import open_conversation, parse_input, run_record
from app.engine.outcomes import cancelled, failed
from app.engine.run_writes import RunWrites, SideOps
from app.engine.state import ActiveRun, Conversation
from app.engine.store_trouble import StoreTrouble
from app.errors import Unavailable, shutting_down
from app.store.base import EventStore
from app.store.ops import PutConversation, PutIdempotency
from app.store.records import IdempotencyRecord, RunRecord
from app.store.writer import StoreRejected, StoreUnavailable
from protocol.events import RunCancelling, RunCancellingData, RunStarted, RunStartedData
from protocol.messages import ErrorDetail, StartRunRequest

log = structlog.get_logger(__name__)


class IdempotencyKey(Protocol):
    """An ``Idempotency-Key`` to commit with a start (engine/starts.py)."""

    def record(self, run: RunRecord) -> IdempotencyRecord: ...


class RunLifecycle:
    """Owns the active runs and their tasks: a run is started here, driven by its own task
    (not by any connection), ended with exactly one ``done``, cancelled, or interrupted at
    shutdown."""

    def __init__(
        self,
        store: EventStore,
        conversations: Conversations,
        agents: AgentRegistry,
        *,
        input_timeout: float,
        run_timeout: float,
        ack_timeout: float,
    ) -> None:
        self.store = store
        self.conversations = conversations
        self.agents = agents
        self.run_timeout = run_timeout
        self.ack_timeout = ack_timeout
        self.active: dict[str, ActiveRun] = {}
        self.accepting = True
        self.writes = RunWrites(store, conversations)
        self.inputs = InputBroker(self.writes.emit_with_row, self.writes.emit_with_ack,
                                  input_timeout)
        # Told the conversation id whenever a run leaves ``active`` (the multitask queue).
        self.on_forget: Callable[[str], None] | None = None
        trouble = StoreTrouble(conversations, self.active)
        store.writer.on_stalled = trouble.fail_all
        store.writer.on_rejected = trouble.on_rejected

    @property
    def side_ops(self) -> SideOps | None:
        """Extra ops committed with a lifecycle event (webhook outbox rows); the engine
        knows nothing of webhooks, the server wires this."""
        return self.writes.side_ops

    @side_ops.setter
    def side_ops(self, hook: SideOps | None) -> None:
        self.writes.side_ops = hook

    async def ack(self, committed: asyncio.Future[None]) -> None:
        """Wait for a client-visible change to be durable, or refuse with 503."""
        try:
            async with asyncio.timeout(self.ack_timeout):
                await asyncio.shield(committed)
        except TimeoutError:
            raise Unavailable("store_unavailable", "the store did not commit in time") from None
        except (StoreRejected, StoreUnavailable) as exc:
            raise Unavailable("store_unavailable", str(exc)) from None

    # ---- start --------------------------------------------------------------------------

    async def start(
        self,
        req: StartRunRequest,
        owner: str | None,
        admin: bool,
        *,
        gate: Callable[[Conversation], None] | None = None,
        idempotency: IdempotencyKey | None = None,
        queued: RunRecord | None = None,
    ) -> ActiveRun:
        """Start a run and return once its ``run_started`` is durable.

        ``gate`` sees the conversation in the same synchronous step that makes the run
        active (so two starts cannot both pass a "nothing is running" check) and may raise
        to refuse; ``idempotency`` commits the key with the start; ``queued`` is the row of
        an enqueued start whose turn came (it keeps its run id).

        Just over 40 lines: everything from the gate to ``conv.active_runs += 1`` must stay
        one visible synchronous stretch (no await), and splitting it would hide that."""
        agent, parsed = await self._admit(req)
        conv, opening = await open_conversation(
            self.store, self.conversations, req.conversation_id, owner, admin)
        if not self.accepting:
            raise shutting_down()
        # From the gate to ``conv.active_runs += 1`` one synchronous stretch: no await.
        if gate is not None:
            gate(conv)
        ts = now_ms()
        record = run_record(req, agent, conv, queued, ts)
        run = ActiveRun(record, conv, agent, parsed, visible=record)
        started = self.writes.number(run, RunStarted, RunStartedData(
            input=req.input, on_disconnect=req.on_disconnect, metadata=req.metadata))
        conv.record.updated_at = ts
        keys = [PutIdempotency(idempotency.record(record))] if idempotency else []
        committed = self.writes.queue(
            run, [*opening, started, PutConversation.of(conv.record), *keys])
        self.active[record.run_id] = run
        conv.active_runs += 1
        run.started = asyncio.get_running_loop().create_future()
        run.task = asyncio.create_task(self._drive(run, committed), name=f"run:{record.run_id}")
        await asyncio.shield(run.started)
        log.info("run_started", run_id=record.run_id, conversation_id=record.conversation_id,
                 agent=agent.name)
        return run

    async def _admit(self, req: StartRunRequest) -> tuple[Agent, Any]:
        """Refuse a start early: shutting down, an unknown agent or bad input, a store that
        is down or whose queue is full (this waits for room: producer backpressure)."""
        if not self.accepting:
            raise shutting_down()
        agent = self.agents.get(req.agent)
        parsed = parse_input(agent, req.input)
        try:
            self.store.check_available()
            await self.store.wait_for_room()
        except StoreUnavailable as exc:
            raise Unavailable("store_unavailable", str(exc)) from None
        return agent, parsed

    def check_input(self, req: StartRunRequest) -> None:
        """Refuse a start whose agent or input is wrong now, not when its turn comes."""
        parse_input(self.agents.get(req.agent), req.input)

    async def end_unstarted(self, record: RunRecord, status: str,
                            error: ErrorDetail | None) -> asyncio.Future[None] | None:
        """End a run that never started (run_writes.py); returns the commit."""
        return await self.writes.end_unstarted(record, status, error)

    # ---- the run ------------------------------------------------------------------------

    async def _drive(self, run: ActiveRun, committed: asyncio.Future[None]) -> None:
        """The run's task: wait for the start to commit, run the agent, end with one ``done``
        whatever happened (outcomes.py names the status)."""
        structlog.contextvars.bind_contextvars(
            run_id=run.run_id, conversation_id=run.record.conversation_id
        )
        status, error = "completed", None
        try:
            if not await self._await_start(run, committed):
                return
            if run.cancel_requested:
                status = "cancelled"
            elif run.failure is not None:
                status, error = "failed", run.failure
            else:
                run.agent_task = asyncio.create_task(
                    run.agent.run(AgentContext(self, run), run.parsed_input),
                    name=f"agent:{run.run_id}",
                )
                async with asyncio.timeout(self.run_timeout):
                    await run.agent_task
        except asyncio.CancelledError:
            ended = cancelled(run)
            if ended is None:
                raise
            status, error = ended
        except Exception as exc:
            status, error = failed(run, exc, self.run_timeout)
        finally:
            await self._finish(run, status, error)

    async def _await_start(self, run: ActiveRun, committed: asyncio.Future[None]) -> bool:
        """Wait for ``run_started`` to commit; tell ``start`` the outcome (one decision).

        False when nothing of the run was stored (rejected): the run vanishes quietly."""
        assert run.started is not None
        try:
            async with asyncio.timeout(self.ack_timeout):
                await committed
        except StoreRejected as exc:
            run.ended = True
            self._forget(run)
            run.started.set_exception(Unavailable("store_unavailable", str(exc)))
            return False
        except (TimeoutError, StoreUnavailable) as exc:
            run.started.set_exception(
                Unavailable("store_unavailable", "the store did not commit the start in time"))
            raise StoreUnavailable(str(exc) or "the start was not stored in time") from None
        run.started.set_result(None)
        return True

    async def _finish(self, run: ActiveRun, status: str, error: ErrorDetail | None) -> None:
        if run.ended:
            return
        run.ended = True
        if run.pending is not None:
            run.pending.future.cancel()
            run.pending = None
        try:
            if run.conversation.broken:
                await self.writes.write_done_reloaded(run.record, status, error)
            else:
                self.writes.write_done(run.record, run.conversation, status, error,
                                       run.record.events + 1)
        except (StoreUnavailable, BrokenConversation) as exc:
            # The store is closed or lost this conversation: recovery ends the run.
            log.error("run_done_not_queued", run_id=run.run_id, error=str(exc))
        finally:
            self._forget(run)
            metrics.RUNS_ENDED.labels(status).inc()
            log.info("run_ended", run_id=run.run_id, status=status,
                     error=error.code if error else None, events=run.record.events)

    def _forget(self, run: ActiveRun) -> None:
        if self.active.pop(run.run_id, None) is not None:
            run.conversation.active_runs -= 1
            if self.on_forget is not None:
                self.on_forget(run.record.conversation_id)

    # ---- cancel -------------------------------------------------------------------------

    def request_cancel(self, run_id: str, reason: str) -> asyncio.Future[None] | None:
        """Cancel an active run (synchronous, safe inside cleanup). Returns the commit of
        ``run_cancelling`` to wait on, or None when the run is not active or already
        cancelling (idempotent)."""
        run = self.active.get(run_id)
        if run is None or run.cancel_requested or run.ended:
            return None
        run.cancel_requested = True
        committed: asyncio.Future[None] | None = None
        try:
            committed = self.writes.queue(run, [self.writes.number(
                run, RunCancelling, RunCancellingData(reason=reason))])
        except (StoreUnavailable, BrokenConversation) as exc:
            log.warning("run_cancelling_not_queued", run_id=run_id, error=str(exc))
        if run.agent_task is not None:
            run.agent_task.cancel()
        log.info("run_cancel_requested", run_id=run_id, reason=reason)
        return committed

    # ---- recovery, shutdown -------------------------------------------------------------

    async def recover(self) -> int:
        """End runs a previous process left open (recovery.py)."""
        return await recovery.recover(self.writes)

    async def end_orphans(self, conversation_ids: set[str]) -> int:
        """End the open runs of conversations taken over from a dead node (recovery.py)."""
        return await recovery.end_orphans(self.writes, conversation_ids, self.active)

    async def shutdown(self, grace: float) -> None:
        """Stop taking runs; end open ones ``interrupted``; wait for their ``done``."""
        self.accepting = False
        runs = list(self.active.values())
        for run in runs:
            run.shutting_down = True
            if run.agent_task is not None:
                run.agent_task.cancel()
        tasks = [r.task for r in runs if r.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()

