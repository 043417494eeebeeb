"""Starting a run: the idempotency key first, then the conversation's multitask policy, then
the lifecycle's start.

**Idempotency.** A key is scoped to its user (``owner``, or one anonymous scope without
auth) and committed in the same transaction as the run's start, so a stored key always
points at a stored run. Same key + same body (fingerprint) returns that run; a different
body is ``409 idempotency_key_reused``, never a silent match. The race, written down: two
starts with one key arrive together. The first puts a future in ``_inflight`` *before* its
first await; the second finds it in the same synchronous step and waits for the first's
outcome instead of looking in the store (where the key is not yet committed). One process
owns a database (the store's lock), so this single flight is the whole race; the table's
primary key is the backstop. Keys go with their conversation (retention, ``DELETE``).

**Multitask policy** for a start while another run of the conversation is active (or
queued): ``reject`` (the default, ``409 conversation_busy``), ``enqueue`` (a ``queued`` run,
started in order when the conversation is free, at most ``MAX_QUEUED`` per conversation),
``interrupt`` (active and queued runs end ``cancelled``, then the new run starts),
``parallel`` (the old behaviour) and ``answer`` (the start's ``input`` answers the question a
run of the conversation is waiting on; no new run). The check is the lifecycle's ``gate``,
run in the same synchronous step that makes the new run active.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from dataclasses import dataclass, field

import msgspec
import structlog

from app.clock import now_ms
from app.engine.lifecycle import RunLifecycle
from app.engine.opening import new_id
from app.engine.state import Conversation
from app.errors import AgentstreamError, Conflict, LimitExceeded, Unavailable
from app.store.base import EventStore
from app.store.ops import Group, PutIdempotency, PutRun
from app.store.records import IdempotencyRecord, RunRecord
from protocol.messages import ErrorDetail, Multitask, StartRunRequest

log = structlog.get_logger(__name__)
DEFAULT_MULTITASK: Multitask = "reject"
MAX_QUEUED = 16  # enqueued starts per conversation
ROUNDS = 3  # interrupt rounds before giving up on a conversation that keeps starting runs


@dataclass(frozen=True)
class Started:
    """What a start did: the run to report, where this caller's stream of it begins, and
    whether it is a run that already existed (an idempotent replay, or an ``answer``)."""

    record: RunRecord
    after: int
    replayed: bool = False


class Busy(Exception):
    """Raised by the gate: the conversation has another run; the policy decides."""

    def __init__(self, conversation: Conversation) -> None:
        super().__init__(conversation.record.conversation_id)
        self.conversation = conversation


@dataclass(frozen=True)
class Key:
    scope: str
    key: str
    fingerprint: str

    def record(self, run: RunRecord) -> IdempotencyRecord:
        return IdempotencyRecord(self.scope, self.key, self.fingerprint, run.run_id,
                                 run.conversation_id, now_ms())


@dataclass
class QueuedStart:
    record: RunRecord
    req: StartRunRequest
    owner: str | None
    admin: bool
    starting: bool = False


@dataclass
class _Flight:
    fingerprint: str
    result: asyncio.Future[Started] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


def fingerprint(req: StartRunRequest) -> str:
    """The request body's identity: canonical JSON (sorted keys), hashed."""
    body = msgspec.json.encode(req, order="sorted")
    return hashlib.sha256(body).hexdigest()


class Starts:
    def __init__(self, runs: RunLifecycle, store: EventStore) -> None:
        self.runs = runs
        self.store = store
        self.queues: dict[str, deque[QueuedStart]] = {}
        self._inflight: dict[tuple[str, str], _Flight] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        runs.on_forget = self._run_ended

    # ---- idempotency ---------------------------------------------------------------------

    async def start(self, req: StartRunRequest, owner: str | None, admin: bool,
                    key: str | None = None) -> Started:
        if key is None:
            return await self._start(req, owner, admin, None)
        slot = (owner or "", key)
        fp = fingerprint(req)
        flight = self._inflight.get(slot)
        if flight is not None:
            _check_same(flight.fingerprint, fp, key)
            first = await asyncio.shield(flight.result)
            return Started(first.record, first.record.first_seq - 1, replayed=True)
        flight = self._inflight[slot] = _Flight(fp)  # before any await: the single flight
        try:
            result = await self._start_keyed(req, owner, admin, Key(*slot, fp))
            flight.result.set_result(result)
            return result
        except BaseException as exc:
            flight.result.set_exception(exc)
            flight.result.exception()  # retrieved: waiters get it through the shield
            raise
        finally:
            del self._inflight[slot]

    async def _start_keyed(self, req: StartRunRequest, owner: str | None, admin: bool,
                           key: Key) -> Started:
        stored = await self.store.get_idempotency(key.scope, key.key)
        if stored is None:
            return await self._start(req, owner, admin, key)
        _check_same(stored.fingerprint, key.fingerprint, key.key)
        run = self.runs.active.get(stored.run_id)
        record = run.visible if run is not None else await self.store.get_run(stored.run_id)
        if record is None:  # unreachable: the key is deleted with its conversation
            raise Conflict("idempotency_key_reused", "the run of this key is gone")
        return Started(record, record.first_seq - 1, replayed=True)

    # ---- the policy ----------------------------------------------------------------------

    def busy(self, conversation: Conversation) -> bool:
        return conversation.active_runs > 0 or bool(
            self.queues.get(conversation.record.conversation_id))

    async def _start(self, req: StartRunRequest, owner: str | None, admin: bool,
                     key: Key | None) -> Started:
        policy = req.multitask or DEFAULT_MULTITASK

        def gate(conv: Conversation) -> None:
            if policy != "parallel" and self.busy(conv):
                raise Busy(conv)

        for _ in range(ROUNDS):
            try:
                run = await self.runs.start(req, owner, admin, gate=gate, idempotency=key)
                return Started(run.record, run.record.first_seq - 1)
            except Busy as busy:
                conv = busy.conversation
            if policy == "enqueue":
                return await self._enqueue(conv, req, owner, admin, key)
            if policy == "answer":
                return await self._answer(conv, req, key)
            if policy == "interrupt":
                await self._interrupt(conv)
                continue
            raise Conflict("conversation_busy",
                           f"conversation {conv.public_id!r} has a run in "
                           "progress (multitask: enqueue, interrupt, parallel or answer)")
        raise Conflict("conversation_busy", "runs kept starting in this conversation")

    async def _answer(self, conv: Conversation, req: StartRunRequest,
                      key: Key | None) -> Started:
        """The start's input answers the question a run of the conversation waits on. A key
        is then recorded for the answered run (its own transaction, after the answer's), so
        a retry replays that run instead of starting one."""
        cid = conv.record.conversation_id
        waiting = [r for r in self.runs.active.values()
                   if r.record.conversation_id == cid and r.pending is not None]
        if not waiting:
            raise Conflict("conversation_busy",
                           f"conversation {cid!r} has a run in progress and no question")
        run = waiting[0]
        assert run.pending is not None
        after = conv.seq  # the stream of it resumes at the answer
        await self.runs.ack(self.runs.inputs.answer(run, run.pending.request_id, req.input))
        if key is not None:
            await self.store.apply_now(PutIdempotency(key.record(run.record)))
        return Started(run.visible, after, replayed=True)

    async def _interrupt(self, conv: Conversation) -> None:
        """End the conversation's active and queued runs ``cancelled``; wait for them."""
        cid = conv.record.conversation_id
        await self.drop_queue(cid, "cancelled", ErrorDetail(
            "interrupted", "a new run interrupted this conversation"))
        active = [r for r in self.runs.active.values() if r.record.conversation_id == cid]
        for run in active:
            self.runs.request_cancel(run.run_id, "interrupted")
        tasks = [r.task for r in active if r.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.runs.ack_timeout)
            if pending:
                raise Unavailable("store_unavailable", "the interrupted runs did not end")

    # ---- the queue -----------------------------------------------------------------------

    async def _enqueue(self, conv: Conversation, req: StartRunRequest, owner: str | None,
                       admin: bool, key: Key | None) -> Started:
        """A ``queued`` run, durable before it is acknowledged, started in order."""
        cid = conv.record.conversation_id
        queue = self.queues.setdefault(cid, deque())
        if len(queue) >= MAX_QUEUED:
            raise LimitExceeded("queue_full", f"at most {MAX_QUEUED} queued runs per conversation")
        self.runs.check_input(req)
        record = RunRecord(
            run_id=new_id("r"), conversation_id=cid, agent=req.agent, status="queued",
            created_at=now_ms(), input=req.input, on_disconnect=req.on_disconnect,
            metadata=req.metadata, owner=conv.record.owner, first_seq=conv.seq + 1,
            webhook_url=req.webhook_url)
        group = Group([PutRun.of(record), *([PutIdempotency(key.record(record))] if key else [])],
                      notify=True)
        self.store.enqueue(group)
        entry = QueuedStart(record, req, owner, admin)
        queue.append(entry)
        assert group.committed is not None
        try:
            await self.runs.ack(group.committed)
        except AgentstreamError:
            self._remove(entry)
            raise
        self._run_ended(cid)  # the conversation may have become free meanwhile
        return Started(record, record.first_seq - 1)

    def _remove(self, entry: QueuedStart) -> None:
        cid = entry.record.conversation_id
        queue = self.queues.get(cid)
        if queue is not None and entry in queue:
            queue.remove(entry)
            if not queue:
                del self.queues[cid]

    def _run_ended(self, conversation_id: str) -> None:
        """A run of the conversation left ``active``: start the next queued one if free."""
        queue = self.queues.get(conversation_id)
        if not queue or queue[0].starting:
            return
        task = asyncio.create_task(self._advance(queue[0]), name=f"dequeue:{conversation_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _advance(self, entry: QueuedStart) -> None:
        conv = await self.runs.conversations.get(entry.record.conversation_id)
        if conv is None or conv.active_runs > 0 or entry.starting:
            return  # the run in progress will call us again when it ends
        entry.starting = True
        try:
            await self.runs.start(entry.req, entry.owner, entry.admin, queued=entry.record)
        except AgentstreamError as exc:
            await self.runs.end_unstarted(entry.record, "failed",
                                          ErrorDetail(exc.code, exc.message))
        except Exception as exc:
            log.exception("queued_start_failed", run_id=entry.record.run_id)
            await self.runs.end_unstarted(entry.record, "failed",
                                          ErrorDetail("internal_error", str(exc)))
        finally:
            self._remove(entry)
        self._run_ended(entry.record.conversation_id)

    def queued(self, run_id: str) -> QueuedStart | None:
        return next((e for q in self.queues.values() for e in q
                     if e.record.run_id == run_id and not e.starting), None)

    async def cancel_queued(self, entry: QueuedStart, status: str = "cancelled",
                            error: ErrorDetail | None = None) -> RunRecord:
        """End a queued run before it started: its ``done`` is its only event."""
        self._remove(entry)
        committed = await self.runs.end_unstarted(entry.record, status, error)
        if committed is not None:
            await self.runs.ack(committed)
        return entry.record

    async def drop_queue(self, conversation_id: str, status: str,
                         error: ErrorDetail | None) -> list[str]:
        entries = [e for e in self.queues.get(conversation_id, ()) if not e.starting]
        for entry in entries:
            await self.cancel_queued(entry, status, error)
        return [e.record.run_id for e in entries]

    async def shutdown(self) -> None:
        """Queued runs end ``interrupted``; dequeue tasks are cancelled and awaited."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.runs.ack_timeout)
        for cid in list(self.queues):
            for entry in list(self.queues.get(cid, ())):
                self._remove(entry)
                await self.runs.end_unstarted(entry.record, "interrupted", ErrorDetail(
                    "server_shutdown", "the server shut down before this run started"))


def _check_same(stored: str, given: str, key: str) -> None:
    if stored != given:
        raise Conflict("idempotency_key_reused",
                       f"Idempotency-Key {key[:64]!r} was used with a different request")
