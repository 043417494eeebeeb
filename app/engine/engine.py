"""The session engine: conversations, runs and their state machine, seq, input, cancel.

Agents run as background tasks owned here, not by any connection, so a run outlives the
client that started it. Every event gets its conversation ``seq`` synchronously and goes
to the store; the store's commit publishes it to the hub. Every run ends with exactly one
``done`` (``_finish`` is the only place that writes it, guarded by ``ended``).
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections import OrderedDict
from typing import Any

import msgspec
import structlog

from app import metrics
from app.agents.base import MISSING, Agent, AgentError, AgentInputError
from app.agents.registry import AgentRegistry
from app.engine.runs import ActiveRun, Conversation, PendingRequest
from app.errors import Conflict, Expired, InvalidInput, Unavailable, not_found, shutting_down
from app.fanout.hub import Hub
from app.store.base import (
    AppendEvent,
    ConversationRecord,
    EventStore,
    PutConversation,
    PutRun,
    RunRecord,
    StoreUnavailable,
    now_ms,
)
from protocol.codec import EncodedEvent
from protocol.events import (
    EVENT_CLASSES,
    FINAL_STATUSES,
    ConversationStarted,
    ConversationStartedData,
    Done,
    DoneData,
    ErrorInfo,
    EventBase,
    RequireUserInput,
    RequireUserInputData,
    RunCancelling,
    RunCancellingData,
    RunStarted,
    RunStartedData,
    UserInputReceived,
    UserInputReceivedData,
)
from protocol.messages import ErrorDetail, PendingInput, RunInfo, StartRunRequest

log = structlog.get_logger(__name__)

# Lifecycle events only the engine may write.
ENGINE_TYPES = frozenset(
    {
        "conversation_started",
        "run_started",
        "require_user_input",
        "user_input_received",
        "run_cancelling",
        "done",
    }
)
RECENT_RUNS = 10_000


class InputTimeout(Exception):
    pass


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


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
    ) -> None:
        self.store = store
        self.hub = hub
        self.agents = agents
        self.input_timeout = input_timeout
        self.run_timeout = run_timeout
        self.active: dict[str, ActiveRun] = {}
        self._recent: OrderedDict[str, RunRecord] = OrderedDict()
        # Live conversation state, least recently used first. Bounded: idle conversations past
        # ``max_conversations`` are dropped and reloaded from the store when next used.
        self._conversations: OrderedDict[str, Conversation] = OrderedDict()
        self.max_conversations = max_conversations
        self.conversation_idle = conversation_idle
        self._loading: dict[str, asyncio.Future[Conversation | None]] = {}
        self.accepting = True
        store.add_commit_listener(hub.publish)

    # ---- start-up and shutdown ----------------------------------------------------------

    async def recover(self) -> int:
        """End runs a previous process left open with ``done {interrupted}``."""
        records = await self.store.unfinished_runs()
        for record in records:
            conv = await self.conversation(record.conversation_id)
            if conv is None:
                continue
            events = await self.store.count_run_events(record)
            await self._write_done(
                record,
                conv,
                "interrupted",
                ErrorDetail("server_restarted", "the server stopped while this run was open"),
                events + 1,
            )
            log.info("run_interrupted", run_id=record.run_id, events=events + 1)
        return len(records)

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

    # ---- conversations ------------------------------------------------------------------

    async def conversation(self, conversation_id: str) -> Conversation | None:
        """The live state of a stored conversation (loaded once, even under races)."""
        conv = self._conversations.get(conversation_id)
        if conv is not None:
            conv.used_at = time.monotonic()
            self._conversations.move_to_end(conversation_id)
            return conv
        fut = self._loading.get(conversation_id)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._loading[conversation_id] = fut
        try:
            record = await self.store.get_conversation(conversation_id)
            conv = None
            if record is not None:
                conv = self._conversations.get(conversation_id)
                if conv is None:
                    seq = await self.store.last_seq(conversation_id)
                    conv = Conversation(record, seq)
                    self._keep(conv)
                    self.hub.note_committed(conversation_id, seq)
            fut.set_result(conv)
            return conv
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved
            raise
        finally:
            del self._loading[conversation_id]

    async def _open_conversation(
        self, conversation_id: str | None, owner: str | None, admin: bool
    ) -> Conversation:
        if conversation_id is not None:
            conv = await self.conversation(conversation_id)
            if conv is None and await self.store.is_expired(conversation_id):
                await self._raise_missing("conversation", conversation_id)
            if conv is not None:
                if not admin and conv.record.owner not in (None, owner):
                    raise not_found("conversation", conversation_id)
                return conv
            # A concurrent request may have created it while we looked.
            conv = self._conversations.get(conversation_id)
            if conv is not None:
                return conv
        cid = conversation_id or new_id("c")
        ts = now_ms()
        conv = Conversation(ConversationRecord(cid, ts, ts, owner), 0)
        self._keep(conv)
        self.store.enqueue(PutConversation(conv.record))
        self._append(conv, ConversationStarted, ConversationStartedData(), None, None)
        return conv

    def _keep(self, conv: Conversation) -> None:
        """Add live state, evicting idle conversations beyond the bound (oldest first).

        Evictable: no run in progress, no subscriber, every assigned seq committed (so the
        store's last seq is the truth on reload), and unused for ``conversation_idle``
        seconds (so no handler still holds the object across an await)."""
        self._conversations[conv.record.conversation_id] = conv
        excess = len(self._conversations) - self.max_conversations
        if excess <= 0:
            return
        now = time.monotonic()
        for cid, old in list(itertools.islice(self._conversations.items(), excess + 64)):
            if excess <= 0:
                break
            if (old is not conv and old.active_runs == 0 and not self.hub.has_subscribers(cid)
                    and self.hub.published_seq(cid) >= old.seq
                    and now - old.used_at >= self.conversation_idle):
                del self._conversations[cid]
                self.hub.forget(cid)
                excess -= 1

    @property
    def conversations_in_memory(self) -> int:
        return len(self._conversations)

    def forget_conversations(self, ids: list[str]) -> None:
        """Drop expired conversations from memory (the store already deleted them)."""
        gone = set(ids)
        for cid in ids:
            self._conversations.pop(cid, None)
            self.hub.forget(cid)
        for run_id in [r for r, rec in self._recent.items() if rec.conversation_id in gone]:
            del self._recent[run_id]

    # ---- runs ---------------------------------------------------------------------------

    async def start_run(
        self, req: StartRunRequest, owner: str | None = None, admin: bool = True
    ) -> ActiveRun:
        """Start a run; ``owner`` (None without auth) owns a new conversation, and only it (or
        an admin) may start runs in an existing one."""
        if not self.accepting:
            raise shutting_down()
        agent = self.agents.get(req.agent)
        parsed = self._parse_input(agent, req.input)
        try:
            await self.store.wait_for_room()
        except StoreUnavailable as exc:
            raise Unavailable("store_unavailable", str(exc)) from None
        conv = await self._open_conversation(req.conversation_id, owner, admin)
        ts = now_ms()
        record = RunRecord(
            run_id=new_id("r"),
            conversation_id=conv.record.conversation_id,
            agent=agent.name,
            status="running",
            created_at=ts,
            started_at=ts,
            input=req.input,
            on_disconnect=req.on_disconnect,
            metadata=req.metadata,
            owner=conv.record.owner,
            first_seq=conv.seq + 1,
        )
        run = ActiveRun(record, conv, agent, parsed)
        self.active[record.run_id] = run
        conv.active_runs += 1
        self._touch(conv)
        self._emit_now(
            run,
            RunStarted,
            RunStartedData(input=req.input, on_disconnect=req.on_disconnect, metadata=req.metadata),
        )
        self.store.enqueue(PutRun(record))
        run.task = asyncio.create_task(self._drive(run), name=f"run:{record.run_id}")
        log.info("run_started", run_id=record.run_id, conversation_id=record.conversation_id,
                 agent=agent.name)
        return run

    @staticmethod
    def _parse_input(agent: Agent, raw: Any) -> Any:
        try:
            return agent.parse_input(raw)
        except AgentInputError as exc:
            raise InvalidInput("invalid_input", f"{agent.name}: {exc}") from None

    async def _drive(self, run: ActiveRun) -> None:
        structlog.contextvars.bind_contextvars(
            run_id=run.run_id, conversation_id=run.record.conversation_id
        )
        status, error = "completed", None
        try:
            if run.cancel_requested:
                status = "cancelled"
            else:
                ctx = _Context(self, run)
                run.agent_task = asyncio.create_task(
                    run.agent.run(ctx, run.parsed_input), name=f"agent:{run.run_id}"
                )
                async with asyncio.timeout(self.run_timeout):
                    await run.agent_task
        except asyncio.CancelledError:
            if run.shutting_down:
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
                "run_timeout", f"the run took longer than {self.run_timeout}s"
            )
        except InputTimeout as exc:
            status, error = "failed", ErrorDetail("input_timeout", str(exc))
        except AgentError as exc:
            status, error = "failed", ErrorDetail(exc.code, exc.message)
        except StoreUnavailable as exc:
            status, error = "failed", ErrorDetail("store_unavailable", str(exc))
        except Exception as exc:
            log.exception("agent_crashed")
            status, error = "failed", ErrorDetail("agent_error", f"{type(exc).__name__}: {exc}")
        finally:
            await self._finish(run, status, error)

    async def _finish(self, run: ActiveRun, status: str, error: ErrorDetail | None) -> None:
        if run.ended:
            return
        run.ended = True
        if run.pending is not None:
            run.pending.future.cancel()
            run.pending = None
        await self._write_done(run.record, run.conversation, status, error, run.record.events + 1)
        self.active.pop(run.run_id, None)
        run.conversation.active_runs -= 1
        self._remember(run.record)
        metrics.RUNS_ENDED.labels(status).inc()
        log.info("run_ended", run_id=run.run_id, status=status,
                 error=error.code if error else None, events=run.record.events)

    async def _write_done(
        self,
        record: RunRecord,
        conv: Conversation,
        status: str,
        error: ErrorDetail | None,
        events: int,
    ) -> None:
        assert status in FINAL_STATUSES
        info = ErrorInfo(error.code, error.message) if error else None
        done = self._append(
            conv, Done, DoneData(status=status, events=events, error=info),  # type: ignore[arg-type]
            record.run_id, record.agent,
        )
        record.status = status
        record.ended_at = now_ms()
        record.events = events
        record.done_seq = done.seq
        record.error = error
        record.pending_input = None
        self._touch(conv)
        self.store.enqueue(PutRun(record))

    def _remember(self, record: RunRecord) -> None:
        self._recent[record.run_id] = record
        while len(self._recent) > RECENT_RUNS:
            self._recent.popitem(last=False)

    def _touch(self, conv: Conversation) -> None:
        conv.record.updated_at = now_ms()
        self.store.enqueue(PutConversation(conv.record))

    async def get_run(self, run_id: str) -> RunRecord:
        run = self.active.get(run_id)
        if run is not None:
            return run.record
        record = self._recent.get(run_id) or await self.store.get_run(run_id)
        if record is None:
            await self._raise_missing("run", run_id)
        assert record is not None
        return record

    async def require_conversation(self, conversation_id: str) -> Conversation:
        conv = await self.conversation(conversation_id)
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

    @staticmethod
    def run_info(record: RunRecord) -> RunInfo:
        return RunInfo(
            run_id=record.run_id,
            conversation_id=record.conversation_id,
            agent=record.agent,
            status=record.status,
            created_at=record.created_at,
            started_at=record.started_at,
            ended_at=record.ended_at,
            events=record.events,
            done_seq=record.done_seq,
            error=record.error,
            pending_input=record.pending_input,
            metadata=record.metadata,
        )

    # ---- events -------------------------------------------------------------------------

    def _append(
        self,
        conv: Conversation,
        cls: type[EventBase],
        data: msgspec.Struct,
        run_id: str | None,
        agent: str | None,
        item_id: str | None = None,
        thread_id: str | None = None,
        task_id: str | None = None,
    ) -> EncodedEvent:
        """Number, encode (once) and queue one event. Synchronous: seq order is queue order."""
        conv.seq += 1
        ts = now_ms()
        event = cls(  # type: ignore[call-arg]
            seq=conv.seq,
            conversation_id=conv.record.conversation_id,
            run_id=run_id,
            agent=agent,
            ts=ts,
            item_id=item_id,
            thread_id=thread_id,
            task_id=task_id,
            data=data,
        )
        encoded = EncodedEvent.from_event(event)
        self.store.enqueue(AppendEvent(encoded, ts))
        return encoded

    def _emit_now(
        self, run: ActiveRun, cls: type[EventBase], data: msgspec.Struct, **ids: str | None
    ) -> EncodedEvent:
        run.record.events += 1
        return self._append(run.conversation, cls, data, run.run_id, run.agent.name, **ids)

    async def emit(
        self,
        run: ActiveRun,
        cls: type[EventBase],
        data: msgspec.Struct,
        **ids: str | None,
    ) -> EncodedEvent:
        """Producer path: waits while the store is above its high-water mark."""
        await self.store.wait_for_room()
        if run.ended:
            raise RuntimeError("the run has ended")
        return self._emit_now(run, cls, data, **ids)

    # ---- user input ---------------------------------------------------------------------

    async def ask(
        self,
        run: ActiveRun,
        prompt: str,
        choices: list[Any] | None,
        schema: dict[str, Any] | None,
        timeout: float | None,
        default: Any,
    ) -> Any:
        deadline = timeout if timeout is not None else self.input_timeout
        expires_at = now_ms() + int(deadline * 1000)
        request_id = new_id("q")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        has_default = default is not MISSING
        run.pending = PendingRequest(request_id, fut, choices, expires_at)
        run.record.status = "waiting_input"
        run.record.pending_input = PendingInput(request_id, prompt, choices, schema, expires_at)
        await self.emit(
            run,
            RequireUserInput,
            RequireUserInputData(
                request_id=request_id, prompt=prompt, choices=choices, schema=schema,
                expires_at=expires_at, default=default if has_default else None,
                has_default=has_default,
            ),
        )
        self.store.enqueue(PutRun(run.record))
        metrics.INPUT_PENDING.inc()
        try:
            try:
                async with asyncio.timeout(deadline):
                    return await fut
            except TimeoutError:
                if fut.done() and not fut.cancelled():
                    return fut.result()
                run.pending = None
                run.expired.add(request_id)
                if not has_default:
                    raise InputTimeout(
                        f"no answer to {request_id} within {deadline:g}s"
                    ) from None
                await self.emit(
                    run, UserInputReceived,
                    UserInputReceivedData(request_id=request_id, value=default, source="default"),
                )
                return default
        finally:
            metrics.INPUT_PENDING.dec()
            if run.pending is not None and run.pending.request_id == request_id:
                run.pending = None
            if not run.ended:
                run.record.status = "running"
                run.record.pending_input = None
                self.store.enqueue(PutRun(run.record))

    async def answer(self, run_id: str, request_id: str, value: Any) -> None:
        """First answer wins, across every transport: check and take are one step."""
        run = self.active.get(run_id)
        if run is None:
            record = await self.get_run(run_id)  # 404 when unknown
            if request_id in record.answered:
                raise Conflict("input_already_answered",
                               f"request {request_id!r} was already answered")
            raise Conflict("run_ended", f"run {run_id!r} has ended")
        pending = run.pending
        if pending is None or pending.request_id != request_id:
            if request_id in run.record.answered:
                raise Conflict("input_already_answered",
                               f"request {request_id!r} was already answered")
            if request_id in run.expired:
                raise Conflict("input_expired", f"request {request_id!r} has expired")
            raise not_found("input_request", request_id)
        if pending.choices is not None and value not in pending.choices:
            raise InvalidInput("invalid_input_value",
                           f"value must be one of {pending.choices!r}")
        run.pending = None
        run.record.answered.append(request_id)
        run.record.status = "running"
        run.record.pending_input = None
        pending.future.set_result(value)
        self._emit_now(
            run, UserInputReceived, UserInputReceivedData(request_id=request_id, value=value)
        )

    # ---- cancel -------------------------------------------------------------------------

    async def cancel(self, run_id: str, reason: str = "requested") -> tuple[bool, RunRecord]:
        """Idempotent. Returns (still_running, record)."""
        if self.request_cancel(run_id, reason):
            return True, self.active[run_id].record
        return False, await self.get_run(run_id)

    def request_cancel(self, run_id: str, reason: str) -> bool:
        """Synchronous cancel of an active run (safe inside cleanup); False if not active."""
        run = self.active.get(run_id)
        if run is None:
            return False
        if not run.cancel_requested and not run.ended:
            run.cancel_requested = True
            self._emit_now(run, RunCancelling, RunCancellingData(reason=reason))
            if run.agent_task is not None:
                run.agent_task.cancel()
            log.info("run_cancel_requested", run_id=run_id, reason=reason)
        return True

    def refresh_gauges(self) -> None:
        counts: dict[str, int] = {"running": 0, "waiting_input": 0, "queued": 0}
        for run in self.active.values():
            counts[run.record.status] = counts.get(run.record.status, 0) + 1
        for status, n in counts.items():
            metrics.RUNS_ACTIVE.labels(status).set(n)


class _Context:
    """The RunContext an agent sees: emit content, ask for input; nothing else."""

    def __init__(self, engine: Engine, run: ActiveRun) -> None:
        self._engine = engine
        self._run = run
        self.run_id = run.run_id
        self.conversation_id = run.record.conversation_id
        self.agent = run.agent.name

    async def emit(
        self,
        event_type: str,
        data: msgspec.Struct,
        *,
        item_id: str | None = None,
        thread_id: str | None = None,
        task_id: str | None = None,
    ) -> int:
        cls = EVENT_CLASSES.get(event_type)
        if cls is None or event_type in ENGINE_TYPES:
            raise ValueError(f"agents cannot emit {event_type!r}")
        ev = await self._engine.emit(
            self._run, cls, data, item_id=item_id, thread_id=thread_id, task_id=task_id
        )
        return ev.seq

    async def ask(
        self,
        prompt: str,
        *,
        choices: list[Any] | None = None,
        schema: dict[str, Any] | None = None,
        timeout: float | None = None,
        default: Any = MISSING,
    ) -> Any:
        return await self._engine.ask(self._run, prompt, choices, schema, timeout, default)
