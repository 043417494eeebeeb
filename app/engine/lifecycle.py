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
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol

import msgspec
import structlog

from app import metrics
from app.agents.base import Agent, AgentError, AgentInputError
from app.agents.registry import AgentRegistry
from app.clock import now_ms
from app.engine.context import AgentContext
from app.engine.conversations import Conversations
from app.engine.event_log import BrokenConversation, InvalidEvent, number_event
from app.engine.inputs import InputBroker, InputTimeout
from app.engine.state import ActiveRun, Conversation
from app.errors import Expired, InvalidInput, Unavailable, not_found, shutting_down
from app.ids import scoped
from app.store.base import EventStore
from app.store.ops import AppendEvent, Group, Op, PutConversation, PutIdempotency, PutRun
from app.store.records import ConversationRecord, IdempotencyRecord, RunRecord, decode_run
from app.store.writer import StoreRejected, StoreUnavailable
from protocol.codec import EncodedEvent, decode_event
from protocol.events import (
    FINAL_STATUSES,
    ConversationStarted,
    ConversationStartedData,
    Done,
    DoneData,
    EventBase,
    RunCancelling,
    RunCancellingData,
    RunStarted,
    RunStartedData,
)
from protocol.messages import ErrorDetail, StartRunRequest

log = structlog.get_logger(__name__)
# An agent emitting without awaiting anything yields to the loop after this long (seconds),
# so one busy run cannot starve every other connection.
BURST_SECONDS = 0.0005
BURST_GAP = 0.0005


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def _retrieve(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()


class IdempotencyKey(Protocol):
    """An ``Idempotency-Key`` to commit with a start (engine/starts.py)."""

    def record(self, run: RunRecord) -> IdempotencyRecord: ...


class RunLifecycle:
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
        self.inputs = InputBroker(self._emit_with_row, self._emit_with_ack, input_timeout)
        # Told the conversation id whenever a run leaves ``active`` (the multitask queue).
        self.on_forget: Callable[[str], None] | None = None
        # Extra ops committed with a lifecycle event (webhook outbox rows); the engine knows
        # nothing of webhooks, the server wires this.
        self.side_ops: Callable[[RunRecord, EncodedEvent], list[Op]] | None = None
        store.writer.on_stalled = self.fail_all
        store.writer.on_rejected = self.on_rejected

    # ---- writing events -----------------------------------------------------------------

    def _side(self, record: RunRecord, ops: list[Op]) -> list[Op]:
        """Ops that must commit with these events (webhook deliveries), from ``side_ops``."""
        if self.side_ops is None:
            return []
        return [extra for op in ops if type(op) is AppendEvent
                for extra in self.side_ops(record, op.event)]

    def _queue(self, run: ActiveRun, ops: list[Op]) -> asyncio.Future[None]:
        """Queue ops as one group that also saves the run row; readers see the row once
        it committed."""
        group = Group([*ops, *self._side(run.record, ops), PutRun.of(run.record)], notify=True)
        self.store.enqueue(group)
        assert group.committed is not None
        put = group.ops[-1]
        assert isinstance(put, PutRun)

        def committed(fut: asyncio.Future[None]) -> None:
            if not fut.cancelled() and fut.exception() is None:
                run.visible = decode_run(put.body)

        group.committed.add_done_callback(committed)
        return group.committed

    def _number(self, run: ActiveRun, cls: type[EventBase], data: msgspec.Struct,
                **ids: str | None) -> AppendEvent:
        op = number_event(run.conversation, cls, data, run.run_id, run.agent.name, **ids)
        run.record.events += 1
        return op

    async def _emit_with_row(self, run: ActiveRun, cls: type[EventBase],
                             data: msgspec.Struct) -> None:
        await self.store.wait_for_room()
        self._check_open(run)
        self._queue(run, [self._number(run, cls, data)])

    def _emit_with_ack(self, run: ActiveRun, cls: type[EventBase],
                       data: msgspec.Struct) -> asyncio.Future[None]:
        return self._queue(run, [self._number(run, cls, data)])

    @staticmethod
    def _check_open(run: ActiveRun) -> None:
        if run.ended or run.failure is not None:
            raise RuntimeError("the run has ended")

    async def emit(self, run: ActiveRun, cls: type[EventBase], data: msgspec.Struct,
                   **ids: str | None) -> EncodedEvent:
        """The agent's path: backpressure from the store, fairness to other tasks."""
        await self.store.wait_for_room()
        self._check_open(run)
        now = time.perf_counter()
        if now - run.burst_started > BURST_SECONDS and now - run.last_emit < BURST_GAP:
            await asyncio.sleep(0)
            self._check_open(run)
            now = time.perf_counter()
            run.burst_started = now
        elif now - run.last_emit >= BURST_GAP:
            run.burst_started = now
        run.last_emit = now
        op = self._number(run, cls, data, **ids)
        self.store.enqueue(op)
        return op.event

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

        Over 40 lines on purpose: everything from the gate to ``conv.active_runs += 1`` must
        stay one synchronous stretch (no await), and splitting it would hide that."""
        if not self.accepting:
            raise shutting_down()
        agent = self.agents.get(req.agent)
        parsed = _parse_input(agent, req.input)
        try:
            self.store.check_available()
            await self.store.wait_for_room()
        except StoreUnavailable as exc:
            raise Unavailable("store_unavailable", str(exc)) from None
        conv, opening = await self._open_conversation(req.conversation_id, owner, admin)
        if not self.accepting:
            raise shutting_down()
        if gate is not None:
            gate(conv)
        ts = now_ms()
        record = RunRecord(
            run_id=queued.run_id if queued else new_id("r"),
            conversation_id=conv.record.conversation_id, agent=agent.name,
            status="running", created_at=queued.created_at if queued else ts, started_at=ts,
            input=req.input, on_disconnect=req.on_disconnect, metadata=req.metadata,
            owner=conv.record.owner, first_seq=conv.seq + 1, webhook_url=req.webhook_url,
        )
        run = ActiveRun(record, conv, agent, parsed, visible=record)
        started = self._number(run, RunStarted, RunStartedData(
            input=req.input, on_disconnect=req.on_disconnect, metadata=req.metadata))
        conv.record.updated_at = ts
        keys = [PutIdempotency(idempotency.record(record))] if idempotency else []
        committed = self._queue(run, [*opening, started, PutConversation.of(conv.record),
                                      *keys])
        self.active[record.run_id] = run
        conv.active_runs += 1
        run.started = asyncio.get_running_loop().create_future()
        run.task = asyncio.create_task(self._drive(run, committed), name=f"run:{record.run_id}")
        await asyncio.shield(run.started)
        log.info("run_started", run_id=record.run_id, conversation_id=record.conversation_id,
                 agent=agent.name)
        return run

    def check_input(self, req: StartRunRequest) -> None:
        """Refuse a start whose agent or input is wrong now, not when its turn comes."""
        _parse_input(self.agents.get(req.agent), req.input)

    async def end_unstarted(self, record: RunRecord, status: str,
                            error: ErrorDetail | None) -> asyncio.Future[None] | None:
        """End a run that never started (an enqueued start that was cancelled, failed to
        start, or outlived the server): its ``done`` is its one event. Returns the commit."""
        conv = await self.conversations.get(record.conversation_id)
        if conv is None:
            return None
        record.first_seq = conv.seq + 1
        metrics.RUNS_ENDED.labels(status).inc()
        return self._write_done(record, conv, status, error, 1)

    async def _open_conversation(
        self, conversation_id: str | None, owner: str | None, admin: bool
    ) -> tuple[Conversation, list[Op]]:
        """The conversation to run in, and the ops that create it if it is new.
        ``conversation_id`` is public: it names a conversation in ``owner``'s namespace."""
        if conversation_id is not None:
            key = scoped(owner, conversation_id)
            conv = await self.conversations.get(key)
            if conv is None and await self.store.is_expired(key):
                raise Expired("conversation_expired",
                              f"conversation {conversation_id!r} has expired")
            if conv is not None:
                if not admin and conv.record.owner not in (None, owner):
                    raise not_found("conversation", conversation_id)
                return conv, []
            # A concurrent request may have created it while we looked.
            conv = self.conversations.cached(key)
            if conv is not None:
                return conv, []
        ts = now_ms()
        record = ConversationRecord(scoped(owner, conversation_id or new_id("c")), ts, ts, owner)
        conv = Conversation(record, 0)
        self.conversations.add(conv)
        opening = number_event(conv, ConversationStarted, ConversationStartedData(), None, None)
        return conv, [PutConversation.of(record), opening]

    # ---- the run ------------------------------------------------------------------------

    async def _drive(self, run: ActiveRun, committed: asyncio.Future[None]) -> None:
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
            if run.failure is not None:
                status, error = "failed", run.failure
            elif run.shutting_down:
                status = "interrupted"
                error = ErrorDetail("server_shutdown", "the server shut down during the run")
            elif run.cancel_requested:
                status = "cancelled"
            else:
                raise
        except TimeoutError:
            if run.agent_task is not None:
                run.agent_task.cancel()
            status, error = "failed", ErrorDetail(
                "run_timeout", f"the run took longer than {self.run_timeout}s")
        except InputTimeout as exc:
            status, error = "failed", ErrorDetail("input_timeout", str(exc))
        except AgentError as exc:
            status, error = "failed", ErrorDetail(exc.code, exc.message)
        except InvalidEvent as exc:
            status, error = "failed", ErrorDetail("invalid_event", str(exc))
        except (StoreUnavailable, BrokenConversation) as exc:
            status, error = "failed", run.failure or ErrorDetail("store_unavailable", str(exc))
        except Exception as exc:
            log.exception("agent_crashed")
            status, error = "failed", ErrorDetail("agent_error", f"{type(exc).__name__}: {exc}")
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
                await self._write_done_reloaded(run.record, status, error)
            else:
                self._write_done(run.record, run.conversation, status, error,
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

    def _write_done(self, record: RunRecord, conv: Conversation, status: str,
                    error: ErrorDetail | None, events: int) -> asyncio.Future[None]:
        """The ``done``, the final row and the conversation update: one atomic group."""
        assert status in FINAL_STATUSES
        done = number_event(conv, Done, DoneData(status=status, events=events, error=error),  # type: ignore[arg-type]
                            record.run_id, record.agent)
        record.status = status
        record.ended_at = conv.record.updated_at = now_ms()
        record.events = events
        record.done_seq = done.event.seq
        record.error = error
        record.pending_input = None
        group = Group([done, *self._side(record, [done]), PutRun.of(record),
                       PutConversation.of(conv.record)], notify=True)
        self.store.enqueue(group)
        assert group.committed is not None
        # Nobody may wait on it (a run's own end): retrieve a failure so it is not logged.
        group.committed.add_done_callback(_retrieve)
        return group.committed

    async def _write_done_reloaded(self, record: RunRecord, status: str,
                                   error: ErrorDetail | None) -> None:
        """End a run from what is committed (after a restart, or a rejected write)."""
        count, done = await self.store.run_events(record)
        if done is not None or count == 0:
            return  # ended already, or nothing of it was ever stored
        conv = await self.conversations.get(record.conversation_id)
        if conv is None:
            return
        record.events = count
        self._write_done(record, conv, status, error, count + 1)

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
            committed = self._queue(run, [self._number(run, RunCancelling,
                                                       RunCancellingData(reason=reason))])
        except (StoreUnavailable, BrokenConversation) as exc:
            log.warning("run_cancelling_not_queued", run_id=run_id, error=str(exc))
        if run.agent_task is not None:
            run.agent_task.cancel()
        log.info("run_cancel_requested", run_id=run_id, reason=reason)
        return committed

    # ---- store trouble, recovery, shutdown ---------------------------------------------

    def fail_all(self, exc: StoreUnavailable) -> None:
        """The store has failed for too long: end every open run ``failed``."""
        for run in list(self.active.values()):
            self._fail(run, ErrorDetail("store_unavailable", str(exc)))

    def on_rejected(self, conversation_ids: set[str], exc: BaseException) -> None:
        for cid in conversation_ids:
            self.conversations.mark_broken(cid)
            for run in list(self.active.values()):
                if run.record.conversation_id == cid:
                    self._fail(run, ErrorDetail(
                        "store_rejected", f"the store refused this conversation's writes: {exc}"))

    @staticmethod
    def _fail(run: ActiveRun, error: ErrorDetail) -> None:
        if run.ended or run.failure is not None:
            return
        run.failure = error
        if run.agent_task is not None:
            run.agent_task.cancel()

    async def recover(self) -> int:
        """End runs a previous process left open, deciding from what is committed."""
        records = await self.store.unfinished_runs()
        for record in records:
            count, done = await self.store.run_events(record)
            if done is not None:
                self._catch_up_row(record, count, done)
                continue
            if record.status == "queued" and count == 0:
                await self.end_unstarted(record, "interrupted", ErrorDetail(
                    "server_restarted", "the server stopped while this run was queued"))
                continue
            await self._write_done_reloaded(record, "interrupted", ErrorDetail(
                "server_restarted", "the server stopped while this run was open"))
            log.info("run_interrupted", run_id=record.run_id, events=count + 1)
        await self.store.flush()
        return len(records)

    async def end_orphans(self, conversation_ids: set[str]) -> int:
        """End ``interrupted`` the open runs of conversations this node just took over from
        a dead node (their runs died with it); returns how many."""
        orphans = [r for r in await self.store.unfinished_runs()
                   if r.conversation_id in conversation_ids and r.run_id not in self.active]
        for record in orphans:
            await self._write_done_reloaded(record, "interrupted", ErrorDetail(
                "node_lost", "the server running this run stopped; another one ended it"))
            log.info("run_interrupted_node_lost", run_id=record.run_id)
        await self.store.flush()
        return len(orphans)

    def _catch_up_row(self, record: RunRecord, count: int, done: EncodedEvent) -> None:
        """A committed ``done`` wins over a row that says the run is open (older files)."""
        event = decode_event(done.body)
        assert isinstance(event, Done)
        record.status = event.data.status
        record.events = count
        record.done_seq = done.seq
        record.ended_at = event.ts
        record.pending_input = None
        self.store.enqueue(PutRun.of(record))

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


def _parse_input(agent: Agent, raw: Any) -> Any:
    try:
        return agent.parse_input(raw)
    except AgentInputError as exc:
        raise InvalidInput("invalid_input", f"{agent.name}: {exc}") from None
